/**
 * The one place randomness comes from. `crypto.getRandomValues`, never `Math.random`.
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
