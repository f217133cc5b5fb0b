/**
 * A root key held in an HSM behind the PKCS#11 bridge (`@kms-proxy/pkcs11-bridge`), reached over
 * HTTP with `fetch`: runs on every runtime (browsers excepted in practice: the bridge listens on
 * loopback or a Unix socket). The bridge generates a KEK with the token's RNG, wraps it with
 * CKM_AES_GCM under a non-extractable AES-256 key on the token, and returns both; the KEK bytes
 * are imported here as a non-extractable CryptoKey and zeroed at once (invariant 1 (b)).
 *
 * Wire protocol (JSON, `Authorization: Bearer <token>`):
 *   POST {url}/v1/generate {aad}          -> {kek, wrapped}
 *   POST {url}/v1/unwrap   {wrapped, aad} -> {kek}
 * All byte fields are standard base64. `wrapped` is `0x30 || iv (12) || ciphertext (16) || tag (16)`.
 */
import { KEK_USAGES, RootKeyError, type NewKek, type RootKey } from '@kms-proxy/core'

export interface Pkcs11BridgeRootKeyOptions {
  /** Base URL of the bridge, such as http://127.0.0.1:7711 (what startPkcs11Bridge returns). */
  url: string
  /** The bridge's bearer token. Never appears in errors, `String()` or `JSON.stringify`. */
  token: string
  /** Per attempt. Default 10 s. */
  timeoutMs?: number
  /** Attempts after the first on 429, 5xx and network errors. Default 3. */
  retries?: number
  /** First backoff; doubles each retry, with full jitter. Default 100 ms. */
  backoffMs?: number
  /** A fetch to use instead of the global one (a Unix-socket adapter, a counting wrapper). */
  fetch?: typeof fetch
}

/** First byte of a KEK wrapped by a PKCS#11 key (through the bridge or in process). */
export const PKCS11_WRAP_TAG = 0x30
/** Length of a wrapped KEK: tag, 12-byte IV, 16-byte KEK, 16-byte GCM tag. */
export const PKCS11_WRAPPED_LENGTH = 1 + 12 + 16 + 16

export function toBase64(b: Uint8Array): string {
  let s = ''
  for (const x of b) s += String.fromCharCode(x)
  return btoa(s)
}

export function fromBase64(s: unknown): Uint8Array<ArrayBuffer> {
  if (typeof s !== 'string') throw new TypeError('expected a base64 string')
  const binary = atob(s)
  const out = new Uint8Array(binary.length)
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i)
  return out
}

/** Imports 16 KEK bytes as a non-extractable AES-GCM key and zeroes them, whatever happens. */
export async function importKekBytes(bytes: Uint8Array<ArrayBuffer>, who: string): Promise<CryptoKey> {
  try {
    if (bytes.length !== 16) throw new RootKeyError(`${who} returned a ${bytes.length * 8}-bit KEK; expected 128`)
    return await crypto.subtle.importKey('raw', bytes, { name: 'AES-GCM' }, false, KEK_USAGES)
  } finally {
    bytes.fill(0) // invariant 1 (b): KEK bytes from a byte-oriented root, zeroed at once
  }
}

/** Throws unless `wrapped` has the shape of a KEK wrapped by a PKCS#11 root. */
export function checkWrapped(wrapped: unknown): asserts wrapped is Uint8Array {
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
    case 'key_missing':
      return new RootKeyError(`${WHAT} reports that its key is missing on the token${typeof body.message === 'string' ? `: ${body.message}` : ''}`)
  }
  const retryable = status === 429 || status >= 500
  const detail = typeof body.message === 'string' ? `: ${body.message}` : ''
  return new RootKeyError(`${WHAT} failed: HTTP ${status}${code ? ` ${code}` : ''}${detail}`, { retryable })
}

export function pkcs11BridgeRootKey(options: Pkcs11BridgeRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  if (typeof options.token !== 'string' || options.token === '') throw new TypeError('token: expected the bridge\'s bearer token')
  let base: URL
  try {
    base = new URL(options.url)
  } catch {
    throw new TypeError('url: expected the bridge\'s URL, such as http://127.0.0.1:7711')
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new TypeError('url: expected an http: or https: URL')
  const root = base.href.endsWith('/') ? base.href : `${base.href}/`
  const token = options.token
  const doFetch = options.fetch ?? ((input: RequestInfo | URL, init?: RequestInit) => globalThis.fetch(input, init))
  const retries = options.retries ?? 3
  const backoff = options.backoffMs ?? 100
  const timeoutMs = options.timeoutMs ?? 10_000

  async function call(path: 'generate' | 'unwrap', payload: Record<string, string>): Promise<Record<string, unknown>> {
    const body = JSON.stringify(payload)
    const url = `${root}v1/${path}`
    for (let attempt = 0; ; attempt++) {
      const controller = new AbortController()
      const timer = setTimeout(() => controller.abort(), timeoutMs)
      let response: Response | undefined
      let failure: unknown
      try {
        response = await doFetch(url, {
          method: 'POST',
          body,
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          signal: controller.signal,
        })
      } catch (error) {
        failure = error
      } finally {
        clearTimeout(timer)
      }
      const transient = response === undefined || response.status === 429 || response.status >= 500
      if (!transient || attempt >= retries) {
        if (!response) {
          // No cause: a fetch error may carry the request, and with it the Authorization header.
          const name = (failure as Error | undefined)?.name ?? 'network error'
          throw new RootKeyError(`${WHAT} did not answer at ${base.origin} (${name}): is it running?`, { retryable: true })
        }
        const text = await response.text()
        let parsed: Record<string, unknown> = {}
        try {
          parsed = JSON.parse(text) as Record<string, unknown>
        } catch {
          // Not JSON: keep the status.
        }
        if (!response.ok) throw describe(response.status, parsed)
        return parsed
      }
      await response?.body?.cancel().catch(() => {})
      const jitter = new Uint32Array(1)
      crypto.getRandomValues(jitter)
      await new Promise((resolve) => setTimeout(resolve, (backoff * 2 ** attempt * jitter[0]!) / 2 ** 32))
    }
  }

  function bytes(value: unknown, field: string): Uint8Array<ArrayBuffer> {
    try {
      return fromBase64(value)
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
    async unwrapKek(wrapped, aad) {
      checkWrapped(wrapped)
      const out = await call('unwrap', { wrapped: toBase64(wrapped), aad: toBase64(aad) })
      return importKekBytes(bytes(out.kek, 'kek'), WHAT)
    },
    toString: () => '[RootKey pkcs11-bridge]',
    toJSON: () => ({ kind: 'pkcs11-bridge', url: base.origin + base.pathname }),
  } as RootKey
}
