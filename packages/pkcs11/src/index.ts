/**
 * A root key held in an HSM behind the PKCS#11 bridge (`@kms-proxy/pkcs11-bridge`), reached over
 * HTTP with `fetch`: runs on every runtime (browsers excepted in practice: the bridge listens on
 * loopback or a Unix socket). The bridge generates a KEK with the token's RNG, wraps it with
 * CKM_AES_GCM under a non-extractable AES-256 key on the token, and returns both; the KEK bytes
 * are imported here as a non-extractable CryptoKey and zeroed at once (invariant 1 (b)).
 *
 * Wire protocol (JSON, `Authorization: Bearer <token>`):
 *   POST {url}/v1/generate {aad}          -> {kek, wrapped}
 *   POST {url}/v1/datakey  {aad}          -> {key, wrapped}   (for wrapKek)
 *   POST {url}/v1/unwrap   {wrapped, aad} -> {kek}, or {key} for a sealed data key
 * All byte fields are standard base64. `wrapped` is `0x30 || iv (12) || ciphertext (16) || tag (16)`
 * for a KEK, `0x32 || iv (12) || ciphertext (32) || tag (16)` for a data key. `wrapKek` wraps an
 * existing KEK under such a data key inside WebCrypto (see {@link pkcs11Wrapping}): 108 bytes.
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { pkcs11BridgeRootKey } from '@kms-proxy/pkcs11'
 * const rootKey = pkcs11BridgeRootKey({ url: 'http://127.0.0.1:7711', token: process.env.BRIDGE_TOKEN! })
 * const chain = await KeyChain.open({ rootKey, store })
 * const encrypted = await chain.encrypt('hello')
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/pkcs11
 */
import { HttpExchangeError, RootKeyError, importKekBytes, checkServerUrl, fromBase64, httpWithRetry, openSealedKek, sealKek, toBase64, type NewKek, type RootKey, type UnwrapKekOptions } from '@kms-proxy/core'

/** Options of {@link pkcs11BridgeRootKey}. */
export interface Pkcs11BridgeRootKeyOptions {
  /**
   * Base URL of the bridge, such as http://127.0.0.1:7711 (what startPkcs11Bridge returns), or
   * http://localhost with a `fetch` that dials the bridge's Unix socket. `http:` only to a loopback
   * host (`localhost`, 127.0.0.0/8, `::1`) or a host in `plainHttpHosts`.
   */
  url: string
  /**
   * Hosts that may be reached over plain `http:` although they are not loopback: the explicit
   * opt-in. Over plain http the bearer token and the KEK bytes in every answer cross in the
   * clear, and anyone on the path can answer in the bridge's place. Host names only, no port.
   *
   * @defaultValue none: plain http only to loopback
   */
  plainHttpHosts?: string[]
  /**
   * The bridge's bearer token, or a function that returns it, called before each request (a
   * token kept in a secret store or a file that is rotated: the new one is used without a
   * restart). A function with an `invalidate(stale)` method (`refreshingCredentials` of
   * @kms-proxy/kms, a re-read file) is told when the bridge refused the token it gave (HTTP 401),
   * and the request is sent once more with the next one. Never appears in errors, `String()` or
   * `JSON.stringify`.
   */
  token: string | (() => Promise<string>)
  /**
   * Deadline for each attempt, covering the whole answer (headers and body, even with a `fetch`
   * that ignores its abort signal).
   *
   * @defaultValue 10,000 (10 s)
   */
  timeoutMs?: number
  /**
   * Attempts after the first on 429, 5xx, network errors and timeouts.
   *
   * @defaultValue 3
   */
  retries?: number
  /**
   * First backoff (ms); doubles each retry, with full jitter.
   *
   * @defaultValue 100
   */
  backoffMs?: number
  /**
   * A fetch to use instead of the global one (a Unix-socket adapter, a counting wrapper).
   *
   * @defaultValue the global `fetch`
   */
  fetch?: typeof fetch
}

/** First byte of a KEK wrapped by a PKCS#11 key (through the bridge or in process). */
export const PKCS11_WRAP_TAG = 0x30
/** Length of a wrapped KEK: tag, 12-byte IV, 16-byte KEK, 16-byte GCM tag. */
export const PKCS11_WRAPPED_LENGTH = 1 + 12 + 16 + 16

