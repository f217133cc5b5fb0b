/**
 * A KeyStore on IndexedDB through idb-keyval, for browsers (and anything else with
 * `indexedDB`). One database per store name (`kms-proxy:${name}`, object store `keys`), shared by
 * every tab of the origin. Keys are arrays: `[chain, 'head']`; `[chain, 'kek', id]` for a KEK's
 * record under the `'default'` root (where every record was before chains had several roots, so
 * those need no migration), `[chain, 'kek-wrap', id, root]` for its record under any other root.
 *
 * Atomic across tabs: casHead and putKekIfAbsent read, compare and write inside ONE readwrite
 * transaction. IndexedDB runs readwrite transactions whose scopes overlap one after another, in
 * every connection of the origin (every tab, worker and handle), so no other writer can slip
 * between the read and the write. Writes ask for `durability: 'strict'` (flushed before the
 * transaction completes): invariant 2 wants a KEK record durable before anything uses it, and a
 * lost head write after a power cut would hand out a lease twice.
 *
 * Only wrapped KEK bytes are stored, never `CryptoKey` handles: see the README for why.
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { passphraseRootKey } from '@kms-proxy/passphrase'
 * import { indexedDbStore } from '@kms-proxy/indexeddb'
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), store: indexedDbStore({ name: 'notes' }) })
 * const encrypted = await chain.encryptText('hello') // chain.decryptText(encrypted) -> 'hello'
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/indexeddb
 */
import { createStore, type UseStore } from 'idb-keyval'
import { checkRootName as checkRoot, checkKekId as checkId, checkChainName as checkChain, DEFAULT_ROOT, StoreError, isRootName, parseChainHead, rootOf, toHex, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'

/** Options of {@link indexedDbStore}. */
export interface IndexedDbStoreOptions {
  /** Store name; the database is `kms-proxy:${name}`. Every tab that opens the same name shares it. */
  name: string
}

const OBJECT_STORE = 'keys'

/**
 * What `[chain, 'head']` holds: the head and a random version token for compare-and-swap. `v`
 * is 2 when the head has a lifecycle field (`retired`, `chainRetiredAt`, `chainDestroyedAt`), 1
 * otherwise. Older versions read only `v: 1`, field by field: a tab still running one would
 * write the head back without `retired` with its next lease, un-retiring every retired KEK, so
 * it must refuse such a head (`ERR_STORE`) instead.
 */
interface HeadValue {
  v: 1 | 2
  head: ChainHead
  version: string
}

const headFormat = (head: ChainHead): 1 | 2 => (head.retired !== undefined || head.chainRetiredAt !== undefined || head.chainDestroyedAt !== undefined ? 2 : 1)

/**
 * What `[chain, 'kek', id]` (root `'default'`, no `root` field) and `[chain, 'kek-wrap', id, root]`
 * (`root` as in the key) hold; `wrapped` is structured-cloned as a Uint8Array.
 */
interface KekValue {
  v: 1
  id: number
  createdAt: number
  rootKind: string
  wrapped: Uint8Array
  root?: string
}

const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)

function randomToken(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(12)))
}

/** The stored head checked and copied by core's `parseChainHead`, every field kept (a corrupt head is ERR_STORE). */
function readHead(raw: unknown): HeadValue | undefined {
  if (raw === undefined) return undefined
  const r = raw as Partial<HeadValue> | null
  const head = r && (r.v === 1 || r.v === 2) && typeof r.version === 'string' ? parseChainHead(r.head) : undefined
  if (!head) throw new StoreError('indexedDbStore: the chain head is malformed')
  return { v: headFormat(head), version: r!.version!, head }
}

/** A record read back; `root` is the root its key names, which a named record's value must repeat. */
function readKek(raw: unknown, root: string = DEFAULT_ROOT): KekRecord | undefined {
  if (raw === undefined) return undefined
  const r = raw as Partial<KekValue> | null
  const named = root !== DEFAULT_ROOT
  if (!r || r.v !== 1 || !isU32(r.id) || !isTime(r.createdAt) || typeof r.rootKind !== 'string' || !(r.wrapped instanceof Uint8Array) || r.wrapped.length === 0 || r.root !== (named ? root : undefined)) {
    throw new StoreError('indexedDbStore: a KEK record is malformed')
  }
  return Object.freeze({ id: r.id, createdAt: r.createdAt, rootKind: r.rootKind, wrapped: r.wrapped.slice(), ...(named ? { root } : {}) })
}

/** A named record's root, from its key `[chain, 'kek-wrap', id, root]`. */
const rootOfKey = (key: IDBValidKey) => (key as unknown[])[3] as string

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result)
    req.onerror = () => reject(req.error)
  })
}

