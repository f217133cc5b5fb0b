/**
 * durableObjectStore and KeyChainObject in workerd (Miniflare): the contract and the store's own
 * tests run inside the Worker against the real Durable Object; then several Workers (one isolate
 * each) rotate one chain at once; then the costs for the README.
 */
import { afterAll, beforeAll, expect, it } from 'vitest'
import { join } from 'node:path'
import * as esbuild from 'esbuild'
import { Miniflare } from 'miniflare'

const root = join(import.meta.dirname, '..', '..', '..')
const WORKERS = 4
let mf: Miniflare

/** A test worker of test/workerd bundled as one module. */
async function bundle(file: string): Promise<string> {
  // The repo's tsconfig paths map @kms-proxy/* to the sources; esbuild reads them.
  const built = await esbuild.build({ entryPoints: [join(import.meta.dirname, 'workerd', file)], bundle: true, format: 'esm', platform: 'browser', target: 'es2022', write: false, absWorkingDir: root, logLevel: 'error' })
  return built.outputFiles[0]!.text
}

beforeAll(async () => {
  const [tests, chainWorker] = await Promise.all([bundle('worker.ts'), bundle('chain-worker.ts')])
  const keys = { className: 'KeyChainObject', scriptName: 'tests', useSQLite: true }
  mf = new Miniflare({
    workers: [
      { name: 'tests', modules: true, script: tests, compatibilityDate: '2026-05-01', durableObjects: { KEYS: { className: 'KeyChainObject', useSQLite: true }, RAW: { className: 'RawKeyChainObject', useSQLite: true } } },
      ...Array.from({ length: WORKERS }, (_, i) => ({ name: `w${i}`, modules: true, script: chainWorker, compatibilityDate: '2026-05-01', durableObjects: { KEYS: keys }, bindings: { NAME: `w${i}` } })),
    ],
  })
}, 60_000)

afterAll(async () => {
  await mf?.dispose()
})

async function get(path: string, body?: unknown, worker = 'tests', headers: Record<string, string> = {}): Promise<any> {
  const w = await mf.getWorker(worker)
  const response = await w.fetch(`http://localhost${path}`, body === undefined ? {} : { method: 'POST', body: JSON.stringify(body), headers })
  const text = await response.text()
  if (!response.ok) throw new Error(`${worker}${path} answered ${response.status}: ${text.slice(0, 2000)}`)
  return JSON.parse(text)
}

it('workerd: describeStore(durableObjectStore, severalRoots) and the store’s own tests pass against the real Durable Object', async () => {
  const { results } = (await get('/contract')) as { results: Array<{ name: string; ok: boolean; ms: number; error?: string }> }
  const failed = results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)
  expect(failed).toEqual([])
  expect(results.length).toBeGreaterThanOrEqual(24)
  expect(results.some((r) => r.name.includes('exactly one wins'))).toBe(true)
  console.log(`workerd: ${results.length} tests passed in ${results.reduce((a, r) => a + r.ms, 0)} ms:\n  ${results.map((r) => `${r.name} (${r.ms} ms)`).join('\n  ')}`)
}, 60_000)

it(`${WORKERS} Workers rotate one chain at once (maxWrapsPerKek 25, leaseSize 5), twice, each keeping its chain between requests: no KEK over its limit, every KEK stored once, every message decrypts`, async () => {
  const kekIdOf = (hex: string) => parseInt(hex.slice(2, 10), 16)
  const maxWraps = 25
  const count = 125
  const prefix = `rotating-${Date.now()}:`
  const started = Date.now()
  type Run = { encrypted: Array<[string, string]>; rotations: number; rootCalls: number; ms: number }
  const round = (r: number) => Promise.all(Array.from({ length: WORKERS }, (_, i) => get('/run', { prefix, chain: 'shared', count, maxWraps, leaseSize: 5 }, `w${i}`, { 'x-round': String(r) }))) as Promise<Run[]>
  const first = await round(1)
  // Each Worker's second request uses the chain, and the store, that its first one opened.
  const runs = await round(2)
  const wall = Date.now() - started
  const encrypted = [...first, ...runs].flatMap((r) => r.encrypted)
  expect(encrypted.length).toBe(2 * WORKERS * count)
  expect(new Set(encrypted.map(([, text]) => text)).size).toBe(encrypted.length)
  const perKek = new Map<number, number>()
  for (const [hex] of encrypted) perKek.set(kekIdOf(hex), (perKek.get(kekIdOf(hex)) ?? 0) + 1)
  const most = Math.max(...perKek.values())
  expect(most).toBeLessThanOrEqual(maxWraps)
  // Every use leased before its KEK rotates away: at least the total over the limit KEKs.
  expect(perKek.size).toBeGreaterThanOrEqual(Math.ceil(encrypted.length / maxWraps))
  const { wrong, records, unwraps } = (await get('/verify', { prefix, chain: 'shared', encrypted })) as { wrong: string[]; records: number[]; unwraps: number }
  expect(wrong).toEqual([])
  expect(records.length).toBe(new Set(records).size) // one record per KEK: each written once
  for (const id of perKek.keys()) expect(records).toContain(id)
  const rootCalls = runs.reduce((a, r) => a + r.rootCalls, 0)
  // Each Worker wraps only the KEKs it made and unwraps at most each KEK once.
  expect(rootCalls).toBeLessThanOrEqual(2 * records.length + WORKERS)
  console.log(
    `durable object, ${WORKERS} Workers x 2 requests x ${count} on one chain: ${encrypted.length} records, ${perKek.size} KEKs used (${records.length} stored), max wraps per KEK ${most} (limit ${maxWraps}), ` +
      `rotations ${runs.map((r) => r.rotations).join('+')} (counted per Worker over both requests), root-key calls ${rootCalls}, fresh-chain unwraps ${unwraps}, wall ${wall} ms`,
  )
}, 60_000)

it('measured costs: stub.fetch calls and ms per rotation, per unlock, per message', async () => {
  const c = (await get('/costs')) as { rotation: { calls: number; ms: number; ops: object }; unlock: { calls: number; ms: number; ops: object }; messages: { count: number; calls: number; ops: object; msEach: number } }
  // rotate(): the primary's lease is given back or not, a new KEK record, the head swapped; then one lease.
  expect(c.rotation.calls).toBeGreaterThanOrEqual(2)
  expect(c.rotation.calls).toBeLessThanOrEqual(6)
  // open (head, primary record) + decrypting older data (its record) + a lease for the encryption.
  expect(c.unlock.calls).toBeGreaterThanOrEqual(2)
  expect(c.unlock.calls).toBeLessThanOrEqual(6)
  // 2,000 encryptions under the default lease take at most a lease or two; decryptions none.
  expect(c.messages.calls).toBeLessThanOrEqual(2)
  console.log(`durable object costs (median of 10, workerd in Miniflare, this VM): ${JSON.stringify(c)}`)
}, 60_000)
