import {
  DecryptError,
  FormatError,
  KmsProxyError,
  LimitError,
  RootKeyError,
  StoreError,
  UnknownKekError,
} from './errors.js'
import {
  DEFAULT_SEGMENT_SIZE,
  DEK_BYTES,
  FLAG_STREAM,
  IV_BYTES,
  MAX_SEGMENT_SIZE,
  MIN_SEGMENT_SIZE,
  MAX_EMBEDDED_KEK_BYTES,
  MAX_PLAINTEXT_BYTES,
  decodeHeader,
  decodeMessage,
  decodeStreamHeader,
  encodeHeader,
  fromText,
  kekAad,
  payloadAad,
  toText,
  type MessageParts,
} from './format.js'
import { decryptingStream, encryptingStream } from './stream.js'
import { asBytes, bytesKey, concat, equalBytes, fromUtf8, utf8, type Bytes } from './internal/bytes.js'
import { Lru } from './internal/lru.js'
import { randomBytes, randomPublicBytes, randomU32 } from './internal/random.js'
import { ephemeralRootKey, type RootKey } from './root-key.js'
import { embeddedStore, type ChainHead, type KeyStore, type KekRecord, type Versioned } from './store.js'

export interface KeyChainOptions {
  /** Wraps the KEKs. Default: ephemeralRootKey() (this process only). */
  rootKey?: RootKey
  /** Keeps the wrapped KEKs and the head. Default: embeddedStore(). */
  store?: KeyStore
  /** Chain name: the store key prefix, bound into every KEK wrap. Default "default". */
  name?: string
  /** DEKs a KEK wraps before rotation, across every process. Default 2^21, at most 2^32. */
  maxWrapsPerKek?: number
  /** Age at which the primary KEK rotates. Default 7 days. */
  maxKekAgeMs?: number
  /** Unwrapped DEKs kept for repeated decryption of the same data. Default 1024; 0 turns it off. */
  dekCacheSize?: number
  /** DEKs prepared (generated and wrapped) ahead of encrypt calls. Default 16; 0 turns it off. */
  dekPoolSize?: number
  /** Uses of the primary KEK reserved per store write. Default maxWrapsPerKek / 64, between 1 and 65,536. */
  leaseSize?: number
  /**
   * Whether decryption may send a KEK embedded in the data to the root key. Default: true with
   * an embedding store, false otherwise, so that a chain on a shared store looks KEKs up only in
   * its store and invented embedded KEKs cannot make it call the root key. Turn it on to read
   * data written with the embedded store (for example, to rewrap it into a shared store).
   */
  acceptEmbeddedKeks?: boolean
}

export interface EncryptOptions {
  /** Authenticated, not encrypted, not stored: the same bytes must be given to decrypt. */
  associatedData?: Uint8Array | string
}

export interface EncryptStreamOptions extends EncryptOptions {
  /** Plaintext bytes per segment, recorded in the stream header. Default 65,536; 16 to 2^24. */
  segmentSize?: number
}

export interface KekStats {
  id: number
  primary: boolean
  /** DEKs this process wrapped (or prepared) under the KEK. */
  wraps: number
  createdAt: number
}

export interface KeyChainStats {
  encryptions: number
  decryptions: number
  rotations: number
  rootKeyWraps: number
  rootKeyUnwraps: number
  /**
   * False after a root-key call failed with a retryable error (a KMS that is down), until a call
   * succeeds. Meanwhile encryption goes on under the current KEK until its rotation is due.
   */
  rootKeyAvailable: boolean
  /** The last root-key failure (its code and message), if any. */
  rootKeyLastError?: string
  dekCacheHits: number
  dekCacheMisses: number
  keks: KekStats[]
}

const DEFAULT_MAX_WRAPS = 2 ** 21
const HARD_MAX_WRAPS = 2 ** 32
const DEFAULT_MAX_AGE_MS = 7 * 24 * 3600 * 1000
const CAS_ATTEMPTS = 1000
const ID_ATTEMPTS = 8

