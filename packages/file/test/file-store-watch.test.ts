/**
 * The head's lifecycle fields in the file (kept exactly, and a format older versions refuse), and
 * watchHead: a rotation in one real Node process used by another on the same file, with the
 * watch and by polling alone, and processes with a watching chain that still exit on their own.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { ChainHead } from '@kms-proxy/core'
import { fileStore } from '../src/index.ts'
import { bundleChild } from '../../testkit/test/bundle.ts'

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-file-watch-'))
const child = join(dir, 'chain.mjs')
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))
beforeAll(async () => {
  // One process with one chain on the file. argv: path, watch (true|false), maxStalenessMs, mode.
  // mode "serve": answers lines on stdin (encrypt, rotate, change <id> <timeoutMs>) with JSON
  // lines. mode "close" / "open": encrypts once, closes the chain or not, says "done" and
  // returns: the process must then end on its own.
  await bundleChild({
    resolveDir: import.meta.dirname,
    source: `
      import { createInterface } from 'node:readline'
      import { KeyChain, aesRootKey } from '@kms-proxy/core'
      import { fileStore } from '../src/index.ts'
      const [path, watch, maxStalenessMs, mode] = process.argv.slice(2)
      const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: fileStore(path), watch: watch === 'true', maxStalenessMs: Number(maxStalenessMs), leaseSize: 1000 })
      const kekOf = async () => new DataView((await chain.encrypt('x')).buffer).getUint32(1)
      const say = (v) => process.stdout.write(JSON.stringify(v) + '\\n')
      if (mode !== 'serve') {
        await kekOf()
        if (mode === 'close') chain.close()
        say('done')
      } else {
        say({ kek: await kekOf() })
        for await (const line of createInterface({ input: process.stdin })) {
          const [cmd, a, b] = line.split(' ')
          if (cmd === 'encrypt') say({ kek: await kekOf() })
          if (cmd === 'rotate') { const { id } = await chain.rotate(); say({ kek: id, at: Date.now() }) }
          if (cmd === 'change') {
            // Encrypts every 20 ms until the KEK differs from a (bounded by b ms); says when.
            const end = Date.now() + Number(b)
            let kek = await kekOf()
            while (kek === Number(a) && Date.now() < end) { await new Promise((r) => setTimeout(r, 20)); kek = await kekOf() }
            say({ kek, at: Date.now(), encryptions: chain.stats().encryptions })
          }
        }
        chain.close()
      }
    `,
  }, child)
})

interface Proc {
  p: ChildProcess
  next(): Promise<any>
  send(line: string): Promise<any>
}

const repo = join(import.meta.dirname, '..', '..', '..')
const runtimes: Record<string, string[]> = {
  node: [process.execPath],
  bun: [join(repo, 'node_modules', '.bin', 'bun')],
  deno: [join(repo, 'node_modules', 'deno', 'deno'), 'run', '--quiet', '--allow-read', '--allow-write', '--allow-env'],
}

function start(path: string, watch: boolean, maxStalenessMs: number, mode = 'serve', runtime = 'node'): Proc {
  const [command, ...pre] = runtimes[runtime]!
  const env = { ...process.env, DENO_DIR: join(dir, 'deno'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' }
  const p = spawn(command!, [...pre, child, path, String(watch), String(maxStalenessMs), mode], { stdio: ['pipe', 'pipe', 'pipe'], env })
  let err = ''
  p.stderr!.on('data', (d) => (err += d))
  const lines = createInterface({ input: p.stdout! })[Symbol.asyncIterator]()
  const next = async () => {
    const { value, done } = await lines.next()
    if (done) throw new Error(`the child ended: ${err.slice(0, 800)}`)
    return JSON.parse(value as string)
  }
  return { p, next, send: (line) => (p.stdin!.write(`${line}\n`), next()) }
}

/** Waits for the child to exit; the time it took, or -1 when it was still running after `ms`. */
function exitWithin(p: ChildProcess, ms: number): Promise<number> {
  const t0 = Date.now()
  return new Promise((resolve) => {
    if (p.exitCode !== null) return resolve(0)
    const timer = setTimeout(() => {
      p.kill('SIGKILL')
      resolve(-1)
    }, ms)
    p.once('exit', () => {
      clearTimeout(timer)
      resolve(Date.now() - t0)
    })
  })
}

