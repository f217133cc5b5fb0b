/**
 * Root keys: what wraps KEKs. The chain asks a root key for a new KEK at rotation and to unwrap
 * a stored KEK once per process; these calls are the cost the library exists to cut.
 */
import { RootKeyError } from './errors.js'
import { asBytes, concat, gcmParams } from './internal/bytes.js'
import { randomBytes } from './internal/random.js'

/** What {@link RootKey.newKek} returns: a new KEK and its wrapped form. */
export interface NewKek {
  /** The KEK, non-extractable, usages encrypt / wrapKey / unwrapKey. */
  kek: CryptoKey
  /** The KEK wrapped by the root key, bound to the AAD; this is what the store keeps. */
  wrapped: Uint8Array
}

/**
 * What wraps KEKs: the costly root of trust the chain asks rarely (once per rotation, once per
 * KEK per process). Implementations reject with a {@link RootKeyError} (`ERR_ROOT_KEY`; set
 * `retryable` when the root may answer later, such as a KMS that is down) and never put key
 * bytes, passphrases or tokens in an error. A new root key passes `describeRootKey` from
 * `@kms-proxy/testkit`.
 *
 * @example
 * ```ts
 * // A root key that wraps KEKs under a WebCrypto AES-GCM key you hold elsewhere:
 * const TAG = new Uint8Array([0x70])
 * const myRootKey: RootKey = {
 *   kind: 'my-root',
 *   newKek: async (aad) => sealNewKek(await wrappingKey(), aad, TAG),
 *   unwrapKek: async (wrapped, aad) => {
 *     if (wrapped[0] !== TAG[0]) throw new RootKeyError('not wrapped by my-root')
 *     return openSealedKek(await wrappingKey(), wrapped.subarray(1), aad)
 *   },
 * }
 * ```
 */
export interface RootKey {
  /** Short, stable name of the kind of root ("aes", "passphrase-pbkdf2", "aws-kms"), kept in KEK records. */
  readonly kind: string
  /**
   * Makes a new KEK under this root and returns it with its wrapped form, bound to `aad`.
   * A WebCrypto root generates the KEK inside WebCrypto; a byte-oriented root (a KMS's
   * GenerateDataKey) imports the returned bytes as non-extractable and zeroes them.
   */
  newKek(aad: Uint8Array): Promise<NewKek>
  /**
   * Unwraps a KEK that this root wrapped with the same `aad`. Returns a non-extractable key,
   * unless `options.extractable`: the chain asks for that only while it re-wraps the KEK under
   * another root (`addRoot`, `changeRoot`), hands the handle to that root's `wrapKek` and drops
   * it. The KEK's bytes stay inside WebCrypto either way. A root that cannot return an
   * extractable KEK may ignore the option: the chain then cannot re-wrap from this root, and says so.
   */
  unwrapKek(wrapped: Uint8Array, aad: Uint8Array, options?: UnwrapKekOptions): Promise<CryptoKey>
  /**
   * Wraps an existing KEK under this root, bound to `aad`, in the form `unwrapKek` reads. The
   * chain calls it to add this root to a chain that has KEKs already (`addRoot`, `changeRoot`),
   * and, in a chain of several roots, to wrap each new KEK under every root. `kek` is extractable
   * only so that `crypto.subtle.wrapKey` accepts it: wrap it inside WebCrypto, never export it.
   * A byte-oriented root (a KMS) wraps it under a data key it returns (envelope), so that KEK
   * bytes never reach JavaScript. Optional: a root without it can be a chain's only root.
   */
  wrapKek?(kek: CryptoKey, aad: Uint8Array): Promise<Uint8Array>
}

/** Options of {@link RootKey.unwrapKek}. */
export interface UnwrapKekOptions {
  /** Return an extractable KEK, for a re-wrap under another root only. Default false. */
  readonly extractable?: boolean
}

/** The algorithm of every KEK: AES-128-GCM. A byte-oriented root imports its KEK bytes with it. */
export const KEK_ALGORITHM: {
  /** AES-GCM. */
  readonly name: 'AES-GCM'
  /** 128 bits. */
  readonly length: 128
} = Object.freeze({
  name: 'AES-GCM',
  length: 128,
} as const)
// The usages every KEK is imported with. Spelled out rather than KeyUsage[]: Cloudflare's
// workers-types has no KeyUsage type. Not exported: a mutable array shared by every caller
// could be changed by any of them; roots that hold KEK bytes use importKekBytes.
const KEK_USAGES: ('encrypt' | 'wrapKey' | 'unwrapKey')[] = ['encrypt', 'wrapKey', 'unwrapKey']

