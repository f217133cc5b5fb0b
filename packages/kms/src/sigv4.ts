/**
 * AWS Signature Version 4 in WebCrypto (HMAC-SHA256, SHA-256), for a JSON POST to one service.
 * Checked against AWS's own signer (@smithy/signature-v4) in the tests.
 */
const encoder = new TextEncoder()

export interface AwsCredentials {
  accessKeyId: string
  secretAccessKey: string
  sessionToken?: string
}

export interface SignInput {
  method: 'POST'
  url: URL
  headers: Record<string, string>
  body: string
  region: string
  service: string
  credentials: AwsCredentials
  /** Defaults to now; fixed in tests. */
  date?: Date
}

function hex(buffer: ArrayBuffer): string {
  let out = ''
  for (const b of new Uint8Array(buffer)) out += b.toString(16).padStart(2, '0')
  return out
}

async function sha256(data: string): Promise<string> {
  return hex(await crypto.subtle.digest('SHA-256', encoder.encode(data)))
}

async function hmac(key: Uint8Array | ArrayBuffer, data: string): Promise<ArrayBuffer> {
  const k = await crypto.subtle.importKey('raw', key as BufferSource, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
  return crypto.subtle.sign('HMAC', k, encoder.encode(data))
}

/** Returns the headers to send: the input's, plus host, x-amz-date, the token, and authorization. */
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
    input.url.pathname || '/',
    '',
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
