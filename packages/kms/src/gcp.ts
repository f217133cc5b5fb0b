/**
 * Google Cloud KMS as a root key over its REST API (v1). A new KEK's bytes come from Cloud KMS's
 * own randomness source (`projects.locations.generateRandomBytes`, HSM), are encrypted with
 * `cryptoKeys.encrypt` under the chain's KEK AAD as `additionalAuthenticatedData`, and are
 * unwrapped with `cryptoKeys.decrypt`, so Cloud KMS itself binds each KEK to its chain and id.
 */
import { RootKeyError, importKekBytes, checkServerUrl, toBase64, type NewKek, type RootKey } from '@kms-proxy/core'
import { kmsWrapping, localDataKey } from './envelope.js'
import { base64Field, credentialFor, postJson, refused, type RetryOptions } from './http.js'

/** Options of {@link gcpKmsRootKey}. */
export interface GcpKmsRootKeyOptions extends RetryOptions {
  /** projects/{p}/locations/{l}/keyRings/{r}/cryptoKeys/{k} (a symmetric ENCRYPT_DECRYPT key). */
  keyName: string
  /**
   * OAuth 2.0 access token, or a function called before each request (for expiring ones: see
   * `gcpMetadataToken` and `refreshingCredentials`). A function with `invalidate` is invalidated
   * when Cloud KMS answers 401 or 403, and the request is sent once more with a new token.
   */
  accessToken: string | (() => Promise<string>)
  /**
   * The Cloud KMS endpoint. Plain http only on loopback or a host in `plainHttpHosts`.
   *
   * @defaultValue `https://cloudkms.googleapis.com`
   */
  endpoint?: string
}

const TAG = 0x21
/** wrapKek's envelope form: a data key made here and encrypted by Cloud KMS wraps the KEK (envelope.ts). */
const ENVELOPE_TAG = 0x25
const KEY_NAME = /^projects\/[^/]+\/locations\/[^/]+\/keyRings\/[^/]+\/cryptoKeys\/[^/]+$/

/**
 * Google Cloud KMS as a root key: HSM random bytes for each KEK, bound to the chain with
 * additionalAuthenticatedData. A rotation costs two calls (`generateRandomBytes`, `encrypt`), an
 * unlock one `decrypt` per KEK; messages cost none. `wrapKek` (this root added to a chain that has
 * KEKs) costs one `encrypt` per KEK, of a 32-byte data key made here that wraps the KEK inside
 * WebCrypto (tag 0x25); `unwrapKek` reads both forms with one `decrypt`.
 *
 * @throws TypeError - a malformed `keyName`, a missing `accessToken`, a bad endpoint.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from `newKek`, `unwrapKek`, `wrapKek`) `ERR_ROOT_KEY`:
 *   Cloud KMS refused, `retryable` when it was unreachable or answered 429/5xx after the retries.
 * @example
 * ```ts
 * const rootKey = gcpKmsRootKey({
 *   keyName: 'projects/acme/locations/europe-west1/keyRings/app/cryptoKeys/kek-root',
 *   accessToken: () => getAccessToken(), // called before each request
 * })
 * const chain = await KeyChain.open({ rootKey, store })
 * ```
 */
export function gcpKmsRootKey(options: GcpKmsRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { keyName } = options
  if (typeof keyName !== 'string' || !KEY_NAME.test(keyName)) {
    throw new TypeError('keyName: expected projects/{project}/locations/{location}/keyRings/{ring}/cryptoKeys/{key}')
  }
  if (typeof options.accessToken !== 'function' && (typeof options.accessToken !== 'string' || options.accessToken === '')) {
    throw new TypeError('accessToken: expected an OAuth 2.0 access token or a function returning one')
  }
  const location = keyName.split('/').slice(0, 4).join('/')
  const endpoint = checkServerUrl(options.endpoint ?? 'https://cloudkms.googleapis.com', 'endpoint', options.plainHttpHosts)

  async function call(action: string, resource: string, payload: Record<string, unknown>): Promise<Record<string, string>> {
    const url = new URL(`/v1/${resource}:${action}`, endpoint).href
    const token = credentialFor(options.accessToken)
    const headers = async () => ({ 'content-type': 'application/json', authorization: `Bearer ${await token.get()}` })
    return (await postJson(`Google Cloud KMS ${action}`, url, JSON.stringify(payload), headers, options, (status, error) => {
      const named = (error as { error?: { status?: unknown } } | undefined)?.error?.status
      const code = typeof named === 'string' ? `${named} (HTTP ${status})` : `HTTP ${status}`
      if (refused(status)) return `${code}: the KMS refused the credentials`
      if (status === 404) return `${code}: no such key or location (${resource})`
      if (action === 'decrypt' && status === 400) return `${code} (wrong key, or a KEK moved to another chain or id)`
      return code
    }, { refreshCredential: token.refresh })) as Record<string, string>
  }

  /** cryptoKeys.encrypt of `plaintext` bound to `aad`: the ciphertext's bytes. */
  async function encrypt(plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const out = await call('encrypt', keyName, { plaintext: toBase64(plaintext), additionalAuthenticatedData: toBase64(aad) })
    const ciphertext = base64Field('Google Cloud KMS encrypt', out.ciphertext ?? '')
    if (ciphertext.length === 0) throw new RootKeyError('Google Cloud KMS encrypt returned no ciphertext')
    return ciphertext
  }

  return {
    kind: 'gcp-kms',
    async newKek(aad): Promise<NewKek> {
      const random = await call('generateRandomBytes', location, { lengthBytes: 16, protectionLevel: 'HSM' })
      const bytes = base64Field('Google Cloud KMS generateRandomBytes', random.data ?? '')
      let ciphertext: Uint8Array
      try {
        if (bytes.length !== 16) throw new RootKeyError(`Google Cloud KMS returned ${bytes.length} random bytes; expected 16`)
        ciphertext = await encrypt(bytes, aad)
      } catch (error) {
        bytes.fill(0)
        throw error
      }
      const wrapped = new Uint8Array(1 + ciphertext.length)
      wrapped[0] = TAG
      wrapped.set(ciphertext, 1)
      return { kek: await importKekBytes(bytes, 'Google Cloud KMS'), wrapped }
    },
    ...kmsWrapping({
      who: 'Google Cloud KMS',
      rootKey: 'a Google Cloud KMS root key',
      tag: TAG,
      envelopeTag: ENVELOPE_TAG,
      // Random bytes made here rather than by generateRandomBytes: one call per wrapKek, as the contract asks.
      dataKey: (aad) => localDataKey((plaintext) => encrypt(plaintext, aad)),
      async decrypt(blob, aad) {
        const out = await call('decrypt', keyName, { ciphertext: toBase64(blob), additionalAuthenticatedData: toBase64(aad) })
        return base64Field('Google Cloud KMS decrypt', out.plaintext ?? '')
      },
    }),
    toString: () => '[RootKey gcp-kms]',
    toJSON: () => ({ kind: 'gcp-kms', keyName, endpoint: endpoint.origin }),
  } as RootKey
}
