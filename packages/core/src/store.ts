/**
 * Stores keep the wrapped KEKs and the chain head. KEK records are immutable (put-if-absent);
 * the head is the only mutable state and changes by compare-and-swap on its version.
 */
import { LONE_SURROGATE } from './internal/bytes.js'

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

/**
 * A KEK at the end of its life, as the head lists it (invariant 9). Retired: it no longer
 * decrypts, in any process once it has read the head (within `maxStalenessMs`); reversible.
 * Destroyed: every record of it is deleted from the store; the entry stays so that a process
 * still holding the KEK in memory drops it, and so that its data fails as destroyed, not unknown.
 */
export interface RetiredKek {
  /** The KEK's id. */
  readonly id: number
  /** When it was retired (ms since the epoch); destruction waits a grace period from here. */
  readonly retiredAt: number
  /** When its records were deleted (ms since the epoch); absent while it is only retired. */
  readonly destroyedAt?: number
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
  /** KEKs retired or destroyed, oldest first. Absent means none. A store keeps this list as it was given. */
  readonly retired?: readonly RetiredKek[]
  /** When the whole chain was retired (no encryption, no decryption; reversible). Absent: it is not. */
  readonly chainRetiredAt?: number
  /** When the whole chain was destroyed (every KEK record deleted; the head stays as its tombstone). */
  readonly chainDestroyedAt?: number
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
  /**
   * Calls `onChange` soon after the chain's head changes, in this process or any other that
   * shares the store (etcd's watch, Deno KV's `watch`, a `BroadcastChannel` between tabs, a
   * file's change). A hint only: the chain then reads the head itself, and still reads it at
   * least every `maxStalenessMs` in case a change was missed (a dropped connection). Extra or
   * spurious calls are harmless. Returns a function that stops watching; the store reconnects
   * on its own meanwhile and never throws from here. Stores without a push mechanism leave it out.
   */
  watchHead?(chain: string, onChange: () => void): () => void
}

const ROOT_NAME = /^[A-Za-z0-9._-]{1,64}$/
const ROOT_STATES: readonly unknown[] = ['adding', 'active', 'removing']

/** True for a valid root name: 1 to 64 letters, digits, `.`, `_`, `-` (never `:` or `/`, so stores may put it in keys). */
export function isRootName(value: unknown): value is string {
  return typeof value === 'string' && ROOT_NAME.test(value)
}

const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff

/**
 * Checks a root name ({@link isRootName}) and returns it. For store authors, as
 * {@link checkChainName}.
 *
 * @param what - the argument's name in the error message.
 * @throws TypeError - not 1 to 64 letters, digits, `.`, `_` or `-`.
 */
export function checkRootName(name: unknown, what = 'root'): string {
  if (!isRootName(name)) throw new TypeError(`${what}: expected 1 to 64 letters, digits, ".", "_" or "-"`)
  return name
}

/**
 * Checks a chain name as a key chain gives it to its store, and returns it: a well-formed string
 * of 1 to 255 characters (any characters, so `/`, `:` and `%` too: a store escapes the name
 * where it builds a key, a path or a query from it). For store authors: every store of this
 * project checks each method's arguments with this function, {@link checkKekId} and
 * {@link checkRootName} before any I/O, so that bad input is the same typed error in every store.
 *
 * @param what - the argument's name in the error message.
 * @throws TypeError - not a string, empty, longer than 255, or with an unpaired surrogate.
 * @example
 * ```ts
 * async getKek(chain, id) {
 *   const key = `${prefix}${encodeURIComponent(checkChainName(chain))}/${checkKekId(id)}`
 *   // ...
 * }
 * ```
 */
export function checkChainName(chain: unknown, what = 'chain'): string {
  if (typeof chain !== 'string' || !chain || chain.length > 255 || LONE_SURROGATE.test(chain)) {
    throw new TypeError(`${what}: expected a well-formed string of 1 to 255 characters`)
  }
  return chain
}

/**
 * Checks a KEK id and returns it: an integer from 1 to 2^32 - 1 (id 0 is reserved). For store
 * authors, as {@link checkChainName}.
 *
 * @throws RangeError - anything else.
 */
export function checkKekId(id: unknown): number {
  if (!isU32(id) || !id) throw new RangeError('id: expected an integer from 1 to 2^32 - 1')
  return id
}
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)

function parseRoots(v: unknown): readonly ChainRoot[] | undefined {
  if (!Array.isArray(v)) return undefined
  const out: ChainRoot[] = []
  for (const r of v as Array<Partial<ChainRoot> | null>) {
    if (!r || typeof r !== 'object' || !isRootName(r.name) || typeof r.kind !== 'string' || !ROOT_STATES.includes(r.state)) return undefined
    out.push(Object.freeze({ name: r.name, kind: r.kind, state: r.state! }))
  }
  return Object.freeze(out)
}