/** The primary KEK as this process holds it, with the lease of uses it reserved. */
interface Primary {
  readonly id: number
  readonly createdAt: number
  readonly kek: CryptoKey
  /** Header of data under this KEK: the DEK wrap's AAD. */
  readonly header: Bytes
  /** The same with the stream flag: the DEK wrap's AAD for a stream. */
  readonly streamHeader: Bytes
  next: number
  end: number
}

interface Prepared {
  readonly primary: Primary
  /** KeyChain.#epoch when prepared; rotate() moves the epoch so older entries are dropped. */
  readonly epoch: number
  readonly dek: CryptoKey
  /** header || iv1 || wrapped DEK */
  readonly prefix: Uint8Array
}

interface KekEntry {
  id: number
  createdAt: number
  wraps: number
}

/** What finding a DEK needs; a message and a stream header both have it. */
type DekParts = Pick<MessageParts, 'kekId' | 'embeddedKek' | 'headerLength' | 'dekPrefix'>

const GCM = 'AES-GCM'
const GCM_ALGORITHM = { name: GCM }

/**
 * A key chain: KEKs wrapped by a root key, one primary, rotated by usage and age.
 * Data is encrypted under a fresh DEK wrapped by the primary KEK; steady-state encryption makes
 * no root-key calls and no store writes (uses are reserved in leases).
 */
