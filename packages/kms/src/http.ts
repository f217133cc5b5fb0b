import { HttpExchangeError, RootKeyError, fromBase64, httpWithRetry, transientStatus, type HttpAnswer } from '@kms-proxy/core'
import { invalidatorOf } from './credentials.js'

/** Transport options every KMS root key takes. */
export interface RetryOptions {
  /**
   * Deadline of each attempt, covering the whole exchange: connection, headers and every byte of
   * the body (a server that stalls mid-answer fails at this deadline too).
   *
   * @defaultValue 10,000 (10 s)
   */
  timeoutMs?: number
  /**
   * Attempts after the first on 429, 5xx, throttling, timeouts and network errors.
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
   * The `fetch` to use.
   *
   * @defaultValue the global `fetch`
   */
  fetch?: typeof fetch
  /**
   * Hosts the caller allows plain `http:` to, by name (compared without case). Without it, a KMS
   * URL must be `https:` unless its host is loopback (`localhost`, 127.0.0.0/8, `::1`): over plain
   * http anyone on the path reads the credentials and the KEK bytes, or answers in the KMS's place.
   *
   * @defaultValue none: plain http only to loopback
   */
  plainHttpHosts?: string[]
}

/** How one KMS speaks beyond plain HTTP statuses. */
export interface KmsProtocol {
  /** Which complete answers are worth another attempt. Default: 429 and 5xx. */
  transient?: (answer: HttpAnswer) => boolean
  /**
   * Called with a final non-2xx answer; true asks for one more round of attempts (AWS: the
   * signing clock was just corrected from the server's `Date`). Called at most once per call.
   */
  againOnce?: (answer: HttpAnswer) => boolean
  /** Which final answers refuse the credential (default: 401 and 403). */
  credentialRefused?: (answer: HttpAnswer) => boolean
  /**
   * Called once per call with such an answer: invalidates the credential the call used and says
   * whether a new one can be had (see `credentialFor`); true sends the request once more.
   */
  refreshCredential?: () => boolean
}

/**
 * A credential option of a root (a value, or a function called before each request) as one KMS
 * call uses it: `get` before each attempt, `refresh` when the KMS refused what `get` last gave.
 * Only a function with `invalidate` (made by `refreshingCredentials`) can be refreshed; a plain
 * function is called again for each attempt anyway, and a value never changes.
 */
export function credentialFor<T>(option: T | (() => Promise<T>)): { get(): Promise<T>; refresh(): boolean } {
  const invalidate = invalidatorOf<T>(option)
  let used: T | undefined
  return {
    async get() {
      used = typeof option === 'function' ? await (option as () => Promise<T>)() : option
      return used
    },
    refresh() {
      if (!invalidate || used === undefined) return false
      invalidate(used)
      return true
    },
  }
}

/** An answer's JSON body when it is an object, else undefined. */
function jsonObject(answer: HttpAnswer): Record<string, unknown> | undefined {
  const parsed = answer.json()
  return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined
}

/**
 * POSTs a JSON body through `httpWithRetry` (the deadline covers the whole answer, retries with
 * backoff and full jitter) and parses the JSON answer. No answer at all (timeout, network) is a
 * retryable ERR_ROOT_KEY; a non-2xx answer is an ERR_ROOT_KEY, retryable when `transient` says
 * so, worded by `describe` from the status and the parsed error body; the body itself is never put
 * in a message (it could echo a request field).
 */
export async function postJson(
  what: string,
  url: string,
  body: string,
  headers: () => Promise<Record<string, string>>,
  options: RetryOptions,
  describe: (status: number, error: unknown, answer: HttpAnswer) => string,
  protocol: KmsProtocol = {},
): Promise<Record<string, unknown>> {
  const transient = protocol.transient ?? transientStatus
  const send = () =>
    httpWithRetry(url, async () => ({ method: 'POST', body, headers: await headers() }), {
      timeoutMs: options.timeoutMs ?? 10_000,
      retries: options.retries ?? 3,
      backoffMs: options.backoffMs ?? 100,
      transient,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    })
  let answer: HttpAnswer
  try {
    answer = await send()
    if (!answer.ok && protocol.againOnce?.(answer)) answer = await send()
    // A credential the cache thought good was refused (revoked, or expired early): once more with a new one.
    if (!answer.ok && (protocol.credentialRefused ?? ((a: HttpAnswer) => refused(a.status)))(answer) && protocol.refreshCredential?.()) answer = await send()
  } catch (error) {
    if (!(error instanceof HttpExchangeError)) throw error
    if (error.reason === 'too-large') throw new RootKeyError(`${what}: the KMS answered with more than 1 MiB`)
    // No cause: it would add nothing the reason does not say, and the message names no request part.
    throw new RootKeyError(`${what}: the KMS did not answer (${error.reason})`, { retryable: true })
  }
  const parsed = jsonObject(answer)
  if (!answer.ok) throw new RootKeyError(`${what} failed: ${describe(answer.status, parsed, answer)}`, { retryable: transient(answer) })
  if (!parsed) throw new RootKeyError(`${what} returned no JSON object`)
  return parsed
}

/** A base64 field of a KMS answer as bytes: anything but canonical padded base64 is ERR_ROOT_KEY. */
export function base64Field(who: string, value: string): Uint8Array<ArrayBuffer> {
  try {
    return fromBase64(value)
  } catch {
    throw new RootKeyError(`${who} returned a value that is not base64`)
  }
}

/** 401 and 403 worded the same for every KMS. */
export const refused = (status: number) => status === 401 || status === 403
