/**
 * pkcs11BridgeRootKey against real bridges (`@kms-proxy/pkcs11-bridge`) on SoftHSM2, started in
 * a child process with the token's SOFTHSM2_CONF (see ../../pkcs11-bridge/test/hsm.ts for why a
 * child). Bridge A and B hold different keys on one token; bridge C's key is deleted mid-test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { createServer as createHttpServer, type Server, type ServerResponse } from 'node:http'
import { KeyChain, KmsProxyError, kekAad, memoryStore } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { pkcs11BridgeRootKey } from '../src/index.ts'
import { MODULE, PIN, TOKEN_LABEL, bearer, makeToken, readLine, spawnTs, type TestToken } from '../../pkcs11-bridge/test/hsm.ts'
import { expectWrapKek, extractableOfNewKekForm, wrapKekOneCallEach } from '../../kms/test/chain.ts'

const TOKEN = bearer()
let hsm: TestToken
let child: ChildProcess
let urls: string[] = []
const calls: string[] = []
const errors: unknown[] = []

/** Counts bridge calls by path, then forwards them. */
const countingFetch: typeof fetch = async (input, init) => {
  calls.push(String(input).split('/v1/')[1] ?? '?')
  return fetch(input, init)
}

beforeAll(async () => {
  hsm = makeToken()
  const base = { module: MODULE, tokenLabel: TOKEN_LABEL, pin: PIN, token: TOKEN, createKey: true }
  const bridges = [{ ...base, keyLabel: 'bridge-a' }, { ...base, keyLabel: 'bridge-b' }, { ...base, keyLabel: 'bridge-c' }]
  child = spawnTs('./serve.ts', { ...hsm.env, KMS_PROXY_TEST_BRIDGES: JSON.stringify(bridges) })
  urls = await readLine<string[]>(child, 'READY ')
}, 30_000)

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((r) => child.once('exit', r))
    child.stdin!.end()
    await exited
  }
  hsm?.cleanup()
  // The PIN and the bearer token never appear in any error these tests saw.
  for (const e of errors) {
    const shown = `${String(e)} ${JSON.stringify(e)} ${(e as Error).stack ?? ''}`
    expect(shown).not.toContain(TOKEN)
    expect(shown).not.toContain(PIN)
  }
})

const root = (i = 0, overrides = {}) => pkcs11BridgeRootKey({ url: urls[i]!, token: TOKEN, fetch: countingFetch, ...overrides })

/** `promise`, or a failure after `ms`: turns a hang into a failing assertion. */
function within<T>(ms: number, promise: Promise<T>, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const deadline = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)))
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

/**
 * A real HTTP server in front of a bridge: while `stalled`, it answers every request with the
 * status and headers and then never the rest of the body (as a stuck proxy does); otherwise it
 * forwards the request and the bridge's answer.
 */
async function stallingProxy(target: string) {
  const held: ServerResponse[] = []
  const state = { stalled: true, requests: 0 }
  const server: Server = createHttpServer(async (req, res) => {
    state.requests++
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    if (state.stalled) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.write('{"kek":"')
      held.push(res)
      return
    }
    const answer = await fetch(`${target}${req.url}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: String(req.headers.authorization) },
      body: Buffer.concat(chunks),
    })
    res.writeHead(answer.status, { 'content-type': 'application/json' })
    res.end(Buffer.from(await answer.arrayBuffer()))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  return {
    state,
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    close() {
      for (const res of held) res.destroy()
      server.close()
    },
  }
}

async function rootKeyError(promise: Promise<unknown>, message: RegExp): Promise<KmsProxyError> {
  const error = await promise.then(() => undefined, (e: unknown) => e)
  errors.push(error)
  expect(error).toBeInstanceOf(KmsProxyError)
  expect((error as KmsProxyError).code).toBe('ERR_ROOT_KEY')
  expect((error as KmsProxyError).message).toMatch(message)
  return error as KmsProxyError
}

describeRootKey(createHarness(it), {
  name: 'pkcs11BridgeRootKey (SoftHSM2)',
  make: () => root(0),
  other: () => root(1),
  secrets: [TOKEN, PIN],
  wrapKek: true,
})

describe('the PKCS#11 bridge through a key chain', () => {
  it('one generate per rotation, one unwrap per KEK per process, none per message', async () => {
    calls.length = 0
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: root(), store, maxWrapsPerKek: 500, dekPoolSize: 0 })
    const encrypted = []
    for (let i = 0; i < 2000; i++) encrypted.push(await chain.encrypt(`record ${i}`))
    const keks = (await store.listKeks('default')).length
    expect(keks).toBe(4)
    expect(calls.filter((c) => c === 'generate').length).toBe(keks)
    expect(calls.filter((c) => c === 'unwrap').length).toBe(0)
    calls.length = 0
    const reader = await KeyChain.open({ rootKey: root(), store })
    await Promise.all(encrypted.map((e) => reader.decrypt(e)))
    expect(calls).toEqual(Array(keks).fill('unwrap'))
    console.log(`PKCS#11 bridge: 2,000 encryptions made ${keks} generate calls (maxWrapsPerKek 500); 2,000 decryptions in a new chain made ${keks} unwrap calls`)
  })

  it('measures ms per generate and per unwrap over HTTP (SoftHSM2)', async () => {
    const r = root(0, { fetch })
    const aad = new TextEncoder().encode('kms-proxy/kek/v1 timing')
    const n = 200
    const wrapped: Uint8Array[] = []
    for (let i = 0; i < 20; i++) wrapped.push((await r.newKek(aad)).wrapped) // warm up
    let started = performance.now()
    for (let i = 0; i < n; i++) wrapped[i % 20] = (await r.newKek(aad)).wrapped
    const generate = (performance.now() - started) / n
    started = performance.now()
    for (let i = 0; i < n; i++) await r.unwrapKek(wrapped[i % 20]!, aad)
    const unwrap = (performance.now() - started) / n
    console.log(`PKCS#11 bridge on loopback (SoftHSM2, sequential, n=${n}): ${generate.toFixed(3)} ms per generate, ${unwrap.toFixed(3)} ms per unwrap (HTTP + C_GenerateRandom + CKM_AES_GCM + importKey)`)
    expect(generate).toBeLessThan(100)
  })
})

