/**
 * KDF parameter sets: their checks, their bytes in a wrapped KEK, and what a set costs. Pure code,
 * no crypto, so that what a wrapped KEK may ask of this process is decided before any derivation.
 */

/** PBKDF2-SHA-256 iterations for new KEKs by default: OWASP Password Storage Cheat Sheet's 600,000. */
export const DEFAULT_ITERATIONS = 600_000
/** scrypt parameters with `kdf: 'scrypt'` (OWASP): N = 2^17, r = 8, p = 1, 128 MiB. */
export const DEFAULT_SCRYPT = {
  /** CPU and memory cost. */
  N: 2 ** 17,
  /** Block size. */
  r: 8,
  /** Parallelism. */
  p: 1,
} as const
/** Argon2id parameters with `kdf: 'argon2id'` (OWASP): m = 19 MiB (in KiB), t = 2, p = 1. */
export const DEFAULT_ARGON2ID = {
  /** Passes. */
  t: 2,
  /** Memory in KiB. */
  m: 19_456,
  /** Parallelism. */
  p: 1,
} as const
/** Fewest PBKDF2 iterations accepted, configured or read: below this a root is a toy, which tests may use. */
export const MIN_ITERATIONS = 1_000
/** Most PBKDF2 iterations accepted anywhere, whatever `maxCostFactor` says. */
export const MAX_ITERATIONS = 10_000_000
/** Most memory (bytes) a scrypt or Argon2id parameter set may need, counted as @noble/hashes counts it. */
export const MAX_KDF_MEMORY_BYTES = 2 ** 30
/**
 * Default `maxCostFactor`: a wrapped KEK may ask for at most 4 times the work and memory of the
 * configured unlock. Room for parameters raised since (OWASP's PBKDF2 figure went from 310,000 to
 * 600,000, under 2x) and for r / p traded against N, while a planted KEK costs at most 4 unlocks.
 */
export const DEFAULT_MAX_COST_FACTOR = 4

export type KdfName = 'pbkdf2' | 'scrypt' | 'argon2id'

export type Kdf =
  | { name: 'pbkdf2'; iterations: number }
  | { name: 'scrypt'; N: number; r: number; p: number }
  | { name: 'argon2id'; t: number; m: number; p: number }

export const TAGS = { pbkdf2: 0x10, scrypt: 0x11, argon2id: 0x12 } as const

/**
 * What a parameter set costs, in units comparable within one family only: PBKDF2 iterations;
 * scrypt N·r·p (ROMix runs 2·N BlockMix of r 128-byte chunks per lane); Argon2id t·m 1 KiB block
 * compressions (the p lanes share the m blocks, so p adds no work: @noble/hashes runs them one
 * after another). Memory is what @noble/hashes allocates: scrypt 128·r·(N + p + 1) bytes (its own
 * `maxmem` formula, so a set accepted here is never refused by it), Argon2id m KiB.
 */
export function kdfCost(k: Kdf): { work: number; memoryBytes: number } {
  if (k.name === 'pbkdf2') return { work: k.iterations, memoryBytes: 0 }
  if (k.name === 'scrypt') return { work: k.N * k.r * k.p, memoryBytes: 128 * k.r * (k.N + k.p + 1) }
  return { work: k.t * k.m, memoryBytes: 1024 * k.m }
}

/** Checks a parameter set against the absolute limits; throws `Err` naming the parameter. */
export function checkKdf(kdf: Kdf, Err: new (message: string) => Error): Kdf {
  const int = (v: number, lo: number, hi: number, what: string) => {
    if (!Number.isInteger(v) || v < lo || v > hi) throw new Err(`${what}: expected an integer from ${lo} to ${hi}`)
  }
  if (kdf.name === 'pbkdf2') int(kdf.iterations, MIN_ITERATIONS, MAX_ITERATIONS, 'iterations')
  else if (kdf.name === 'scrypt') {
    int(Math.log2(kdf.N), 10, 20, 'scrypt N (a power of two, log2)')
    int(kdf.r, 1, 32, 'scrypt r')
    int(kdf.p, 1, 16, 'scrypt p')
    if (kdfCost(kdf).memoryBytes > MAX_KDF_MEMORY_BYTES) throw new Err('scrypt: 128 * r * (N + p + 1) is more than 1 GiB')
  } else if (kdf.name === 'argon2id') {
    int(kdf.t, 1, 10, 'argon2id t')
    int(kdf.p, 1, 16, 'argon2id p')
    int(kdf.m, 8 * kdf.p, MAX_KDF_MEMORY_BYTES / 1024, 'argon2id m (KiB)')
  } else throw new Err('kdf: expected pbkdf2, scrypt or argon2id')
  return kdf
}

