// Test worker for workerd (bundled by esbuild, run by Miniflare), binding KeyChainObject as KEYS
// and the same class with a raw-write door as RAW. GET /contract runs describeStore and this
// store's own tests; GET /costs measures stub.fetch calls and ms; POST /verify decrypts what the
// rotating workers made, with a fresh chain.
import { KeyChain, KmsProxyError, aesRootKey, type ChainHead, type KeyStore } from '@kms-proxy/core'
import { createHarness, describeStore, type Harness } from '@kms-proxy/testkit'
import { KeyChainObject, durableObjectStore, type DurableObjectNamespaceLike, type DurableObjectStateLike } from '../../src/index.ts'

export { KeyChainObject }

/** KeyChainObject plus a PUT that writes any value under any key: to put corrupt data in place. */
export class RawKeyChainObject extends KeyChainObject {
  readonly #state: DurableObjectStateLike
  constructor(state: DurableObjectStateLike, env: unknown) {
    super(state, env)
    this.#state = state
  }
  override async fetch(request: Request): Promise<Response> {
    if (request.method !== 'PUT') return super.fetch(request)
    const { key, value, bytes } = (await request.json()) as { key: string; value: unknown; bytes?: boolean }
    await this.#state.storage.put(key, bytes ? new Uint8Array(value as number[]) : value)
    return new Response('ok')
  }
}

type Env = { KEYS: DurableObjectNamespaceLike; RAW: DurableObjectNamespaceLike }

import { ROOT } from './root.ts'
let n = 0
const unique = () => `t${Date.now().toString(36)}-${n++}:`
const HEAD: ChainHead = { primary: 7, primaryCreatedAt: 1_700_000_000_000, leased: 0 }

/** A namespace whose stubs count their fetch calls, by operation. */
function counting(inner: DurableObjectNamespaceLike) {
  const calls: Record<string, number> = {}
  const namespace: DurableObjectNamespaceLike = {
    idFromName: (name) => inner.idFromName(name),
    get(id) {
      const stub = inner.get(id)
      return {
        fetch(url, init) {
          const op = (JSON.parse(init.body) as { op: string }).op
          calls[op] = (calls[op] ?? 0) + 1
          return stub.fetch(url, init)
        },
      }
    },
  }
  const total = () => Object.values(calls).reduce((a, b) => a + b, 0)
  const reset = () => {
    for (const k of Object.keys(calls)) delete calls[k]
  }
  return { namespace, calls, total, reset }
}

/** A namespace whose stubs fail as the runtime's would: a rejected fetch, or a status. */
function failingNamespace(how: 'reject' | number): DurableObjectNamespaceLike {
  return {
    idFromName: (name) => name,
    get: () => ({
      fetch: async () => {
        if (how === 'reject') throw new Error('Durable Object reset because its code was updated.')
        return Response.json({ error: 'overloaded' }, { status: how })
      },
    }),
  }
}

const isStoreError = (retryable: boolean) => (e: unknown) => {
  if (!(e instanceof KmsProxyError) || e.code !== 'ERR_STORE' || e.retryable !== retryable) throw new Error(`expected a StoreError, retryable ${retryable}: ${String(e)}`)
}

