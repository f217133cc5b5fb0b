/**
 * A root key from a passphrase: a KDF derives an AES-256-GCM wrapping key, non-extractable, that
 * wraps the chain's KEKs. PBKDF2-SHA-256 runs in WebCrypto (the default, no dependency); scrypt
 * and Argon2id run in JavaScript through @noble/hashes, loaded only when chosen.
 *
 * The KDF, its parameters and the salt travel inside every wrapped KEK (in the store, or embedded
 * in the encrypted data), so the passphrase alone unlocks the chain. A wrapped KEK may come from
 * anyone, so what it may ask for is bounded before any derivation: only the configured KDF family
 * (or one in `acceptKdfs`), at most `maxCostFactor` times the configured work and memory, one
 * derivation at a time per root, and only keys that unwrapped something are kept (8 at most).
 *
 * Layout (docs/FORMAT.md, "Passphrase root key: wrapped KEK layout"):
 * tag || KDF parameters || salt length u8 (16) || salt || iv (12) || AES-GCM(kek) + tag
 *   0x10 PBKDF2-SHA-256: iterations u32
 *   0x11 scrypt:         log2(N) u8, r u8, p u8
 *   0x12 Argon2id:       t u8, m (KiB) u32, p u8
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { passphraseRootKey } from '@kms-proxy/passphrase'
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }) })
 * const encrypted = await chain.encrypt('notes')  // decryptable anywhere with the passphrase alone
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/passphrase
 */
import { RootKeyError, openSealedKek, sealKek, sealNewKek, toHex, type RootKey, type UnwrapKekOptions } from '@kms-proxy/core'
import {
  DEFAULT_MAX_COST_FACTOR,
  argon2idOptions,
  checkKdf,
  decodeKdf,
  encodeKdf,
  kdfFromOption,
  refusal,
  scryptOptions,
  type Kdf,
  type KdfName,
} from './internal/kdf.js'

export {
  DEFAULT_ITERATIONS,
  DEFAULT_SCRYPT,
  DEFAULT_ARGON2ID,
  MIN_ITERATIONS,
  MAX_ITERATIONS,
  MAX_KDF_MEMORY_BYTES,
  DEFAULT_MAX_COST_FACTOR,
} from './internal/kdf.js'

/** Salt length, bytes, in every wrapped KEK. */
export const SALT_BYTES = 16
// Derived wrapping keys kept per root (least recently used out), each only after it unwrapped a KEK.
const DERIVED_KEYS_KEPT = 8

/** A KDF and its parameters; omitted parameters take the family's defaults. */
export type KdfOptions =
  | {
      /** PBKDF2-SHA-256, in WebCrypto. */
      name: 'pbkdf2'
      /** @defaultValue 600,000 ({@link DEFAULT_ITERATIONS}) */
      iterations?: number
    }
  | {
      /** scrypt, through `@noble/hashes`. */
      name: 'scrypt'
      /**
       * CPU and memory cost, a power of 2.
       *
       * @defaultValue 2^17
       */
      N?: number
      /**
       * Block size.
       *
       * @defaultValue 8
       */
      r?: number
      /**
       * Parallelism.
       *
       * @defaultValue 1
       */
      p?: number
    }
  | {
      /** Argon2id, through `@noble/hashes`. */
      name: 'argon2id'
      /**
       * Passes.
       *
       * @defaultValue 2
       */
      t?: number
      /**
       * Memory in KiB.
       *
       * @defaultValue 19,456 (19 MiB)
       */
      m?: number
      /**
       * Parallelism.
       *
       * @defaultValue 1
       */
      p?: number
    }

