/**
 * Encrypted data, formats v1 and v2: pure encoding and decoding, no crypto, no I/O.
 * docs/FORMAT.md is the human-readable twin of this file; change both together.
 *
 *   0       version: 0x01, or 0x02 (the embedded KEK wrapped under several roots)
 *   1..5    KEK id, u32 big-endian, never 0
 *   5       flags: bit 0 = wrapped KEK embedded, bit 1 = stream; other bits must be 0
 *   v1, bit 0: u16 length (1..65535) || wrapped KEK exactly as the root key returned it
 *   v2 (bit 0 required): u8 count (2..255), then per root: u8 name length (1..64) || name
 *           (ASCII letters, digits, . _ -) || u16 length (1..65535) || wrapped KEK
 *   ---- end of header: the header is the AAD of the DEK wrap
 *   iv1 (12) || wrapped DEK (16 + 16 tag)
 *   iv2 (12) || ciphertext || tag (16)
 *
 * A stream (flag bit 1) has the same header, then iv1 || wrapped DEK (its AAD is the header with
 * the stream bit), then segment size u32 || nonce prefix (7), then segments of segmentSize + 16
 * bytes, the last one shorter (1..segmentSize plaintext bytes, 0 only for an empty stream).
 *
 * The payload's AAD and every segment's AAD start with 0x01 in both versions: they leave the
 * header out, so a rewrap moves data between v1 and v2 without touching a payload byte.
 */
import { FormatError } from './errors.js'
import { asBytes, concat, join, u32be, utf8, type Bytes } from './internal/bytes.js'
import { fromBase64Url, toBase64Url } from './encoding.js'

/**
 * The first byte of encrypted data whose KEK lives in a store or is embedded once: every data
 * of a chain with one root. Data of a chain with several roots on the embedded store starts with
 * {@link FORMAT_VERSION_ROOTS}. This library reads both, forever.
 */
export const FORMAT_VERSION = 0x01
/** The first byte of encrypted data that embeds its KEK wrapped under several named roots (format v2). */
export const FORMAT_VERSION_ROOTS = 0x02
/** Largest number of roots whose wraps one data can embed. */
export const MAX_EMBEDDED_ROOTS = 255
export const FLAG_EMBEDDED_KEK = 0x01
export const FLAG_STREAM = 0x02
const KNOWN_FLAGS = FLAG_EMBEDDED_KEK | FLAG_STREAM

export const IV_BYTES = 12
export const TAG_BYTES = 16
export const DEK_BYTES = 16
export const WRAPPED_DEK_BYTES = DEK_BYTES + TAG_BYTES
/** Largest wrapped KEK that can be embedded (its length is a u16); a root key whose wrap is longer gives `ERR_LIMIT` with the embedded store. */
export const MAX_EMBEDDED_KEK_BYTES = 0xffff
/** Fixed part of the header: version, KEK id, flags. */
export const FIXED_HEADER_BYTES = 6
/** Bytes added to a message without an embedded KEK: 6 + 12 + 32 + 12 + 16. */
export const OVERHEAD_BYTES = FIXED_HEADER_BYTES + IV_BYTES + WRAPPED_DEK_BYTES + IV_BYTES + TAG_BYTES
/** AES-GCM's plaintext limit for one (key, nonce): 2^39 - 256 bits. */
export const MAX_PLAINTEXT_BYTES = 2 ** 36 - 32

/** Text form: this prefix, then base64url (no padding) of the binary form; `kp2.` for format v2 data. */
export const TEXT_PREFIX = 'kp1.'

/** The header of an encrypted data (message or stream), as {@link decodeHeader} reads it. */
export interface Header {
  /** The format version: {@link FORMAT_VERSION}, or {@link FORMAT_VERSION_ROOTS} for data embedding wraps under several roots. */
  version: number
  /** The id of the KEK that wrapped the DEK: a u32, never 0. */
  kekId: number
  /** Bit 0: a wrapped KEK is embedded; bit 1: a stream. */
  flags: number
  /** v1: the root-wrapped KEK carried inside the data (flag bit 0), else undefined. Always undefined in v2: see `embeddedKeks`. */
  embeddedKek: Bytes | undefined
  /**
   * Every root-wrapped KEK the data carries, with the root's name (v2) or none (v1: one wrap,
   * its root unnamed); undefined when the data embeds no KEK.
   */
  embeddedKeks: EmbeddedKek[] | undefined
  /** Length of the header in bytes; `bytes.subarray(0, headerLength)` is the DEK wrap's AAD. */
  headerLength: number
}

