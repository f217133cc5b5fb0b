/**
 * A fake Google Cloud KMS, built only from Google's public REST reference:
 *   https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations/generateRandomBytes
 *   https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/encrypt
 *   https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/decrypt
 *   https://cloud.google.com/apis/design/errors (error body { error: { code, message, status } })
 *   https://protobuf.dev/programming-guides/json/ (an enum is parsed from its name or its number;
 *     Google's own REST client sends numbers, with `?$alt=json;enum-encoding=int`, see
 *     https://cloud.google.com/apis/docs/system-parameters; ProtectionLevel HSM = 2 in
 *     https://cloud.google.com/kms/docs/reference/rest/v1/ProtectionLevel)
 * Real AES-256-GCM per key, so additionalAuthenticatedData really is bound. Bearer token checked
 * (missing or wrong: 401 UNAUTHENTICATED). Ciphertext here is iv (12) || sealed; Google's own
 * format is opaque and differs, which the client never relies on.
 */
import { createServer, type Server } from 'node:http'
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'

export interface GcpRequest {
  path: string
  /** `$alt` system parameter, if any. */
  alt: string | null
  /** Field names of the JSON body, sorted. */
  fields: string[]
}

export interface FakeGcpKms {
  url: string
  calls: string[]
  /** Authorized requests that parsed, for comparing clients. */
  requests: GcpRequest[]
  /** The next n requests answer 503 UNAVAILABLE. */
  fail(n: number): void
  close(): Promise<void>
}

export async function startFakeGcpKms(options: { token: string; keys: string[] }): Promise<FakeGcpKms> {
  const keys = new Map(options.keys.map((k) => [k, randomBytes(32)]))
  const calls: string[] = []
  const requests: GcpRequest[] = []
  let failures = 0
  const send = (res: any, status: number, body: object) => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
  const error = (res: any, code: number, status: string, message: string) => send(res, code, { error: { code, message, status } })
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const url = new URL(req.url ?? '/', 'http://fake')
    const match = /^\/v1\/(.+):(generateRandomBytes|encrypt|decrypt)$/.exec(decodeURIComponent(url.pathname))
    calls.push(match?.[2] ?? '?')
    if (failures > 0) {
      failures--
      return error(res, 503, 'UNAVAILABLE', 'The service is currently unavailable.')
    }
    if (req.method !== 'POST' || !match) return error(res, 404, 'NOT_FOUND', 'Not found')
    if (req.headers.authorization !== `Bearer ${options.token}`) return error(res, 401, 'UNAUTHENTICATED', 'Request had invalid authentication credentials.')
    let body: any
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    } catch {
      return error(res, 400, 'INVALID_ARGUMENT', 'Invalid JSON payload received.')
    }
    const [resource, action] = [match[1]!, match[2]!]
    requests.push({ path: url.pathname, alt: url.searchParams.get('$alt'), fields: Object.keys(body).sort() })
    if (action === 'generateRandomBytes') {
      if (!/^projects\/[^/]+\/locations\/[^/]+$/.test(resource)) return error(res, 404, 'NOT_FOUND', 'Location not found')
      if (!Number.isInteger(body.lengthBytes) || body.lengthBytes < 8 || body.lengthBytes > 1024) return error(res, 400, 'INVALID_ARGUMENT', 'lengthBytes')
      if (body.protectionLevel !== 'HSM' && body.protectionLevel !== 2) return error(res, 400, 'INVALID_ARGUMENT', 'only HSM protection level is supported')
      return send(res, 200, { data: randomBytes(body.lengthBytes).toString('base64') })
    }
    const key = keys.get(resource)
    if (!key) return error(res, 404, 'NOT_FOUND', `CryptoKey ${resource} not found.`)
    const aad = Buffer.from(body.additionalAuthenticatedData ?? '', 'base64')
    if (action === 'encrypt') {
      const iv = randomBytes(12)
      const cipher = createCipheriv('aes-256-gcm', key, iv).setAAD(aad)
      const sealed = Buffer.concat([iv, cipher.update(Buffer.from(body.plaintext ?? '', 'base64')), cipher.final(), cipher.getAuthTag()])
      return send(res, 200, { name: `${resource}/cryptoKeyVersions/1`, ciphertext: sealed.toString('base64') })
    }
    const ct = Buffer.from(body.ciphertext ?? '', 'base64')
    try {
      if (ct.length < 28) throw new Error('short')
      const decipher = createDecipheriv('aes-256-gcm', key, ct.subarray(0, 12)).setAAD(aad)
      decipher.setAuthTag(ct.subarray(ct.length - 16))
      const plaintext = Buffer.concat([decipher.update(ct.subarray(12, ct.length - 16)), decipher.final()])
      return send(res, 200, { plaintext: plaintext.toString('base64') })
    } catch {
      return error(res, 400, 'INVALID_ARGUMENT', 'Decryption failed: the ciphertext is invalid.')
    }
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    calls,
    requests,
    fail: (n) => void (failures = n),
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()) }),
  }
}
