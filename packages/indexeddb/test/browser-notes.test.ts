/**
 * examples/browser-notes in headless Chromium: app.mjs bundled with esbuild (the repo tsconfig
 * maps @kms-proxy/* to the sources), the example folder served on http://localhost (Chromium
 * refuses 127.0.0.1 as a WebAuthn RP id). Each test has its own browser context, so its own
 * IndexedDB.
 *
 * - passphrase: first run, two notes, reload, unlock, read back; ciphertext only at rest; a wrong
 *   passphrase is refused.
 * - passkey: a CDP virtual authenticator with PRF; first run, two notes, reload, unlock with one
 *   ceremony (the credential's signature counter says how many), read back; ciphertext only at
 *   rest; the stored parameters pointed at another credential, then a second authenticator, each
 *   fail with the ERR_ROOT_KEY message; the screenshot for the README.
 * - an authenticator without PRF: the clear message, and the passphrase offered instead.
 */
import { existsSync, readFileSync } from 'node:fs'
import type { Server } from 'node:http'
import { fileURLToPath } from 'node:url'
import type { Browser, CDPSession, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CANCELLED_MESSAGE, NO_PRF_MESSAGE } from '@kms-proxy/webauthn'
import { CHROMIUM, bundle, launch, openPage, serve } from './serve.js'

const EXAMPLE = fileURLToPath(new URL('../../../examples/browser-notes/', import.meta.url))
const PASSPHRASE = 'correct horse battery staple'
const BACKUP_PASSPHRASE = 'a backup passphrase of its own'
const NOTES = ['Buy oat milk and coffee beans', 'The door code is 4711 — do not tell anyone']
const SECRETS = [...NOTES, 'oat milk', '4711', PASSPHRASE, 'browser-notes v1']
const WRONG_CREDENTIAL = 'this WebAuthn credential cannot unwrap this KEK: another credential or salt, or the wrapped KEK was altered'

const authenticator = (hasPrf: boolean) => ({
  protocol: 'ctap2' as const,
  transport: 'internal' as const,
  hasResidentKey: true,
  hasUserVerification: true,
  isUserVerified: true,
  hasPrf,
  automaticPresenceSimulation: true,
})

interface AtRest {
  localStorageKeys: string[]
  dbs: string[]
  /** every IndexedDB record: { db, store, key, value } */
  records: Array<{ db: string; store: string; key: unknown; value: any }>
  /** all of it as text, Uint8Arrays as latin-1, so that a plaintext byte run would show up in a search */
  dump: string
}

/** Everything the origin keeps: localStorage and every record of every IndexedDB database. */
function readAtRest(page: Page): Promise<AtRest> {
  return page.evaluate(async () => {
    const local: Record<string, string> = {}
    for (let i = 0; i < localStorage.length; i++) local[localStorage.key(i)!] = localStorage.getItem(localStorage.key(i)!)!
    const dbs = (await indexedDB.databases()).map((d) => d.name!)
    const records: Array<{ db: string; store: string; key: unknown; value: unknown }> = []
    const done = <T,>(r: IDBRequest<T>) =>
      new Promise<T>((resolve, reject) => {
        r.onsuccess = () => resolve(r.result)
        r.onerror = () => reject(r.error)
      })
    for (const name of dbs) {
      const db = await done(indexedDB.open(name))
      for (const store of Array.from(db.objectStoreNames)) {
        const s = db.transaction(store).objectStore(store)
        const [keys, values] = await Promise.all([done(s.getAllKeys()), done(s.getAll())])
        keys.forEach((key, i) => records.push({ db: name, store, key, value: values[i] }))
      }
      db.close()
    }
    const latin1 = (_: string, v: unknown) => (v instanceof Uint8Array ? String.fromCharCode(...v) : v)
    const dump = JSON.stringify(local) + JSON.stringify(records, latin1)
    // Uint8Arrays become plain arrays on their way out of the page.
    const out = JSON.parse(JSON.stringify(records, (_, v) => (v instanceof Uint8Array ? { bytes: Array.from(v) } : v)))
    return { localStorageKeys: Object.keys(local), dbs, records: out, dump }
  })
}

