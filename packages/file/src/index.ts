/**
 * A KeyStore in one JSON file, for the CLI, the demo and single-machine services on Node, Bun
 * and Deno (all three provide node:fs).
 *
 * Every write takes the lock (see _lock.ts for the protocol and why takeover stays exclusive),
 * reads the file, changes it, writes an exclusively created temporary file with a random name,
 * fsyncs it, and, still provably holding the lock, renames it over the old file and fsyncs the
 * folder. A reader sees the old or the new file and never half of one, a crash leaves the last
 * complete file, and compare-and-swap and put-if-absent hold across processes on one machine.
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { fileStore } from '@kms-proxy/file'
 * import { passphraseRootKey } from '@kms-proxy/passphrase'
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), store: fileStore('./keys.json') })
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/file
 */
import { readFile, rename, unlink } from 'node:fs/promises'
import { StoreError, fromBase64, toBase64, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'
import { ensureFolder, storeFailure } from './_folder.js'
import { acquireLock, commitAndRelease, stageFile, syncFolder, type LockOptions } from './_lock.js'

/** Lock timing of a {@link fileStore}. */
export interface FileStoreOptions {
  /**
   * A lock file untouched for this long was left by a crashed process and is taken over. A live
   * holder touches its lock every quarter of this.
   *
   * @defaultValue 10,000 (10 s)
   */
  staleLockMs?: number
  /**
   * Give up waiting for the lock after this long (a retryable `ERR_STORE`). Must be longer than
   * `staleLockMs`, or a crashed process's lock would fail every caller instead of being taken
   * over. The default also covers a crash during a takeover.
   *
   * @defaultValue 2 × `staleLockMs` + 10 s (30 s)
   */
  lockTimeoutMs?: number
}

const FORMAT = 'kms-proxy-file-store/v1'

interface StoredKek {
  createdAt: number
  rootKind: string
  wrapped: string // base64
}

interface StoredChain {
  head?: { value: ChainHead; version: string }
  keks: Map<string, StoredKek>
}

/** Maps, not plain objects: a chain named `__proto__` or `constructor` is just a name. */
type Contents = Map<string, StoredChain>

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x)

function parse(raw: string, path: string): Contents {
  const notAStore = () => new StoreError(`fileStore: ${path} is not a kms-proxy file store`)
  let parsed: unknown
  try {
    parsed = JSON.parse(raw)
  } catch {
    throw notAStore()
  }
  if (!isObject(parsed) || parsed.format !== FORMAT || !isObject(parsed.chains)) throw notAStore()
  const contents: Contents = new Map()
  // JSON.parse makes every key an own property, "__proto__" included; Object.entries sees them all.
  for (const [name, chain] of Object.entries(parsed.chains)) {
    if (!isObject(chain) || !isObject(chain.keks)) throw notAStore()
    contents.set(name, {
      ...(chain.head === undefined ? {} : { head: chain.head as StoredChain['head'] }),
      keks: new Map(Object.entries(chain.keks as Record<string, StoredKek>)),
    })
  }
  return contents
}

function serialize(contents: Contents): string {
  // Object.fromEntries defines own properties, so "__proto__" stays a key and sets no prototype.
  const chains = Object.fromEntries(
    [...contents].map(([name, c]) => [name, { ...(c.head ? { head: c.head } : {}), keks: Object.fromEntries(c.keks) }]),
  )
  return JSON.stringify({ format: FORMAT, chains })
}

/**
 * A {@link KeyStore} in the JSON file at `path` (created on the first write, mode 0600), shared
 * safely by processes on one machine; next to it live `path.lock` and, during a takeover,
 * `path.lock.break`. Not for network file systems. `atomic: true`, `embedsKeks: false`.
 *
 * The first write also creates the file's folder if that alone is missing (mode 0700), never
 * its parents: a missing parent is more often a mistyped path or an unmounted volume.
 *
 * @param path - the store file, such as `./keys.json`.
 * @throws TypeError - `path` is not a non-empty string.
 * @throws RangeError - a lock timing out of range, or `lockTimeoutMs` not longer than `staleLockMs`.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`, naming the path: not
 *   retryable when the file is not a kms-proxy file store or the file system refuses in a way
 *   only a person can change (a missing parent folder, a file where a folder should be, a folder
 *   where the file should be, permission denied, a read-only file system); `retryable` when the
 *   lock was not free within `lockTimeoutMs` or the failure may pass (a full disk, too many open
 *   files, an I/O error).
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { fileStore } from '@kms-proxy/file'
 * import { passphraseRootKey } from '@kms-proxy/passphrase'
 *
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), store: fileStore('./keys.json') })
 * ```
 */