/**
 * For byte-oriented roots (a KMS's GenerateDataKey or Decrypt, an HSM through a bridge): imports
 * the 16 KEK bytes a root returned as a non-extractable AES-128-GCM KEK, and zeroes `bytes`
 * whatever happens, so the KEK's bytes live in JavaScript only for the length of this call.
 *
 * @param bytes - The KEK's 16 bytes; zeroed on return or throw.
 * @param who - The root's name for the error message (for example `'AWS KMS'`).
 * @param extractable - Only for {@link RootKey.unwrapKek} with `{ extractable: true }` (a re-wrap under another root).
 * @returns The KEK, usages encrypt / wrapKey / unwrapKey.
 * @throws {@link RootKeyError} when `bytes` is not 16 bytes long (the message names `who` and the
 * length in bits, never the bytes).
 *
 * @example
 * ```ts
 * const { Plaintext, CiphertextBlob } = await myKms.generateDataKey({ KeySpec: 'AES_128' })
 * return { kek: await importKekBytes(Plaintext, 'my KMS'), wrapped: CiphertextBlob }
 * ```
 */
export async function importKekBytes(bytes: Uint8Array<ArrayBuffer>, who: string, extractable = false): Promise<CryptoKey> {
  try {
    if (bytes.length !== 16) throw new RootKeyError(`${who} returned a ${bytes.length * 8}-bit KEK; expected 128`)
    // extractable only when the chain re-wraps this KEK under another root (RootKey.unwrapKek's
    // option): wrapKey needs it, and the bytes are zeroed here either way.
    return await crypto.subtle.importKey('raw', bytes, KEK_ALGORITHM, extractable === true, KEK_USAGES)
  } finally {
    bytes.fill(0) // invariant 1 (b): KEK bytes from a byte-oriented root, zeroed at once
  }
}
const WRAP_IV_BYTES = 12

/**
 * For roots that hold a WebCrypto AES-GCM wrapping key: makes a KEK inside WebCrypto and seals it.
 * Output: `tag || iv (12) || AES-GCM(wrappingKey, iv, kek, aad)`.
 */
export async function sealNewKek(wrappingKey: CryptoKey, aadView: Uint8Array, tag: Uint8Array): Promise<NewKek> {
  const aad = asBytes(aadView)
  // extractable: true only because subtle.wrapKey refuses a non-extractable key. The raw bytes
  // never reach JavaScript: this handle is wrapped, then dropped; the chain uses the
  // non-extractable copy made by the verifying unwrap below.
  const fresh = await crypto.subtle.generateKey(KEK_ALGORITHM, true, KEK_USAGES)
  const iv = randomBytes(WRAP_IV_BYTES)
  const sealed = new Uint8Array(
    await crypto.subtle.wrapKey('raw', fresh, wrappingKey, gcmParams(iv, aad)),
  )
  const kek = await crypto.subtle.unwrapKey(
    'raw',
    sealed,
    wrappingKey,
    gcmParams(iv, aad),
    KEK_ALGORITHM,
    false,
    KEK_USAGES,
  )
  return { kek, wrapped: concat(tag, iv, sealed) }
}

/**
 * For roots that hold a WebCrypto AES-GCM wrapping key: wraps an existing KEK (extractable, as
 * the chain hands it to {@link RootKey.wrapKek}) in the form {@link sealNewKek} makes, so
 * {@link openSealedKek} reads both. Output: `tag || iv (12) || AES-GCM(wrappingKey, iv, kek, aad)`.
 *
 * @throws TypeError - `kek` is not an AES-GCM `CryptoKey`, or not extractable.
 */
export async function sealKek(wrappingKey: CryptoKey, kek: CryptoKey, aadView: Uint8Array, tag: Uint8Array): Promise<Uint8Array> {
  // WebCrypto would throw a DOMException that names no fix; every root wrapping through here gets the same TypeError.
  if ((typeof CryptoKey !== 'undefined' && !(kek instanceof CryptoKey)) || (kek as Partial<CryptoKey>)?.algorithm?.name !== 'AES-GCM') {
    throw new TypeError('kek: expected an AES-GCM CryptoKey, as the chain hands one to wrapKek')
  }
  if (!kek.extractable) throw new TypeError('kek: expected an extractable key (unwrapKek with { extractable: true })')
  const iv = randomBytes(WRAP_IV_BYTES)
  const sealed = await crypto.subtle.wrapKey('raw', kek, wrappingKey, gcmParams(iv, asBytes(aadView)))
  return concat(tag, iv, new Uint8Array(sealed))
}

/**
 * Inverse of {@link sealNewKek} and {@link sealKek}, after the caller has checked and removed its
 * tag. `extractable` only for a re-wrap under another root (see {@link RootKey.unwrapKek}).
 */
