import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { existsSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { etcdStore } from '../src/index.ts'
import { b64, gateway, haveEtcd, startEtcd, unb64, type EtcdCluster } from './etcd-process.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
const DIST_ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 13 + 5) & 0xff) // as in fixtures/worker.mjs
const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
const text = (b: Uint8Array) => new TextDecoder().decode(b)
const repo = join(import.meta.dirname, '..', '..', '..')
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function countPerKek(list: Uint8Array[]): Map<number, number> {
  const m = new Map<number, number>()
  for (const e of list) m.set(kekIdOf(e), (m.get(kekIdOf(e)) ?? 0) + 1)
  return m
}

describe.skipIf(!haveEtcd)('etcdStore on a three-member cluster', () => {
  let etcd: EtcdCluster
  beforeAll(async () => {
    etcd = await startEtcd({ members: 3 })
  }, 30_000)
  afterAll(async () => {
    await etcd?.stop()
  })

  it('8 OS processes share one chain: every record decrypts, no KEK over its limit or overwritten, root calls bounded', async () => {
    // The workers import the built packages; build etcd's dist if it is missing or older than the source.
    const src = join(repo, 'packages/etcd/src/index.ts')
    const dist = join(repo, 'packages/etcd/dist/index.js')
    if (!existsSync(dist) || statSync(dist).mtimeMs < statSync(src).mtimeMs) {
      await run('npx', ['rollup', '-c', 'rollup.config.mjs'], { ...process.env, PACKAGES: 'etcd' })
    }
    expect(existsSync(join(repo, 'packages/core/dist/index.js')), 'run `pnpm build` first').toBe(true)

    const PROCESSES = 8
    const COUNT = 5000
    const MAX = 1000
    const LEASE = 100 // uses reserved per head write: 10 leases per KEK
    const prefix = `dist-${Date.now().toString(36)}/`
    const started = Date.now()
    const outputs = await Promise.all(
      Array.from({ length: PROCESSES }, () =>
        run('node', [join(repo, 'packages/etcd/test/fixtures/worker.mjs'), etcd.urls.join(','), prefix, String(COUNT), String(MAX), String(LEASE)]),
      ),
    )
    const wall = Date.now() - started
    const workers = outputs.map((o) => JSON.parse(o) as { ms: number; encrypted: string[]; rootCalls: number; rotations: number; keks: Record<string, string> })
    const all = workers.flatMap((w) => w.encrypted.map((h) => Uint8Array.from(Buffer.from(h, 'hex'))))
    expect(all.length).toBe(PROCESSES * COUNT)

    // Limits: counted from the headers.
    const perKek = countPerKek(all)
    const maxUse = Math.max(...perKek.values())
    expect(maxUse).toBeLessThanOrEqual(MAX)

    // KEK records: what every worker saw equals what is there at the end; each written exactly once.
    const store = etcdStore({ endpoints: etcd.urls, prefix })
    const final = new Map((await store.listKeks('dist')).map((r) => [r.id, Buffer.from(r.wrapped).toString('hex')]))
    for (const id of perKek.keys()) expect(final.has(id), `KEK ${id} used but not stored`).toBe(true)
    for (const w of workers) for (const [id, wrapped] of Object.entries(w.keks)) expect(final.get(Number(id))).toBe(wrapped)
    const kekPrefix = `${prefix}dist/kek/`
    const raw = await gateway(etcd.urls[0]!, '/v3/kv/range', { key: b64(kekPrefix), range_end: b64(kekPrefix.slice(0, -1) + '0') })
    expect(raw.kvs.length).toBe(final.size)
    for (const kv of raw.kvs) {
      expect(kv.mod_revision, unb64(kv.key).toString()).toBe(kv.create_revision)
      expect(kv.version).toBe('1')
    }

    // Every record decrypts with a fresh chain.
    const reader = await KeyChain.open({ rootKey: aesRootKey(DIST_ROOT), store, name: 'dist', maxWrapsPerKek: MAX })
    let k = 0
    for (const [w, worker] of workers.entries()) {
      for (const h of worker.encrypted) {
        const plain = text(await reader.decrypt(Uint8Array.from(Buffer.from(h, 'hex'))))
        expect(plain.endsWith(`:${k++ % COUNT}`), `worker ${w}`).toBe(true)
      }
    }
    reader.close()

    const rootCalls = workers.reduce((s, w) => s + w.rootCalls, 0)
    const keks = final.size
    expect(rootCalls).toBeLessThanOrEqual(keks * (1 + PROCESSES))
    const head = (await store.getHead('dist'))!.value
    console.log(
      `distributed: ${PROCESSES} processes x ${COUNT}, maxWrapsPerKek ${MAX}, leaseSize ${LEASE} = ${all.length} records in ${wall} ms wall ` +
        `(${Math.round(all.length / (wall / 1000))}/s incl. node startup; slowest worker ${Math.max(...workers.map((w) => w.ms))} ms); ` +
        `KEKs stored ${keks}, used ${perKek.size}, max wraps per KEK ${maxUse}/${MAX}, ` +
        `rotations ${workers.reduce((s, w) => s + w.rotations, 0)}, root-key calls ${rootCalls} <= ${keks * (1 + PROCESSES)}, ` +
        `head leased ${head.leased}; all ${all.length} decrypt; every KEK key mod_revision == create_revision`,
    )
  }, 180_000) // 11 to 19 s on an idle machine; 52 to 69 s at a load average of 20 to 30

  it('a chain keeps encrypting while the leader is killed with SIGKILL; everything decrypts, no KEK over its limit', async () => {
    // Find the leader and put it first, so that the store is talking to the member that dies.
    const status = await Promise.all(etcd.urls.map((u) => gateway(u, '/v3/maintenance/status', {})))
    const leaderIndex = status.findIndex((s) => s.header.member_id === s.leader)
    expect(leaderIndex).toBeGreaterThanOrEqual(0)
    const order = [leaderIndex, ...[0, 1, 2].filter((i) => i !== leaderIndex)]
    const endpoints = order.map((i) => etcd.urls[i]!)
    const prefix = `kill-${Date.now().toString(36)}/`
    const MAX = 20
    const store = etcdStore({ endpoints, prefix, timeoutMs: 3000 })
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, maxWrapsPerKek: MAX, leaseSize: 5, dekPoolSize: 4 })

    const encrypted: Uint8Array[] = []
    let stop = false
    let killedAt = -1
    let last = Date.now()
    let longestGap = 0
    // As an application would: a retryable failure (the cluster electing a leader) is tried again.
    const failures: KmsProxyError[] = []
    const loops = Array.from({ length: 4 }, async (_, k) => {
      for (let i = 0; !stop; i++) {
        try {
          encrypted.push(await chain.encrypt(`l${k}:${i}`))
        } catch (error) {
          failures.push(error as KmsProxyError)
          if (!(error instanceof KmsProxyError && error.retryable)) throw error
          await sleep(50)
          continue
        }
        const now = Date.now()
        if (now - last > longestGap) longestGap = now - last
        last = now
      }
    })
    const all = Promise.all(loops)
    // Until the chain has rotated a few times, however long a loaded machine takes (bounded).
    const warming = Date.now()
    while (encrypted.length <= 5 * MAX && Date.now() - warming < 30_000) await sleep(50)
    console.log(`leader kill: ${encrypted.length} encryptions before it, after ${Date.now() - warming} ms`)
    killedAt = encrypted.length
    await etcd.kill(leaderIndex)
    const killTime = Date.now()
    // Go on until well past the election, and until the chain has rotated several times since.
    // Bounded, so that a loop that failed for good shows its error below instead of a timeout.
    while ((Date.now() - killTime < 2500 || encrypted.length < killedAt + 10 * MAX) && Date.now() - killTime < 40_000) await sleep(100)
    stop = true
    await all

    for (const f of failures) expect(f).toMatchObject({ code: 'ERR_STORE', retryable: true })
    const after = encrypted.length - killedAt
    expect(killedAt).toBeGreaterThan(5 * MAX)
    expect(after).toBeGreaterThan(10 * MAX)
    const perKek = countPerKek(encrypted)
    const maxUse = Math.max(...perKek.values())
    expect(maxUse).toBeLessThanOrEqual(MAX)
    const survivors = endpoints.slice(1)
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: etcdStore({ endpoints: survivors, prefix }) })
    for (const e of encrypted) expect(text(await reader.decrypt(e))).toMatch(/^l\d:\d+$/)
    chain.close()
    reader.close()
    console.log(
      `leader killed: ${killedAt} records before, ${after} after (over ${Date.now() - killTime} ms; longest pause between encryptions ${longestGap} ms), ` +
        `${perKek.size} KEKs, max wraps per KEK ${maxUse}/${MAX}, all ${encrypted.length} decrypt from the two survivors; ${failures.length} retryable failures retried`,
    )
  }, 60_000)
})

