/**
 * Internal: one DynamoDB JSON 1.0 call over `fetch`, signed with the KMS package's SigV4 signer:
 * retries on throttling, 5xx and no answer (core's `httpWithRetry`), one more attempt with new
 * credentials when DynamoDB refuses them, and every failure as a `StoreError` that names the
 * action and DynamoDB's error type only (never a header, a body or a credential).
 */
import { HttpExchangeError, StoreError, httpWithRetry, transientStatus, type HttpAnswer } from '@kms-proxy/core'
import { signV4, type AwsCredentials } from '@kms-proxy/kms'

/** Transport settings shared by the store and the table helper (already checked). */
export interface ClientSettings {
  region: string
  endpoint: URL
  credentials: AwsCredentials | (() => Promise<AwsCredentials>)
  timeoutMs: number
  retries: number
  backoffMs: number
  fetch?: typeof fetch
  /** Server time minus this host's, learned from a clock-skew refusal; shared by a store's calls. */
  clock: { offsetMs: number }
}

/** DynamoDB's own words for "slow down" (AWS's SDKs retry these as throttling); answered with HTTP 400. */
const THROTTLING = new Set([
  'ProvisionedThroughputExceededException',
  'ThrottlingException',
  'Throttling',
  'RequestLimitExceeded',
  'LimitExceededException',
  'TooManyRequestsException',
  'RequestThrottled',
  'RequestThrottledException',
  'TransactionInProgressException',
  'TransactionConflictException',
])
/** Errors AWS answers for expired or unknown temporary credentials: worth new credentials, once. */
const EXPIRED_CREDENTIALS = new Set(['ExpiredTokenException', 'ExpiredToken', 'UnrecognizedClientException', 'InvalidClientTokenId'])

/** Errors AWS answers when a signature's time is too far from its own (AWS's SDK list). */
const CLOCK_SKEW = new Set(['InvalidSignatureException', 'RequestExpired', 'RequestInTheFuture', 'RequestTimeTooSkewed', 'SignatureDoesNotMatch', 'AuthFailure'])
/** AWS accepts a signature up to 5 minutes off its clock; its SDKs correct from 4 minutes on. */
const SKEW_THRESHOLD_MS = 4 * 60_000

/** The largest answer read: a Query page is at most 1 MB of items, base64 and JSON make it larger. */
const MAX_ANSWER_BYTES = 16 << 20

/** The AWS error name of an answer: `__type` in the body (`namespace#Name`), else the `x-amzn-ErrorType` header. */
export function errorType(answer: HttpAnswer): string | undefined {
  const named = (answer.json() as { __type?: unknown } | undefined)?.__type ?? answer.headers.get('x-amzn-errortype')
  return typeof named === 'string' ? named.split('#').pop()!.split(':')[0] : undefined
}

const transient = (answer: HttpAnswer) => transientStatus(answer) || (answer.status === 400 && THROTTLING.has(errorType(answer) ?? ''))
const credentialsRefused = (answer: HttpAnswer) =>
  answer.status === 401 || answer.status === 403 || (answer.status === 400 && EXPIRED_CREDENTIALS.has(errorType(answer) ?? ''))

/**
 * Corrects the signing clock from a clock-skew refusal's `Date` header; true when it moved by 4
 * minutes or more, so that one more attempt is worth it. A cached answer (`Age`) tells nothing.
 */
function correctClock(answer: HttpAnswer, offsetUsed: number, clock: { offsetMs: number }): boolean {
  if ((answer.status !== 400 && answer.status !== 403) || !CLOCK_SKEW.has(errorType(answer) ?? '') || answer.headers.has('age')) return false
  const server = Date.parse(answer.headers.get('date') ?? '')
  if (Number.isNaN(server) || Math.abs(server - Date.now() - offsetUsed) < SKEW_THRESHOLD_MS) return false
  clock.offsetMs = server - Date.now()
  return true
}

