/**
 * Stores keep the wrapped KEKs and the chain head. KEK records are immutable (put-if-absent);
 * the head is the only mutable state and changes by compare-and-swap on its version.
 */

/** The name of a chain's root when none was given: the root of every KEK record without a `root`. */
export const DEFAULT_ROOT = 'default'

/**
 * One KEK wrapped by one root, as a store keeps it: written once (put-if-absent, keyed by `id`
 * and `root`), never changed; removed only when its root leaves the chain (`deleteKekWrap`).
 * A KEK of a chain with several roots has one record per root, with the same `id` and `createdAt`.
 */
export interface KekRecord {
  /** Random u32, never 0, unique within the chain. */
  readonly id: number
  /** Milliseconds since the epoch. */
  readonly createdAt: number
  /** RootKey.kind of the root that wrapped it. */
  readonly rootKind: string
  /** The KEK as the root key wrapped it (bound to the chain name and id). */
  readonly wrapped: Uint8Array
  /**
   * The name of the root that wrapped it, as the chain head lists it. Absent means
   * {@link DEFAULT_ROOT}: records written before chains had several roots have none, and stores
   * keep a `'default'` record where they kept every record before, so old data stays readable.
   */
  readonly root?: string
}

/** The state of a root in the chain head: see {@link ChainRoot}. */
export type ChainRootState = 'adding' | 'active' | 'removing'

/**
 * One root of a chain, as the head lists it. `adding`: KEKs are being wrapped under it; it does
 * not unlock every KEK yet. `active`: every KEK has a wrap under it, and every new KEK gets one.
 * `removing`: its wraps are being deleted; new KEKs no longer get one.
 */
export interface ChainRoot {
  /** The root's name in the chain (1 to 64 characters: letters, digits, `.`, `_`, `-`). */
  readonly name: string
  /** RootKey.kind of the root. */
  readonly kind: string
  /** Where the root is in its life: see {@link ChainRootState}. */
  readonly state: ChainRootState
}

/** The chain head: the only mutable record of a chain, changed by compare-and-swap. Not authenticated: see docs/SECURITY.md. */
export interface ChainHead {
  /** KEK id of the primary KEK. */
  readonly primary: number
  /** createdAt of the primary KEK, for the age limit. */
  readonly primaryCreatedAt: number
  /** Uses of the primary handed out in leases so far, across every process. Never exceeds maxWrapsPerKek. */
  readonly leased: number
  /**
   * The chain's roots. Absent means one active root named {@link DEFAULT_ROOT} (every head
   * written before chains had several roots). A store keeps this list as it was given.
   */
  readonly roots?: readonly ChainRoot[]
}

/** A value and the opaque version a compare-and-swap compares. */
export interface Versioned<T> {
  /** The value as stored. */
  readonly value: T
  /** Opaque version for compare-and-swap (a counter, an etcd mod_revision, a Deno KV versionstamp). */
  readonly version: string
}

/**
 * Where a chain's wrapped KEKs and its head live. KEK records are immutable (put-if-absent);
 * the head changes only by compare-and-swap. Every method rejects with a
 * {@link StoreError} (`ERR_STORE`, `retryable` when the store may answer later) on failure;
 * `false` from `casHead` or `putKekIfAbsent` means "someone else was first", not a failure.
 * A new store passes `describeStore` from `@kms-proxy/testkit`.
 *
 * @example
 * ```ts
 * import { describeStore, createHarness } from '@kms-proxy/testkit'
 * const myStore: KeyStore = {
 *   atomic: true, embedsKeks: false,
 *   async getHead(chain) { … }, async casHead(chain, expected, next) { … },
 *   async getKek(chain, id) { … }, async putKekIfAbsent(chain, record) { … }, async listKeks(chain) { … },
 * }
 * describeStore(createHarness(it), { name: 'myStore', open: async () => ({ store: myStore }) })
 * ```
 */
