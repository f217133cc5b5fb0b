/**
 * The credential sources an AWS workload has, as refreshing functions for `awsKmsRootKey`'s
 * `credentials`: STS AssumeRoleWithWebIdentity (Kubernetes service accounts, IRSA), the
 * container credentials endpoint (ECS task roles, EKS Pod Identity) and the EC2 instance
 * metadata service (IMDSv2). Each returns temporary credentials with their expiry.
 */
import { RootKeyError } from '@kms-proxy/core'
import { refreshingCredentials, type RefreshingCredentials } from './credentials.js'
import type { AwsCredentials } from './sigv4.js'
import { askSource, jsonOf, callerToken, checkSourceOptions, expiryOf, safeCode, sourceUrl, type CredentialSourceOptions } from './sources.js'

/** Options of {@link awsWebIdentityCredentials}. */
export interface AwsWebIdentityCredentialsOptions extends CredentialSourceOptions {
  /** The role to assume (`AWS_ROLE_ARN`). */
  roleArn: string
  /**
   * Returns the OIDC token, read anew at each refresh: Kubernetes rotates the projected token
   * file (`AWS_WEB_IDENTITY_TOKEN_FILE`), so read the file in this function.
   */
  webIdentityToken: () => Promise<string>
  /**
   * `AWS_ROLE_SESSION_NAME`.
   *
   * @defaultValue `kms-proxy-` and the time in milliseconds
   */
  roleSessionName?: string
  /**
   * Lifetime asked of STS (AWS accepts 900 to the role's maximum).
   *
   * @defaultValue STS's default, 3,600 (1 hour)
   */
  durationSeconds?: number
  /** Region of the STS endpoint (`https://sts.{region}.amazonaws.com`). Without it, the global endpoint `https://sts.amazonaws.com`. */
  region?: string
  /** The STS endpoint, overriding `region` (a VPC endpoint; a local emulator in tests). */
  endpoint?: string
}

/** Options of {@link awsContainerCredentials}. */
export interface AwsContainerCredentialsOptions extends CredentialSourceOptions {
  /** `AWS_CONTAINER_CREDENTIALS_FULL_URI` (EKS Pod Identity, or a local credentials server). */
  fullUri?: string
  /** `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (ECS task roles): a path on `endpoint`. Takes precedence over `fullUri`, as in AWS's SDKs. */
  relativeUri?: string
  /**
   * The host `relativeUri` is on.
   *
   * @defaultValue `http://169.254.170.2`
   */
  endpoint?: string
  /**
   * `AWS_CONTAINER_AUTHORIZATION_TOKEN`, or a function returning it, called at each refresh: pass
   * one that reads `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, which EKS rotates.
   */
  authorizationToken?: string | (() => Promise<string>)
}

/** Options of {@link awsInstanceCredentials}. */
export interface AwsInstanceCredentialsOptions extends CredentialSourceOptions {
  /**
   * The instance metadata service (`AWS_EC2_METADATA_SERVICE_ENDPOINT`).
   *
   * @defaultValue `http://169.254.169.254` (`http://[fd00:ec2::254]` on IPv6-only instances)
   */
  endpoint?: string
  /**
   * Lifetime of the IMDSv2 session token asked for each refresh, in seconds (1 to 21,600).
   *
   * @defaultValue 21,600
   */
  tokenTtlSeconds?: number
  /**
   * The instance profile's role name.
   *
   * @defaultValue the first name the metadata service lists
   */
  role?: string
}

const STS_TRANSIENT = new Set(['IDPCommunicationError', 'Throttling', 'ThrottlingException', 'ServiceUnavailable', 'InternalFailure'])
const ECS_HOSTS = ['169.254.170.2', '169.254.170.23', '[fd00:ec2::23]']
const IMDS_HOSTS = ['169.254.169.254', '[fd00:ec2::254]']
const IMDS_PATH = '/latest/meta-data/iam/security-credentials/'

function unescapeXml(text: string): string {
  return text.replace(/&(lt|gt|amp|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, (_, e: string) =>
    e === 'lt' ? '<' : e === 'gt' ? '>' : e === 'amp' ? '&' : e === 'quot' ? '"' : e === 'apos' ? "'" : String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : Number(e.slice(1))),
  )
}

/** The text of the first `<tag>` element (no attributes, no children), as STS's Query API answers. */
function xmlText(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml)
  return m ? unescapeXml(m[1]!.trim()) : undefined
}

/** Temporary credentials from an answer's fields; anything missing is a quiet ERR_ROOT_KEY. */
function temporary(what: string, id: unknown, secret: unknown, token: unknown, expiration: unknown): { value: AwsCredentials; expiresAt: number } {
  if (typeof id !== 'string' || id === '' || typeof secret !== 'string' || secret === '' || typeof token !== 'string' || token === '') {
    throw new RootKeyError(`${what} answered without AccessKeyId, SecretAccessKey and session token`)
  }
  const expiresAt = expiryOf(expiration)
  if (expiresAt === undefined) throw new RootKeyError(`${what} answered without a valid Expiration`)
  return { value: { accessKeyId: id, secretAccessKey: secret, sessionToken: token }, expiresAt }
}

