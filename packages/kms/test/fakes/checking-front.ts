/**
 * A loopback proxy in front of a KMS server (moto or a fake) that lets a request through only
 * while its credential is valid in a ledger (fakes/metadata.ts): issued, not revoked, not
 * expired at the moment the request arrives. The KMS servers here take one static credential, so
 * the front replaces a valid one by the server's own before forwarding; an invalid one gets the
 * KMS's own refusal (AWS: 400 `ExpiredTokenException`; Google and Azure: 401; Vault: 403).
 *
 * In front of moto it also watches STS: each `AssumeRoleWithWebIdentity` answer moto gives is
 * entered in the ledger with moto's own `Expiration`, so moto's credentials are checked too.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { Ledger } from './metadata.ts'

export type FrontKind = 'aws' | 'gcp' | 'azure' | 'vault'

export interface CheckingFront {
  url: string
  /** One entry per KMS request: the credential it carried and the ledger's verdict. */
  checked: { credential: string; verdict: string; at: number }[]
  /** STS requests forwarded (the form fields, the token replaced by its length). */
  sts: Record<string, string>[]
  close(): Promise<void>
}

function credentialOf(kind: FrontKind, req: IncomingMessage): { credential: string | undefined; accessKeyId?: string } {
  if (kind === 'aws') {
    const id = /Credential=([^/,\s]+)\//.exec(req.headers.authorization ?? '')?.[1]
    return { credential: req.headers['x-amz-security-token'] as string | undefined, ...(id ? { accessKeyId: id } : {}) }
  }
  if (kind === 'vault') return { credential: req.headers['x-vault-token'] as string | undefined }
  return { credential: /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] }
}

const REFUSAL: Record<FrontKind, { status: number; body: string }> = {
  aws: { status: 400, body: JSON.stringify({ __type: 'com.amazon.coral.service#ExpiredTokenException', message: 'The security token included in the request is expired' }) },
  gcp: { status: 401, body: JSON.stringify({ error: { code: 401, message: 'Request had invalid authentication credentials.', status: 'UNAUTHENTICATED' } }) },
  azure: { status: 401, body: JSON.stringify({ error: { code: 'Unauthorized', message: 'AKV10022: Invalid audience.' } }) },
  vault: { status: 403, body: JSON.stringify({ errors: ['permission denied'] }) },
}

/**
 * @param serverCredential - what the KMS behind accepts, put in place of a valid credential
 *   (moto checks none: AWS requests are forwarded as they are).
 */
export async function startCheckingFront(kind: FrontKind, target: string, ledger: Ledger, serverCredential?: string): Promise<CheckingFront> {
  const front: CheckingFront = { url: '', checked: [], sts: [], close: async () => {} }
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const body = Buffer.concat(chunks)
    const headers: Record<string, string> = {}
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string' && k !== 'host' && k !== 'connection' && k !== 'content-length') headers[k] = v
    const sts = kind === 'aws' && body.toString().includes('Action=AssumeRoleWithWebIdentity')
    if (sts) {
      const fields = Object.fromEntries(new URLSearchParams(body.toString()))
      front.sts.push({ ...fields, WebIdentityToken: `(${fields.WebIdentityToken?.length ?? 0} chars)` })
    } else {
      const { credential, accessKeyId } = credentialOf(kind, req)
      const verdict = ledger.check(credential, accessKeyId)
      front.checked.push({ credential: credential ?? '', verdict, at: Date.now() })
      if (verdict !== 'ok') {
        res.writeHead(REFUSAL[kind].status, { 'content-type': 'application/json' })
        return void res.end(REFUSAL[kind].body)
      }
      if (serverCredential !== undefined) {
        if (kind === 'vault') headers['x-vault-token'] = serverCredential
        else headers.authorization = `Bearer ${serverCredential}`
      }
    }
    try {
      const upstream = await fetch(new URL(req.url ?? '/', target), { method: req.method, headers, ...(body.length ? { body } : {}) })
      const text = await upstream.text()
      if (sts && upstream.ok) {
        const field = (tag: string) => new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(text)?.[1]
        ledger.issue(field('SessionToken')!, Date.parse(field('Expiration')!), field('AccessKeyId'))
      }
      const out: Record<string, string> = {}
      upstream.headers.forEach((v, k) => {
        if (k !== 'content-length' && k !== 'transfer-encoding' && k !== 'connection' && k !== 'content-encoding') out[k] = v
      })
      res.writeHead(upstream.status, out)
      res.end(text)
    } catch {
      res.writeHead(502).end()
    }
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  front.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`
  front.close = () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()) })
  return front
}
