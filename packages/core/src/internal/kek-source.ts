/**
 * Where a chain's KEKs come from: the cache of unwrapped KEKs, the store, and the root key. Every
 * root-key call and every store call of a chain goes through here, so this is where they are
 * counted, coalesced, turned into typed errors, and where failures are remembered.
 */
import { KmsProxyError, LimitError, RootKeyError, StoreError, UnknownKekError, isKmsProxyError } from '../errors.js'
import { MAX_EMBEDDED_KEK_BYTES, kekAad, type EmbeddedKek } from '../format.js'
import { KEK_ALGORITHM, type RootKey } from '../root-key.js'
import { DEFAULT_ROOT, rootOf, type ChainHead, type ChainRoot, type KeyStore, type KekRecord } from '../store.js'
import { bytesKey, gcmParams } from './bytes.js'
import { Lru } from './lru.js'
import { randomBytes, randomU32 } from './random.js'

/** The counters behind `stats()`, shared by the parts of a chain. */
export interface Counts {
  encryptions: number
  decryptions: number
  rotations: number
  rootKeyWraps: number
  rootKeyUnwraps: number
  dekCacheHits: number
  dekCacheMisses: number
  refusedRetired: number
}

/** What this process knows of a KEK, for `stats()`. */
export interface KekEntry {
  id: number
  createdAt: number
  wraps: number
  /** Messages and streams this process decrypted under it. */
  decryptions: number
  /** Data this process moved off it with rewrap or rewrapStreamHeader. */
  rewrapped: number
}

/** One root's wrap of a KEK: the root's name in the chain and the wrapped bytes. */
export interface Wrap {
  root: string
  wrapped: Uint8Array
}

/** A KEK this process created and persisted, with its wrap under each root it was made for. */
export interface NewKekMade {
  id: number
  createdAt: number
  kek: CryptoKey
  wraps: Wrap[]
}

/** Root-key calls and availability of one root, for `stats()`. */
export interface RootCounts {
  kind: string
  wraps: number
  unwraps: number
  available: boolean
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
const KEK_USAGES: ('encrypt' | 'wrapKey' | 'unwrapKey')[] = ['encrypt', 'wrapKey', 'unwrapKey']

/** A wrap to try: the root's name when the data or record names one (v1 embedded data does not). */
type Candidate = { root: string | undefined; wrapped: Uint8Array; kind?: string }

export class KekSource {
  readonly #name: string
  readonly #store: KeyStore
  readonly #counts: Counts
  /** The roots this process holds, by name, in the order unwraps try them. */
  readonly held: Map<string, RootKey>
  /**
   * Opened with `rootKey`: the one held root stands for the chain's only root, whatever the head
   * calls it. A root change names it (see bindSingle).
   */
  single: boolean
  /** Unwrapped KEKs by id (stored) or id + wrapped bytes (embedded). Failed promises are removed. */
  readonly #keks = new Map<string, Promise<CryptoKey>>()
  /**
   * Non-retryable failures by the same key: a planted or corrupt KEK record is immutable, so it
   * fails the same way every time, and must not cost a (billed) root-key call per message.
   * Bounded in count (FAILURE_MEMORY) and in time (REFUSED_KEK_MS, UNKNOWN_KEK_MS).
   */
  readonly #failed = new Lru<string, { error: KmsProxyError; until: number }>(FAILURE_MEMORY)
  readonly entries = new Map<number, KekEntry>()
  /** Calls per held root, by name. */
  readonly perRoot = new Map<string, RootCounts>()
  /**
   * The chain's roots (by the name the head gives them) that a held root has unwrapped a KEK
   * record of, or made the primary the head names: only they may get a new KEK's wrap (#prove).
   */
  readonly #proved = new Set<string>()
  /**
   * In single mode, the chain root the one held root proved to be (undefined until it unwrapped a
   * record of the store): from then on it stands for that root only, so that a process opened
   * with an old root does not take a root added since for its own.
   */
  #bound: string | undefined
  #available = true
  #lastError: string | undefined
  /** A key of this process only, to turn an extractable KEK into a non-extractable one inside WebCrypto. */
  #local: Promise<CryptoKey> | undefined

