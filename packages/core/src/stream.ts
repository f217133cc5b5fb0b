/**
 * Streams: fixed-size segments under the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár,
 * "Online authenticated-encryption and its nonce-reuse misuse-resistance", CRYPTO 2015): segment
 * i is AES-GCM under the stream's DEK with nonce prefix || i || last-flag. Layout: docs/FORMAT.md.
 *
 * Only WHATWG streams and crypto.subtle: the same code on every runtime. The key chain supplies
 * the DEK; this module never sees a KEK.
 */
import { DecryptError, FormatError, LimitError } from './errors.js'
import {
  MAX_SEGMENTS,
  NONCE_PREFIX_BYTES,
  TAG_BYTES,
  decodeStreamHeader,
  encodeStreamTail,
  segmentAad,
  segmentNonce,
  streamHeaderLength,
  type StreamHeader,
} from './format.js'
import { concat, type Bytes } from './internal/bytes.js'
import { randomPublicBytes } from './internal/random.js'

/**
 * Segment seals (or opens) in flight at once. Each crypto.subtle call is a thread-pool job, so a
 * few in flight overlap the main thread's work (copies, stream bookkeeping) with AES; output
 * order is kept. Memory stays at about (IN_FLIGHT + 2) segments.
 */
const IN_FLIGHT = 4
const GCM = 'AES-GCM'

/**
 * Emits each operation's result in the order the operations were started, as soon as it and all
 * before it are done, with at most IN_FLIGHT running. The first failure errors the stream and
 * nothing after it is enqueued.
 */
class Ordered {
  #tail: Promise<void> = Promise.resolve()
  readonly #window: Promise<void>[] = []
  #failed = false

  constructor(
    readonly controller: TransformStreamDefaultController<Uint8Array>,
    readonly mapError: (error: unknown) => unknown,
  ) {}

  /** Queues `op`; resolves once fewer than IN_FLIGHT operations are pending (backpressure). */
  async push(op: Promise<ArrayBuffer>): Promise<void> {
    op.catch(() => {}) // its failure is reported through #tail, once
    const done = this.#tail.then(
      () => op,
    ).then(
      (out) => {
        if (out.byteLength > 0) this.controller.enqueue(new Uint8Array(out))
      },
      (error) => {
        throw this.#failed ? error : this.mapError(error)
      },
    )
    this.#tail = done
    done.catch((error) => {
      if (this.#failed) return
      this.#failed = true
      try {
        this.controller.error(error) // at once, even while no write is pending
      } catch {
        // Already errored or closed (the reader cancelled): nothing more to report.
      }
    })
    this.#window.push(done)
    if (this.#window.length >= IN_FLIGHT) await this.#window.shift()
  }

  /** Resolves when everything queued is enqueued; rejects with the first failure. */
  async drain(): Promise<void> {
    this.#window.length = 0
    await this.#tail
  }
}

function chunkArgument(chunk: unknown): Uint8Array {
  if (!(chunk instanceof Uint8Array)) throw new TypeError('stream chunk: expected a Uint8Array')
  return chunk
}

/**
 * Cuts a byte stream into pieces of `size` bytes, holding back one piece until the next byte
 * arrives so that the last piece is known at the end. Big chunks are cut in place (subarrays:
 * crypto.subtle copies its input when called); only a partial piece is copied into a buffer.
 */
class Segmenter {
  #buf: Uint8Array
  #filled = 0

  constructor(readonly size: number) {
    this.#buf = new Uint8Array(size)
  }