/**
 * AWS credentials from STS `AssumeRoleWithWebIdentity`, the flow of Kubernetes service accounts
 * on EKS (IRSA: `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`): an unsigned Query API call that
 * trades the OIDC token for temporary credentials, refreshed before they expire (see
 * {@link refreshingCredentials}). The token function is called at each refresh, so a rotated
 * token file is read anew.
 *
 * @throws TypeError - (at once) a missing `roleArn` or `webIdentityToken`, a bad option, or plain
 *   http to a host that is neither loopback nor in `plainHttpHosts`.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from the returned function) `ERR_ROOT_KEY`: STS
 *   refused (its error code, such as `InvalidIdentityToken` or `AccessDenied`, is in the message;
 *   never the token), `retryable` when STS was unreachable, throttled, answered 5xx or
 *   `IDPCommunicationError`, or the token could not be read.
 * @example
 * ```ts
 * import { readFile } from 'node:fs/promises'
 * const credentials = awsWebIdentityCredentials({
 *   roleArn: process.env.AWS_ROLE_ARN!,
 *   webIdentityToken: () => readFile(process.env.AWS_WEB_IDENTITY_TOKEN_FILE!, 'utf8'),
 *   region: process.env.AWS_REGION,
 * })
 * const rootKey = awsKmsRootKey({ keyId: 'alias/app', region: 'eu-central-1', credentials })
 * ```
 */