/** One root-wrapped KEK embedded in encrypted data. */
export interface EmbeddedKek {
  /** The root's name in format v2; undefined in v1, where the one wrap names no root. */
  root: string | undefined
  /** The KEK as that root wrapped it. */
  wrapped: Bytes
}

/** A single message split into its parts by {@link decodeMessage}; views into the input, not copies. */
export interface MessageParts extends Header {
  /** Bytes `[0, headerLength)`: the AAD of the DEK wrap. */
  header: Bytes
  /** The IV of the DEK wrap. */
  iv1: Bytes
  /** The DEK wrapped by the KEK: 16 bytes and a 16-byte tag. */
  wrappedDek: Bytes
  /** header || iv1 || wrapped DEK: everything the DEK's identity depends on (the DEK cache key). */
  dekPrefix: Bytes
  /** The IV of the payload. */
  iv2: Bytes
  /** Ciphertext followed by its 16-byte tag. */
  sealed: Bytes
}

/**
 * Internal: callers pass a valid u32 id and wraps of 1..65535 bytes (the chain checks). One
 * wrap: format v1, as before chains had several roots. Several: format v2, each with its root's name.
 */
export function encodeHeader(kekId: number, embedded?: readonly { root: string; wrapped: Uint8Array }[], stream = false): Bytes {
  const flags = (embedded ? FLAG_EMBEDDED_KEK : 0) | (stream ? FLAG_STREAM : 0)
  const multi = embedded !== undefined && embedded.length > 1
  const fixed = concat(new Uint8Array([multi ? FORMAT_VERSION_ROOTS : FORMAT_VERSION]), u32be(kekId), new Uint8Array([flags]))
  if (!embedded) return fixed
  const u16 = (n: number) => new Uint8Array([n >> 8, n & 0xff])
  if (!multi) return concat(fixed, u16(embedded[0]!.wrapped.length), embedded[0]!.wrapped)
  const parts: Uint8Array[] = [fixed, new Uint8Array([embedded.length])]
  for (const { root, wrapped } of embedded) {
    const name = utf8(root, 'root name')
    parts.push(new Uint8Array([name.length]), name, u16(wrapped.length), wrapped)
  }
  return join(parts)
}

/** Checks as much of the fixed header (version, KEK id, flags) as `bytes` holds. */
function checkFixed(bytes: Uint8Array): void {
  if (bytes.length > 0 && bytes[0] !== FORMAT_VERSION && bytes[0] !== FORMAT_VERSION_ROOTS) throw new FormatError(`unsupported format version ${bytes[0]}`)
  if (bytes.length >= 5 && (bytes[1]! | bytes[2]! | bytes[3]! | bytes[4]!) === 0) throw new FormatError('KEK id 0 is reserved')
  if (bytes.length >= 6 && (bytes[5]! & ~KNOWN_FLAGS) !== 0) throw new FormatError('unknown flags are set')
  if (bytes.length >= 6 && bytes[0] === FORMAT_VERSION_ROOTS && !(bytes[5]! & FLAG_EMBEDDED_KEK)) throw new FormatError('format v2 data must embed its KEK')
}

const ROOT_NAME_BYTE = /^[A-Za-z0-9._-]$/

/**
 * Reads the embedded KEKs at `o` (after the fixed header). Returns the end of the header, or
 * undefined when `bytes` ends before it does (for a stream read chunk by chunk).
 */
