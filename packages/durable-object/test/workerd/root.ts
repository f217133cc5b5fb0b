/** The root key of every chain in these tests (a test key, not a secret). */
export const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 11 + 7) & 0xff)