describe('clear, typed errors from the client', () => {
  it('a bad bearer token: "the PKCS#11 bridge refused the token", not retryable, token not shown', async () => {
    const wrong = bearer()
    const error = await rootKeyError(pkcs11BridgeRootKey({ url: urls[0]!, token: wrong }).newKek(new Uint8Array(4)), /the PKCS#11 bridge refused the token/)
    expect(error.retryable).toBe(false)
    expect(`${String(error)} ${JSON.stringify(error)} ${error.stack}`).not.toContain(wrong)
    const { wrapped } = await root(0).newKek(new Uint8Array(4))
    await rootKeyError(pkcs11BridgeRootKey({ url: urls[0]!, token: wrong }).unwrapKek(wrapped, new Uint8Array(4)), /refused the token/)
  })

  it('a token function: asked before each request; a stale cached token the bridge refuses is invalidated and the request sent once more; a plain function is not retried', async () => {
    const stale = bearer()
    let cached: string | undefined = stale // what a source held before the token was rotated
    const asked: string[] = []
    const invalidated: string[] = []
    const token = Object.assign(
      async () => {
        cached ??= TOKEN
        asked.push(cached)
        return cached
      },
      { invalidate: (old: string) => void (invalidated.push(old), (cached = undefined)) },
    )
    const before = calls.length
    const { wrapped } = await pkcs11BridgeRootKey({ url: urls[0]!, token, fetch: countingFetch }).newKek(new Uint8Array(4))
    expect(wrapped.length).toBe(45)
    expect([asked, invalidated, calls.slice(before)]).toEqual([[stale, TOKEN], [stale], ['generate', 'generate']])
    // A function without invalidate cannot be refreshed: one request, refused, not retryable.
    const plain = async () => stale
    const error = await rootKeyError(pkcs11BridgeRootKey({ url: urls[0]!, token: plain }).newKek(new Uint8Array(4)), /refused the token/)
    expect(error.retryable).toBe(false)
    // A source that fails: a retryable ERR_ROOT_KEY with its error as the cause, nothing sent.
    const sent = calls.length
    const failing = await rootKeyError(pkcs11BridgeRootKey({ url: urls[0]!, token: () => Promise.reject(new Error('vault sealed')), fetch: countingFetch }).newKek(new Uint8Array(4)), /the token function failed/)
    expect([failing.retryable, (failing.cause as Error).message, calls.length]).toEqual([true, 'vault sealed', sent])
    for (const e of [error, failing]) expect(`${String(e)} ${JSON.stringify(e)} ${e.stack}`).not.toContain(stale)
  })

  it('the bridge down: "no answer; is it running?", retryable, after the retries', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port
        s.close(() => resolve(p))
      })
    })
    let attempts = 0
    const counting: typeof fetch = (input, init) => (attempts++, fetch(input, init))
    const error = await rootKeyError(
      pkcs11BridgeRootKey({ url: `http://127.0.0.1:${port}`, token: TOKEN, retries: 2, backoffMs: 1, fetch: counting }).newKek(new Uint8Array(4)),
      /^the PKCS#11 bridge at http:\/\/127\.0\.0\.1:\d+: no answer \(TypeError\); is it running\?$/,
    )
    expect(error.retryable).toBe(true)
    expect(attempts).toBe(3)
  })

  it('unwrap failures (wrong associated data, altered bytes, another key) say so', async () => {
    const aad = new Uint8Array([1, 2, 3])
    const { wrapped } = await root(0).newKek(aad)
    const message = /could not unwrap this KEK: wrong key, the wrapped KEK was altered, or the associated data differs/
    await rootKeyError(root(0).unwrapKek(wrapped, new Uint8Array([1, 2, 4])), message)
    const altered = wrapped.slice()
    altered[20]! ^= 1
    await rootKeyError(root(0).unwrapKek(altered, aad), message)
    await rootKeyError(root(1).unwrapKek(wrapped, aad), message)
    await rootKeyError(root(0).unwrapKek(wrapped.subarray(0, 30), aad), /wrong length/)
    await rootKeyError(root(0).unwrapKek(Uint8Array.of(0x20, ...wrapped.subarray(1)), aad), /not wrapped by a PKCS#11 root key/)
  })

  it('a key deleted from the token: "missing on the token", not retryable', async () => {
    const aad = new Uint8Array([9])
    const { wrapped } = await root(2).newKek(aad)
    const done = readLine<number>(child, 'DESTROYED ')
    child.stdin!.write('destroy bridge-c\n')
    expect(await done).toBe(1)
    const error = await rootKeyError(root(2).unwrapKek(wrapped, aad), /the PKCS#11 bridge reports that its key is missing on the token: .*no secret key labelled "bridge-c"/)
    expect(error.retryable).toBe(false)
    await rootKeyError(root(2).newKek(aad), /key is missing on the token/)
  })

  it('a bridge (or proxy) that sends headers then stalls the body: the unwrap fails within timeoutMs as a retryable ERR_ROOT_KEY, and the chain decrypts again once it answers', async () => {
    const store = memoryStore()
    const encrypted = await (await KeyChain.open({ rootKey: root(0), store })).encrypt('after the stall')
    const proxy = await stallingProxy(urls[0]!)
    try {
      const rootKey = pkcs11BridgeRootKey({ url: proxy.url, token: TOKEN, timeoutMs: 1000, retries: 1, backoffMs: 1 })
      const reader = await KeyChain.open({ rootKey, store })
      const started = Date.now()
      const failed = await within(10_000, reader.decrypt(encrypted).then(() => undefined, (e: unknown) => e), 'decrypt hung on the stalled body')
      const elapsed = Date.now() - started
      errors.push(failed)
      expect(failed).toBeInstanceOf(KmsProxyError)
      expect((failed as KmsProxyError).code).toBe('ERR_ROOT_KEY')
      expect((failed as KmsProxyError).retryable).toBe(true)
      expect((failed as KmsProxyError).message).toMatch(/^the PKCS#11 bridge at http:\/\/127\.0\.0\.1:\d+: no complete answer within 1000 ms$/)
      expect(proxy.state.requests).toBe(2) // the first attempt and one retry, each cut at 1 s
      expect(elapsed).toBeGreaterThanOrEqual(1900)
      expect(elapsed).toBeLessThan(8000)
      // The chain kept no hung unwrap: once the bridge answers, the same chain decrypts.
      proxy.state.stalled = false
      const text = await within(10_000, reader.decrypt(encrypted), 'decrypt still hung after the bridge recovered')
      expect(new TextDecoder().decode(text)).toBe('after the stall')
      expect(proxy.state.requests).toBe(3)
    } finally {
      proxy.close()
    }
  })

  it('plain http only to loopback or to a host named in plainHttpHosts', async () => {
    for (const url of ['http://bridge.internal:7711', 'http://10.0.0.7:7711', 'http://[fd00::7]:7711']) {
      expect(() => pkcs11BridgeRootKey({ url, token: TOKEN }), url).toThrow(/url: plain http .* plainHttpHosts/)
      expect(() => pkcs11BridgeRootKey({ url, token: TOKEN, plainHttpHosts: ['other.internal'] }), url).toThrow(TypeError)
    }
    expect(() => pkcs11BridgeRootKey({ url: 'https://bridge.internal', token: TOKEN, plainHttpHosts: 'bridge.internal' as never })).toThrow(/plainHttpHosts/)
    for (const url of ['https://bridge.internal:7711', 'http://127.0.0.1:7711', 'http://localhost', 'http://[::1]:7711']) {
      expect(pkcs11BridgeRootKey({ url, token: TOKEN }).kind, url).toBe('pkcs11-bridge')
    }
    const aad = new Uint8Array([5])
    const bridge = new URL(urls[0]!)
    /** A fetch that reaches the bridge whatever the URL says: as a socket adapter does; it ignores the abort signal. */
    const adapter = (expectedHost: string): typeof fetch => (input, init) => {
      const url = new URL(String(input))
      expect(url.host).toBe(expectedHost)
      url.host = bridge.host
      return fetch(url, { ...init, signal: undefined })
    }
    // http://localhost with an adapter (the Unix-socket case) needs no opt-in.
    const local = pkcs11BridgeRootKey({ url: 'http://localhost', token: TOKEN, fetch: adapter('localhost') })
    const { wrapped } = await local.newKek(aad)
    // A named host is reached over plain http (routed here to the bridge on loopback).
    const named = pkcs11BridgeRootKey({ url: 'http://Bridge.internal:7711', token: TOKEN, plainHttpHosts: ['bridge.internal'], fetch: adapter('bridge.internal:7711') })
    await named.unwrapKek(wrapped, aad)
  })

  it('String() and JSON.stringify() of the root key show no token', () => {
    const r = root(0)
    expect(String(r)).toBe('[RootKey pkcs11-bridge]')
    expect(JSON.stringify(r)).not.toContain(TOKEN)
    expect(JSON.parse(JSON.stringify(r)).kind).toBe('pkcs11-bridge')
  })
})

describe('wrapKek of an existing KEK through the bridge (a second root of a chain)', () => {
  it('unwrapKek of the newKek form gives a non-extractable KEK, an extractable one only with { extractable: true }', async () => {
    expect(await extractableOfNewKekForm(root())).toEqual([false, true])
  })

  it('wrapKek makes one /v1/datakey call and unwrapKek one /v1/unwrap; the KEK is never exported nor sent; 108 bytes', async () => {
    const run = await wrapKekOneCallEach((f) => root(0, { fetch: f }), calls, countingFetch)
    expect(expectWrapKek(run, { wrap: ['datakey'], unwrap: ['unwrap'], tag: 0x31 })).toBe(108)
    // The token sealed a 32-byte data key (0x32): it is not a KEK form and is refused as one.
    const sealedDataKey = run.wrapped.subarray(3, 64)
    expect(sealedDataKey[0]).toBe(0x32)
    await rootKeyError(root().unwrapKek(sealedDataKey, kekAad('wrap-kek', 7)), /not wrapped by a PKCS#11 root key/)
    // Another key on the token (bridge B) cannot open it.
    await rootKeyError(root(1).unwrapKek(run.wrapped, kekAad('wrap-kek', 7)), /could not unwrap this KEK/)
  })
})

describe('changing a chain from one HSM key to another through the bridge', () => {
  it('changeRoot: one unwrap per KEK on the old key, one datakey per KEK on the new one (and one unwrap proving it); then only the new key opens the chain', async () => {
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: root(0), store, maxWrapsPerKek: 2, dekPoolSize: 0 })
    const encrypted: Uint8Array[] = []
    for (let i = 0; i < 12; i++) encrypted.push(await chain.encrypt(`record ${i}`))
    const keks = new Set((await store.listKeks('default')).map((r) => r.id)).size
    expect(keks).toBe(6)
    const byBridge: string[] = []
    const fetchOf = (name: string): typeof fetch => async (input, init) => {
      byBridge.push(`${name} ${String(input).split('/v1/')[1]}`)
      return fetch(input, init)
    }
    const fresh = await KeyChain.open({ rootKey: root(0, { fetch: fetchOf('a') }), store })
    const report = await fresh.changeRoot(root(1, { fetch: fetchOf('b') }))
    expect(report).toMatchObject({ keks, wrapped: keks, deleted: keks, rootKeyWraps: keks })
    const count = (line: string) => byBridge.filter((l) => l === line).length
    // The old key: one unwrap per KEK re-wrapped, and one more as the chain proves the root it
    // holds (the primary, non-extractable) before it changes anything.
    expect([count('a unwrap'), count('b datakey'), count('b unwrap'), count('a generate') + count('b generate')]).toEqual([keks + 1, keks, 1, 0])
    expect(count('a unwrap') + count('b unwrap')).toBe(report.rootKeyUnwraps)
    for (const r of await store.listKeks('default')) expect([r.wrapped[0], r.wrapped.length]).toEqual([0x31, 108])
    const reader = await KeyChain.open({ roots: { [report.name]: root(1) }, store })
    for (const [i, e] of encrypted.entries()) expect(new TextDecoder().decode(await reader.decrypt(e))).toBe(`record ${i}`)
    const old = await KeyChain.open({ rootKey: root(0), store })
    await rootKeyError(old.decrypt(encrypted[0]!), /./)
  }, 60_000)
})
