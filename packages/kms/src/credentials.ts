/**
 * Credentials that expire: a cache by expiry in front of any source (a metadata server, STS, a
 * vendor's provider), with concurrent callers sharing one fetch, and `invalidate` for the roots to
 * call when a KMS refuses a credential that the cache still thought good.
 */
import { RootKeyError, isKmsProxyError } from '@kms-proxy/core'

/** What a credential source returns: the value and, when the source says it, when it expires. */
export interface ExpiringCredential<T> {
  /** The credential: AWS credentials, an access token, a Vault token. */
  value: T
  /** When it stops working, in milliseconds since the epoch. Absent: it is kept until invalidated. */
  expiresAt?: number
}

/** Options of {@link refreshingCredentials}. */
export interface RefreshingCredentialsOptions {
  /**
   * How long before `expiresAt` a new credential is fetched. For short lifetimes the margin is
   * half the lifetime instead, when that is smaller: a credential valid 2 s is refreshed after 1 s.
   *
   * @defaultValue 300,000 (5 minutes)
   */
  refreshBeforeMs?: number
  /**
   * This host's clock in milliseconds since the epoch.
   *
   * @defaultValue `Date.now`
   */
  now?: () => number
}

/**
 * A function returning a current credential, as the KMS roots take for `credentials`,
 * `accessToken` or `token`, with {@link RefreshingCredentials.invalidate}.
 */
export interface RefreshingCredentials<T> {
  /** The cached credential while it is fresh; otherwise one fetch, shared by concurrent callers. */
  (): Promise<T>
  /**
   * Drops the cached credential, so that the next call fetches a new one. With `stale`, drops it
   * only if it is still that value: a caller whose request was refused with an old credential
   * does not throw away the new one another caller just fetched. The KMS roots call it when the
   * KMS refuses a credential (401, 403, AWS `ExpiredTokenException`), then retry once.
   */
  invalidate(stale?: T): void
}

/** Refuses a credential to `String` and `JSON.stringify`: a log line must never carry it. */
const quiet = { toString: () => '[RefreshingCredentials]', toJSON: () => '[RefreshingCredentials]' }

/**
 * Wraps a credential source in a cache by expiry. A credential is kept until
 * `expiresAt - min(refreshBeforeMs, half its lifetime)`; concurrent calls share one fetch; a failed
 * fetch is not cached (the next call tries again), but while the cached credential has not yet
 * reached `expiresAt` a failed refresh returns it, so a metadata server that blinks during the
 * refresh window costs nothing. A credential without `expiresAt` is kept until
 * {@link RefreshingCredentials.invalidate}.
 *
 * @param fetch - the source: called only when the cache is empty, stale or invalidated.
 * @throws TypeError - (at once) `fetch` is not a function, or a bad option.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from the returned function) `ERR_ROOT_KEY`: the
 *   source failed or returned no value. A `KmsProxyError` from the source is passed on as it is
 *   (the providers of this package throw `ERR_ROOT_KEY`, `retryable` when the source was
 *   unreachable); any other error becomes a retryable `ERR_ROOT_KEY` naming only its class, since
 *   a vendor's message may quote a token.
 * @example
 * ```ts
 * import { fromNodeProviderChain } from '@aws-sdk/credential-providers'
 * const provider = fromNodeProviderChain()
 * const credentials = refreshingCredentials(async () => {
 *   const c = await provider()
 *   return { value: c, expiresAt: c.expiration?.getTime() }
 * })
 * const rootKey = awsKmsRootKey({ keyId: 'alias/app', region: 'eu-central-1', credentials })
 * ```
 */
export function refreshingCredentials<T>(fetch: () => Promise<ExpiringCredential<T>>, options: RefreshingCredentialsOptions = {}): RefreshingCredentials<T> {
  if (typeof fetch !== 'function') throw new TypeError('fetch: expected a function returning { value, expiresAt? }')
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const refreshBeforeMs = options.refreshBeforeMs ?? 300_000
  if (typeof refreshBeforeMs !== 'number' || !(refreshBeforeMs >= 0) || !Number.isFinite(refreshBeforeMs)) throw new RangeError('refreshBeforeMs: expected a number of milliseconds, 0 or more')
  if (options.now !== undefined && typeof options.now !== 'function') throw new TypeError('now: expected a function returning milliseconds since the epoch')
  const now = options.now ?? Date.now

  let cached: { value: T; expiresAt: number; refreshAt: number } | undefined
  let pending: Promise<T> | undefined
  /** Bumped by invalidate, so that a fetch started before it does not refill the cache. */
  let generation = 0

  async function load(gen: number): Promise<T> {
    const startedAt = now()
    let got: ExpiringCredential<T>
    try {
      got = await fetch()
    } catch (error) {
      if (isKmsProxyError(error)) throw error
      const name = (error as Error | undefined)?.name
      // Only the class name: a vendor SDK's message may quote the token or the request.
      throw new RootKeyError(`credentials: the source failed (${typeof name === 'string' && /^[A-Za-z]{1,64}$/.test(name) ? name : 'error'})`, { retryable: true })
    }
    if (typeof got !== 'object' || got === null || got.value === undefined || got.value === null || (got.value as unknown) === '') {
      throw new RootKeyError('credentials: the source returned no value')
    }
    const expiresAt = got.expiresAt ?? Infinity
    if (typeof expiresAt !== 'number' || Number.isNaN(expiresAt)) throw new RootKeyError('credentials: the source returned an expiry that is not a number of milliseconds')
    const margin = Math.min(refreshBeforeMs, Math.max(0, expiresAt - startedAt) / 2)
    if (gen === generation) cached = { value: got.value, expiresAt, refreshAt: expiresAt - margin }
    return got.value
  }

  const get = async (): Promise<T> => {
    const held = cached
    if (held && now() < held.refreshAt) return held.value
    if (!pending) {
      const gen = generation
      const p: Promise<T> = load(gen).finally(() => {
        if (pending === p) pending = undefined
      })
      pending = p
    }
    try {
      return await pending
    } catch (error) {
      // A refresh that failed while the credential still works: keep using it until it expires.
      if (held && held === cached && now() < held.expiresAt) return held.value
      throw error
    }
  }
  const invalidate = (stale?: T): void => {
    if (stale !== undefined && cached !== undefined && cached.value !== stale) return
    cached = undefined
    pending = undefined
    generation++
  }
  return Object.assign(get, { invalidate }, quiet)
}

/** The `invalidate` of a credential function, if it has one (a {@link refreshingCredentials}). */
export function invalidatorOf<T>(source: unknown): ((stale: T) => void) | undefined {
  const invalidate = (source as { invalidate?: unknown } | undefined)?.invalidate
  return typeof source === 'function' && typeof invalidate === 'function' ? (stale: T) => (invalidate as (stale: T) => void).call(source, stale) : undefined
}