describe.skipIf(!haveEtcd)('measurements on one member', () => {
  let etcd: EtcdCluster
  beforeAll(async () => {
    etcd = await startEtcd()
  }, 30_000)
  afterAll(async () => {
    await etcd?.stop()
  })

  it('leases: store writes per encryption, and encryptions per second', async () => {
    const results: string[] = []
    for (const leaseSize of [undefined, 64, 1] as const) {
      let writes = 0
      const counting: typeof fetch = (input, init) => {
        if (String(input).endsWith('/v3/kv/txn')) writes++
        return fetch(input, init)
      }
      const store = etcdStore({ endpoints: etcd.urls, prefix: `m-${leaseSize}-${Date.now().toString(36)}/`, fetch: counting })
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, ...(leaseSize ? { leaseSize } : {}) })
      await chain.encrypt('warm up')
      const n = leaseSize === 1 ? 500 : 5000
      writes = 0
      const started = performance.now()
      for (let i = 0; i < n; i++) await chain.encrypt('a 1 KiB record'.padEnd(1024, '.'))
      const seconds = (performance.now() - started) / 1000
      chain.close()
      results.push(`leaseSize ${leaseSize ?? 'default (32768)'}: ${Math.round(n / seconds)} encryptions/s, ${(writes / n).toFixed(4)} store writes per encryption`)
      // The DEK pool (16) may have reserved a few uses ahead of the last encryption.
      expect(writes).toBeLessThanOrEqual(Math.ceil((n + 16) / (leaseSize ?? 32768)) + 1)
    }
    console.log(`etcd, 1 KiB, one at a time: ${results.join('; ')}`)
  }, 60_000)
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