function ownTests(t: Harness, env: Env): void {
  t.test('64 concurrent casHead on one version, each through its own store: exactly one wins', async () => {
    const prefix = unique()
    const first = durableObjectStore(env.KEYS, { prefix })
    t.equal(await first.casHead('race', undefined, HEAD), true)
    const version = (await first.getHead('race'))!.version
    for (let round = 0; round < 3; round++) {
      const expected = (await first.getHead('race'))!.version
      const results = await Promise.all(
        Array.from({ length: 64 }, (_, i) => durableObjectStore(env.KEYS, { prefix }).casHead('race', expected, { ...HEAD, leased: round * 100 + i + 1 })),
      )
      t.equal(results.filter(Boolean).length, 1, `round ${round}: winners`)
      const after = (await first.getHead('race'))!
      t.equal(after.value.leased, round * 100 + results.indexOf(true) + 1, 'the head is the winner’s')
      t.ok(after.version !== expected, 'the version moved')
    }
    t.ok(version !== (await first.getHead('race'))!.version)
    // And 64 concurrent creations of a head that does not exist yet: one wins.
    const created = await Promise.all(Array.from({ length: 64 }, () => durableObjectStore(env.KEYS, { prefix }).casHead('fresh', undefined, HEAD)))
    t.equal(created.filter(Boolean).length, 1, 'creations that won')
  })

  t.test('64 concurrent putKekIfAbsent of one id and root: exactly one wins, and its bytes stay', async () => {
    const store = durableObjectStore(env.KEYS, { prefix: unique() })
    const results = await Promise.all(
      Array.from({ length: 64 }, (_, i) => store.putKekIfAbsent('c', { id: 42, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array(40).fill(i + 1) })),
    )
    t.equal(results.filter(Boolean).length, 1, 'winners')
    t.bytesEqual((await store.getKek('c', 42))!.wrapped, new Uint8Array(40).fill(results.indexOf(true) + 1))
  })

  t.test('chain names never collide: "a", "a/b", "a:b", "a%3Ab", "a:" + prefix tricks each have their own object', async () => {
    const names = ['a', 'a/b', 'a:b', 'a%3Ab', 'b', 'é 🙂', 'x'.repeat(255)]
    const prefix = unique()
    const store = durableObjectStore(env.KEYS, { prefix })
    await Promise.all(names.map((name, i) => store.casHead(name, undefined, { ...HEAD, leased: i })))
    for (const [i, name] of names.entries()) t.equal((await store.getHead(name))!.value.leased, i, name)
    // prefix "p:" + chain "a:b" against prefix "p:a:" + chain "b"
    const p = unique()
    await durableObjectStore(env.KEYS, { prefix: p }).casHead('a:b', undefined, HEAD)
    t.equal(await durableObjectStore(env.KEYS, { prefix: `${p}a:` }).getHead('b'), undefined)
  })

  t.test('listKeks pages through every record: 600 records, 3 pages of the object', async () => {
    const store = durableObjectStore(env.KEYS, { prefix: unique() })
    for (let i = 0; i < 600; i += 50) {
      await Promise.all(Array.from({ length: 50 }, (_, k) => store.putKekIfAbsent('many', { id: i + k + 1, createdAt: 5, rootKind: 'aes', wrapped: new Uint8Array([1, 2, 3]), ...((i + k) % 3 === 0 ? { root: 'laptop' } : {}) })))
    }
    const all = await store.listKeks('many')
    t.equal(all.length, 600)
    t.equal(new Set(all.map((r) => `${r.id}/${r.root ?? 'default'}`)).size, 600)
    t.equal(all.filter((r) => r.root === 'laptop').length, 200)
  })

  t.test('bad arguments are typed errors: not a namespace, a prefix not a string, an empty chain, a bad root (TypeError), an id out of range (RangeError)', async () => {
    const store = durableObjectStore(env.KEYS, { prefix: unique() })
    const typeError = (e: unknown) => {
      if (!(e instanceof TypeError)) throw new Error(`expected a TypeError: ${String(e)}`)
    }
    await t.rejects(async () => durableObjectStore({} as DurableObjectNamespaceLike), typeError)
    await t.rejects(async () => durableObjectStore(env.KEYS, { prefix: 5 as unknown as string }), typeError)
    await t.rejects(() => store.getHead(''), typeError)
    await t.rejects(() => store.putKekIfAbsent('c', { id: 1, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array(3), root: 'a/b' }), typeError)
    await t.rejects(() => store.deleteKekWrap!('c', 1, ''), typeError)
    await t.rejects(() => store.getKek('c', -1), (e) => {
      if (!(e instanceof RangeError)) throw new Error(`expected a RangeError: ${String(e)}`)
    })
    await t.rejects(() => store.casHead('c', undefined, { primary: 'x' } as unknown as ChainHead), isStoreError(false))
  })

  t.test('a corrupt head or record in the object is a non-retryable ERR_STORE', async () => {
    const prefix = unique()
    const store = durableObjectStore(env.RAW, { prefix })
    const put = (chain: string, key: string, value: unknown, bytes = false) =>
      env.RAW.get(env.RAW.idFromName(`${prefix}${chain}`) as never).fetch('https://x/', { method: 'PUT', body: JSON.stringify({ key, value, bytes }) })
    await put('h1', 'head', { head: { primary: 'nope' }, version: 1 })
    await put('h2', 'head', 'not an object')
    await put('k1', 'kek/0000000009/default', { createdAt: 'yesterday', rootKind: 'aes', wrapped: new Uint8Array([1]) })
    await put('k2', 'kek/0000000009/default', { createdAt: 1, rootKind: 'aes', wrapped: 'text, not bytes' })
    await put('k3', 'kek/0000000009/default', { createdAt: 1, rootKind: 'aes', wrapped: [] }, true)
    await t.rejects(() => store.getHead('h1'), isStoreError(false))
    await t.rejects(() => store.getHead('h2'), isStoreError(false))
    for (const chain of ['k1', 'k2', 'k3']) {
      await t.rejects(() => store.getKek(chain, 9), isStoreError(false))
      await t.rejects(() => store.listKeks(chain), isStoreError(false))
    }
  })

  t.test('an object that does not answer (fetch rejects) or answers 5xx is a retryable ERR_STORE; 4xx a non-retryable one', async () => {
    for (const op of [(s: KeyStore) => s.getHead('c'), (s: KeyStore) => s.casHead('c', '1', HEAD), (s: KeyStore) => s.listKeks('c')]) {
      await t.rejects(() => op(durableObjectStore(failingNamespace('reject'))), isStoreError(true))
      await t.rejects(() => op(durableObjectStore(failingNamespace(503))), isStoreError(true))
      await t.rejects(() => op(durableObjectStore(failingNamespace(400))), isStoreError(false))
    }
    // The real object refuses a request it cannot read with 400.
    const r = await env.KEYS.get(env.KEYS.idFromName(unique()) as never).fetch('https://x/', { method: 'POST', body: '{"op":"dropEverything"}' })
    t.equal(r.status, 400)
  })
}

