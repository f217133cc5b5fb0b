/**
 * examples/browser-notes in headless Chromium: app.mjs bundled with esbuild (the repo tsconfig
 * maps @kms-proxy/* to the sources), the example folder served on http://localhost. Unlock, add
 * two notes, reload, unlock again and read them back; only ciphertext in IndexedDB and
 * localStorage; a wrong passphrase shows a clear error; a screenshot for the README.
 */
import { existsSync } from 'node:fs'
import type { Server } from 'node:http'
import { fileURLToPath } from 'node:url'
import type { Browser, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CHROMIUM, bundle, launch, openPage, serve } from './serve.js'

const EXAMPLE = fileURLToPath(new URL('../../../examples/browser-notes/', import.meta.url))
const PASSPHRASE = 'correct horse battery staple'
const NOTES = ['Buy oat milk and coffee beans', 'The door code is 4711 — do not tell anyone']

describe.skipIf(!existsSync(CHROMIUM))('examples/browser-notes in Chromium', () => {
  let server: Server
  let browser: Browser
  let origin: string
  const measured: Record<string, unknown> = {}

  beforeAll(async () => {
    const script = await bundle(`${EXAMPLE}app.mjs`)
    ;({ server, origin } = await serve({ '/app.js': script }, EXAMPLE))
    browser = await launch()
  })

  afterAll(async () => {
    await browser?.close()
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)))
    console.log('browser-notes measured:', JSON.stringify(measured))
  })

  async function unlock(page: Page, passphrase: string): Promise<void> {
    await page.fill('#passphrase', passphrase)
    await page.click('#unlock')
    await page.waitForFunction(() => !document.getElementById('unlock')!.hasAttribute('disabled') && !/Unlocking/.test(document.getElementById('status')!.textContent ?? ''))
  }

  it('unlock, add two notes, reload, unlock, read back; ciphertext only at rest; wrong passphrase is refused', async () => {
    const page = await openPage(await browser.newPage({ viewport: { width: 720, height: 560 } }), `${origin}/`, 'notesReady')

    await unlock(page, PASSPHRASE)
    await expect.poll(() => page.textContent('#status')).toMatch(/New notebook created in \d+ ms/)
    measured.firstUnlockMs = Number((await page.textContent('#status'))!.match(/(\d+) ms/)![1])
    for (const note of NOTES) {
      await page.fill('#note', note)
      await page.click('#add')
      await expect.poll(() => page.locator('#notes li').count()).toBe(NOTES.indexOf(note) + 1)
    }

    await page.reload()
    await page.waitForFunction(() => (globalThis as any).notesReady === true)
    expect(await page.isVisible('#notebook')).toBe(false)
    await unlock(page, PASSPHRASE)
    const status = (await page.textContent('#status'))!
    expect(status).toMatch(/^Unlocked in \d+ ms\.$/)
    measured.unlockAfterReloadMs = Number(status.match(/(\d+) ms/)![1])
    const shown = await page.locator('#notes li').allTextContents()
    expect(shown).toHaveLength(2)
    for (const [i, note] of NOTES.entries()) expect(shown[i]).toContain(note)

    // At rest: localStorage holds only kp1. text; IndexedDB only the chain head and wrapped KEKs.
    const atRest = await page.evaluate(async () => {
      const local: Record<string, string> = {}
      for (let i = 0; i < localStorage.length; i++) local[localStorage.key(i)!] = localStorage.getItem(localStorage.key(i)!)!
      const dbs = (await indexedDB.databases()).map((d) => d.name!)
      const idb: unknown[] = []
      for (const name of dbs) {
        const db = await new Promise<IDBDatabase>((resolve, reject) => {
          const r = indexedDB.open(name)
          r.onsuccess = () => resolve(r.result)
          r.onerror = () => reject(r.error)
        })
        for (const storeName of Array.from(db.objectStoreNames)) {
          const tx = db.transaction(storeName)
          const [keys, values] = await Promise.all(
            (['getAllKeys', 'getAll'] as const).map(
              (m) =>
                new Promise<unknown[]>((resolve, reject) => {
                  const r = tx.objectStore(storeName)[m]()
                  r.onsuccess = () => resolve(r.result as unknown[])
                  r.onerror = () => reject(r.error)
                }),
            ),
          )
          keys!.forEach((k, i) => idb.push({ db: name, key: k, value: values![i] }))
        }
        db.close()
      }
      // Uint8Arrays as latin-1 text, so that a plaintext byte run would show up in the search.
      const dump = JSON.stringify(idb, (_, v) => (v instanceof Uint8Array ? String.fromCharCode(...v) : v))
      return { local, dbs, idbCount: idb.length, dump }
    })
    expect(atRest.dbs).toContain('kms-proxy:browser-notes')
    expect(atRest.idbCount).toBeGreaterThanOrEqual(2) // head + at least one KEK
    const notes = JSON.parse(atRest.local['browser-notes:notes']!) as Array<{ at: number; text: string }>
    expect(notes).toHaveLength(2)
    for (const n of notes) expect(n.text).toMatch(/^kp1\.[A-Za-z0-9_-]+$/)
    expect(atRest.local['browser-notes:check']).toMatch(/^kp1\./)
    const everything = JSON.stringify(atRest.local) + atRest.dump
    for (const secret of [...NOTES, 'oat milk', '4711', PASSPHRASE, 'browser-notes v1']) expect(everything).not.toContain(secret)
    measured.atRest = { localStorageKeys: Object.keys(atRest.local), indexedDbEntries: atRest.idbCount }

    // A wrong passphrase, after a reload (nothing cached in the page).
    await page.reload()
    await page.waitForFunction(() => (globalThis as any).notesReady === true)
    await unlock(page, 'not the passphrase')
    expect(await page.isVisible('#error')).toBe(true)
    expect(await page.textContent('#error')).toBe('Wrong passphrase: these notes were locked with a different one.')
    expect(await page.isVisible('#notebook')).toBe(false)
    expect(await page.locator('#notes li').count()).toBe(0)

    // The right one still works after the wrong one; the screenshot shows the unlocked notes.
    await unlock(page, PASSPHRASE)
    expect(await page.isVisible('#error')).toBe(false)
    expect(await page.locator('#notes li').count()).toBe(2)
    await page.screenshot({ path: `${EXAMPLE}screenshot.png`, fullPage: true })
  })
})
