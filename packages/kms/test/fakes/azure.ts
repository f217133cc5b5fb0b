/**
 * A fake Azure Key Vault (keys only), built from Microsoft's public REST reference:
 *   https://learn.microsoft.com/en-us/rest/api/keyvault/keys/wrap-key/wrap-key
 *     `POST {vaultBaseUrl}/keys/{key-name}/{key-version}/wrapkey?api-version=7.4`
 *     body { alg, value (base64url) } -> 200 { kid, value (base64url) }
 *   https://learn.microsoft.com/en-us/rest/api/keyvault/keys/unwrap-key/unwrap-key
 *     `POST {vaultBaseUrl}/keys/{key-name}/{key-version}/unwrapkey?api-version=7.4`
 *   https://learn.microsoft.com/en-us/rest/api/keyvault/keys/get-key/get-key
 *     `GET {vaultBaseUrl}/keys/{key-name}/{key-version}` -> { key: JsonWebKey, attributes }
 *     (the version is optional: without it, the newest version)
 *   https://learn.microsoft.com/en-us/rest/api/keyvault/keys/get-key/get-key#keyvaulterror
 *     errors: { error: { code, message, innererror } }
 *   https://learn.microsoft.com/en-us/azure/key-vault/general/authentication-requests-and-responses
 *     a request without a token gets 401 and
 *     `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/{tenant}", resource="https://vault.azure.net"`
 *   https://learn.microsoft.com/en-us/azure/key-vault/keys/about-keys-details (RSA-OAEP-256:
 *     RSAES-OAEP with SHA-256 and MGF1 with SHA-256; RSA-OAEP: SHA-1)
 * Real RSA-OAEP (node:crypto) with one RSA-2048 key pair per key version, so what it wraps only
 * the matching private key unwraps, and old versions keep unwrapping after `rotate`. Served over
 * http, and over https too when given a certificate (the Azure SDK sends tokens over https only);
 * both listeners share one vault.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { constants, generateKeyPair, privateDecrypt, publicEncrypt, randomBytes, type KeyObject } from 'node:crypto'

export interface AzureRequest {
  method: string
  /** Path with each key version replaced by {version} and an empty one kept empty. */
  path: string
  /** The operation: get, wrapkey, unwrapkey. */
  op: string
  apiVersion: string | null
  /** Field names of the JSON body, sorted. */
  fields: string[]
  alg?: string
  authorized: boolean
}

export interface FakeAzureKeyVault {
  /** http://127.0.0.1:port */
  url: string
  /** https://127.0.0.1:port when a certificate was given. */
  httpsUrl?: string
  /** Operation per request (get, wrapkey, unwrapkey, or 'challenge' for a 401 without a token). */
  calls: string[]
  requests: AzureRequest[]
  /** Current version of a key. */
  version(key: string): string
  /** Adds a new version of a key, which then wraps; older versions still unwrap. */
  rotate(key: string): Promise<string>
  /** The next n requests answer 503. */
  fail(n: number): void
  close(): Promise<void>
}

/** api-versions that have wrapkey/unwrapkey with RSA-OAEP-256, up to the one the SDK here sends. */
const API_VERSIONS = new Set(['7.0', '7.1', '7.2', '7.3', '7.4', '7.5', '7.6', '2025-07-01'])

interface Version {
  id: string
  privateKey: KeyObject
  publicKey: KeyObject
  created: number
}

async function newVersion(): Promise<Version> {
  const { privateKey, publicKey } = await new Promise<{ privateKey: KeyObject; publicKey: KeyObject }>((resolve, reject) =>
    generateKeyPair('rsa', { modulusLength: 2048 }, (e, publicKey, privateKey) => (e ? reject(e) : resolve({ publicKey, privateKey }))),
  )
  return { id: randomBytes(16).toString('hex'), privateKey, publicKey, created: Math.floor(Date.now() / 1000) }
}

