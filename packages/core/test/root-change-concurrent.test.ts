/**
 * changeRoot while other processes keep encrypting and decrypting (DESIGN.md invariants 4 and
 * 8), on the memory store (chains in this process), the file store and etcd (child processes).
 * The writers use tiny limits (4 uses a KEK, leases of 1), so they rotate all the time, and the
 * change waits, in each of its phases (new root adding, both active, old root removing), until
 * a writer has rotated. Two writers hold both roots, as a migration deploys them; a third holds
 * only the old root (`rootKey`), and must fail with ERR_ROOT_KEY once it needs a KEK the old root
 * cannot give, never writing one. Afterwards: every message made before, during and after the
 * change decrypts with a chain holding only the new root; no KEK was used more than its limit;
 * every KEK has a wrap under the new root and none under the old; the head lists the new root.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, fromBase64, memoryStore, toBase64, type KeyStore } from '../src/index.ts'
import { haveEtcd, startEtcd, type EtcdCluster } from '../../etcd/test/etcd-process.ts'
import { bundleChild } from '../../testkit/test/bundle.ts'
import { expectCode, kekIdOf, text } from './helpers.ts'
import { chainWithKeks, checkedRecords, type Message } from './root-change-helpers.ts'
import { CHAIN, NEW, OLD, Writer, openStore, passThrough, type StoreSpec, type WriterResult } from './root-change-shared.ts'

const MAX_WRAPS = 4
const LEASE = 1
/** Encryptions each writer tries after the change: more than a KEK's uses, so each must rotate. */
const AFTER = 2 * MAX_WRAPS
/** How long a phase of the change waits for a writer to rotate: generous, for a loaded machine. */
const PHASE_WAIT_MS = 60_000
const SLOW = 240_000

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-root-concurrent-'))
const script = join(dir, 'child.mjs')
beforeAll(() => bundleChild({ file: join(import.meta.dirname, 'root-change-concurrent.child.mts') }, script), 30_000)
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))

type Roots = 'both' | 'old'

interface WriterHandle {
  ready: Promise<void>
  mark(n: number): Promise<void>
  stop(): Promise<WriterResult>
  /** Ends it now, if it still runs (a failed test). */
  kill(): void
}

function inProcessWriter(store: KeyStore, name: string, roots: Roots, before: Message[]): WriterHandle {
  // Every store call yields to the event loop first, so that the writers and the change
  // interleave at each store call, as processes would.
  const yielding = Object.fromEntries(
    Object.entries(store).map(([k, v]) => [k, typeof v === 'function' ? async (...a: unknown[]) => (await new Promise((r) => setImmediate(r)), v(...a)) : v]),
  ) as unknown as KeyStore
  let writer: Writer | undefined
  let running: Promise<WriterResult> | undefined
  const opened = KeyChain.open({
    store: yielding,
    name: CHAIN,
    maxWrapsPerKek: MAX_WRAPS,
    leaseSize: LEASE,
    ...(roots === 'both' ? { roots: { default: OLD(), 'default-2': NEW() } } : { rootKey: OLD() }),
  }).then((chain) => {
    writer = new Writer(chain, name, before, 1)
    running = writer.run()
  })
  return {
    ready: opened.then(() => writer!.mark(3)),
    mark: (n) => writer!.mark(n),
    stop: async () => (writer!.stop(), running!),
    kill: () => writer?.stop(),
  }
}

function childWriter(store: StoreSpec, name: string, roots: Roots, before: Message[]): WriterHandle {
  const child = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const waiting = new Map<string, ((line: { result?: WriterResult }) => void)[]>()
  const next = (event: string) => new Promise<{ result?: WriterResult }>((resolve) => waiting.set(event, [...(waiting.get(event) ?? []), resolve]))
  createInterface({ input: child.stdout }).on('line', (line) => {
    const message = JSON.parse(line) as { event: string; result?: WriterResult }
    waiting.get(message.event)?.shift()?.(message)
  })
  const exited = new Promise<never>((_, reject) => child.on('close', (code) => reject(new Error(`writer ${name} exited (${code}): ${stderr.slice(0, 1000)}`))))
  exited.catch(() => {})
  const send = (line: object) => child.stdin.write(`${JSON.stringify(line)}\n`)
  send({ store, name, roots, maxWrapsPerKek: MAX_WRAPS, leaseSize: LEASE, pauseMs: 2, before: before.map((m) => ({ data: toBase64(m.data), text: m.text })) })
  return {
    ready: Promise.race([next('ready'), exited]).then(() => {}),
    mark(n) {
      const marked = next('marked')
      send({ mark: n })
      return Promise.race([marked, exited]).then(() => {})
    },
    async stop() {
      const done = next('done')
      send({ stop: true })
      return (await Promise.race([done, exited])).result!
    },
    kill: () => void child.kill('SIGKILL'),
  }
}