/**
 * Runs `body` in one readwrite transaction and resolves with its answer once the transaction has
 * committed (durably: 'strict'), rejects if it aborts. `body` must only queue requests (no other
 * awaits), or IndexedDB would commit the transaction under it.
 */
function readWrite<T>(use: UseStore, body: (store: IDBObjectStore, answer: (value: T) => void) => void): Promise<T> {
  // idb-keyval opens, upgrades and reopens the database; the durability option is ours.
  return use('readonly', (s) => s.transaction.db).then(
    (db) =>
      new Promise<T>((resolve, reject) => {
        const tx = db.transaction(OBJECT_STORE, 'readwrite', { durability: 'strict' })
        let value: T
        tx.oncomplete = () => resolve(value)
        tx.onabort = tx.onerror = () => reject(tx.error ?? new Error('indexedDbStore: transaction aborted'))
        try {
          body(tx.objectStore(OBJECT_STORE), (v) => (value = v))
        } catch (error) {
          tx.abort()
          reject(error)
        }
      }),
  )
}

/**
 * A KeyStore in IndexedDB: `atomic: true` across tabs, workers and handles of one origin;
 * `embedsKeks: false` (data names its KEK by id; the wrapped KEK lives here). Keeps only
 * root-wrapped KEKs, never `CryptoKey` handles, so a page load asks the root key once per KEK.
 *
 * @throws TypeError - no `name`, or a runtime without `indexedDB`.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`: a transaction
 *   failed (quota, a blocked upgrade), or a record is malformed.
 * @example
 * ```ts
 * const chain = await KeyChain.open({ rootKey: webauthnRootKey(params), store: indexedDbStore({ name: 'notes' }) })
 * ```
 */
export function indexedDbStore(options: IndexedDbStoreOptions): KeyStore {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { name } = options
  if (typeof name !== 'string' || name.length === 0) throw new TypeError('name: expected a non-empty string')
  if (typeof indexedDB === 'undefined') throw new TypeError('indexedDbStore: this runtime has no indexedDB')
  const use = createStore(`kms-proxy:${name}`, OBJECT_STORE)
  const headKey = (chain: string) => [chain, 'head']
  // The 'default' root's record stays where every record was before chains had several roots.
  const kekKey = (chain: string, id: number, root: string = DEFAULT_ROOT) => (root === DEFAULT_ROOT ? [chain, 'kek', id] : [chain, 'kek-wrap', id, root])
  // Array keys sort numbers and strings before arrays, so `[…, []]` bounds every longer key.
  const kekRange = (chain: string) => IDBKeyRange.bound([chain, 'kek'], [chain, 'kek', []])
  const wrapRange = (chain: string, id?: number) =>
    id === undefined ? IDBKeyRange.bound([chain, 'kek-wrap'], [chain, 'kek-wrap', []]) : IDBKeyRange.bound([chain, 'kek-wrap', id], [chain, 'kek-wrap', id, []])

  /** The `'default'` records of `defaults` and the named ones of `named`, read in one transaction (one snapshot). */
  const readRecords = (defaults: IDBKeyRange | IDBValidKey, named: IDBKeyRange) =>
    use('readonly', async (s) => {
      const [plain, keys, values] = await Promise.all([request(s.getAll(defaults)), request(s.getAllKeys(named)), request(s.getAll(named))])
      return [...plain.map((r) => readKek(r)!), ...values.map((r, i) => readKek(r, rootOfKey(keys[i]!))!)]
    })

  const watch = headChannel(`kms-proxy:${name}`)

  return {
    atomic: true,
    embedsKeks: false,

    async getHead(chain): Promise<Versioned<ChainHead> | undefined> {
      checkChain(chain)
      const h = readHead(await use('readonly', (s) => request(s.get(headKey(chain)))))
      return h && Object.freeze({ value: h.head, version: h.version })
    },

    async casHead(chain, expected, next) {
      checkChain(chain)
      // Checked and copied as a read would: a malformed head is refused, not written.
      const value = readHead({ v: 1, version: randomToken(), head: next })!
      const swapped = await readWrite<boolean>(use, (s, answer) => {
        const key = headKey(chain)
        const get = s.get(key)
        get.onsuccess = () => {
          const current = get.result as Partial<HeadValue> | undefined
          if (current?.version !== expected) return answer(false)
          s.put(value, key)
          answer(true)
        }
      })
      // Only once the transaction has committed: a tab told earlier could read the old head.
      if (swapped) watch.changed(chain)
      return swapped
    },

    async getKek(chain, id) {
      checkChain(chain)
      checkId(id)
      const wraps = await readRecords(kekKey(chain, id), wrapRange(chain, id))
      return wraps.find((r) => r.root === undefined) ?? wraps[0]
    },

    async putKekIfAbsent(chain, record) {
      checkChain(chain)
      checkId(record.id)
      const root = rootOf(record)
      checkRoot(root)
      const named = root === DEFAULT_ROOT ? {} : { root }
      const value: KekValue = { v: 1, id: record.id, createdAt: record.createdAt, rootKind: record.rootKind, wrapped: record.wrapped.slice(), ...named }
      readKek(value, root)
      return readWrite<boolean>(use, (s, answer) => {
        const key = kekKey(chain, record.id, root)
        // add() would fail the whole transaction on a collision; count() keeps it a plain "no".
        const count = s.count(key)
        count.onsuccess = () => {
          if (count.result > 0) return answer(false)
          s.add(value, key)
          answer(true)
        }
      })
    },

    async listKeks(chain) {
      checkChain(chain)
      return readRecords(kekRange(chain), wrapRange(chain))
    },

    async getKekWraps(chain, id) {
      checkChain(chain)
      checkId(id)
      return readRecords(kekKey(chain, id), wrapRange(chain, id))
    },

    async deleteKekWrap(chain, id, root) {
      checkChain(chain)
      checkId(id)
      checkRoot(root)
      await readWrite<void>(use, (s) => void s.delete(kekKey(chain, id, root)))
    },

    watchHead(chain, onChange) {
      // No argument check: watchHead never throws (a chain name this store refuses is never posted).
      return watch.watch(chain, onChange)
    },
  }
}

