import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { etcdStore } from '../src/index.ts'
import { createServer as createHttpServer, type ServerResponse } from 'node:http'
import { b64, enableAuth, gateway, haveEtcd, startEtcd, type EtcdCluster } from './etcd-process.ts'
import { until } from './pass-through.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
let seq = 0
const uniquePrefix = () => `t${Date.now().toString(36)}-${++seq}/`
const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0

/** `promise`, or a failure after `ms`: turns a hang into a failing assertion. */
function within<T>(ms: number, promise: Promise<T>, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const deadline = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(message)), ms)))
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

describe.skipIf(!haveEtcd)('etcdStore on one etcd member', () => {
  let etcd: EtcdCluster
  beforeAll(async () => {
    etcd = await startEtcd()
  }, 30_000)
  afterAll(async () => {
    await etcd?.stop()
  })

  describeStore(createHarness(it), {
    name: 'etcd',
    severalRoots: true,
    watch: true,
    async open() {
      const prefix = uniquePrefix()
      return { store: etcdStore({ endpoints: [etcd.urls[0]!], prefix }), another: () => etcdStore({ endpoints: [etcd.urls[0]!], prefix }) }
    },
  })

  it('keeps the layout: head with mod_revision as version, KEK records under 8 hex digits, created once', async () => {
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: etcd.urls, prefix })
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'layout' })
    const e = await chain.encrypt('x')
    chain.close() // its watch stream: nothing of this test stays open
    const id = kekIdOf(e)
    const url = etcd.urls[0]!
    const head = await gateway(url, '/v3/kv/range', { key: b64(`${prefix}layout/head`) })
    expect(JSON.parse(Buffer.from(head.kvs[0].value, 'base64').toString())).toMatchObject({ primary: id, leased: expect.any(Number) })
    expect((await store.getHead('layout'))!.version).toBe(head.kvs[0].mod_revision)
    const kek = await gateway(url, '/v3/kv/range', { key: b64(`${prefix}layout/kek/${id.toString(16).padStart(8, '0')}`) })
    const rec = JSON.parse(Buffer.from(kek.kvs[0].value, 'base64').toString())
    expect(Object.keys(rec).sort()).toEqual(['createdAt', 'id', 'rootKind', 'wrapped'])
    expect(kek.kvs[0].mod_revision).toBe(kek.kvs[0].create_revision)
    // A chain name with a slash cannot reach into another chain's keys.
    await store.putKekIfAbsent('a', { id: 1, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([1]) })
    expect(await store.casHead('a/kek/00000002', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect((await store.listKeks('a')).map((r) => r.id)).toEqual([1])
  })

  it('keeps every field of the head: roots, retired and destroyed KEKs, a retired and a destroyed chain, read back from etcd as written', async () => {
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: etcd.urls, prefix })
    const head = {
      primary: 0xfedcba98,
      primaryCreatedAt: 1_700_000_000_123,
      leased: 4711,
      roots: [
        { name: 'default', kind: 'aes', state: 'active' as const },
        { name: 'kms.eu-1', kind: 'aws-kms', state: 'adding' as const },
      ],
      retired: [
        { id: 7, retiredAt: 1_700_000_001_000, destroyedAt: 1_700_000_900_000 },
        { id: 0xffffffff, retiredAt: 1_700_000_002_000 },
      ],
      chainRetiredAt: 1_700_000_003_000,
      chainDestroyedAt: 1_700_000_004_000,
    }
    expect(await store.casHead('full', undefined, head)).toBe(true)
    // Through a second handle, from etcd itself: the stored JSON and the head read back.
    const read = await etcdStore({ endpoints: etcd.urls, prefix }).getHead('full')
    expect(read!.value).toEqual(head)
    const raw = await gateway(etcd.urls[0]!, '/v3/kv/range', { key: b64(`${prefix}full/head`) })
    expect(JSON.parse(Buffer.from(raw.kvs[0].value, 'base64').toString())).toEqual(head)
    // A swap from that version keeps them too, and one field less is one field less.
    const { chainDestroyedAt: _, ...fewer } = head
    expect(await store.casHead('full', read!.version, fewer)).toBe(true)
    expect((await store.getHead('full'))!.value).toEqual(fewer)
    // A malformed new field is refused on write (nothing sent) and on read.
    await expect(store.casHead('full', read!.version, { ...head, retired: [{ id: 0, retiredAt: 1 }] })).rejects.toThrow(TypeError)
    await gateway(etcd.urls[0]!, '/v3/kv/put', { key: b64(`${prefix}bad/head`), value: b64(JSON.stringify({ ...head, retired: [{ id: 7, retiredAt: 'soon' }] })) })
    await expect(store.getHead('bad')).rejects.toMatchObject({ code: 'ERR_STORE', retryable: false })
  })

  it('every failure of the store itself is a typed ERR_STORE: retryable when no endpoint answers, not when a record is malformed', async () => {
    const prefix = uniquePrefix()
    const down = await etcdStore({ endpoints: ['http://127.0.0.1:9'], prefix, timeoutMs: 500 }).getHead('c').catch((e: unknown) => e)
    expect(down).toBeInstanceOf(KmsProxyError)
    expect(down).toMatchObject({ code: 'ERR_STORE', retryable: true })
    await gateway(etcd.urls[0]!, '/v3/kv/put', { key: b64(`${prefix}c/head`), value: b64('{"primary":"nope"}') })
    await gateway(etcd.urls[0]!, '/v3/kv/put', { key: b64(`${prefix}c/kek/00000007`), value: b64('not json') })
    const store = etcdStore({ endpoints: [etcd.urls[0]!], prefix })
    // Each call's rejection is caught as it is made: none is left unhandled while another is awaited.
    for (const call of [() => store.getHead('c'), () => store.getKek('c', 7), () => store.listKeks('c')]) {
      const error = await call().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(KmsProxyError)
      expect(error).toMatchObject({ code: 'ERR_STORE', retryable: false })
    }
    // Through a chain, too: a malformed head is not worth retrying.
    const chainError = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'c' }).catch((e: unknown) => e)
    expect(chainError).toMatchObject({ code: 'ERR_STORE', retryable: false })
  })

  it('a KEK record whose bytes are not canonical padded base64 is ERR_STORE, never read leniently', async () => {
    const prefix = uniquePrefix()
    const good = Buffer.from([1, 2, 3, 4]).toString('base64') // AQIDBA==
    // Not base64; a trailing line break; a missing '='; nonzero leftover bits (AQIDBB== is AQIDBA== too).
    const wrappedById = { 1: 'not base64!', 2: `${good}\n`, 3: good.slice(0, -1), 4: 'AQIDBB==' }
    for (const [id, wrapped] of Object.entries(wrappedById)) {
      const value = JSON.stringify({ id: Number(id), createdAt: 1, rootKind: 'aes', wrapped })
      await gateway(etcd.urls[0]!, '/v3/kv/put', { key: b64(`${prefix}c/kek/0000000${id}`), value: b64(value) })
    }
    const store = etcdStore({ endpoints: [etcd.urls[0]!], prefix })
    for (const id of [1, 2, 3, 4]) {
      const error = await store.getKek('c', id).catch((e: unknown) => e)
      expect(error, `record ${id}`).toBeInstanceOf(KmsProxyError)
      expect(error, `record ${id}`).toMatchObject({ code: 'ERR_STORE', retryable: false })
    }
    expect(await store.listKeks('c').catch((e: unknown) => e)).toMatchObject({ code: 'ERR_STORE', retryable: false })
    await gateway(etcd.urls[0]!, '/v3/kv/put', { key: b64(`${prefix}d/kek/00000001`), value: b64(JSON.stringify({ id: 1, createdAt: 1, rootKind: 'aes', wrapped: good })) })
    expect(Array.from((await store.getKek('d', 1))!.wrapped)).toEqual([1, 2, 3, 4])
  })

  it('validates its arguments', () => {
    expect(() => etcdStore({ endpoints: [] })).toThrow(TypeError)
    expect(() => etcdStore({ endpoints: ['ftp://x'] })).toThrow(TypeError)
    expect(() => etcdStore({ endpoints: ['https://u:p@x'] })).toThrow(/credentials/)
    expect(() => etcdStore({ endpoints: ['https://x'], username: 'u' })).toThrow(/username and password/)
    expect(() => etcdStore({ endpoints: ['https://x'], timeoutMs: 0 })).toThrow(RangeError)
    // A watch on no chain, or without a function, is refused before anything is sent.
    expect(() => etcdStore({ endpoints: ['https://x'] }).watchHead('', () => {})).toThrow(TypeError)
    expect(() => etcdStore({ endpoints: ['https://x'] }).watchHead('c', 'nope' as never)).toThrow(TypeError)
  })

  it('refuses plain http outside loopback unless the host is named in plainHttpHosts', async () => {
    for (const endpoint of ['http://etcd-1.internal:2379', 'http://10.0.0.7:2379', 'http://[fd00::7]:2379']) {
      expect(() => etcdStore({ endpoints: [endpoint] }), endpoint).toThrow(TypeError)
      expect(() => etcdStore({ endpoints: ['https://etcd-2.internal:2379', endpoint] }), endpoint).toThrow(/endpoints\[1\]: plain http .* plainHttpHosts/)
    }
    expect(() => etcdStore({ endpoints: ['http://etcd-1.internal:2379'], plainHttpHosts: ['etcd-2.internal'] })).toThrow(TypeError)
    expect(() => etcdStore({ endpoints: ['https://x'], plainHttpHosts: 'x' as never })).toThrow(/plainHttpHosts/)
    for (const endpoint of ['https://etcd-1.internal:2379', 'http://127.0.0.1:2379', 'http://localhost:2379', 'http://[::1]:2379']) {
      expect(etcdStore({ endpoints: [endpoint] }).atomic, endpoint).toBe(true)
    }
    // The opt-in works end to end: a host named in plainHttpHosts (routed here to the local etcd).
    const real = new URL(etcd.urls[0]!)
    const routed: typeof fetch = (input, init) => {
      const url = new URL(String(input))
      expect(url.host).toBe('etcd-1.internal:2379')
      url.host = real.host
      return fetch(url, init)
    }
    const store = etcdStore({ endpoints: ['http://ETCD-1.internal:2379'], plainHttpHosts: ['etcd-1.internal'], prefix: uniquePrefix(), fetch: routed })
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect((await store.getHead('c'))!.value.primary).toBe(1)
  })

  it('fails over: [dead port, live url] works, and the live endpoint is remembered', async () => {
    const calls: string[] = []
    const counting: typeof fetch = (input, init) => {
      calls.push(String(input))
      return fetch(input, init)
    }
    const dead = 'http://127.0.0.1:9' // discard port: connection refused
    const store = etcdStore({ endpoints: [dead, etcd.urls[0]!], prefix: uniquePrefix(), fetch: counting })
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store })
    const e = await chain.encrypt('hello')
    expect(new TextDecoder().decode(await chain.decrypt(e))).toBe('hello')
    chain.close()
    // Requests: one to the dead endpoint, then the live one is remembered. The chain's watch
    // stream (started at open) tries each endpoint in turn too, once.
    expect(calls.filter((c) => c.startsWith(dead) && !c.endsWith('/v3/watch')).length).toBe(1)
    expect(calls.filter((c) => c.startsWith(dead) && c.endsWith('/v3/watch')).length).toBeLessThanOrEqual(1)
    // All endpoints down: a StoreError through the chain, naming the endpoints.
    const none = etcdStore({ endpoints: [dead, 'http://127.0.0.1:1'], prefix: uniquePrefix() })
    const error = await KeyChain.open({ store: none }).catch((x) => x)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect(error.code).toBe('ERR_STORE')
    expect(error.message).toMatch(/no endpoint answered.*127\.0\.0\.1:9/)
    expect(error.retryable).toBe(true)
  })

  it('a request that gets no answer times out and moves on', async () => {
    const { createServer } = await import('node:net')
    const sockets: import('node:net').Socket[] = []
    const silent = createServer((s) => void sockets.push(s)) // accepts, never answers
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()))
    try {
      const port = (silent.address() as { port: number }).port
      const store = etcdStore({ endpoints: [`http://127.0.0.1:${port}`, etcd.urls[0]!], prefix: uniquePrefix(), timeoutMs: 300 })
      const started = Date.now()
      expect(await store.getHead('x')).toBe(undefined)
      expect(Date.now() - started).toBeGreaterThanOrEqual(250)
    } finally {
      for (const s of sockets) s.destroy()
      silent.close()
    }
  })

  it('an endpoint that sends the headers and then stalls the body: the request moves on within timeoutMs, whatever the fetch', async () => {
    const held: ServerResponse[] = []
    let requests = 0
    const stalling = createHttpServer((req, res) => {
      requests++
      req.resume()
      res.writeHead(200, { 'content-type': 'application/json' })
      res.write('{"header":{') // and never the rest
      held.push(res)
    })
    await new Promise<void>((r) => stalling.listen(0, '127.0.0.1', () => r()))
    try {
      const stalled = `http://127.0.0.1:${(stalling.address() as { port: number }).port}`
      // The global fetch, and one that ignores the abort signal (as simple socket adapters do).
      const fetches: Array<[string, typeof fetch]> = [
        ['global fetch', fetch],
        ['a fetch without abort', (input, init) => fetch(input, { ...init, signal: undefined })],
      ]
      for (const [name, f] of fetches) {
        const store = etcdStore({ endpoints: [stalled, etcd.urls[0]!], prefix: uniquePrefix(), timeoutMs: 1000, fetch: f })
        const before = requests
        const started = Date.now()
        const head = await within(8000, store.getHead('x'), `getHead through ${name} hung on the stalled body`)
        const elapsed = Date.now() - started
        expect(head).toBe(undefined)
        expect(requests - before).toBe(1)
        expect(elapsed).toBeGreaterThanOrEqual(900)
        expect(elapsed).toBeLessThan(6000)
        // The live endpoint is remembered: the stalled one is not asked again.
        expect(await store.casHead('x', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
        expect(requests - before).toBe(1)
      }
    } finally {
      for (const res of held) res.destroy()
      stalling.close()
    }
  })

  it('an endpoint that announces an answer over 64 MiB: not read, the store moves on at once', async () => {
    const held: ServerResponse[] = []
    const huge = createHttpServer((req, res) => {
      req.resume()
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(64 * 1024 * 1024 + 1) })
      res.write('{"kvs":[')
      held.push(res)
    })
    await new Promise<void>((r) => huge.listen(0, '127.0.0.1', () => r()))
    try {
      const url = `http://127.0.0.1:${(huge.address() as { port: number }).port}`
      const store = etcdStore({ endpoints: [url, etcd.urls[0]!], prefix: uniquePrefix(), timeoutMs: 10_000 })
      const started = Date.now()
      expect(await store.listKeks('x')).toEqual([])
      expect(Date.now() - started).toBeLessThan(5000)
      const alone = etcdStore({ endpoints: [url], prefix: uniquePrefix(), timeoutMs: 10_000 })
      await expect(alone.getHead('x')).rejects.toThrow(/no endpoint answered .*over 67108864 bytes/)
    } finally {
      for (const res of held) res.destroy()
      huge.close()
    }
  })
})

