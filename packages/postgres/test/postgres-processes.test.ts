import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { existsSync, statSync } from 'node:fs'
import { join } from 'node:path'
import postgres, { type Sql } from 'postgres'
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { postgresStore } from '../src/index.ts'
import { havePostgres, startPostgres, type PgServer } from './pg-process.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
const DIST_ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 13 + 5) & 0xff) // as in fixtures/worker.mjs
const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
const text = (b: Uint8Array) => new TextDecoder().decode(b)
const repo = join(import.meta.dirname, '..', '..', '..')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
let seq = 0
const uniqueTable = () => `p${Date.now().toString(36)}_${++seq}`

interface WorkerResult {
  ms: number
  encrypted: string[]
  rootCalls: number
  rotations: number
  keks: Record<string, string>
  failures: Array<{ phase: string; name: string; code: string; retryable: boolean; message: string }>
  afterLastFailure: number
}

function countPerKek(list: Uint8Array[]): Map<number, number> {
  const m = new Map<number, number>()
  for (const e of list) m.set(kekIdOf(e), (m.get(kekIdOf(e)) ?? 0) + 1)
  return m
}

/** The workers import the built package: build it when it is missing or older than the source. */
async function ensureDist(): Promise<void> {
  const src = join(repo, 'packages/postgres/src/index.ts')
  const dist = join(repo, 'packages/postgres/dist/index.js')
  if (!existsSync(dist) || statSync(dist).mtimeMs < statSync(src).mtimeMs) {
    await run('npx', ['rollup', '-c', 'rollup.config.mjs'], { ...process.env, PACKAGES: 'postgres' })
  }
  expect(existsSync(join(repo, 'packages/core/dist/index.js')), 'run `pnpm build` first').toBe(true)
}

function startWorkers(n: number, url: string, table: string, count: number, max: number, lease: number): Promise<WorkerResult[]> {
  const worker = join(repo, 'packages/postgres/test/fixtures/worker.mjs')
  return Promise.all(
    Array.from({ length: n }, async () => {
      const out = await run('node', [worker, url, table, String(count), String(max), String(lease)])
      return JSON.parse(out.trim().split('\n').at(-1)!) as WorkerResult
    }),
  )
}

/**
 * What every multi-process run must show: each record decrypts with a fresh chain, no KEK over
 * its limit, each KEK record written once and seen alike by every worker, root-key calls bounded.
 */
async function verify(sql: Sql, table: string, workers: WorkerResult[], count: number, max: number) {
  const all = workers.flatMap((w) => w.encrypted.map((h) => Uint8Array.from(Buffer.from(h, 'hex'))))
  expect(all.length).toBe(workers.length * count)
  const perKek = countPerKek(all)
  const maxUse = Math.max(...perKek.values())
  expect(maxUse).toBeLessThanOrEqual(max)
  const store = postgresStore(sql, { table })
  const final = new Map((await store.listKeks('dist')).map((r) => [r.id, Buffer.from(r.wrapped).toString('hex')]))
  for (const id of perKek.keys()) expect(final.has(id), `KEK ${id} used but not stored`).toBe(true)
  for (const w of workers) for (const [id, wrapped] of Object.entries(w.keks)) expect(final.get(Number(id))).toBe(wrapped)
  const rows = await sql.unsafe(`SELECT count(*)::int AS n, count(DISTINCT id)::int AS ids FROM ${table}_keks WHERE chain = 'dist'`)
  expect(rows[0]).toEqual({ n: final.size, ids: final.size })
  const reader = await KeyChain.open({ rootKey: aesRootKey(DIST_ROOT), store, name: 'dist', maxWrapsPerKek: max, watch: false })
  for (const [w, worker] of workers.entries()) {
    let k = 0
    for (const h of worker.encrypted) expect(text(await reader.decrypt(Uint8Array.from(Buffer.from(h, 'hex')))).endsWith(`:${k++}`), `worker ${w}`).toBe(true)
  }
  const rootCalls = workers.reduce((s, w) => s + w.rootCalls, 0)
  expect(rootCalls).toBeLessThanOrEqual(final.size * (1 + workers.length))
  return { records: all.length, keks: final.size, used: perKek.size, maxUse, rootCalls, rotations: workers.reduce((s, w) => s + w.rotations, 0) }
}

