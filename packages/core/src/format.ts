/**
 * Encrypted data, format v1: pure encoding and decoding, no crypto, no I/O.
 * docs/FORMAT.md is the human-readable twin of this file; change both together.
 *
 *   0       version (0x01)
 *   1..5    KEK id, u32 big-endian, never 0
 *   5       flags: bit 0 = wrapped KEK embedded, bit 1 = stream; other bits must be 0
 *   [bit 0: u16 length (1..65535) || wrapped KEK exactly as the root key returned it]
 *   ---- end of header: the header is the AAD of the DEK wrap
 *   iv1 (12) || wrapped DEK (16 + 16 tag)
 *   iv2 (12) || ciphertext || tag (16)
 */
import { FormatError } from './errors.js'
import { asBytes, concat, fromBase64Url, toBase64Url, u32be, type Bytes } from './internal/bytes.js'

export const FORMAT_VERSION = 0x01
export const FLAG_EMBEDDED_KEK = 0x01
export const FLAG_STREAM = 0x02
const KNOWN_FLAGS = FLAG_EMBEDDED_KEK | FLAG_STREAM

export const IV_BYTES = 12
export const TAG_BYTES = 16
export const DEK_BYTES = 16
export const WRAPPED_DEK_BYTES = DEK_BYTES + TAG_BYTES
export const MAX_EMBEDDED_KEK_BYTES = 0xffff
/** Fixed part of the header: version, KEK id, flags. */
export const FIXED_HEADER_BYTES = 6
/** Bytes added to a message without an embedded KEK: 6 + 12 + 32 + 12 + 16. */
export const OVERHEAD_BYTES = FIXED_HEADER_BYTES + IV_BYTES + WRAPPED_DEK_BYTES + IV_BYTES + TAG_BYTES
/** AES-GCM's plaintext limit for one (key, nonce): 2^39 - 256 bits. */
export const MAX_PLAINTEXT_BYTES = 2 ** 36 - 32

/** Text form: this prefix, then base64url (no padding) of the binary form. */
export const TEXT_PREFIX = 'kp1.'

export interface Header {
  version: number
  kekId: number
  flags: number
  /** The root-wrapped KEK carried inside the data (flag bit 0), else undefined. */
  embeddedKek: Bytes | undefined
  /** Length of the header in bytes; `bytes.subarray(0, headerLength)` is the DEK wrap's AAD. */
  headerLength: number
}

export interface MessageParts extends Header {
  header: Bytes
  iv1: Bytes
  wrappedDek: Bytes
  /** header || iv1 || wrapped DEK: everything the DEK's identity depends on (the DEK cache key). */
  dekPrefix: Bytes
  iv2: Bytes
  /** Ciphertext followed by its 16-byte tag. */
  sealed: Bytes
}

/** Internal: callers pass a valid u32 id and an embedded KEK of 1..65535 bytes (the chain checks). */
export function encodeHeader(kekId: number, embeddedKek?: Uint8Array, stream = false): Bytes {
  const flags = (embeddedKek ? FLAG_EMBEDDED_KEK : 0) | (stream ? FLAG_STREAM : 0)
  const fixed = concat(new Uint8Array([FORMAT_VERSION]), u32be(kekId), new Uint8Array([flags]))
  if (!embeddedKek) return fixed
  const len = new Uint8Array([embeddedKek.length >> 8, embeddedKek.length & 0xff])
  return concat(fixed, len, embeddedKek)
}

/** Reads the header only. Throws FormatError; never reads past `bytes`. */
export function decodeHeader(input: Uint8Array): Header {
  if (!(input instanceof Uint8Array)) throw new TypeError('encryptedData: expected a Uint8Array')
  const bytes = asBytes(input)
  if (bytes.length < FIXED_HEADER_BYTES) throw new FormatError('encrypted data is truncated')
  const version = bytes[0]!
  if (version !== FORMAT_VERSION) throw new FormatError(`unsupported format version ${version}`)
  const kekId = ((bytes[1]! << 24) | (bytes[2]! << 16) | (bytes[3]! << 8) | bytes[4]!) >>> 0
  if (kekId === 0) throw new FormatError('KEK id 0 is reserved')
  const flags = bytes[5]!
  if ((flags & ~KNOWN_FLAGS) !== 0) throw new FormatError('unknown flags are set')
  let headerLength = FIXED_HEADER_BYTES
  let embeddedKek: Bytes | undefined
  if (flags & FLAG_EMBEDDED_KEK) {
    if (bytes.length < headerLength + 2) throw new FormatError('encrypted data is truncated')
    const len = (bytes[headerLength]! << 8) | bytes[headerLength + 1]!
    if (len === 0) throw new FormatError('embedded KEK is empty')
    headerLength += 2
    if (bytes.length < headerLength + len) throw new FormatError('encrypted data is truncated')
    embeddedKek = bytes.subarray(headerLength, headerLength + len)
    headerLength += len
  }
  return { version, kekId, flags, embeddedKek, headerLength }
}

/** Splits a single-message encrypted data into its parts. Pure; throws FormatError. */
export function decodeMessage(input: Uint8Array): MessageParts {
  const h = decodeHeader(input)
  const bytes = asBytes(input)
  if (h.flags & FLAG_STREAM) throw new FormatError('stream data needs a stream decryptor')
  const minimum = h.headerLength + IV_BYTES + WRAPPED_DEK_BYTES + IV_BYTES + TAG_BYTES
  if (bytes.length < minimum) throw new FormatError('encrypted data is truncated')
  const o = h.headerLength
  // Built field by field (no spread): this runs on every decryption.
  return {
    version: h.version,
    kekId: h.kekId,
    flags: h.flags,
    embeddedKek: h.embeddedKek,
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

const KEK_AAD_LABEL = new TextEncoder().encode('kms-proxy/kek/v1\0')

/**
 * AAD the root key binds to a wrapped KEK: a label, the KEK id, then the chain name (last, so
 * the encoding is unambiguous). A KEK record moved to another chain or id fails to unwrap.
 */
export function kekAad(chainName: string, kekId: number): Bytes {
  return concat(KEK_AAD_LABEL, u32be(kekId), new TextEncoder().encode(chainName))
}

export function toText(bytes: Uint8Array): string {
  return TEXT_PREFIX + toBase64Url(bytes)
}

export function fromText(text: string): Bytes {
  if (typeof text !== 'string') throw new TypeError('encryptedText: expected a string')
  if (!text.startsWith(TEXT_PREFIX)) throw new FormatError('not kms-proxy text (expected the kp1. prefix)')
  const bytes = fromBase64Url(text.slice(TEXT_PREFIX.length))
  if (!bytes) throw new FormatError('text form is not valid base64url')
  return bytes
}
