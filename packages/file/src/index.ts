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
import { checkChainName as checkChain, checkKekId as checkId, checkRootName as checkRoot, DEFAULT_ROOT, StoreError, fromBase64, isRootName, parseChainHead, rootOf, toBase64, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'
import { ensureFolder, storeFailure } from './_folder.js'
import { acquireLock, commitAndRelease, stageFile, syncFolder, type LockOptions } from './_lock.js'
import { headWatch } from './_watch.js'

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
  /**
   * How often `watchHead` looks at the file (its inode, size and modification time; the file is
   * read only when one of them changed). Only while some chain watches: one timer per store
   * instance, `unref()`ed, stopped when the last watcher stops. Well under a chain's default
   * `maxStalenessMs` (15 s), so a rotation in another process is usually used here within about
   * this long.
   *
   * @defaultValue 1,000 (1 s)
   */
  watchIntervalMs?: number
}

/**
 * v1: every file written before chains had several roots, and every file since that holds
 * nothing else: each KEK's 'default' record under `keks`, heads without `roots`. v2: the same,
 * plus `wraps` (records of other roots, by id then root name) or heads with `roots`. v3: the
 * same, plus heads with a lifecycle field (`retired`, `chainRetiredAt`, `chainDestroyedAt`).
 * Each file is written in the lowest version that holds it, and older versions refuse a newer
 * file rather than rewrite it without what they do not know: a v2 reader would drop `retired`
 * from the head it writes back with its next lease, un-retiring every retired KEK (and a
 * destroyed chain would take new KEKs).
 */
const FORMAT_V1 = 'kms-proxy-file-store/v1'
const FORMAT_V2 = 'kms-proxy-file-store/v2'
const FORMAT_V3 = 'kms-proxy-file-store/v3'
const FORMATS: readonly unknown[] = [FORMAT_V1, FORMAT_V2, FORMAT_V3]

interface StoredKek {
  createdAt: number
  rootKind: string
  wrapped: string // base64
}

interface StoredChain {
  head?: { value: ChainHead; version: string }
  /** The 'default' root's records, by id: where every record lived before several roots. */
  keks: Map<string, StoredKek>
  /** Every other root's records, by id, then root name. */
  wraps: Map<string, Map<string, StoredKek>>
}

/** Maps, not plain objects: a chain named `__proto__` or `constructor` is just a name. */
type Contents = Map<string, StoredChain>

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x)
const isCount = (x: unknown): x is number => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0
const isU32 = (x: unknown): x is number => isCount(x) && x <= 0xffffffff
const isTime = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x)
const ID_KEY = /^(0|[1-9][0-9]{0,9})$/

/** The lowest format that holds a head: what an older version would lose decides. */
function formatOf(head: ChainHead): number {
  if (head.retired !== undefined || head.chainRetiredAt !== undefined || head.chainDestroyedAt !== undefined) return 3
  return head.roots !== undefined ? 2 : 1
}

function parse(raw: string, path: string): Contents {
  const notAStore = () => new StoreError(`fileStore: ${path} is not a kms-proxy file store`)
  let parsed: unknown
  try {
    parsed = JSON.parse(raw)
  } catch {
    throw notAStore()
  }
  if (!isObject(parsed) || !FORMATS.includes(parsed.format) || !isObject(parsed.chains)) throw notAStore()
  const contents: Contents = new Map()
  // JSON.parse makes every key an own property, "__proto__" included; Object.entries sees them all.
  for (const [name, chain] of Object.entries(parsed.chains)) {
    if (!isObject(chain) || !isObject(chain.keks) || (chain.wraps !== undefined && !isObject(chain.wraps))) throw notAStore()
    const wraps = new Map<string, Map<string, StoredKek>>()
    for (const [id, byRoot] of Object.entries(chain.wraps ?? {})) {
      if (!isObject(byRoot)) throw notAStore()
      wraps.set(id, new Map(Object.entries(byRoot as Record<string, StoredKek>)))
    }
    contents.set(name, {
      ...(chain.head === undefined ? {} : { head: chain.head as StoredChain['head'] }),
      keks: new Map(Object.entries(chain.keks as Record<string, StoredKek>)),
      wraps,
    })
  }
  return contents
}