describe.skipIf(!havePostgres)('postgresStore shared by OS processes', () => {
  let pg: PgServer
  let admin: Sql
  beforeAll(async () => {
    ;[pg] = await Promise.all([startPostgres(), ensureDist()])
    admin = postgres(pg.url, { max: 2, fetch_types: false, onnotice: () => {} })
  }, 120_000)
  afterAll(async () => {
    await admin?.end({ timeout: 1 })
    await pg?.stop()
  })

  it('8 OS processes share one chain on a table none of them has seen: tables created once, every record decrypts, no KEK over its limit or written twice, root calls bounded', async () => {
    const PROCESSES = 8
    const COUNT = 1000
    const MAX = 200
    const LEASE = 20 // uses reserved per head write: 10 leases per KEK
    const table = uniqueTable() // created on first use by the 8 workers at once
    const started = Date.now()
    const workers = await startWorkers(PROCESSES, pg.url, table, COUNT, MAX, LEASE)
    const wall = Date.now() - started
    expect(workers.flatMap((w) => w.failures)).toEqual([])
    const r = await verify(admin, table, workers, COUNT, MAX)
    const head = (await postgresStore(admin, { table }).getHead('dist'))!.value
    console.log(
      `postgres, ${PROCESSES} processes x ${COUNT}, maxWrapsPerKek ${MAX}, leaseSize ${LEASE}: ${r.records} records in ${wall} ms wall ` +
        `(slowest worker ${Math.max(...workers.map((w) => w.ms))} ms after its start); KEKs stored ${r.keks}, used ${r.used}, max wraps per KEK ${r.maxUse}/${MAX}, ` +
        `rotations ${r.rotations}, root-key calls ${r.rootCalls} <= ${r.keks * (1 + PROCESSES)}, head leased ${head.leased}; all ${r.records} decrypt; ` +
        `tables created on first use by ${PROCESSES} processes at once without error`,
    )
  }, 120_000)

  it('the server restarts (pg_ctl -m fast) while 4 processes encrypt: calls meanwhile are retryable StoreErrors, the chains recover on their own, nothing lost or over its limit', async () => {
    const PROCESSES = 4
    const COUNT = 1500
    const MAX = 100
    const LEASE = 10
    const table = uniqueTable()
    // A chain in this process too.
    const sql = postgres(pg.url, { max: 2, fetch_types: false, onnotice: () => {} })
    const store = postgresStore(sql, { table })
    const mine = await KeyChain.open({ rootKey: aesRootKey(DIST_ROOT), store, name: 'dist', maxWrapsPerKek: MAX, watch: false })
    const before = await mine.encrypt('mine:0')
    const running = startWorkers(PROCESSES, pg.url, table, COUNT, MAX, LEASE)
    // Until the workers are well under way (bounded), then the restart.
    const waiting = Date.now()
    for (;;) {
      const rows = await admin.unsafe(`SELECT head FROM ${table}_heads WHERE chain = 'dist'`).catch(() => [])
      const leased = rows[0] ? (JSON.parse(rows[0].head).leased as number) : 0
      const keks = (await admin.unsafe(`SELECT count(*)::int AS n FROM ${table}_keks`).catch(() => [{ n: 0 }]))[0]!.n as number
      if (keks >= 5 || Date.now() - waiting > 30_000) break
      void leased
      await sleep(50)
    }
    const stoppedAt = Date.now()
    await pg.stopFast()
    // While it is down: a store call and a rotation (it writes a KEK record and the head) are retryable StoreErrors.
    const down = [await store.getHead('dist').catch((e: unknown) => e), await mine.rotate().catch((e: unknown) => e)]
    for (const error of down) expect(error).toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: true })
    await pg.start()
    const downMs = Date.now() - stoppedAt
    // The same chain, not reopened, encrypts again (the driver reconnects; the chain rereads its head).
    let after: Uint8Array | undefined
    for (let i = 0; i < 100 && !after; i++) after = await mine.encrypt('mine:1').catch(async () => void (await sleep(50)))
    expect(after).toBeInstanceOf(Uint8Array)
    const workers = await running
    const failures = workers.flatMap((w) => w.failures)
    for (const f of failures) expect(f).toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: true })
    // Every worker that saw the restart went on encrypting afterwards with the chain it had.
    for (const w of workers) if (w.failures.some((f) => f.phase === 'encrypt')) expect(w.afterLastFailure).toBeGreaterThan(0)
    const r = await verify(admin, table, workers, COUNT, MAX)
    const reader = await KeyChain.open({ rootKey: aesRootKey(DIST_ROOT), store, name: 'dist', watch: false })
    expect(text(await reader.decrypt(before))).toBe('mine:0')
    expect(text(await reader.decrypt(after!))).toBe('mine:1')
    expect(Math.max(...countPerKek([before, after!, ...workers.flatMap((w) => w.encrypted.map((h) => Uint8Array.from(Buffer.from(h, 'hex'))))]).values())).toBeLessThanOrEqual(MAX)
    await sql.end({ timeout: 1 })
    const kinds = [...new Set(failures.map((f) => f.message.replace(/^postgres store: [^:]+: /, '').replace(/ .*/, '')))]
    console.log(
      `postgres restart: down ${downMs} ms while ${PROCESSES} processes x ${COUNT} encrypted (limit ${MAX}, lease ${LEASE}); ` +
        `${failures.length} retryable StoreErrors retried by the workers (${kinds.join(', ') || 'none'}), every worker went on with the chain it had; ` +
        `${r.records} records, ${r.used} KEKs used, max wraps per KEK ${r.maxUse}/${MAX}; all decrypt`,
    )
  }, 120_000)
})

