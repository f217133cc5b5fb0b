import { KEK_USAGES, RootKeyError } from '@kms-proxy/core'

export interface RetryOptions {
  /** Per attempt. Default 10 s. */
  timeoutMs?: number
  /** Attempts after the first on 429, 5xx and network errors. Default 3. */
  retries?: number
  /** First backoff; doubles each retry, with full jitter. Default 100 ms. */
  backoffMs?: number
  fetch?: typeof fetch
}

/**
 * fetch with a timeout per attempt and retries with exponential backoff and full jitter on 429,
 * 5xx and network errors. `describe(response)` turns a final non-2xx answer into an error.
 */
export async function fetchWithRetry(
  what: string,
  url: string,
  init: () => Promise<RequestInit> | RequestInit,
  options: RetryOptions,
): Promise<Response> {
  const doFetch = options.fetch ?? globalThis.fetch
  const retries = options.retries ?? 3
  const base = options.backoffMs ?? 100
  for (let attempt = 0; ; attempt++) {
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(), options.timeoutMs ?? 10_000)
    let response: Response | undefined
    let failure: unknown
    try {
      response = await doFetch(url, { ...(await init()), signal: controller.signal })
    } catch (error) {
      failure = error
    } finally {
      clearTimeout(timer)
    }
    const transient = response === undefined || response.status === 429 || response.status >= 500
    if (!transient) return response!
    if (attempt >= retries) {
      if (response) return response
      throw new RootKeyError(`${what}: the KMS did not answer (${(failure as Error)?.name ?? 'network error'})`, { cause: failure, retryable: true })
    }
    await response?.body?.cancel().catch(() => {})
    const jitter = new Uint32Array(1)
    crypto.getRandomValues(jitter)
    await new Promise((resolve) => setTimeout(resolve, (base * 2 ** attempt * jitter[0]!) / 2 ** 32))
  }
}

export function fromBase64(s: string): Uint8Array<ArrayBuffer> {
  const binary = atob(s)
  const out = new Uint8Array(binary.length)
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i)
  return out
}

export function toBase64(b: Uint8Array): string {
  let s = ''
  for (const x of b) s += String.fromCharCode(x)
  return btoa(s)
}

/** Imports 16 KEK bytes from a byte-oriented root as a non-extractable key and zeroes them. */
export async function importKek(who: string, plaintext: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
  try {
    if (plaintext.length !== 16) throw new RootKeyError(`${who} returned a ${plaintext.length * 8}-bit key; expected 128`)
    return await crypto.subtle.importKey('raw', plaintext, { name: 'AES-GCM' }, false, KEK_USAGES)
  } finally {
    plaintext.fill(0) // invariant 1 (b): KEK bytes from a byte-oriented root, zeroed at once
  }
}

/**
 * POSTs a JSON body with fetchWithRetry and parses the JSON answer. A non-2xx answer becomes an
 * ERR_ROOT_KEY error, retryable on 429 and 5xx, worded by `describe` from the status and the
 * parsed error body; the body itself is never put in a message (it could echo a request field).
 */
export async function postJson(
  what: string,
  url: string,
  body: string,
  headers: () => Promise<Record<string, string>>,
  options: RetryOptions,
  describe: (status: number, error: unknown) => string,
): Promise<unknown> {
  const response = await fetchWithRetry(what, url, async () => ({ method: 'POST', body, headers: await headers() }), options)
  const text = await response.text()
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    parsed = undefined
  }
  if (!response.ok) {
    throw new RootKeyError(`${what} failed: ${describe(response.status, parsed)}`, { retryable: response.status === 429 || response.status >= 500 })
  }
  if (typeof parsed !== 'object' || parsed === null) throw new RootKeyError(`${what} returned no JSON object`)
  return parsed
}

/** 401 and 403 worded the same for every KMS. */
export const refused = (status: number) => status === 401 || status === 403