function serialize(contents: Contents): string {
  let version = 1
  // Object.fromEntries defines own properties, so "__proto__" stays a key and sets no prototype.
  const chains = Object.fromEntries(
    [...contents].map(([name, c]) => {
      const wraps = Object.fromEntries([...c.wraps].map(([id, byRoot]) => [id, Object.fromEntries(byRoot)]))
      // A head is checked when it is read, not when another chain's write carries it along:
      // one that does not parse (a file edited by hand) gets the newest format, so that no
      // older version reads it as a head without what it cannot see.
      const head = c.head === undefined ? undefined : isObject(c.head) ? parseChainHead(c.head.value) : undefined
      version = Math.max(version, c.wraps.size > 0 ? 2 : 1, c.head === undefined ? 1 : head ? formatOf(head) : FORMATS.length)
      return [name, { ...(c.head ? { head: c.head } : {}), keks: Object.fromEntries(c.keks), ...(c.wraps.size > 0 ? { wraps } : {}) }]
    }),
  )
  return JSON.stringify({ format: FORMATS[version - 1], chains })
}

/**
 * A {@link KeyStore} in the JSON file at `path` (created on the first write, mode 0600), shared
 * safely by processes on one machine; next to it live `path.lock` and, during a takeover,
 * `path.lock.break`. Not for network file systems. `atomic: true`, `embedsKeks: false`.
 *
 * Chains of several roots: records are keyed by KEK id and root (`getKekWraps`,
 * `deleteKekWrap`); the `'default'` root's record stays where every record was before, so files
 * written then read as they did.
 *
 * The first write also creates the file's folder if that alone is missing (mode 0700), never
 * its parents: a missing parent is more often a mistyped path or an unmounted volume.
 *
 * `watchHead` polls the file every `watchIntervalMs` (1 s) while some chain watches, one
 * `unref()`ed timer per store instance, so a rotation in another process is used within about
 * that long; the head is kept exactly as given (`parseChainHead`), its lifecycle fields too.
 *
 * @param path - the store file, such as `./keys.json`.
 * @throws TypeError - `path` is not a non-empty string.
 * @throws RangeError - a lock timing or `watchIntervalMs` out of range, or `lockTimeoutMs` not
 *   longer than `staleLockMs`.
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
  const watchIntervalMs = options.watchIntervalMs ?? 1_000
  if (typeof watchIntervalMs !== 'number' || !Number.isFinite(watchIntervalMs) || watchIntervalMs <= 0) {
    throw new RangeError('fileStore: watchIntervalMs must be a finite number of milliseconds > 0')
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
    if (!c) contents.set(chain, (c = { keks: new Map(), wraps: new Map() }))
    return c
  }
  const toRecord = (idKey: string, root: string, k: StoredKek): KekRecord => {
    const malformed = () => new StoreError(`fileStore: the KEK record ${idKey.slice(0, 10)} in ${path} is malformed`)
    // A root other than 'default' under `wraps` is a file changed by hand or by another program:
    // 'default' there would shadow the record under `keks`.
    if (!ID_KEY.test(idKey) || !isU32(Number(idKey)) || !isObject(k) || !isTime(k.createdAt) || typeof k.rootKind !== 'string') throw malformed()
    if (root !== DEFAULT_ROOT && !isRootName(root)) throw malformed()
    let wrapped: Uint8Array
    try {
      wrapped = fromBase64(k.wrapped)
    } catch {
      throw malformed()
    }
    return { id: Number(idKey), createdAt: k.createdAt, rootKind: k.rootKind, wrapped, ...(root === DEFAULT_ROOT ? {} : { root }) }
  }
  const wrapsOf = (c: StoredChain | undefined, idKey: string): KekRecord[] => {
    const main = c?.keks.get(idKey)
    const others = [...(c?.wraps.get(idKey) ?? [])].map(([root, k]) => {
      if (root === DEFAULT_ROOT) throw new StoreError(`fileStore: the KEK record ${idKey.slice(0, 10)} in ${path} is malformed`)
      return toRecord(idKey, root, k)
    })
    return main ? [toRecord(idKey, DEFAULT_ROOT, main), ...others] : others
  }
  const stored = (record: KekRecord): StoredKek => ({ createdAt: record.createdAt, rootKind: record.rootKind, wrapped: toBase64(record.wrapped) })
  const watch = headWatch(path, watchIntervalMs, async () => {
    const contents = await load()
    return (chain) => {
      const version: unknown = contents.get(chain)?.head?.version
      return typeof version === 'string' ? version : null
    }
  })

  return {
    atomic: true,
    embedsKeks: false,
    async getHead(chain): Promise<Versioned<ChainHead> | undefined> {
      checkChain(chain)
      const h = (await load()).get(chain)?.head
      if (h === undefined) return undefined
      const value = isObject(h) && typeof h.version === 'string' ? parseChainHead(h.value) : undefined
      if (!value) throw new StoreError(`fileStore: the head of a chain in ${path} is malformed`)
      return { value, version: h.version }
    },
    async casHead(chain, expected, next) {
      checkChain(chain)
      const value = parseChainHead(next)
      if (!value) throw new TypeError('fileStore: casHead: expected a chain head (primary, primaryCreatedAt, leased, and its optional fields well-formed)')
      let version = ''
      const swapped = await update((contents) => {
        const c = chainOf(contents, chain)
        if (c.head?.version !== expected) return false
        version = String(Number(c.head?.version ?? 0) + 1)
        c.head = { value, version }
        return true
      })
      if (swapped) watch.wrote(chain, version)
      return swapped
    },
    async getKek(chain, id) {
      const idKey = String(checkId(id))
      const wraps = wrapsOf((await load()).get(checkChain(chain)), idKey)
      // 'default' comes first when there is one; otherwise the first root by name, so every
      // reader picks the same.
      return wraps.find((r) => r.root === undefined) ?? wraps.sort((a, b) => (rootOf(a) < rootOf(b) ? -1 : 1))[0]
    },
    async putKekIfAbsent(chain, record) {
      checkChain(chain)
      checkId(record?.id)
      const root = checkRoot(rootOf(record))
      return update((contents) => {
        const c = chainOf(contents, chain)
        const id = String(record.id)
        if (root === DEFAULT_ROOT) {
          if (c.keks.has(id)) return false
          c.keks.set(id, stored(record))
          return true
        }
        let byRoot = c.wraps.get(id)
        if (byRoot?.has(root)) return false
        if (!byRoot) c.wraps.set(id, (byRoot = new Map()))
        byRoot.set(root, stored(record))
        return true
      })
    },
    async listKeks(chain) {
      checkChain(chain)
      const c = (await load()).get(chain)
      const ids = new Set([...(c?.keks.keys() ?? []), ...(c?.wraps.keys() ?? [])])
      return [...ids].flatMap((id) => wrapsOf(c, id))
    },
    async getKekWraps(chain, id) {
      const idKey = String(checkId(id))
      return wrapsOf((await load()).get(checkChain(chain)), idKey)
    },
    async deleteKekWrap(chain, id, root) {
      checkChain(chain)
      checkId(id)
      checkRoot(root)
      // Under the lock like every write: a delete that read, changed and wrote the file outside
      // it would undo a put that another process made in between.
      await update((contents) => {
        const c = contents.get(chain)
        if (!c) return false
        if (root === DEFAULT_ROOT) return c.keks.delete(String(id))
        const byRoot = c.wraps.get(String(id))
        if (!byRoot?.delete(root)) return false
        if (byRoot.size === 0) c.wraps.delete(String(id))
        return true
      })
    },
    watchHead(chain, onChange) {
      return watch.watch(chain, onChange)
    },
  }
}