/** The checks shared by both roots: notes and check text as kp1. text, KEK records wrapped, no secret anywhere. */
function expectCiphertextOnly(atRest: AtRest, rootKind: string): void {
  expect(atRest.localStorageKeys).toEqual([])
  expect(atRest.dbs.sort()).toEqual(['browser-notes', 'kms-proxy:browser-notes'])
  const notes = atRest.records.filter((r) => r.db === 'browser-notes' && r.store === 'notes')
  expect(notes).toHaveLength(NOTES.length)
  for (const n of notes) expect(n.value.text).toMatch(/^kp1\.[A-Za-z0-9_-]+$/)
  const check = atRest.records.find((r) => r.store === 'settings' && r.key === 'check')
  expect(check?.value).toMatch(/^kp1\./)
  const keks = atRest.records.filter((r) => r.db === 'kms-proxy:browser-notes' && Array.isArray(r.key) && r.key[1] === 'kek')
  expect(keks.length).toBeGreaterThanOrEqual(1)
  for (const k of keks) expect(k.value.rootKind).toBe(rootKind)
  for (const secret of SECRETS) expect(atRest.dump).not.toContain(secret)
}

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

  /** Clicks (or submits), then waits until the action's button is enabled again. */
  async function press(page: Page, button: string): Promise<void> {
    await page.click(button)
    await page.waitForFunction((b) => !document.querySelector(b)!.hasAttribute('disabled'), button)
  }

  async function passphrase(page: Page, value: string): Promise<void> {
    await page.fill('#passphrase', value)
    await press(page, '#unlock')
  }

  async function addNotes(page: Page): Promise<void> {
    for (const [i, note] of NOTES.entries()) {
      await page.fill('#note', note)
      await page.click('#add')
      await expect.poll(() => page.locator('#notes li').count()).toBe(i + 1)
    }
  }

  async function reload(page: Page): Promise<void> {
    await page.reload()
    await page.waitForFunction(() => (globalThis as any).notesReady === true)
    expect(await page.isVisible('#notebook')).toBe(false)
  }

  async function expectNotesShown(page: Page): Promise<void> {
    const shown = await page.locator('#notes li').allTextContents()
    expect(shown).toHaveLength(NOTES.length)
    for (const [i, note] of NOTES.entries()) expect(shown[i]).toContain(note)
  }

  const ceremonies = (page: Page) => page.evaluate(() => ({ ...(globalThis as any).ceremonies }) as { create: number; get: number })

  const msIn = (status: string | null) => Number(status!.match(/(\d+) ms/)![1])

  /** A page of its own (new context, new IndexedDB) with a virtual authenticator, before the app loads. */
  async function passkeyPage(hasPrf: boolean): Promise<{ page: Page; cdp: CDPSession; authenticatorId: string }> {
    const page = await browser.newPage({ viewport: { width: 720, height: 560 } })
    const cdp = await page.context().newCDPSession(page)
    await cdp.send('WebAuthn.enable')
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', { options: authenticator(hasPrf) })
    // Counts the page's ceremonies; runs before the app on every load, so counts restart at a reload.
    await page.addInitScript(() => {
      const counts = ((globalThis as any).ceremonies = { create: 0, get: 0 })
      const c = navigator.credentials
      const [create, get] = [c.create.bind(c), c.get.bind(c)]
      c.create = (o) => (counts.create++, create(o))
      c.get = (o) => (counts.get++, get(o))
    })
    await openPage(page, `${origin}/`, 'notesReady')
    return { page, cdp, authenticatorId }
  }

  it('passphrase: first run, two notes, reload, unlock, read back; ciphertext only at rest; a wrong passphrase is refused', async () => {
    const page = await openPage(await browser.newPage(), `${origin}/`, 'notesReady')
    expect(await page.isVisible('#setup')).toBe(true)
    await page.click('#choose-passphrase')
    expect(await page.textContent('#unlock')).toBe('Create notebook')
    await passphrase(page, PASSPHRASE)
    expect(await page.textContent('#status')).toMatch(/^New notebook created in \d+ ms\. Keep the passphrase/)
    measured.passphraseFirstUnlockMs = msIn(await page.textContent('#status'))
    await addNotes(page)

    await reload(page)
    expect(await page.isVisible('#setup')).toBe(false)
    expect(await page.isVisible('#passkey-unlock')).toBe(false)
    await passphrase(page, PASSPHRASE)
    const status = await page.textContent('#status')
    expect(status).toMatch(/^Unlocked with the passphrase in \d+ ms\.$/)
    measured.passphraseUnlockAfterReloadMs = msIn(status)
    await expectNotesShown(page)
    expect(await page.textContent('#count')).toBe('2 notes, encrypted under a passphrase')

    const atRest = await readAtRest(page)
    expectCiphertextOnly(atRest, 'passphrase-pbkdf2')
    expect(atRest.records.find((r) => r.key === 'root')?.value).toEqual({ kind: 'passphrase' })

    // A wrong passphrase, after a reload (nothing cached in the page); then the right one.
    await reload(page)
    await passphrase(page, 'not the passphrase')
    expect(await page.textContent('#error')).toBe('Wrong passphrase: these notes were locked with a different one.')
    expect(await page.isVisible('#notebook')).toBe(false)
    expect(await page.locator('#notes li').count()).toBe(0)
    await passphrase(page, PASSPHRASE)
    expect(await page.isVisible('#error')).toBe(false)
    expect(await page.locator('#notes li').count()).toBe(2)
    await page.context().close()
  })

  it('passkey: first run, two notes, reload, unlock with one ceremony, read back; another credential and another authenticator fail with ERR_ROOT_KEY; an encrypted backup restores the notes elsewhere', async () => {
    const { page, cdp, authenticatorId } = await passkeyPage(true)
    const credential = async () => {
      const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId })
      expect(credentials).toHaveLength(1)
      return credentials[0]!
    }

    await press(page, '#choose-passkey')
    expect(await page.isVisible('#error')).toBe(false)
    expect(await page.textContent('#status')).toMatch(/^New notebook created in \d+ ms\. Without this passkey/)
    measured.passkeyFirstRunMs = msIn(await page.textContent('#status')) // create + get + first KEK
    expect(await ceremonies(page)).toEqual({ create: 1, get: 0 }) // one prompt: the PRF evaluated at create
    const registered = await credential()
    await addNotes(page)
    expect(await ceremonies(page)).toEqual({ create: 1, get: 0 }) // notes make no ceremony

    await reload(page)
    expect(await page.isVisible('#passkey-unlock')).toBe(true)
    expect(await page.isVisible('#unlock-form')).toBe(false)
    await press(page, '#unlock-passkey')
    const status = await page.textContent('#status')
    expect(status).toMatch(/^Unlocked with the passkey in \d+ ms\.$/)
    measured.passkeyUnlockAfterReloadMs = msIn(status)
    await expectNotesShown(page)
    expect(await page.textContent('#count')).toBe('2 notes, encrypted under a passkey')
    expect(await ceremonies(page)).toEqual({ create: 0, get: 1 }) // one ceremony for the unlock (counters restart at the reload)
    expect((await credential()).signCount).toBe(registered.signCount + 1)

    // At rest: the root's public parameters name the authenticator's credential; nothing secret.
    const atRest = await readAtRest(page)
    expectCiphertextOnly(atRest, 'webauthn-prf')
    const root = atRest.records.find((r) => r.db === 'browser-notes' && r.key === 'root')!.value
    expect(Object.keys(root.params).sort()).toEqual(['credentialId', 'salt'])
    expect(root).toEqual({ kind: 'passkey', params: { credentialId: root.params.credentialId, salt: root.params.salt } })
    expect(Buffer.from(root.params.credentialId, 'base64url')).toEqual(Buffer.from(registered.credentialId, 'base64'))
    expect(Buffer.from(root.params.salt, 'base64url').length).toBe(32)
    for (const k of atRest.records.filter((r) => r.db === 'kms-proxy:browser-notes' && Array.isArray(r.key) && r.key[1] === 'kek')) {
      expect(k.value.wrapped.bytes).toHaveLength(45) // 0x40 || iv || AES-GCM(KEK) || tag
      expect(k.value.wrapped.bytes[0]).toBe(0x40)
    }
    measured.passkeyAtRest = { indexedDbRecords: atRest.records.map((r) => `${r.db}/${r.store}/${JSON.stringify(r.key)}`) }

    // Another credential: a second PRF credential on the same authenticator, made by the test,
    // named in the stored parameters. Its ceremony succeeds; its key cannot unwrap the KEK.
    const other = await page.evaluate(async () => {
      const c = (await navigator.credentials.create({
        publicKey: {
          rp: { name: 'another' },
          user: { id: crypto.getRandomValues(new Uint8Array(16)), name: 'mallory', displayName: 'mallory' },
          challenge: crypto.getRandomValues(new Uint8Array(32)),
          pubKeyCredParams: [{ type: 'public-key', alg: -7 }],
          authenticatorSelection: { residentKey: 'preferred', userVerification: 'required' },
          extensions: { prf: {} } as AuthenticationExtensionsClientInputs,
        },
      })) as PublicKeyCredential
      let s = ''
      for (const b of new Uint8Array(c.rawId)) s += String.fromCharCode(b)
      return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
    })
    const setRoot = (value: unknown) =>
      page.evaluate(
        (v) =>
          new Promise<void>((resolve, reject) => {
            const open = indexedDB.open('browser-notes')
            open.onsuccess = () => {
              const tx = open.result.transaction('settings', 'readwrite')
              tx.objectStore('settings').put(v, 'root')
              tx.oncomplete = () => (open.result.close(), resolve())
              tx.onerror = () => reject(tx.error)
            }
          }),
        value,
      )
    await setRoot({ kind: 'passkey', params: { ...root.params, credentialId: other } })
    await reload(page)
    await press(page, '#unlock-passkey')
    expect(await page.textContent('#error')).toBe(`The passkey could not be used: ${WRONG_CREDENTIAL}.`)
    expect(await page.isVisible('#notebook')).toBe(false)
    expect(await page.isVisible('#passkey-unlock')).toBe(true)

    // The right parameters again: unlocked; this is the README's screenshot.
    await setRoot(root)
    await reload(page)
    await press(page, '#unlock-passkey')
    expect(await page.isVisible('#error')).toBe(false)
    await expectNotesShown(page)
    await page.screenshot({ path: `${EXAMPLE}screenshot.png`, fullPage: true })

    // An encrypted backup under a backup passphrase of its own: the recovery path.
    await page.click('#backup summary')
    await page.fill('#export-passphrase', BACKUP_PASSPHRASE)
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')])
    await page.waitForFunction(() => !document.getElementById('export')!.hasAttribute('disabled'))
    expect(await page.textContent('#status')).toBe('Backup of 2 notes downloaded, encrypted under the backup passphrase.')
    expect(download.suggestedFilename()).toMatch(/^notes-backup-\d{4}-\d{2}-\d{2}\.json$/)
    const backupFile = { name: download.suggestedFilename(), mimeType: 'application/json', buffer: readFileSync(await download.path()) }
    const backupText = backupFile.buffer.toString('latin1')
    const backup = JSON.parse(backupText)
    expect(Object.keys(backup).sort()).toEqual(['data', 'format', 'v'])
    expect(backup).toMatchObject({ format: 'browser-notes-backup', v: 1 })
    expect(backup.data).toMatch(/^kp1\.[A-Za-z0-9_-]+$/)
    for (const secret of [...SECRETS, BACKUP_PASSPHRASE]) expect(backupText).not.toContain(secret)
    expect(await ceremonies(page)).toEqual({ create: 0, get: 1 }) // the backup needs no ceremony

    // A second authenticator (the first one gone, as on another device): the browser answers
    // NotAllowedError without saying that the credential is missing (a privacy rule of WebAuthn).
    await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId })
    await cdp.send('WebAuthn.addVirtualAuthenticator', { options: authenticator(true) })
    await reload(page)
    await press(page, '#unlock-passkey')
    expect(await page.textContent('#error')).toBe(`The passkey could not be used: ${CANCELLED_MESSAGE}.`)
    expect(await page.isVisible('#notebook')).toBe(false)
    expect(await page.locator('#notes li').count()).toBe(0)
    await page.context().close()

    // Recovery: a new notebook elsewhere (its own context, a passphrase), the backup imported.
    const elsewhere = await openPage(await browser.newPage(), `${origin}/`, 'notesReady')
    await elsewhere.click('#choose-passphrase')
    await passphrase(elsewhere, PASSPHRASE)
    await elsewhere.click('#backup summary')
    await elsewhere.setInputFiles('#import-file', backupFile)
    await elsewhere.fill('#import-passphrase', 'not the backup passphrase')
    await press(elsewhere, '#import')
    expect(await elsewhere.textContent('#error')).toBe('Wrong backup passphrase.')
    expect(await elsewhere.locator('#notes li').count()).toBe(0)
    await elsewhere.fill('#import-passphrase', BACKUP_PASSPHRASE)
    await press(elsewhere, '#import')
    expect(await elsewhere.textContent('#status')).toBe('2 notes imported from the backup.')
    await expectNotesShown(elsewhere)
    // imported again: nothing twice
    await elsewhere.fill('#import-passphrase', BACKUP_PASSPHRASE)
    await press(elsewhere, '#import')
    expect(await elsewhere.textContent('#status')).toBe('0 notes imported from the backup.')
    // re-encrypted under the new notebook's own chain (render() read them back from IndexedDB)
    await expectNotesShown(elsewhere)
    expectCiphertextOnly(await readAtRest(elsewhere), 'passphrase-pbkdf2')
    await elsewhere.context().close()
  })

  it('an authenticator without PRF: the ERR_ROOT_KEY message on the page, and the passphrase offered instead', async () => {
    const { page } = await passkeyPage(false)
    await press(page, '#choose-passkey')
    expect(await page.textContent('#error')).toBe(`The passkey could not be used: ${NO_PRF_MESSAGE}. Protect the notes with a passphrase instead.`)
    expect(await page.isVisible('#notebook')).toBe(false)
    expect(await page.isVisible('#setup')).toBe(true)
    expect(await page.isVisible('#unlock-form')).toBe(true)
    expect(await page.textContent('#unlock')).toBe('Create notebook')
    // Nothing was stored for the refused passkey: the notebook is still unprotected, and a reload asks again.
    const before = await readAtRest(page)
    expect(before.records.filter((r) => r.db === 'browser-notes')).toEqual([])
    expect(before.records.filter((r) => r.db === 'kms-proxy:browser-notes')).toEqual([])

    await passphrase(page, PASSPHRASE)
    expect(await page.isVisible('#error')).toBe(false)
    expect(await page.textContent('#status')).toMatch(/^New notebook created in \d+ ms\./)
    expect(await page.textContent('#count')).toBe('0 notes, encrypted under a passphrase')
    await page.context().close()
  })
})