function readEmbedded(bytes: Bytes, v2: boolean, o: number, out?: EmbeddedKek[]): number | undefined {
  const u16At = (i: number) => (bytes[i]! << 8) | bytes[i + 1]!
  if (!v2) {
    if (bytes.length < o + 2) return undefined
    const len = u16At(o)
    if (len === 0) throw new FormatError('embedded KEK is empty')
    if (bytes.length < o + 2 + len) return undefined
    out?.push({ root: undefined, wrapped: bytes.subarray(o + 2, o + 2 + len) })
    return o + 2 + len
  }
  if (bytes.length < o + 1) return undefined
  const count = bytes[o++]!
  if (count < 2) throw new FormatError('format v2 data must embed at least two wrapped KEKs')
  const seen = new Set<string>()
  for (let i = 0; i < count; i++) {
    if (bytes.length < o + 1) return undefined
    const nameLength = bytes[o]!
    if (nameLength === 0 || nameLength > 64) throw new FormatError('an embedded root name must be 1 to 64 bytes')
    if (bytes.length < o + 1 + nameLength + 2) return undefined
    let root = ''
    for (const b of bytes.subarray(o + 1, o + 1 + nameLength)) {
      const c = String.fromCharCode(b)
      if (!ROOT_NAME_BYTE.test(c)) throw new FormatError('an embedded root name has a character outside letters, digits, ".", "_", "-"')
      root += c
    }
    if (seen.has(root)) throw new FormatError('an embedded root name appears twice')
    seen.add(root)
    o += 1 + nameLength
    const len = u16At(o)
    if (len === 0) throw new FormatError('embedded KEK is empty')
    if (bytes.length < o + 2 + len) return undefined
    out?.push({ root, wrapped: bytes.subarray(o + 2, o + 2 + len) })
    o += 2 + len
  }
  return o
}

/**
 * Reads the header only (of a message or a stream); never reads past `input`. Pure: no crypto.
 *
 * @throws {@link FormatError} - `ERR_FORMAT`: too short, an unknown version or flag, a KEK id 0,
 *   an embedded KEK longer than the input.
 * @example
 * ```ts
 * const { kekId, embeddedKek } = decodeHeader(encryptedData) // which KEK a record needs, before decrypting
 * ```
 */
export function decodeHeader(input: Uint8Array): Header {
  if (!(input instanceof Uint8Array)) throw new TypeError('encryptedData: expected a Uint8Array')
  const bytes = asBytes(input)
  if (bytes.length < FIXED_HEADER_BYTES) throw new FormatError('encrypted data is truncated')
  checkFixed(bytes)
  const version = bytes[0]!
  const kekId = ((bytes[1]! << 24) | (bytes[2]! << 16) | (bytes[3]! << 8) | bytes[4]!) >>> 0
  const flags = bytes[5]!
  let headerLength = FIXED_HEADER_BYTES
  let embeddedKeks: EmbeddedKek[] | undefined
  if (flags & FLAG_EMBEDDED_KEK) {
    embeddedKeks = []
    const end = readEmbedded(bytes, version === FORMAT_VERSION_ROOTS, headerLength, embeddedKeks)
    if (end === undefined) throw new FormatError('encrypted data is truncated')
    headerLength = end
  }
  const embeddedKek = version === FORMAT_VERSION ? embeddedKeks?.[0]?.wrapped : undefined
  return { version, kekId, flags, embeddedKek, embeddedKeks, headerLength }
}

/**
 * Splits a single-message encrypted data into its parts. Pure: no crypto, nothing authenticated.
 *
 * @throws {@link FormatError} - `ERR_FORMAT`: malformed or truncated, or a stream.
 */
export function decodeMessage(input: Uint8Array): MessageParts {
  const h = decodeHeader(input)
  const bytes = asBytes(input)
  if (h.flags & FLAG_STREAM) throw new FormatError('this is a stream: use decryptStream (or rewrapStreamHeader)')
  const minimum = h.headerLength + IV_BYTES + WRAPPED_DEK_BYTES + IV_BYTES + TAG_BYTES
  if (bytes.length < minimum) throw new FormatError('encrypted data is truncated')
  const o = h.headerLength
  // Built field by field (no spread): this runs on every decryption.
  return {
    version: h.version,
    kekId: h.kekId,
    flags: h.flags,
    embeddedKek: h.embeddedKek,
    embeddedKeks: h.embeddedKeks,
    headerLength: o,
    header: bytes.subarray(0, o),
    iv1: bytes.subarray(o, o + IV_BYTES),
    wrappedDek: bytes.subarray(o + IV_BYTES, o + IV_BYTES + WRAPPED_DEK_BYTES),
    dekPrefix: bytes.subarray(0, o + IV_BYTES + WRAPPED_DEK_BYTES),
    iv2: bytes.subarray(o + IV_BYTES + WRAPPED_DEK_BYTES, o + 2 * IV_BYTES + WRAPPED_DEK_BYTES),
    sealed: bytes.subarray(o + 2 * IV_BYTES + WRAPPED_DEK_BYTES),
  }
}

