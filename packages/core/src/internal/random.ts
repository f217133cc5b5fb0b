/**
 * The one place randomness comes from: `crypto.getRandomValues`, the platform CSPRNG, only.
 * The override exists only for the known-answer vectors; it is not exported from the package.
 */
let override: ((n: number) => Uint8Array) | undefined

export function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  if (override !== undefined) {
    const bytes = override(n)
    if (bytes.length !== n) throw new Error(`random override returned ${bytes.length} bytes, wanted ${n}`)
    return bytes as Uint8Array<ArrayBuffer>
  }
  return crypto.getRandomValues(new Uint8Array(n))
}

const IV_POOL_BYTES = 4096
let ivPool: Uint8Array<ArrayBuffer> | undefined
let ivOffset = IV_POOL_BYTES

/**
 * Random bytes for public values (IVs): drawn from a buffer refilled 4 KiB at a time, because one
 * `getRandomValues` call costs about as much as a small AES-GCM call in Node. Never used for key
 * bytes: DEK bytes are drawn (randomBytes) by the function that imports and wraps them, and
 * zeroed before it yields, so no future key ever waits in a buffer.
 */
export function randomPublicBytes(n: number): Uint8Array<ArrayBuffer> {
  if (override !== undefined || n > 64) return randomBytes(n)
  if (ivPool === undefined || ivOffset + n > IV_POOL_BYTES) {
    ivPool = crypto.getRandomValues(new Uint8Array(IV_POOL_BYTES))
    ivOffset = 0
  }
  const out = ivPool.slice(ivOffset, ivOffset + n)
  ivOffset += n
  return out
}

/** A random u32 in [1, 2^32 - 1]: KEK ids. 0 is reserved for "none". */
export function randomU32(): number {
  for (;;) {
    const b = randomBytes(4)
    const v = ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0
    if (v !== 0) return v
  }
}

/** Test-only: make randomness deterministic. Pass `undefined` to restore `getRandomValues`. */
export function _setRandomSourceForVectors(source: ((n: number) => Uint8Array) | undefined): void {
  override = source
}
