/**
 * Stores keep the wrapped KEKs and the chain head. KEK records are immutable (put-if-absent);
 * the head is the only mutable state and changes by compare-and-swap on its version.
 */

/** One KEK as a store keeps it: written once (put-if-absent), never changed. */
export interface KekRecord {
  /** Random u32, never 0, unique within the chain. */
  readonly id: number
  /** Milliseconds since the epoch. */
  readonly createdAt: number
  /** RootKey.kind of the root that wrapped it. */
  readonly rootKind: string
  /** The KEK as the root key wrapped it (bound to the chain name and id). */
  readonly wrapped: Uint8Array
}

/** The chain head: the only mutable record of a chain, changed by compare-and-swap. Not authenticated: see docs/SECURITY.md. */
export interface ChainHead {
  /** KEK id of the primary KEK. */
  readonly primary: number
  /** createdAt of the primary KEK, for the age limit. */
  readonly primaryCreatedAt: number
  /** Uses of the primary handed out in leases so far, across every process. Never exceeds maxWrapsPerKek. */
  readonly leased: number
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
  /** The KEK record with this id, or `undefined` when there is none. */
  getKek(chain: string, id: number): Promise<KekRecord | undefined>
  /** Writes the record only if no record has this id; never overwrites. */
  putKekIfAbsent(chain: string, record: KekRecord): Promise<boolean>
  /** Every KEK record of the chain, in no particular order. */
  listKeks(chain: string): Promise<KekRecord[]>
}

function copyRecord(r: KekRecord): KekRecord {
  return Object.freeze({ id: r.id, createdAt: r.createdAt, rootKind: r.rootKind, wrapped: r.wrapped.slice() })
}

function inMemory(embedsKeks: boolean): KeyStore {
  const chains = new Map<string, { head?: Versioned<ChainHead>; keks: Map<number, KekRecord>; counter: number }>()
  const chainOf = (name: string) => {
    let c = chains.get(name)
    if (!c) chains.set(name, (c = { keks: new Map(), counter: 0 }))
    return c
  }
  return {
    atomic: true,
    embedsKeks,
    async getHead(chain) {
      return chains.get(chain)?.head
    },
    async casHead(chain, expected, next) {
      const c = chainOf(chain)
      if (c.head?.version !== expected) return false
      c.head = Object.freeze({ value: Object.freeze({ ...next }), version: String(++c.counter) })
      return true
    },
    async getKek(chain, id) {
      const r = chains.get(chain)?.keks.get(id)
      return r && copyRecord(r)
    },
    async putKekIfAbsent(chain, record) {
      const c = chainOf(chain)
      if (c.keks.has(record.id)) return false
      c.keks.set(record.id, copyRecord(record))
      return true
    },
    async listKeks(chain) {
      return [...(chains.get(chain)?.keks.values() ?? [])].map(copyRecord)
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
