/**
 * The same etcdStore, unchanged, from workerd (Miniflare) and from Chromium (a page on
 * http://localhost talking cross-origin to etcd, whose CORS default is `*`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import * as esbuild from 'esbuild'
import { haveEtcd, startEtcd, type EtcdCluster } from './etcd-process.ts'

const repo = join(import.meta.dirname, '..', '..', '..')
type Result = { name: string; ok: boolean; ms: number; error?: string }

async function bundle(entry: string): Promise<string> {
  // tsconfigRaw left default: the repo's tsconfig paths map @kms-proxy/* to the sources.
  const built = await esbuild.build({
    entryPoints: [join(import.meta.dirname, 'portable', entry)],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    absWorkingDir: repo,
    logLevel: 'error',
  })
  return built.outputFiles[0]!.text
}

function check(where: string, results: Result[]): void {
  const failed = results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)
  expect(failed).toEqual([])
  expect(results.length).toBe(6)
  console.log(`${where}: ${results.length} contract tests passed (${results.map((r) => `${r.ms} ms`).join(', ')})`)
}

describe.skipIf(!haveEtcd)('etcdStore in other runtimes', () => {
  let etcd: EtcdCluster
  beforeAll(async () => {
    etcd = await startEtcd({ args: ['--cors', '*'] })
  }, 30_000)
  afterAll(async () => {
    await etcd?.stop()
  })

  it('workerd (Miniflare): describeStore passes', async () => {
    const { Miniflare } = await import('miniflare')
    const mf = new Miniflare({ modules: true, script: await bundle('worker.ts'), compatibilityDate: '2026-05-01' })
    try {
      const response = await mf.dispatchFetch(`http://localhost/?etcd=${encodeURIComponent(etcd.urls[0]!)}`)
      const body = await response.text()
      if (!response.ok) throw new Error(`worker answered ${response.status}: ${body.slice(0, 2000)}`)
      check('workerd', JSON.parse(body) as Result[])
    } finally {
      await mf.dispose()
    }
  }, 60_000)

  it('Chromium (a page on http://localhost, etcd cross-origin): describeStore passes', async () => {
    const { chromium } = await import('playwright-core')
    const script = await bundle('page.ts')
    const server: Server = createServer((req, res) => {
      if (req.url?.startsWith('/page.js')) {
        res.writeHead(200, { 'content-type': 'text/javascript' }).end(script)
      } else {
        res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><script type="module" src="/page.js"></script>')
      }
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
    const browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    })
    try {
      const page = await browser.newPage()
      const port = (server.address() as { port: number }).port
      await page.goto(`http://localhost:${port}/?etcd=${encodeURIComponent(etcd.urls[0]!)}`)
      await page.waitForFunction(() => (globalThis as { results?: unknown }).results !== undefined)
      const results = (await page.evaluate(() => (globalThis as unknown as { results: Promise<unknown> }).results)) as Result[]
      check('Chromium', results)
    } finally {
      await browser.close()
      server.close()
    }
  }, 60_000)
})
