/**
 * A checking proxy in front of moto_server, which issues STS credentials but never checks their
 * expiry. It relays every request to moto and:
 * - reads each `AssumeRoleWithWebIdentity` answer's AccessKeyId and Expiration (shortening the
 *   Expiration to `lifetimeMs` when moto's is later: real STS issues 15 minutes at least, a test
 *   needs seconds), and remembers them;
 * - refuses a web identity token other than the current one (`setToken`), as STS refuses an
 *   expired service-account token, so a client that keeps a token it read once fails;
 * - refuses any KMS request signed with an access key id whose expiry has passed, as AWS does:
 *   HTTP 400, `ExpiredTokenException`.
 * Every exchange is recorded, with the role session name the credentials were issued to.
 */
import { createServer, type Server } from 'node:http'

/** Credentials the proxy relayed from STS. */
export interface Issued {
  accessKeyId: string
  session: string
  token: string
  issuedAt: number
  expiresAt: number
}

/** One request the proxy saw. */
export interface Exchange {
  at: number
  service: 'sts' | 'kms'
  /** The STS action, or the KMS target without `TrentService.`. */
  action: string
  /** The role session the signing credentials were issued to (STS: the one asked for); undefined for credentials not issued here. */
  session: string | undefined
  accessKeyId: string | undefined
  status: number
  /** Refused by the proxy (expired credentials or a stale web identity token), never relayed. */
  refused: boolean
}

export interface StsExpiryProxy {
  endpoint: string
  issued: Issued[]
  exchanges: Exchange[]
  /** The only web identity token STS accepts from now on. */
  setToken(token: string): void
  close(): Promise<void>
}

const field = (xml: string, name: string) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml)?.[1]

export async function startStsExpiryProxy(motoEndpoint: string, options: { lifetimeMs: number; token: string }): Promise<StsExpiryProxy> {
  let token = options.token
  const issued: Issued[] = []
  const exchanges: Exchange[] = []
  const byKey = new Map<string, Issued>()
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const body = Buffer.concat(chunks)
    const at = Date.now()
    const target = req.headers['x-amz-target']
    const signedBy = /Credential=([A-Z0-9]+)\//.exec(String(req.headers.authorization ?? ''))?.[1]
    const send = (status: number, type: string, text: string | Buffer) => {
      res.writeHead(status, { 'content-type': type })
      res.end(text)
    }
    if (typeof target === 'string') {
      const action = target.replace(/^TrentService\./, '')
      const credentials = signedBy ? byKey.get(signedBy) : undefined
      if (credentials && at >= credentials.expiresAt) {
        exchanges.push({ at, service: 'kms', action, session: credentials.session, accessKeyId: signedBy, status: 400, refused: true })
        return send(400, 'application/x-amz-json-1.1', JSON.stringify({ __type: 'ExpiredTokenException', message: 'The security token included in the request is expired' }))
      }
      const answer = await relay(req.method ?? 'POST', req.headers, body)
      exchanges.push({ at, service: 'kms', action, session: credentials?.session, accessKeyId: signedBy, status: answer.status, refused: false })
      return send(answer.status, answer.type, answer.body)
    }
    const form = new URLSearchParams(req.method === 'GET' ? (req.url ?? '').split('?')[1] ?? '' : body.toString('utf8'))
    const action = form.get('Action') ?? '?'
    const session = form.get('RoleSessionName') ?? undefined
    if (action === 'AssumeRoleWithWebIdentity' && form.get('WebIdentityToken') !== token) {
      exchanges.push({ at, service: 'sts', action, session, accessKeyId: undefined, status: 400, refused: true })
      const error = '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>ExpiredTokenException</Code><Message>Token expired: current date/time is past the token\'s exp</Message></Error><RequestId>proxy</RequestId></ErrorResponse>'
      return send(400, 'text/xml', error)
    }
    const answer = await relay(req.method ?? 'POST', req.headers, body)
    let text = answer.body.toString('utf8')
    const accessKeyId = field(text, 'AccessKeyId')
    const expiration = field(text, 'Expiration')
    if (answer.status === 200 && accessKeyId && expiration) {
      const expiresAt = Math.min(Date.parse(expiration), Date.now() + options.lifetimeMs)
      text = text.replace(`<Expiration>${expiration}</Expiration>`, `<Expiration>${new Date(expiresAt).toISOString()}</Expiration>`)
      const record = { accessKeyId, session: session ?? '?', token: form.get('WebIdentityToken') ?? '', issuedAt: at, expiresAt }
      issued.push(record)
      byKey.set(accessKeyId, record)
    }
    exchanges.push({ at, service: 'sts', action, session, accessKeyId, status: answer.status, refused: false })
    return send(answer.status, answer.type, text)
  })

  async function relay(method: string, headers: NodeJS.Dict<string | string[]>, body: Buffer): Promise<{ status: number; type: string; body: Buffer }> {
    const forward: Record<string, string> = {}
    for (const [k, v] of Object.entries(headers)) if (typeof v === 'string' && !['host', 'connection', 'content-length', 'transfer-encoding'].includes(k)) forward[k] = v
    const response = await fetch(motoEndpoint, { method, headers: forward, ...(method === 'GET' ? {} : { body: new Uint8Array(body) }) })
    return { status: response.status, type: response.headers.get('content-type') ?? 'application/octet-stream', body: Buffer.from(await response.arrayBuffer()) }
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  return {
    endpoint: `http://127.0.0.1:${port}/`,
    issued,
    exchanges,
    setToken: (next) => void (token = next),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}
