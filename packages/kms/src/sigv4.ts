/**
 * AWS Signature Version 4 in WebCrypto (HMAC-SHA256, SHA-256), for a JSON POST to one service.
 * Checked against AWS's own signer (@smithy/signature-v4) in the tests, paths and query strings
 * included.
 */
import { toHex } from '@kms-proxy/core'

const encoder = new TextEncoder()

/** AWS credentials; `sessionToken` for temporary ones (STS, instance roles). */
export interface AwsCredentials {
  /** The access key id (`AKIA…`, or `ASIA…` for temporary credentials). */
  accessKeyId: string
  /** The secret access key: used only to sign, never sent nor put in an error. */
  secretAccessKey: string
  /** The session token of temporary credentials (STS). */
  sessionToken?: string
}

/** What {@link signV4} signs. */
export interface SignInput {
  /** The HTTP method: every AWS JSON protocol call is a POST. */
  method: 'POST'
  /** The request's URL (its path and query are signed). */
  url: URL
  /** Headers to sign and send (`content-type`, `x-amz-target`); `host` and `x-amz-*` are added. */
  headers: Record<string, string>
  /** The body exactly as it will be sent. */
  body: string
  /** The AWS region, as in the endpoint (`eu-central-1`). */
  region: string
  /** The signing name of the service (`kms`, `dynamodb`, `sts`). */
  service: string
  /** Who signs. */
  credentials: AwsCredentials
  /** Signing time. Default: now; fixed in tests, corrected for clock skew by the AWS root key. */
  date?: Date
}

const hex = (buffer: ArrayBuffer): string => toHex(new Uint8Array(buffer))

async function sha256(data: string): Promise<string> {
  return hex(await crypto.subtle.digest('SHA-256', encoder.encode(data)))
}

async function hmac(key: Uint8Array | ArrayBuffer, data: string): Promise<ArrayBuffer> {
  const k = await crypto.subtle.importKey('raw', key as BufferSource, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
  return crypto.subtle.sign('HMAC', k, encoder.encode(data))
}

/** RFC 3986 encoding as AWS wants it: everything but unreserved characters, `!'()*` included. */
function escapeUri(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
}

/**
 * The canonical URI of every service but S3: the path as sent (already percent-encoded by URL
 * parsing), with empty and dot segments removed, then each segment encoded once more.
 */
function canonicalPath(path: string): string {
  const segments: string[] = []
  for (const segment of path.split('/')) {
    if (segment === '' || segment === '.') continue
    if (segment === '..') segments.pop()
    else segments.push(segment)
  }
  const normalized = `${path.startsWith('/') ? '/' : ''}${segments.join('/')}${segments.length > 0 && path.endsWith('/') ? '/' : ''}`
  return escapeUri(normalized).replace(/%2F/g, '/')
}

/** The canonical query: decoded parameters, each name and value encoded, sorted by name, then by value. */
function canonicalQuery(params: URLSearchParams): string {
  const byName = new Map<string, string[]>()
  for (const [name, value] of params) {
    if (name.toLowerCase() === 'x-amz-signature') continue
    const encoded = escapeUri(name)
    byName.set(encoded, [...(byName.get(encoded) ?? []), `${encoded}=${escapeUri(value)}`])
  }
  return [...byName.keys()]
    .sort()
    .map((name) => byName.get(name)!.sort().join('&'))
    .join('&')
}

/**
 * Signs one JSON POST to an AWS service with Signature Version 4 (HMAC-SHA256 in
 * `crypto.subtle`). Returns the headers to send: the input's, plus `host`, `x-amz-date`,
 * `x-amz-security-token` for temporary credentials, and `authorization`. Exported for the
 * packages that talk to other AWS services with the same signer (the DynamoDB store).
 *
 * @example
 * ```ts
 * const body = JSON.stringify({ TableName: 'keys', Key: { pk: { S: 'a' } } })
 * const headers = await signV4({ method: 'POST', url: new URL('https://dynamodb.eu-central-1.amazonaws.com/'), body, region: 'eu-central-1', service: 'dynamodb', credentials,
 *   headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': 'DynamoDB_20120810.GetItem' } })
 * ```
 */
export async function signV4(input: SignInput): Promise<Record<string, string>> {
  const date = input.date ?? new Date()
  const amzDate = date.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '')
  const day = amzDate.slice(0, 8)
  const headers: Record<string, string> = {}
  for (const [k, v] of Object.entries(input.headers)) headers[k.toLowerCase()] = v.trim().replace(/\s+/g, ' ')
  headers.host = input.url.host
  headers['x-amz-date'] = amzDate
  if (input.credentials.sessionToken) headers['x-amz-security-token'] = input.credentials.sessionToken
  const names = Object.keys(headers).sort()
  const canonicalRequest = [
    input.method,
    canonicalPath(input.url.pathname || '/'),
    canonicalQuery(input.url.searchParams),
    ...names.map((n) => `${n}:${headers[n]}`),
    '',
    names.join(';'),
    await sha256(input.body),
  ].join('\n')
  const scope = `${day}/${input.region}/${input.service}/aws4_request`
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, await sha256(canonicalRequest)].join('\n')
  let key = await hmac(encoder.encode(`AWS4${input.credentials.secretAccessKey}`), day)
  for (const part of [input.region, input.service, 'aws4_request']) key = await hmac(key, part)
  const signature = hex(await hmac(key, stringToSign))
  headers.authorization = `AWS4-HMAC-SHA256 Credential=${input.credentials.accessKeyId}/${scope}, SignedHeaders=${names.join(';')}, Signature=${signature}`
  return headers
}
