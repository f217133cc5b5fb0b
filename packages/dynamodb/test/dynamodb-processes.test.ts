/**
 * 8 OS processes share one chain in one DynamoDB table (moto), with a small maxWrapsPerKek and
 * leaseSize so that rotations are forced many times: every record decrypts afterwards with a
 * fresh chain, no KEK wraps more than maxWrapsPerKek DEKs (counted from the ciphertext headers),
 * every KEK record is written exactly once, and root-key calls stay bounded.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as esbuild from 'esbuild'
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { dynamoDbStore } from '../src/index.ts'
import { CREDENTIALS, REGION, startMotoDynamoDb, type MotoDynamoDb } from './moto-dynamodb.ts'

const DIST_ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 13 + 5) & 0xff) // as in fixtures/worker.ts
const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0

let moto: MotoDynamoDb
let dir: string
let script: string
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kms-proxy-dynamodb-'))
  script = join(dir, 'worker.mjs')
  // Bundled once from the sources (tsconfig paths), so that 8 processes start as fast as plain node.
  const [started] = await Promise.all([
    startMotoDynamoDb(),
    esbuild.build({ entryPoints: [join(import.meta.dirname, 'fixtures', 'worker.ts')], bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile: script, logLevel: 'error' }),
  ])
  moto = started
}, 120_000)
afterAll(async () => {
  await moto?.stop()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

describe('8 OS processes on one DynamoDB table', () => {
  it('share one chain: every record decrypts, no KEK over its limit, every KEK record written exactly once, root calls bounded', async () => {
    const PROCESSES = 8
    const COUNT = 600
    const MAX = 300
    const LEASE = 60 // uses reserved per head write: 5 leases per KEK
    const prefix = `dist-${Date.now().toString(36)}/`
    const started = Date.now()
    const outputs = await Promise.all(Array.from({ length: PROCESSES }, () => run(process.execPath, [script, moto.endpoint, moto.table, prefix, String(COUNT), String(MAX), String(LEASE)])))
    const wall = Date.now() - started
    const workers = outputs.map((o) => JSON.parse(o) as { ms: number; encrypted: string[]; retried: number; kekWrites: number[]; kekOther: string[]; rootCalls: number; rotations: number; keks: Record<string, string> })
    const all = workers.flatMap((w) => w.encrypted.map((h) => Uint8Array.from(Buffer.from(h, 'hex'))))
    expect(all.length).toBe(PROCESSES * COUNT)

    const perKek = new Map<number, number>()
    for (const e of all) perKek.set(kekIdOf(e), (perKek.get(kekIdOf(e)) ?? 0) + 1)
    const maxUse = Math.max(...perKek.values())
    expect(maxUse).toBeLessThanOrEqual(MAX)
    // Rotations were forced many times.
    expect(perKek.size).toBeGreaterThanOrEqual((PROCESSES * COUNT) / MAX)

    const store = dynamoDbStore({ table: moto.table, region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint, prefix })
    const final = new Map((await store.listKeks('dist')).map((r) => [r.id, Buffer.from(r.wrapped).toString('hex')]))
    for (const id of perKek.keys()) expect(final.has(id), `KEK ${id} used but not stored`).toBe(true)
    for (const w of workers) for (const [id, wrapped] of Object.entries(w.keks)) expect(final.get(Number(id))).toBe(wrapped)
    // One accepted write per stored record, across every process: never two for one id. A record
    // whose write got no answer (a timeout, a 5xx: it may have applied, and its retry then failed
    // the condition) is the only one allowed without an accepted write.
    const writes = workers.flatMap((w) => w.kekWrites)
    const unanswered = new Set(workers.flatMap((w) => w.kekOther).map((o) => Number(o.split(' ')[0])))
    expect(new Set(writes).size).toBe(writes.length)
    for (const id of writes) expect(final.has(id)).toBe(true)
    for (const id of final.keys()) expect(writes.includes(id) || unanswered.has(id), `KEK ${id} stored without a write`).toBe(true)

    const reader = await KeyChain.open({ rootKey: aesRootKey(DIST_ROOT), store, name: 'dist', maxWrapsPerKek: MAX })
    for (const [w, worker] of workers.entries()) {
      for (const [k, h] of worker.encrypted.entries()) {
        const plain = new TextDecoder().decode(await reader.decrypt(Uint8Array.from(Buffer.from(h, 'hex'))))
        expect(plain.endsWith(`:${k}`), `worker ${w}`).toBe(true)
      }
    }
    reader.close()

    const rootCalls = workers.reduce((s, w) => s + w.rootCalls, 0)
    expect(rootCalls).toBeLessThanOrEqual(final.size * (1 + PROCESSES))
    const head = (await store.getHead('dist'))!
    console.log(
      `dynamodb, ${PROCESSES} processes x ${COUNT}, maxWrapsPerKek ${MAX}, leaseSize ${LEASE}: ${all.length} records in ${wall} ms wall ` +
        `(slowest worker ${Math.max(...workers.map((w) => w.ms))} ms after its start); KEKs stored ${final.size}, used ${perKek.size}, max wraps per KEK ${maxUse}/${MAX}, ` +
        `rotations ${workers.reduce((s, w) => s + w.rotations, 0)}, root-key calls ${rootCalls} <= ${final.size * (1 + PROCESSES)}, head version ${head.version} (head writes), ` +
        `retryable failures retried ${workers.reduce((s, w) => s + w.retried, 0)}, KEK writes without an answer ${unanswered.size}; all ${all.length} decrypt; ${writes.length} KEK writes accepted, none twice for one id`,
    )
  }, 180_000)
})

function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    p.stdout.on('data', (d: Buffer) => out.push(d))
    p.stderr.on('data', (d: Buffer) => err.push(d))
    p.on('error', reject)
    p.on('exit', (code) => (code === 0 ? resolve(Buffer.concat(out).toString()) : reject(new Error(`${cmd} exited ${code}: ${Buffer.concat(err).toString().slice(-2000)}`))))
  })
}