/**
 * A rotates; B, which was encrypting under the old primary, encrypts every 20 ms until its KEK
 * changes: how long after A's rotation B used the new primary.
 */
async function rotationSeen(name: string, watch: boolean, maxStalenessMs: number, runtime = 'node'): Promise<number> {
  const path = join(dir, `${name}.json`)
  const a = start(path, false, 60_000)
  const { kek: first } = await a.next()
  const b = start(path, watch, maxStalenessMs, 'serve', runtime)
  try {
    expect((await b.next()).kek, 'both processes on one primary').toBe(first)
    // Let B's watch settle and its head check age a little, as in a service running for a while.
    await new Promise((r) => setTimeout(r, 300))
    const seen = b.send(`change ${first} 20000`)
    const rotated = await a.send('rotate')
    const after = await seen
    expect(after.kek, 'B encrypts under the primary A made').toBe(rotated.kek)
    return after.at - rotated.at
  } finally {
    a.p.stdin!.end()
    b.p.stdin!.end()
    await Promise.all([exitWithin(a.p, 10_000), exitWithin(b.p, 10_000)])
  }
}

const measured: Record<string, number> = {}
afterAll(() => console.log('file store watch, measured (ms):', JSON.stringify(measured)))

it('a rotation in one process is used by another process on the same file within a few seconds with the watch (maxStalenessMs 60 s, so only the watch explains it)', async () => {
  const ms = await rotationSeen('watch', true, 60_000)
  measured.withWatch = ms
  expect(ms).toBeLessThan(4_000)
}, 60_000)

it('the same with the watching process in Bun and in Deno (the Node process rotates)', async () => {
  const [bun, deno] = await Promise.all([rotationSeen('watch-bun', true, 60_000, 'bun'), rotationSeen('watch-deno', true, 60_000, 'deno')])
  Object.assign(measured, { withWatchBun: bun, withWatchDeno: deno })
  expect(bun).toBeLessThan(4_000)
  expect(deno).toBeLessThan(4_000)
}, 60_000)

it('with watch: false, within maxStalenessMs (2 s here) by polling alone', async () => {
  const ms = await rotationSeen('poll', false, 2_000)
  measured.pollingAlone = ms
  expect(ms).toBeLessThan(2_000 + 1_500)
}, 60_000)

it('a process with a watching chain exits on its own, after chain.close() and without it (Node; Bun and Deno without it)', async () => {
  const runs: Array<[string, string]> = [['node', 'close'], ['node', 'open'], ['bun', 'open'], ['deno', 'open']]
  await Promise.all(
    runs.map(async ([runtime, mode]) => {
      const p = start(join(dir, `exit-${runtime}-${mode}.json`), true, 60_000, mode, runtime)
      p.p.stdin!.end()
      expect(await p.next(), `${runtime} ${mode}`).toBe('done')
      const ms = await exitWithin(p.p, 10_000)
      expect(ms, `${runtime} ${mode}: still running 10 s after its last line`).toBeGreaterThanOrEqual(0)
      measured[`exitAfterLastLine_${runtime}_${mode}`] = ms
    }),
  )
}, 60_000)

const lifecycle: ChainHead[] = [
  { primary: 9, primaryCreatedAt: 90, leased: 2, retired: [{ id: 7, retiredAt: 70 }, { id: 8, retiredAt: 80, destroyedAt: 85 }] },
  { primary: 9, primaryCreatedAt: 90, leased: 2, retired: [{ id: 7, retiredAt: 70 }], chainRetiredAt: 100 },
  { primary: 9, primaryCreatedAt: 90, leased: 2, roots: [{ name: 'default', kind: 'aes', state: 'active' }], retired: [{ id: 7, retiredAt: 70 }], chainRetiredAt: 100, chainDestroyedAt: 110 },
  { primary: 9, primaryCreatedAt: 90, leased: 2, chainDestroyedAt: 110 },
  { primary: 9, primaryCreatedAt: 90, leased: 2, retired: [] },
]

