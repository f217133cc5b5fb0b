/**
 * Where a chain's KEKs come from: the cache of unwrapped KEKs, the store, and the root key. Every
 * root-key call and every store call of a chain goes through here, so this is where they are
 * counted, coalesced, turned into typed errors, and where failures are remembered.
 */
import { KmsProxyError, LimitError, RootKeyError, StoreError, UnknownKekError, isKmsProxyError } from '../errors.js'
import { MAX_EMBEDDED_KEK_BYTES, kekAad } from '../format.js'
import type { RootKey } from '../root-key.js'
import type { KeyStore, KekRecord } from '../store.js'
import { bytesKey } from './bytes.js'
import { Lru } from './lru.js'
import { randomU32 } from './random.js'

/** The counters behind `stats()`, shared by the parts of a chain. */
export interface Counts {
  encryptions: number
  decryptions: number
  rotations: number
  rootKeyWraps: number
  rootKeyUnwraps: number
  dekCacheHits: number
  dekCacheMisses: number
}

/** What this process knows of a KEK, for `stats()`. */
export interface KekEntry {
  id: number
  createdAt: number
  wraps: number
}

/** A KEK this process created and persisted. */
export interface NewKekMade {
  id: number
  createdAt: number
  kek: CryptoKey
  wrapped: Uint8Array
}

const ID_ATTEMPTS = 8
/** Failures remembered: enough for every KEK of a long-lived chain, small enough to ignore. */
const FAILURE_MEMORY = 256
/**
 * How long "no such KEK" is believed. KEK records are written before any data names them
 * (invariant 2), so on a consistent store an unknown id stays unknown; the bound is for stores
 * that are only eventually consistent, where a new record may arrive late.
 */
const UNKNOWN_KEK_MS = 5_000
/**
 * How long a root key's refusal is believed. A planted or corrupt KEK is refused the same way
 * every time; the bound is for refusals an operator can mend (a KMS key policy, a bridge token's
 * scope), which a long-running process should notice without a restart.
 */
const REFUSED_KEK_MS = 60_000

export class KekSource {
  readonly #name: string
  readonly #root: RootKey
  readonly #store: KeyStore
  readonly #counts: Counts
  /** Unwrapped KEKs by id (stored) or id + wrapped bytes (embedded). Failed promises are removed. */
  readonly #keks = new Map<string, Promise<CryptoKey>>()
  /**
   * Non-retryable failures by the same key: a planted or corrupt KEK record is immutable, so it
   * fails the same way every time, and must not cost a (billed) root-key call per message.
   * Bounded in count (FAILURE_MEMORY) and in time (REFUSED_KEK_MS, UNKNOWN_KEK_MS).
   */
  readonly #failed = new Lru<string, { error: KmsProxyError; until: number }>(FAILURE_MEMORY)
  readonly entries = new Map<number, KekEntry>()
  /**
   * Whether this chain's root has unwrapped a KEK record of the chain's store, or made the
   * primary the head names: only then may it wrap a new KEK (see #prove).
   */
  proved = false
  #available = true
  #lastError: string | undefined

  constructor(name: string, root: RootKey, store: KeyStore, counts: Counts) {
    this.#name = name
    this.#root = root
    this.#store = store
    this.#counts = counts
  }

  get rootKind(): string {
    return this.#root.kind
  }

  /** False after a retryable root-key failure, until a call succeeds. */
  get available(): boolean {
    return this.#available
  }

  get lastError(): string | undefined {
    return this.#lastError
  }

  remember(id: number, createdAt: number): KekEntry {
    let entry = this.entries.get(id)
    if (!entry) this.entries.set(id, (entry = { id, createdAt, wraps: 0 }))
    return entry
  }