export function awsWebIdentityCredentials(options: AwsWebIdentityCredentialsOptions): RefreshingCredentials<AwsCredentials> {
  checkSourceOptions(options)
  const { roleArn, webIdentityToken, roleSessionName, durationSeconds, region } = options
  if (typeof roleArn !== 'string' || !/^arn:[^:\s]+:iam::[^\s]+$/.test(roleArn)) throw new TypeError('roleArn: expected an IAM role ARN (arn:aws:iam::123456789012:role/name)')
  if (typeof webIdentityToken !== 'function') throw new TypeError('webIdentityToken: expected a function returning the OIDC token (read the token file in it)')
  if (roleSessionName !== undefined && (typeof roleSessionName !== 'string' || !/^[\w+=,.@-]{2,64}$/.test(roleSessionName))) throw new TypeError('roleSessionName: expected 2-64 letters, digits or +=,.@_-')
  if (durationSeconds !== undefined && !(Number.isInteger(durationSeconds) && durationSeconds > 0)) throw new RangeError('durationSeconds: expected a positive integer')
  if (region !== undefined && (typeof region !== 'string' || !/^[a-z0-9-]+$/.test(region))) throw new TypeError('region: expected an AWS region such as eu-central-1')
  const endpoint = sourceUrl(options.endpoint ?? (region ? `https://sts.${region}.amazonaws.com/` : 'https://sts.amazonaws.com/'), 'endpoint', [], options)
  const what = 'AWS STS AssumeRoleWithWebIdentity'

  return refreshingCredentials(async () => {
    const answer = await askSource(
      what,
      endpoint,
      async () => {
        const params = new URLSearchParams({
          Action: 'AssumeRoleWithWebIdentity',
          Version: '2011-06-15',
          RoleArn: roleArn,
          RoleSessionName: roleSessionName ?? `kms-proxy-${Date.now()}`,
          WebIdentityToken: await callerToken('the web identity token', webIdentityToken),
        })
        if (durationSeconds !== undefined) params.set('DurationSeconds', String(durationSeconds))
        return { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8', accept: 'text/xml' }, body: params.toString() }
      },
      options,
      { code: (a) => xmlText(a.text(), 'Code'), transient: (_, code) => STS_TRANSIENT.has(code ?? '') },
    )
    const xml = answer.text()
    return temporary(what, xmlText(xml, 'AccessKeyId'), xmlText(xml, 'SecretAccessKey'), xmlText(xml, 'SessionToken'), xmlText(xml, 'Expiration'))
  }, options)
}

/**
 * AWS credentials from the container credentials endpoint: ECS task roles
 * (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` on `http://169.254.170.2`) and EKS Pod Identity
 * (`AWS_CONTAINER_CREDENTIALS_FULL_URI` with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`), refreshed
 * before they expire. The endpoint must be https, loopback, or one of the container hosts
 * (169.254.170.2, 169.254.170.23, fd00:ec2::23), as in AWS's SDKs; `plainHttpHosts` adds others.
 *
 * @throws TypeError - (at once) neither `fullUri` nor `relativeUri`, or a URL the rule above refuses.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from the returned function) `ERR_ROOT_KEY`: the
 *   endpoint refused (HTTP status and its `Code`), `retryable` when it was unreachable or
 *   answered 429/5xx, or the token could not be read.
 * @example
 * ```ts
 * import { readFile } from 'node:fs/promises'
 * const env = process.env
 * const credentials = awsContainerCredentials({
 *   fullUri: env.AWS_CONTAINER_CREDENTIALS_FULL_URI,
 *   relativeUri: env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI,
 *   authorizationToken: env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
 *     ? () => readFile(env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE!, 'utf8')
 *     : env.AWS_CONTAINER_AUTHORIZATION_TOKEN,
 * })
 * ```
 */
export function awsContainerCredentials(options: AwsContainerCredentialsOptions): RefreshingCredentials<AwsCredentials> {
  checkSourceOptions(options)
  const { fullUri, relativeUri, authorizationToken } = options
  if (relativeUri !== undefined && (typeof relativeUri !== 'string' || !relativeUri.startsWith('/'))) throw new TypeError('relativeUri: expected a path starting with /')
  if (relativeUri === undefined && fullUri === undefined) throw new TypeError('fullUri or relativeUri: expected one (AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI)')
  if (authorizationToken !== undefined && typeof authorizationToken !== 'function' && (typeof authorizationToken !== 'string' || authorizationToken === '')) {
    throw new TypeError('authorizationToken: expected a token or a function returning one')
  }
  const url =
    relativeUri !== undefined
      ? sourceUrl(sourceUrl(options.endpoint ?? 'http://169.254.170.2', 'endpoint', ECS_HOSTS, options).origin + relativeUri, 'relativeUri', ECS_HOSTS, options)
      : sourceUrl(fullUri!, 'fullUri', ECS_HOSTS, options)
  const what = 'AWS container credentials'

  return refreshingCredentials(async () => {
    const answer = await askSource(
      what,
      url,
      async () => ({
        method: 'GET',
        headers: { accept: 'application/json', ...(authorizationToken !== undefined ? { authorization: await callerToken('the container authorization token', authorizationToken) } : {}) },
      }),
      options,
      { code: (a) => jsonOf(a).Code as string | undefined },
    )
    const out = jsonOf(answer)
    return temporary(what, out.AccessKeyId, out.SecretAccessKey, out.Token, out.Expiration)
  }, options)
}

/**
 * AWS credentials of an EC2 instance profile from the instance metadata service, IMDSv2 only: a
 * session token (`PUT /latest/api/token`), then the role name and its credentials
 * (`GET /latest/meta-data/iam/security-credentials/` and `…/{role}`), refreshed before they
 * expire. IMDSv1 (no session token) is never used: it is what SSRF attacks reach.
 *
 * @throws TypeError - (at once) a bad option or endpoint.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from the returned function) `ERR_ROOT_KEY`: no
 *   role, a `Code` other than `Success`, or a refusal; `retryable` when the service was
 *   unreachable or answered 429/5xx (a container whose hop limit is 1 gets no answer: a timeout).
 * @example
 * ```ts
 * const rootKey = awsKmsRootKey({ keyId: 'alias/app', region: 'eu-central-1', credentials: awsInstanceCredentials() })
 * ```
 */
export function awsInstanceCredentials(options: AwsInstanceCredentialsOptions = {}): RefreshingCredentials<AwsCredentials> {
  checkSourceOptions(options)
  const ttl = options.tokenTtlSeconds ?? 21_600
  if (!(Number.isInteger(ttl) && ttl >= 1 && ttl <= 21_600)) throw new RangeError('tokenTtlSeconds: expected an integer from 1 to 21,600')
  if (options.role !== undefined && (typeof options.role !== 'string' || !/^[\w+=,.@-]{1,128}$/.test(options.role))) throw new TypeError('role: expected an IAM role name')
  const base = sourceUrl(options.endpoint ?? 'http://169.254.169.254', 'endpoint', IMDS_HOSTS, options).origin
  const what = 'AWS instance metadata'

  return refreshingCredentials(async () => {
    const token = (
      await askSource(`${what} (session token)`, `${base}/latest/api/token`, async () => ({ method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': String(ttl) } }), options)
    ).text()
    if (token === '' || /[\r\n\0]/.test(token)) throw new RootKeyError(`${what} answered no usable session token`)
    const get = async () => ({ method: 'GET', headers: { 'x-aws-ec2-metadata-token': token } })
    const role = options.role ?? (await askSource(`${what} (role)`, base + IMDS_PATH, get, options)).text().split('\n')[0]!.trim()
    if (!/^[\w+=,.@-]{1,128}$/.test(role)) throw new RootKeyError(`${what}: the instance has no IAM role`)
    const out = jsonOf(await askSource(`${what} (credentials)`, base + IMDS_PATH + encodeURIComponent(role), get, options))
    if (out.Code !== 'Success') throw new RootKeyError(`${what} answered Code ${safeCode(out.Code) ?? '(missing)'}`, { retryable: true })
    return temporary(what, out.AccessKeyId, out.SecretAccessKey, out.Token, out.Expiration)
  }, options)
}
