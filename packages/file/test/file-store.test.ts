import { afterAll, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { fileStore } from '../src/index.ts'

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-file-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
let n = 0

describeStore(createHarness(it), {
  name: 'fileStore',
  async open() {
    const path = join(dir, `contract-${n++}.json`)
    return { store: fileStore(path), another: () => fileStore(path) }
  },
})

const root = join(import.meta.dirname, '..', '..', '..')
const worker = join(import.meta.dirname, 'fixtures', 'worker.mjs')
const runtimes: Record<string, [string, string[]]> = {
  node: [process.execPath, []],
  bun: [join(root, 'node_modules', '.bin', 'bun'), []],
  deno: [join(root, 'node_modules', '.bin', 'deno'), ['run', '--quiet', '--allow-read', '--allow-write', '--allow-env']],
}

function run(runtime: string, args: string[], env: Record<string, string> = {}): Promise<any> {
  const [command, pre] = runtimes[runtime]!
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...pre, worker, ...args], {
      env: { ...process.env, DENO_DIR: join(dir, 'deno'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1', ...env },
    })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('close', (code) => {
      try {
        resolve(JSON.parse(out))
      } catch {
        reject(new Error(`${runtime} exited ${code}: ${err.slice(0, 1000)}`))
      }
    })
  })
}

const kekIdOf = (h: string) => parseInt(h.slice(2, 10), 16)

it('4 Node processes share one file store: no KEK over its limit, nothing lost, no lock left behind', async () => {
  const path = join(dir, 'shared.json')
  const results = await Promise.all([0, 1, 2, 3].map(() => run('node', [path, 'encrypt', '300', '100'])))
  const all: string[] = results.flatMap((r) => r.encrypted)
  const perKek = new Map<number, number>()
  for (const h of all) perKek.set(kekIdOf(h), (perKek.get(kekIdOf(h)) ?? 0) + 1)
  expect(Math.max(...perKek.values())).toBeLessThanOrEqual(100)
  const stored = await fileStore(path).listKeks('default')
  for (const id of perKek.keys()) expect(stored.some((r) => r.id === id)).toBe(true)
  const head = await fileStore(path).getHead('default')
  expect(head!.value.leased).toBeLessThanOrEqual(100)
  expect(existsSync(`${path}.lock`)).toBe(false)
  const input = join(dir, 'input.json')
  writeFileSync(input, JSON.stringify(all))
  const decrypted = await run('node', [path, 'decrypt', '0', '100'], { KMS_PROXY_INPUT: input })
  expect(decrypted.plaintexts).toHaveLength(1200)
  console.log(`file store, 4 processes x 300 records, maxWrapsPerKek 100: ${perKek.size} KEKs, most wraps under one KEK ${Math.max(...perKek.values())}`)
}, 60_000)

it('Node, Bun and Deno read and write the same file store', async () => {
  const path = join(dir, 'runtimes.json')
  const made: Record<string, string[]> = {}
  for (const runtime of Object.keys(runtimes)) made[runtime] = (await run(runtime, [path, 'encrypt', '20', '1000'])).encrypted
  for (const reader of Object.keys(runtimes)) {
    for (const [writer, list] of Object.entries(made)) {
      const input = join(dir, `in-${writer}-${reader}.json`)
      writeFileSync(input, JSON.stringify(list))
      const { plaintexts } = await run(reader, [path, 'decrypt', '0', '1000'], { KMS_PROXY_INPUT: input })
      expect(plaintexts, `${writer} -> ${reader}`).toHaveLength(20)
      expect(plaintexts.every((p: string) => /^\d+:\d+$/.test(p))).toBe(true)
    }
  }
  expect(JSON.parse(readFileSync(path, 'utf8')).format).toBe('kms-proxy-file-store/v1')
}, 60_000)

it('a stale lock left by a crashed process is taken over; a live one times out with a clear error', async () => {
  const path = join(dir, 'locked.json')
  writeFileSync(`${path}.lock`, '12345 crashed\n')
  const stale = fileStore(path, { staleLockMs: 0 })
  expect(await stale.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
  writeFileSync(`${path}.lock`, 'live\n')
  const patient = fileStore(path, { lockTimeoutMs: 100, staleLockMs: 60_000 })
  await expect(patient.putKekIfAbsent('c', { id: 1, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array(3) })).rejects.toThrow(/timed out waiting/)
  rmSync(`${path}.lock`)
})

it('a file that is not a store is refused, not overwritten', async () => {
  const path = join(dir, 'other.json')
  writeFileSync(path, '{"hello":"world"}')
  await expect(fileStore(path).getHead('c')).rejects.toThrow(/not a kms-proxy file store/)
  await expect(fileStore(path).casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).rejects.toThrow(/not a kms-proxy file store/)
  expect(readFileSync(path, 'utf8')).toBe('{"hello":"world"}')
  expect(() => fileStore('')).toThrow(TypeError)
})
