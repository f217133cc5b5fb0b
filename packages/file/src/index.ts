/**
 * A KeyStore in one JSON file, for the CLI, the demo and single-machine services on Node, Bun
 * and Deno (all three provide node:fs).
 *
 * Writes take a lock file (created with O_EXCL), read the file, change it, write a temporary
 * file, fsync it and rename it over the old one, so a reader sees the old or the new file and
 * never half of one, and a crash leaves the last complete file. Compare-and-swap and
 * put-if-absent happen under the lock, so they hold across processes on one machine.
 */
import { open, readFile, rename, stat, unlink } from 'node:fs/promises'
import process from 'node:process'
import type { ChainHead, KekRecord, KeyStore, Versioned } from '@kms-proxy/core'

export interface FileStoreOptions {
  /** Give up waiting for the lock after this long. Default 10 s. */
  lockTimeoutMs?: number
  /** A lock file older than this is left by a crashed process and is removed. Default 30 s. */
  staleLockMs?: number
}

interface StoredKek {
  createdAt: number
  rootKind: string
  wrapped: string // base64
}

interface FileContents {
  format: 'kms-proxy-file-store/v1'
  chains: Record<string, { head?: { value: ChainHead; version: string }; keks: Record<string, StoredKek> }>
}

const EMPTY = (): FileContents => ({ format: 'kms-proxy-file-store/v1', chains: {} })

export function fileStore(path: string, options: FileStoreOptions = {}): KeyStore {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError('fileStore: expected a file path')
  const lockTimeoutMs = options.lockTimeoutMs ?? 10_000
  const staleLockMs = options.staleLockMs ?? 30_000
  const lockPath = `${path}.lock`

  async function load(): Promise<FileContents> {
    let raw: string
    try {
      raw = await readFile(path, 'utf8')
    } catch (error) {
      if ((error as { code?: string }).code === 'ENOENT') return EMPTY()
      throw error
    }
    const parsed = JSON.parse(raw) as FileContents
    if (parsed?.format !== 'kms-proxy-file-store/v1' || typeof parsed.chains !== 'object') {
      throw new Error(`fileStore: ${path} is not a kms-proxy file store`)
    }
    return parsed
  }

  async function lock(): Promise<() => Promise<void>> {
    const started = Date.now()
    for (let wait = 2; ; wait = Math.min(wait * 2, 50)) {
      try {
        const handle = await open(lockPath, 'wx')
        await handle.writeFile(`${process.pid} ${new Date().toISOString()}\n`)
        await handle.close()
        return () => unlink(lockPath).catch(() => {})
      } catch (error) {
        if ((error as { code?: string }).code !== 'EEXIST') throw error
      }
      try {
        if (Date.now() - (await stat(lockPath)).mtimeMs > staleLockMs) await unlink(lockPath).catch(() => {})
      } catch {
        // The holder just released it.
      }
      if (Date.now() - started > lockTimeoutMs) throw new Error(`fileStore: timed out waiting for ${lockPath}`)
      await new Promise((resolve) => setTimeout(resolve, wait))
    }
  }

  /** Runs `change` on the current contents under the lock; writes only if it returns true. */
  async function update(change: (contents: FileContents) => boolean): Promise<boolean> {
    const release = await lock()
    try {
      const contents = await load()
      if (!change(contents)) return false
      const temporary = `${path}.${process.pid}.${Date.now()}.tmp`
      const handle = await open(temporary, 'w', 0o600)
      try {
        await handle.writeFile(JSON.stringify(contents))
        await handle.sync()
      } finally {
        await handle.close()
      }
      await rename(temporary, path)
      return true
    } finally {
      await release()
    }
  }

  const chainOf = (contents: FileContents, chain: string) => (contents.chains[chain] ??= { keks: {} })
  const toRecord = (id: number, k: StoredKek): KekRecord => ({
    id,
    createdAt: k.createdAt,
    rootKind: k.rootKind,
    wrapped: Uint8Array.from(atob(k.wrapped), (c) => c.charCodeAt(0)),
  })

  return {
    atomic: true,
    embedsKeks: false,
    async getHead(chain): Promise<Versioned<ChainHead> | undefined> {
      return (await load()).chains[chain]?.head
    },
    async casHead(chain, expected, next) {
      return update((contents) => {
        const c = chainOf(contents, chain)
        if (c.head?.version !== expected) return false
        const version = String(Number(c.head?.version ?? 0) + 1)
        c.head = { value: { primary: next.primary, primaryCreatedAt: next.primaryCreatedAt, leased: next.leased }, version }
        return true
      })
    },
    async getKek(chain, id) {
      const k = (await load()).chains[chain]?.keks[String(id)]
      return k && toRecord(id, k)
    },
    async putKekIfAbsent(chain, record) {
      return update((contents) => {
        const c = chainOf(contents, chain)
        if (c.keks[String(record.id)]) return false
        c.keks[String(record.id)] = {
          createdAt: record.createdAt,
          rootKind: record.rootKind,
          wrapped: btoa(String.fromCharCode(...record.wrapped)),
        }
        return true
      })
    },
    async listKeks(chain) {
      const keks = (await load()).chains[chain]?.keks ?? {}
      return Object.entries(keks).map(([id, k]) => toRecord(Number(id), k))
    },
  }
}