/** Options of {@link passphraseRootKey}. */
export interface PassphraseRootKeyOptions {
  /** Copied; a `Uint8Array` copy is zeroed by the root (a string cannot be). */
  passphrase: string | Uint8Array
  /**
   * KDF for new KEKs, and the family (and the cost reference) a wrapped KEK must match to be
   * unwrapped.
   *
   * @defaultValue `'pbkdf2'` (PBKDF2-SHA-256, 600,000 iterations)
   */
  kdf?: KdfName | KdfOptions
  /**
   * PBKDF2 iterations for new KEKs (shorthand for kdf: { name: 'pbkdf2', iterations }).
   *
   * @defaultValue 600,000
   */
  iterations?: number
  /**
   * Salt for new KEKs (16 bytes).
   *
   * @defaultValue the salt of the first KEK unwrapped, else random
   */
  salt?: Uint8Array
  /**
   * More parameter sets whose wrapped KEKs this root unwraps (never used for new KEKs): a chain
   * written with another KDF, or with parameters more than `maxCostFactor` above the configured
   * ones. A family name means its defaults.
   *
   * @defaultValue none
   */
  acceptKdfs?: ReadonlyArray<KdfName | KdfOptions>
  /**
   * A wrapped KEK may ask for at most this many times the work and the memory of the configured
   * parameter set of its family (or of an `acceptKdfs` entry); more is refused with ERR_ROOT_KEY
   * before any derivation. At least 1.
   *
   * @defaultValue 4
   */
  maxCostFactor?: number
}

const WRAP_USAGES: KeyUsage[] = ['wrapKey', 'unwrapKey']
const WRAPPING_KEY = { name: 'AES-GCM', length: 256 } as const
const NOT_OURS = 'this KEK was not wrapped by a passphrase root key'

/** The passphrase sealed in WebCrypto, opened into a JavaScript buffer only for one derivation. */
interface Sealed {
  key: CryptoKey
  iv: Uint8Array<ArrayBuffer>
  box: ArrayBuffer
}

/**
 * Makes a passphrase root key. PBKDF2 keeps only a non-extractable PBKDF2 `CryptoKey`; scrypt and
 * Argon2id keep the passphrase encrypted under a non-extractable AES-GCM key, and open it into a
 * buffer that is zeroed after each derivation (README, "What stays in memory").
 *
 * One derivation per unlock (115 ms for PBKDF2 at 600,000 iterations on a 2-core VM), reused for
 * every KEK with the same salt; the KDF, its parameters and the salt travel in each wrapped KEK.
 * `wrapKek` (adding this root to a chain that has KEKs) seals under the key `newKek` uses, through
 * the same cache: 1,000 KEKs cost one derivation, none if the root already unwrapped the chain's.
 *
 * @throws TypeError - a passphrase that is not a string or bytes, or not well-formed UTF-16;
 *   (from `wrapKek`) a KEK that is not an extractable AES-GCM `CryptoKey`, before any derivation.
 * @throws RangeError - an empty passphrase, KDF parameters out of range, a salt that is not 16
 *   bytes, a `maxCostFactor` below 1.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from `unwrapKek`) `ERR_ROOT_KEY`: a wrong
 *   passphrase (the message says so), a KEK of another KDF family, or one that asks for more than
 *   `maxCostFactor` × the configured cost (refused before any derivation).
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { passphraseRootKey } from '@kms-proxy/passphrase'
 *
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }) })
 * const encrypted = await chain.encrypt('notes')  // decryptable anywhere with the passphrase alone
 * const argon = passphraseRootKey({ passphrase, kdf: 'argon2id' }) // 19 MiB, t = 2
 * ```
 */