export async function openSealedKek(wrappingKey: CryptoKey, bodyView: Uint8Array, aadView: Uint8Array, extractable = false): Promise<CryptoKey> {
  const [body, aad] = [asBytes(bodyView), asBytes(aadView)]
  if (body.length !== WRAP_IV_BYTES + 16 + 16 && body.length !== WRAP_IV_BYTES + 32 + 16) {
    throw new RootKeyError('wrapped KEK has the wrong length')
  }
  try {
    return await crypto.subtle.unwrapKey(
      'raw',
      body.subarray(WRAP_IV_BYTES),
      wrappingKey,
      gcmParams(body.subarray(0, WRAP_IV_BYTES), aad),
      { name: 'AES-GCM' },
      // extractable only when the chain re-wraps this KEK under another root: wrapKey needs it.
      extractable === true,
      KEK_USAGES,
    )
  } catch {
    throw new RootKeyError('the root key could not unwrap this KEK: wrong root key, or the wrapped KEK was altered')
  }
}

/** First byte of a wrapped KEK, per root kind, so that a KEK offered to the wrong kind of root says so. */
const TAGS = { aes: 0x01, ephemeral: 0x02 } as const

function webCryptoRootKey(kind: keyof typeof TAGS, getKey: () => Promise<CryptoKey>): RootKey {
  const tag = new Uint8Array([TAGS[kind]])
  return {
    kind,
    async newKek(aad) {
      return sealNewKek(await getKey(), aad, tag)
    },
    async unwrapKek(wrapped, aad, options) {
      if (!(wrapped instanceof Uint8Array) || wrapped[0] !== tag[0]) {
        throw new RootKeyError(`this KEK was not wrapped by an "${kind}" root key`)
      }
      return openSealedKek(await getKey(), wrapped.subarray(1), aad, options?.extractable)
    },
    async wrapKek(kek, aad) {
      return sealKek(await getKey(), kek, aad, tag)
    },
    toString: () => `[RootKey ${kind}]`,
    toJSON: () => ({ kind }),
  } as RootKey
}

/**
 * A root key that lives only in this process's memory: a non-extractable AES-256-GCM key made
 * on first use. Data encrypted under it cannot be decrypted by any other process, ever. The
 * default root key of {@link KeyChain.open}: for tests, and for data that lives as long as the
 * process (a cache, a session).
 *
 * @example
 * ```ts
 * const chain = await KeyChain.open({ rootKey: ephemeralRootKey() }) // the same as KeyChain.open()
 * ```
 */
export function ephemeralRootKey(): RootKey {
  let key: Promise<CryptoKey> | undefined
  return webCryptoRootKey('ephemeral', () =>
    (key ??= crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['wrapKey', 'unwrapKey'])),
  )
}

/**
 * A root key from an AES key you hold: 16 or 32 raw bytes (imported non-extractable; zero your
 * copy afterwards) or an AES-GCM `CryptoKey` with the usages wrapKey and unwrapKey.
 *
 * @throws RangeError - bytes that are not 16 or 32 long.
 * @throws TypeError - neither bytes nor a `CryptoKey`, or a key that is not AES-GCM with
 *   wrapKey and unwrapKey. Bytes that fail to import surface at first use as `ERR_ROOT_KEY`.
 * @example
 * ```ts
 * const rootBytes = crypto.getRandomValues(new Uint8Array(32)) // keep these safe: they open every KEK
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store: memoryStore() })
 * ```
 */
export function aesRootKey(keyOrBytes: CryptoKey | Uint8Array): RootKey {
  let key: Promise<CryptoKey>
  if (keyOrBytes instanceof Uint8Array) {
    if (keyOrBytes.length !== 16 && keyOrBytes.length !== 32) {
      throw new RangeError('aesRootKey: key bytes must be 16 or 32 bytes long')
    }
    key = crypto.subtle.importKey('raw', asBytes(keyOrBytes), 'AES-GCM', false, ['wrapKey', 'unwrapKey'])
    // importKey copies synchronously; a failure surfaces at first use as ERR_ROOT_KEY.
    key.catch(() => {})
  } else if (keyOrBytes instanceof CryptoKey) {
    const algorithm = keyOrBytes.algorithm as { name?: string }
    if (algorithm.name !== 'AES-GCM') throw new TypeError('aesRootKey: the CryptoKey must be an AES-GCM key')
    if (!keyOrBytes.usages.includes('wrapKey') || !keyOrBytes.usages.includes('unwrapKey')) {
      throw new TypeError('aesRootKey: the CryptoKey needs the usages wrapKey and unwrapKey')
    }
    key = Promise.resolve(keyOrBytes)
  } else {
    throw new TypeError('aesRootKey: expected a CryptoKey or a Uint8Array')
  }
  return webCryptoRootKey('aes', async () => {
    try {
      return await key
    } catch {
      throw new RootKeyError('aesRootKey: the key could not be imported')
    }
  })
}
