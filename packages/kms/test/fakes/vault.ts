/**
 * A fake HashiCorp Vault Transit engine, built only from Vault's public HTTP API docs:
 *   https://developer.hashicorp.com/vault/api-docs/secret/transit  (Generate random bytes
 *     `POST /transit/random(/:source)(/:bytes)` -> data.random_bytes; Encrypt data
 *     `POST /transit/encrypt/:name` {plaintext, associated_data} -> data.ciphertext "vault:vN:…",
 *     data.key_version; Decrypt data `POST /transit/decrypt/:name` {ciphertext, associated_data}
 *     -> data.plaintext)
 *   https://developer.hashicorp.com/vault/api-docs  (X-Vault-Token, X-Vault-Namespace,
 *     error body { "errors": [...] }, 403 "permission denied")
 * Real AES-256-GCM (aes256-gcm96), one key version per `rotate`, so associated_data is really
 * bound and old versions still decrypt.
 */
import { createServer, type Server } from 'node:http'
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'

export interface FakeVault {
  url: string
  calls: string[]
  /** Every namespace header seen. */
  namespaces: (string | undefined)[]
  fail(n: number): void
  rotate(key: string): void
  close(): Promise<void>
}

export async function startFakeVault(options: { token: string; keys: string[]; mount?: string }): Promise<FakeVault> {
  const mount = options.mount ?? 'transit'
  const keys = new Map(options.keys.map((k) => [k, [randomBytes(32)]]))
  const calls: string[] = []
  const namespaces: (string | undefined)[] = []
  let failures = 0
  const send = (res: any, status: number, body: object) => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
  const errors = (res: any, status: number, ...messages: string[]) => send(res, status, { errors: messages })
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const path = (req.url ?? '').split('?')[0]!
    const prefix = `/v1/${mount}/`
    const [action, name] = path.startsWith(prefix) ? path.slice(prefix.length).split('/') : ['?']
    calls.push(action ?? '?')
    namespaces.push(req.headers['x-vault-namespace'] as string | undefined)
    if (failures > 0) {
      failures--
      return errors(res, 503, 'Vault is sealed')
    }
    if (req.headers['x-vault-token'] !== options.token) return errors(res, 403, 'permission denied')
    if (!path.startsWith(prefix) || req.method !== 'POST') return errors(res, 404)
    let body: any = {}
    try {
      if (chunks.length) body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    } catch {
      return errors(res, 400, 'failed to parse JSON input')
    }
    if (action === 'random') {
      const n = Number(name ?? 32)
      if (!Number.isInteger(n) || n < 1 || n > 1024 * 1024) return errors(res, 400, 'invalid number of bytes')
      const b = randomBytes(n)
      return send(res, 200, { data: { random_bytes: body.format === 'hex' ? b.toString('hex') : b.toString('base64') } })
    }
    const versions = name ? keys.get(name) : undefined
    const aad = Buffer.from(body.associated_data ?? '', 'base64')
    if (action === 'encrypt') {
      if (!versions) return errors(res, 400, 'encryption key not found') // (real Vault may upsert)
      const version = versions.length
      const iv = randomBytes(12)
      const cipher = createCipheriv('aes-256-gcm', versions[version - 1]!, iv).setAAD(aad)
      const sealed = Buffer.concat([iv, cipher.update(Buffer.from(body.plaintext ?? '', 'base64')), cipher.final(), cipher.getAuthTag()])
      return send(res, 200, { data: { ciphertext: `vault:v${version}:${sealed.toString('base64')}`, key_version: version } })
    }
    if (action === 'decrypt') {
      if (!versions) return errors(res, 400, 'encryption key not found')
      const m = /^vault:v(\d+):(.+)$/.exec(String(body.ciphertext ?? ''))
      const k = m ? versions[Number(m[1]) - 1] : undefined
      if (!m || !k) return errors(res, 400, 'invalid ciphertext: no prefix')
      const ct = Buffer.from(m[2]!, 'base64')
      try {
        const decipher = createDecipheriv('aes-256-gcm', k, ct.subarray(0, 12)).setAAD(aad)
        decipher.setAuthTag(ct.subarray(ct.length - 16))
        const plaintext = Buffer.concat([decipher.update(ct.subarray(12, ct.length - 16)), decipher.final()])
        return send(res, 200, { data: { plaintext: plaintext.toString('base64') } })
      } catch {
        return errors(res, 400, 'cipher: message authentication failed')
      }
    }
    return errors(res, 404)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    calls,
    namespaces,
    fail: (n) => void (failures = n),
    rotate: (k) => void keys.get(k)!.push(randomBytes(32)),
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()) }),
  }
}
