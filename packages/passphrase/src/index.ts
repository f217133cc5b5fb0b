/**
 * A root key from a passphrase: a KDF derives an AES-256-GCM wrapping key, non-extractable, that
 * wraps the chain's KEKs. PBKDF2-SHA-256 runs in WebCrypto (the default, no dependency); scrypt
 * and Argon2id run in JavaScript through @noble/hashes, loaded only when chosen.
 *
 * The KDF, its parameters and the salt travel inside every wrapped KEK (in the store, or embedded
 * in the encrypted data), so the passphrase alone unlocks the chain. One derivation per (KDF,
 * parameters, salt) per process; new KEKs reuse the salt of the first KEK unwrapped, so a
 * reopened chain costs one derivation, not one per rotation.
 *
 * Wrapped KEK: tag || KDF parameters || salt length u8 (16) || salt || iv (12) || AES-GCM(kek) + tag
 *   0x10 PBKDF2-SHA-256: iterations u32
 *   0x11 scrypt:         log2(N) u8, r u8, p u8
 *   0x12 Argon2id:       t u8, m (KiB) u32, p u8
 */
import { RootKeyError, openSealedKek, sealNewKek, type RootKey } from '@kms-proxy/core'

/** OWASP Password Storage Cheat Sheet figures. */
export const DEFAULT_ITERATIONS = 600_000
export const DEFAULT_SCRYPT = { N: 2 ** 17, r: 8, p: 1 } as const
export const DEFAULT_ARGON2ID = { t: 2, m: 19_456, p: 1 } as const
/** Below this a PBKDF2 root is a toy; tests may use it. */
export const MIN_ITERATIONS = 1_000
/**
 * Above these an attacker who plants a wrapped KEK could make every unlock take minutes or
 * exhaust memory: a wrapped KEK that asks for more is refused before any derivation.
 */
export const MAX_ITERATIONS = 10_000_000
const MAX_KDF_MEMORY_BYTES = 2 ** 30
export const SALT_BYTES = 16

export type KdfOptions =
  | { name: 'pbkdf2'; iterations?: number }
  | { name: 'scrypt'; N?: number; r?: number; p?: number }
  | { name: 'argon2id'; t?: number; m?: number; p?: number }

export interface PassphraseRootKeyOptions {
  passphrase: string | Uint8Array
  /** KDF for new KEKs. Default PBKDF2-SHA-256. Unwrapping follows what each wrapped KEK says. */
  kdf?: KdfOptions['name'] | KdfOptions
  /** PBKDF2 iterations for new KEKs (shorthand for kdf: { name: 'pbkdf2', iterations }). Default 600,000. */
  iterations?: number
  /** Salt for new KEKs (16 bytes). Default: the salt of the first KEK unwrapped, else random. */
  salt?: Uint8Array
}

type Kdf =
  | { name: 'pbkdf2'; iterations: number }
  | { name: 'scrypt'; N: number; r: number; p: number }
  | { name: 'argon2id'; t: number; m: number; p: number }

const TAGS = { pbkdf2: 0x10, scrypt: 0x11, argon2id: 0x12 } as const

function checkKdf(kdf: Kdf, Err: new (message: string) => Error): Kdf {
  const int = (v: number, lo: number, hi: number, what: string) => {
    if (!Number.isInteger(v) || v < lo || v > hi) throw new Err(`${what}: expected an integer from ${lo} to ${hi}`)
  }
  if (kdf.name === 'pbkdf2') int(kdf.iterations, MIN_ITERATIONS, MAX_ITERATIONS, 'iterations')
  else if (kdf.name === 'scrypt') {
    int(Math.log2(kdf.N), 10, 20, 'scrypt N (a power of two, log2)')
    int(kdf.r, 1, 32, 'scrypt r')
    int(kdf.p, 1, 16, 'scrypt p')
    if (128 * kdf.N * kdf.r > MAX_KDF_MEMORY_BYTES) throw new Err('scrypt: N * r asks for more than 1 GiB')
  } else if (kdf.name === 'argon2id') {
    int(kdf.t, 1, 10, 'argon2id t')
    int(kdf.m, 8 * kdf.p, MAX_KDF_MEMORY_BYTES / 1024, 'argon2id m (KiB)')
    int(kdf.p, 1, 16, 'argon2id p')
  } else throw new Err('kdf: expected pbkdf2, scrypt or argon2id')
  return kdf
}

function kdfFromOptions(options: PassphraseRootKeyOptions): Kdf {
  const k = typeof options.kdf === 'string' ? { name: options.kdf } : (options.kdf ?? { name: 'pbkdf2' })
  if (typeof k !== 'object' || k === null) throw new TypeError('kdf: expected a KDF name or options')
  switch (k.name) {
    case 'pbkdf2':
      return checkKdf({ name: 'pbkdf2', iterations: (k as { iterations?: number }).iterations ?? options.iterations ?? DEFAULT_ITERATIONS }, RangeError)
    case 'scrypt':
      return checkKdf({ ...DEFAULT_SCRYPT, ...(k as object), name: 'scrypt' } as Kdf, RangeError)
    case 'argon2id':
      return checkKdf({ ...DEFAULT_ARGON2ID, ...(k as object), name: 'argon2id' } as Kdf, RangeError)
    default:
      throw new RangeError('kdf: expected pbkdf2, scrypt or argon2id')
  }
}