  constructor(name: string, roots: Map<string, RootKey>, single: boolean, store: KeyStore, counts: Counts) {
    this.#name = name
    this.held = new Map(roots)
    this.single = single
    this.#store = store
    this.#counts = counts
    for (const [n, r] of roots) this.perRoot.set(n, { kind: r.kind, wraps: 0, unwraps: 0, available: true })
  }

  get store(): KeyStore {
    return this.#store
  }

  get chainName(): string {
    return this.#name
  }

  /** The kinds of the roots held, for toJSON: `'aes'`, or `'passkey: webauthn-prf, recovery: passphrase-pbkdf2'`. */
  get rootKinds(): string {
    if (this.single) return [...this.held.values()][0]!.kind
    return [...this.held].map(([n, r]) => `${n}: ${r.kind}`).join(', ')
  }

  /** False after a retryable root-key failure, until a call succeeds. */
  get available(): boolean {
    return this.#available
  }

  get lastError(): string | undefined {
    return this.#lastError
  }

  /** Whether the store keeps a record per KEK and root (getKekWraps and deleteKekWrap). */
  get multiRootStore(): boolean {
    return typeof this.#store.getKekWraps === 'function' && typeof this.#store.deleteKekWrap === 'function'
  }

  /** The held root that stands for the chain's root `name`, if this process holds it. */
  rootFor(name: string): RootKey | undefined {
    if (!this.single) return this.held.get(name)
    return this.#bound === undefined || this.#bound === name ? [...this.held.values()][0] : undefined
  }

  #setProved(name: string): void {
    this.#proved.add(name)
    if (this.single) this.#bound ??= name
  }

