/**
 * HTTP for the adapters that talk to a server through `fetch` (KMS root keys, the PKCS#11 bridge
 * client, the etcd store): one exchange whose deadline covers the whole answer, retries for root
 * keys, and the rule for plain http. Written once here so that every adapter gets the same
 * guarantees; none of it touches key material.
 *
 * Why the deadline covers the body: `fetch` resolves at the response headers. A server or proxy
 * that sends headers and then stalls the body would otherwise hang the call for ever, and a key
 * chain that coalesces unwraps would keep that pending call and hang every later decrypt.
 */
import { join } from './internal/bytes.js'

/** Why an exchange produced no usable answer. */
export type HttpFailureReason = 'timeout' | 'network' | 'too-large'

/**
 * An exchange that produced no answer: no complete answer within the deadline, a network
 * failure, or a body over the limit. Adapters turn it into their own `KmsProxyError`
 * (`ERR_ROOT_KEY` or `ERR_STORE`, retryable); it carries no request, header or body, so it can
 * never echo a credential.
 */
export class HttpExchangeError extends Error {
  /** What went wrong; `network` includes a refused connection and a reset. */
  readonly reason: HttpFailureReason

  /**
   * For adapters and tests; {@link httpExchange} throws it.
   *
   * @param message - what failed, with no request, header or body in it.
   */
  constructor(reason: HttpFailureReason, message: string) {
    super(message)
    this.name = 'HttpExchangeError'
    this.reason = reason
  }
}

/** A complete answer: the status, the headers and the whole body, read within the deadline. */
export interface HttpAnswer {
  /** The HTTP status code. */
  readonly status: number
  /** True for a 2xx status. */
  readonly ok: boolean
  /** The response headers. */
  readonly headers: Headers
  /** The whole body. */
  readonly body: Uint8Array
  /** The body as UTF-8 text. */
  text(): string
  /** The body parsed as JSON, or `undefined` when it is not JSON. */
  json(): unknown
}

/** Options of {@link httpExchange}. */
export interface HttpExchangeOptions {
  /** Deadline for the whole exchange: connection, headers and every byte of the body. */
  timeoutMs: number
  /**
   * The `fetch` to use.
   *
   * @defaultValue the global `fetch`
   */
  fetch?: typeof fetch
  /**
   * Largest body accepted; a longer one fails with reason `too-large`.
   *
   * @defaultValue 1 MiB (1,048,576)
   */
  maxBodyBytes?: number
}

const DEFAULT_MAX_BODY = 1 << 20

/**
 * One HTTP request whose deadline covers the whole exchange, body included. Resolves with the
 * complete answer whatever its status; rejects with {@link HttpExchangeError} only when there is
 * no complete answer. The deadline holds even with a `fetch` that ignores its abort signal.
 *
 * @throws {@link HttpExchangeError} - no complete answer: `timeout`, `network` or `too-large`.
 * @example
 * ```ts
 * const answer = await httpExchange(url, { method: 'POST', body }, { timeoutMs: 10_000 })
 * if (!answer.ok) throw new RootKeyError(`my-kms answered HTTP ${answer.status}`, { retryable: answer.status >= 500 })
 * ```
 */
export async function httpExchange(url: string | URL, init: RequestInit, options: HttpExchangeOptions): Promise<HttpAnswer> {
  const timeoutMs = options.timeoutMs
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new RangeError('timeoutMs: expected a positive number')
  const maxBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY
  const doFetch = options.fetch ?? globalThis.fetch
  const controller = new AbortController()
  let timer: ReturnType<typeof setTimeout> | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort()
      reject(new HttpExchangeError('timeout', `no complete answer within ${timeoutMs} ms`))
    }, timeoutMs)
  })
  deadline.catch(() => {}) // observed below; never an unhandled rejection
  let response: Response | undefined
  try {
    const exchange = (async () => {
      try {
        // Called on globalThis, not as a method of options: browsers and workerd insist.
        response = await doFetch.call(globalThis, url, { ...init, signal: controller.signal })
      } catch (error) {
        if (controller.signal.aborted) throw new HttpExchangeError('timeout', `no complete answer within ${timeoutMs} ms`)
        // No cause: a fetch error may carry the request, and with it an Authorization header.
        throw new HttpExchangeError('network', `no answer (${(error as Error | undefined)?.name ?? 'network error'})`)
      }
      const body = await readBody(response, maxBytes, controller.signal, timeoutMs)
      return answer(response, body)
    })()
    return await Promise.race([exchange, deadline])
  } catch (error) {
    // Free the connection of an answer we stopped reading.
    ;(response as Response | undefined)?.body?.cancel().catch(() => {})
    throw error
  } finally {
    clearTimeout(timer)
  }
}

