/**
 * Azure Key Vault as a root key over its REST API: `POST {vault}/keys/{name}/{version}/wrapkey`
 * and `/unwrapkey` with RSA-OAEP-256, so the RSA private key never leaves the vault.
 *
 * Two things differ from the other KMSs, both because of what Azure offers:
 * - Azure's wrapkey has no associated-data parameter, so the chain's KEK AAD is bound here: the
 *   vault wraps `KEK (16) || SHA-256(aad) (32)`, and unwrapping checks the digest in constant
 *   time. RSA-OAEP is non-malleable, so a wrapped KEK cannot be re-bound without the private key.
 * - A standard vault has no symmetric data-key call, so this is the one root whose KEK bytes are
 *   made locally (`crypto.getRandomValues`), sent to the vault once to be wrapped, imported as a
 *   non-extractable key and zeroed (invariant 1 b).
 *
 * The wrapped form records the key version that wrapped it (from the response's `kid`), so KEKs
 * wrapped before an Azure key rotation still unwrap:
 * `0x23 || version length (u8) || version (ASCII) || RSA-OAEP-256 ciphertext`.
 */
import { RootKeyError, importKekBytes, checkServerUrl, fromBase64Url, toBase64Url, type NewKek, type RootKey } from '@kms-proxy/core'
import { DATA_KEY_BYTES, kmsWrapping, localDataKey } from './envelope.js'
import { credentialFor, postJson, refused, type RetryOptions } from './http.js'

/** Options of {@link azureKeyVaultRootKey}. */
export interface AzureKeyVaultRootKeyOptions extends RetryOptions {
  /** The vault's URL, e.g. https://my-vault.vault.azure.net. Plain http only on loopback or a host in `plainHttpHosts`. */
  vaultUrl: string
  /** Name of an RSA key (RSA or RSA-HSM) with the wrapKey and unwrapKey operations allowed. */
  keyName: string
  /**
   * Version that wraps new KEKs.
   *
   * @defaultValue the key's current version at each rotation
   */
  keyVersion?: string
  /**
   * Microsoft Entra access token for https://vault.azure.net, or a function called before each
   * request (see `azureManagedIdentityToken` and `refreshingCredentials`). A function with
   * `invalidate` is invalidated when the vault answers 401 or 403, and the request is sent once
   * more with a new token.
   */
  accessToken: string | (() => Promise<string>)
  /**
   * REST api-version (any later version speaks the same wrapkey/unwrapkey).
   *
   * @defaultValue `'7.4'`
   */
  apiVersion?: string
}

const TAG = 0x23
/** wrapKek's envelope form: a data key made here and wrapped by the vault wraps the KEK (envelope.ts). */
const ENVELOPE_TAG = 0x27
const ALG = 'RSA-OAEP-256'
const KEK_BYTES = 16
const DIGEST_BYTES = 32
const KEY_NAME = /^[0-9a-zA-Z-]{1,127}$/
const KEY_VERSION = /^[0-9a-zA-Z]{1,64}$/

async function digestOf(aad: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', aad as Uint8Array<ArrayBuffer>))
}

/** Constant time in the contents: every byte is compared whatever the first difference. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  let diff = 0
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!
  return diff === 0
}

/**
 * Azure Key Vault as a root key: RSA-OAEP-256 wrapkey/unwrapkey of a KEK made here, bound to the
 * chain by a digest inside the RSA block (`wrapkey` takes no associated data). A rotation costs
 * one `wrapkey`, an unlock one `unwrapkey` per KEK. `wrapKek` (this root added to a chain that has
 * KEKs) costs one `wrapkey` per KEK, of a 32-byte data key made here that wraps the KEK inside
 * WebCrypto (tag 0x27, 336 bytes with RSA-2048); `unwrapKek` reads both forms with one `unwrapkey`.
 *
 * @throws TypeError - a malformed `keyName`, `keyVersion` or `apiVersion`, a missing
 *   `accessToken`, a bad `vaultUrl`.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from `newKek`, `unwrapKek`, `wrapKek`) `ERR_ROOT_KEY`:
 *   Key Vault refused, the digest did not match (a KEK moved to another chain or id),
 *   `retryable` when it was unreachable or answered 429/5xx after the retries.
 * @example
 * ```ts
 * const rootKey = azureKeyVaultRootKey({ vaultUrl: 'https://my-vault.vault.azure.net', keyName: 'kms-proxy', accessToken: () => getToken() })
 * const chain = await KeyChain.open({ rootKey, store })
 * ```
 */
