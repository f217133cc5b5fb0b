/**
 * A small HTTP pass-through in front of one etcd member, for the watch tests: it counts the
 * requests by path, knows which watch streams are open through it, can cut them, and can play
 * a member that is down (every connection closed at once).
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

export interface PassThrough {
  /** `http://127.0.0.1:PORT`, to give the store as an endpoint. */
  url: string
  /** Requests by path (`/v3/watch`, `/v3/kv/range`, …) since the start. */
  requests: Map<string, number>
  /** Connections and requests (on connections kept alive from before) closed while `down` was set. */
  refused: number
  /** Watch streams open through it now. */
  readonly openWatches: number
  /** While true, every new connection and every request is closed at once, as by a member that is down. */
  down: boolean
  /** Cuts every open watch stream (both sides), as a member's crash or a proxy's idle timeout does. */
  dropWatches(): void
  close(): Promise<void>
}

export async function passThrough(target: string): Promise<PassThrough> {
  const upstream = new URL(target)
  const watches = new Set<{ req: IncomingMessage; res: ServerResponse; up: IncomingMessage | undefined }>()
  const sockets = new Set<Socket>()
  const server = createServer((req, res) => {
    if (proxy.down) {
      // A request on a connection kept alive from before: closed too.
      proxy.refused++
      req.socket.destroy()
      return
    }
    const path = (req.url ?? '').split('?')[0]!
    proxy.requests.set(path, (proxy.requests.get(path) ?? 0) + 1)
    const entry = { req, res, up: undefined as IncomingMessage | undefined }
    const isWatch = path === '/v3/watch'
    if (isWatch) watches.add(entry)
    const forward = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        entry.up = up
        res.writeHead(up.statusCode ?? 502, up.headers)
        up.pipe(res)
        up.on('error', () => res.destroy())
      },
    )
    forward.on('error', () => res.destroy())
    req.pipe(forward)
    res.on('close', () => {
      watches.delete(entry)
      forward.destroy()
    })
  })
  server.on('connection', (socket: Socket) => {
    if (proxy.down) {
      proxy.refused++
      socket.destroy()
      return
    }
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  const proxy: PassThrough = {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    requests: new Map(),
    refused: 0,
    get openWatches() {
      return watches.size
    },
    down: false,
    dropWatches() {
      for (const w of [...watches]) {
        w.up?.destroy()
        w.res.socket?.destroy()
      }
    },
    async close() {
      for (const s of sockets) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
  return proxy
}

/** etcd's own count of the watch streams open on a member now (its `/metrics` gauge). */
export async function watchStreams(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text()
  const m = /^etcd_debugging_mvcc_watch_stream_total (\d+)/m.exec(text)
  if (!m) throw new Error('etcd /metrics has no etcd_debugging_mvcc_watch_stream_total')
  return Number(m[1])
}

/** Waits until `check()` is true, polling every 25 ms; false when `ms` passed first. */
export async function until(check: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await check()) return true
    if (Date.now() > deadline) return false
    await new Promise((r) => setTimeout(r, 25))
  }
}
