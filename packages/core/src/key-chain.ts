/**
 * The key chain's public face: encrypt and decrypt, text and streams, rotate and rewrap, stats.
 * The parts behind it live in internal/: kek-source.ts (root-key and store calls, the KEK
 * cache, remembered failures), leases.ts (the primary, its lease, rotation), dek-pool.ts (DEKs
 * prepared ahead); options.ts checks the options and the arguments.
 */
import { DecryptError, FormatError, LimitError } from './errors.js'
import {
  DEFAULT_SEGMENT_SIZE,
  FLAG_STREAM,
  IV_BYTES,
  MAX_SEGMENT_SIZE,
  MIN_SEGMENT_SIZE,
  MAX_PLAINTEXT_BYTES,
  TAG_BYTES,
  decodeHeader,
  decodeMessage,
  decodeStreamHeader,
  fromText,
  payloadAad,
  toText,
  type MessageParts,
} from './format.js'
import { decryptingStream, encryptingStream } from './stream.js'
import { asBytes, concat, equalBytes, fromUtf8, gcmParams } from './internal/bytes.js'
import { DekPool } from './internal/dek-pool.js'
import { Deks } from './internal/deks.js'
import { HeadView } from './internal/head-view.js'
import { Lifecycle, type DestroyReport } from './internal/lifecycle.js'
import { KekSource, type Counts } from './internal/kek-source.js'
import { Leases } from './internal/leases.js'
import { RootChanges } from './internal/root-changes.js'
import { Lru } from './internal/lru.js'
import { randomPublicBytes } from './internal/random.js'
import type { RootKey } from './root-key.js'
import type { RetiredKek } from './store.js'
import {
  associatedDataOf,
  bytesArgument,
  resolveOptions,
  type EncryptOptions,
  type EncryptStreamOptions,
  type KeyChainOptions,
  type KeyChainStats,
  type PrimaryStatus,
  type ResolvedOptions,
  type RootChangeReport,
  type RootInfo,
} from './options.js'

export type {
  KeyChainOptions,
  EncryptOptions,
  EncryptStreamOptions,
  KeyChainStats,
  KekStats,
  PrimaryStatus,
  RootChangeReport,
  RootInfo,
  RootStats,
} from './options.js'
export type { DestroyReport } from './internal/lifecycle.js'

const GCM = 'AES-GCM'

/**
 * A key chain: KEKs wrapped by a root key, one primary, rotated by usage and age.
 * Data is encrypted under a fresh DEK wrapped by the primary KEK; steady-state encryption makes
 * no root-key calls and no store writes (uses are reserved in leases).
 *
 * @example
 * ```ts
 * import { KeyChain, memoryStore } from '@kms-proxy/core'
 * import { passphraseRootKey } from '@kms-proxy/passphrase'
 *
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), store: memoryStore(), name: 'customers' })
 * const encryptedData = await chain.encrypt(JSON.stringify(row), { associatedData: `customers/${row.id}` })
 * const plaintext = await chain.decrypt(encryptedData, { associatedData: `customers/${row.id}` })
 * ```
 */
