/**
 * The same etcdStore, unchanged, from workerd (Miniflare) and from Chromium (a page on
 * http://localhost talking cross-origin to etcd, whose CORS default is `*`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { bundle, launch, serve } from '../../indexeddb/test/serve.ts'
import { haveEtcd, startEtcd, type EtcdCluster } from './etcd-process.ts'

type Result = { name: string; ok: boolean; ms: number; error?: string }

/** The portable suite, bundled from the sources (the Chromium tests' shared esbuild helper). */
async function bundleEntry(entry: string): Promise<string> {
  return new TextDecoder().decode(await bundle(join(import.meta.dirname, 'portable', entry)))
}

function check(where: string, results: Result[]): void {
  const failed = results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)
  expect(failed).toEqual([])
  expect(results.length).toBe(19) // describeStore's contract with several roots and watchHead
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
    const mf = new Miniflare({ modules: true, script: await bundleEntry('worker.ts'), compatibilityDate: '2026-05-01' })
    try {
      const response = await mf.dispatchFetch(`http://localhost/?etcd=${encodeURIComponent(etcd.urls[0]!)}`)
      const body = await response.text()
      if (!response.ok) throw new Error(`worker answered ${response.status}: ${body.slice(0, 2000)}`)
      check('workerd', JSON.parse(body) as Result[])
    } finally {
      await mf.dispose()
    }
  }, 120_000) // 17 tests, and a loaded machine starts Chromium slowly

  it('Chromium (a page on http://localhost, etcd cross-origin): describeStore passes', async () => {
    const { server, origin } = await serve({ '/page.js': await bundleEntry('page.ts'), '/index.html': '<!doctype html><script type="module" src="/page.js"></script>' })
    const browser = await launch()
    try {
      const page = await browser.newPage()
      await page.goto(`${origin}/?etcd=${encodeURIComponent(etcd.urls[0]!)}`)
      await page.waitForFunction(() => (globalThis as { results?: unknown }).results !== undefined)
      const results = (await page.evaluate(() => (globalThis as unknown as { results: Promise<unknown> }).results)) as Result[]
      check('Chromium', results)
    } finally {
      await browser.close()
      server.close()
    }
  }, 120_000)
})
