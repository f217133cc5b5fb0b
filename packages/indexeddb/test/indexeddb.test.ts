/**
 * indexedDbStore in headless Chromium (playwright-core): the describeStore contract inside a page,
 * then two tabs (two pages of one browser context, one origin) rotating through the same
 * IndexedDB store at once, read back by a third page after a reload.
 */
import { existsSync } from 'node:fs'
import type { Server } from 'node:http'
import { fileURLToPath } from 'node:url'
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CHROMIUM, bundle, launch, openPage, serve } from './serve.js'

const PAGE = '<!doctype html><meta charset="utf-8"><title>indexeddb store</title><script type="module" src="/page.js"></script>'
const kekIdOf = (text: string) => Buffer.from(text.slice(4), 'base64url').readUInt32BE(1)

/** Measurements, printed at the end (the README's numbers come from here). */
const measured: Record<string, unknown> = {}

describe.skipIf(!existsSync(CHROMIUM))('indexedDbStore in Chromium', () => {
  let server: Server
  let browser: Browser
  let context: BrowserContext
  let origin: string

  const call = <T = any>(p: Page, name: string, arg?: unknown): Promise<T> =>
    p.evaluate(([n, a]) => (globalThis as any).kp[n as string](a), [name, arg] as const) as Promise<T>
  const newTab = async () => openPage(await context.newPage(), `${origin}/`, 'kpReady')

  beforeAll(async () => {
    const script = await bundle(fileURLToPath(new URL('./page.ts', import.meta.url)))
    ;({ server, origin } = await serve({ '/index.html': PAGE, '/page.js': script }))
    browser = await launch()
    context = await browser.newContext()
  })

  afterAll(async () => {
    await browser?.close()
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)))
    console.log('indexeddb measured:', JSON.stringify(measured))
  })

  it('passes describeStore inside the page', async () => {
    const tab = await newTab()
    const results = await call<Array<{ name: string; ok: boolean; ms: number; error?: string }>>(tab, 'contract')
    expect(results.length).toBeGreaterThanOrEqual(6)
    for (const r of results) expect(r, `${r.name}: ${r.error}`).toMatchObject({ ok: true })
    measured.contract = results.map((r) => `${r.name.replace('indexeddb: ', '')}: ${r.ms} ms`)
    measured.timings = await call(tab, 'timings')
    await tab.close()
  })

  it("several roots: the 'default' record where records always were, others apart; records written before read as the default root; a malformed head is ERR_STORE; a chain adds and changes roots", async () => {
    const tab = await newTab()
    const { results, roots } = await call<{ results: Array<{ name: string; ok: boolean; ms: number; error?: string }>; roots: unknown }>(tab, 'roots')
    expect(results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)).toEqual([])
    expect(results.length).toBe(3)
    measured.rootsChain = roots
    await tab.close()
  })

  it('every lifecycle field of the head (retired KEKs, a retired or destroyed chain) is kept exactly; malformed ones are ERR_STORE', async () => {
    const tab = await newTab()
    const results = await call<Array<{ name: string; ok: boolean; ms: number; error?: string }>>(tab, 'lifecycle')
    expect(results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)).toEqual([])
    expect(results.length).toBe(3)
    await tab.close()
  })

  /**
   * Tab A (no watch: its casHead posts through a channel of its own) rotates while tab B, on the
   * old primary, encrypts every 10 ms: how long after A's rotation B encrypted under the new one.
   */
  let tabs: Promise<Page[]> | undefined
  let runs = 0
  const rotationSeen = async (watch: boolean, maxStalenessMs: number) => {
    // One pair of tabs for every run (a page load is most of a run's time); a new database each.
    const [a, b] = await (tabs ??= Promise.all([newTab(), newTab()]))
    const name = `fresh-${runs++}-${Date.now()}`
    const first = await call<number>(a!, 'openChain', { name, watch: false, maxStalenessMs: 60_000 })
    expect(await call<number>(b!, 'openChain', { name, watch, maxStalenessMs }), 'both tabs on one primary').toBe(first)
    await new Promise((r) => setTimeout(r, 300))
    const seen = call<{ kek: number; at: number }>(b!, 'change', { from: first, timeoutMs: 15_000 })
    const rotated = await call<{ kek: number; at: number }>(a!, 'rotate')
    const after = await seen
    expect(after.kek, 'tab B encrypts under the primary tab A made').toBe(rotated.kek)
    return after.at - rotated.at
  }

  it('a rotation in one tab is used by another tab of the origin within a few hundred ms with the watch (BroadcastChannel; maxStalenessMs 60 s, so only the watch explains it)', async () => {
    const runs: number[] = []
    for (let i = 0; i < 3; i++) runs.push(await rotationSeen(true, 60_000))
    measured.rotationSeenWithWatchMs = runs
    for (const ms of runs) expect(ms).toBeLessThan(2_000)
  })

  it('with watch: false, within maxStalenessMs (2 s here) by polling alone', async () => {
    const ms = await rotationSeen(false, 2_000)
    measured.rotationSeenPollingAloneMs = ms
    expect(ms).toBeLessThan(2_000 + 1_500)
    for (const tab of await tabs!) await tab.close()
  })

  it('two tabs putting the same (id, root) records at once: exactly one put of each wins, and its record is the one stored', async () => {
    const name = `wraps-${Date.now()}`
    const count = 30
    const [a, b] = await Promise.all([newTab(), newTab()])
    const [ra, rb] = await Promise.all(['a', 'b'].map((tabName, i) => call<{ won: boolean[]; stored: string[][] }>([a, b][i]!, 'putWraps', { name, tab: tabName, count, root: 'recovery' })))
    for (let i = 0; i < count; i++) {
      expect([ra!.won[i], rb!.won[i]].filter(Boolean).length, `KEK ${i + 1}`).toBe(1)
      const winner = ra!.won[i] ? 'a' : 'b'
      expect(ra!.stored[i]).toEqual([`recovery:${winner}`])
      expect(rb!.stored[i]).toEqual([`recovery:${winner}`])
    }
    measured.putRace = { aWon: ra!.won.filter(Boolean).length, bWon: rb!.won.filter(Boolean).length }
    await a.close()
    await b.close()
  })

  it('two tabs rotating at once: no KEK over the limit, every KEK stored, a reloaded third tab decrypts all', async () => {
    const name = `tabs-${Date.now()}`
    const max = 50
    const count = 200
    const [a, b] = await Promise.all([newTab(), newTab()])
    const t0 = Date.now()
    const [ra, rb] = await Promise.all([
      call<{ texts: string[]; rotations: number }>(a, 'work', { name, tab: 'a', count, max }),
      call<{ texts: string[]; rotations: number }>(b, 'work', { name, tab: 'b', count, max }),
    ])
    measured.twoTabsMs = Date.now() - t0
    const all = [...ra.texts, ...rb.texts]
    expect(all.length).toBe(2 * count)

    const perKek = new Map<number, number>()
    for (const text of all) perKek.set(kekIdOf(text), (perKek.get(kekIdOf(text)) ?? 0) + 1)
    const usage = JSON.stringify([...perKek])
    expect(Math.max(...perKek.values()), `wraps per KEK: ${usage}`).toBeLessThanOrEqual(max)
    // Both tabs used a KEK the other made: they really shared the store.
    const idsA = new Set(ra.texts.map(kekIdOf))
    const shared = rb.texts.map(kekIdOf).filter((id) => idsA.has(id))
    expect(shared.length, `no KEK shared between the tabs: ${usage}`).toBeGreaterThan(0)

    const third = await newTab()
    const stored = new Set(await call<number[]>(third, 'kekIds', name))
    for (const id of perKek.keys()) expect(stored.has(id), `KEK ${id} used but not stored`).toBe(true)
    measured.twoTabs = { keksUsed: perKek.size, keksStored: stored.size, maxWrapsUnderOneKek: Math.max(...perKek.values()), sharedRecords: shared.length, rotations: [ra.rotations, rb.rotations] }

    await a.close()
    await b.close()
    await third.reload()
    await third.waitForFunction(() => (globalThis as any).kpReady === true)
    const read = await call<{ plain: string[]; firstMs: number; totalMs: number; rootKeyUnwraps: number }>(third, 'decryptAll', { name, texts: all })
    expect(read.plain).toEqual([...ra.texts.map((_, i) => `a:${i}`), ...rb.texts.map((_, i) => `b:${i}`)])
    expect(read.rootKeyUnwraps).toBe(perKek.size)
    measured.afterReload = { firstDecryptMs: Math.round(read.firstMs * 10) / 10, decrypt400Ms: Math.round(read.totalMs) }
    await third.close()
  })
})
