/**
 * The same postgresStore, with the same `postgres` driver, from Deno, Bun and workerd (the
 * driver's Workers build, over `cloudflare:sockets`): describeStore (several roots) against the
 * server this file starts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { builtinModules } from 'node:module'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import * as esbuild from 'esbuild'
import { Miniflare } from 'miniflare'
import { havePostgres, startPostgres, type PgServer } from './pg-process.ts'

const repo = join(import.meta.dirname, '..', '..', '..')
const DENO = join(repo, 'node_modules/deno/deno')
const BUN = join(repo, 'node_modules/.bin/bun')
const run = promisify(execFile)
type Result = { name: string; ok: boolean; ms: number; error?: string }

describe.skipIf(!havePostgres)('postgresStore on Deno, Bun and workerd', () => {
  let pg: PgServer
  let dir: string
  let script: string
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kms-proxy-pg-runtimes-'))
    script = join(dir, 'suite.mjs')
    const built = await esbuild.build({
      entryPoints: [join(import.meta.dirname, 'runtimes', 'suite.ts')],
      bundle: true,
      format: 'esm',
      platform: 'node',
      target: 'es2022',
      write: false,
      logLevel: 'error',
      // The driver imports Node's modules by their bare names; Deno wants the node: prefix.
      plugins: [{ name: 'node-prefix', setup: (b) => b.onResolve({ filter: /^[a-z_]+$/ }, (a) => (builtinModules.includes(a.path) ? { path: `node:${a.path}`, external: true } : undefined)) }],
    })
    writeFileSync(script, built.outputFiles[0]!.contents)
    pg = await startPostgres()
  }, 90_000)
  afterAll(async () => {
    await pg?.stop()
    rmSync(dir, { recursive: true, force: true })
  })

  function check(where: string, stdout: string): void {
    const results = JSON.parse(stdout.trim().split('\n').at(-1)!) as Result[]
    expect(results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)).toEqual([])
    expect(results.length).toBe(19) // describeStore with several roots, no watch
    console.log(`postgres on ${where}: ${results.length} contract tests passed in ${results.reduce((s, r) => s + r.ms, 0)} ms`)
  }

  it('Deno: describeStore passes', async () => {
    const { stdout } = await run(DENO, ['run', '--allow-net', '--allow-env', '--allow-read', '--allow-sys', script, pg.url, 'deno'], {
      env: { PATH: process.env.PATH, DENO_DIR: join(dir, 'deno'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' },
      timeout: 90_000,
      maxBuffer: 8 << 20,
    })
    check('Deno', stdout)
  }, 120_000)

  it('Bun: describeStore passes', async () => {
    const { stdout } = await run(BUN, [script, pg.url, 'bun'], { env: { PATH: process.env.PATH, NO_COLOR: '1' }, timeout: 90_000, maxBuffer: 8 << 20 })
    check('Bun', stdout)
  }, 120_000)

  it('workerd (Miniflare): describeStore passes through the driver\'s Workers build (TCP over cloudflare:sockets)', async () => {
    const built = await esbuild.build({
      entryPoints: [join(import.meta.dirname, 'runtimes', 'worker.ts')],
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      // The driver's package.json sends "workerd" to its Workers build.
      conditions: ['workerd', 'worker', 'browser'],
      mainFields: ['module', 'main'],
      target: 'es2022',
      write: false,
      logLevel: 'error',
      external: ['cloudflare:sockets', 'node:*'],
    })
    const bundled = built.outputFiles[0]!.text
    expect(bundled).toContain('cloudflare:sockets')
    const mf = new Miniflare({ modules: true, script: bundled, compatibilityDate: '2026-05-01', compatibilityFlags: ['nodejs_compat'] })
    try {
      const response = await mf.dispatchFetch('http://localhost/', { method: 'POST', body: JSON.stringify({ url: pg.url, seed: 'workerd' }) })
      expect(response.status).toBe(200)
      check('workerd', JSON.stringify(await response.json()))
    } finally {
      await mf.dispose()
    }
  }, 120_000)
})