export class KeyChain {
  readonly name: string
  readonly #root: RootKey
  readonly #store: KeyStore
  readonly #maxWraps: number
  readonly #maxAge: number
  readonly #leaseSize: number
  readonly #poolSize: number
  readonly #acceptEmbedded: boolean
  readonly #dekCache: Lru<string, Promise<CryptoKey>>
  /** Unwrapped KEKs by id (stored) or id + wrapped bytes (embedded). Failed promises are removed. */
  readonly #keks = new Map<string, Promise<CryptoKey>>()
  readonly #entries = new Map<number, KekEntry>()
  #primary: Primary | undefined
  #refreshing: Promise<void> | undefined
  #pool: Prepared[] = []
  #filling = false
  #epoch = 0
  #rootAvailable = true
  #rootLastError: string | undefined
  /** A KEK this process created and persisted but could not yet make primary (CAS lost). */
  #spare: { id: number; createdAt: number; kek: CryptoKey; wrapped: Uint8Array } | undefined
  readonly #counts = {
    encryptions: 0,
    decryptions: 0,
    rotations: 0,
    rootKeyWraps: 0,
    rootKeyUnwraps: 0,
    dekCacheHits: 0,
    dekCacheMisses: 0,
  }

  private constructor(options: Required<KeyChainOptions>) {
    this.name = options.name
    this.#root = options.rootKey
    this.#store = options.store
    this.#maxWraps = options.maxWrapsPerKek
    this.#maxAge = options.maxKekAgeMs
    this.#leaseSize = options.leaseSize
    this.#poolSize = options.dekPoolSize
    this.#acceptEmbedded = options.acceptEmbeddedKeks
    this.#dekCache = new Lru(options.dekCacheSize)
  }

  /**
   * Opens (or starts) the chain `name` in `store`. Reads the head once; makes no root-key call
   * (the primary KEK is unwrapped on the first encryption).
   */
  static async open(options: KeyChainOptions = {}): Promise<KeyChain> {
    if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
    const rootKey = options.rootKey ?? ephemeralRootKey()
    if (typeof rootKey !== 'object' || typeof rootKey.newKek !== 'function' || typeof rootKey.unwrapKek !== 'function') {
      throw new TypeError('rootKey: expected a RootKey (newKek and unwrapKek)')
    }
    const store = options.store ?? embeddedStore()
    for (const method of ['getHead', 'casHead', 'getKek', 'putKekIfAbsent', 'listKeks'] as const) {
      if (typeof store !== 'object' || typeof store[method] !== 'function') {
        throw new TypeError(`store: expected a KeyStore (missing ${method})`)
      }
    }
    const name = options.name ?? 'default'
    if (typeof name !== 'string' || name.length < 1 || name.length > 255) {
      throw new TypeError('name: expected a string of 1 to 255 characters')
    }
    const maxWrapsPerKek = options.maxWrapsPerKek ?? DEFAULT_MAX_WRAPS
    if (!Number.isInteger(maxWrapsPerKek) || maxWrapsPerKek < 1 || maxWrapsPerKek > HARD_MAX_WRAPS) {
      throw new RangeError('maxWrapsPerKek: expected an integer from 1 to 2^32')
    }
    const maxKekAgeMs = options.maxKekAgeMs ?? DEFAULT_MAX_AGE_MS
    if (typeof maxKekAgeMs !== 'number' || !(maxKekAgeMs > 0)) {
      throw new RangeError('maxKekAgeMs: expected a positive number')
    }
    const dekCacheSize = integerOption('dekCacheSize', options.dekCacheSize, 1024, 0, 2 ** 24)
    const dekPoolSize = integerOption('dekPoolSize', options.dekPoolSize, 16, 0, 1024)
    const leaseDefault = Math.max(1, Math.min(65536, Math.floor(maxWrapsPerKek / 64)))
    const leaseSize = integerOption('leaseSize', options.leaseSize, leaseDefault, 1, HARD_MAX_WRAPS)
    const acceptEmbeddedKeks = options.acceptEmbeddedKeks ?? store.embedsKeks === true
    if (typeof acceptEmbeddedKeks !== 'boolean') throw new TypeError('acceptEmbeddedKeks: expected a boolean')
    const chain = new KeyChain({ rootKey, store, name, maxWrapsPerKek, maxKekAgeMs, dekCacheSize, dekPoolSize, leaseSize, acceptEmbeddedKeks })
    await chain.#storeCall('read the chain head', () => store.getHead(name))
    return chain
  }

  // ---------------------------------------------------------------------------------- encrypt

  async encrypt(data: Uint8Array | string, options?: EncryptOptions): Promise<Uint8Array> {
    const plaintext = bytesArgument('data', data)
    const aad = payloadAad(associatedDataOf(options))
    if (plaintext.length > MAX_PLAINTEXT_BYTES) throw new LimitError('data is too large for one AES-GCM message')
    const prepared = this.#takePrepared() ?? (await this.#prepare(await this.#acquire(), 1))[0]!
    this.#fill()
    const iv2 = randomPublicBytes(IV_BYTES)
    const sealed = await crypto.subtle.encrypt({ name: GCM, iv: iv2, additionalData: aad }, prepared.dek, plaintext)
    this.#counts.encryptions++
    return concat(prepared.prefix, iv2, new Uint8Array(sealed))
  }

  /** UTF-8 text in, text form out: `kp1.` followed by base64url, safe for JSON and localStorage. */
  async encryptText(text: string, options?: EncryptOptions): Promise<string> {
    if (typeof text !== 'string') throw new TypeError('text: expected a string')
    return toText(await this.encrypt(utf8(text), options))
  }

  // ---------------------------------------------------------------------------------- decrypt

  async decrypt(encryptedData: Uint8Array, options?: EncryptOptions): Promise<Uint8Array> {
    if (!(encryptedData instanceof Uint8Array)) throw new TypeError('encryptedData: expected a Uint8Array')
    const aad = payloadAad(associatedDataOf(options))
    const parts = decodeMessage(encryptedData)
    const dek = await this.#dekFor(parts)
    let plaintext: ArrayBuffer
    try {
      plaintext = await crypto.subtle.decrypt({ name: GCM, iv: parts.iv2, additionalData: aad }, dek, parts.sealed)
    } catch {
      throw new DecryptError('decryption failed')
    }
    this.#counts.decryptions++
    return new Uint8Array(plaintext)
  }

  async decryptText(encryptedText: string, options?: EncryptOptions): Promise<string> {
    const plaintext = await this.decrypt(fromText(encryptedText), options)
    try {
      return fromUtf8(plaintext)
    } catch {
      throw new FormatError('the plaintext is not UTF-8; use decrypt() for bytes')
    } finally {
      plaintext.fill(0)
    }
  }

  // ---------------------------------------------------------------------------------- streams

  /**
   * Encrypts a byte stream of any length in constant memory: one DEK for the stream (one use of
   * the primary KEK), then segments of `segmentSize` bytes under the STREAM construction. The
   * output starts with the stream header. Chunks may have any size; they are re-segmented.
   */
  encryptStream(options?: EncryptStreamOptions): TransformStream<Uint8Array, Uint8Array> {
    const associatedData = associatedDataOf(options)?.slice()
    const segmentSize = options?.segmentSize ?? DEFAULT_SEGMENT_SIZE
    if (!Number.isInteger(segmentSize) || segmentSize < MIN_SEGMENT_SIZE || segmentSize > MAX_SEGMENT_SIZE) {
      throw new RangeError(`segmentSize: expected an integer from ${MIN_SEGMENT_SIZE} to ${MAX_SEGMENT_SIZE}`)
    }
    return encryptingStream(
      segmentSize,
      associatedData,
      async () => {
        // Not from the prepared pool: a pooled DEK's wrap binds the single-message header, and a
        // stream's must bind the stream flag. Same lease, same concurrent import and wrap.
        const [prepared] = await this.#prepare(await this.#acquire(), 1, true)
        return { dek: prepared!.dek, dekPrefix: prepared!.prefix }
      },
      () => void this.#counts.encryptions++,
    )
  }

  /**
   * Decrypts what encryptStream made. Plaintext is enqueued segment by segment, each only after
   * it authenticated; a cut, reordered, spliced or extended stream errors the stream with
   * ERR_DECRYPT, at the latest when the input ends. Until the stream closes without error the
   * output is incomplete: write it somewhere provisional, and keep it only after the close.
   */
  decryptStream(options?: EncryptOptions): TransformStream<Uint8Array, Uint8Array> {
    const associatedData = associatedDataOf(options)?.slice()
    return decryptingStream(
      associatedData,
      (header) => this.#dekFor(header),
      () => void this.#counts.decryptions++,
    )
  }

  /**
   * Moves a stream to the primary KEK without touching its segments: give it at least the
   * stream header (the first bytes of the encrypted stream; more is fine), and write
   * `header` in place of the first `replaces` bytes. The segments' AAD leaves the KEK out.
   */
  async rewrapStreamHeader(head: Uint8Array): Promise<{ header: Uint8Array; replaces: number }> {
    if (!(head instanceof Uint8Array)) throw new TypeError('head: expected a Uint8Array')
    const parts = decodeStreamHeader(head)
    const replaces = parts.streamHeaderLength
    const tail = head.slice(parts.dekPrefix.length, replaces) // segment size and nonce prefix, kept as they are
    const current = this.#primary
    if (current && !this.#expired(current) && equalBytes(parts.header, current.streamHeader)) {
      await this.#dekFor(parts) // authenticates the header and the wrapped DEK, as a real rewrap would
      return { header: head.slice(0, replaces), replaces }
    }
    const dek = await this.#unwrapDek(parts, true)
    const p = await this.#acquire()
    const iv1 = randomPublicBytes(IV_BYTES)
    const wrapped = await crypto.subtle.wrapKey('raw', dek, p.kek, { name: GCM, iv: iv1, additionalData: p.streamHeader })
    return { header: concat(p.streamHeader, iv1, new Uint8Array(wrapped), tail), replaces }
  }

  // ---------------------------------------------------------------------------------- rotate and rewrap

  /** Makes a new primary KEK now (one root-key wrap). Older KEKs stay for decryption. */
  async rotate(): Promise<{ id: number; createdAt: number }> {
    while (this.#refreshing) await this.#refreshing.catch(() => {})
    await this.#startRefresh(true)
    this.#epoch++
    this.#pool = []
    const p = this.#primary!
    return { id: p.id, createdAt: p.createdAt }
  }

  /**
   * Re-wraps the DEK of `encryptedData` under the current primary KEK. The payload bytes are
   * not re-encrypted (its AAD leaves the KEK out on purpose), and the DEK never leaves WebCrypto.
   */
  async rewrap(encryptedData: Uint8Array): Promise<Uint8Array> {
    if (!(encryptedData instanceof Uint8Array)) throw new TypeError('encryptedData: expected a Uint8Array')
    if (decodeHeader(encryptedData).flags & FLAG_STREAM) {
      throw new FormatError('this is a stream: rewrap it with rewrapStreamHeader, which leaves its segments untouched')
    }
    const parts = decodeMessage(encryptedData)
    const current = this.#primary
    if (current && !this.#expired(current) && equalBytes(parts.header, current.header)) {
      await this.#dekFor(parts) // authenticates the header and the wrapped DEK, as a real rewrap would
      return encryptedData.slice()
    }
    const dek = await this.#unwrapDek(parts, true)
    const p = await this.#acquire()
    const iv1 = randomPublicBytes(IV_BYTES)
    const wrapped = await crypto.subtle.wrapKey('raw', dek, p.kek, { name: GCM, iv: iv1, additionalData: p.header })
    return concat(p.header, iv1, new Uint8Array(wrapped), parts.iv2, parts.sealed)
  }

  // ---------------------------------------------------------------------------------- stats

  stats(): KeyChainStats {
    const primary = this.#primary?.id
    return {
      ...this.#counts,
      rootKeyAvailable: this.#rootAvailable,
      ...(this.#rootLastError === undefined ? {} : { rootKeyLastError: this.#rootLastError }),
      keks: [...this.#entries.values()].map((e) => ({ id: e.id, primary: e.id === primary, wraps: e.wraps, createdAt: e.createdAt })),
    }
  }

  toString(): string {
    return `[KeyChain ${this.name}]`
  }

  toJSON(): { name: string; rootKey: string; stats: KeyChainStats } {
    return { name: this.name, rootKey: this.#root.kind, stats: this.stats() }
  }

  // ---------------------------------------------------------------------------------- internals: DEKs

  #expired(p: Primary): boolean {
    return Date.now() - p.createdAt >= this.#maxAge
  }

  /**
   * The oldest prepared DEK that may still be used. Entries under a KEK that was rotated for
   * usage stay valid (their uses were reserved within the limit); entries from before rotate()
   * or under a KEK past its age are dropped, their uses counted as spent.
   */
  #takePrepared(): Prepared | undefined {
    const pool = this.#pool
    while (pool.length > 0) {
      const prepared = pool.shift()!
      if (prepared.epoch === this.#epoch && !this.#expired(prepared.primary)) return prepared
    }
    return undefined
  }

  /**
   * Schedules a refill once half the pool is used. A macrotask, not a microtask: the refill's
   * burst of subtle calls must never sit between a caller's encrypt and its result.
   */
  #fill(): void {
    if (this.#filling || this.#poolSize === 0 || this.#pool.length > this.#poolSize >> 1) return
    this.#filling = true
    const timer = setTimeout(() => void this.#refill(), 0) as unknown as { unref?: () => void }
    timer.unref?.() // Node, Bun, Deno: a pending refill never keeps the process alive
  }

  /** Failures are left for the next inline encrypt, which runs the same steps and reports them. */
  async #refill(): Promise<void> {
    try {
      while (this.#pool.length < this.#poolSize) {
        const p = await this.#acquire()
        let n = 1
        for (const want = this.#poolSize - this.#pool.length; n < want && p.next < p.end; n++) p.next++
        this.#entries.get(p.id)!.wraps += n - 1
        for (const prepared of await this.#prepare(p, n)) {
          if (prepared.epoch === this.#epoch) this.#pool.push(prepared)
        }
      }
    } catch {
      // See above.
    } finally {
      this.#filling = false
    }
  }

  /**
   * `n` fresh DEKs wrapped under `p`, whose uses the caller reserved. Their bytes come from one
   * `getRandomValues` call and are zeroed before this function yields: WebCrypto's importKey and
   * encrypt copy their input before returning ("get a copy of the bytes held by").
   */
  #prepare(p: Primary, n: number, stream = false): Promise<Prepared[]> {
    const epoch = this.#epoch
    const header = stream ? p.streamHeader : p.header
    const keyBytes = randomBytes(DEK_BYTES * n)
    const pending: Promise<Prepared>[] = []
    for (let i = 0; i < n; i++) {
      const dekBytes = keyBytes.subarray(i * DEK_BYTES, (i + 1) * DEK_BYTES)
      const iv1 = randomPublicBytes(IV_BYTES)
      const dek = crypto.subtle.importKey('raw', dekBytes, GCM_ALGORITHM, false, ['encrypt'])
      const wrapped = crypto.subtle.encrypt({ name: GCM, iv: iv1, additionalData: header }, p.kek, dekBytes)
      pending.push(
        Promise.all([dek, wrapped]).then(([key, wrap]) => ({ primary: p, epoch, dek: key, prefix: concat(header, iv1, new Uint8Array(wrap)) })),
      )
    }
    keyBytes.fill(0)
    return Promise.all(pending)
  }

  async #dekFor(parts: DekParts): Promise<CryptoKey> {
    const cacheKey = this.#dekCache.capacity > 0 ? bytesKey(parts.dekPrefix) : undefined
    if (cacheKey !== undefined) {
      const hit = this.#dekCache.get(cacheKey)
      if (hit) {
        this.#counts.dekCacheHits++
        return hit
      }
    }
    this.#counts.dekCacheMisses++
    const pending = this.#unwrapDek(parts, false)
    if (cacheKey !== undefined) {
      this.#dekCache.set(cacheKey, pending)
      pending.catch(() => this.#dekCache.deleteIf(cacheKey, pending))
    }
    return pending
  }

  /** KEK (cached, embedded or stored), then the DEK: non-extractable unless `forRewrap`. */
  async #unwrapDek(parts: DekParts, forRewrap: boolean): Promise<CryptoKey> {
    // Own copy: the caller's buffer may change while we wait for the KEK.
    const prefix = parts.dekPrefix.slice()
    const h = parts.headerLength
    // Without acceptEmbeddedKeks the embedded KEK is still authenticated (it is in the header,
    // the DEK wrap's AAD) but never sent to the root key: the KEK comes from the store by id.
    const embedded = this.#acceptEmbedded && parts.embeddedKek ? prefix.subarray(h - parts.embeddedKek.length, h) : undefined
    const kek = await this.#kekFor(parts.kekId, embedded)
    try {
      return await crypto.subtle.unwrapKey(
        'raw',
        prefix.subarray(h + IV_BYTES),
        kek,
        { name: GCM, iv: prefix.subarray(h, h + IV_BYTES), additionalData: prefix.subarray(0, h) },
        GCM,
        // extractable only for rewrap, whose wrapKey call requires it; the bytes stay inside WebCrypto.
        forRewrap,
        ['decrypt'],
      )
    } catch {
      throw new DecryptError('decryption failed')
    }
  }

  // ---------------------------------------------------------------------------------- internals: KEKs

  /**
   * The unwrapped KEK `id`: from the cache, else from `embedded` (the data's own wrapped KEK),
   * else from the store; one root-key call per KEK per process, concurrent misses coalesced.
   */
  #kekFor(id: number, embedded: Uint8Array | undefined, record?: KekRecord): Promise<CryptoKey> {
    const cacheKey = embedded ? `${id}:${bytesKey(embedded)}` : String(id)
    let pending = this.#keks.get(cacheKey)
    if (pending) return pending
    pending = (async () => {
      let wrapped = embedded
      if (!wrapped) {
        const found = record ?? (await this.#storeCall('read a KEK', () => this.#store.getKek(this.name, id)))
        if (!found) throw new UnknownKekError('unknown KEK: not cached, embedded or in the store')
        this.#remember(found.id, found.createdAt)
        wrapped = found.wrapped
      }
      return this.#rootUnwrap(wrapped, id)
    })()
    this.#keks.set(cacheKey, pending)
    pending.catch(() => {
      if (this.#keks.get(cacheKey) === pending) this.#keks.delete(cacheKey)
    })
    return pending
  }

  async #rootUnwrap(wrapped: Uint8Array, id: number): Promise<CryptoKey> {
    this.#counts.rootKeyUnwraps++
    const kek = await this.#rootCall('unwrap a KEK', () => this.#root.unwrapKek(wrapped, kekAad(this.name, id)))
    assertKek(kek)
    return kek
  }

  /** Every root-key call goes through here: typed errors, availability for stats(). */
  async #rootCall<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      const result = await call()
      this.#rootAvailable = true
      return result
    } catch (error) {
      const e = error instanceof KmsProxyError ? error : new RootKeyError(`the root key failed to ${what}`, { cause: error })
      if (e.retryable) this.#rootAvailable = false
      this.#rootLastError = `${e.code}: ${e.message}`
      throw e
    }
  }

  #remember(id: number, createdAt: number): KekEntry {
    let entry = this.#entries.get(id)
    if (!entry) this.#entries.set(id, (entry = { id, createdAt, wraps: 0 }))
    return entry
  }

  /** Reserves one use of the primary KEK, renewing the lease or rotating when needed. */
  async #acquire(): Promise<Primary> {
    let refreshed = false
    for (;;) {
      const p = this.#primary
      // Right after a refresh the primary is used even if already past its age, so that a
      // tiny maxKekAgeMs cannot make the loop rotate forever.
      if (p && p.next < p.end && (refreshed || !this.#expired(p))) {
        p.next++
        this.#entries.get(p.id)!.wraps++
        return p
      }
      await (this.#refreshing ?? this.#startRefresh(false))
      refreshed = true
    }
  }

  /** Runs #refresh as the one refresh in flight; concurrent callers await it instead of starting their own. */
  #startRefresh(force: boolean): Promise<void> {
    const run: Promise<void> = this.#refresh(force).finally(() => {
      if (this.#refreshing === run) this.#refreshing = undefined
    })
    this.#refreshing = run
    return run
  }

  /**
   * Brings #primary up to date with a fresh lease: reads the head; reserves a block of uses by
   * compare-and-swap; rotates when the primary is used up, too old, missing, or `force`.
   */
  async #refresh(force: boolean): Promise<void> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      // Lost a compare-and-swap: back off with full jitter (up to 2^attempt ms, at most 64 ms)
      // so that processes contending on one head do not retry in lockstep.
      if (attempt > 0) await new Promise((r) => setTimeout(r, (randomPublicBytes(1)[0]! * Math.min(64, 2 ** attempt)) / 256))
      const head = await this.#storeCall('read the chain head', () => this.#store.getHead(this.name))
      const h = head?.value
      // Our rotation may have landed although its compare-and-swap answered false (a lost answer
      // retried on another etcd member): the spare is then the primary, and installing it again
      // would restart its usage count.
      if (this.#spare?.id === h?.primary) this.#spare = undefined
      const mustRotate =
        force || h === undefined || h.leased >= this.#maxWraps || Date.now() - h.primaryCreatedAt >= this.#maxAge
      if (!mustRotate) {
        if (await this.#leaseFrom(head!, h)) return
        continue
      }
      const spare = (this.#spare ??= await this.#createKek())
      const take = Math.min(this.#leaseSize, this.#maxWraps)
      const next: ChainHead = { primary: spare.id, primaryCreatedAt: spare.createdAt, leased: take }
      if (await this.#storeCall('update the chain head', () => this.#store.casHead(this.name, head?.version, next))) {
        this.#spare = undefined
        this.#counts.rotations++
        this.#setPrimary(spare.id, spare.createdAt, spare.kek, spare.wrapped, 0, take)
        return
      }
    }
    throw new StoreError('too much contention on the chain head; gave up', { retryable: true })
  }

  async #leaseFrom(head: Versioned<ChainHead>, h: ChainHead): Promise<boolean> {
    const take = Math.min(this.#leaseSize, this.#maxWraps - h.leased)
    const next: ChainHead = { primary: h.primary, primaryCreatedAt: h.primaryCreatedAt, leased: h.leased + take }
    if (!(await this.#storeCall('update the chain head', () => this.#store.casHead(this.name, head.version, next)))) return false
    const current = this.#primary
    if (current?.id === h.primary) {
      // Same KEK, new block of uses: keep the object, so the prepared pool stays valid.
      current.next = h.leased
      current.end = h.leased + take
      return true
    }
    // Another process rotated: load its KEK (one root unwrap, cached).
    const record = await this.#storeCall('read a KEK', () => this.#store.getKek(this.name, h.primary))
    // Retryable: on an eventually consistent store the record may not have arrived yet.
    if (!record) throw new StoreError('the chain head names a KEK that the store does not have', { retryable: true })
    const embedded = this.#store.embedsKeks ? record.wrapped : undefined
    const kek = await this.#kekFor(record.id, embedded, record)
    this.#remember(record.id, record.createdAt)
    this.#setPrimary(record.id, h.primaryCreatedAt, kek, record.wrapped, h.leased, h.leased + take)
    return true
  }

  #setPrimary(id: number, createdAt: number, kek: CryptoKey, wrapped: Uint8Array, next: number, end: number): void {
    const embedded = this.#store.embedsKeks ? wrapped : undefined
    this.#primary = {
      id,
      createdAt,
      kek,
      header: encodeHeader(id, embedded),
      streamHeader: encodeHeader(id, embedded, true),
      next,
      end,
    }
  }

  /** A new KEK from the root key, durably in the store before anything uses it (invariant 2). */
  async #createKek(): Promise<{ id: number; createdAt: number; kek: CryptoKey; wrapped: Uint8Array }> {
    for (let attempt = 0; attempt < ID_ATTEMPTS; attempt++) {
      const id = randomU32()
      if (this.#entries.has(id)) continue
      this.#counts.rootKeyWraps++
      const made = await this.#rootCall('wrap a new KEK', () => this.#root.newKek(kekAad(this.name, id)))
      assertKek(made.kek)
      if (!(made.wrapped instanceof Uint8Array) || made.wrapped.length === 0) throw new RootKeyError('the root key returned an empty wrapped KEK')
      if (this.#store.embedsKeks && made.wrapped.length > MAX_EMBEDDED_KEK_BYTES) {
        throw new LimitError(`a wrapped KEK of ${made.wrapped.length} bytes is too large to embed (max ${MAX_EMBEDDED_KEK_BYTES})`)
      }
      const record: KekRecord = { id, createdAt: Date.now(), rootKind: this.#root.kind, wrapped: made.wrapped }
      if (await this.#storeCall('write a KEK', () => this.#store.putKekIfAbsent(this.name, record))) {
        this.#remember(id, record.createdAt)
        const cacheKey = this.#store.embedsKeks ? `${id}:${bytesKey(made.wrapped)}` : String(id)
        this.#keks.set(cacheKey, Promise.resolve(made.kek))
        return { id, createdAt: record.createdAt, kek: made.kek, wrapped: made.wrapped }
      }
    }
    throw new LimitError('could not find a free KEK id')
  }

  async #storeCall<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call()
    } catch (error) {
      if (error instanceof KmsProxyError) throw error
      throw new StoreError(`the store failed to ${what}`, { cause: error, retryable: true })
    }
  }
}

function assertKek(kek: unknown): asserts kek is CryptoKey {
  const k = kek as CryptoKey | undefined
  if (!k || typeof k !== 'object' || k.type !== 'secret') throw new RootKeyError('the root key returned no secret CryptoKey')
  if (k.extractable) throw new RootKeyError('the root key returned an extractable KEK')
}

function bytesArgument(name: string, value: Uint8Array | string): Bytes {
  if (typeof value === 'string') return utf8(value)
  if (value instanceof Uint8Array) return asBytes(value)
  throw new TypeError(`${name}: expected a Uint8Array or a string`)
}

function associatedDataOf(options: EncryptOptions | undefined): Uint8Array | undefined {
  if (options === undefined) return undefined
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const ad = options.associatedData
  return ad === undefined ? undefined : bytesArgument('associatedData', ad)
}

function integerOption(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  if (!Number.isInteger(value) || value < min || value > max) throw new RangeError(`${name}: expected an integer from ${min} to ${max}`)
  return value
}
