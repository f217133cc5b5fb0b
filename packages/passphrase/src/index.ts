/**
 * A root key from a passphrase: PBKDF2-SHA-256 (WebCrypto) derives an AES-256-GCM wrapping key,
 * non-extractable, that wraps the chain's KEKs.
 *
 * The salt and iteration count travel inside every wrapped KEK (in the store, or embedded in
 * the encrypted data), so nothing else has to be kept: the passphrase alone unlocks the chain.
 * One derivation per (salt, iterations) per process; new KEKs reuse the salt of the first KEK
 * unwrapped, so a reopened chain costs one derivation, not one per rotation.
 *
 * Wrapped KEK layout: 0x10 || iterations u32 BE || salt length u8 (16) || salt || iv (12) || AES-GCM(kek) + tag.
 */
import { RootKeyError, openSealedKek, sealNewKek, type RootKey } from '@kms-proxy/core'

/** OWASP Password Storage Cheat Sheet, PBKDF2-HMAC-SHA256. */
export const DEFAULT_ITERATIONS = 600_000
/** Below this a passphrase root is a toy; tests may use it. */
export const MIN_ITERATIONS = 1_000
/**
 * Above this an attacker who plants a wrapped KEK could make every unlock take minutes: a
 * wrapped KEK that asks for more is refused before any derivation.
 */
export const MAX_ITERATIONS = 10_000_000
export const SALT_BYTES = 16
const TAG = 0x10
const FIXED = 1 + 4 + 1 + SALT_BYTES

export interface PassphraseRootKeyOptions {
  passphrase: string | Uint8Array
  /** PBKDF2 iterations for new KEKs. Default 600,000; 1,000 to 10,000,000. */
  iterations?: number
  /** Salt for new KEKs (16 bytes). Default: the salt of the first KEK unwrapped, else random. */
  salt?: Uint8Array
}

export function passphraseRootKey(options: PassphraseRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { passphrase } = options
  let secret: Uint8Array<ArrayBuffer>
  if (typeof passphrase === 'string') secret = new TextEncoder().encode(passphrase)
  else if (passphrase instanceof Uint8Array) secret = new Uint8Array(passphrase)
  else throw new TypeError('passphrase: expected a string or a Uint8Array')
  if (secret.length === 0) throw new RangeError('passphrase: must not be empty')
  const iterations = options.iterations ?? DEFAULT_ITERATIONS
  checkIterations(iterations, RangeError)
  if (options.salt !== undefined && (!(options.salt instanceof Uint8Array) || options.salt.length !== SALT_BYTES)) {
    throw new RangeError(`salt: expected ${SALT_BYTES} bytes`)
  }

  const base = crypto.subtle.importKey('raw', secret, 'PBKDF2', false, ['deriveKey'])
  secret.fill(0) // importKey copied it
  base.catch(() => {})
  const derived = new Map<string, Promise<CryptoKey>>()
  let activeSalt: Uint8Array<ArrayBuffer> | undefined = options.salt ? new Uint8Array(options.salt) : undefined

  const wrappingKey = (salt: Uint8Array<ArrayBuffer>, rounds: number): Promise<CryptoKey> => {
    const cacheKey = `${rounds}:${hex(salt)}`
    let key = derived.get(cacheKey)
    if (!key) {
      key = base.then((b) =>
        crypto.subtle.deriveKey(
          { name: 'PBKDF2', hash: 'SHA-256', salt, iterations: rounds },
          b,
          { name: 'AES-GCM', length: 256 },
          false,
          ['wrapKey', 'unwrapKey'],
        ),
      )
      derived.set(cacheKey, key)
      key.catch(() => derived.delete(cacheKey))
    }
    return key
  }

  const rootKey = {
    kind: 'passphrase-pbkdf2',
    async newKek(aad: Uint8Array) {
      const salt = (activeSalt ??= crypto.getRandomValues(new Uint8Array(SALT_BYTES)))
      const tag = new Uint8Array(FIXED)
      tag[0] = TAG
      new DataView(tag.buffer).setUint32(1, iterations)
      tag[5] = SALT_BYTES
      tag.set(salt, 6)
      return sealNewKek(await wrappingKey(salt, iterations), aad, tag)
    },
    async unwrapKek(wrapped: Uint8Array, aad: Uint8Array) {
      if (!(wrapped instanceof Uint8Array) || wrapped.length <= FIXED || wrapped[0] !== TAG) {
        throw new RootKeyError('this KEK was not wrapped by a passphrase root key')
      }
      const rounds = new DataView(wrapped.buffer, wrapped.byteOffset, wrapped.byteLength).getUint32(1)
      checkIterations(rounds, RootKeyError)
      if (wrapped[5] !== SALT_BYTES) throw new RootKeyError('wrapped KEK has an unsupported salt length')
      const salt = new Uint8Array(wrapped.subarray(6, FIXED))
      try {
        const kek = await openSealedKek(await wrappingKey(salt, rounds), wrapped.subarray(FIXED), aad)
        activeSalt ??= salt
        return kek
      } catch (error) {
        if (error instanceof RootKeyError && /wrong length/.test(error.message)) throw error
        throw new RootKeyError('wrong passphrase, or the wrapped KEK was altered')
      }
    },
    toString: () => '[RootKey passphrase-pbkdf2]',
    toJSON: () => ({ kind: 'passphrase-pbkdf2', iterations }),
  }
  return rootKey
}

function checkIterations(n: number, Err: new (message: string) => Error): void {
  if (!Number.isInteger(n) || n < MIN_ITERATIONS || n > MAX_ITERATIONS) {
    throw new Err(`iterations: expected an integer from ${MIN_ITERATIONS} to ${MAX_ITERATIONS}`)
  }
}

function hex(bytes: Uint8Array): string {
  let out = ''
  for (const b of bytes) out += b.toString(16).padStart(2, '0')
  return out
}