describe.skipIf(!havePostgres)('postgresStore costs', () => {
  let pg: PgServer
  beforeAll(async () => {
    pg = await startPostgres()
  }, 90_000)
  afterAll(async () => {
    await pg?.stop()
  })

  it('measures queries and ms per unlock, per rotation, per message (printed for the README)', async () => {
    const table = uniqueTable()
    let queries = 0
    const counted = () => postgres(pg.url, { max: 4, fetch_types: false, onnotice: () => {}, debug: () => void queries++ })
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
    const setup = counted()
    const first = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: postgresStore(setup, { table }), name: 'm' })
    await first.encrypt('warm up')
    // Unlock, cold: a new driver instance (connection and its start-up included) and a new store (its one table check).
    const cold = { q: [] as number[], ms: [] as number[] }
    for (let i = 0; i < 5; i++) {
      const sql = counted()
      queries = 0
      const t = performance.now()
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: postgresStore(sql, { table }), name: 'm' })
      cold.ms.push(performance.now() - t)
      cold.q.push(queries)
      chain.close()
      await sql.end({ timeout: 1 })
    }
    // Unlock, warm: the same store and connections.
    const warm = { q: [] as number[], ms: [] as number[] }
    const store = postgresStore(setup, { table })
    for (let i = 0; i < 5; i++) {
      queries = 0
      const t = performance.now()
      ;(await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'm' })).close()
      warm.ms.push(performance.now() - t)
      warm.q.push(queries)
    }
    // Rotation: one KEK record and one head swap (and the reads around them).
    const rot = { q: [] as number[], ms: [] as number[] }
    for (let i = 0; i < 10; i++) {
      queries = 0
      const t = performance.now()
      await first.rotate()
      rot.ms.push(performance.now() - t)
      rot.q.push(queries)
    }
    // Messages in steady state: no query at all within a lease.
    await first.encrypt('x')
    queries = 0
    const n = 2000
    const t = performance.now()
    for (let i = 0; i < n; i++) await first.encrypt('a 1 KiB record'.padEnd(1024, '.'))
    const perSecond = Math.round(n / ((performance.now() - t) / 1000))
    expect(queries).toBe(0)
    // Decrypting data under a KEK this process has not seen: one read of its record.
    const data = await first.encrypt('y')
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'm', watch: false })
    queries = 0
    await reader.decrypt(data)
    const unknownKek = queries
    expect(median(rot.q)).toBeLessThanOrEqual(6)
    expect(Math.max(...warm.q)).toBeLessThanOrEqual(4)
    first.close()
    await setup.end({ timeout: 1 })
    const show = (m: { q: number[]; ms: number[] }) => `${median(m.q)} queries (${Math.min(...m.q)}-${Math.max(...m.q)}), median ${median(m.ms).toFixed(1)} ms (${Math.min(...m.ms).toFixed(1)}-${Math.max(...m.ms).toFixed(1)})`
    console.log(
      `postgres costs: unlock cold (new connection) ${show(cold)}; unlock warm ${show(warm)}; rotation ${show(rot)}; ` +
        `per message 0 queries over ${n} encryptions (${perSecond}/s, 1 KiB, one at a time); a KEK first seen on decrypt ${unknownKek} query`,
    )
  })
})

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    p.stdout.on('data', (d: Buffer) => out.push(d))
    p.stderr.on('data', (d: Buffer) => err.push(d))
    p.on('error', reject)
    p.on('exit', (code) =>
      code === 0 ? resolve(Buffer.concat(out).toString()) : reject(new Error(`${cmd} exited ${code}: ${Buffer.concat(err).toString().slice(-2000)}`)),
    )
  })
}