/** A parameter set from options: a family name (its defaults) or an object (defaults filled in). */
export function kdfFromOption(option: unknown, iterations: number | undefined, what: string): Kdf {
  const k = typeof option === 'string' ? { name: option } : option
  if (typeof k !== 'object' || k === null) throw new TypeError(`${what}: expected a KDF name or options`)
  switch ((k as { name?: unknown }).name) {
    case 'pbkdf2':
      return checkKdf({ name: 'pbkdf2', iterations: (k as { iterations?: number }).iterations ?? iterations ?? DEFAULT_ITERATIONS }, RangeError)
    case 'scrypt':
      return checkKdf({ ...DEFAULT_SCRYPT, ...(k as object), name: 'scrypt' } as Kdf, RangeError)
    case 'argon2id':
      return checkKdf({ ...DEFAULT_ARGON2ID, ...(k as object), name: 'argon2id' } as Kdf, RangeError)
    default:
      throw new RangeError(`${what}: expected pbkdf2, scrypt or argon2id`)
  }
}

export function encodeKdf(kdf: Kdf): Uint8Array {
  if (kdf.name === 'pbkdf2') {
    const out = new Uint8Array(5)
    out[0] = TAGS.pbkdf2
    new DataView(out.buffer).setUint32(1, kdf.iterations)
    return out
  }
  if (kdf.name === 'scrypt') return Uint8Array.of(TAGS.scrypt, Math.log2(kdf.N), kdf.r, kdf.p)
  const out = new Uint8Array(7)
  out[0] = TAGS.argon2id
  out[1] = kdf.t
  new DataView(out.buffer).setUint32(2, kdf.m)
  out[6] = kdf.p
  return out
}

/**
 * Reads the KDF from a wrapped KEK; returns it and where its salt-length byte is, or undefined
 * if the bytes are not a passphrase root's layout. Limits are checked by the caller.
 */
export function decodeKdf(w: Uint8Array): { kdf: Kdf; at: number } | undefined {
  const view = new DataView(w.buffer, w.byteOffset, w.byteLength)
  if (w[0] === TAGS.pbkdf2 && w.length > 5) return { kdf: { name: 'pbkdf2', iterations: view.getUint32(1) }, at: 5 }
  if (w[0] === TAGS.scrypt && w.length > 4) return { kdf: { name: 'scrypt', N: 2 ** w[1]!, r: w[2]!, p: w[3]! }, at: 4 }
  if (w[0] === TAGS.argon2id && w.length > 7) return { kdf: { name: 'argon2id', t: w[1]!, m: view.getUint32(2), p: w[6]! }, at: 7 }
  return undefined
}

export function describeKdf(k: Kdf): string {
  const n = (v: number) => v.toLocaleString('en')
  if (k.name === 'pbkdf2') return `PBKDF2 with ${n(k.iterations)} iterations`
  if (k.name === 'scrypt') return `scrypt N=2^${Math.log2(k.N)} r=${k.r} p=${k.p}`
  return `Argon2id t=${k.t} m=${n(k.m)} KiB p=${k.p}`
}

/**
 * Why a wrapped KEK's parameter set is refused, or undefined if it is admitted: its family must be
 * one of `references` (the configured set and the accepted ones), and its work and memory at most
 * `factor` times those of a reference of the same family. The message names parameters only.
 */
export function refusal(k: Kdf, references: readonly Kdf[], factor: number): string | undefined {
  const same = references.filter((r) => r.name === k.name)
  if (same.length === 0) {
    return `the wrapped KEK uses ${describeKdf(k)}: ${k.name} is not accepted by this root (configured: ${references[0]!.name}; list it in acceptKdfs to read it)`
  }
  const cost = kdfCost(k)
  const admitted = same.some((r) => {
    const ref = kdfCost(r)
    return cost.work <= factor * ref.work && cost.memoryBytes <= factor * ref.memoryBytes
  })
  if (admitted) return undefined
  return `the wrapped KEK asks for ${describeKdf(k)}, more than ${factor} times the configured work or memory (${same.map(describeKdf).join(', ')}); configure its parameters, or raise maxCostFactor`
}

/** Options for @noble/hashes' scrypt: `maxmem` is exactly what it will count, so it never refuses an admitted set. */
export function scryptOptions(k: Extract<Kdf, { name: 'scrypt' }>) {
  return { N: k.N, r: k.r, p: k.p, dkLen: 32, maxmem: kdfCost(k).memoryBytes }
}

/** Options for @noble/hashes' Argon2id; it allocates at most m KiB (m rounded down to a multiple of 4·p). */
export function argon2idOptions(k: Extract<Kdf, { name: 'argon2id' }>) {
  return { t: k.t, m: k.m, p: k.p, dkLen: 32, maxmem: kdfCost(k).memoryBytes }
}
