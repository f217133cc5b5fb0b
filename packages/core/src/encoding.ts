/**
 * Base64, base64url and hex: the one implementation every kms-proxy package uses.
 *
 * Decoding is strict, so that each byte string has exactly one text form and a value that a
 * store or a KMS answer altered in transit (spaces, line breaks, a dropped `=`) is refused rather
 * than silently read: `fromBase64` takes padded standard base64 only (RFC 4648 section 4: length a
 * multiple of 4, `=` only at the end), `fromBase64Url` unpadded base64url only (section 5), and
 * both refuse whitespace, any other character and nonzero leftover bits. Neither goes through
 * `atob` or `btoa`, so decoding a KEK leaves no copy of its bytes in an immutable string, and a
 * failed decoding zeroes what it had decoded. Errors never quote the input.
 */

const STANDARD = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
const URL_SAFE = /* @__PURE__ */ STANDARD.slice(0, 62) + '-_'
const HEX = '0123456789abcdef'
const PAD = 61 // '='

/** Character codes of an alphabet, and the value of each code below 128 (-1: not in it). */
interface Alphabet {
  readonly codes: Uint8Array
  readonly values: Int8Array
  /** Bits per character: 6 for base64, 4 for hex. */
  readonly width: number
}

function alphabet(chars: string): Alphabet {
  const codes = new TextEncoder().encode(chars)
  const values = new Int8Array(128).fill(-1)
  codes.forEach((code, i) => (values[code] = i))
  return { codes, values, width: Math.log2(chars.length) }
}

// Pure: a bundle keeps only the alphabets of the functions it imports (KeyChain: base64url).
const standard = /* @__PURE__ */ alphabet(STANDARD)
const urlSafe = /* @__PURE__ */ alphabet(URL_SAFE)
const hex = /* @__PURE__ */ alphabet(HEX)
// Every character written is ASCII, so UTF-8 decoding turns the codes into the string in one
// native call: several times faster than building it from characters.
const ascii = new TextDecoder()

function encode(bytes: Uint8Array, { codes, width }: Alphabet, pad: boolean, what: string): string {
  if (!(bytes instanceof Uint8Array)) throw new TypeError(`${what}: expected a Uint8Array`)
  const chars = Math.ceil((bytes.length * 8) / width)
  const out = new Uint8Array(pad ? Math.ceil(chars / 4) * 4 : chars)
  const mask = (1 << width) - 1
  let acc = 0
  let bits = 0
  let n = 0
  for (let i = 0; i < bytes.length; i++) {
    acc = (acc << 8) | bytes[i]!
    bits += 8
    while (bits >= width) out[n++] = codes[(acc >>> (bits -= width)) & mask]!
    acc &= (1 << bits) - 1
  }
  if (bits > 0) out[n++] = codes[(acc << (width - bits)) & mask]!
  out.fill(PAD, n)
  try {
    return ascii.decode(out)
  } finally {
    out.fill(0) // the codes spell the bytes, which may be a key
  }
}

function decode(text: string, { values }: Alphabet, padded: boolean, what: string): Uint8Array<ArrayBuffer> {
  if (typeof text !== 'string') throw new TypeError(`${what}: expected a string`)
  const refused = () => new TypeError(`${what}: not ${padded ? 'canonical padded base64' : 'canonical unpadded base64url'}`)
  let end = text.length
  if (padded) {
    if (end % 4 !== 0) throw refused()
    while (end > text.length - 2 && text.charCodeAt(end - 1) === PAD) end--
  }
  if (end % 4 === 1) throw refused()
  const out = new Uint8Array((end * 3) >>> 2)
  let acc = 0
  let bits = 0
  let n = 0
  for (let i = 0; i < end; i++) {
    const code = text.charCodeAt(i)
    const value = code < 128 ? values[code]! : -1
    if (value < 0) break
    acc = (acc << 6) | value
    bits += 6
    if (bits >= 8) out[n++] = acc >>> (bits -= 8)
    acc &= (1 << bits) - 1
  }
  // A character outside the alphabet stopped the loop early. Leftover bits must be zero:
  // otherwise several texts would decode to the same bytes.
  if (n !== out.length || acc !== 0) {
    out.fill(0) // the text may have been a key: leave no half-decoded copy behind
    throw refused()
  }
  return out
}

/** Standard base64 with padding (RFC 4648 section 4), as AWS, Google Cloud, Vault and etcd use it. */
export function toBase64(bytes: Uint8Array): string {
  return encode(bytes, standard, true, 'toBase64')
}

/**
 * Bytes from standard base64 with padding. Strict: a length that is not a multiple of 4, a
 * missing or misplaced `=`, whitespace, any character outside the alphabet or nonzero leftover
 * bits throw a `TypeError` (which does not quote the text).
 */
export function fromBase64(text: string): Uint8Array<ArrayBuffer> {
  return decode(text, standard, true, 'fromBase64')
}

/** base64url without padding (RFC 4648 section 5), as WebAuthn, JOSE and the `kp1.` text form use it. */
export function toBase64Url(bytes: Uint8Array): string {
  return encode(bytes, urlSafe, false, 'toBase64Url')
}

/**
 * Bytes from base64url without padding. Strict: `=`, `+`, `/`, whitespace, a length of 4k+1 or
 * nonzero leftover bits throw a `TypeError` (which does not quote the text).
 */
export function fromBase64Url(text: string): Uint8Array<ArrayBuffer> {
  return decode(text, urlSafe, false, 'fromBase64Url')
}

/** Lower-case hex, two digits per byte. */
export function toHex(bytes: Uint8Array): string {
  return encode(bytes, hex, false, 'toHex')
}