function parseRetired(v: unknown): readonly RetiredKek[] | undefined {
  if (!Array.isArray(v)) return undefined
  const out: RetiredKek[] = []
  for (const r of v as Array<Partial<RetiredKek> | null>) {
    if (!r || typeof r !== 'object' || !isU32(r.id) || r.id === 0 || !isTime(r.retiredAt)) return undefined
    if (r.destroyedAt !== undefined && !isTime(r.destroyedAt)) return undefined
    out.push(Object.freeze({ id: r.id, retiredAt: r.retiredAt, ...(r.destroyedAt === undefined ? {} : { destroyedAt: r.destroyedAt }) }))
  }
  return Object.freeze(out)
}

/**
 * A chain head checked and copied field by field, or `undefined` when `value` is not one (a
 * store answers a corrupt head with `ERR_STORE`). Optional fields absent stay absent, unknown
 * fields are dropped. For stores: parse what was read, and what is about to be written, with
 * this one function, so that every store keeps every field of the head exactly.
 *
 * @example
 * ```ts
 * const head = parseChainHead(JSON.parse(text))
 * if (!head) throw new StoreError('my store: the chain head is malformed')
 * ```
 */
export function parseChainHead(value: unknown): ChainHead | undefined {
  const h = value as Partial<ChainHead> | null
  if (!h || typeof h !== 'object' || !isU32(h.primary) || !isTime(h.primaryCreatedAt) || !isCount(h.leased)) return undefined
  const roots = h.roots === undefined ? undefined : parseRoots(h.roots)
  const retired = h.retired === undefined ? undefined : parseRetired(h.retired)
  if ((h.roots !== undefined && !roots) || (h.retired !== undefined && !retired)) return undefined
  if (h.chainRetiredAt !== undefined && !isTime(h.chainRetiredAt)) return undefined
  if (h.chainDestroyedAt !== undefined && !isTime(h.chainDestroyedAt)) return undefined
  return Object.freeze({
    primary: h.primary,
    primaryCreatedAt: h.primaryCreatedAt,
    leased: h.leased,
    ...(roots ? { roots } : {}),
    ...(retired ? { retired } : {}),
    ...(h.chainRetiredAt === undefined ? {} : { chainRetiredAt: h.chainRetiredAt }),
    ...(h.chainDestroyedAt === undefined ? {} : { chainDestroyedAt: h.chainDestroyedAt }),
  })
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
  const copy = parseChainHead(h)
  if (!copy) throw new TypeError('casHead: expected a chain head (primary, primaryCreatedAt, leased, and its optional fields well-formed)')
  return copy
}

function inMemory(embedsKeks: boolean): KeyStore {
  /** Records keyed by `id/root`. */
  const chains = new Map<string, { head?: Versioned<ChainHead>; keks: Map<string, KekRecord>; counter: number }>()
  const chainOf = (name: string) => {
    let c = chains.get(checkChainName(name))
    if (!c) chains.set(name, (c = { keks: new Map(), counter: 0 }))
    return c
  }
  const watchers = new Map<string, Set<() => void>>()
  const wrapsOf = (chain: string, id: number) => (checkKekId(id), [...(chains.get(checkChainName(chain))?.keks.values() ?? [])].filter((r) => r.id === id))
  return {
    atomic: true,
    embedsKeks,
    async getHead(chain) {
      return chains.get(checkChainName(chain))?.head
    },
    async casHead(chain, expected, next) {
      const c = chainOf(chain)
      if (c.head?.version !== expected) return false
      c.head = Object.freeze({ value: copyHead(next), version: String(++c.counter) })
      // As a store with a push mechanism does: after the write, never inside it.
      for (const onChange of watchers.get(chain) ?? []) setTimeout(onChange, 0)
      return true
    },
    async getKek(chain, id) {
      const wraps = wrapsOf(chain, id)
      const r = wraps.find((w) => rootOf(w) === DEFAULT_ROOT) ?? wraps[0]
      return r && copyRecord(r)
    },
    async putKekIfAbsent(chain, record) {
      const c = chainOf(chain)
      const key = `${checkKekId(record.id)}/${checkRootName(rootOf(record))}`
      if (c.keks.has(key)) return false
      c.keks.set(key, copyRecord(record))
      return true
    },
    async listKeks(chain) {
      return [...(chains.get(checkChainName(chain))?.keks.values() ?? [])].map(copyRecord)
    },
    async getKekWraps(chain, id) {
      return wrapsOf(chain, id).map(copyRecord)
    },
    async deleteKekWrap(chain, id, root) {
      chains.get(checkChainName(chain))?.keks.delete(`${checkKekId(id)}/${checkRootName(root)}`)
    },
    watchHead(chain, onChange) {
      let set = watchers.get(chain)
      if (!set) watchers.set(chain, (set = new Set()))
      const own = () => onChange() // a distinct entry per call, so one watcher's stop leaves the others
      set.add(own)
      return () => void set.delete(own)
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
