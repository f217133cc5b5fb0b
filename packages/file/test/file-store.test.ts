import { afterAll, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { fileStore } from '../src/index.ts'

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-file-'))
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))
let n = 0

describeStore(createHarness(it), {
  name: 'fileStore',
  severalRoots: true,
  watch: true,
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
  deno: [join(root, 'node_modules', 'deno', 'deno'), // the binary: npm's wrapper does not pass signals on
    ['run', '--quiet', '--allow-read', '--allow-write', '--allow-env']],
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
  expect(readdirSync(dir).filter((f) => f.startsWith('shared.json.')), 'lock, breaker or temporary files left behind').toEqual([])
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

it('a KEK record whose bytes are not canonical padded base64 is ERR_STORE, never read leniently', async () => {
  const path = join(dir, 'base64.json')
  // Not base64; a trailing line break; a missing '='; nonzero leftover bits (AQIDBB== is AQIDBA== too).
  const wrappedById: Record<string, string> = { 1: 'not base64!', 2: 'AQIDBA==\n', 3: 'AQIDBA=', 4: 'AQIDBB==', 5: 'AQIDBA==' }
  const keks = Object.fromEntries(Object.entries(wrappedById).map(([id, wrapped]) => [id, { createdAt: 1, rootKind: 'aes', wrapped }]))
  writeFileSync(path, JSON.stringify({ format: 'kms-proxy-file-store/v1', chains: { c: { keks } } }))
  const store = fileStore(path)
  for (const id of [1, 2, 3, 4]) {
    await expect(store.getKek('c', id), `record ${id}`).rejects.toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: false })
  }
  await expect(store.listKeks('c')).rejects.toMatchObject({ code: 'ERR_STORE' })
  expect(Array.from((await store.getKek('c', 5))!.wrapped)).toEqual([1, 2, 3, 4])
})

it('a file that is not a store is refused, not overwritten', async () => {
  const path = join(dir, 'other.json')
  writeFileSync(path, '{"hello":"world"}')
  await expect(fileStore(path).getHead('c')).rejects.toThrow(/not a kms-proxy file store/)
  await expect(fileStore(path).getHead('c')).rejects.toMatchObject({ code: 'ERR_STORE' })
  await expect(fileStore(path).casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).rejects.toThrow(/not a kms-proxy file store/)
  expect(readFileSync(path, 'utf8')).toBe('{"hello":"world"}')
  expect(() => fileStore('')).toThrow(TypeError)
  for (const bad of ['not json', '{"format":"kms-proxy-file-store/v1","chains":[]}', '{"format":"kms-proxy-file-store/v1","chains":{"c":{"keks":null}}}']) {
    writeFileSync(path, bad)
    await expect(fileStore(path).putKekIfAbsent('c', { id: 1, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array(3) })).rejects.toMatchObject({ code: 'ERR_STORE' })
    expect(readFileSync(path, 'utf8')).toBe(bad)
  }
  expect(existsSync(`${path}.lock`)).toBe(false)
})

it('chain names such as __proto__, constructor and hasOwnProperty are names like any other', async () => {
  const path = join(dir, 'names.json')
  const names = ['__proto__', 'constructor', 'hasOwnProperty', 'toString', 'valueOf', 'prototype', 'keks', 'head']
  const store = fileStore(path)
  for (const [i, name] of names.entries()) {
    expect(await store.getHead(name), name).toBeUndefined()
    expect(await store.listKeks(name), name).toEqual([])
    expect(await store.getKek(name, i + 1), name).toBeUndefined()
    expect(await store.putKekIfAbsent(name, { id: i + 1, createdAt: i, rootKind: 'aes', wrapped: new Uint8Array([i]) }), name).toBe(true)
    expect(await store.putKekIfAbsent(name, { id: i + 1, createdAt: i, rootKind: 'aes', wrapped: new Uint8Array([99]) }), name).toBe(false)
    expect(await store.casHead(name, undefined, { primary: i + 1, primaryCreatedAt: i, leased: i }), name).toBe(true)
    expect(await store.casHead(name, undefined, { primary: 0, primaryCreatedAt: 0, leased: 0 }), name).toBe(false)
  }
  const reopened = fileStore(path)
  for (const [i, name] of names.entries()) {
    expect(await reopened.getHead(name), name).toEqual({ value: { primary: i + 1, primaryCreatedAt: i, leased: i }, version: '1' })
    expect((await reopened.listKeks(name)).map((r) => [r.id, [...r.wrapped]]), name).toEqual([[i + 1, [i]]])
    expect((await reopened.getKek(name, i + 1))?.createdAt, name).toBe(i)
  }
  expect(await reopened.getHead('__defineGetter__')).toBeUndefined()
  // Stored as keys of the file, nothing leaked onto Object.prototype.
  expect(Object.keys(JSON.parse(readFileSync(path, 'utf8')).chains).sort()).toEqual([...names].sort())
  expect(({} as Record<string, unknown>).head).toBeUndefined()
  expect(({} as Record<string, unknown>).keks).toBeUndefined()
})

it('a write keeps the store file\'s owner, group and mode (a service\'s store touched by root stays the service\'s)', async () => {
  // Runs as root here and in CI: root may give a file away, which is what the store must do.
  expect(process.getuid?.(), 'this test needs root, to own a file as nobody').toBe(0)
  const dir = mkdtempSync(join(tmpdir(), 'kp-file-owner-'))
  try {
    const path = join(dir, 'keys.json')
    const store = fileStore(path)
    await store.putKekIfAbsent('c', { id: 1, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([1, 2, 3]) })
    const NOBODY = 65534
    chownSync(path, NOBODY, NOBODY)
    chmodSync(path, 0o640)
    expect(await store.putKekIfAbsent('c', { id: 2, createdAt: 2, rootKind: 'aes', wrapped: new Uint8Array([4]) })).toBe(true)
    expect(await store.casHead('c', undefined, { primary: 2, primaryCreatedAt: 2, leased: 1 })).toBe(true)
    const after = statSync(path)
    expect([after.uid, after.gid, after.mode & 0o777]).toEqual([NOBODY, NOBODY, 0o640])
    expect((await store.listKeks('c')).map((r) => r.id).sort()).toEqual([1, 2])
  } finally {
    rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
  }
})