export class KeyChain {
  /** The chain's name, as given to {@link KeyChain.open}: bound into every KEK wrap. */
  readonly name: string
  readonly #counts: Counts = {
    encryptions: 0,
    decryptions: 0,
    rotations: 0,
    rootKeyWraps: 0,
    rootKeyUnwraps: 0,
    dekCacheHits: 0,
    dekCacheMisses: 0,
    refusedRetired: 0,
  }
  readonly #keks: KekSource
  readonly #leases: Leases
  readonly #pool: DekPool
  readonly #roots: RootChanges
  readonly #view: HeadView
  readonly #lifecycle: Lifecycle
  readonly #deks: Deks
  #unwatch: (() => void) | undefined

  private constructor(options: ResolvedOptions) {
    this.name = options.name
    const { store, name } = options
    this.#keks = new KekSource(name, options.roots, options.single, store, this.#counts)
    this.#view = new HeadView(options.maxStalenessMs, {
      read: () => this.#keks.storeCall('read the chain head', () => store.getHead(name)),
      primary: (id) => {
        // Another process rotated: this one's prepared DEKs are dropped and its lease left (their
        // uses stay counted in the head); the next use leases from the new primary, or, while the
        // root key cannot unwrap it, goes on under the old one (see Leases.acquire).
        if (this.#leases.supersededBy(id)) {
          this.#leases.supersede()
          this.#pool.drop()
        }
      },
      destroyed: (ids) => {
        for (const id of ids === 'all' ? [...this.#keks.entries.keys()] : ids) this.#keks.forget(id)
        this.#deks.clear()
        if (ids === 'all') {
          this.#leases.reload()
          this.#pool.drop()
        }
      },
    })
    this.#leases = new Leases(
      { name, store, maxWraps: options.maxWrapsPerKek, maxAge: options.maxKekAgeMs, leaseSize: options.leaseSize, readHead: () => this.#view.read(), firstHead: () => this.#view.first() },
      this.#keks,
      this.#counts,
    )
    this.#lifecycle = new Lifecycle(this.#keks, this.#view, options.destroyGraceMs)
    this.#deks = new Deks(this.#keks, this.#view, this.#counts, options.acceptEmbeddedKeks, options.dekCacheSize)
    this.#pool = new DekPool(options.dekPoolSize, this.#leases)
    this.#roots = new RootChanges(this.#keks, this.#counts, () => {
      // Data on the embedded store carries the primary's wraps: the next use loads them anew.
      if (options.store.embedsKeks) {
        this.#leases.reload()
        this.#pool.drop()
      }
    })
  }

  /**
   * Opens (or starts) the chain `name` in `store`. Reads the head once; makes no root-key call
   * (the primary KEK is unwrapped on the first encryption).
   *
   * The root key is proved before it wraps anything: before this chain instance makes a KEK (at
   * `rotate()`, or when the primary's age or usage limit is reached, in an encryption, a stream
   * or the DEK pool), its root must have unwrapped a KEK of the chain, normally the head's
   * primary, which the first encryption unwraps anyway. So a wrong passphrase, or a KMS key that
   * cannot unwrap the chain's KEKs, fails with `ERR_ROOT_KEY` and writes nothing, instead of
   * starting KEKs that the chain's root cannot read. Cost: no root-key call in steady state; one
   * unwrap before the first rotation of an instance that has unwrapped nothing yet. A brand-new
   * chain (no head, no KEK record) has nothing to prove against: its first root is the chain's.
   * `embeddedStore()` keeps the head in this process only, so every process starts a
   * brand-new chain there: a wrong passphrase simply makes data that only that passphrase opens.
   *
   * @param options - every field has a default: see {@link KeyChainOptions}.
   * @throws TypeError - an option of the wrong type (a `rootKey` without `newKek`, a `store`
   *   missing a method, a chain name that is empty, over 255 characters or not well-formed).
   * @throws RangeError - a number out of range (`maxWrapsPerKek` above 2^32, a negative size).
   * @throws {@link StoreError} - `ERR_STORE`: the store could not be read.
   * @example
   * ```ts
   * const chain = await KeyChain.open()  // ephemeral root key, KEKs embedded in the data
   * const shared = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store: memoryStore(), name: 'orders', maxWrapsPerKek: 1_000_000 })
   * ```
   */
  static async open(options: KeyChainOptions = {}): Promise<KeyChain> {
    const resolved = resolveOptions(options)
    const chain = new KeyChain(resolved)
    const { store, name } = resolved
    if (resolved.watch && typeof store.watchHead === 'function') {
      chain.#unwatch = store.watchHead(name, () => chain.#view.markDirty())
    }
    try {
      await chain.#view.open()
    } catch (error) {
      chain.close()
      throw error
    }
    return chain
  }

  // ---------------------------------------------------------------------------------- encrypt

  /**
   * Encrypts one message under a fresh DEK wrapped by the primary KEK, rotating first when the
   * primary's usage or age limit says so. Steady state: no root-key call, no store write.
   *
   * @param data - bytes, or a string (encrypted as UTF-8; it must be well-formed UTF-16).
   * @param options - `associatedData`: authenticated, not stored; give the same bytes to {@link KeyChain.decrypt}.
   * @returns the encrypted data: header, wrapped DEK, ciphertext (78 bytes more than `data`, more
   *   with the embedded store).
   * @throws TypeError - `data` is neither a `Uint8Array` nor a well-formed string.
   * @throws {@link LimitError} - `ERR_LIMIT`: `data` is over 2^36 − 32 bytes, or no free KEK id.
   * @throws {@link RootKeyError} - `ERR_ROOT_KEY`: a rotation or the first load of the primary needed
   *   the root key and it failed (`retryable` when it was unreachable). A rotation first proves
   *   the root on the primary (see {@link KeyChain.open}): a wrong root is refused, nothing written.
   * @throws {@link StoreError} - `ERR_STORE`: a rotation or a lease needed the store and it failed.
   * @example
   * ```ts
   * const encryptedData = await chain.encrypt('4111 1111 1111 1111', { associatedData: 'customer/42' })
   * ```
   */
  async encrypt(data: Uint8Array | string, options?: EncryptOptions): Promise<Uint8Array> {
    const [prefix, iv2, body] = await this.#seal(data, options)
    return concat(prefix, iv2, body)
  }

  /**
   * The same encrypted data as {@link KeyChain.encrypt}, in two parts whose concatenation is that
   * data, without copying the ciphertext behind the header: for large messages that go on to a
   * `Blob`, a `Response`, a vectored write or an upload, where the copy would cost about as much
   * as the encryption on runtimes with fast AES (see the README's performance section). The same
   * errors as `encrypt`.
   *
   * @returns `[head, body]`: head is header, wrapped DEK and IV (78 − 16 bytes and any embedded
   *   KEK); body is the ciphertext and its tag. {@link KeyChain.decrypt} takes them joined.
   * @example
   * ```ts
   * const parts = await chain.encryptParts(video, { associatedData: 'upload/7' })
   * await fetch(url, { method: 'PUT', body: new Blob(parts) }) // no copy of the ciphertext in between
   * ```
   */
  async encryptParts(data: Uint8Array | string, options?: EncryptOptions): Promise<[head: Uint8Array<ArrayBuffer>, body: Uint8Array<ArrayBuffer>]> {
    const [prefix, iv2, body] = await this.#seal(data, options)
    return [concat(prefix, iv2), body]
  }

  /** header || iv1 || wrapped DEK (one prepared DEK, used once), iv2, ciphertext || tag. */
  async #seal(data: Uint8Array | string, options: EncryptOptions | undefined): Promise<[prefix: Uint8Array, iv2: Uint8Array, body: Uint8Array<ArrayBuffer>]> {
    const plaintext = bytesArgument('data', data)
    const aad = payloadAad(associatedDataOf(options))
    if (plaintext.length > MAX_PLAINTEXT_BYTES) throw new LimitError('data is too large for one AES-GCM message')
    const reading = this.#deks.fresh()
    if (reading) await reading
    const prepared = this.#pool.take() ?? (await this.#pool.prepare(await this.#leases.acquire(), 1))[0]!
    this.#pool.fill()
    const iv2 = randomPublicBytes(IV_BYTES)
    const sealed = await crypto.subtle.encrypt({ name: GCM, iv: iv2, additionalData: aad }, prepared.dek, plaintext)
    this.#counts.encryptions++
    return [prepared.prefix, iv2, new Uint8Array(sealed)]
  }

  /**
   * UTF-8 text in, text form out: `kp1.` followed by base64url, safe for JSON and localStorage.
   * Otherwise as {@link KeyChain.encrypt}, with the same errors.
   *
   * @example
   * ```ts
   * const column = await chain.encryptText(JSON.stringify(row), { associatedData: `customers/${row.id}` }) // "kp1.AQ…"
   * ```
   */
  async encryptText(text: string, options?: EncryptOptions): Promise<string> {
    if (typeof text !== 'string') throw new TypeError('text: expected a string')
    return toText(await this.encrypt(bytesArgument('text', text), options))
  }

  // ---------------------------------------------------------------------------------- decrypt

  /**
   * Decrypts what {@link KeyChain.encrypt} (or {@link KeyChain.rewrap}) made. Its KEK is unwrapped at
   * most once per process (concurrent misses share one root-key call); its DEK is cached
   * (`dekCacheSize`) for data decrypted again.
   *
   * @param encryptedData - the bytes `encrypt` returned.
   * @param options - `associatedData`: the same bytes given to `encrypt` (absent and empty are the same).
   * @returns the plaintext bytes.
   * @throws TypeError - `encryptedData` is not a `Uint8Array`.
   * @throws {@link DecryptError} - `ERR_DECRYPT`: authentication failed (altered bytes, wrong
   *   associated data, a swapped wrapped DEK). One message, no cause, whatever layer failed.
   * @throws {@link FormatError} - `ERR_FORMAT`: truncated, an unknown version or flag, or a stream
   *   (use {@link KeyChain.decryptStream}).
   * @throws {@link UnknownKekError} - `ERR_UNKNOWN_KEK`: the KEK id is neither cached, embedded (and
   *   accepted) nor in the store.
   * @throws {@link RootKeyError} - `ERR_ROOT_KEY`: the root key refused or could not unwrap the KEK.
   * @throws {@link StoreError} - `ERR_STORE`: the store could not be read.
   * @example
   * ```ts
   * const plaintext = await chain.decrypt(encryptedData, { associatedData: 'customer/42' })
   * new TextDecoder().decode(plaintext) // '4111 1111 1111 1111'
   * ```
   */
  async decrypt(encryptedData: Uint8Array, options?: EncryptOptions): Promise<Uint8Array> {
    if (!(encryptedData instanceof Uint8Array)) throw new TypeError('encryptedData: expected a Uint8Array')
    const aad = payloadAad(associatedDataOf(options))
    const bytes = asBytes(encryptedData)
    // A cached DEK is found without parsing the header (see Deks.hit); anything else takes the full path.
    const hit = this.#deks.hit(bytes)
    let dek: CryptoKey
    let kekId: number
    let end: number
    if (hit) {
      dek = hit.key!
      kekId = hit.kekId
      end = hit.prefix.length
      if (bytes.length < end + IV_BYTES + TAG_BYTES) throw new FormatError('encrypted data is truncated')
    } else {
      const parts = decodeMessage(bytes)
      dek = await this.#deks.forDecrypt(parts)
      kekId = parts.kekId
      end = parts.dekPrefix.length
    }
    let plaintext: ArrayBuffer
    try {
      plaintext = await crypto.subtle.decrypt({ name: GCM, iv: bytes.subarray(end, end + IV_BYTES), additionalData: aad }, dek, bytes.subarray(end + IV_BYTES))
    } catch {
      throw new DecryptError('decryption failed')
    }
    this.#counts.decryptions++
    this.#deks.decrypted(kekId)
    return new Uint8Array(plaintext)
  }

  /**
   * Decrypts the text form that {@link KeyChain.encryptText} made and returns the UTF-8 text.
   * The errors of {@link KeyChain.decrypt}, and `ERR_FORMAT` for a string that is not the text form
   * or a plaintext that is not UTF-8.
   *
   * @example
   * ```ts
   * const row = JSON.parse(await chain.decryptText(column, { associatedData: `customers/${id}` }))
   * ```
   */
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
   *
   * @param options - `associatedData` as for {@link KeyChain.encrypt}; `segmentSize` (default 65,536).
   * @throws RangeError - `segmentSize` outside 16 … 2^24 (at once, not through the stream).
   * @throws TypeError - `associatedData` of the wrong type (at once).
   * @example
   * ```ts
   * const encrypted = file.stream().pipeThrough(chain.encryptStream({ associatedData: 'report.pdf' }))
   * await encrypted.pipeTo(destination) // errors of encrypt (ERR_ROOT_KEY, ERR_STORE) error the stream
   * ```
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
        await this.#deks.fresh()
        const [prepared] = await this.#pool.prepare(await this.#leases.acquire(), 1, true)
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
   *
   * @param options - `associatedData`: the same bytes given to {@link KeyChain.encryptStream}.
   * @throws TypeError - `associatedData` of the wrong type (at once). Every other failure errors the
   *   stream: `ERR_DECRYPT` (cut, reordered, spliced, extended, altered, wrong associated data),
   *   `ERR_FORMAT` (not a stream), `ERR_UNKNOWN_KEK`, `ERR_ROOT_KEY`, `ERR_STORE`.
   * @example
   * ```ts
   * const plaintext = encrypted.pipeThrough(chain.decryptStream({ associatedData: 'report.pdf' }))
   * ```
   */
  decryptStream(options?: EncryptOptions): TransformStream<Uint8Array, Uint8Array> {
    const associatedData = associatedDataOf(options)?.slice()
    return decryptingStream(
      associatedData,
      async (header) => {
        const dek = await this.#deks.forDecrypt(header)
        this.#deks.decrypted(header.kekId)
        return dek
      },
      () => void this.#counts.decryptions++,
    )
  }

  /**
   * Moves a stream to the primary KEK without touching its segments: give it at least the
   * stream header (the first bytes of the encrypted stream; more is fine), and write
   * `header` in place of the first `replaces` bytes. The segments' AAD leaves the KEK out.
   *
   * @param head - the first bytes of an encrypted stream: at least its header (61 bytes, more
   *   with an embedded KEK).
   * @returns `header`, the new stream header, and `replaces`, how many leading bytes it replaces.
   *   When the stream is already under the primary KEK, `header` is the same bytes.
   * @throws TypeError - `head` is not a `Uint8Array`.
   * @throws {@link FormatError} - `ERR_FORMAT`: not a stream, or too short to hold its header.
   * @throws {@link DecryptError} - `ERR_DECRYPT`: the header or its wrapped DEK was altered.
   * @throws {@link UnknownKekError} - `ERR_UNKNOWN_KEK`, {@link RootKeyError} `ERR_ROOT_KEY`,
   *   {@link StoreError} `ERR_STORE`: as for {@link KeyChain.decrypt}.
   * @example
   * ```ts
   * const { header, replaces } = await chain.rewrapStreamHeader(firstBytesOfFile)
   * // write `header` over bytes [0, replaces) of the file (header.length may differ: rewrite the file)
   * ```
   */
  async rewrapStreamHeader(head: Uint8Array): Promise<{
    /** The new stream header, under the primary KEK. */
    header: Uint8Array
    /** How many leading bytes of the stream it replaces. */
    replaces: number
  }> {
    if (!(head instanceof Uint8Array)) throw new TypeError('head: expected a Uint8Array')
    const parts = decodeStreamHeader(head)
    const replaces = parts.streamHeaderLength
    const tail = head.slice(parts.dekPrefix.length, replaces) // segment size and nonce prefix, kept as they are
    const current = this.#leases.primary
    if (current && !this.#leases.superseded && !this.#leases.expired(current) && equalBytes(parts.header, current.streamHeader)) {
      await this.#deks.forDecrypt(parts) // authenticates the header and the wrapped DEK, as a real rewrap would
      return { header: head.slice(0, replaces), replaces }
    }
    const dek = await this.#deks.forRewrap(parts)
    const p = await this.#leases.acquire()
    const iv1 = randomPublicBytes(IV_BYTES)
    const wrapped = await crypto.subtle.wrapKey('raw', dek, p.kek, gcmParams(iv1, p.streamHeader))
    this.#deks.movedOff(parts.kekId)
    return { header: concat(p.streamHeader, iv1, new Uint8Array(wrapped), tail), replaces }
  }

  // ---------------------------------------------------------------------------------- rotate and rewrap

  /**
   * Makes a new primary KEK now (one root-key wrap). Older KEKs stay for decryption. Other
   * processes on the same store move to it when their lease runs out.
   *
   * The root is proved first (see {@link KeyChain.open}): in a chain instance that has not
   * unwrapped a KEK of the chain yet, this costs one unwrap of the head's primary before the
   * wrap; when that fails, nothing is written (no KEK record, no head change, no lease). When the
   * store lacks the head's primary record, the newest other record may prove the root instead.
   *
   * @returns the new primary KEK's `id` (a random u32) and `createdAt` (ms since the epoch).
   * @throws {@link RootKeyError} - `ERR_ROOT_KEY`: the root key could not unwrap the head's primary
   *   (a wrong passphrase or key, or an altered record: not retryable; unreachable: `retryable`),
   *   or failed to make the KEK.
   * @throws {@link StoreError} - `ERR_STORE`: the KEK record or the head could not be written (no
   *   data is ever encrypted under a KEK that is not stored), or the head names a KEK that the
   *   store lacks and no other record proves the root (`retryable`: on an eventually consistent
   *   store the record may still arrive).
   * @throws {@link LimitError} - `ERR_LIMIT`: no free KEK id after eight random draws.
   * @example
   * ```ts
   * const { id } = await chain.rotate()
   * chain.stats().keks.find((k) => k.primary)?.id === id // true
   * ```
   */
  async rotate(): Promise<{
    /** The new primary KEK's id. */
    id: number
    /** When it was made (ms since the epoch). */
    createdAt: number
  }> {
    const p = await this.#leases.rotate()
    this.#pool.drop()
    return { id: p.id, createdAt: p.createdAt }
  }

  /**
   * Re-wraps the DEK of `encryptedData` under the current primary KEK. The payload bytes are
   * not re-encrypted (its AAD leaves the KEK out on purpose), and the DEK never leaves WebCrypto.
   * Data already under the primary KEK comes back as a copy, after its header was authenticated.
   *
   * @returns the encrypted data under the primary KEK; it decrypts with the same associated data.
   * @throws TypeError - `encryptedData` is not a `Uint8Array`.
   * @throws {@link FormatError} - `ERR_FORMAT`: malformed, or a stream (use {@link KeyChain.rewrapStreamHeader}).
   * @throws {@link DecryptError} - `ERR_DECRYPT`: the header or its wrapped DEK was altered.
   * @throws {@link UnknownKekError} - `ERR_UNKNOWN_KEK`, {@link RootKeyError} `ERR_ROOT_KEY`,
   *   {@link StoreError} `ERR_STORE`: as for {@link KeyChain.decrypt} and {@link KeyChain.encrypt}.
   * @example
   * ```ts
   * await chain.rotate()
   * const moved = await chain.rewrap(old) // same plaintext, DEK now wrapped by the new primary
   * ```
   */
  async rewrap(encryptedData: Uint8Array): Promise<Uint8Array> {
    if (!(encryptedData instanceof Uint8Array)) throw new TypeError('encryptedData: expected a Uint8Array')
    if (decodeHeader(encryptedData).flags & FLAG_STREAM) {
      throw new FormatError('this is a stream: rewrap it with rewrapStreamHeader, which leaves its segments untouched')
    }
    const parts = decodeMessage(encryptedData)
    const current = this.#leases.primary
    if (current && !this.#leases.superseded && !this.#leases.expired(current) && equalBytes(parts.header, current.header)) {
      await this.#deks.forDecrypt(parts) // authenticates the header and the wrapped DEK, as a real rewrap would
      return encryptedData.slice()
    }
    const dek = await this.#deks.forRewrap(parts)
    const p = await this.#leases.acquire()
    const iv1 = randomPublicBytes(IV_BYTES)
    const wrapped = await crypto.subtle.wrapKey('raw', dek, p.kek, gcmParams(iv1, p.header))
    this.#deks.movedOff(parts.kekId)
    return concat(p.header, iv1, new Uint8Array(wrapped), parts.iv2, parts.sealed)
  }

  // ---------------------------------------------------------------------------------- roots

  /**
   * Adds a root to the chain: every KEK gets a wrap under it (one unwrap by a root this process
   * holds, one wrap by the new root, per KEK; no DEK and no data byte changes), and from then on
   * every new KEK is wrapped under it too. Any one root unlocks the chain. The new root proves
   * itself first: its first wrap must unwrap before anything is written under it.
   *
   * Crash-safe and idempotent (invariant 8): the head lists the root as `adding` until every KEK
   * has its wrap, then `active`; a run killed at any point leaves every KEK readable by the roots
   * it had, and running `addRoot` again finishes. Other processes keep encrypting meanwhile: a
   * KEK rotated in during the change gets its wrap in a later pass. A chain with no KEK yet just
   * holds the root: its first KEK is wrapped under every root held.
   *
   * @param name - the root's name in the chain: 1 to 64 letters, digits, `.`, `_`, `-`.
   * @param root - a root key with `wrapKek`.
   * @returns what it did: {@link RootChangeReport}.
   * @throws TypeError - a bad name, a root without `wrapKek`, a store that keeps one root per KEK.
   * @throws {@link RootKeyError} - `ERR_ROOT_KEY`: no held root could unwrap a KEK, the new root
   *   could not wrap or did not unwrap its own wrap (nothing written under it), or the root is
   *   being removed.
   * @throws {@link StoreError} - `ERR_STORE`: the store failed; run it again to finish.
   * @example
   * ```ts
   * const chain = await KeyChain.open({ rootKey: passkeyRoot, store })
   * const { wrapped } = await chain.addRoot('recovery', passphraseRootKey({ passphrase: recoveryPhrase }))
   * ```
   */
  addRoot(name: string, root: RootKey): Promise<RootChangeReport> {
    return this.#roots.add(name, root)
  }

  /**
   * Removes a root from the chain: it is listed as `removing` (new KEKs no longer get a wrap
   * under it), every KEK is checked to keep a wrap under a root that stays, then its wraps are
   * deleted and the head drops it. The last root of a chain cannot be removed. Crash-safe and
   * idempotent: run it again to finish; a root already gone is not an error.
   *
   * @param name - the root to remove.
   * @returns what it did: {@link RootChangeReport} (`deleted`: wraps deleted).
   * @throws {@link LimitError} - `ERR_LIMIT`: it is the chain's last active root.
   * @throws {@link RootKeyError} - `ERR_ROOT_KEY`: a KEK has no wrap under a root that stays and
   *   this process cannot give it one (nothing deleted).
   * @throws {@link StoreError} - `ERR_STORE`: the store failed; run it again to finish.
   * @example
   * ```ts
   * await chain.removeRoot('hsm') // after addRoot('kms', …): the HSM no longer opens any KEK
   * ```
   */
  removeRoot(name: string): Promise<RootChangeReport> {
    return this.#roots.remove(name)
  }

  /**
   * Replaces a root: {@link KeyChain.addRoot} of the new one, then {@link KeyChain.removeRoot} of
   * the old. A new passphrase, a passphrase to a KMS, one KMS key or region to another, an HSM
   * to a KMS. KEK ids stay; no DEK and no data byte changes. Killed at any point, every KEK stays
   * readable by the old root or the new one, and the same call again finishes the change.
   *
   * @param root - the new root key (with `wrapKek`).
   * @param options - `from`: the root it replaces (default: the chain's only root, or the one an
   *   unfinished change is removing); `name`: the new root's name (default: `from` with a
   *   counter, `'default'` → `'default-2'` → `'default-3'`). A chain opened with `rootKey`
   *   never needs the names: `rootKey` always means its only root.
   * @returns what it did: {@link RootChangeReport}, `name` the new root's name.
   * @throws the errors of {@link KeyChain.addRoot} and {@link KeyChain.removeRoot}; TypeError when
   *   the chain has several roots and `from` is not given.
   * @example
   * ```ts
   * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: oldPhrase }), store })
   * const report = await chain.changeRoot(awsKmsRootKey({ keyId, region, credentials }))
   * console.log(`${report.wrapped} KEKs re-wrapped, ${report.deleted} old wraps deleted`)
   * ```
   */
  changeRoot(root: RootKey, options?: { from?: string; name?: string }): Promise<RootChangeReport> {
    return this.#roots.change(root, options)
  }

  /**
   * The chain's roots as its head lists them, and whether this process holds each; one store
   * read, no root-key call.
   *
   * @throws {@link StoreError} - `ERR_STORE`: the store could not be read.
   * @example
   * ```ts
   * for (const r of await chain.listRoots()) console.log(r.name, r.kind, r.state, r.held ? 'held' : '')
   * ```
   */
  listRoots(): Promise<RootInfo[]> {
    return this.#roots.list()
  }

  // ---------------------------------------------------------------------------------- freshness

  /**
   * Reads the chain head now, as the chain does on its own every `maxStalenessMs` (and at once
   * when the store pushes a change): a primary rotated by another process replaces this
   * process's (its lease and prepared DEKs are dropped, their uses stay counted), and KEKs
   * retired or destroyed anywhere stop decrypting here. One store read, no root-key call (the
   * next encryption unwraps the new primary; while the root key is unreachable it goes on under
   * the old one, retrying every 5 s, and `refresh()` makes it retry at once).
   *
   * @throws {@link StoreError} - `ERR_STORE`: the head could not be read.
   * @example
   * ```ts
   * await chain.refresh() // after `kms-proxy rotate` elsewhere: the next encryption uses the new primary
   * ```
   */
  async refresh(): Promise<void> {
    this.#leases.retrySwitch()
    await this.#view.read()
  }

  /**
   * Stops following the store's push of head changes (see `watch`), so that nothing of the chain
   * keeps a process alive, and drops the prepared DEKs. The chain still works afterwards: it
   * reads the head every `maxStalenessMs` instead. Idempotent.
   *
   * @example
   * ```ts
   * const chain = await KeyChain.open({ rootKey, store: etcdStore({ endpoint }) })
   * try { await chain.encrypt(data) } finally { chain.close() }
   * ```
   */
  close(): void {
    this.#unwatch?.()
    this.#unwatch = undefined
    this.#pool.drop()
  }

  // ---------------------------------------------------------------------------------- retire and destroy

  /**
   * Retires KEK `id`: from now on data under it no longer decrypts (nor rewraps), in this
   * process at once and in every process sharing the store within its `maxStalenessMs`
   * (`ERR_RETIRED_KEK`). Reversible with {@link KeyChain.unretireKek}. The way to check that
   * nothing still needs a KEK after {@link KeyChain.rewrap} moved its data: retire it, watch
   * for `ERR_RETIRED_KEK` (and `stats().refusedRetired`) during the grace period, then
   * {@link KeyChain.destroyKek}. Idempotent. One head write, no root-key call.
   *
   * @returns the head's entry: `id` and `retiredAt`.
   * @throws TypeError - `id` is not a KEK id.
   * @throws {@link LimitError} - `ERR_LIMIT`: `id` is the primary (rotate first).
   * @throws {@link UnknownKekError} - `ERR_UNKNOWN_KEK`: the store has no such KEK, or the chain none yet.
   * @throws {@link StoreError} - `ERR_STORE`: the store failed.
   * @example
   * ```ts
   * await chain.rotate()
   * for (const row of rows) row.data = await chain.rewrap(row.data)
   * await chain.retireKek(oldId)
   * ```
   */
  retireKek(id: number): Promise<RetiredKek> {
    return this.#lifecycle.retireKek(id)
  }

  /**
   * Makes a retired KEK decrypt again (not a destroyed one). Idempotent: a KEK not retired is left as it is.
   *
   * @throws TypeError - `id` is not a KEK id.
   * @throws {@link DestroyedKekError} - `ERR_DESTROYED_KEK`: the KEK was destroyed.
   * @throws {@link StoreError} - `ERR_STORE`: the store failed.
   * @example
   * ```ts
   * await chain.unretireKek(oldId) // something still needed it
   * ```
   */
  unretireKek(id: number): Promise<void> {
    return this.#lifecycle.unretireKek(id)
  }

  /**
   * Destroys KEK `id` for good (crypto-shredding): the head marks it destroyed, then every record
   * of it is deleted from the store; data under it can no longer be decrypted by anyone, and
   * processes holding it in memory drop it within their `maxStalenessMs`. Refuses the primary,
   * a KEK not retired, and one retired for less than the grace period. Killed half-way, the
   * same call finishes the deletions.
   *
   * @param options - `graceMs`: how long the KEK must have been retired (default the chain's `destroyGraceMs`, 7 days).
   * @returns the KEK destroyed and how many records this call deleted (one per root).
   * @throws TypeError - `id` is not a KEK id; the store embeds KEKs in the data or cannot delete records.
   * @throws RangeError - `graceMs` is negative or not a number.
   * @throws {@link LimitError} - `ERR_LIMIT`: the primary, not retired, or retired too recently.
   * @throws {@link StoreError} - `ERR_STORE`: the store failed; run it again to finish.
   * @example
   * ```ts
   * await chain.destroyKek(oldId) // 7 days after retireKek(oldId)
   * ```
   */
  destroyKek(id: number, options?: { graceMs?: number }): Promise<DestroyReport> {
    return this.#lifecycle.destroyKek(id, options?.graceMs)
  }

  /**
   * Retires the whole chain: no encryption, decryption, rewrap or rotation in it, here at once
   * and in every process within its `maxStalenessMs` (`ERR_RETIRED_KEK`). Reversible with
   * {@link KeyChain.unretireChain}. For one chain per tenant: the first step when a tenant leaves.
   *
   * @returns when the chain was retired (ms since the epoch).
   * @throws {@link UnknownKekError} - `ERR_UNKNOWN_KEK`: the chain has no KEK yet.
   * @throws {@link StoreError} - `ERR_STORE`: the store failed.
   * @example
   * ```ts
   * await tenantChain.retireChain()
   * ```
   */
  retireChain(): Promise<number> {
    return this.#lifecycle.retireChain()
  }

  /**
   * Makes a retired chain usable again (not a destroyed one). Idempotent.
   *
   * @throws {@link DestroyedKekError} - `ERR_DESTROYED_KEK`: the chain was destroyed.
   * @throws {@link StoreError} - `ERR_STORE`: the store failed.
   * @example
   * ```ts
   * await tenantChain.unretireChain() // the tenant came back within the grace period
   * ```
   */
  unretireChain(): Promise<void> {
    return this.#lifecycle.unretireChain()
  }

  /**
   * Destroys the whole chain for good (per-tenant crypto-shredding): the head is marked
   * destroyed, then every KEK record of the chain is deleted; every process drops its KEKs
   * within its `maxStalenessMs`. The head stays as a tombstone (KEK ids and times, no key), so
   * the chain fails as destroyed instead of starting anew. Refuses a chain not retired, or
   * retired for less than the grace period. Killed half-way, the same call finishes.
   *
   * @param options - `graceMs`: how long the chain must have been retired (default the chain's `destroyGraceMs`).
   * @returns every KEK destroyed and how many records this call deleted.
   * @throws TypeError - the store embeds KEKs in the data or cannot delete records.
   * @throws RangeError - `graceMs` is negative or not a number.
   * @throws {@link LimitError} - `ERR_LIMIT`: not retired, or retired too recently.
   * @throws {@link StoreError} - `ERR_STORE`: the store failed; run it again to finish.
   * @example
   * ```ts
   * await tenantChain.destroyChain() // 7 days after retireChain()
   * ```
   */
  destroyChain(options?: { graceMs?: number }): Promise<DestroyReport> {
    return this.#lifecycle.destroyChain(options?.graceMs)
  }

  /**
   * The chain's retired and destroyed KEKs, and whether the chain itself is retired or
   * destroyed, as the head says now: one store read, no root-key call.
   *
   * @throws {@link StoreError} - `ERR_STORE`: the store could not be read.
   * @example
   * ```ts
   * const { retired } = await chain.lifecycleStatus()
   * for (const k of retired) console.log(k.id, k.destroyedAt ? 'destroyed' : 'retired')
   * ```
   */
  async lifecycleStatus(): Promise<{
    /** KEKs retired or destroyed, oldest first. */
    retired: RetiredKek[]
    /** When the chain was retired, if it is. */
    chainRetiredAt?: number
    /** When the chain was destroyed, if it was. */
    chainDestroyedAt?: number
  }> {
    const h = (await this.#view.read())?.value
    return {
      retired: [...(h?.retired ?? [])],
      ...(h?.chainRetiredAt === undefined ? {} : { chainRetiredAt: h.chainRetiredAt }),
      ...(h?.chainDestroyedAt === undefined ? {} : { chainDestroyedAt: h.chainDestroyedAt }),
    }
  }

  // ---------------------------------------------------------------------------------- stats

  /**
   * The primary KEK as the store's head names it, and how much of it is left: one store read,
   * no root-key call, so it answers while the root key is unreachable (a Kubernetes plugin that
   * restarted during a KMS outage still knows its key id). `undefined` before the first KEK.
   *
   * @throws {@link StoreError} - `ERR_STORE`: the store could not be read.
   * @example
   * ```ts
   * const status = await chain.primaryStatus()
   * if (status && status.usesLeft < 1000) console.log(`KEK ${status.id} rotates soon`)
   * ```
   */
  primaryStatus(): Promise<PrimaryStatus | undefined> {
    return this.#leases.status()
  }

  /**
   * Counters of this process since `open`, and the KEKs it knows; no I/O, never throws.
   *
   * @example
   * ```ts
   * const { encryptions, rootKeyWraps, rootKeyUnwraps, rootKeyAvailable } = chain.stats()
   * if (!rootKeyAvailable) console.warn('root key unreachable: encrypting under the current KEK until it is due')
   * ```
   */
  stats(): KeyChainStats {
    const primary = this.#leases.primary?.id
    const lastError = this.#keks.lastError
    return {
      ...this.#counts,
      rootKeyAvailable: this.#keks.available,
      ...(lastError === undefined ? {} : { rootKeyLastError: lastError }),
      keks: [...this.#keks.entries.values()].map((e) => {
        const retired = this.#view.retiredOf(e.id)
        const state = retired === undefined ? 'active' : retired.destroyedAt === undefined ? 'retired' : 'destroyed'
        return { id: e.id, primary: e.id === primary, wraps: e.wraps, createdAt: e.createdAt, decryptions: e.decryptions, rewrapped: e.rewrapped, state }
      }),
      roots: Object.fromEntries([...this.#keks.perRoot].map(([n, c]) => [n, { ...c }])),
      headCheckedAt: this.#view.checkedAt,
    }
  }

  /** The chain's name only, never a key or a counter: `[KeyChain name]`. */
  toString(): string {
    return `[KeyChain ${this.name}]`
  }

  /** What `JSON.stringify(chain)` shows: the name, the root key's kind and {@link KeyChain.stats}; no secret. */
  toJSON(): {
    /** The chain's name. */
    name: string
    /** The root key's kind, such as `'passphrase-pbkdf2'`; with several roots, each name and kind. */
    rootKey: string
    /** As {@link KeyChain.stats}. */
    stats: KeyChainStats
  } {
    return { name: this.name, rootKey: this.#keks.rootKinds, stats: this.stats() }
  }
}