it('every lifecycle field of the head round-trips through the file, read by another handle, and survives a write of anything else', async () => {
  const path = join(dir, 'lifecycle.json')
  const store = fileStore(path)
  let version: string | undefined
  for (const [i, head] of lifecycle.entries()) {
    expect(await store.casHead('c', version, head), `head ${i}`).toBe(true)
    const read = (await fileStore(path).getHead('c'))!
    expect(read.value, `head ${i}`).toEqual(head)
    // Another write (a KEK record) rewrites the file: the head stays as it was.
    await store.putKekIfAbsent('c', { id: 100 + i, createdAt: 1, rootKind: 'aes', wrapped: Uint8Array.of(i) })
    expect((await fileStore(path).getHead('c'))!.value, `head ${i} after another write`).toEqual(head)
    version = read.version
  }
})

it('a head with lifecycle fields makes the file v3, which older versions refuse instead of dropping them (and so un-retiring a KEK); without them it stays v1 or v2', async () => {
  const path = join(dir, 'format.json')
  const store = fileStore(path)
  const plain = { primary: 9, primaryCreatedAt: 90, leased: 2 }
  await store.casHead('c', undefined, plain)
  expect(JSON.parse(readFileSync(path, 'utf8')).format).toBe('kms-proxy-file-store/v1')
  await store.casHead('c', '1', { ...plain, retired: [{ id: 7, retiredAt: 70 }] })
  expect(JSON.parse(readFileSync(path, 'utf8')).format).toBe('kms-proxy-file-store/v3')
  await store.casHead('c', '2', { ...plain, chainRetiredAt: 1 })
  expect(JSON.parse(readFileSync(path, 'utf8')).format).toBe('kms-proxy-file-store/v3')
  await store.casHead('c', '3', { ...plain, roots: [{ name: 'default', kind: 'aes', state: 'active' }] })
  expect(JSON.parse(readFileSync(path, 'utf8')).format).toBe('kms-proxy-file-store/v2')
  await store.casHead('c', '4', plain)
  expect(JSON.parse(readFileSync(path, 'utf8')).format).toBe('kms-proxy-file-store/v1')
  // What an older version checks before it reads anything: its own markers only.
  const older = (format: unknown) => format === 'kms-proxy-file-store/v1' || format === 'kms-proxy-file-store/v2'
  await store.casHead('c', '5', lifecycle[0]!)
  expect(older(JSON.parse(readFileSync(path, 'utf8')).format)).toBe(false)
})

it('malformed lifecycle fields in the file are ERR_STORE on read, and a TypeError before a write', async () => {
  const path = join(dir, 'bad-lifecycle.json')
  const good = { primary: 1, primaryCreatedAt: 1, leased: 0 }
  const bad = [
    { ...good, retired: 'all' }, { ...good, retired: [{ id: 7 }] }, { ...good, retired: [{ id: 0, retiredAt: 1 }] },
    { ...good, retired: [{ id: 7, retiredAt: 1, destroyedAt: 'soon' }] }, { ...good, chainRetiredAt: '1' }, { ...good, chainDestroyedAt: null },
  ]
  for (const value of bad) {
    writeFileSync(path, JSON.stringify({ format: 'kms-proxy-file-store/v3', chains: { c: { head: { value, version: '1' }, keks: {} } } }))
    await expect(fileStore(path).getHead('c'), JSON.stringify(value)).rejects.toMatchObject({ name: 'StoreError', code: 'ERR_STORE' })
    await expect(fileStore(join(dir, 'bad-write.json')).casHead('d', undefined, value as never), JSON.stringify(value)).rejects.toThrow(TypeError)
  }
  expect(() => readFileSync(join(dir, 'bad-write.json')), 'nothing written').toThrow(/ENOENT/)
})