export interface KeyStore {
  /** True when casHead is a real compare-and-swap across every process that shares the store. */
  readonly atomic: boolean
  /** True when each encrypted data carries its root-wrapped KEK, so decryption needs only the root key. */
  readonly embedsKeks: boolean
  /** The chain's head and its version, or `undefined` when the chain has none yet. */
  getHead(chain: string): Promise<Versioned<ChainHead> | undefined>
  /** Writes `next` only if the head's version is still `expected` (undefined: no head yet). */
  casHead(chain: string, expected: string | undefined, next: ChainHead): Promise<boolean>
  /**
   * A record of KEK `id`, or `undefined` when there is none: the `'default'` root's record when
   * there is one, else the record of any root.
   */
  getKek(chain: string, id: number): Promise<KekRecord | undefined>
  /**
   * Writes the record only if no record has this `id` and `root` (absent: `'default'`); never
   * overwrites. A store without {@link KeyStore.getKekWraps} may key by `id` alone.
   */
  putKekIfAbsent(chain: string, record: KekRecord): Promise<boolean>
  /** Every KEK record of the chain (one per KEK and root), in no particular order. */
  listKeks(chain: string): Promise<KekRecord[]>
  /**
   * Every record of KEK `id`, one per root, in no particular order (empty when there is none).
   * With {@link KeyStore.deleteKekWrap}, what lets a chain have several roots; a store without
   * them serves chains of one root.
   */
  getKekWraps?(chain: string, id: number): Promise<KekRecord[]>
  /**
   * Deletes the record of KEK `id` under `root`, if there is one; never another record. The
   * chain calls it only for a root that is leaving the chain (`removeRoot`, `changeRoot`), after
   * every KEK has a wrap under a root that stays (invariant 8).
   */
  deleteKekWrap?(chain: string, id: number, root: string): Promise<void>
}

/** The root a record belongs to: its `root`, or {@link DEFAULT_ROOT}. */
export function rootOf(record: Pick<KekRecord, 'root'>): string {
  return record.root ?? DEFAULT_ROOT
}

function copyRecord(r: KekRecord): KekRecord {
  const root = r.root === undefined || r.root === DEFAULT_ROOT ? {} : { root: r.root }
  return Object.freeze({ id: r.id, createdAt: r.createdAt, rootKind: r.rootKind, wrapped: r.wrapped.slice(), ...root })
}

function copyHead(h: ChainHead): ChainHead {
  const roots = h.roots && Object.freeze(h.roots.map((r) => Object.freeze({ name: r.name, kind: r.kind, state: r.state })))
  return Object.freeze({ primary: h.primary, primaryCreatedAt: h.primaryCreatedAt, leased: h.leased, ...(roots ? { roots } : {}) })
}

function inMemory(embedsKeks: boolean): KeyStore {
  /** Records keyed by `id/root`. */
  const chains = new Map<string, { head?: Versioned<ChainHead>; keks: Map<string, KekRecord>; counter: number }>()
  const chainOf = (name: string) => {
    let c = chains.get(name)
    if (!c) chains.set(name, (c = { keks: new Map(), counter: 0 }))
    return c
  }
  const wrapsOf = (chain: string, id: number) => [...(chains.get(chain)?.keks.values() ?? [])].filter((r) => r.id === id)
  return {
    atomic: true,
    embedsKeks,
    async getHead(chain) {
      return chains.get(chain)?.head
    },
    async casHead(chain, expected, next) {
      const c = chainOf(chain)
      if (c.head?.version !== expected) return false
      c.head = Object.freeze({ value: copyHead(next), version: String(++c.counter) })
      return true
    },
    async getKek(chain, id) {
      const wraps = wrapsOf(chain, id)
      const r = wraps.find((w) => rootOf(w) === DEFAULT_ROOT) ?? wraps[0]
      return r && copyRecord(r)
    },
    async putKekIfAbsent(chain, record) {
      const c = chainOf(chain)
      const key = `${record.id}/${rootOf(record)}`
      if (c.keks.has(key)) return false
      c.keks.set(key, copyRecord(record))
      return true
    },
    async listKeks(chain) {
      return [...(chains.get(chain)?.keks.values() ?? [])].map(copyRecord)
    },
    async getKekWraps(chain, id) {
      return wrapsOf(chain, id).map(copyRecord)
    },
    async deleteKekWrap(chain, id, root) {
      chains.get(chain)?.keks.delete(`${id}/${root}`)
    },
  }
}

/**
 * KEK records and head in this process's memory. Share one instance between chains to share
 * state; everything is gone when the process ends. `atomic: true`, `embedsKeks: false`.
 *
 * @example
 * ```ts
 * const store = memoryStore()
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store })
 * const again = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store }) // decrypts what `chain` made
 * ```
 */
export function memoryStore(): KeyStore {
  return inMemory(false)
}

/**
 * The original design's "store along every ciphertext": each encrypted data carries the
 * root-wrapped KEK, so decryption anywhere needs only the root key (one unwrap per distinct KEK
 * per process). The head and usage counts live in this process only: a new process starts a new
 * KEK, so the usage limit holds per process, not across processes. For the same reason there is
 * no KEK to prove a root key against (a chain on a shared store refuses a root that cannot
 * unwrap its KEKs): a wrong passphrase here simply makes data that only that passphrase opens.
 * The default store of {@link KeyChain.open}. `embedsKeks: true`.
 *
 * @example
 * ```ts
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), store: embeddedStore() })
 * const data = await chain.encrypt('notes') // any process with the passphrase decrypts it, no key file
 * ```
 */
export function embeddedStore(): KeyStore {
  return inMemory(true)
}