/** AAD of the payload: version, kind 0x00 (one message), then the caller's associated data. */
export function payloadAad(associatedData: Uint8Array | undefined): Bytes {
  const aad = new Uint8Array(2 + (associatedData?.length ?? 0))
  aad[0] = FORMAT_VERSION
  if (associatedData) aad.set(associatedData, 2)
  return aad
}

// ------------------------------------------------------------------------------ streams

/** Plaintext bytes per stream segment unless `segmentSize` says otherwise: 64 KiB. */
export const DEFAULT_SEGMENT_SIZE = 65536
/** Smallest segment size a stream may declare (tiny segments are for tests; each costs a 16 B tag). */
export const MIN_SEGMENT_SIZE = 16
/** Largest: a decryptor holds a few segments, so a header cannot make it buffer more than ~16 MiB each. */
export const MAX_SEGMENT_SIZE = 2 ** 24
export const NONCE_PREFIX_BYTES = 7
/** Segments per stream: the counter is a u32. */
export const MAX_SEGMENTS = 2 ** 32
/** What follows the header of a stream, before the segments: iv1, wrapped DEK, segment size, nonce prefix. */
const STREAM_TAIL_BYTES = IV_BYTES + WRAPPED_DEK_BYTES + 4 + NONCE_PREFIX_BYTES

/** A stream header split into its parts by {@link decodeStreamHeader}; views into the input. */
export interface StreamHeader extends Header {
  /** Bytes `[0, headerLength)`: the AAD of the DEK wrap. */
  header: Bytes
  /** The IV of the DEK wrap. */
  iv1: Bytes
  /** The stream's DEK wrapped by the KEK: 16 bytes and a 16-byte tag. */
  wrappedDek: Bytes
  /** header || iv1 || wrapped DEK: the part a rewrap replaces. */
  dekPrefix: Bytes
  /** Plaintext bytes per segment (the last one may be shorter). */
  segmentSize: number
  /** The 7 random bytes that start every segment's nonce. */
  noncePrefix: Bytes
  /** Bytes before the first segment: header, iv1, wrapped DEK, segment size, nonce prefix. */
  streamHeaderLength: number
}

/**
 * Whether encrypted data is a stream (flags bit 1), from its first 6 bytes. Throws FormatError
 * when they are fewer or are not kms-proxy v1 data.
 *
 * @throws {@link FormatError} - `ERR_FORMAT`: fewer than 6 bytes, or not kms-proxy v1 data.
 * @example
 * ```ts
 * const first = await readFirstBytes(file, 6)
 * const fresh = isStream(first) ? await rewrapFileStream(file) : await chain.rewrap(await readAll(file))
 * ```
 */
export function isStream(head: Uint8Array): boolean {
  if (!(head instanceof Uint8Array)) throw new TypeError('head: expected a Uint8Array')
  if (head.length < FIXED_HEADER_BYTES) throw new FormatError('encrypted data is truncated')
  checkFixed(head)
  return (head[5]! & FLAG_STREAM) !== 0
}

/**
 * Length of the stream header that `head` starts, or undefined while more bytes are needed to
 * know it. Throws FormatError as soon as the bytes seen cannot start a stream.
 *
 * @throws {@link FormatError} - `ERR_FORMAT`: the bytes cannot start a stream.
 */
export function streamHeaderLength(head: Uint8Array): number | undefined {
  if (!(head instanceof Uint8Array)) throw new TypeError('head: expected a Uint8Array')
  checkFixed(head)
  if (head.length < FIXED_HEADER_BYTES) return undefined
  const flags = head[5]!
  if (!(flags & FLAG_STREAM)) throw new FormatError('this is a single message, not a stream: use decrypt')
  if (!(flags & FLAG_EMBEDDED_KEK)) return FIXED_HEADER_BYTES + STREAM_TAIL_BYTES
  const end = readEmbedded(asBytes(head), head[0] === FORMAT_VERSION_ROOTS, FIXED_HEADER_BYTES)
  return end === undefined ? undefined : end + STREAM_TAIL_BYTES
}

/**
 * Decodes the stream header at the start of `head` (the segments may follow). Pure: no crypto.
 *
 * @throws {@link FormatError} - `ERR_FORMAT`: not a stream, too short, or a segment size out of range.
 */