/**
 * `store` with each compare-and-swap that moves the change to a new phase followed by a wait
 * until some writer has made a new KEK (one the store did not list when the phase began).
 */
function waitingForRotations(store: KeyStore, phases: string[]): KeyStore {
  const ids = async () => new Set((await store.listKeks(CHAIN)).map((r) => r.id))
  return {
    ...passThrough(store),
    async casHead(chain, expected, next) {
      const landed = await store.casHead(chain, expected, next)
      const phase = (next.roots ?? []).map((r) => `${r.name}:${r.state}`).join(',')
      if (landed && next.roots && next.roots.length > 1 && !phases.includes(phase)) {
        phases.push(phase)
        const seen = await ids()
        const deadline = Date.now() + PHASE_WAIT_MS
        for (;;) {
          if ([...(await ids())].some((id) => !seen.has(id))) break
          if (Date.now() > deadline) throw new Error(`no writer rotated while the head listed ${phase}`)
          await new Promise((r) => setTimeout(r, 10))
        }
      }
      return landed
    },
  }
}

/**
 * A chain of 4 KEKs; three writers (two with both roots, one with only the old); changeRoot
 * once they are all writing; each writer then tries AFTER more encryptions; then the checks.
 */
async function changeBesideWriters(store: KeyStore, writer: (name: string, roots: Roots, before: Message[]) => WriterHandle): Promise<string> {
  const before = await chainWithKeks(store, 4, 'change')
  const writers = [writer('both-a', 'both', before), writer('both-b', 'both', before), writer('old-only', 'old', before)]
  try {
    return await changeAndCheck(store, before, writers)
  } finally {
    for (const w of writers) w.kill()
  }
}

async function changeAndCheck(store: KeyStore, before: Message[], writers: WriterHandle[]): Promise<string> {
  await Promise.all(writers.map((w) => w.ready))
  const phases: string[] = []
  const changer = await KeyChain.open({ rootKey: OLD(), store: waitingForRotations(store, phases), name: CHAIN })
  const started = Date.now()
  const report = await changer.changeRoot(NEW())
  const changeMs = Date.now() - started
  expect(phases).toEqual(['default:active,default-2:adding', 'default:active,default-2:active', 'default:removing,default-2:active'])
  await Promise.all(writers.map((w) => w.mark(AFTER)))
  const [a, b, old] = await Promise.all(writers.map((w) => w.stop()))

  // The writers holding both roots never failed; the one holding only the old root failed only
  // with ERR_ROOT_KEY, and did fail once it needed a KEK after the change.
  for (const r of [a!, b!]) expect([...r.encryptErrors, ...r.decryptErrors]).toEqual([])
  expect(old!.encryptErrors.length).toBeGreaterThan(0)
  for (const e of old!.encryptErrors) expect(e.code, e.message).toBe('ERR_ROOT_KEY')
  for (const e of old!.decryptErrors) expect(e).toMatch(/ERR_ROOT_KEY/)

  const made = [a!, b!, old!].flatMap((r) => r.made.map((m) => ({ data: fromBase64(m.data), text: m.text })))
  const all = [...before, ...made]
  const newOnly = await KeyChain.open({ rootKey: NEW(), store, name: CHAIN })
  for (const m of all) expect(text(await newOnly.decrypt(m.data))).toBe(m.text)
  const uses = new Map<number, number>()
  for (const m of all) uses.set(kekIdOf(m.data), (uses.get(kekIdOf(m.data)) ?? 0) + 1)
  for (const [id, n] of uses) expect(n, `KEK ${id}`).toBeLessThanOrEqual(MAX_WRAPS)

  const head = (await store.getHead(CHAIN))!.value
  expect(head.roots).toEqual([{ name: 'default-2', kind: 'aes', state: 'active' }])
  const groups = await checkedRecords(store, 'change')
  for (const id of [...uses.keys(), head.primary]) expect(groups.get(id), `KEK ${id}`).toEqual(['default-2'])
  for (const [id, names] of groups) expect(names, `KEK ${id}, which no message names`).toEqual(['default-2'])
  const refusals = [...new Set(old!.encryptErrors.map((e) => e.message))].join(' | ')
  return `${all.length} messages (${made.length} by the writers), ${uses.size} KEKs used, ${groups.size} in the store, change ${changeMs} ms (${report.wrapped} wraps, ${report.deleted} deleted); the old root alone: ${old!.made.length} made, ${old!.encryptErrors.length} refused (${refusals})`
}