/** First byte of a 32-byte data key sealed by the PKCS#11 key: `0x32 || iv (12) || ciphertext (32) || tag (16)`. */
export const PKCS11_DATA_KEY_TAG = 0x32
/** Length of a sealed data key: tag, 12-byte IV, 32-byte data key, 16-byte GCM tag. */
const PKCS11_WRAPPED_DATA_KEY_LENGTH = 1 + 12 + 32 + 16
/** First byte of `wrapKek`'s envelope form: a data key sealed by the token wraps an existing KEK. */
const PKCS11_ENVELOPE_TAG = 0x31
/**
 * Length of the envelope form: tag, u16 length (61), the sealed data key (61), iv (12), the KEK
 * sealed by the data key in WebCrypto (16 + 16 tag).
 */
export const PKCS11_ENVELOPE_LENGTH = 3 + PKCS11_WRAPPED_DATA_KEY_LENGTH + 12 + 16 + 16

/** What the token does for a PKCS#11 root key, through the bridge or in process: each function is one token operation. */
export interface Pkcs11TokenCalls {
  /** The root's name in messages. */
  who: string
  /** A fresh 32-byte data key from the token's RNG and its sealed form (tag 0x32), bound to `aad`. The caller zeroes `key`. */
  dataKey(aad: Uint8Array): Promise<{
    /** The data key's 32 bytes. */
    key: Uint8Array<ArrayBuffer>
    /** `0x32 || iv (12) || ciphertext (32) || tag (16)`. */
    wrapped: Uint8Array
  }>
  /** What a sealed KEK (0x30) or data key (0x32) holds, checked against `aad`. The caller zeroes it. */
  unwrap(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array<ArrayBuffer>>
}

/** Imports a data key non-extractable for one usage, and zeroes `bytes` whatever happens. */
async function importDataKey(bytes: Uint8Array<ArrayBuffer>, usage: 'wrapKey' | 'unwrapKey', who: string): Promise<CryptoKey> {
  try {
    if (bytes.length !== 32) throw new RootKeyError(`${who} returned a ${bytes.length * 8}-bit data key; expected 256`)
    return await crypto.subtle.importKey('raw', bytes, 'AES-GCM', false, [usage])
  } finally {
    bytes.fill(0) // as KEK bytes (invariant 1 b): in JavaScript only for the length of this call
  }
}

/**
 * `unwrapKek` (both forms) and `wrapKek` of a PKCS#11 root key, one token operation each; used by
 * {@link pkcs11BridgeRootKey} and by `pkcs11RootKey` of `@kms-proxy/pkcs11-bridge`. `wrapKek`
 * never exports the KEK: the token seals a fresh AES-256 data key (its RNG, `CKM_AES_GCM`), and
 * the data key, imported non-extractable with its bytes zeroed, wraps the KEK inside WebCrypto.
 * Output: `0x31 || 0x003d || sealed data key (61) || iv (12) || AES-256-GCM(data key, iv, KEK, aad)`,
 * {@link PKCS11_ENVELOPE_LENGTH} bytes.
 */
export function pkcs11Wrapping(token: Pkcs11TokenCalls): Pick<Required<RootKey>, 'unwrapKek' | 'wrapKek'> {
  const { who } = token
  return {
    async unwrapKek(wrapped: Uint8Array, aad: Uint8Array, options?: UnwrapKekOptions): Promise<CryptoKey> {
      // Extractable only when the chain re-wraps this KEK under another root (addRoot,
      // changeRoot): subtle.wrapKey needs it; the KEK's bytes still never reach JavaScript.
      const extractable = options?.extractable === true
      if (!(wrapped instanceof Uint8Array) || wrapped[0] !== PKCS11_ENVELOPE_TAG) {
        checkWrapped(wrapped)
        return importKekBytes(await token.unwrap(wrapped, aad), who, extractable)
      }
      const end = 3 + PKCS11_WRAPPED_DATA_KEY_LENGTH
      if (wrapped.length !== PKCS11_ENVELOPE_LENGTH || ((wrapped[1]! << 8) | wrapped[2]!) !== PKCS11_WRAPPED_DATA_KEY_LENGTH || wrapped[3] !== PKCS11_DATA_KEY_TAG) {
        throw new RootKeyError('wrapped KEK has the wrong length')
      }
      const dataKey = await importDataKey(await token.unwrap(wrapped.subarray(3, end), aad), 'unwrapKey', who)
      // extractable as above: only for a re-wrap under another root, and wrapKey keeps the bytes inside WebCrypto.
      return openSealedKek(dataKey, wrapped.subarray(end), aad, extractable)
    },
    async wrapKek(kek: CryptoKey, aad: Uint8Array): Promise<Uint8Array> {
      // Checked before the token is asked: subtle.wrapKey would refuse it after a data key was made.
      if (!(kek instanceof CryptoKey) || !kek.extractable || (kek.algorithm as { name?: string }).name !== 'AES-GCM') {
        throw new TypeError('kek: expected an extractable AES-GCM CryptoKey (as the chain hands one to wrapKek)')
      }
      const { key, wrapped } = await token.dataKey(aad)
      if (wrapped.length !== PKCS11_WRAPPED_DATA_KEY_LENGTH || wrapped[0] !== PKCS11_DATA_KEY_TAG) {
        key.fill(0)
        throw new RootKeyError(`${who} returned a malformed sealed data key`)
      }
      const dataKey = await importDataKey(key, 'wrapKey', who)
      const head = new Uint8Array(3 + wrapped.length)
      head.set([PKCS11_ENVELOPE_TAG, wrapped.length >> 8, wrapped.length & 0xff])
      head.set(wrapped, 3)
      return sealKek(dataKey, kek, aad, head)
    },
  }
}

/** Throws unless `wrapped` has the shape of a KEK wrapped by a PKCS#11 root (newKek's form). */
function checkWrapped(wrapped: unknown): asserts wrapped is Uint8Array {
  if (!(wrapped instanceof Uint8Array) || wrapped[0] !== PKCS11_WRAP_TAG) {
    throw new RootKeyError('this KEK was not wrapped by a PKCS#11 root key')
  }
  if (wrapped.length !== PKCS11_WRAPPED_LENGTH) throw new RootKeyError('wrapped KEK has the wrong length')
}

const WHAT = 'the PKCS#11 bridge'

/** The answers the bridge gives, by its `error` field, as the client reports them. */
function describe(status: number, body: { error?: unknown; message?: unknown }): RootKeyError {
  const code = typeof body.error === 'string' ? body.error : undefined
  switch (code) {
    case 'unauthorized':
      return new RootKeyError(`${WHAT} refused the token (HTTP 401): check the bearer token`)
    case 'unwrap_failed':
      return new RootKeyError(`${WHAT} could not unwrap this KEK: wrong key, the wrapped KEK was altered, or the associated data differs`)
    case 'forbidden':
      return new RootKeyError(`${WHAT} refused this token for this key chain (HTTP 403): the token is scoped to other chains`)
    case 'key_missing':
      return new RootKeyError(`${WHAT} reports that its key is missing on the token${typeof body.message === 'string' ? `: ${body.message}` : ''}`)
  }
  const retryable = status === 429 || status >= 500
  const detail = typeof body.message === 'string' ? `: ${body.message}` : ''
  return new RootKeyError(`${WHAT} failed: HTTP ${status}${code ? ` ${code}` : ''}${detail}`, { retryable })
}

/**
 * A root key held in an HSM behind the PKCS#11 bridge, reached over HTTP with `fetch`. A
 * rotation costs one `/v1/generate`, an unlock one `/v1/unwrap` per KEK, `wrapKek` (this root
 * added to a chain that has KEKs) one `/v1/datakey` per KEK (1.6–2.0 ms each
 * through the bridge on SoftHSM2); the KEK bytes in each answer are imported non-extractable and
 * zeroed at once.
 *
 * @throws TypeError - no `token`, a malformed `url`, or plain http to a host that is neither
 *   loopback nor in `plainHttpHosts`.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from `newKek`, `unwrapKek`, `wrapKek`) `ERR_ROOT_KEY`: the
 *   bridge refused (a wrong token, a token scoped to other chains, a KEK that does not unwrap, a
 *   key missing on the token), `retryable` when it was unreachable or answered 429/5xx.
 * @example
 * ```ts
 * const rootKey = pkcs11BridgeRootKey({ url: 'http://127.0.0.1:7711', token: process.env.BRIDGE_TOKEN! })
 * const chain = await KeyChain.open({ rootKey, store: fileStore('./keys.json'), name: 'payments' })
 * ```
 */
export function pkcs11BridgeRootKey(options: Pkcs11BridgeRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  if (typeof options.token !== 'function' && (typeof options.token !== 'string' || options.token === '')) throw new TypeError('token: expected the bridge\'s bearer token, or a function that returns it')
  const base = checkServerUrl(options.url, 'url', options.plainHttpHosts)
  const root = base.href.endsWith('/') ? base.href : `${base.href}/`
  const token = options.token
  const retry = { timeoutMs: options.timeoutMs ?? 10_000, retries: options.retries ?? 3, backoffMs: options.backoffMs ?? 100, fetch: options.fetch }

  /** The token for one request: the option's, or what its function gives now. */
  async function currentToken(): Promise<string> {
    if (typeof token === 'string') return token
    let value: unknown
    try {
      value = await token()
    } catch (error) {
      throw new RootKeyError(`${WHAT}: the token function failed`, { cause: error, retryable: true })
    }
    if (typeof value !== 'string' || value === '') throw new RootKeyError(`${WHAT}: the token function returned no token`)
    return value
  }

  async function send(path: 'generate' | 'unwrap' | 'datakey', body: string, bearer: string) {
    const init = () => ({ method: 'POST', body, headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}` } })
    try {
      return await httpWithRetry(`${root}v1/${path}`, init, retry)
    } catch (error) {
      if (!(error instanceof HttpExchangeError)) throw error
      // Its message names no request, header or body: the bearer token cannot leak through it.
      throw new RootKeyError(`${WHAT} at ${base.origin}: ${error.message}${error.reason === 'network' ? '; is it running?' : ''}`, { retryable: true })
    }
  }

  async function call(path: 'generate' | 'unwrap' | 'datakey', payload: Record<string, string>): Promise<Record<string, unknown>> {
    const body = JSON.stringify(payload)
    const used = await currentToken()
    let answer = await send(path, body, used)
    // A token from a source that can refresh, refused: the source may hold a stale one. A
    // refused request did nothing at the bridge, so sending it again is safe.
    const invalidate = (token as { invalidate?: unknown }).invalidate
    if (answer.status === 401 && typeof token === 'function' && typeof invalidate === 'function') {
      invalidate.call(token, used)
      answer = await send(path, body, await currentToken())
    }
    const parsed = answer.json()
    const fields = (parsed !== null && typeof parsed === 'object' ? parsed : {}) as Record<string, unknown>
    if (!answer.ok) throw describe(answer.status, fields)
    return fields
  }

  function bytes(value: unknown, field: string): Uint8Array<ArrayBuffer> {
    try {
      return fromBase64(value as string) // throws on anything but a canonical base64 string
    } catch {
      throw new RootKeyError(`${WHAT} sent an unreadable answer (field ${field})`)
    }
  }

  return {
    kind: 'pkcs11-bridge',
    async newKek(aad): Promise<NewKek> {
      const out = await call('generate', { aad: toBase64(aad) })
      const wrapped = bytes(out.wrapped, 'wrapped')
      const kek = await importKekBytes(bytes(out.kek, 'kek'), WHAT)
      checkWrapped(wrapped)
      return { kek, wrapped }
    },
    ...pkcs11Wrapping({
      who: WHAT,
      async dataKey(aad) {
        const out = await call('datakey', { aad: toBase64(aad) })
        const wrapped = bytes(out.wrapped, 'wrapped') // first: if it is unreadable, no key bytes were decoded
        return { wrapped, key: bytes(out.key, 'key') }
      },
      async unwrap(wrapped, aad) {
        const out = await call('unwrap', { wrapped: toBase64(wrapped), aad: toBase64(aad) })
        // The bridge names what it unwrapped: a KEK (0x30) or a data key (0x32).
        return wrapped[0] === PKCS11_DATA_KEY_TAG ? bytes(out.key, 'key') : bytes(out.kek, 'kek')
      },
    }),
    toString: () => '[RootKey pkcs11-bridge]',
    toJSON: () => ({ kind: 'pkcs11-bridge', url: base.origin + base.pathname }),
  } as RootKey
}
