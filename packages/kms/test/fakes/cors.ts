/**
 * A loopback reverse proxy that adds CORS headers, so that a page on another origin can reach a
 * KMS emulator. Real KMS endpoints differ here (AWS KMS sends no CORS headers, for one): a browser
 * app reaches them through its own backend or a gateway that does what this proxy does.
 */
import { createServer, request, type Server } from 'node:http'

export async function startCorsProxy(target: string): Promise<{ url: string; close(): Promise<void> }> {
  const to = new URL(target)
  const server: Server = createServer((req, res) => {
    const cors = {
      'access-control-allow-origin': '*',
      'access-control-allow-methods': 'GET, POST, PUT, OPTIONS',
      // The Google metadata client reads Metadata-Flavor from the answer.
      'access-control-expose-headers': '*',
      'access-control-allow-headers': req.headers['access-control-request-headers'] ?? '*',
      'access-control-max-age': '600',
    }
    if (req.method === 'OPTIONS') return void res.writeHead(204, cors).end()
    const forward = request(
      { host: to.hostname, port: to.port, method: req.method, path: req.url, headers: { ...req.headers, host: to.host } },
      (upstream) => {
        res.writeHead(upstream.statusCode ?? 502, { ...upstream.headers, ...cors })
        upstream.pipe(res)
      },
    )
    forward.on('error', () => res.writeHead(502, cors).end())
    req.pipe(forward)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()) }),
  }
}
