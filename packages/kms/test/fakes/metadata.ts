/**
 * Local credential sources, written from the providers' public documentation of each protocol,
 * and a ledger of what they issued, for the checking fronts (fakes/checking-front.ts):
 *
 * - EC2 instance metadata, IMDSv2 only: `PUT /latest/api/token` with
 *   `X-aws-ec2-metadata-token-ttl-seconds` (1 to 21,600) gives a session token;
 *   `GET /latest/meta-data/iam/security-credentials/` with `X-aws-ec2-metadata-token` lists the
 *   role, `…/{role}` answers `{ Code: 'Success', LastUpdated, Type: 'AWS-HMAC', AccessKeyId,
 *   SecretAccessKey, Token, Expiration }`. No token or a wrong one: 401. A request carrying
 *   `X-Forwarded-For` is refused (403), as IMDS refuses proxied requests.
 * - The container credentials endpoint (ECS task roles, EKS Pod Identity): `GET {path}` with the
 *   `Authorization` token when one is configured (else 401), answering `{ AccessKeyId,
 *   SecretAccessKey, Token, Expiration, RoleArn }`; errors as `{ Code, Message }`.
 * - The Google metadata server: `GET /computeMetadata/v1/instance/service-accounts/default/token`
 *   with `Metadata-Flavor: Google` (else 403), answering `{ access_token, expires_in, token_type }`
 *   and, on every answer, the header `Metadata-Flavor: Google`; `scopes` as a query parameter.
 * - Azure managed identity: IMDS `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…`
 *   with `Metadata: true` (else 400 `invalid_request`), and the App Service / Container Apps form
 *   `GET /msi/token?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER` (else 401);
 *   both answer `{ access_token, expires_in, expires_on (epoch seconds as a string), resource, token_type }`.
 *
 * Like the real services, each hands out the same credential until less than half of its
 * lifetime is left (AWS documents new instance credentials at least 5 minutes before the old
 * ones expire), then a new one. Expirations are written with milliseconds (RFC 3339 allows it) so
 * that lifetimes of 2 s stay exact.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { randomBytes } from 'node:crypto'

/** What the sources issued: the checking fronts accept a credential only while it is valid here. */
export interface Ledger {
  issue(secret: string, expiresAt: number, accessKeyId?: string): void
  revoke(secret: string): void
  /** 'ok', or why not. */
  check(secret: string | undefined, accessKeyId?: string): 'ok' | 'missing' | 'unknown' | 'expired' | 'revoked' | 'wrong key id'
}

export function createLedger(): Ledger {
  const issued = new Map<string, { expiresAt: number; accessKeyId?: string; revoked: boolean }>()
  return {
    issue: (secret, expiresAt, accessKeyId) => void issued.set(secret, { expiresAt, ...(accessKeyId ? { accessKeyId } : {}), revoked: false }),
    revoke(secret) {
      const entry = issued.get(secret)
      if (entry) entry.revoked = true
    },
    check(secret, accessKeyId) {
      if (!secret) return 'missing'
      const entry = issued.get(secret)
      if (!entry) return 'unknown'
      if (entry.revoked) return 'revoked'
      if (Date.now() >= entry.expiresAt) return 'expired'
      if (accessKeyId !== undefined && entry.accessKeyId !== accessKeyId) return 'wrong key id'
      return 'ok'
    },
  }
}

export interface Issued {
  accessKeyId: string
  secret: string
  token: string
  expiresAt: number
}

/** One source's credential of the moment: a new one when none is left or less than half its lifetime remains. */
function rotation(ledger: Ledger, lifetimeMs: number, prefix: string) {
  let current: Issued | undefined
  const all: Issued[] = []
  return {
    all,
    current(): Issued {
      if (!current || current.expiresAt - Date.now() < lifetimeMs / 2) {
        current = {
          accessKeyId: `ASIA${randomBytes(8).toString('hex').toUpperCase()}`,
          secret: randomBytes(30).toString('base64'),
          token: `${prefix}${randomBytes(48).toString('base64url')}`,
          expiresAt: Date.now() + lifetimeMs,
        }
        ledger.issue(current.token, current.expiresAt, current.accessKeyId)
        all.push(current)
      }
      return current
    },
  }
}

