/**
 * What root-change-crash and root-change-concurrent share with their child processes (so no
 * vitest here): the two roots, the three changes (changeRoot, addRoot, removeRoot) as a user
 * runs them, a store wrapper that counts writes, and the stores by a description a child can
 * rebuild.
 */
import { etcdStore } from '@kms-proxy/etcd'
import { fileStore } from '@kms-proxy/file'
import { KeyChain, aesRootKey, toBase64, type KeyStore, type RootChangeReport, type RootKey } from '../src/index.ts'

const OLD_BYTES = Uint8Array.from({ length: 32 }, (_, i) => (i * 41 + 5) & 0xff)
const NEW_BYTES = Uint8Array.from({ length: 32 }, (_, i) => (i * 59 + 17) & 0xff)
/** The root the chain starts with (fresh instances: no cache shared between chains). */
export const OLD = (): RootKey => aesRootKey(OLD_BYTES)
/** The root it changes to, or adds. */
export const NEW = (): RootKey => aesRootKey(NEW_BYTES)
export const CHAIN = 'default'

/** A store as a child process can rebuild it from JSON. */
export type StoreSpec = { kind: 'file'; path: string } | { kind: 'etcd'; endpoint: string; prefix: string }

export function openStore(spec: StoreSpec): KeyStore {
  // A short stale-lock time: a child killed while it waits for the lock leaves none, but one
  // killed in the middle of a takeover would otherwise hold every later run for 10 s.
  if (spec.kind === 'file') return fileStore(spec.path, { staleLockMs: 2_000 })
  return etcdStore({ endpoints: [spec.endpoint], prefix: spec.prefix })
}

export type Op = 'change' | 'add' | 'remove'

/**
 * Each change as a user runs it: the roots the chain is opened with, the call, and the root
 * names before (old) and after (new). `remove` starts from a chain that has both roots.
 */
export const OPS: Record<Op, { oldName: string; newName: string; open: () => Record<string, RootKey> | RootKey; run: (chain: KeyChain) => Promise<RootChangeReport> }> = {
  change: { oldName: 'default', newName: 'default-2', open: OLD, run: (c) => c.changeRoot(NEW()) },
  add: { oldName: 'default', newName: 'recovery', open: OLD, run: (c) => c.addRoot('recovery', NEW()) },
  remove: { oldName: 'default', newName: 'recovery', open: () => ({ default: OLD(), recovery: NEW() }), run: (c) => c.removeRoot('default') },
}

/**
 * The change run again on a fresh chain after a stop. addRoot, removeRoot: the same call.
 * changeRoot: by a process holding both roots by name, with `from` and `name` given: stopped
 * after its last deletion, no wrap is left under the old root, so a process holding only the
 * old root has nothing to prove it on.
 */
export async function runAgain(op: Op, store: KeyStore): Promise<RootChangeReport> {
  return OPS[op].run(await openFor(op, store))
}

export function openFor(op: Op, store: KeyStore): Promise<KeyChain> {
  const roots = OPS[op].open()
  return KeyChain.open({ store, name: CHAIN, ...(typeof (roots as RootKey).unwrapKek === 'function' ? { rootKey: roots as RootKey } : { roots: roots as Record<string, RootKey> }) })
}

/** Every method of `store` as it is, to be overridden one by one (a store on several roots). */
export function passThrough(store: KeyStore): Required<KeyStore> {
  return {
    atomic: store.atomic,
    embedsKeks: store.embedsKeks,
    getHead: (chain) => store.getHead(chain),
    getKek: (chain, id) => store.getKek(chain, id),
    listKeks: (chain) => store.listKeks(chain),
    getKekWraps: (chain, id) => store.getKekWraps!(chain, id),
    casHead: (chain, expected, next) => store.casHead(chain, expected, next),
    putKekIfAbsent: (chain, record) => store.putKekIfAbsent(chain, record),
    deleteKekWrap: (chain, id, root) => store.deleteKekWrap!(chain, id, root),
    watchHead: (chain, onChange) => store.watchHead?.(chain, onChange) ?? (() => {}),
  }
}

/** `store` with its writes (putKekIfAbsent, casHead, deleteKekWrap) counted; `after(n)` runs after the n-th returns. */
export function countingWrites(store: KeyStore, after: (n: number) => void | Promise<void>): KeyStore {
  const inner = passThrough(store)
  let n = 0
  const counted =
    <A extends unknown[], R>(write: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      const result = await write(...args)
      await after(++n)
      return result
    }
  return { ...inner, casHead: counted(inner.casHead), putKekIfAbsent: counted(inner.putKekIfAbsent), deleteKekWrap: counted(inner.deleteKekWrap) }
}

/** What a writer made and what failed, as JSON. */
export interface WriterResult {
  /** Every message it encrypted: base64 of the data, and the text. */
  made: { data: string; text: string }[]
  /** Encryptions that failed, with the error's code and message. */
  encryptErrors: { code: string | undefined; message: string }[]
  /** Decryptions that failed (of its own messages, or of the ones made before it started). */
  decryptErrors: string[]
}

/**
 * A process's encrypt-and-decrypt loop beside a root change: encrypts a new message, then
 * decrypts one of its own and one made before it started, and again, until stopped. `mark(n)`
 * resolves once it has tried `n` more encryptions.
 */
export class Writer {
  readonly result: WriterResult = { made: [], encryptErrors: [], decryptErrors: [] }
  #attempts = 0
  #stopped = false
  #waiting: { at: number; resolve: () => void }[] = []
  readonly #chain: KeyChain
  readonly #name: string
  readonly #before: { data: Uint8Array; text: string }[]
  readonly #pauseMs: number

  constructor(chain: KeyChain, name: string, before: { data: Uint8Array; text: string }[], pauseMs: number) {
    this.#chain = chain
    this.#name = name
    this.#before = before
    this.#pauseMs = pauseMs
  }

  /** Resolves after `n` more encryptions were tried. */
  mark(n: number): Promise<void> {
    return new Promise((resolve) => this.#waiting.push({ at: this.#attempts + n, resolve }))
  }

  stop(): void {
    this.#stopped = true
  }

  async run(): Promise<WriterResult> {
    const own: { data: Uint8Array; text: string }[] = []
    const decoder = new TextDecoder()
    const check = async (m: { data: Uint8Array; text: string }) => {
      try {
        if (decoder.decode(await this.#chain.decrypt(m.data)) !== m.text) this.result.decryptErrors.push(`${m.text}: wrong text`)
      } catch (error) {
        this.result.decryptErrors.push(`${m.text}: ${(error as { code?: string }).code} ${(error as Error).message}`)
      }
    }
    for (let i = 0; !this.#stopped; i++) {
      const text = `${this.#name} ${i}`
      try {
        const data = await this.#chain.encrypt(text)
        own.push({ data, text })
        this.result.made.push({ data: toBase64(data), text })
      } catch (error) {
        this.result.encryptErrors.push({ code: (error as { code?: string }).code, message: (error as Error).message })
      }
      this.#attempts++
      for (const w of this.#waiting.filter((w) => w.at <= this.#attempts)) w.resolve()
      this.#waiting = this.#waiting.filter((w) => w.at > this.#attempts)
      if (own.length > 0) await check(own[i % own.length]!)
      if (this.#before.length > 0) await check(this.#before[i % this.#before.length]!)
      await new Promise((r) => setTimeout(r, this.#pauseMs))
    }
    return this.result
  }
}