  /** Calls `emit` for every piece that is certainly not the last. */
  async write(chunk: Uint8Array, emit: (piece: Uint8Array) => Promise<void>): Promise<void> {
    const size = this.size
    let off = 0
    while (off < chunk.length) {
      if (this.#filled === size) {
        // More bytes follow, so the held piece is not the last. The buffer is reused at once:
        // `emit` hands it to crypto.subtle synchronously, and WebCrypto copies its input before
        // returning ("get a copy of the bytes held by the data parameter").
        this.#filled = 0
        await emit(this.#buf)
      } else if (this.#filled === 0 && chunk.length - off > size) {
        const piece = chunk.subarray(off, off + size)
        off += size
        await emit(piece)
      } else {
        const take = Math.min(size - this.#filled, chunk.length - off)
        this.#buf.set(chunk.subarray(off, off + take), this.#filled)
        this.#filled += take
        off += take
      }
    }
  }

  /** The held bytes: the last piece (0..size bytes). */
  rest(): Uint8Array {
    return this.#buf.subarray(0, this.#filled)
  }
}

/** What the key chain hands an encrypting stream: a fresh DEK and header || iv1 || wrapped DEK. */
export interface StreamDek {
  dek: CryptoKey
  dekPrefix: Uint8Array
}

export function encryptingStream(
  segmentSize: number,
  associatedData: Uint8Array | undefined,
  newDek: () => Promise<StreamDek>,
  onClose: () => void,
): TransformStream<Uint8Array, Uint8Array> {
  const aad = segmentAad(segmentSize, associatedData)
  const segmenter = new Segmenter(segmentSize)
  let started: Promise<{ dek: CryptoKey; prefix: Bytes; out: Ordered }> | undefined
  let counter = 0

  const start = (controller: TransformStreamDefaultController<Uint8Array>) =>
    (started ??= newDek().then(({ dek, dekPrefix }) => {
      const prefix = randomPublicBytes(NONCE_PREFIX_BYTES)
      controller.enqueue(concat(dekPrefix, encodeStreamTail(segmentSize, prefix)))
      return { dek, prefix, out: new Ordered(controller, (e) => e) }
    }))

  const seal = (s: { dek: CryptoKey; prefix: Bytes; out: Ordered }, piece: Uint8Array, last: boolean) => {
    if (counter >= MAX_SEGMENTS) throw new LimitError(`a stream holds at most 2^32 segments of ${segmentSize} bytes`)
    const iv = segmentNonce(s.prefix, counter++, last)
    return s.out.push(crypto.subtle.encrypt({ name: GCM, iv, additionalData: aad }, s.dek, piece as Bytes))
  }

  return new TransformStream<Uint8Array, Uint8Array>({
    async transform(chunk, controller) {
      const bytes = chunkArgument(chunk)
      const s = await start(controller)
      await segmenter.write(bytes, (piece) => seal(s, piece, false))
    },
    async flush(controller) {
      const s = await start(controller)
      await seal(s, segmenter.rest(), true)
      await s.out.drain()
      onClose()
    },
  })
}

export function decryptingStream(
  associatedData: Uint8Array | undefined,
  dekFor: (header: StreamHeader) => Promise<CryptoKey>,
  onClose: () => void,
): TransformStream<Uint8Array, Uint8Array> {
  // Header bytes collected until the whole stream header has arrived (at most ~64 KiB), in a
  // buffer that doubles, so that a header arriving byte by byte costs linear time.
  let head = new Uint8Array(64)
  let headLength = 0
  let state: { dek: CryptoKey; header: StreamHeader; aad: Bytes; segmenter: Segmenter; out: Ordered } | undefined
  let counter = 0
  const decryptFailed = () => new DecryptError('decryption failed')

  const open = (piece: Uint8Array, last: boolean) => {
    const s = state!
    if (counter >= MAX_SEGMENTS) throw decryptFailed()
    const iv = segmentNonce(s.header.noncePrefix, counter++, last)
    return s.out.push(crypto.subtle.decrypt({ name: GCM, iv, additionalData: s.aad }, s.dek, piece as Bytes))
  }

  return new TransformStream<Uint8Array, Uint8Array>({
    async transform(chunk, controller) {
      let bytes = chunkArgument(chunk)
      if (!state) {
        // Copy: the caller may reuse its chunk, and the header is kept across writes.
        if (headLength + bytes.length > head.length) {
          const grown = new Uint8Array(Math.max(2 * head.length, headLength + bytes.length))
          grown.set(head.subarray(0, headLength))
          head = grown
        }
        head.set(bytes, headLength)
        headLength += bytes.length
        const seen = head.subarray(0, headLength)
        const length = streamHeaderLength(seen)
        if (length === undefined || headLength < length) return
        const header = decodeStreamHeader(seen.slice(0, length))
        bytes = seen.subarray(length)
        const dek = await dekFor(header)
        state = {
          dek,
          header,
          aad: segmentAad(header.segmentSize, associatedData),
          segmenter: new Segmenter(header.segmentSize + TAG_BYTES),
          out: new Ordered(controller, decryptFailed),
        }
      }
      await state.segmenter.write(bytes, (piece) => open(piece, false))
    },
    async flush() {
      if (!state) {
        // Nothing or part of a header: say which, as decodeStreamHeader would.
        if (headLength === 0) throw new FormatError('the stream is empty')
        throw new FormatError('stream header is truncated')
      }
      const rest = state.segmenter.rest()
      // A final segment is at least its tag; anything shorter is a cut stream.
      if (rest.length < TAG_BYTES) throw decryptFailed()
      await open(rest, true)
      await state.out.drain()
      onClose()
    },
  })
}