export function fileStore(path: string, options: FileStoreOptions = {}): KeyStore {
  if (typeof path !== 'string' || path.length === 0) throw new TypeError('fileStore: expected a file path')
  const staleLockMs = options.staleLockMs ?? 10_000
  if (typeof staleLockMs !== 'number' || !Number.isFinite(staleLockMs) || staleLockMs < 0) {
    throw new RangeError('fileStore: staleLockMs must be a finite number of milliseconds >= 0')
  }
  const lockTimeoutMs = options.lockTimeoutMs ?? 2 * staleLockMs + 10_000
  if (typeof lockTimeoutMs !== 'number' || !Number.isFinite(lockTimeoutMs) || lockTimeoutMs <= staleLockMs) {
    throw new RangeError('fileStore: lockTimeoutMs must be longer than staleLockMs, or a crashed process\'s lock is never taken over')
  }
  const lock: LockOptions = { staleMs: staleLockMs, timeoutMs: lockTimeoutMs }
  const lockPath = `${path}.lock`

  async function load(): Promise<Contents> {
    let raw: string
    try {
      raw = await readFile(path, 'utf8')
    } catch (error) {
      // No file (or no folder yet): an empty store, which the first write creates.
      if ((error as { code?: string }).code === 'ENOENT') return new Map()
      throw await storeFailure(error, `read ${path}`, path)
    }
    return parse(raw, path)
  }

  /** Runs `change` on the current contents under the lock; writes only if it returns true. */
  async function update(change: (contents: Contents) => boolean): Promise<boolean> {
    try {
      return await updateLocked(change)
    } catch (error) {
      throw await storeFailure(error, `write ${path}`, path)
    }
  }

  async function updateLocked(change: (contents: Contents) => boolean): Promise<boolean> {
    await ensureFolder(path)
    const held = await acquireLock(lockPath, lock)
    let staged: string | undefined
    try {
      const contents = await load()
      const changed = change(contents)
      if (changed) staged = await stageFile(path, serialize(contents))
      await commitAndRelease(
        held,
        lock,
        staged === undefined
          ? undefined
          : async () => {
              await rename(staged!, path)
              staged = undefined
              await syncFolder(path)
            },
      )
      return changed
    } finally {
      // After a failure before the commit (an unreadable file, a full disk): release under the
      // breaker too, falling back to a plain release if even the breaker cannot be had.
      if (!held.released) await commitAndRelease(held, lock).catch(() => held.release())
      if (staged !== undefined) await unlink(staged).catch(() => {})
    }
  }

  const chainOf = (contents: Contents, chain: string): StoredChain => {
    let c = contents.get(chain)
    if (!c) contents.set(chain, (c = { keks: new Map() }))
    return c
  }
  const toRecord = (id: number, k: StoredKek): KekRecord => {
    let wrapped: Uint8Array
    try {
      wrapped = fromBase64(k.wrapped)
    } catch {
      throw new StoreError(`fileStore: the KEK record ${id} in ${path} is malformed`)
    }
    return { id, createdAt: k.createdAt, rootKind: k.rootKind, wrapped }
  }

  return {
    atomic: true,
    embedsKeks: false,
    async getHead(chain): Promise<Versioned<ChainHead> | undefined> {
      return (await load()).get(chain)?.head
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
      const k = (await load()).get(chain)?.keks.get(String(id))
      return k && toRecord(id, k)
    },
    async putKekIfAbsent(chain, record) {
      return update((contents) => {
        const c = chainOf(contents, chain)
        if (c.keks.has(String(record.id))) return false
        c.keks.set(String(record.id), {
          createdAt: record.createdAt,
          rootKind: record.rootKind,
          wrapped: toBase64(record.wrapped),
        })
        return true
      })
    },
    async listKeks(chain) {
      const keks = (await load()).get(chain)?.keks ?? new Map<string, StoredKek>()
      return [...keks].map(([id, k]) => toRecord(Number(id), k))
    },
  }
}
