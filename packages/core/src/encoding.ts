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
const URL_SAFE = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const PAD = 61 // '='

interface Alphabet {
  readonly codes: Uint8Array
  readonly values: Int8Array
}

function alphabet(chars: string): Alphabet {
  const codes = new Uint8Array(64)
  const values = new Int8Array(128).fill(-1)
  for (let i = 0; i < 64; i++) {
    codes[i] = chars.charCodeAt(i)
    values[codes[i]!] = i
  }
  return { codes, values }
}

const standard = alphabet(STANDARD)
const urlSafe = alphabet(URL_SAFE)
// Every character written is ASCII, so UTF-8 decoding turns the codes into the string in one
// native call: several times faster than building it from characters.
const ascii = new TextDecoder()

/** The string of the ASCII codes in `out`, which is then zeroed: they may spell a key. */
function textOf(out: Uint8Array): string {
  try {
    return ascii.decode(out)
  } finally {
    out.fill(0)
  }
}

function encode(bytes: Uint8Array, { codes }: Alphabet, pad: boolean, what: string): string {
  if (!(bytes instanceof Uint8Array)) throw new TypeError(`${what}: expected a Uint8Array`)
  const rest = bytes.length % 3
  const out = new Uint8Array(Math.floor(bytes.length / 3) * 4 + (rest === 0 ? 0 : pad ? 4 : rest + 1))
  let n = 0
  let i = 0
  for (const whole = bytes.length - rest; i < whole; i += 3) {
    const v = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!
    out[n++] = codes[v >>> 18]!
    out[n++] = codes[(v >>> 12) & 63]!
    out[n++] = codes[(v >>> 6) & 63]!
    out[n++] = codes[v & 63]!
  }
  if (rest > 0) {
    const v = (bytes[i]! << 16) | (rest === 2 ? bytes[i + 1]! << 8 : 0)
    out[n++] = codes[v >>> 18]!
    out[n++] = codes[(v >>> 12) & 63]!
    if (rest === 2) out[n++] = codes[(v >>> 6) & 63]!
    else if (pad) out[n++] = PAD
    if (pad) out[n++] = PAD
  }
  return textOf(out)
}

function decode(text: string, { values }: Alphabet, padded: boolean, what: string): Uint8Array<ArrayBuffer> {
  if (typeof text !== 'string') throw new TypeError(`${what}: expected a string`)
  const refused = () => new TypeError(`${what}: not ${padded ? 'canonical padded base64' : 'canonical unpadded base64url'}`)
  let end = text.length
  if (padded) {
    if (end % 4 !== 0) throw refused()
    if (end > 0 && text.charCodeAt(end - 1) === PAD) end -= text.charCodeAt(end - 2) === PAD ? 2 : 1
  }
  if (end % 4 === 1) throw refused()
  const value = (at: number): number => {
    const code = text.charCodeAt(at)
    return code < 128 ? values[code]! : -1
  }
  const out = new Uint8Array(Math.floor((end * 3) / 4))
  let o = 0
  let i = 0
  try {
    for (; i + 4 <= end; i += 4) {
      const a = value(i)
      const b = value(i + 1)
      const c = value(i + 2)
      const d = value(i + 3)
      if ((a | b | c | d) < 0) throw refused()
      const v = (a << 18) | (b << 12) | (c << 6) | d
      out[o++] = v >>> 16
      out[o++] = (v >>> 8) & 255
      out[o++] = v & 255
    }
    if (i < end) {
      const a = value(i)
      const b = value(i + 1)
      const c = i + 2 < end ? value(i + 2) : 0
      // Leftover bits must be zero: otherwise several texts would decode to the same bytes.
      if ((a | b | c) < 0 || (i + 2 < end ? c & 3 : b & 15) !== 0) throw refused()
      const v = (a << 18) | (b << 12) | (c << 6)
      out[o++] = v >>> 16
      if (i + 2 < end) out[o++] = (v >>> 8) & 255
    }
  } catch (error) {
    out.fill(0) // the text may have been a key: leave no half-decoded copy behind
    throw error
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

const HEX_DIGITS = new TextEncoder().encode('0123456789abcdef')

/** Lower-case hex, two digits per byte. */
export function toHex(bytes: Uint8Array): string {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('toHex: expected a Uint8Array')
  const out = new Uint8Array(bytes.length * 2)
  for (let i = 0; i < bytes.length; i++) {
    out[2 * i] = HEX_DIGITS[bytes[i]! >>> 4]!
    out[2 * i + 1] = HEX_DIGITS[bytes[i]! & 15]!
  }
  return textOf(out)
}
