import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HttpExchangeError, checkServerUrl, httpExchange, httpWithRetry, isLoopbackHost } from '@kms-proxy/core'

// A real server on loopback: one route answers whole, one sends headers and then stalls its body,
// one stalls before the headers, one sends a body over the limit, one is busy twice then answers.
let server: Server
let base: string
let busy = 0
beforeAll(async () => {
  server = createServer((req, res) => {
    if (req.url === '/ok') return res.end('{"a":1}')
    if (req.url === '/stall-body') {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' })
      res.write('{"a":')
      return // never ends
    }
    if (req.url === '/stall-headers') return // never answers
    if (req.url === '/big') return res.end('x'.repeat(4096))
    if (req.url === '/busy') {
      busy++
      res.statusCode = busy <= 2 ? 503 : 200
      return res.end(busy <= 2 ? 'busy' : 'done')
    }
    res.statusCode = 404
    res.end()
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
afterAll(async () => {
  server.closeAllConnections()
  await new Promise((r) => server.close(r))
})

describe('httpExchange', () => {
  it('reads a whole answer', async () => {
    const a = await httpExchange(`${base}/ok`, {}, { timeoutMs: 2000 })
    expect(a.status).toBe(200)
    expect(a.json()).toEqual({ a: 1 })
  })

  it('times out when the headers came but the body stalls (the deadline covers the body)', async () => {
    const started = Date.now()
    const error = await httpExchange(`${base}/stall-body`, {}, { timeoutMs: 300 }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(HttpExchangeError)
    expect((error as HttpExchangeError).reason).toBe('timeout')
    expect(Date.now() - started).toBeLessThan(5000)
  })

  it('times out when no headers come', async () => {
    const error = await httpExchange(`${base}/stall-headers`, {}, { timeoutMs: 300 }).catch((e: unknown) => e)
    expect((error as HttpExchangeError).reason).toBe('timeout')
  })

  it('keeps its deadline with a fetch that ignores the abort signal', async () => {
    const deaf: typeof fetch = (url) => fetch(url) // drops the signal
    const error = await httpExchange(`${base}/stall-body`, {}, { timeoutMs: 300, fetch: deaf }).catch((e: unknown) => e)
    expect((error as HttpExchangeError).reason).toBe('timeout')
  })

  it('refuses a body over the limit', async () => {
    const error = await httpExchange(`${base}/big`, {}, { timeoutMs: 2000, maxBodyBytes: 1024 }).catch((e: unknown) => e)
    expect((error as HttpExchangeError).reason).toBe('too-large')
  })

  it('says network for a refused connection, without the URL or headers', async () => {
    const probe = createServer()
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r))
    const port = (probe.address() as AddressInfo).port
    await new Promise((r) => probe.close(r))
    const error = await httpExchange(`http://127.0.0.1:${port}/x`, { headers: { authorization: 'Bearer s3cret-token' } }, { timeoutMs: 2000 }).catch((e: unknown) => e)
    expect((error as HttpExchangeError).reason).toBe('network')
    expect(JSON.stringify(error) + String(error) + (error as Error).stack).not.toContain('s3cret-token')
  })
})

describe('httpWithRetry', () => {
  it('retries 503 and returns the final answer', async () => {
    busy = 0
    const a = await httpWithRetry(`${base}/busy`, () => ({}), { timeoutMs: 2000, backoffMs: 1 })
    expect(a.status).toBe(200)
    expect(busy).toBe(3)
  })

  it('retries a stalled body, then rejects with the timeout', async () => {
    let attempts = 0
    const error = await httpWithRetry(`${base}/stall-body`, () => (attempts++, {}), { timeoutMs: 200, retries: 1, backoffMs: 1 }).catch((e: unknown) => e)
    expect((error as HttpExchangeError).reason).toBe('timeout')
    expect(attempts).toBe(2)
  })
})

describe('checkServerUrl', () => {
  it('accepts https anywhere and http on loopback', () => {
    expect(checkServerUrl('https://kms.example.com', 'url').hostname).toBe('kms.example.com')
    for (const u of ['http://localhost:1', 'http://127.0.0.1:1', 'http://127.5.6.7', 'http://[::1]:2379']) expect(() => checkServerUrl(u, 'url')).not.toThrow()
    expect(isLoopbackHost('LOCALHOST')).toBe(true)
    expect(isLoopbackHost('128.0.0.1')).toBe(false)
    expect(isLoopbackHost('127.0.0.1.evil.com')).toBe(false)
  })

  it('refuses plain http elsewhere unless the host is named', () => {
    expect(() => checkServerUrl('http://vault.internal:8200', 'address')).toThrow(/address: plain http to vault.internal/)
    expect(() => checkServerUrl('http://10.0.0.1:8200', 'address')).toThrow(TypeError)
    expect(checkServerUrl('http://vault.internal:8200', 'address', ['vault.internal']).port).toBe('8200')
    expect(() => checkServerUrl('http://vault.internal', 'address', ['other.internal'])).toThrow(TypeError)
  })

  it('refuses other schemes and credentials in the URL', () => {
    expect(() => checkServerUrl('ftp://x', 'url')).toThrow(TypeError)
    expect(() => checkServerUrl('https://u:p@x', 'url')).toThrow(/credentials/)
    expect(() => checkServerUrl('nope', 'url')).toThrow(/not a URL/)
  })
})