  /**
   * The unwrapped KEK `id`: from the cache, else from `embedded` (the data's own wrapped KEK),
   * else from `record` or the store; one root-key call per KEK per process, concurrent misses
   * coalesced, non-retryable failures remembered.
   */
  kekFor(id: number, embedded: Uint8Array | undefined, record?: KekRecord): Promise<CryptoKey> {
    const cacheKey = embedded ? `${id}:${bytesKey(embedded)}` : String(id)
    const pending = this.#keks.get(cacheKey)
    if (pending) return pending
    const failed = this.#failed.get(cacheKey)
    // A record in hand (the head names it) overrides an earlier "unknown".
    const stale = failed === undefined || Date.now() >= failed.until || (record !== undefined && failed.error.code === 'ERR_UNKNOWN_KEK')
    if (!stale) return Promise.reject(failed.error)
    const loading = (async () => {
      let wrapped = embedded
      if (!wrapped) {
        const found = record ?? (await this.storeCall('read a KEK', () => this.#store.getKek(this.#name, id)))
        if (!found) throw new UnknownKekError('unknown KEK: not cached, embedded or in the store')
        this.remember(found.id, found.createdAt)
        wrapped = found.wrapped
      }
      const kek = await this.#unwrap(wrapped, id)
      // A record of the chain's store, not bytes some data carried: the root is the chain's.
      if (!embedded) this.proved = true
      return kek
    })()
    this.#keks.set(cacheKey, loading)
    loading.catch((error: unknown) => {
      if (this.#keks.get(cacheKey) === loading) this.#keks.delete(cacheKey)
      // Only what the KEK itself caused: a store that failed (even for good) is asked again.
      if (isKmsProxyError(error) && !error.retryable && (error.code === 'ERR_ROOT_KEY' || error.code === 'ERR_UNKNOWN_KEK')) {
        this.#failed.set(cacheKey, { error, until: Date.now() + (error.code === 'ERR_UNKNOWN_KEK' ? UNKNOWN_KEK_MS : REFUSED_KEK_MS) })
      }
    })
    return loading
  }

  /** Caches a KEK this process just made, under the key kekFor would use. */
  cache(id: number, embedded: Uint8Array | undefined, kek: CryptoKey): void {
    this.#keks.set(embedded ? `${id}:${bytesKey(embedded)}` : String(id), Promise.resolve(kek))
  }

  async #unwrap(wrapped: Uint8Array, id: number): Promise<CryptoKey> {
    this.#counts.rootKeyUnwraps++
    const kek = await this.#rootCall('unwrap a KEK', () => this.#root.unwrapKek(wrapped, kekAad(this.#name, id)))
    assertKek(kek)
    return kek
  }

  /**
   * A new KEK from the root key, durably in the store before anything uses it (invariant 2), and
   * only from a proved root (see #prove). `primary` is the primary the head names, if any.
   */
  async createKek(primary: number | undefined): Promise<NewKekMade> {
    await this.#prove(primary)
    for (let attempt = 0; attempt < ID_ATTEMPTS; attempt++) {
      const id = randomU32()
      if (this.entries.has(id)) continue
      this.#counts.rootKeyWraps++
      const made = await this.#rootCall('wrap a new KEK', () => this.#root.newKek(kekAad(this.#name, id)))
      assertKek(made.kek)
      if (!(made.wrapped instanceof Uint8Array) || made.wrapped.length === 0) throw new RootKeyError('the root key returned an empty wrapped KEK')
      if (this.#store.embedsKeks && made.wrapped.length > MAX_EMBEDDED_KEK_BYTES) {
        throw new LimitError(`a wrapped KEK of ${made.wrapped.length} bytes is too large to embed (max ${MAX_EMBEDDED_KEK_BYTES})`)
      }
      const record: KekRecord = { id, createdAt: Date.now(), rootKind: this.#root.kind, wrapped: made.wrapped }
      if (await this.storeCall('write a KEK', () => this.#store.putKekIfAbsent(this.#name, record))) {
        this.remember(id, record.createdAt)
        this.cache(id, this.#store.embedsKeks ? made.wrapped : undefined, made.kek)
        return { id, createdAt: record.createdAt, kek: made.kek, wrapped: made.wrapped }
      }
    }
    throw new LimitError('could not find a free KEK id')
  }

  /**
   * A root is proved (it unwraps an existing KEK of the chain) before it may wrap a new one, so a
   * mistyped passphrase or another KMS key cannot start a second line of KEKs that the chain's
   * root cannot read. The proof is the head's primary (normally cached already: no call), or,
   * only when the store lacks that record or there is no head, the newest other record. A
   * primary the root refuses is final: a corrupt record and a wrong root look the same, and
   * another record may be a stray KEK of the wrong root itself (one that lost the race to start
   * the chain). A brand-new chain (no head, no record) has nothing to prove against. Writes
   * nothing; throws the root's own error, or ERR_STORE.
   */
  async #prove(primary: number | undefined): Promise<void> {
    if (this.proved || (primary !== undefined && (await this.loadStored(primary)))) return
    const [newest] = (await this.storeCall('list the KEKs', () => this.#store.listKeks(this.#name))).sort((x, y) => y.createdAt - x.createdAt)
    if (newest) await this.loadStored(newest.id, newest)
    else if (primary !== undefined) throw missingPrimary()
  }

  /**
   * The stored KEK `id` (its record read unless given) through kekFor: one root unwrap, or the
   * cache. A success proves the root. Undefined when the store has no such record.
   */
  async loadStored(id: number, record?: KekRecord): Promise<{ record: KekRecord; kek: CryptoKey } | undefined> {
    record ??= await this.storeCall('read a KEK', () => this.#store.getKek(this.#name, id))
    if (!record) return undefined
    const kek = await this.kekFor(record.id, this.#store.embedsKeks ? record.wrapped : undefined, record)
    this.remember(record.id, record.createdAt)
    this.proved = true
    return { record, kek }
  }

  /** Every root-key call goes through here: typed errors, availability for stats(). */
  async #rootCall<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      const result = await call()
      this.#available = true
      return result
    } catch (error) {
      const e = error instanceof KmsProxyError ? error : new RootKeyError(`the root key failed to ${what}`, { cause: error })
      if (e.retryable) this.#available = false
      this.#lastError = `${e.code}: ${e.message}`
      throw e
    }
  }

  /** Every store call goes through here: anything but our own errors becomes a retryable ERR_STORE. */
  async storeCall<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call()
    } catch (error) {
      if (error instanceof KmsProxyError) throw error
      throw new StoreError(`the store failed to ${what}`, { cause: error, retryable: true })
    }
  }
}

/** Retryable: on an eventually consistent store the record may not have arrived yet. */
export const missingPrimary = (): StoreError => new StoreError('the chain head names a KEK that the store does not have', { retryable: true })

function assertKek(kek: unknown): asserts kek is CryptoKey {
  const k = kek as CryptoKey | undefined
  if (!k || typeof k !== 'object' || k.type !== 'secret') throw new RootKeyError('the root key returned no secret CryptoKey')
  if (k.extractable) throw new RootKeyError('the root key returned an extractable KEK')
}
