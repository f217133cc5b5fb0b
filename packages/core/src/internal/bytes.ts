/** Bytes backed by a plain ArrayBuffer: what WebCrypto's BufferSource accepts. */
export type Bytes = Uint8Array<ArrayBuffer>

/** Typed view of caller input; a SharedArrayBuffer view is refused by WebCrypto itself at run time. */
export function asBytes(view: Uint8Array): Bytes {
  return view as Bytes
}

const encoder = new TextEncoder()
// ignoreBOM: a leading U+FEFF is text like any other; the default would drop it, and
// encryptText('\uFEFFA') would come back as 'A'.
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
// With the u flag a surrogate pair is one code point, so this matches unpaired surrogates only.
export const LONE_SURROGATE = /\p{Cs}/u

/**
 * UTF-8 of a well-formed string. A string with an unpaired surrogate is refused: TextEncoder
 * would turn it into U+FFFD, so "t\uD800", "t\uDFFF" and "t\uFFFD" would become the same bytes
 * (the same chain, the same associated data) and would not round-trip.
 */
export function utf8(text: string, what = 'string'): Bytes {
  if (LONE_SURROGATE.test(text)) throw new TypeError(`${what}: not a well-formed string (it has an unpaired surrogate)`)
  return encoder.encode(text)
}

/** Text from UTF-8, exactly: a byte order mark is kept, malformed bytes throw. */
export function fromUtf8(bytes: Uint8Array): string {
  return decoder.decode(bytes)
}

export function concat(...parts: Uint8Array[]): Bytes {
  return join(parts)
}

/** The parts one after another, from an array: any number of parts (no spread-argument limit). */
export function join(parts: readonly Uint8Array[]): Bytes {
  let length = 0
  for (const p of parts) length += p.length
  const out = new Uint8Array(length)
  let offset = 0
  for (const p of parts) {
    out.set(p, offset)
    offset += p.length
  }
  return out
}

export function u32be(value: number): Bytes {
  const out = new Uint8Array(4)
  new DataView(out.buffer).setUint32(0, value >>> 0)
  return out
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!
  return diff === 0
}

/** Byte string as a Map key (latin1 code units): exact, and cheaper than base64. */
export function bytesKey(bytes: Uint8Array): string {
  let out = ''
  for (let i = 0; i < bytes.length; i += 4096) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + 4096) as unknown as number[])
  }
  return out
}

/**
 * AES-GCM parameters typed as AesGcmParams: Deno's declarations of wrapKey and unwrapKey do not
 * list AesGcmParams, so the same object literal written inline fails its type check.
 */
export function gcmParams(iv: Bytes, additionalData: Bytes): AesGcmParams {
  return { name: 'AES-GCM', iv, additionalData }
}
