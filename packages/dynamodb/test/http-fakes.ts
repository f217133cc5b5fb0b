/**
 * A local http server in front of moto answering DynamoDB's public protocol: each request is
 * recorded and handed to `answer`, which may answer it itself (throttling, a 5xx, an expired
 * token, silence) or return undefined to have it forwarded to moto unchanged.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface Seen {
  headers: IncomingMessage['headers']
  body: string
  target: string
}

export interface FakeAnswer {
  status: number
  type?: string
  /** More response headers (a `Date`). */
  headers?: Record<string, string>
  /** Never answer (the client's deadline must end it). */
  hang?: boolean
}

export interface FakeServer {
  endpoint: string
  seen: Seen[]
  close(): Promise<void>
}

export async function startFake(answer: (seen: Seen, index: number) => FakeAnswer | undefined, forwardTo?: string): Promise<FakeServer> {
  const seen: Seen[] = []
  const hanging = new Set<ServerResponse>()
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', async () => {
      const body = Buffer.concat(chunks).toString()
      const s: Seen = { headers: req.headers, body, target: String(req.headers['x-amz-target'] ?? '').split('.').pop() ?? '' }
      seen.push(s)
      const a = answer(s, seen.length - 1)
      if (a?.hang) {
        hanging.add(res)
        return
      }
      if (a) {
        res.writeHead(a.status, { 'content-type': 'application/x-amz-json-1.0', ...a.headers })
        res.end(JSON.stringify(a.type ? { __type: `com.amazonaws.dynamodb.v20120810#${a.type}`, message: 'from the fake' } : {}))
        return
      }
      if (!forwardTo) {
        res.writeHead(200, { 'content-type': 'application/x-amz-json-1.0' })
        res.end('{}')
        return
      }
      const headers: Record<string, string> = {}
      for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string' && k !== 'host' && k !== 'connection' && k !== 'content-length') headers[k] = v
      const forwarded = await fetch(forwardTo, { method: 'POST', headers, body })
      res.writeHead(forwarded.status, { 'content-type': forwarded.headers.get('content-type') ?? 'application/json' })
      res.end(Buffer.from(await forwarded.arrayBuffer()))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    endpoint: `http://127.0.0.1:${port}/`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of hanging) res.destroy()
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