describe('a rotation racing removeRoot, step by step', () => {
  it('a KEK made while the head still listed the removed root never becomes primary with its wrap, and its wrap under that root goes', async () => {
    const store = memoryStore()
    const admin = await KeyChain.open({ roots: { a: OLD(), b: NEW() }, store, name: CHAIN })
    await admin.encrypt('start')
    // The writer's wrap under 'a' reaches the store only after removeRoot('a') has finished:
    // after both of its sweeps.
    let release!: () => void
    const removed = new Promise<void>((resolve) => (release = resolve))
    let held = 0
    const late: KeyStore = {
      ...passThrough(store),
      async putKekIfAbsent(chain, record) {
        if (record.root === 'a' && held++ === 0) await removed
        return store.putKekIfAbsent(chain, record)
      },
    }
    const writer = await KeyChain.open({ roots: { a: OLD(), b: NEW() }, store: late, name: CHAIN, dekPoolSize: 0 })
    await writer.encrypt('proves both roots')
    const rotating = writer.rotate()
    for (let i = 0; i < 1000 && held === 0; i++) await new Promise((r) => setTimeout(r, 1))
    expect(held).toBe(1)
    await admin.removeRoot('a')
    release()
    const { id } = await rotating
    expect((await store.getHead(CHAIN))!.value).toMatchObject({ primary: id, roots: [{ name: 'b', kind: 'aes', state: 'active' }] })
    expect((await store.getKekWraps!(CHAIN, id)).map((r) => r.root)).toEqual(['b'])
    expect((await store.listKeks(CHAIN)).filter((r) => r.root === 'a')).toEqual([])
    const data = await writer.encrypt('after the removal')
    expect(kekIdOf(data)).toBe(id)
    await expectCode(KeyChain.open({ roots: { a: OLD() }, store, name: CHAIN }).then((c) => c.decrypt(data)), 'ERR_ROOT_KEY')
    expect(text(await (await KeyChain.open({ roots: { b: NEW() }, store, name: CHAIN })).decrypt(data))).toBe('after the removal')
  })
})

describe('changeRoot while three other writers encrypt and decrypt', () => {
  it('memory store: chains in this process', async () => {
    const store = memoryStore()
    const summary = await changeBesideWriters(store, (name, roots, before) => inProcessWriter(store, name, roots, before))
    console.log(`root change beside writers, memory store: ${summary}`)
  }, SLOW)

  it('file store: child processes', async () => {
    const spec: StoreSpec = { kind: 'file', path: join(dir, 'keys.json') }
    const summary = await changeBesideWriters(openStore(spec), (name, roots, before) => childWriter(spec, name, roots, before))
    console.log(`root change beside writers, file store: ${summary}`)
  }, SLOW)

  describe.skipIf(!haveEtcd)('etcd', () => {
    let etcd: EtcdCluster
    beforeAll(async () => {
      etcd = await startEtcd()
    }, 30_000)
    afterAll(() => etcd?.stop())

    it('etcd: child processes', async () => {
      const spec: StoreSpec = { kind: 'etcd', endpoint: etcd.urls[0]!, prefix: 'concurrent/' }
      const summary = await changeBesideWriters(openStore(spec), (name, roots, before) => childWriter(spec, name, roots, before))
      console.log(`root change beside writers, etcd: ${summary}`)
    }, SLOW)
  })
})