/** A DynamoDB answer that is not 2xx, after the retries: kept so that callers can tell a failed condition. */
export class DynamoDbAnswerError extends StoreError {
  constructor(
    message: string,
    /** DynamoDB's error type (`ConditionalCheckFailedException`), when it gave one. */
    readonly type: string | undefined,
    retryable: boolean,
  ) {
    super(message, { retryable })
  }
}

const HINTS: Record<string, string> = {
  ResourceNotFoundException: ' (no such table in this region and account?)',
  AccessDeniedException: ' (the credentials lack a dynamodb: permission on the table)',
  ValidationException: ' (a request DynamoDB does not accept: a key schema other than pk (S), sk (S)?)',
}

/**
 * Calls one DynamoDB action and returns the parsed JSON answer. A clock-skew refusal whose `Date`
 * is 4 minutes or more from the signing clock corrects that clock (for later calls too) and is
 * sent once more. A refused credential from a function with `invalidate` (a
 * `refreshingCredentials`) is invalidated and the call sent once more. Every failure is a
 * `StoreError`: a {@link DynamoDbAnswerError} for an answer, retryable for throttling, 5xx and no
 * answer at all.
 */
export async function dynamoDbCall(settings: ClientSettings, action: string, payload: unknown): Promise<Record<string, unknown>> {
  const body = JSON.stringify(payload)
  const source = settings.credentials
  let used: AwsCredentials | undefined
  let offsetUsed = settings.clock.offsetMs
  const init = async (): Promise<RequestInit> => {
    if (typeof source === 'function') {
      try {
        used = await source()
      } catch (error) {
        // A KmsProxyError of the source (ERR_ROOT_KEY from refreshingCredentials) keeps its
        // retryable. No cause: a vendor's error may quote a token.
        const retryable = (error as { retryable?: unknown } | undefined)?.retryable !== false
        throw new StoreError('DynamoDB: the credentials function failed', { retryable })
      }
      if (typeof used?.accessKeyId !== 'string' || typeof used.secretAccessKey !== 'string') throw new StoreError('DynamoDB: the credentials function returned no { accessKeyId, secretAccessKey }')
    } else used = source
    offsetUsed = settings.clock.offsetMs
    const headers = await signV4({
      method: 'POST',
      url: settings.endpoint,
      headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': `DynamoDB_20120810.${action}` },
      body,
      region: settings.region,
      service: 'dynamodb',
      credentials: used,
      date: new Date(Date.now() + offsetUsed),
    })
    return { method: 'POST', headers, body }
  }
  const send = () =>
    httpWithRetry(settings.endpoint, init, {
      timeoutMs: settings.timeoutMs,
      retries: settings.retries,
      backoffMs: settings.backoffMs,
      transient,
      maxBodyBytes: MAX_ANSWER_BYTES,
      ...(settings.fetch ? { fetch: settings.fetch } : {}),
    })
  let answer: HttpAnswer
  try {
    answer = await send()
    if (!answer.ok && correctClock(answer, offsetUsed, settings.clock)) answer = await send()
    const invalidate = typeof source === 'function' ? (source as { invalidate?: unknown }).invalidate : undefined
    // A credential the cache still thought good was refused (expired early, revoked): once more
    // with a new one. A refused request was not applied, so sending it again is safe.
    if (!answer.ok && credentialsRefused(answer) && typeof invalidate === 'function' && used) {
      invalidate.call(source, used)
      answer = await send()
    }
  } catch (error) {
    if (!(error instanceof HttpExchangeError)) throw error
    throw new StoreError(`DynamoDB ${action}: no answer (${error.reason})`, { retryable: error.reason !== 'too-large' })
  }
  const parsed = answer.json()
  if (!answer.ok) {
    const type = errorType(answer)
    throw new DynamoDbAnswerError(`DynamoDB ${action} failed: ${type ?? 'an error'} (HTTP ${answer.status})${HINTS[type ?? ''] ?? ''}`, type, transient(answer))
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new StoreError(`DynamoDB ${action} returned no JSON object`)
  return parsed as Record<string, unknown>
}