export function decodeStreamHeader(head: Uint8Array): StreamHeader {
  const length = streamHeaderLength(head)
  if (length === undefined || head.length < length) throw new FormatError('stream header is truncated')
  const bytes = asBytes(head)
  const h = decodeHeader(bytes)
  const o = h.headerLength
  const s = o + IV_BYTES + WRAPPED_DEK_BYTES
  const segmentSize = ((bytes[s]! << 24) | (bytes[s + 1]! << 16) | (bytes[s + 2]! << 8) | bytes[s + 3]!) >>> 0
  if (segmentSize < MIN_SEGMENT_SIZE || segmentSize > MAX_SEGMENT_SIZE) {
    throw new FormatError(`stream segment size ${segmentSize} is outside ${MIN_SEGMENT_SIZE}..${MAX_SEGMENT_SIZE}`)
  }
  return {
    version: h.version,
    kekId: h.kekId,
    flags: h.flags,
    embeddedKek: h.embeddedKek,
    embeddedKeks: h.embeddedKeks,
    headerLength: o,
    header: bytes.subarray(0, o),
    iv1: bytes.subarray(o, o + IV_BYTES),
    wrappedDek: bytes.subarray(o + IV_BYTES, s),
    dekPrefix: bytes.subarray(0, s),
    segmentSize,
    noncePrefix: bytes.subarray(s + 4, s + 4 + NONCE_PREFIX_BYTES),
    streamHeaderLength: length,
  }
}

/** Segment size u32 || nonce prefix: the part of a stream header after the wrapped DEK. */
export function encodeStreamTail(segmentSize: number, noncePrefix: Uint8Array): Bytes {
  return concat(u32be(segmentSize), noncePrefix)
}

/** STREAM nonce: prefix (7) || segment counter u32 || 0x01 on the last segment, else 0x00. */
export function segmentNonce(prefix: Uint8Array, counter: number, last: boolean): Bytes {
  const nonce = new Uint8Array(IV_BYTES)
  nonce.set(prefix)
  nonce[7] = counter >>> 24
  nonce[8] = (counter >>> 16) & 0xff
  nonce[9] = (counter >>> 8) & 0xff
  nonce[10] = counter & 0xff
  nonce[11] = last ? 1 : 0
  return nonce
}

/**
 * AAD of every segment: version, kind 0x01 (stream segment), segment size u32, then the caller's
 * associated data. Leaves out the KEK id and the wrapped DEK on purpose, so that a rewrap
 * replaces the stream header without touching a segment.
 */
export function segmentAad(segmentSize: number, associatedData: Uint8Array | undefined): Bytes {
  const aad = new Uint8Array(6 + (associatedData?.length ?? 0))
  aad[0] = FORMAT_VERSION
  aad[1] = 0x01
  aad.set(u32be(segmentSize), 2)
  if (associatedData) aad.set(associatedData, 6)
  return aad
}

const KEK_AAD_LABEL = utf8('kms-proxy/kek/v1\0')

/**
 * AAD the root key binds to a wrapped KEK: a label, the KEK id, then the chain name (last, so
 * the encoding is unambiguous). A KEK record moved to another chain or id fails to unwrap.
 * A root key receives it as `aad` in `newKek` and `unwrapKek`.
 *
 * @throws TypeError - a chain name that is not well-formed UTF-16.
 */
export function kekAad(chainName: string, kekId: number): Bytes {
  return concat(KEK_AAD_LABEL, u32be(kekId), utf8(chainName, 'chain name'))
}

export function toText(bytes: Uint8Array): string {
  return (bytes[0] === FORMAT_VERSION_ROOTS ? 'kp2.' : TEXT_PREFIX) + toBase64Url(bytes)
}

export function fromText(text: string): Bytes {
  if (typeof text !== 'string') throw new TypeError('encryptedText: expected a string')
  const version = text.startsWith(TEXT_PREFIX) ? FORMAT_VERSION : text.startsWith('kp2.') ? FORMAT_VERSION_ROOTS : undefined
  if (version === undefined) throw new FormatError('not kms-proxy text (expected the kp1. or kp2. prefix)')
  let bytes: Bytes
  try {
    bytes = fromBase64Url(text.slice(TEXT_PREFIX.length))
  } catch {
    throw new FormatError('text form is not valid base64url')
  }
  // The prefix names the version: a kp1. text holding v2 bytes (or the reverse) was tampered with.
  if (bytes.length > 0 && bytes[0] !== version) throw new FormatError('the text prefix does not match the format version')
  return bytes
}