async function readBody(response: Response, maxBytes: number, signal: AbortSignal, timeoutMs: number): Promise<Uint8Array> {
  const declared = Number(response.headers.get('content-length'))
  if (Number.isFinite(declared) && declared > maxBytes) {
    throw new HttpExchangeError('too-large', `the answer is over ${maxBytes} bytes`)
  }
  if (!response.body) return new Uint8Array(0)
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let length = 0
  try {
    for (;;) {
      let next: ReadableStreamReadResult<Uint8Array>
      try {
        next = await reader.read()
      } catch (error) {
        if (signal.aborted) throw new HttpExchangeError('timeout', `no complete answer within ${timeoutMs} ms`)
        throw new HttpExchangeError('network', `the answer broke off (${(error as Error | undefined)?.name ?? 'network error'})`)
      }
      if (next.done) break
      length += next.value.length
      if (length > maxBytes) throw new HttpExchangeError('too-large', `the answer is over ${maxBytes} bytes`)
      chunks.push(next.value)
    }
  } catch (error) {
    reader.cancel().catch(() => {})
    throw error
  }
  // join(chunks), not concat(...chunks): a body read in very many small chunks would exceed the
  // engine's limit on spread arguments.
  return join(chunks)
}

function answer(response: Response, body: Uint8Array): HttpAnswer {
  return {
    status: response.status,
    ok: response.ok,
    headers: response.headers,
    body,
    text: () => new TextDecoder().decode(body),
    json() {
      try {
        return JSON.parse(new TextDecoder().decode(body)) as unknown
      } catch {
        return undefined
      }
    },
  }
}

/** Options of {@link httpWithRetry}. */
export interface HttpRetryOptions extends HttpExchangeOptions {
  /**
   * Attempts after the first.
   *
   * @defaultValue 3
   */
  retries?: number
  /**
   * First backoff in milliseconds; doubles each retry, with full jitter.
   *
   * @defaultValue 100
   */
  backoffMs?: number
  /**
   * Whether a complete answer is worth another attempt. Default: 429 and 5xx. A KMS that
   * signals throttling another way (AWS KMS: HTTP 400 `ThrottlingException`) adds its own test.
   *
   * @defaultValue {@link transientStatus}
   */
  transient?: (answer: HttpAnswer) => boolean
}

/** The default {@link HttpRetryOptions.transient}: 429 and every 5xx. */
export const transientStatus = (answer: HttpAnswer): boolean => answer.status === 429 || answer.status >= 500

/**
 * {@link httpExchange} with retries on failures and transient answers, with exponential backoff
 * and full jitter. `init` is called for each attempt (a signature may include the time). Resolves
 * with the last complete answer (transient or not) once retries run out; rejects with the last
 * {@link HttpExchangeError} when no attempt produced an answer.
 *
 * @throws {@link HttpExchangeError} - no attempt produced a complete answer.
 * @example
 * ```ts
 * const answer = await httpWithRetry(url, async () => ({ method: 'POST', headers: await sign(), body }), { timeoutMs: 10_000 })
 * ```
 */
export async function httpWithRetry(
  url: string | URL,
  init: () => RequestInit | Promise<RequestInit>,
  options: HttpRetryOptions,
): Promise<HttpAnswer> {
  const retries = options.retries ?? 3
  const base = options.backoffMs ?? 100
  const transient = options.transient ?? transientStatus
  for (let attempt = 0; ; attempt++) {
    let result: HttpAnswer | undefined
    try {
      result = await httpExchange(url, await init(), options)
    } catch (error) {
      if (!(error instanceof HttpExchangeError) || attempt >= retries) throw error
    }
    if (result && (attempt >= retries || !transient(result))) return result
    const jitter = crypto.getRandomValues(new Uint32Array(1))[0]!
    await new Promise((resolve) => setTimeout(resolve, (base * 2 ** attempt * jitter) / 2 ** 32))
  }
}

/** True for `localhost`, any 127.0.0.0/8 address and `::1`: names that never leave this machine. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, '')
  if (h === 'localhost' || h.endsWith('.localhost') || h === '::1') return true
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)
}

/**
 * Parses an adapter's server URL and applies the transport rule: `https:` anywhere; plain
 * `http:` only to a loopback host or to a host the caller named in `plainHttpHosts` (the
 * explicit opt-in), because over plain http anyone on the path can read credentials and KEK
 * bytes, or answer in the server's place. `field` names the option in error messages.
 *
 * @throws TypeError - not a URL, not http(s), credentials in the URL, or plain http to a host
 *   that is neither loopback nor listed in `plainHttpHosts`.
 * @example
 * ```ts
 * checkServerUrl('https://vault.internal:8200', 'address')                  // ok
 * checkServerUrl('http://vault.internal:8200', 'address', ['vault.internal']) // ok: named explicitly
 * checkServerUrl('http://vault.internal:8200', 'address')                   // TypeError
 * ```
 */
export function checkServerUrl(value: string | URL, field: string, plainHttpHosts?: readonly string[]): URL {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new TypeError(`${field}: not a URL`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`${field}: expected an https: URL`)
  if (url.username || url.password) throw new TypeError(`${field}: put credentials in their own options, not in the URL`)
  if (plainHttpHosts !== undefined && (!Array.isArray(plainHttpHosts) || plainHttpHosts.some((h) => typeof h !== 'string'))) {
    throw new TypeError('plainHttpHosts: expected an array of host names')
  }
  if (url.protocol === 'http:' && !isLoopbackHost(url.hostname)) {
    const host = url.hostname.toLowerCase()
    if (!plainHttpHosts?.some((h) => h.toLowerCase() === host)) {
      throw new TypeError(
        `${field}: plain http to ${url.hostname} would expose credentials and keys on the network; use https:, or name the host in plainHttpHosts`,
      )
    }
  }
  return url
}
