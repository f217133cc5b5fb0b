/**
 * HashiCorp Vault Transit as a root key over Vault's HTTP API. A new KEK's bytes come from
 * Vault (`POST /v1/{mount}/random/16`), are encrypted with `POST /v1/{mount}/encrypt/{key}` with
 * the chain's KEK AAD as `associated_data`, and are unwrapped with `decrypt/{key}`, so Vault
 * itself binds each KEK to its chain and id. The transit key must be an AEAD type
 * (aes128-gcm96, aes256-gcm96 or chacha20-poly1305): only those authenticate associated_data.
 * Vault's `datakey` endpoint documents no associated_data parameter, so it is not used.
 */
import { RootKeyError, importKekBytes, checkServerUrl, toBase64, type NewKek, type RootKey } from '@kms-proxy/core'
import { kmsWrapping, localDataKey } from './envelope.js'
import { base64Field, credentialFor, postJson, refused, type RetryOptions } from './http.js'

/** Options of {@link vaultTransitRootKey}. */
export interface VaultTransitRootKeyOptions extends RetryOptions {
  /** Vault's address, e.g. https://vault.example.com:8200. Plain http only on loopback or a host in `plainHttpHosts`. */
  address: string
  /**
   * Vault token (X-Vault-Token), or a function called before each request (for expiring ones). A
   * function with `invalidate` (`refreshingCredentials`) is invalidated when Vault answers 401 or
   * 403, and the request is sent once more with a new token.
   */
  token: string | (() => Promise<string>)
  /** Name of the transit key. */
  key: string
  /**
   * Where the transit engine is mounted.
   *
   * @defaultValue `'transit'`
   */
  mount?: string
  /**
   * Vault Enterprise / HCP namespace (X-Vault-Namespace).
   *
   * @defaultValue none: the root namespace
   */
  namespace?: string
}

const TAG = 0x22
/** wrapKek's envelope form: a data key made here and encrypted by Vault wraps the KEK (envelope.ts). */
const ENVELOPE_TAG = 0x26
const VAULT_CIPHERTEXT = /^vault:v\d+:[A-Za-z0-9+/=]+$/

/**
 * HashiCorp Vault Transit as a root key: Vault makes each KEK's bytes and binds them to the chain
 * with associated_data. A rotation costs two calls (`random/16`, `encrypt`), an unlock one
 * `decrypt` per KEK; the transit key's version is kept with each wrapped KEK. `wrapKek` (this root
 * added to a chain that has KEKs) costs one `encrypt` per KEK, of a 32-byte data key made here
 * that wraps the KEK inside WebCrypto (tag 0x26, 136 bytes); `unwrapKek` reads both forms with one `decrypt`.
 *
 * @throws TypeError - a missing `address`, `token` or `key`, or plain http to a host that is
 *   neither loopback nor in `plainHttpHosts`.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from `newKek`, `unwrapKek`, `wrapKek`) `ERR_ROOT_KEY`:
 *   Vault refused (permission denied, a key type without associated data), `retryable` when it
 *   was unreachable or answered 429/5xx after the retries.
 * @example
 * ```ts
 * const rootKey = vaultTransitRootKey({ address: 'https://vault.internal:8200', token: process.env.VAULT_TOKEN!, key: 'kms-proxy' })
 * const chain = await KeyChain.open({ rootKey, store })
 * ```
 */
