/**
 * What the credential providers share: their transport options, the plain-http rule with the
 * metadata hosts each provider allows, and one request with retries whose failures are quiet
 * `ERR_ROOT_KEY`s (no URL query, header or body in a message: they hold tokens).
 */
import { HttpExchangeError, RootKeyError, checkServerUrl, httpWithRetry, transientStatus, type HttpAnswer } from '@kms-proxy/core'
import type { RefreshingCredentialsOptions } from './credentials.js'

/** Options every credential provider takes: the cache's and the transport's. */
export interface CredentialSourceOptions extends RefreshingCredentialsOptions {
  /**
   * Deadline of each attempt, covering the whole exchange.
   *
   * @defaultValue 5,000 (5 s)
   */
  timeoutMs?: number
  /**
   * Attempts after the first on 429, 5xx, timeouts and network errors.
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
   * More hosts allowed over plain `http:`, by name. Loopback and the provider's own link-local
   * metadata hosts are always allowed; anything else must be `https:`.
   *
   * @defaultValue none
   */
  plainHttpHosts?: string[]
}

/** A provider's URL option: https, loopback, the provider's metadata hosts, or `plainHttpHosts`. */
export function sourceUrl(value: string, field: string, metadataHosts: readonly string[], options: CredentialSourceOptions): URL {
  if (typeof value !== 'string') throw new TypeError(`${field}: expected a URL`)
  if (options.plainHttpHosts !== undefined && !Array.isArray(options.plainHttpHosts)) throw new TypeError('plainHttpHosts: expected an array of host names')
  return checkServerUrl(value, field, [...metadataHosts, ...(options.plainHttpHosts ?? [])])
}

/** Checks the transport options at construction, as the roots do. */
export function checkSourceOptions(options: unknown): asserts options is CredentialSourceOptions {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const o = options as CredentialSourceOptions
  if (o.timeoutMs !== undefined && !(typeof o.timeoutMs === 'number' && o.timeoutMs > 0 && Number.isFinite(o.timeoutMs))) throw new RangeError('timeoutMs: expected a positive number')
  if (o.retries !== undefined && !(Number.isInteger(o.retries) && o.retries >= 0)) throw new RangeError('retries: expected an integer, 0 or more')
  if (o.fetch !== undefined && typeof o.fetch !== 'function') throw new TypeError('fetch: expected a function')
}

/** A short error code from a source's answer, or nothing: never free text, which may quote a token. */
export function safeCode(value: unknown): string | undefined {
  return typeof value === 'string' && /^[A-Za-z][A-Za-z0-9_.:-]{0,63}$/.test(value) ? value : undefined
}

/**
 * One request to a credential source, with retries. No complete answer is a retryable
 * ERR_ROOT_KEY ("did not answer"); a non-2xx answer is ERR_ROOT_KEY with its status and the
 * source's error code (from `code`), retryable when `transient` says so.
 */
export async function askSource(
  what: string,
  url: string | URL,
  init: () => Promise<RequestInit>,
  options: CredentialSourceOptions,
  describe: { code?: (answer: HttpAnswer) => string | undefined; transient?: (answer: HttpAnswer, code: string | undefined) => boolean } = {},
): Promise<HttpAnswer> {
  const code = (answer: HttpAnswer) => safeCode(describe.code?.(answer))
  const transient = (answer: HttpAnswer) => transientStatus(answer) || describe.transient?.(answer, code(answer)) === true
  let answer: HttpAnswer
  try {
    answer = await httpWithRetry(url, init, {
      timeoutMs: options.timeoutMs ?? 5_000,
      retries: options.retries ?? 3,
      backoffMs: options.backoffMs ?? 100,
      maxBodyBytes: 64 * 1024,
      transient,
      ...(options.fetch ? { fetch: options.fetch } : {}),
    })
  } catch (error) {
    if (!(error instanceof HttpExchangeError)) throw error
    if (error.reason === 'too-large') throw new RootKeyError(`${what}: the credential source answered with more than 64 KiB`)
    throw new RootKeyError(`${what}: the credential source did not answer (${error.reason})`, { retryable: true })
  }
  if (!answer.ok) {
    const named = code(answer)
    throw new RootKeyError(`${what} failed: HTTP ${answer.status}${named ? ` ${named}` : ''}`, { retryable: transient(answer) })
  }
  return answer
}

/** An answer's JSON body when it is an object, else an empty object (its fields are then reported missing). */
export function jsonOf(answer: HttpAnswer): Record<string, unknown> {
  const parsed = answer.json()
  return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : {}
}

/** A string the caller's function returned (a token read from a file), trimmed; else a quiet ERR_ROOT_KEY. */
export async function callerToken(what: string, source: string | (() => Promise<string>)): Promise<string> {
  let token: unknown
  try {
    token = typeof source === 'function' ? await source() : source
  } catch (error) {
    // A file error's code (ENOENT, EACCES) helps; its message holds a path at most, but stay terse.
    const c = safeCode((error as { code?: unknown } | undefined)?.code) ?? safeCode((error as Error | undefined)?.name) ?? 'error'
    throw new RootKeyError(`${what} could not be read (${c})`, { retryable: true })
  }
  if (typeof token !== 'string' || token.trim() === '') throw new RootKeyError(`${what} is empty`, { retryable: true })
  const trimmed = token.trim()
  // A header value cannot hold a line break; refusing here keeps fetch's own error (which could quote it) away.
  if (/[\r\n\0]/.test(trimmed)) throw new RootKeyError(`${what} holds a line break`)
  return trimmed
}

/** A time in an answer (RFC 3339, or seconds since the epoch as a number or a string) as milliseconds. */
export function expiryOf(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isFinite(value)) return value * 1000
  if (typeof value !== 'string' || value === '') return undefined
  if (/^\d+(\.\d+)?$/.test(value)) return Number(value) * 1000
  const ms = Date.parse(value)
  return Number.isNaN(ms) ? undefined : ms
}
