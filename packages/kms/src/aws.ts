/**
 * AWS KMS as a root key over its JSON 1.1 protocol: GenerateDataKey (AES_128) for a new KEK,
 * Decrypt to unwrap one. The chain's KEK AAD goes in the encryption context, so KMS itself binds
 * each wrapped KEK to its chain name and id.
 */
import { RootKeyError, importKekBytes, checkServerUrl, fromBase64, toBase64, transientStatus, type HttpAnswer, type NewKek, type RootKey } from '@kms-proxy/core'
import { kmsWrapping } from './envelope.js'
import { credentialFor, postJson, refused, type RetryOptions } from './http.js'
import { signV4, type AwsCredentials } from './sigv4.js'

/** Options of {@link awsKmsRootKey}. */
export interface AwsKmsRootKeyOptions extends RetryOptions {
  /** Key id, key ARN, alias name (alias/…) or alias ARN. */
  keyId: string
  /** The AWS region of the key, such as `eu-central-1`. */
  region: string
  /**
   * Static credentials, or a function called before each request (for expiring ones: see
   * `awsWebIdentityCredentials`, `awsContainerCredentials`, `awsInstanceCredentials` and
   * `refreshingCredentials`). A function with `invalidate` is invalidated when KMS refuses the
   * credentials (HTTP 401 or 403, or `ExpiredTokenException` and its kin), and the request is
   * sent once more with new ones.
   */
  credentials: AwsCredentials | (() => Promise<AwsCredentials>)
  /**
   * The KMS endpoint. Plain http only on loopback or a host in `plainHttpHosts`.
   *
   * @defaultValue `https://kms.{region}.amazonaws.com`
   */
  endpoint?: string
  /**
   * This host's clock in milliseconds since the epoch, for signing (default `Date.now`). For tests
   * and for hosts whose clock is known to be off; a skew is also corrected on its own (see
   * {@link awsKmsRootKey}).
   */
  now?: () => number
}

const TAG = 0x20
/** wrapKek's envelope form: a GenerateDataKey (AES_256) data key wraps the KEK (envelope.ts). */
const ENVELOPE_TAG = 0x24
/** AWS's own SDK retries these as throttling; KMS answers them with HTTP 400. */
const THROTTLING = new Set(['ThrottlingException', 'Throttling', 'TooManyRequestsException', 'RequestLimitExceeded', 'LimitExceededException', 'RequestThrottled', 'RequestThrottledException', 'SlowDown'])
/** Errors AWS answers when a signature's time is too far from its own; AWS's own SDK list. */
const CLOCK_SKEW = new Set(['InvalidSignatureException', 'RequestExpired', 'RequestInTheFuture', 'RequestTimeTooSkewed', 'SignatureDoesNotMatch', 'AuthFailure'])
/** Errors AWS answers for expired or unknown temporary credentials: worth new credentials, once. */
const EXPIRED_CREDENTIALS = new Set(['ExpiredTokenException', 'ExpiredToken', 'UnrecognizedClientException', 'InvalidClientTokenId'])
/** AWS accepts a signature up to 5 minutes off its clock; the SDK corrects from 4 minutes on. */
const SKEW_THRESHOLD_MS = 4 * 60_000

function context(aad: Uint8Array): Record<string, string> {
  return { 'kms-proxy:kek': toBase64(aad) }
}

/** The AWS error name of an answer: `__type` in the body (`namespace#Name`), else the `x-amzn-ErrorType` header. */
function errorType(answer: HttpAnswer): string | undefined {
  const named = (answer.json() as { __type?: unknown } | undefined)?.__type ?? answer.headers.get('x-amzn-errortype')
  return typeof named === 'string' ? named.split('#').pop()!.split(':')[0] : undefined
}

/** A base64 field of a KMS answer as bytes; missing, empty or not base64 is ERR_ROOT_KEY. */
function field(out: Record<string, unknown>, name: 'CiphertextBlob' | 'Plaintext', action: string): Uint8Array<ArrayBuffer> {
  const value = out[name]
  let bytes: Uint8Array<ArrayBuffer> | undefined
  try {
    if (typeof value === 'string') bytes = fromBase64(value)
  } catch {
    // Reported below.
  }
  if (!bytes || bytes.length === 0) throw new RootKeyError(`AWS KMS ${action} returned no ${name}`)
  return bytes
}

/**
 * AWS KMS as a root key. Throttling (HTTP 400 `ThrottlingException` and its kin) is retried like
 * a 5xx. A clock-skew refusal (`InvalidSignatureException` "Signature expired",
 * `RequestTimeTooSkewed`, …) whose `Date` header is 4 minutes or more away from the signing clock
 * corrects that clock by the difference, for this root key's later calls too, and is retried once.
 *
 * A rotation costs one `GenerateDataKey` (AES_128), an unlock one `Decrypt` per KEK; messages
 * cost none. The chain's KEK AAD is the encryption context, so KMS binds each KEK to its chain
 * and id. The IAM principal needs `kms:GenerateDataKey` and `kms:Decrypt` on the key.
 *
 * `wrapKek` (this root added to a chain that has KEKs) costs one `GenerateDataKey` (AES_256) per
 * KEK: the KEK is wrapped under that data key inside WebCrypto, never exported (tag 0x24, 47 bytes
 * plus the CiphertextBlob); `unwrapKek` reads both forms with one `Decrypt`.
 *
 * @throws TypeError - a missing or malformed option (key id, region, credentials, endpoint, or
 *   plain http to a host that is neither loopback nor in `plainHttpHosts`).
 * @throws {@link @kms-proxy/core!RootKeyError} - (from `newKek`, `unwrapKek`, `wrapKek`) `ERR_ROOT_KEY`:
 *   KMS refused (access denied, a wrong encryption context, a disabled key), `retryable` when it
 *   was unreachable, throttled or answered 5xx after the retries.
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { fileStore } from '@kms-proxy/file'
 * import { awsKmsRootKey } from '@kms-proxy/kms'
 *
 * const rootKey = awsKmsRootKey({ keyId: 'alias/app', region: 'eu-central-1', credentials: { accessKeyId, secretAccessKey } })
 * const chain = await KeyChain.open({ rootKey, store: fileStore('./keys.json') }) // one GenerateDataKey per rotation
 * ```
 */