export function vaultTransitRootKey(options: VaultTransitRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { key, namespace } = options
  const mount = (options.mount ?? 'transit').replace(/^\/+|\/+$/g, '')
  if (typeof key !== 'string' || !/^[^/?#\s]+$/.test(key)) throw new TypeError('key: expected the name of a transit key')
  if (mount === '' || /[?#\s]/.test(mount)) throw new TypeError('mount: expected the path of the transit engine, such as transit')
  if (namespace !== undefined && (typeof namespace !== 'string' || namespace === '')) throw new TypeError('namespace: expected a Vault namespace')
  if (typeof options.token !== 'function' && (typeof options.token !== 'string' || options.token === '')) {
    throw new TypeError('token: expected a Vault token or a function returning one')
  }
  const address = checkServerUrl(options.address, 'address', options.plainHttpHosts)

  async function call(action: string, path: string, payload: Record<string, unknown>): Promise<Record<string, unknown>> {
    const url = new URL(`/v1/${mount}/${path}`, address).href
    const token = credentialFor(options.token)
    const headers = async () => {
      const h: Record<string, string> = { 'content-type': 'application/json', 'x-vault-token': await token.get() }
      if (namespace !== undefined) h['x-vault-namespace'] = namespace
      return h
    }
    const out = await postJson(`Vault Transit ${action}`, url, JSON.stringify(payload), headers, options, (status, error) => {
      // Vault's own error strings ("permission denied", "encryption key not found", "cipher:
      // message authentication failed") carry no secrets; keep a short one for the message.
      const first = (error as { errors?: unknown[] } | undefined)?.errors?.[0]
      const detail = typeof first === 'string' && first.length <= 120 && !first.includes('vault:v') ? `: ${first}` : ''
      if (refused(status)) return `HTTP ${status}${detail} (the KMS refused the credentials)`
      if (status === 404) return `HTTP ${status}${detail} (no such transit mount or key: ${mount}/${key})`
      if (action === 'decrypt' && status === 400) return `HTTP ${status}${detail} (wrong key, missing key, or a KEK moved to another chain or id)`
      return `HTTP ${status}${detail}`
    }, { refreshCredential: token.refresh })
    return ((out as { data?: Record<string, unknown> }).data ?? {}) as Record<string, unknown>
  }

  /**
   * encrypt/{key} of `plaintext` bound to `aad`: the `vault:vN:` ciphertext as UTF-8, its prefix
   * (the key version) kept, so a rotated transit key still decrypts.
   */
  async function encrypt(plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const out = await call('encrypt', `encrypt/${encodeURIComponent(key)}`, { plaintext: toBase64(plaintext), associated_data: toBase64(aad) })
    if (typeof out.ciphertext !== 'string' || !VAULT_CIPHERTEXT.test(out.ciphertext)) throw new RootKeyError('Vault Transit encrypt returned no vault:vN: ciphertext')
    return new TextEncoder().encode(out.ciphertext)
  }

  return {
    kind: 'vault-transit',
    async newKek(aad): Promise<NewKek> {
      const random = await call('random', 'random/16', { format: 'base64' })
      const bytes = base64Field('Vault random', typeof random.random_bytes === 'string' ? random.random_bytes : '')
      let ciphertext: Uint8Array
      try {
        if (bytes.length !== 16) throw new RootKeyError(`Vault returned ${bytes.length} random bytes; expected 16`)
        ciphertext = await encrypt(bytes, aad)
      } catch (error) {
        bytes.fill(0)
        throw error
      }
      const wrapped = new Uint8Array(1 + ciphertext.length)
      wrapped[0] = TAG
      wrapped.set(ciphertext, 1)
      return { kek: await importKekBytes(bytes, 'Vault'), wrapped }
    },
    ...kmsWrapping({
      who: 'Vault',
      rootKey: 'a Vault Transit root key',
      tag: TAG,
      envelopeTag: ENVELOPE_TAG,
      // Random bytes made here rather than by random/N: one call per wrapKek, as the contract asks.
      dataKey: (aad) => localDataKey((plaintext) => encrypt(plaintext, aad)),
      async decrypt(blob, aad) {
        const ciphertext = new TextDecoder('utf-8', { fatal: false }).decode(blob)
        if (!VAULT_CIPHERTEXT.test(ciphertext)) throw new RootKeyError('wrapped KEK is not a vault:vN: ciphertext')
        const out = await call('decrypt', `decrypt/${encodeURIComponent(key)}`, { ciphertext, associated_data: toBase64(aad) })
        return base64Field('Vault Transit decrypt', typeof out.plaintext === 'string' ? out.plaintext : '')
      },
    }),
    toString: () => '[RootKey vault-transit]',
    toJSON: () => ({ kind: 'vault-transit', address: address.origin, mount, key, ...(namespace !== undefined ? { namespace } : {}) }),
  } as RootKey
}