/** Median of a list of numbers. */
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

async function costs(env: Env) {
  const c = counting(env.KEYS)
  const prefix = unique()
  const store = durableObjectStore(c.namespace, { prefix })
  const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'costs', watch: false })
  await chain.encrypt('warm-up')
  // Rotation: rotate() on a chain in steady state (new KEK, record written, head swapped).
  const rotation: Array<{ calls: number; ms: number; ops: Record<string, number> }> = []
  for (let i = 0; i < 10; i++) {
    c.reset()
    const t0 = Date.now()
    await chain.rotate()
    await chain.encrypt('under the new KEK')
    rotation.push({ calls: c.total(), ms: Date.now() - t0, ops: { ...c.calls } })
  }
  // Unlock: KeyChain.open on the existing chain, then its first decryption of older data.
  const old = await chain.encrypt('old')
  const unlock: Array<{ calls: number; ms: number; ops: Record<string, number> }> = []
  for (let i = 0; i < 10; i++) {
    c.reset()
    const t0 = Date.now()
    const again = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: durableObjectStore(c.namespace, { prefix }), name: 'costs', watch: false })
    await again.decrypt(old)
    await again.encrypt('x')
    unlock.push({ calls: c.total(), ms: Date.now() - t0, ops: { ...c.calls } })
  }
  // Messages: 2,000 encryptions and their decryptions in steady state, with the default lease.
  c.reset()
  const t0 = Date.now()
  const messages: Uint8Array[] = []
  for (let i = 0; i < 2000; i++) messages.push(await chain.encrypt('m'))
  for (const m of messages) await chain.decrypt(m)
  const messageMs = (Date.now() - t0) / 4000
  return {
    rotation: { calls: median(rotation.map((r) => r.calls)), ms: median(rotation.map((r) => r.ms)), ops: rotation[rotation.length - 1]!.ops },
    unlock: { calls: median(unlock.map((r) => r.calls)), ms: median(unlock.map((r) => r.ms)), ops: unlock[unlock.length - 1]!.ops },
    messages: { count: 4000, calls: c.total(), ops: { ...c.calls }, msEach: Math.round(messageMs * 1000) / 1000 },
  }
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const { pathname } = new URL(request.url)
    if (pathname === '/contract') {
      const t = createHarness()
      describeStore(t, {
        name: 'durableObjectStore',
        severalRoots: true,
        async open() {
          const prefix = unique()
          return { store: durableObjectStore(env.KEYS, { prefix }), another: () => durableObjectStore(env.KEYS, { prefix }) }
        },
      })
      ownTests(t, env)
      return Response.json({ results: await t.run() })
    }
    if (pathname === '/costs') return Response.json(await costs(env))
    if (pathname === '/verify') {
      const { prefix, chain: name, encrypted } = (await request.json()) as { prefix: string; chain: string; encrypted: Array<[string, string]> }
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: durableObjectStore(env.KEYS, { prefix }), name, watch: false })
      const wrong: string[] = []
      for (const [hex, text] of encrypted) {
        const bytes = Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16))
        if (new TextDecoder().decode(await chain.decrypt(bytes)) !== text) wrong.push(text)
      }
      const records = await durableObjectStore(env.KEYS, { prefix }).listKeks(name)
      return Response.json({ wrong, records: records.map((r) => r.id), unwraps: chain.stats().rootKeyUnwraps })
    }
    return new Response('not found', { status: 404 })
  },
}