  /** The name under which a held root is counted and proved. */
  #heldName(name: string): string {
    return this.single ? [...this.held.keys()][0]! : name
  }

  /**
   * Leaves single mode: the one held root takes the name the head gives the chain's only root, so
   * that a chain opened with `rootKey` can gain a second root.
   */
  bindSingle(name: string): void {
    if (!this.single) return
    const [[held, root]] = [...this.held] as [[string, RootKey]]
    this.single = false
    if (held === name) return
    this.held.clear()
    this.held.set(name, root)
    this.perRoot.set(name, this.perRoot.get(held)!)
    this.perRoot.delete(held)
  }

  /** Holds one more root (addRoot, changeRoot), proved by the caller. */
  hold(name: string, root: RootKey): void {
    this.held.set(name, root)
    if (!this.perRoot.has(name)) this.perRoot.set(name, { kind: root.kind, wraps: 0, unwraps: 0, available: true })
  }

  markProved(names: Iterable<string>): void {
    for (const n of names) this.#setProved(n)
  }

  /**
   * Proves that this process holds the chain root `name` (its held root unwraps a wrap under that
   * name: the primary's, or the newest), before a root change edits the head on its behalf.
   */
  async proveHeld(name: string, primary: number | undefined): Promise<void> {
    if (!this.rootFor(name)) throw new RootKeyError(`this process does not hold the root "${name}"`)
    await this.#prove(name, primary, false)
  }

  /**
   * The chain's roots as the head lists them; a head from before chains had several roots has
   * one, `'default'`; a chain with no head yet gets the roots this process holds.
   */
  chainRoots(head: ChainHead | undefined): readonly ChainRoot[] {
    if (head?.roots) return head.roots
    const kindOf = (n: string) => this.rootFor(n)?.kind ?? 'unknown'
    if (head || this.single) return [{ name: DEFAULT_ROOT, kind: kindOf(DEFAULT_ROOT), state: 'active' }]
    return [...this.held].map(([name, r]) => ({ name, kind: r.kind, state: 'active' as const }))
  }

  remember(id: number, createdAt: number): KekEntry {
    let entry = this.entries.get(id)
    if (!entry) this.entries.set(id, (entry = { id, createdAt, wraps: 0, decryptions: 0, rewrapped: 0 }))
    return entry
  }

  /** Every record of KEK `id`, one per root (one record on a store of one root per KEK). */
  async wrapsOf(id: number): Promise<KekRecord[]> {
    if (this.multiRootStore) return this.storeCall('read a KEK', () => this.#store.getKekWraps!(this.#name, id))
    const one = await this.storeCall('read a KEK', () => this.#store.getKek(this.#name, id))
    return one ? [one] : []
  }

  /**
   * The unwrapped KEK `id`: from the cache, else from `embedded` (the data's own wrapped KEKs),
   * else from `records` or the store; one root-key call per KEK per process (more only when a
   * root fails and the next one is tried), concurrent misses coalesced, non-retryable failures
   * remembered.
   */
  kekFor(id: number, embedded: readonly EmbeddedKek[] | undefined, records?: KekRecord[]): Promise<CryptoKey> {
    const cacheKey = embedded ? embeddedKey(id, embedded) : String(id)
    const pending = this.#keks.get(cacheKey)
    if (pending) return pending
    const failed = this.#failed.get(cacheKey)
    // A record in hand (the head names it) overrides an earlier "unknown".
    const stale = failed === undefined || Date.now() >= failed.until || (records !== undefined && failed.error.code === 'ERR_UNKNOWN_KEK')
    if (!stale) return Promise.reject(failed.error)
    const loading = (async () => {
      let candidates: Candidate[]
      if (embedded) candidates = [...embedded]
      else {
        const found = records ?? (await this.wrapsOf(id))
        if (found.length === 0) throw new UnknownKekError('unknown KEK: not cached, embedded or in the store')
        this.remember(found[0]!.id, found[0]!.createdAt)
        candidates = found.map((r) => ({ root: rootOf(r), wrapped: r.wrapped, kind: r.rootKind }))
      }
      const { kek, root } = await this.#unwrapAny(id, candidates, false)
      // A record of the chain's store, not bytes some data carried: the root is the chain's.
      if (!embedded && root !== undefined) this.#setProved(root)
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

  /** Drops every cached form of KEK `id` (a destroyed KEK leaves this process's memory too). */
  forget(id: number): void {
    for (const key of [...this.#keks.keys()]) if (key === String(id) || key.startsWith(`${id}:`)) this.#keks.delete(key)
  }

  /** Caches a KEK this process just made, under the key kekFor would use. */
  cache(id: number, embedded: readonly Wrap[] | undefined, kek: CryptoKey): void {
    this.#keks.set(embedded ? embeddedKey(id, embedded) : String(id), Promise.resolve(kek))
  }

  /**
   * Tries the held roots in order on the wraps they have (a wrap that names no root, from v1
   * data, is tried by every held root): the first that unwraps wins. A root that is down or
   * refuses does not stop the next one, so a chain unlocks through any one of its roots.
   */
  async #unwrapAny(id: number, candidates: Candidate[], extractable: boolean, except?: string): Promise<{ kek: CryptoKey; by: string; root: string | undefined }> {
    const attempts: { name: string; root: RootKey; wrapped: Uint8Array; chainRoot: string | undefined }[] = []
    for (const [name, root] of this.held) {
      if (name === except) continue
      // One held root stands for any name until it proved which root it is, then for that one.
      const mine = candidates.filter((c) => c.root === undefined || (this.single ? this.#bound === undefined || c.root === this.#bound : c.root === name))
      // With one root standing for any name, the records of its own kind first.
      mine.sort((x, y) => Number(y.kind === root.kind) - Number(x.kind === root.kind))
      for (const c of mine) attempts.push({ name, root, wrapped: c.wrapped, chainRoot: c.root })
    }
    if (attempts.length === 0) {
      const names = [...new Set(candidates.map((c) => c.root))].join(', ')
      throw new RootKeyError(`this KEK has no wrap under a root this process holds (it has: ${names})`)
    }
    const errors: KmsProxyError[] = []
    for (const a of attempts) {
      try {
        const kek = await this.#unwrapWith(a.name, a.root, a.wrapped, id, extractable)
        return { kek, by: a.name, root: a.chainRoot }
      } catch (error) {
        if (!isKmsProxyError(error) || error.code !== 'ERR_ROOT_KEY') throw error
        errors.push(error)
      }
    }
    if (errors.length === 1) throw errors[0]!
    const retryable = errors.some((e) => e.retryable)
    throw new RootKeyError(`no root could unwrap this KEK (${attempts.map((a) => a.name).join(', ')} tried)`, { retryable, cause: errors.at(-1) })
  }

  async #unwrapWith(name: string, root: RootKey, wrapped: Uint8Array, id: number, extractable: boolean): Promise<CryptoKey> {
    this.#counts.rootKeyUnwraps++
    const counts = this.perRoot.get(name)
    if (counts) counts.unwraps++
    const aad = kekAad(this.#name, id)
    const kek = await this.#rootCall(name, 'unwrap a KEK', () => (extractable ? root.unwrapKek(wrapped, aad, { extractable: true }) : root.unwrapKek(wrapped, aad)))
    assertKek(kek, extractable)
    if (extractable && !kek.extractable) {
      throw new RootKeyError(`the root "${name}" cannot hand a KEK to another root (its unwrapKek ignores the extractable option)`)
    }
    return kek
  }

  /** KEK `id` as an extractable handle, for a re-wrap under another root; never cached. */
  unwrapForRewrap(id: number, records: KekRecord[], except: string): Promise<{ kek: CryptoKey; by: string; root: string | undefined }> {
    return this.#unwrapAny(id, records.map((r) => ({ root: rootOf(r), wrapped: r.wrapped, kind: r.rootKind })), true, except)
  }

  /** One wrap of an existing KEK under the held root `name`, counted. */
  async wrapUnder(name: string, root: RootKey, kek: CryptoKey, id: number): Promise<Uint8Array> {
    if (typeof root.wrapKek !== 'function') {
      throw new RootKeyError(`the root "${name}" cannot wrap an existing KEK (it has no wrapKek), so it cannot share a chain with other roots`)
    }
    this.#counts.rootKeyWraps++
    this.perRoot.get(name)!.wraps++
    const wrapped = await this.#rootCall(name, 'wrap a KEK', () => root.wrapKek!(kek, kekAad(this.#name, id)))
    this.#checkWrapped(wrapped)
    return wrapped
  }

  /** Unwraps `wrapped` with the held root `name` (a new root proving itself on its own wrap). */
  proveWrap(name: string, root: RootKey, wrapped: Uint8Array, id: number): Promise<CryptoKey> {
    return this.#unwrapWith(name, root, wrapped, id, false)
  }

  #checkWrapped(wrapped: unknown): asserts wrapped is Uint8Array {
    if (!(wrapped instanceof Uint8Array) || wrapped.length === 0) throw new RootKeyError('the root key returned an empty wrapped KEK')
    if (this.#store.embedsKeks && wrapped.length > MAX_EMBEDDED_KEK_BYTES) {
      throw new LimitError(`a wrapped KEK of ${wrapped.length} bytes is too large to embed (max ${MAX_EMBEDDED_KEK_BYTES})`)
    }
  }

  /**
   * A new KEK, wrapped under every active root of the chain (and every root being added that this
   * process holds), durably in the store before anything uses it (invariant 2), and only from
   * proved roots (see #prove). One root: its newKek, one call, as always. Several: the KEK is
   * made inside WebCrypto and each root wraps it (one call each).
   */
  async createKek(head: ChainHead | undefined): Promise<NewKekMade> {
    const set = this.chainRoots(head)
    const active = set.filter((r) => r.state === 'active')
    if (this.single && active.length > 1) {
      throw new RootKeyError(`this chain has ${active.length} roots (${active.map((r) => r.name).join(', ')}): open it with roots: { … } naming the ones this process holds`)
    }
    const targets: { name: string; root: RootKey }[] = []
    for (const r of active) {
      const root = this.rootFor(r.name)
      if (!root) throw new RootKeyError(`a new KEK is wrapped under every root of the chain, and this process does not hold the root "${r.name}"`)
      targets.push({ name: r.name, root })
    }
    for (const r of set) {
      const root = r.state === 'adding' && !this.single ? this.held.get(r.name) : undefined
      // A root being added that this process cannot prove is left out: the process adding it
      // wraps this KEK too, in its next pass.
      if (root && (await this.#prove(r.name, head?.primary, true).catch(() => false))) targets.push({ name: r.name, root })
    }
    for (const t of targets.slice(0, active.length)) await this.#prove(t.name, head?.primary, false)
    for (let attempt = 0; attempt < ID_ATTEMPTS; attempt++) {
      const id = randomU32()
      if (this.entries.has(id) || (this.multiRootStore && (await this.wrapsOf(id)).length > 0)) continue
      const aad = kekAad(this.#name, id)
      const wraps: Wrap[] = []
      let kek: CryptoKey
      if (targets.length === 1) {
        const [{ name, root }] = targets as [{ name: string; root: RootKey }]
        this.#counts.rootKeyWraps++
        this.perRoot.get(this.#heldName(name))!.wraps++
        const made = await this.#rootCall(this.#heldName(name), 'wrap a new KEK', () => root.newKek(aad))
        assertKek(made.kek, false)
        this.#checkWrapped(made.wrapped)
        kek = made.kek
        wraps.push({ root: name, wrapped: made.wrapped })
      } else {
        // extractable: true only because subtle.wrapKey refuses a non-extractable key. Each root
        // wraps this handle inside WebCrypto; the chain then keeps a non-extractable copy.
        const fresh = await crypto.subtle.generateKey(KEK_ALGORITHM, true, KEK_USAGES)
        for (const t of targets) wraps.push({ root: t.name, wrapped: await this.wrapUnder(t.name, t.root, fresh, id) })
        kek = await this.#nonExtractable(fresh)
      }
      const createdAt = Date.now()
      const record = (w: Wrap, i: number): KekRecord => ({
        id,
        createdAt,
        rootKind: targets[i]!.root.kind,
        wrapped: w.wrapped,
        ...(w.root === DEFAULT_ROOT ? {} : { root: w.root }),
      })
      // The first record decides the id; the others cannot collide (a concurrent addRoot may
      // have written the same KEK's wrap under its root first: as good as ours).
      if (!(await this.storeCall('write a KEK', () => this.#store.putKekIfAbsent(this.#name, record(wraps[0]!, 0))))) continue
      for (let i = 1; i < wraps.length; i++) {
        await this.storeCall('write a KEK', () => this.#store.putKekIfAbsent(this.#name, record(wraps[i]!, i)))
      }
      this.remember(id, createdAt)
      this.cache(id, this.#store.embedsKeks ? wraps : undefined, kek)
      return { id, createdAt, kek, wraps }
    }
    throw new LimitError('could not find a free KEK id')
  }

  async #nonExtractable(kek: CryptoKey): Promise<CryptoKey> {
    const local = await (this.#local ??= crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['wrapKey', 'unwrapKey']))
    const iv = randomBytes(12)
    const sealed = await crypto.subtle.wrapKey('raw', kek, local, gcmParams(iv, new Uint8Array(0)))
    return crypto.subtle.unwrapKey('raw', sealed, local, gcmParams(iv, new Uint8Array(0)), KEK_ALGORITHM, false, KEK_USAGES)
  }

  /**
   * A root is proved (it unwraps an existing KEK of the chain) before it may wrap a new one, so a
   * mistyped passphrase or another KMS key cannot start a second line of KEKs that the chain's
   * root cannot read. The proof is the head's primary's wrap under this root (normally cached
   * already: no call), or, only when the store lacks it or there is no head, the newest other
   * record under this root. A primary the root refuses is final: a corrupt record and a wrong
   * root look the same, and another record may be a stray KEK of the wrong root itself (one that
   * lost the race to start the chain). A brand-new chain (no head, no record) has nothing to
   * prove against. Writes nothing; throws the root's own error, or ERR_STORE. A root being added
   * (`optional`) that has no wrap yet is not proved: returns false, and is left out.
   */
  async #prove(name: string, primary: number | undefined, optional: boolean): Promise<boolean> {
    if (this.#proved.has(name)) return true
    const mine = (r: KekRecord) => rootOf(r) === name
    const unwrap = async (records: KekRecord[], all: boolean) => {
      const id = records[0]!.id
      // This root unwraps for itself: a cached KEK may be another root's unwrap, which proves
      // nothing of this one. Not through kekFor, whose failure memory is per KEK, not per root.
      // The KEK is cached for later use, so a process that proves on its primary pays one call.
      // A refusal is remembered per KEK and root, as kekFor remembers it per KEK: a wrong root
      // retried on every encryption must not cost a (billed) root-key call each time.
      // kekFor's memory (String(id)) counts too: it failed only after every held root failed.
      const memo = `${id}@${name}`
      for (const key of [memo, String(id)]) {
        const failed = this.#failed.get(key)
        if (failed && Date.now() < failed.until && failed.error.code === 'ERR_ROOT_KEY') throw failed.error
      }
      let kek: CryptoKey
      try {
        ;({ kek } = await this.#unwrapAny(id, records.map((r) => ({ root: rootOf(r), wrapped: r.wrapped, kind: r.rootKind })), false))
      } catch (error) {
        if (isKmsProxyError(error) && !error.retryable && error.code === 'ERR_ROOT_KEY') {
          // With one held root and every record of the KEK tried, kekFor would ask that same
          // root the same again: remember it there too.
          for (const key of this.held.size === 1 && all ? [memo, String(id)] : [memo]) this.#failed.set(key, { error, until: Date.now() + REFUSED_KEK_MS })
        }
        throw error
      }
      if (!this.#keks.has(String(id))) this.cache(id, undefined, kek)
      this.remember(id, records[0]!.createdAt)
      this.#setProved(name)
      return true
    }
    let primaryStored = false
    if (primary !== undefined) {
      const records = await this.wrapsOf(primary)
      primaryStored = records.length > 0
      const own = records.filter(mine)
      if (own.length > 0) return unwrap(own, own.length === records.length)
    }
    const [newest] = (await this.storeCall('list the KEKs', () => this.#store.listKeks(this.#name))).filter(mine).sort((x, y) => y.createdAt - x.createdAt)
    if (newest) return unwrap([newest], false)
    if (optional) return false
    // The primary is stored, under other roots only: this root is not (or no longer) the chain's.
    // Not retryable: waiting will not give it a wrap.
    if (primaryStored) throw new RootKeyError(`the chain's KEKs have no wrap under the root "${name}"`)
    if (primary !== undefined) throw missingPrimary()
    return true
  }

  /**
   * Holds `root` as the chain's root `name`, proved by the caller (it unwrapped its own wrap of
   * the primary): a root change run again by a process whose old root has no wrap left.
   */
  adopt(name: string, root: RootKey): void {
    if (this.single) {
      const [[held, old]] = [...this.held] as [[string, RootKey]]
      this.single = false
      this.held.clear()
      this.held.set(this.#bound ?? held, old)
    }
    this.hold(name, root)
    this.#setProved(name)
  }

  /**
   * The stored KEK `id` (its records read unless given) through kekFor: one root unwrap, or the
   * cache. A success proves the root that unwrapped it. Undefined when the store has no record.
   */
  async loadStored(id: number, records?: KekRecord[]): Promise<{ records: KekRecord[]; kek: CryptoKey } | undefined> {
    records ??= await this.wrapsOf(id)
    if (records.length === 0) return undefined
    const kek = await this.kekFor(id, undefined, records)
    this.remember(id, records[0]!.createdAt)
    return { records, kek }
  }

  /** Every root-key call goes through here: typed errors, availability for stats(). */
  async #rootCall<T>(name: string, what: string, call: () => Promise<T>): Promise<T> {
    const counts = this.perRoot.get(name)
    try {
      const result = await call()
      this.#available = true
      if (counts) counts.available = true
      return result
    } catch (error) {
      const e = error instanceof KmsProxyError ? error : new RootKeyError(`the root key failed to ${what}`, { cause: error })
      if (e.retryable) {
        this.#available = false
        if (counts) counts.available = false
      }
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

/** The cache key of a KEK carried in data: its id and every wrap, in order. */
function embeddedKey(id: number, embedded: readonly { wrapped: Uint8Array }[]): string {
  return `${id}:${embedded.map((e) => bytesKey(e.wrapped)).join('|')}`
}

/** Retryable: on an eventually consistent store the record may not have arrived yet. */
export const missingPrimary = (): StoreError => new StoreError('the chain head names a KEK that the store does not have', { retryable: true })

function assertKek(kek: unknown, extractableAsked: boolean): asserts kek is CryptoKey {
  const k = kek as CryptoKey | undefined
  if (!k || typeof k !== 'object' || k.type !== 'secret') throw new RootKeyError('the root key returned no secret CryptoKey')
  if (k.extractable && !extractableAsked) throw new RootKeyError('the root key returned an extractable KEK')
}