export interface MetadataFake {
  url: string
  /** Credential answers served (successful fetches by any client). */
  served: number
  /** Every credential handed out, in order. */
  issued: Issued[]
  /** Requests received: method, path with query, headers. */
  requests: { method: string; url: string; headers: IncomingMessage['headers'] }[]
  close(): Promise<void>
}

type Handler = (req: IncomingMessage, url: URL, res: ServerResponse) => void

async function serve(handler: Handler, issued: Issued[]): Promise<MetadataFake> {
  const fake: MetadataFake = { url: '', served: 0, issued, requests: [], close: async () => {} }
  const server: Server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      fake.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers })
      handler(req, new URL(req.url ?? '/', 'http://fake'), res)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  fake.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`
  fake.close = () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()) })
  return fake
}

const send = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}) => {
  res.writeHead(status, { 'content-type': body.startsWith('{') ? 'application/json' : 'text/plain', ...headers })
  res.end(body)
}

/** EC2 instance metadata, IMDSv2 only. */
export async function startImdsFake(options: { ledger: Ledger; lifetimeMs: number; role?: string }): Promise<MetadataFake> {
  const role = options.role ?? 'kms-proxy-instance-role'
  const creds = rotation(options.ledger, options.lifetimeMs, 'imds-session/')
  const sessions = new Map<string, number>()
  const fake: MetadataFake = await serve((req, url, res) => {
    if (req.headers['x-forwarded-for']) return send(res, 403, 'Forbidden')
    if (url.pathname === '/latest/api/token') {
      if (req.method !== 'PUT') return send(res, 405, 'Method Not Allowed')
      const ttl = Number(req.headers['x-aws-ec2-metadata-token-ttl-seconds'])
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21_600) return send(res, 400, 'Bad Request')
      const token = randomBytes(32).toString('base64')
      sessions.set(token, Date.now() + ttl * 1000)
      return send(res, 200, token, { 'x-aws-ec2-metadata-token-ttl-seconds': String(ttl) })
    }
    const session = req.headers['x-aws-ec2-metadata-token']
    if (typeof session !== 'string' || !((sessions.get(session) ?? 0) > Date.now())) return send(res, 401, 'Unauthorized')
    if (req.method !== 'GET') return send(res, 405, 'Method Not Allowed')
    const prefix = '/latest/meta-data/iam/security-credentials/'
    if (url.pathname === prefix) return send(res, 200, role)
    if (url.pathname !== prefix + role) return send(res, 404, 'Not Found')
    const c = creds.current()
    fake.served++
    send(res, 200, JSON.stringify({ Code: 'Success', LastUpdated: new Date(c.expiresAt - options.lifetimeMs).toISOString(), Type: 'AWS-HMAC', AccessKeyId: c.accessKeyId, SecretAccessKey: c.secret, Token: c.token, Expiration: new Date(c.expiresAt).toISOString() }))
  }, creds.all)
  return fake
}

/** The container credentials endpoint at `path`; `authorization` is the token it expects now (read at each request). */
export async function startContainerFake(options: { ledger: Ledger; lifetimeMs: number; path?: string; authorization?: () => string }): Promise<MetadataFake> {
  const path = options.path ?? '/v2/credentials/kms-proxy-task'
  const creds = rotation(options.ledger, options.lifetimeMs, 'container-session/')
  const fake: MetadataFake = await serve((req, url, res) => {
    if (req.method !== 'GET') return send(res, 405, JSON.stringify({ Code: 'MethodNotAllowed', Message: 'GET only' }))
    if (url.pathname !== path) return send(res, 404, JSON.stringify({ Code: 'NotFound', Message: 'no such credentials' }))
    if (options.authorization && req.headers.authorization !== options.authorization()) {
      // Echoes what it got, as a careless server might: the client must not repeat it in an error.
      return send(res, 401, JSON.stringify({ Code: 'AccessDenied', Message: `token ${req.headers.authorization ?? ''} refused` }))
    }
    const c = creds.current()
    fake.served++
    send(res, 200, JSON.stringify({ RoleArn: 'arn:aws:iam::123456789012:role/kms-proxy-task', AccessKeyId: c.accessKeyId, SecretAccessKey: c.secret, Token: c.token, Expiration: new Date(c.expiresAt).toISOString() }))
  }, creds.all)
  return fake
}

/** The Google metadata server: the default service account's token, and enough of the rest for google-auth-library to detect it. */
export async function startGcpMetadataFake(options: { ledger: Ledger; lifetimeMs: number }): Promise<MetadataFake> {
  const creds = rotation(options.ledger, options.lifetimeMs, 'ya29.fake-')
  const flavor = { 'metadata-flavor': 'Google' }
  const fake: MetadataFake = await serve((req, url, res) => {
    if (req.headers['x-forwarded-for'] || req.headers['metadata-flavor'] !== 'Google') return send(res, 403, 'Missing Metadata-Flavor:Google header.', flavor)
    const base = '/computeMetadata/v1/'
    if (url.pathname === `${base}instance/service-accounts/default/token`) {
      const c = creds.current()
      fake.served++
      return send(res, 200, JSON.stringify({ access_token: c.token, expires_in: Math.floor((c.expiresAt - Date.now()) / 1000), token_type: 'Bearer' }), flavor)
    }
    if (url.pathname === base || url.pathname === `${base}instance` || url.pathname === `${base}instance/`) return send(res, 200, 'attributes/\nservice-accounts/\n', flavor)
    if (url.pathname === `${base}project/project-id`) return send(res, 200, 'kms-proxy-test', flavor)
    if (url.pathname === `${base}instance/service-accounts/default/email`) return send(res, 200, 'app@kms-proxy-test.iam.gserviceaccount.com', flavor)
    send(res, 404, 'Not Found', flavor)
  }, creds.all)
  return fake
}

/** Azure managed identity: IMDS and the App Service / Container Apps endpoint (`/msi/token`). */
export async function startAzureIdentityFake(options: { ledger: Ledger; lifetimeMs: number; identityHeader: string; clientId?: string }): Promise<MetadataFake> {
  const creds = rotation(options.ledger, options.lifetimeMs, 'eyJ0eXAiOiJKV1Qi.fake-')
  const fake: MetadataFake = await serve((req, url, res) => {
    const imds = url.pathname === '/metadata/identity/oauth2/token'
    const appService = url.pathname === '/msi/token'
    if (!imds && !appService) return send(res, 404, JSON.stringify({ error: 'not_found', error_description: 'no such path' }))
    if (imds && (req.headers['x-forwarded-for'] || req.headers.metadata !== 'true')) return send(res, 400, JSON.stringify({ error: 'invalid_request', error_description: 'Required metadata header not specified' }))
    if (appService && req.headers['x-identity-header'] !== options.identityHeader) return send(res, 401, JSON.stringify({ error: { code: 'UnauthorizedRequest', message: 'The identity header is missing or wrong' } }))
    const version = url.searchParams.get('api-version')
    if (version !== (imds ? '2018-02-01' : '2019-08-01')) return send(res, 400, JSON.stringify({ error: 'invalid_request', error_description: 'api-version not supported' }))
    const resource = url.searchParams.get('resource')
    if (!resource) return send(res, 400, JSON.stringify({ error: 'invalid_request', error_description: 'Required query variable resource is missing' }))
    const clientId = url.searchParams.get('client_id')
    if (clientId !== null && clientId !== options.clientId) return send(res, 400, JSON.stringify({ error: 'invalid_request', error_description: 'Identity not found' }))
    const c = creds.current()
    fake.served++
    const seconds = Math.floor(c.expiresAt / 1000)
    send(res, 200, JSON.stringify({
      access_token: c.token,
      ...(imds ? { refresh_token: '', expires_in: String(Math.floor((c.expiresAt - Date.now()) / 1000)), not_before: String(seconds - options.lifetimeMs / 1000) } : { client_id: options.clientId ?? 'system-assigned' }),
      expires_on: String(seconds),
      resource,
      token_type: 'Bearer',
    }))
  }, creds.all)
  return fake
}