describe.skipIf(!haveEtcd)('etcdStore with etcd auth enabled', () => {
  let etcd: EtcdCluster
  const PASSWORD = 'pw-Zq8!secret-never-shown'
  const APP_PASSWORD = 'app-Kx7#also-secret'
  let asRoot: Awaited<ReturnType<typeof enableAuth>>
  beforeAll(async () => {
    etcd = await startEtcd()
    asRoot = await enableAuth(etcd.urls[0]!, { root: PASSWORD, app: APP_PASSWORD })
  }, 30_000)
  afterAll(async () => {
    await etcd?.stop()
  })

  describeStore(createHarness(it), {
    name: 'etcd with auth',
    severalRoots: true,
    watch: true,
    async open() {
      const prefix = `app/${uniquePrefix()}`
      // A dead endpoint first: authentication and every request fail over to the live one.
      const make = () => etcdStore({ endpoints: ['http://127.0.0.1:9', ...etcd.urls], prefix, username: 'app', password: APP_PASSWORD })
      return { store: make(), another: make }
    },
  })

  it('without credentials, or with a wrong password, the chain fails with ERR_STORE and no secret in it', async () => {
    const url = etcd.urls[0]!
    const errors: Array<Error & { cause?: Error }> = []
    for (const store of [
      etcdStore({ endpoints: [url], prefix: 'app/x/' }),
      etcdStore({ endpoints: [url], prefix: 'app/x/', username: 'app', password: PASSWORD }),
      etcdStore({ endpoints: [url], prefix: 'app/x/', username: 'root', password: APP_PASSWORD }),
      etcdStore({ endpoints: [url], prefix: 'elsewhere/', username: 'app', password: APP_PASSWORD }), // no permission
    ]) {
      const error = await KeyChain.open({ rootKey: aesRootKey(ROOT), store }).catch((e) => e)
      expect(error).toBeInstanceOf(KmsProxyError)
      expect(error.code).toBe('ERR_STORE')
      errors.push(error)
    }
    // The store's own typed errors: wrong credentials and missing permissions are not retryable.
    expect(errors[1]!.message).toMatch(/authentication as "app" failed/)
    expect(errors[3]!.message).toMatch(/permission denied/)
    for (const e of errors.slice(1)) expect((e as KmsProxyError).retryable).toBe(false)
    // The token of a working login must not leak either.
    const { token } = await gateway(url, '/v3/auth/authenticate', { name: 'app', password: APP_PASSWORD })
    for (const err of errors) {
      const shown = `${String(err)} ${JSON.stringify(err)} ${err.stack} ${String(err.cause)} ${err.cause?.stack}`
      for (const secret of [PASSWORD, APP_PASSWORD, token]) expect(shown).not.toContain(secret)
    }
  })

  it('re-authenticates once when the token is no longer valid', async () => {
    const prefix = `app/${uniquePrefix()}`
    let authCalls = 0
    let spoil = false
    const tampering: typeof fetch = async (input, init) => {
      if (String(input).endsWith('/v3/auth/authenticate')) authCalls++
      const headers = { ...(init!.headers as Record<string, string>) }
      if (spoil && headers.authorization) headers.authorization = 'spoiled.token'
      spoil = false
      return fetch(input, { ...init, headers })
    }
    const store = etcdStore({ endpoints: etcd.urls, prefix, username: 'app', password: APP_PASSWORD, fetch: tampering })
    expect(await store.getHead('c')).toBe(undefined)
    expect(authCalls).toBe(1)
    spoil = true // next request carries an invalid token; etcd says so; the store logs in again
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 1 })).toBe(true)
    expect(authCalls).toBe(2)
    expect((await store.getHead('c'))!.value.leased).toBe(1)
    expect(authCalls).toBe(2)
  })

  it('a watch whose token etcd refuses logs in again and comes up on the next attempt', async () => {
    const prefix = `app/${uniquePrefix()}`
    let authCalls = 0
    let spoiled = 0
    let expired: string | undefined
    const tampering: typeof fetch = async (input, init) => {
      if (String(input).endsWith('/v3/auth/authenticate')) authCalls++
      const headers = { ...(init!.headers as Record<string, string>) }
      // From the first watch request on, the token the store holds then is one etcd no longer
      // knows, as one past its TTL would be: every request with it carries a token etcd refuses.
      if (String(input).endsWith('/v3/watch')) expired ??= headers.authorization
      if (expired !== undefined && headers.authorization === expired) {
        spoiled++
        headers.authorization = 'expired.token'
      }
      return fetch(input, { ...init, headers })
    }
    const store = etcdStore({ endpoints: [etcd.urls[0]!], prefix, username: 'app', password: APP_PASSWORD, fetch: tampering })
    const writer = etcdStore({ endpoints: [etcd.urls[0]!], prefix, username: 'app', password: APP_PASSWORD })
    expect(await store.getHead('c')).toBe(undefined)
    expect(authCalls).toBe(1)
    let calls = 0
    const stop = store.watchHead!('c', () => calls++)
    try {
      // Refused once, then a new login, then a stream: every listener called once.
      expect(await until(() => calls === 1, 8000), 'a watch within 8 s after a refused token').toBe(true)
      expect(spoiled).toBe(1)
      expect(authCalls).toBe(2)
      expect(await writer.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
      expect(await until(() => calls === 2, 5000), 'a push within 5 s').toBe(true)
    } finally {
      stop()
    }
  })

  it('a password function is asked at each login; a password rotated in etcd and in its source is picked up with no restart, a stale cached one through invalidate', async () => {
    const n = ++seq
    const user = `rotating-${n}`
    await asRoot('/v3/auth/user/add', { name: user, password: 'first-Pw1' })
    await asRoot('/v3/auth/user/grant', { user, role: 'kms' })
    // A source as refreshingCredentials or a re-read file behaves: a cached value until invalidated.
    let source = 'first-Pw1'
    let cached: string | undefined
    const asked: string[] = []
    const invalidated: string[] = []
    const password = Object.assign(
      async () => {
        cached ??= source
        asked.push(cached)
        return cached
      },
      { invalidate: (stale: string) => void (invalidated.push(stale), (cached = undefined)) },
    )
    let spoil = false
    const tampering: typeof fetch = async (input, init) => {
      const headers = { ...(init!.headers as Record<string, string>) }
      if (spoil && headers.authorization) headers.authorization = 'spoiled.token'
      spoil = false
      return fetch(input, { ...init, headers })
    }
    const store = etcdStore({ endpoints: etcd.urls, prefix: `app/${uniquePrefix()}`, username: user, password, fetch: tampering })
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect(asked).toEqual(['first-Pw1'])
    // The password changes in etcd and in the secret store; the source still caches the old one.
    await asRoot('/v3/auth/user/changepw', { name: user, password: 'second-Pw2' })
    source = 'second-Pw2'
    spoil = true // the token is refused, as one past its TTL: a new login, refused with the cached password, then the new one
    expect((await store.getHead('c'))!.value.primary).toBe(1)
    expect(asked).toEqual(['first-Pw1', 'first-Pw1', 'second-Pw2'])
    expect(invalidated).toEqual(['first-Pw1'])
    // A function whose source fails is a retryable ERR_STORE, its error kept as the cause.
    const failing = etcdStore({ endpoints: etcd.urls, prefix: `app/${uniquePrefix()}`, username: user, password: () => Promise.reject(new Error('vault sealed')) })
    const error = await failing.getHead('c').catch((e) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect([error.code, error.retryable, error.cause?.message]).toEqual(['ERR_STORE', true, 'vault sealed'])
  })

  it('simple tokens outlive an auth change (a user added, a role granted): no error, no new login', async () => {
    let authCalls = 0
    const counting: typeof fetch = (input, init) => {
      if (String(input).endsWith('/v3/auth/authenticate')) authCalls++
      return fetch(input, init)
    }
    const store = etcdStore({ endpoints: etcd.urls, prefix: `app/${uniquePrefix()}`, username: 'app', password: APP_PASSWORD, fetch: counting })
    expect(await store.getHead('c')).toBe(undefined)
    const n = ++seq
    await asRoot('/v3/auth/user/add', { name: `someone-${n}`, password: 'x' })
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    await asRoot('/v3/auth/role/add', { name: `extra-${n}` })
    await asRoot('/v3/auth/user/grant', { user: 'app', role: `extra-${n}` })
    expect((await store.getHead('c'))!.value.primary).toBe(1)
    expect(authCalls).toBe(1)
  })
})