export function passphraseRootKey(options: PassphraseRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { passphrase } = options
  let secret: Uint8Array<ArrayBuffer>
  if (typeof passphrase === 'string') {
    // An unpaired surrogate becomes U+FFFD in UTF-8: "a\uD800" and "a\uDFFF" would be one passphrase.
    if (/\p{Cs}/u.test(passphrase)) throw new TypeError('passphrase: not a well-formed string (it has an unpaired surrogate)')
    secret = new TextEncoder().encode(passphrase)
  }
  else if (passphrase instanceof Uint8Array) secret = new Uint8Array(passphrase)
  else throw new TypeError('passphrase: expected a string or a Uint8Array')
  if (secret.length === 0) throw new RangeError('passphrase: must not be empty')
  const kdf = kdfFromOption(options.kdf ?? 'pbkdf2', options.iterations, 'kdf')
  if (options.acceptKdfs !== undefined && !Array.isArray(options.acceptKdfs)) throw new TypeError('acceptKdfs: expected an array')
  const references: Kdf[] = [kdf, ...(options.acceptKdfs ?? []).map((k, i) => kdfFromOption(k, undefined, `acceptKdfs[${i}]`))]
  const factor = options.maxCostFactor ?? DEFAULT_MAX_COST_FACTOR
  if (typeof factor !== 'number' || !Number.isFinite(factor) || factor < 1) throw new RangeError('maxCostFactor: expected a number >= 1')
  if (options.salt !== undefined && (!(options.salt instanceof Uint8Array) || options.salt.length !== SALT_BYTES)) {
    throw new RangeError(`salt: expected ${SALT_BYTES} bytes`)
  }

  // Hold the passphrase only in the forms the accepted families need; the plain copy is zeroed
  // once WebCrypto has taken it (after the promises settle: a runtime that copied lazily would
  // otherwise import zeros).
  const families = new Set(references.map((r) => r.name))
  const base = families.has('pbkdf2') ? crypto.subtle.importKey('raw', secret, 'PBKDF2', false, ['deriveKey']) : undefined
  const sealed = families.has('scrypt') || families.has('argon2id') ? seal(secret) : undefined
  void Promise.allSettled([base, sealed]).then(() => secret.fill(0))
  base?.catch(() => {})
  sealed?.catch(() => {})

  async function derive(k: Kdf, salt: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
    if (k.name === 'pbkdf2') {
      if (!base) throw new RootKeyError('this root does not accept pbkdf2')
      return crypto.subtle.deriveKey({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations: k.iterations }, await base, WRAPPING_KEY, false, WRAP_USAGES)
    }
    if (!sealed) throw new RootKeyError(`this root does not accept ${k.name}`)
    const { key, iv, box } = await sealed
    const pass = new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, key, box))
    let bytes: Uint8Array<ArrayBuffer> | undefined
    try {
      if (k.name === 'scrypt') {
        const { scryptAsync } = await import('@noble/hashes/scrypt.js')
        bytes = (await scryptAsync(pass, salt, scryptOptions(k))) as Uint8Array<ArrayBuffer>
      } else {
        const { argon2idAsync } = await import('@noble/hashes/argon2.js')
        bytes = (await argon2idAsync(pass, salt, argon2idOptions(k))) as Uint8Array<ArrayBuffer>
      }
      return await crypto.subtle.importKey('raw', bytes, WRAPPING_KEY.name, false, WRAP_USAGES)
    } finally {
      pass.fill(0)
      bytes?.fill(0)
    }
  }

  // Derived keys: kept only once they unwrapped (or sealed) a KEK, at most DERIVED_KEYS_KEPT.
  // Derivations run one at a time (a planted KEK cannot start several), and identical requests
  // share one.
  const kept = new Map<string, CryptoKey>()
  const running = new Map<string, Promise<CryptoKey>>()
  let queue: Promise<unknown> = Promise.resolve()

  const keep = (id: string, key: CryptoKey) => {
    kept.delete(id)
    kept.set(id, key)
    if (kept.size > DERIVED_KEYS_KEPT) kept.delete(kept.keys().next().value!)
  }

  const wrappingKey = (k: Kdf, salt: Uint8Array<ArrayBuffer>): { id: string; key: Promise<CryptoKey> } => {
    const id = `${toHex(encodeKdf(k))}:${toHex(salt)}`
    const known = kept.get(id)
    if (known) {
      keep(id, known)
      return { id, key: Promise.resolve(known) }
    }
    let key = running.get(id)
    if (!key) {
      const pending = queue.then(() => derive(k, salt))
      queue = pending.catch(() => {})
      running.set(id, pending)
      void pending.catch(() => {}).then(() => running.delete(id))
      key = pending
    }
    return { id, key }
  }

  let activeSalt: Uint8Array<ArrayBuffer> | undefined = options.salt ? new Uint8Array(options.salt) : undefined
  const kind = `passphrase-${kdf.name}`

  // newKek and wrapKek seal under one key: the configured KDF, the salt of the first KEK
  // unwrapped (else the configured or a random one), through the same cache and queue as
  // unwrapKek, so a chain's KEKs and the ones added to it cost one derivation per salt.
  async function sealing<T>(seal: (key: CryptoKey, tag: Uint8Array) => Promise<T>): Promise<T> {
    const salt = (activeSalt ??= crypto.getRandomValues(new Uint8Array(SALT_BYTES)))
    const params = encodeKdf(kdf)
    const tag = new Uint8Array(params.length + 1 + SALT_BYTES)
    tag.set(params)
    tag[params.length] = SALT_BYTES
    tag.set(salt, params.length + 1)
    const { id, key } = wrappingKey(kdf, salt)
    const wrappingKeyNow = await key
    const sealed = await seal(wrappingKeyNow, tag)
    keep(id, wrappingKeyNow)
    return sealed
  }

  return {
    kind,
    newKek: (aad: Uint8Array) => sealing((key, tag) => sealNewKek(key, aad, tag)),
    async wrapKek(kek: CryptoKey, aad: Uint8Array) {
      // Checked before any derivation: a KEK that cannot be wrapped must not cost an unlock.
      checkWrappable(kek)
      return sealing((key, tag) => sealKek(key, kek, aad, tag))
    },
    async unwrapKek(wrapped: Uint8Array, aad: Uint8Array, unwrapOptions?: UnwrapKekOptions) {
      const decoded = wrapped instanceof Uint8Array ? decodeKdf(wrapped) : undefined
      if (!decoded) throw new RootKeyError(NOT_OURS)
      const { kdf: used, at } = decoded
      checkKdf(used, RootKeyError)
      const refused = refusal(used, references, factor)
      if (refused !== undefined) throw new RootKeyError(refused)
      if (wrapped[at] !== SALT_BYTES || wrapped.length <= at + 1 + SALT_BYTES) throw new RootKeyError('wrapped KEK has an unsupported salt length')
      const salt = new Uint8Array(wrapped.subarray(at + 1, at + 1 + SALT_BYTES))
      const { id, key } = wrappingKey(used, salt)
      const wrappingKeyNow = await key
      let kek: CryptoKey
      try {
        // extractable only when the chain re-wraps this KEK under another root (addRoot,
        // changeRoot): subtle.wrapKey refuses anything else. The bytes stay inside WebCrypto,
        // and the chain drops this handle once the other root has wrapped it.
        kek = await openSealedKek(wrappingKeyNow, wrapped.subarray(at + 1 + SALT_BYTES), aad, unwrapOptions?.extractable === true)
      } catch {
        throw new RootKeyError('wrong passphrase, or the wrapped KEK was altered')
      }
      keep(id, wrappingKeyNow)
      activeSalt ??= salt
      return kek
    },
    toString: () => `[RootKey ${kind}]`,
    toJSON: () => ({ kind, kdf }),
  } as RootKey
}

/**
 * What wrapKek can wrap: an extractable AES-GCM KEK, as the chain hands it over (unwrapKek with
 * `{ extractable: true }` on another root). Anything else is the caller's mistake (TypeError).
 */
function checkWrappable(kek: unknown): asserts kek is CryptoKey {
  if (!(kek instanceof CryptoKey)) throw new TypeError('kek: expected a CryptoKey')
  if ((kek.algorithm as { name?: string }).name !== 'AES-GCM') throw new TypeError('kek: expected an AES-GCM key')
  if (!kek.extractable) throw new TypeError('kek: expected an extractable key (unwrapKek with { extractable: true })')
}

/** Encrypts the passphrase under a fresh non-extractable key; the caller zeroes its copy after. */
async function seal(secret: Uint8Array<ArrayBuffer>): Promise<Sealed> {
  const key = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt'])
  // One encryption ever under this key, so a random IV cannot repeat.
  const iv = crypto.getRandomValues(new Uint8Array(12))
  return { key, iv, box: await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, key, secret) }
}
