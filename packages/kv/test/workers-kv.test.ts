import { afterAll, beforeAll, expect, it } from 'vitest'
import { join } from 'node:path'
import * as esbuild from 'esbuild'
import { Miniflare } from 'miniflare'
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { workersKvStore, type WorkersKvNamespace } from '../src/index.ts'
import { locationView } from './workerd/kv-behaviour.ts'
import type { RootsChainMeasured } from './roots-chain.ts'

/** Miniflare's KV binding as seen from Node (its types need @cloudflare/workers-types, not installed). */
type NodeKv = { list(options?: { prefix?: string; cursor?: string }): Promise<{ keys: Array<{ name: string }>; list_complete: boolean; cursor?: string }>; get(key: string, type: 'text'): Promise<string | null>; put(key: string, value: string): Promise<unknown>; delete(key: string): Promise<unknown> }

const root = join(import.meta.dirname, '..', '..', '..')
let mf: Miniflare
let output: { results: Array<{ name: string; ok: boolean; ms: number; error?: string }>; measurements: unknown[]; roots?: RootsChainMeasured }

/** A test worker of test/workerd bundled as one module. */
async function bundle(file: string): Promise<string> {
  // The repo's tsconfig paths map @kms-proxy/* to the sources; esbuild reads them (tsconfigRaw left default).
  const built = await esbuild.build({
    entryPoints: [join(import.meta.dirname, 'workerd', file)],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    absWorkingDir: root,
    logLevel: 'error',
  })
  return built.outputFiles[0]!.text
}

beforeAll(async () => {
  const [tests, chainWorker] = await Promise.all([bundle('worker.ts'), bundle('chain-worker.ts')])
  // The first worker (dispatchFetch's, getKVNamespace's) runs the tests; two more Workers, two
  // more isolates, share another namespace for the staleness test.
  const chains = (name: string) => ({ name, modules: true, script: chainWorker, compatibilityDate: '2026-05-01', kvNamespaces: { KEYS: 'shared' } })
  mf = new Miniflare({ workers: [{ name: 'tests', modules: true, script: tests, compatibilityDate: '2026-05-01', kvNamespaces: ['KEYS'] }, chains('a'), chains('b')] })
  const response = await mf.dispatchFetch('http://localhost/')
  const body = await response.text()
  if (!response.ok) throw new Error(`worker answered ${response.status}: ${body.slice(0, 2000)}`)
  output = JSON.parse(body)
}, 60_000)

afterAll(async () => {
  await mf?.dispose()
})

it('workerd: describeStore(workersKvStore) and the Workers KV behaviour tests all pass', () => {
  const failed = output.results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)
  expect(failed).toEqual([])
  expect(output.results.length).toBeGreaterThanOrEqual(10)
  console.log(`workerd: ${output.results.length} tests passed:\n  ${output.results.map((r) => `${r.name} (${r.ms} ms)`).join('\n  ')}`)
  console.log('workers KV, stale location views:', JSON.stringify(output.measurements))
})