export async function startFakeAzureKeyVault(options: {
  token: string
  /** A valid token whose identity lacks the key permissions: 403 Forbidden. */
  forbiddenToken?: string
  keys: string[]
  tls?: { key: string; cert: string }
}): Promise<FakeAzureKeyVault> {
  const keys = new Map<string, Version[]>()
  await Promise.all(options.keys.map(async (k) => keys.set(k.toLowerCase(), [await newVersion()])))
  const calls: string[] = []
  const requests: AzureRequest[] = []
  let failures = 0

  const send = (res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}) => {
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers })
    res.end(JSON.stringify(body))
  }
  const error = (res: ServerResponse, status: number, code: string, message: string, headers?: Record<string, string>) =>
    send(res, status, { error: { code, message } }, headers)
  const challenge = {
    'www-authenticate': 'Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net"',
  }

  async function handle(req: IncomingMessage, res: ServerResponse, scheme: string) {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const raw = Buffer.concat(chunks).toString('utf8')
    const url = new URL(req.url ?? '/', `${scheme}://${req.headers.host}`)
    const vaultBase = `${scheme}://${req.headers.host}`
    // /keys/{name}, /keys/{name}/{version}, /keys/{name}/{version?}/{op}
    const m = /^\/keys\/([0-9a-zA-Z-]+)(?:\/([0-9a-zA-Z]*))?(?:\/(wrapkey|unwrapkey))?\/?$/.exec(url.pathname)
    const op = m ? (m[3] ?? (req.method === 'GET' ? 'get' : '?')) : '?'
    let body: Record<string, unknown> = {}
    let parsed = true
    try {
      if (raw !== '') body = JSON.parse(raw) as Record<string, unknown>
    } catch {
      parsed = false
    }
    const authorization = req.headers.authorization
    requests.push({
      method: req.method ?? '?',
      path: m ? `/keys/${m[1]}${m[2] !== undefined ? `/${m[2] === '' ? '' : '{version}'}` : ''}${m[3] ? `/${m[3]}` : ''}` : url.pathname,
      op,
      apiVersion: url.searchParams.get('api-version'),
      fields: Object.keys(body).sort(),
      ...(typeof body.alg === 'string' ? { alg: body.alg } : {}),
      authorized: authorization !== undefined,
    })
    if (authorization === undefined) {
      calls.push('challenge')
      return error(res, 401, 'Unauthorized', 'AKV10000: Request is missing a Bearer or PoP token.', challenge)
    }
    calls.push(op)
    if (failures > 0) {
      failures--
      return error(res, 503, 'ServiceUnavailable', 'The service is temporarily unavailable.')
    }
    if (options.forbiddenToken !== undefined && authorization === `Bearer ${options.forbiddenToken}`) {
      return error(res, 403, 'Forbidden', `The user, group or application does not have keys ${op === 'unwrapkey' ? 'unwrapKey' : op === 'wrapkey' ? 'wrapKey' : 'get'} permission on key vault.`)
    }
    if (authorization !== `Bearer ${options.token}`) return error(res, 401, 'Unauthorized', 'AKV10032: Invalid issuer.', challenge)
    const apiVersion = url.searchParams.get('api-version')
    if (!apiVersion) return error(res, 400, 'BadParameter', 'The api-version query parameter (?api-version=) is required for all requests.')
    if (!API_VERSIONS.has(apiVersion)) return error(res, 400, 'BadParameter', `The specified version (${apiVersion}) is not recognized.`)
    if (!m || op === '?') return error(res, 404, 'NotFound', 'Not found')
    const versions = keys.get(m[1]!.toLowerCase())
    if (!versions) return error(res, 404, 'KeyNotFound', `A key with (name/id) ${m[1]} was not found in this key vault.`)
    const version = m[2] ? versions.find((v) => v.id === m[2]) : versions[versions.length - 1]
    if (!version) return error(res, 404, 'KeyNotFound', `A key with (name/id) ${m[1]}/${m[2]} was not found in this key vault.`)
    const kid = `${vaultBase}/keys/${m[1]}/${version.id}`
    if (op === 'get') {
      if (req.method !== 'GET') return error(res, 405, 'MethodNotAllowed', 'Method not allowed')
      const jwk = version.publicKey.export({ format: 'jwk' })
      return send(res, 200, {
        key: { kid, kty: 'RSA', key_ops: ['wrapKey', 'unwrapKey', 'encrypt', 'decrypt'], n: jwk.n, e: jwk.e },
        attributes: { enabled: true, created: version.created, updated: version.created, recoveryLevel: 'Recoverable+Purgeable', recoverableDays: 90 },
      })
    }
    if (req.method !== 'POST') return error(res, 405, 'MethodNotAllowed', 'Method not allowed')
    if (!parsed || typeof body.value !== 'string' || !/^[A-Za-z0-9_-]*$/.test(body.value)) return error(res, 400, 'BadParameter', 'Property value is required and must be base64url.')
    const oaepHash = body.alg === 'RSA-OAEP-256' ? 'sha256' : body.alg === 'RSA-OAEP' ? 'sha1' : undefined
    if (!oaepHash) return error(res, 400, 'BadParameter', `Invalid algorithm: ${String(body.alg)}`)
    const value = Buffer.from(body.value, 'base64url')
    try {
      const out =
        op === 'wrapkey'
          ? publicEncrypt({ key: version.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, value)
          : privateDecrypt({ key: version.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, value)
      return send(res, 200, { kid, value: out.toString('base64url') })
    } catch {
      return error(res, 400, 'BadParameter', 'The parameter is incorrect.')
    }
  }

  const listener = (scheme: string) => (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res, scheme).catch(() => error(res, 500, 'InternalServerError', 'fake failed'))
  }
  const servers: Server[] = [createHttpServer(listener('http'))]
  if (options.tls) servers.push(createHttpsServer({ key: options.tls.key, cert: options.tls.cert }, listener('https')))
  await Promise.all(servers.map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', r))))
  const port = (s: Server) => (s.address() as { port: number }).port
  return {
    url: `http://127.0.0.1:${port(servers[0]!)}`,
    ...(servers[1] ? { httpsUrl: `https://127.0.0.1:${port(servers[1])}` } : {}),
    calls,
    requests,
    version: (k) => keys.get(k.toLowerCase())!.at(-1)!.id,
    async rotate(k) {
      const v = await newVersion()
      keys.get(k.toLowerCase())!.push(v)
      return v.id
    },
    fail: (n) => void (failures = n),
    close: () =>
      Promise.all(servers.map((s) => new Promise<void>((r) => { s.closeAllConnections(); s.close(() => r()) }))).then(() => undefined),
  }
}