function encodeKdf(kdf: Kdf): Uint8Array {
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

/** Reads the KDF from a wrapped KEK; returns it and where its salt-length byte is. */
function decodeKdf(w: Uint8Array): { kdf: Kdf; at: number } {
  const view = new DataView(w.buffer, w.byteOffset, w.byteLength)
  if (w[0] === TAGS.pbkdf2 && w.length > 5) return { kdf: checkKdf({ name: 'pbkdf2', iterations: view.getUint32(1) }, RootKeyError), at: 5 }
  if (w[0] === TAGS.scrypt && w.length > 4) return { kdf: checkKdf({ name: 'scrypt', N: 2 ** w[1]!, r: w[2]!, p: w[3]! }, RootKeyError), at: 4 }
  if (w[0] === TAGS.argon2id && w.length > 7) return { kdf: checkKdf({ name: 'argon2id', t: w[1]!, m: view.getUint32(2), p: w[6]! }, RootKeyError), at: 7 }
  throw new RootKeyError('this KEK was not wrapped by a passphrase root key')
}

const WRAP_USAGES: KeyUsage[] = ['wrapKey', 'unwrapKey']

export function passphraseRootKey(options: PassphraseRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { passphrase } = options
  let secret: Uint8Array<ArrayBuffer>
  if (typeof passphrase === 'string') secret = new TextEncoder().encode(passphrase)
  else if (passphrase instanceof Uint8Array) secret = new Uint8Array(passphrase)
  else throw new TypeError('passphrase: expected a string or a Uint8Array')
  if (secret.length === 0) throw new RangeError('passphrase: must not be empty')
  const kdf = kdfFromOptions(options)
  if (options.salt !== undefined && (!(options.salt instanceof Uint8Array) || options.salt.length !== SALT_BYTES)) {
    throw new RangeError(`salt: expected ${SALT_BYTES} bytes`)
  }

  // PBKDF2 runs inside WebCrypto on an imported base key; scrypt and Argon2id need the bytes,
  // so this root keeps its own copy of the passphrase (never in errors, toString or toJSON).
  const base = crypto.subtle.importKey('raw', secret, 'PBKDF2', false, ['deriveKey'])
  base.catch(() => {})
  const derived = new Map<string, Promise<CryptoKey>>()
  let activeSalt: Uint8Array<ArrayBuffer> | undefined = options.salt ? new Uint8Array(options.salt) : undefined

  async function derive(k: Kdf, salt: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
    if (k.name === 'pbkdf2') {
      return crypto.subtle.deriveKey(
        { name: 'PBKDF2', hash: 'SHA-256', salt, iterations: k.iterations },
        await base,
        { name: 'AES-GCM', length: 256 },
        false,
        WRAP_USAGES,
      )
    }
    let bytes: Uint8Array<ArrayBuffer>
    if (k.name === 'scrypt') {
      const { scryptAsync } = await import('@noble/hashes/scrypt.js')
      bytes = (await scryptAsync(secret, salt, { N: k.N, r: k.r, p: k.p, dkLen: 32, maxmem: MAX_KDF_MEMORY_BYTES + 1024 })) as Uint8Array<ArrayBuffer>
    } else {
      const { argon2idAsync } = await import('@noble/hashes/argon2.js')
      bytes = (await argon2idAsync(secret, salt, { t: k.t, m: k.m, p: k.p, dkLen: 32 })) as Uint8Array<ArrayBuffer>
    }
    try {
      return await crypto.subtle.importKey('raw', bytes, 'AES-GCM', false, WRAP_USAGES)
    } finally {
      bytes.fill(0)
    }
  }

  const wrappingKey = (k: Kdf, salt: Uint8Array<ArrayBuffer>): Promise<CryptoKey> => {
    const cacheKey = `${hex(encodeKdf(k))}:${hex(salt)}`
    let key = derived.get(cacheKey)
    if (!key) {
      key = derive(k, salt)
      derived.set(cacheKey, key)
      key.catch(() => derived.delete(cacheKey))
    }
    return key
  }

  const kind = `passphrase-${kdf.name}`
  return {
    kind,
    async newKek(aad: Uint8Array) {
      const salt = (activeSalt ??= crypto.getRandomValues(new Uint8Array(SALT_BYTES)))
      const params = encodeKdf(kdf)
      const tag = new Uint8Array(params.length + 1 + SALT_BYTES)
      tag.set(params)
      tag[params.length] = SALT_BYTES
      tag.set(salt, params.length + 1)
      return sealNewKek(await wrappingKey(kdf, salt), aad, tag)
    },
    async unwrapKek(wrapped: Uint8Array, aad: Uint8Array) {
      if (!(wrapped instanceof Uint8Array)) throw new RootKeyError('this KEK was not wrapped by a passphrase root key')
      const { kdf: used, at } = decodeKdf(wrapped)
      if (wrapped[at] !== SALT_BYTES || wrapped.length <= at + 1 + SALT_BYTES) throw new RootKeyError('wrapped KEK has an unsupported salt length')
      const salt = new Uint8Array(wrapped.subarray(at + 1, at + 1 + SALT_BYTES))
      const key = await wrappingKey(used, salt)
      try {
        const kek = await openSealedKek(key, wrapped.subarray(at + 1 + SALT_BYTES), aad)
        activeSalt ??= salt
        return kek
      } catch {
        throw new RootKeyError('wrong passphrase, or the wrapped KEK was altered')
      }
    },
    toString: () => `[RootKey ${kind}]`,
    toJSON: () => ({ kind, kdf }),
  } as RootKey
}

function hex(bytes: Uint8Array): string {
  let out = ''
  for (const b of bytes) out += b.toString(16).padStart(2, '0')
  return out
}