export function azureKeyVaultRootKey(options: AzureKeyVaultRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { keyName, keyVersion } = options
  const apiVersion = options.apiVersion ?? '7.4'
  if (typeof keyName !== 'string' || !KEY_NAME.test(keyName)) throw new TypeError('keyName: expected a Key Vault key name (1-127 letters, digits and dashes)')
  if (keyVersion !== undefined && (typeof keyVersion !== 'string' || !KEY_VERSION.test(keyVersion))) throw new TypeError('keyVersion: expected a Key Vault key version')
  if (typeof apiVersion !== 'string' || !/^(7\.\d+|\d{4}-\d{2}-\d{2})(-preview)?$/.test(apiVersion)) throw new TypeError('apiVersion: expected a Key Vault api-version such as 7.4')
  if (typeof options.accessToken !== 'function' && (typeof options.accessToken !== 'string' || options.accessToken === '')) {
    throw new TypeError('accessToken: expected a Microsoft Entra access token or a function returning one')
  }
  const vault = checkServerUrl(options.vaultUrl, 'vaultUrl', options.plainHttpHosts)
  const base = vault.origin + vault.pathname.replace(/\/+$/, '')

  async function call(action: 'wrapkey' | 'unwrapkey', version: string, value: Uint8Array): Promise<{ kid: string; value: Uint8Array<ArrayBuffer> }> {
    const body = JSON.stringify({ alg: ALG, value: toBase64Url(value) })
    const url = `${base}/keys/${keyName}/${version}/${action}?api-version=${encodeURIComponent(apiVersion)}`
    const token = credentialFor(options.accessToken)
    const headers = async () => ({ 'content-type': 'application/json', authorization: `Bearer ${await token.get()}` })
    const out = (await postJson(`Azure Key Vault ${action}`, url, body, headers, options, (status, error) => {
      // Azure's codes (Unauthorized, Forbidden, KeyNotFound, BadParameter) carry no secrets; its
      // messages may echo request details, so they are left out.
      const c = (error as { error?: { code?: unknown } } | undefined)?.error?.code
      const code = typeof c === 'string' && /^[A-Za-z.]{1,64}$/.test(c) ? `${c} (HTTP ${status})` : `HTTP ${status}`
      if (refused(status)) return `${code}: the KMS refused the credentials`
      if (status === 404) return `${code}: no such key or version (${keyName}${version ? `/${version}` : ''})`
      if (action === 'unwrapkey' && status === 400) return `${code} (wrong key, or altered wrapped KEK)`
      return code
    }, { refreshCredential: token.refresh })) as { kid?: unknown; value?: unknown }
    if (typeof out.kid !== 'string' || typeof out.value !== 'string' || out.value === '') throw new RootKeyError(`Azure Key Vault ${action} returned no kid or value`)
    let bytes: Uint8Array<ArrayBuffer>
    try {
      bytes = fromBase64Url(out.value)
    } catch {
      throw new RootKeyError(`Azure Key Vault ${action} returned a value that is not base64url`)
    }
    return { kid: out.kid, value: bytes }
  }

  /** The version segment of a kid: https://{vault}/keys/{name}/{version}. */
  function versionOf(kid: string): string {
    let path = ''
    try {
      path = new URL(kid).pathname
    } catch {
      // Checked below.
    }
    const m = /^\/keys\/([^/]+)\/([^/]+)$/.exec(path)
    if (!m || m[1]!.toLowerCase() !== keyName.toLowerCase() || !KEY_VERSION.test(m[2]!)) {
      throw new RootKeyError(`Azure Key Vault answered with a kid for another key, or without a version`)
    }
    return m[2]!
  }

  /**
   * wrapkey of `secret || SHA-256(aad)`: `version length (u8) || version || RSA block`. The
   * payload holding the secret is zeroed here on every path; the caller zeroes `secret`.
   */
  async function wrap(secret: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const payload = new Uint8Array(secret.length + DIGEST_BYTES)
    let ciphertext: Uint8Array
    let version: string
    try {
      payload.set(secret)
      payload.set(await digestOf(aad), secret.length)
      const out = await call('wrapkey', keyVersion ?? '', payload)
      ciphertext = out.value
      version = versionOf(out.kid)
      if (ciphertext.length > 1024) throw new RootKeyError('Azure Key Vault wrapkey returned more than 1024 bytes; expected an RSA block')
    } finally {
      payload.fill(0)
    }
    const v = new TextEncoder().encode(version)
    const blob = new Uint8Array(1 + v.length + ciphertext.length)
    blob[0] = v.length
    blob.set(v, 1)
    blob.set(ciphertext, 1 + v.length)
    return blob
  }

  return {
    kind: 'azure-key-vault',
    async newKek(aad): Promise<NewKek> {
      // The one root whose KEK bytes are made here: Azure has no symmetric data-key call for
      // standard vaults. They exist until the import below, and are zeroed on every path.
      const bytes = crypto.getRandomValues(new Uint8Array(KEK_BYTES))
      let blob: Uint8Array
      try {
        blob = await wrap(bytes, aad)
      } catch (error) {
        bytes.fill(0)
        throw error
      }
      const kek = await importKekBytes(bytes, 'Azure Key Vault')
      const wrapped = new Uint8Array(1 + blob.length)
      wrapped[0] = TAG
      wrapped.set(blob, 1)
      return { kek, wrapped }
    },
    ...kmsWrapping({
      who: 'Azure Key Vault',
      rootKey: 'an Azure Key Vault root key',
      tag: TAG,
      envelopeTag: ENVELOPE_TAG,
      dataKey: (aad) => localDataKey((plaintext) => wrap(plaintext, aad)),
      async decrypt(blob, aad) {
        if (blob.length < 2 || blob.length < 2 + blob[0]!) throw new RootKeyError('this KEK was not wrapped by an Azure Key Vault root key')
        const version = new TextDecoder().decode(blob.subarray(1, 1 + blob[0]!))
        if (!KEY_VERSION.test(version)) throw new RootKeyError('wrapped KEK has no valid Azure key version')
        const expected = await digestOf(aad)
        const { value } = await call('unwrapkey', version, blob.subarray(1 + blob[0]!))
        try {
          // A KEK (16) or an envelope's data key (32), then the digest.
          if (value.length !== KEK_BYTES + DIGEST_BYTES && value.length !== DATA_KEY_BYTES + DIGEST_BYTES) {
            throw new RootKeyError(`Azure Key Vault unwrapped ${value.length} bytes; expected ${KEK_BYTES + DIGEST_BYTES} or ${DATA_KEY_BYTES + DIGEST_BYTES}`)
          }
          if (!sameBytes(value.subarray(value.length - DIGEST_BYTES), expected)) throw new RootKeyError('Azure Key Vault: KEK moved to another chain or id (associated data does not match)')
          return value.slice(0, value.length - DIGEST_BYTES)
        } finally {
          value.fill(0)
        }
      },
    }),
    toString: () => '[RootKey azure-key-vault]',
    toJSON: () => ({ kind: 'azure-key-vault', vaultUrl: base, keyName, ...(keyVersion !== undefined ? { keyVersion } : {}), apiVersion }),
  } as RootKey
}