export function awsKmsRootKey(options: AwsKmsRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { keyId, region } = options
  if (typeof keyId !== 'string' || keyId === '') throw new TypeError('keyId: expected a key id, ARN or alias')
  if (typeof region !== 'string' || !/^[a-z0-9-]+$/.test(region)) throw new TypeError('region: expected an AWS region such as eu-central-1')
  if (typeof options.credentials !== 'function' && (typeof options.credentials?.accessKeyId !== 'string' || typeof options.credentials?.secretAccessKey !== 'string')) {
    throw new TypeError('credentials: expected { accessKeyId, secretAccessKey, sessionToken? } or a function returning them')
  }
  if (options.now !== undefined && typeof options.now !== 'function') throw new TypeError('now: expected a function returning milliseconds since the epoch')
  const endpoint = checkServerUrl(options.endpoint ?? `https://kms.${region}.amazonaws.com`, 'endpoint', options.plainHttpHosts)
  const now = options.now ?? Date.now
  /** Server time minus this host's, learned from a clock-skew refusal. */
  let clockOffsetMs = 0

  const transient = (answer: HttpAnswer) => transientStatus(answer) || (answer.status === 400 && THROTTLING.has(errorType(answer) ?? ''))

  /** Corrects the signing clock from a skew refusal's Date header; true when it changed enough to retry. */
  function correctClock(answer: HttpAnswer, offsetUsed: number): boolean {
    if ((answer.status !== 400 && answer.status !== 403) || !CLOCK_SKEW.has(errorType(answer) ?? '')) return false
    // A cached answer (Age) tells nothing about the server's clock now.
    if (answer.headers.has('age')) return false
    const server = Date.parse(answer.headers.get('date') ?? '')
    if (Number.isNaN(server)) return false
    const offset = server - now()
    if (Math.abs(offset - offsetUsed) < SKEW_THRESHOLD_MS) return false
    clockOffsetMs = offset
    return true
  }

  async function call(action: string, payload: Record<string, unknown>): Promise<Record<string, unknown>> {
    const body = JSON.stringify(payload)
    let offsetUsed = clockOffsetMs
    const credentials = credentialFor(options.credentials)
    const headers = async () => {
      offsetUsed = clockOffsetMs
      return signV4({
        method: 'POST',
        url: endpoint,
        headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${action}` },
        body,
        region,
        service: 'kms',
        credentials: await credentials.get(),
        date: new Date(now() + offsetUsed),
      })
    }
    const describe = (status: number, _error: unknown, answer: HttpAnswer) => {
      const type = errorType(answer) ?? `HTTP ${status}`
      return type === 'InvalidCiphertextException' ? `${type} (wrong key, or a KEK moved to another chain or id)` : type
    }
    return postJson(`AWS KMS ${action}`, endpoint.href, body, headers, options, describe, {
      transient,
      againOnce: (answer) => correctClock(answer, offsetUsed),
      credentialRefused: (answer) => refused(answer.status) || (answer.status === 400 && EXPIRED_CREDENTIALS.has(errorType(answer) ?? '')),
      refreshCredential: credentials.refresh,
    })
  }

  return {
    kind: 'aws-kms',
    async newKek(aad): Promise<NewKek> {
      const out = await call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_128', EncryptionContext: context(aad) })
      const plaintext = field(out, 'Plaintext', 'GenerateDataKey')
      let blob: Uint8Array
      try {
        // Checked before the KEK is used: a KEK stored without its wrapped form could never be read back.
        blob = field(out, 'CiphertextBlob', 'GenerateDataKey')
      } catch (error) {
        plaintext.fill(0)
        throw error
      }
      const wrapped = new Uint8Array(1 + blob.length)
      wrapped[0] = TAG
      wrapped.set(blob, 1)
      return { kek: await importKekBytes(plaintext, 'AWS KMS'), wrapped }
    },
    ...kmsWrapping({
      who: 'AWS KMS',
      rootKey: 'an AWS KMS root key',
      tag: TAG,
      envelopeTag: ENVELOPE_TAG,
      async dataKey(aad) {
        const out = await call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_256', EncryptionContext: context(aad) })
        // The wrapped form first: if it is missing, the plaintext was never decoded, so nothing to zero.
        const wrapped = field(out, 'CiphertextBlob', 'GenerateDataKey')
        return { wrapped, plaintext: field(out, 'Plaintext', 'GenerateDataKey') }
      },
      async decrypt(blob, aad) {
        const out = await call('Decrypt', { KeyId: keyId, CiphertextBlob: toBase64(blob), EncryptionContext: context(aad) })
        return field(out, 'Plaintext', 'Decrypt')
      },
    }),
    toString: () => '[RootKey aws-kms]',
    toJSON: () => ({ kind: 'aws-kms', keyId, region, endpoint: endpoint.origin }),
  } as RootKey
}
