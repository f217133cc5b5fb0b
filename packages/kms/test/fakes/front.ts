/**
 * A loopback reverse proxy in front of a KMS server whose answers a test can replace: the way to
 * make a real server throttle, stall mid-body, return a broken answer or keep another clock, while
 * every other request still reaches the real server (moto or one of the fakes here).
 */
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http'

/** What to do with one request instead of forwarding it. */
export type Intercept =
  | { status: number; body: string; headers?: Record<string, string> }
  /** 200 with a content-length, the first bytes of a JSON body, then nothing until closed. */
  | 'stall'

export interface Front {
  url: string
  /** Decides per request; `undefined` (or no hook) forwards it to the real server. */
  intercept?: (req: IncomingMessage, body: Buffer) => Intercept | undefined
  /** Requests received, forwarded or not. */
  requests: number
  close(): Promise<void>
}

export async function startFront(target: string): Promise<Front> {
  const to = new URL(target)
  const front: Front = { url: '', requests: 0, close: async () => {} }
  const server: Server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    front.requests++
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const body = Buffer.concat(chunks)
    const decision = front.intercept?.(req, body)
    if (decision === 'stall') {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '4096' })
      res.write('{"')
      return // the rest never comes; close() ends the connection
    }
    if (decision) {
      res.writeHead(decision.status, { 'content-type': 'application/json', ...decision.headers })
      return void res.end(decision.body)
    }
    const forward = request(
      { host: to.hostname, port: to.port, method: req.method, path: req.url, headers: { ...req.headers, host: to.host } },
      (upstream) => {
        res.writeHead(upstream.statusCode ?? 502, upstream.headers)
        upstream.pipe(res)
      },
    )
    forward.on('error', () => res.writeHead(502).end())
    forward.end(body)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  front.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`
  front.close = () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()) })
  return front
}
