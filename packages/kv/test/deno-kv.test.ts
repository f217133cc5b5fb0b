import { afterAll, beforeAll, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = join(import.meta.dirname, '..', '..', '..')
// deno: the binary itself. npm's `deno` package runs it through a Node wrapper (spawnSync) that
// does not pass signals on, so stopping the wrapper would leave deno running.
const deno = join(root, 'node_modules', 'deno', 'deno')
const script = join(import.meta.dirname, 'deno', 'contract.mjs')
const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-denokv-'))
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))

beforeAll(() => {
  // The Deno script imports the BUILT packages by name.
  for (const pkg of ['core', 'kv', 'testkit']) {
    const dist = join(root, 'packages', pkg, 'dist', 'index.js')
    const src = join(root, 'packages', pkg, 'src', 'index.ts')
    if (!existsSync(dist) || statSync(dist).mtimeMs < statSync(src).mtimeMs) {
      throw new Error(`packages/${pkg}/dist is missing or older than src: run pnpm build first`)
    }
  }
})

/** Runs deno with `args`; its exit code and output. */
function spawnDeno(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(deno, args, {
      cwd: root,
      env: { ...process.env, DENO_DIR: join(dir, 'deno-dir'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1', KV_TEST_DIR: dir },
    })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), 50_000)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, out, err })
    })
  })
}

async function runDeno(args: string[]): Promise<any> {
  const { code, out, err } = await spawnDeno(['run', '--quiet', '--unstable-kv', '--allow-read', '--allow-write', '--allow-env', script, ...args])
  try {
    return JSON.parse(out)
  } catch {
    throw new Error(`deno exited ${code}: ${(err || out).slice(0, 2000)}`)
  }
}

const kekIdOf = (h: string) => parseInt(h.slice(2, 10), 16)

it('Deno: describeStore(denoKvStore) on Deno.openKv files, built packages, all pass', async () => {
  const { results, roots } = await runDeno(['contract', dir])
  const failed = results.filter((r: any) => !r.ok).map((r: any) => `${r.name}: ${r.error}`)
  expect(failed).toEqual([])
  // describeStore's own count grows with the contract; 4 tests here are this package's.
  expect(results.length).toBeGreaterThanOrEqual(18)
  console.log(`deno: ${results.length} tests passed:\n  ${results.map((r: any) => `${r.name} (${r.ms} ms)`).join('\n  ')}`)
  console.log(`deno KV, several roots: ${JSON.stringify(roots)}`)
}, 60_000)

it('two Deno processes share one KV file and rotate at once: nothing lost, no KEK over the limit', async () => {
  const file = join(dir, 'shared.sqlite')
  const max = 50
  const [a, b] = await Promise.all([runDeno(['encrypt', file, '200', String(max), 'a']), runDeno(['encrypt', file, '200', String(max), 'b'])])
  const all: string[] = [...a.encrypted, ...b.encrypted]
  const perKek = new Map<number, number>()
  for (const h of all) perKek.set(kekIdOf(h), (perKek.get(kekIdOf(h)) ?? 0) + 1)
  const most = Math.max(...perKek.values())
  expect(most).toBeLessThanOrEqual(max)
  // The processes really ran at once: some KEK was used by both.
  const kekSet = (list: string[]) => new Set(list.map(kekIdOf))
  const usedByA = kekSet(a.encrypted)
  const shared = [...kekSet(b.encrypted)].filter((id) => usedByA.has(id)).length
  expect(shared).toBeGreaterThan(0)
  const input = join(dir, 'input.json')
  writeFileSync(input, JSON.stringify(all))
  const checked = await runDeno(['check', file, input])
  expect(checked.plaintexts).toEqual([...a.encrypted.map((_: string, i: number) => `a:${i}`), ...b.encrypted.map((_: string, i: number) => `b:${i}`)])
  for (const id of perKek.keys()) expect(checked.keks).toContain(id)
  expect(checked.head.leased).toBeLessThanOrEqual(max)
  console.log(`deno KV, 2 processes x 200 records, maxWrapsPerKek ${max}, leaseSize 7: ${perKek.size} KEKs used (${checked.keks.length} stored, ${shared} used by both processes), most wraps under one KEK ${most}`)
}, 60_000)

it('deno test: watchHead pushes a head change from another handle and another process; a chain with watch: true follows a rotation; close() leaks nothing', async () => {
  const { code, out, err } = await spawnDeno(['test', '--sanitize-ops', '--sanitize-resources', '--unstable-kv', '--allow-read', '--allow-write', '--allow-env', '--allow-run', join(import.meta.dirname, 'deno', 'watch.test.mjs')])
  expect(`${out}\n${err}`.slice(-4000)).toMatch(/ok \| 8 passed \| 0 failed/)
  expect(code).toBe(0)
  const measured = Object.fromEntries([...out.matchAll(/MEASURED (\S+) (\d+)/g)].map((m) => [m[1], Number(m[2])]))
  expect(Object.keys(measured).sort()).toEqual(['rotate-handle', 'rotate-process', 'watch-handle', 'watch-process'])
  console.log(`deno KV watch, ms from the write to the change seen: ${JSON.stringify(measured)}`)
}, 60_000)

it('a Deno program with a watching chain exits once it closes the chain or the Deno.Kv, and not before', async () => {
  const helper = join(import.meta.dirname, 'deno', 'helper.mjs')
  /** Runs the helper; kills it `waitMs` after its script ended (its line printed), if still running. */
  const run = (what: string, waitMs: number) =>
    new Promise<{ exited: boolean; ms: number; out: string }>((resolve) => {
      const started = Date.now()
      const child = spawn(deno, ['run', '--quiet', '--unstable-kv', '--allow-read', '--allow-write', '--allow-env', helper, 'exit', join(dir, `exit-${what}.sqlite`), what], {
        cwd: root,
        env: { ...process.env, DENO_DIR: join(dir, 'deno-dir'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' },
      })
      let out = ''
      let printedAt = 0
      let timer = setTimeout(() => child.kill('SIGKILL'), 20_000 + waitMs)
      child.stdout.on('data', (d) => {
        out += d
        if (printedAt) return
        printedAt = Date.now()
        clearTimeout(timer)
        timer = setTimeout(() => child.kill('SIGKILL'), waitMs)
      })
      child.on('close', (code) => {
        clearTimeout(timer)
        resolve({ exited: code === 0, ms: Date.now() - (printedAt || started), out })
      })
    })
  const [chain, kv, none] = await Promise.all([run('chain', 10_000), run('kv', 10_000), run('nothing', 3_000)])
  for (const r of [chain, kv, none]) expect(JSON.parse(r.out)).toEqual({ encrypted: true })
  expect(chain.exited).toBe(true)
  expect(kv.exited).toBe(true)
  // Nothing closed: the watch keeps Deno's event loop alive until the process is killed.
  expect(none.exited).toBe(false)
  console.log(`deno KV watch: exit after its script ended, chain.close() ${chain.ms} ms, kv.close() ${kv.ms} ms; nothing closed: still running after ${none.ms} ms`)
}, 30_000)