/** What a store instance's watch offers its methods. */
interface HeadChannel {
  watch(chain: string, onChange: () => void): () => void
  /** A head of `chain` was written through this instance: every other tab is told, and this instance's watchers. */
  changed(chain: string): void
}

/** A BroadcastChannel message: which chain's head changed. Names only, never a key or a head. */
interface ChangeMessage {
  v: 1
  chain: string
}

/**
 * `watchHead` across the tabs, workers and handles of one origin: each successful `casHead`
 * posts the chain's name on a `BroadcastChannel` named like the database. One channel per store
 * instance, open only while some chain of it watches. A channel does not hear its own posts, so
 * this instance's watchers are told directly. A page restored from the back/forward cache, or
 * resumed after being frozen, may have missed posts meanwhile: every watcher is told once then.
 * The head in IndexedDB stays the truth; a message only makes the chain read it.
 */
function headChannel(channelName: string): HeadChannel {
  const listeners = new Map<string, Set<() => void>>()
  let channel: BroadcastChannel | undefined
  const tell = (chain: string) => {
    for (const onChange of listeners.get(chain) ?? []) {
      try {
        onChange()
      } catch {
        // A watcher's failure is its own; the others are still told.
      }
    }
  }
  const tellAll = () => {
    for (const chain of listeners.keys()) tell(chain)
  }
  const onPageShow = (event: Event) => {
    if ((event as PageTransitionEvent).persisted) tellAll()
  }
  const events = globalThis as Partial<Pick<EventTarget, 'addEventListener' | 'removeEventListener'>>
  const doc = (globalThis as { document?: EventTarget }).document

  const open = () => {
    if (channel || typeof BroadcastChannel !== 'function') return
    channel = new BroadcastChannel(channelName)
    channel.onmessage = (event: MessageEvent<Partial<ChangeMessage> | null>) => {
      const chain = event.data?.chain
      if (event.data?.v === 1 && typeof chain === 'string') tell(chain)
    }
    // Where a channel would keep a process alive (Node, with an IndexedDB shim), it does not.
    ;(channel as { unref?: () => void }).unref?.()
    events.addEventListener?.('pageshow', onPageShow)
    doc?.addEventListener('resume', tellAll)
  }
  const close = () => {
    channel?.close()
    channel = undefined
    events.removeEventListener?.('pageshow', onPageShow)
    doc?.removeEventListener('resume', tellAll)
  }

  return {
    watch(chain, onChange) {
      let set = listeners.get(chain)
      if (!set) listeners.set(chain, (set = new Set()))
      // A distinct entry per call, so that one watcher's stop leaves the others.
      const own = () => onChange()
      set.add(own)
      open()
      let stopped = false
      return () => {
        if (stopped) return
        stopped = true
        set.delete(own)
        if (set.size === 0 && listeners.get(chain) === set) listeners.delete(chain)
        if (listeners.size === 0) close()
      }
    },
    changed(chain) {
      const message: ChangeMessage = { v: 1, chain }
      try {
        if (channel) channel.postMessage(message)
        else if (typeof BroadcastChannel === 'function') {
          // Posted messages are queued for every other channel at once; closing ours after
          // posting does not take them back.
          const once = new BroadcastChannel(channelName)
          once.postMessage(message)
          once.close()
        }
      } catch {
        // A failed post leaves the other tabs to their maxStalenessMs.
      }
      if (listeners.has(chain)) setTimeout(() => tell(chain), 0)
    },
  }
}
