// Helpers of browser-notes.test.ts: what the origin keeps at rest, what overflows the card, a
// copy of the repo root to run the README's commands in, and processes started from them.
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readdirSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import { freePort } from '../../testkit/test/free-port.ts'
export { freePort }

export interface AtRest {
  localStorageKeys: string[]
  dbs: string[]
  /** every IndexedDB record: { db, store, key, value } */
  records: Array<{ db: string; store: string; key: unknown; value: any }>
  /** all of it as text, Uint8Arrays as latin-1, so that a plaintext byte run would show up in a search */
  dump: string
}

/** Everything the origin keeps: localStorage and every record of every IndexedDB database. */
export function readAtRest(page: Page): Promise<AtRest> {
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

/** Every wrap of a KEK at rest, one per (KEK, root): `[chain, 'kek', id]` for the root 'default', `[chain, 'kek-wrap', id, root]` for the others. */
export function kekWraps(atRest: AtRest): Array<{ id: number; root: string; rootKind: string; wrapped: number[] }> {
  return atRest.records
    .filter((r) => r.db === 'kms-proxy:browser-notes' && Array.isArray(r.key) && (r.key[1] === 'kek' || r.key[1] === 'kek-wrap'))
    .map((r) => {
      const key = r.key as [string, string, number, string?]
      return { id: key[2], root: key[3] ?? 'default', rootKind: r.value.rootKind, wrapped: r.value.wrapped.bytes }
    })
}

/** The ids of the KEKs at rest (each once, whatever the number of roots wrapping it). */
export const kekIds = (atRest: AtRest): number[] => [...new Set(kekWraps(atRest).map((w) => w.id))]

/** The roots the chain head lists ({ name, kind, state }), or undefined for a head of one root. */
export const headRoots = (atRest: AtRest): Array<{ name: string; kind: string; state: string }> | undefined =>
  atRest.records.find((r) => r.db === 'kms-proxy:browser-notes' && JSON.stringify(r.key) === '["notes","head"]')?.value.head.roots

export interface Layout {
  /** document.documentElement's scrollWidth and clientWidth */
  scrollWidth: number
  clientWidth: number
  /** rendered elements and text runs inside `main` whose box is not inside main's content box */
  overflowing: string[]
}

/**
 * Where the page sticks out: sideways scrolling of the document, and every rendered element or
 * text run of the card (`main`) whose bounding box leaves the card's content box (half a pixel of
 * rounding allowed).
 */
export function measureLayout(page: Page): Promise<Layout> {
  return page.evaluate(() => {
    const main = document.querySelector('main')!
    const box = main.getBoundingClientRect()
    const style = getComputedStyle(main)
    const left = box.left + parseFloat(style.paddingLeft) + parseFloat(style.borderLeftWidth) - 0.5
    const right = box.right - parseFloat(style.paddingRight) - parseFloat(style.borderRightWidth) + 0.5
    const name = (e: Element) => `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}${e.className ? `.${String(e.className).replace(/\s+/g, '.')}` : ''}`
    const overflowing: string[] = []
    const check = (r: DOMRect, what: () => string) => {
      if (r.width === 0 && r.height === 0) return
      if (r.left < left || r.right > right) overflowing.push(`${what()}: ${Math.round(r.left)}..${Math.round(r.right)} outside ${Math.round(left)}..${Math.round(right)}`)
    }
    for (const e of Array.from(main.querySelectorAll('*'))) {
      if (!e.checkVisibility()) continue
      check(e.getBoundingClientRect(), () => name(e))
      for (const n of Array.from(e.childNodes)) {
        if (n.nodeType !== Node.TEXT_NODE || !n.textContent!.trim()) continue
        const range = document.createRange()
        range.selectNodeContents(n)
        check(range.getBoundingClientRect(), () => `text "${n.textContent!.trim().slice(0, 30)}" in ${name(e)}`)
      }
    }
    return { scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth, overflowing }
  })
}

/** How the element that shows `needle` in its own text is styled: its classes and computed colours. */
export function styleOfText(page: Page, needle: string): Promise<{ className: string; color: string; background: string } | undefined> {
  return page.evaluate((text) => {
    const own = (e: Element) => Array.from(e.childNodes).some((n) => n.nodeType === Node.TEXT_NODE && n.textContent!.includes(text))
    const e = Array.from(document.querySelectorAll('main *')).find((x) => x.checkVisibility() && own(x))
    if (!e) return undefined
    const s = getComputedStyle(e)
    return { className: String(e.className), color: s.color, background: s.backgroundColor }
  }, needle)
}

/** `rgb(r, g, b)` → [r, g, b] */
export const rgb = (css: string): number[] => css.match(/\d+/g)!.slice(0, 3).map(Number)

/**
 * A stand-in for the repo root in a temporary folder, so that a README's commands run there as
 * written while everything they write stays out of the checkout: every top-level entry is a
 * symlink to the real one, except `examples/`, whose `example` folder is a copy of the real one
 * (without the files named in `leaveOut`, the outputs the commands are to make) and whose other
 * folders are symlinks.
 */
export function repoRootCopy(repo: string, example: string, leaveOut: string[]): string {
  const root = mkdtempSync(join(tmpdir(), `kms-proxy-${example}-`))
  for (const entry of readdirSync(repo)) {
    if (entry !== '.git' && entry !== 'examples') symlinkSync(join(repo, entry), join(root, entry))
  }
  mkdirSync(join(root, 'examples'))
  for (const entry of readdirSync(join(repo, 'examples'))) {
    if (entry !== example) symlinkSync(join(repo, 'examples', entry), join(root, 'examples', entry))
  }
  cpSync(join(repo, 'examples', example), join(root, 'examples', example), { recursive: true, filter: (src) => !leaveOut.some((f) => src.endsWith(`/${f}`)) })
  return root
}

/** A README command run by `sh -c` in `cwd`, in a process group of its own, its output collected. */
export interface Command {
  child: ChildProcess
  output: () => string
  /** resolves with the exit code (or the signal's name) */
  exited: Promise<number | string>
  /** SIGTERM to the whole group (sh and what it started); idempotent */
  stop: () => void
}

export function run(command: string, cwd: string): Command {
  const child = spawn('sh', ['-c', command], { cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (out += d))
  const exited = new Promise<number | string>((resolve) => child.on('exit', (code, signal) => resolve(code ?? signal ?? -1)))
  let stopped = false
  return {
    child,
    output: () => out,
    exited,
    stop: () => {
      // the group, even when sh has exited: what it started may still run
      if (stopped) return
      stopped = true
      try {
        process.kill(-child.pid!, 'SIGTERM')
      } catch {
        // the group is gone already
      }
    },
  }
}