it('the records are really in the KV namespace, read from Node through Miniflare', async () => {
  const kv = (await mf.getKVNamespace('KEYS')) as unknown as NodeKv
  const { keys } = await kv.list()
  const heads = keys.filter((k) => k.name.endsWith(':head'))
  const keks = keys.filter((k) => /:kek:\d+$/.test(k.name))
  expect(heads.length).toBeGreaterThan(3)
  expect(keks.length).toBeGreaterThan(10)
  const raw = JSON.parse((await kv.get(keks[0]!.name, 'text'))!)
  expect(Object.keys(raw).sort()).toEqual(['createdAt', 'id', 'rootKind', 'v', 'wrapped', 'writer'])
  expect(JSON.stringify(raw)).not.toMatch(/kek":\s*\{/)
  // The same store works from Node over Miniflare's binding: a chain written by KeyChain inside workerd.
  const made = keks.find((k) => k.name.includes(':default:kek:'))!.name
  const prefix = made.slice(0, made.indexOf('default:kek:'))
  const records = await workersKvStore(kv, { prefix }).listKeks('default')
  expect(records.length).toBeGreaterThan(1)
  for (const r of records) expect(r.wrapped[0]).toBe(0x01) // aesRootKey's tag
})

it("a second root's record, written by a chain inside workerd, sits beside the 'default' one: its size", async () => {
  const kv = (await mf.getKVNamespace('KEYS')) as unknown as NodeKv
  const { keys } = await kv.list({ prefix: 'roots-chain-' })
  const named = keys.map((k) => k.name).filter((k) => /:kek-wrap:\d+:laptop$/.test(k))
  expect(named.length).toBe(output.roots!.changeRoot.wrapped)
  const bytes = (s: string) => new TextEncoder().encode(s).length
  const sizes = await Promise.all(named.map(async (k) => bytes((await kv.get(k, 'text'))!)))
  const value = JSON.parse((await kv.get(named[0]!, 'text'))!)
  expect(Object.keys(value).sort()).toEqual(['createdAt', 'id', 'root', 'rootKind', 'v', 'wrapped', 'writer'])
  expect(value.root).toBe('laptop')
  console.log(`workers KV, several roots: ${JSON.stringify(output.roots)}; a record under root 'laptop' (aesRootKey): value ${Math.min(...sizes)}-${Math.max(...sizes)} bytes, key ${bytes(named[0]!)} bytes (${named[0]})`)
})

/** Workers KV modelled in memory (each call takes 0 to 2 ms), for a sweep that workerd's timing hides. */
function memoryKv(): WorkersKvNamespace {
  const m = new Map<string, string>()
  const tick = () => new Promise((r) => setTimeout(r, Math.random() * 2))
  return {
    async get(k) {
      await tick()
      return m.get(k) ?? null
    },
    async put(k, v) {
      await tick()
      m.set(k, v)
    },
    async delete(k) {
      await tick()
      m.delete(k)
    },
    async list({ prefix }) {
      await tick()
      return { keys: [...m.keys()].filter((k) => k.startsWith(prefix)).map((name) => ({ name })), list_complete: true }
    },
  }
}

it('model: 2, 4 and 8 instances on stale KV locations (5 ms, about one lease) lose nothing; the overrun is measured', async () => {
  const ROOT = new Uint8Array(32).fill(3)
  const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
  const rows: string[] = []
  for (const instances of [1, 2, 4, 8]) {
    const kv = memoryKv()
    const max = 100
    const chains = await Promise.all(
      Array.from({ length: instances }, () =>
        KeyChain.open({ rootKey: aesRootKey(ROOT), store: workersKvStore(instances === 1 ? kv : locationView(kv, 5)), maxWrapsPerKek: max, leaseSize: 10, dekPoolSize: 0 }),
      ),
    )
    const made = await Promise.all(chains.map(async (c) => Promise.all(Array.from({ length: 300 }, () => c.encrypt('x')))))
    const all = made.flat()
    const perKek = new Map<number, number>()
    for (const e of all) perKek.set(kekIdOf(e), (perKek.get(kekIdOf(e)) ?? 0) + 1)
    const store = workersKvStore(kv)
    const stored = new Set((await store.listKeks('default')).map((r) => r.id))
    for (const id of perKek.keys()) expect(stored.has(id)).toBe(true)
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT), store })
    for (const e of all) expect(new TextDecoder().decode(await reader.decrypt(e))).toBe('x')
    const most = Math.max(...perKek.values())
    if (instances === 1) expect(most).toBeLessThanOrEqual(max)
    rows.push(`${instances} instance(s) x 300: ${perKek.size} KEKs, most wraps under one KEK ${most} (limit ${max})`)
  }
  console.log(`workers KV model, leaseSize 10, staleness 5 ms:\n  ${rows.join('\n  ')}`)
}, 30_000)

