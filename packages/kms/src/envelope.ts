/**
 * The part every KMS root key shares: `unwrapKek` of both wrapped forms, and `wrapKek` of an
 * existing KEK by envelope, so that the KEK's bytes never reach JavaScript (invariant 1 allows
 * only bytes a root returns). The KMS wraps a fresh AES-256 data key (its own data-key call, or
 * 32 random bytes made here and sent to its encrypt call: one call either way); the data key,
 * imported non-extractable with its bytes zeroed, wraps the KEK inside WebCrypto:
 *
 *   tag (1) || n (u16) || data key as the KMS wrapped it (n) || iv (12) || AES-256-GCM(data key, iv, KEK, AAD) (16 + 16 tag)
 *
 * The data key is 32 bytes and a KEK 16, so a data key cut out of an envelope and offered as a
 * KEK of the first form is refused by length (never used as a KEK), and the KMS binds the same
 * AAD (encryption context) as for a new KEK: IAM or KMS policies that name it keep working.
 */
import { RootKeyError, importKekBytes, openSealedKek, sealKek, type RootKey, type UnwrapKekOptions } from '@kms-proxy/core'

/** Bytes of the data key that wraps a KEK in the envelope form: AES-256. */
export const DATA_KEY_BYTES = 32
/** iv (12) || 16-byte KEK sealed || 16-byte GCM tag. */
const SEALED_BYTES = 12 + 16 + 16

/** A KMS, as the two wrapped forms need it: each function is one KMS call. */
export interface KmsCalls {
  /** The root's name in messages, such as `'AWS KMS'`. */
  who: string
  /** How a wrong root names this one: `'an AWS KMS root key'`. */
  rootKey: string
  /** First byte of a KEK the KMS wrapped itself (`newKek`). */
  tag: number
  /** First byte of the envelope form (`wrapKek`). */
  envelopeTag: number
  /** A fresh 32-byte data key and its wrapped form, bound to `aad`. The caller zeroes `plaintext`. */
  dataKey(aad: Uint8Array): Promise<{ plaintext: Uint8Array<ArrayBuffer>; wrapped: Uint8Array }>
  /**
   * The plaintext inside `blob` (a wrapped KEK after its tag, or an envelope's wrapped data key),
   * checked against `aad`. The caller zeroes it.
   */
  decrypt(blob: Uint8Array, aad: Uint8Array): Promise<Uint8Array<ArrayBuffer>>
}

/**
 * A data key made here (for a KMS without a data-key call): 32 bytes from `crypto.getRandomValues`,
 * wrapped by `encrypt` (one KMS call), zeroed here if that call fails.
 */
export async function localDataKey(encrypt: (plaintext: Uint8Array) => Promise<Uint8Array>): Promise<{ plaintext: Uint8Array<ArrayBuffer>; wrapped: Uint8Array }> {
  const plaintext = crypto.getRandomValues(new Uint8Array(DATA_KEY_BYTES))
  try {
    return { plaintext, wrapped: await encrypt(plaintext) }
  } catch (error) {
    plaintext.fill(0)
    throw error
  }
}

/** Imports a data key non-extractable for one usage, and zeroes `bytes` whatever happens. */
async function importDataKey(bytes: Uint8Array<ArrayBuffer>, usage: 'wrapKey' | 'unwrapKey', who: string): Promise<CryptoKey> {
  try {
    if (bytes.length !== DATA_KEY_BYTES) throw new RootKeyError(`${who} returned a ${bytes.length * 8}-bit data key; expected ${DATA_KEY_BYTES * 8}`)
    return await crypto.subtle.importKey('raw', bytes, 'AES-GCM', false, [usage])
  } finally {
    bytes.fill(0) // as KEK bytes (invariant 1 b): in JavaScript only for the length of this call
  }
}

/** `unwrapKek` and `wrapKek` of a KMS root key, both wrapped forms, one KMS call each. */
export function kmsWrapping(kms: KmsCalls): Pick<Required<RootKey>, 'unwrapKek' | 'wrapKek'> {
  const { who, tag, envelopeTag } = kms
  const notOurs = () => new RootKeyError(`this KEK was not wrapped by ${kms.rootKey}`)
  return {
    async unwrapKek(wrapped: Uint8Array, aad: Uint8Array, options?: UnwrapKekOptions): Promise<CryptoKey> {
      if (!(wrapped instanceof Uint8Array) || wrapped.length < 2) throw notOurs()
      // Extractable only when the chain re-wraps this KEK under another root (addRoot,
      // changeRoot): subtle.wrapKey needs it; the KEK's bytes still never reach JavaScript.
      const extractable = options?.extractable === true
      if (wrapped[0] === tag) return importKekBytes(await kms.decrypt(wrapped.subarray(1), aad), who, extractable)
      if (wrapped[0] !== envelopeTag) throw notOurs()
      const n = wrapped.length >= 3 ? (wrapped[1]! << 8) | wrapped[2]! : 0
      const rest = wrapped.length - 3 - n
      if (n === 0 || (rest !== SEALED_BYTES && rest !== SEALED_BYTES + 16)) throw new RootKeyError(`wrapped KEK (${who}, envelope form) has the wrong length`)
      const dataKey = await importDataKey(await kms.decrypt(wrapped.subarray(3, 3 + n), aad), 'unwrapKey', who)
      // extractable as above: only for a re-wrap under another root, and wrapKey keeps the bytes inside WebCrypto.
      return openSealedKek(dataKey, wrapped.subarray(3 + n), aad, extractable)
    },
    async wrapKek(kek: CryptoKey, aad: Uint8Array): Promise<Uint8Array> {
      // Checked before the KMS call: subtle.wrapKey would refuse it after a data key was paid for.
      if (!(kek instanceof CryptoKey) || !kek.extractable || (kek.algorithm as { name?: string }).name !== 'AES-GCM') {
        throw new TypeError('kek: expected an extractable AES-GCM CryptoKey (as the chain hands one to wrapKek)')
      }
      const { plaintext, wrapped } = await kms.dataKey(aad)
      if (wrapped.length === 0 || wrapped.length > 0xffff) {
        plaintext.fill(0)
        throw new RootKeyError(`${who} returned a wrapped data key of ${wrapped.length} bytes`)
      }
      const dataKey = await importDataKey(plaintext, 'wrapKey', who)
      const head = new Uint8Array(3 + wrapped.length)
      head[0] = envelopeTag
      head[1] = wrapped.length >> 8
      head[2] = wrapped.length & 0xff
      head.set(wrapped, 3)
      return sealKek(dataKey, kek, aad, head)
    },
  }
}