it('a malformed record in the namespace is a typed, non-retryable ERR_STORE, not a SyntaxError', async () => {
  const kv = (await mf.getKVNamespace('KEYS')) as unknown as NodeKv
  const prefix = 'malformed-test:'
  const store = workersKvStore(kv, { prefix })
  await kv.put(`${prefix}bad-json:head`, '{not json')
  await kv.put(`${prefix}bad-shape:head`, JSON.stringify({ v: 1, version: 'x', head: { primary: 'nope' } }))
  await kv.put(`${prefix}bad-kek:kek:7`, '{"v":1,"id":7}')
  for (const call of [store.getHead('bad-json'), store.getHead('bad-shape'), store.getKek('bad-kek', 7)]) {
    const error = await call.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect(error).toMatchObject({ code: 'ERR_STORE', retryable: false })
  }
  const viaChain = await KeyChain.open({ rootKey: aesRootKey(new Uint8Array(32)), store, name: 'bad-json' }).catch((e: unknown) => e)
  expect(viaChain).toMatchObject({ code: 'ERR_STORE', retryable: false })
})

it('a KEK record whose bytes are not canonical padded base64 is ERR_STORE, never read leniently', async () => {
  const kv = (await mf.getKVNamespace('KEYS')) as unknown as NodeKv
  const prefix = 'base64-test:'
  const store = workersKvStore(kv, { prefix })
  // Not base64; a trailing line break; a missing '='; nonzero leftover bits (AQIDBB== is AQIDBA== too).
  const wrappedById: Record<number, string> = { 1: 'not base64!', 2: 'AQIDBA==\n', 3: 'AQIDBA=', 4: 'AQIDBB==' }
  for (const [id, wrapped] of Object.entries(wrappedById)) {
    await kv.put(`${prefix}c:kek:${id}`, JSON.stringify({ v: 1, id: Number(id), createdAt: 1, rootKind: 'aes', wrapped, writer: 'w' }))
  }
  for (const id of [1, 2, 3, 4]) {
    const error = await store.getKek('c', id).catch((e: unknown) => e)
    expect(error, `record ${id}`).toBeInstanceOf(KmsProxyError)
    expect(error, `record ${id}`).toMatchObject({ code: 'ERR_STORE', retryable: false })
  }
  await kv.put(`${prefix}d:kek:1`, JSON.stringify({ v: 1, id: 1, createdAt: 1, rootKind: 'aes', wrapped: 'AQIDBA==', writer: 'w' }))
  expect(Array.from((await store.getKek('d', 1))!.wrapped)).toEqual([1, 2, 3, 4])
})

it('workerd: a rotation through one Worker isolate is used by another isolate on the same KV within maxStalenessMs (no push: the chain polls)', async () => {
  // Miniflare's KV is immediately consistent, so what is measured is the chain's own bound;
  // production adds KV's propagation (up to about 60 s between locations).
  const staleMs = 1000
  const call = async (name: string, path: string) => {
    const response = await (await mf.getWorker(name)).fetch(`http://localhost${path}?stale=${staleMs}`)
    const body = await response.text()
    if (!response.ok) throw new Error(`worker ${name} answered ${response.status}: ${body.slice(0, 1000)}`)
    return JSON.parse(body) as { kek: number; watching: boolean }
  }
  const first = await call('a', '/encrypt')
  expect(first.watching).toBe(false)
  expect((await call('b', '/encrypt')).kek).toBe(first.kek)
  const rotated = await call('a', '/rotate')
  const rotatedAt = Date.now()
  expect(rotated.kek).not.toBe(first.kek)
  const seen: number[] = []
  while (Date.now() - rotatedAt < staleMs + 10_000) {
    seen.push((await call('b', '/encrypt')).kek)
    if (seen.at(-1) === rotated.kek) break
    await new Promise((r) => setTimeout(r, 25))
  }
  const ms = Date.now() - rotatedAt
  expect(seen.at(-1)).toBe(rotated.kek)
  // The bound plus a margin for a loaded machine (each request is a round trip to workerd).
  expect(ms).toBeLessThan(staleMs + 2000)
  console.log(`workers KV, maxStalenessMs ${staleMs}: isolate b encrypted under isolate a's new primary ${ms} ms after the rotation (${seen.length} requests, ${seen.filter((k) => k === first.kek).length} still under the old primary)`)
}, 30_000)
