/**
 * A root change killed at every step (DESIGN.md invariant 8): changeRoot, addRoot and
 * removeRoot on a chain of several KEKs, stopped right after its 1st store write, then after its
 * 2nd, and so on until a run finishes with no write left to stop after. After each stop: every
 * KEK keeps a record that unwraps under the old root or the new one (each record checked with
 * the root keys themselves) and a chain holding both roots decrypts every message; then the
 * change, run again (runAgain: the same call for addRoot and removeRoot; changeRoot from a
 * process holding both roots), finishes: the head lists the roots it should, every KEK has
 * exactly the records it should, and a chain holding only the new root decrypts everything.
 *
 * File store and etcd: the change runs in a child process that kills itself with SIGKILL right
 * after the n-th write returns (no cleanup, nothing flushed), and one more child runs it again
 * on every copy a killed child left. Memory store: its state dies with its process, so there the change runs in
 * this process on a store wrapper that throws (an Error, not a KmsProxyError) right after the
 * n-th write lands, and the same store object is then handed to a fresh chain.
 */
import { spawn } from 'node:child_process'
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { memoryStore } from '../src/index.ts'
import { b64, gateway, haveEtcd, startEtcd, type EtcdCluster } from '../../etcd/test/etcd-process.ts'
import { bundleChild } from '../../testkit/test/bundle.ts'
import { chainWithKeks, expectFinished, expectReadable, type Message } from './root-change-helpers.ts'
import { OPS, countingWrites, openFor, openStore, runAgain, type Op, type StoreSpec } from './root-change-shared.ts'

/** More stops than any of these changes has writes: a loop that never finishes fails instead. */
const MAX_STOPS = 80
const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-root-crash-'))
const script = join(dir, 'child.mjs')
beforeAll(() => bundleChild({ file: join(import.meta.dirname, 'root-change-crash.child.mts') }, script), 30_000)
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))

interface Outcome {
  code: number | null
  signal: NodeJS.Signals | null
  events: { event: string; index?: number; at?: number | 'crash'; writes?: number; code?: string; message?: string }[]
  stderr: string
}

/** One child process, given one job; resolves when it exits (killed by itself or not). */
function runChild(job: object): Promise<Outcome> {
  const child = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'pipe'] })
  const events: Outcome['events'] = []
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  createInterface({ input: child.stdout }).on('line', (line) => events.push(JSON.parse(line)))
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  child.stdin.end(`${JSON.stringify(job)}\n`)
  return new Promise<Outcome>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, events, stderr }))).finally(() => clearTimeout(timer))
}

const describeFailure = (o: Outcome) => `${JSON.stringify(o.events.filter((e) => e.event === 'error'))} ${o.stderr.slice(0, 500)}`

interface Template {
  messages: Message[]
  /** A new copy of the chain as it was before the change. */
  fresh(): Promise<StoreSpec>
}

/** Child processes run at once: the machine's cores are shared, and each child mostly waits for its store. */
const LANES = 4

/**
 * Runs `op` once to the end in a child to count its writes (W); then, on W fresh copies of the
 * template, W children killed after write 1, 2, … W (a few at a time); then one new child runs
 * the same change again on every killed copy, one chain each. Returns W.
 */
async function killAtEveryWrite(op: Op, template: Template): Promise<number> {
  const whole = await template.fresh()
  const probe = await runChild({ crash: { store: whole, op, crashAt: 0 } })
  expect(probe.code, describeFailure(probe)).toBe(0)
  const writes = probe.events.find((e) => e.event === 'completed')!.writes!
  await expectFinished(openStore(whole), op, template.messages)
  expect(writes).toBeLessThanOrEqual(MAX_STOPS)
  const killed: StoreSpec[] = []
  let next = 1
  await Promise.all(
    Array.from({ length: LANES }, async () => {
      for (let n = next++; n <= writes; n = next++) {
        const store = await template.fresh()
        const outcome = await runChild({ crash: { store, op, crashAt: n } })
        expect(outcome.signal, `stop ${n}: ${describeFailure(outcome)}`).toBe('SIGKILL')
        expect(outcome.events).toEqual([])
        await expectReadable(openStore(store), op, template.messages)
        killed[n - 1] = store
      }
    }),
  )
  const again = await runChild({ resume: killed.map((store) => ({ store, op })) })
  // `at` in a failure is the copy's index: the stop after write at + 1.
  expect(again.code, describeFailure(again)).toBe(0)
  expect(again.events.map((e) => e.index)).toEqual(killed.map((_, i) => i))
  for (const store of killed) await expectFinished(openStore(store), op, template.messages)
  return writes
}

/** The same in this process: the store wrapper throws right after the n-th write lands. */
async function failAtEveryWrite(op: Op, keks: number): Promise<number> {
  for (let n = 1; n <= MAX_STOPS; n++) {
    const store = memoryStore()
    const messages = await chainWithKeks(store, keks, op)
    let writes = 0
    const stopping = countingWrites(store, (i) => {
      writes = i
      if (i === n) throw new Error('stopped here')
    })
    const stopped = await OPS[op].run(await openFor(op, stopping)).then(
      () => undefined,
      (error: unknown) => error,
    )
    if (stopped === undefined) {
      expect(writes).toBe(n - 1)
      await expectFinished(store, op, messages)
      return writes
    }
    expect(stopped, `stop ${n}`).toMatchObject({ code: 'ERR_STORE' })
    await expectReadable(store, op, messages)
    await runAgain(op, store)
    await expectFinished(store, op, messages)
  }
  return expect.fail(`${op} still had a write left after ${MAX_STOPS} stops`)
}

/**
 * KEKs per chain: 12 where a stop costs no process; fewer where each stop is a Node start-up (a
 * change of K KEKs stops 2K + 4 times, an add or a remove K + 2 times).
 */
const KEKS: Record<'memory' | 'file' | 'etcd', Record<Op, number>> = {
  memory: { change: 12, add: 12, remove: 12 },
  file: { change: 8, add: 3, remove: 3 },
  etcd: { change: 4, add: 2, remove: 2 },
}

/** At least one write per KEK (a wrap or a deletion; two for changeRoot) and the head's edits. */
function expectWrites(op: Op, keks: number, writes: number): void {
  expect(writes).toBeGreaterThanOrEqual((op === 'change' ? 2 : 1) * keks + 2)
}

const ops: Op[] = ['change', 'add', 'remove']
/**
 * A child costs about 0.2 s of CPU (Node's start-up, mostly): a few seconds a test on an idle
 * machine, but a machine shared with other test runs can stretch that tenfold.
 */
const SLOW = 240_000
const seconds = (since: number) => ((Date.now() - since) / 1000).toFixed(1)

describe('memory store: the change stopped after every write (in this process), then run again', () => {
  for (const op of ops) {
    const keks = KEKS.memory[op]
    it(`${op}: ${keks} KEKs`, async () => {
      const started = Date.now()
      const writes = await failAtEveryWrite(op, keks)
      expectWrites(op, keks, writes)
      console.log(`root change crash, memory store, ${op}, ${keks} KEKs: ${writes} stops, ${seconds(started)} s`)
    })
  }
})

describe('file store: a child process killed with SIGKILL after every write, then a new child runs the change again', () => {
  for (const op of ops) {
    const keks = KEKS.file[op]
    it(`${op}: ${keks} KEKs`, async () => {
      const started = Date.now()
      const template = join(dir, `${op}-template.json`)
      const messages = await chainWithKeks(openStore({ kind: 'file', path: template }), keks, op)
      let copies = 0
      const writes = await killAtEveryWrite(op, {
        messages,
        async fresh() {
          const path = join(dir, `${op}-${++copies}.json`)
          copyFileSync(template, path)
          return { kind: 'file', path }
        },
      })
      expectWrites(op, keks, writes)
      console.log(`root change crash, file store, ${op}, ${keks} KEKs: ${writes} kills, ${seconds(started)} s`)
    }, SLOW)
  }
})

describe.skipIf(!haveEtcd)('etcd: a child process killed with SIGKILL after every write, then a new child runs the change again', () => {
  let etcd: EtcdCluster
  let url: string
  beforeAll(async () => {
    etcd = await startEtcd()
    url = etcd.urls[0]!
  }, 30_000)
  afterAll(() => etcd?.stop())

  /** Copies every key under `from` to the same key under `to`, in one transaction. */
  async function copyPrefix(from: string, to: string): Promise<void> {
    const end = from.slice(0, -1) + String.fromCharCode(from.charCodeAt(from.length - 1) + 1)
    const { kvs } = await gateway(url, '/v3/kv/range', { key: b64(from), range_end: b64(end) })
    const puts = (kvs as { key: string; value: string }[]).map((kv) => ({
      request_put: { key: b64(to + Buffer.from(kv.key, 'base64').toString().slice(from.length)), value: kv.value },
    }))
    const answer = await gateway(url, '/v3/kv/txn', { success: puts })
    expect(answer.succeeded).toBe(true)
  }

  for (const op of ops) {
    const keks = KEKS.etcd[op]
    it(`${op}: ${keks} KEKs`, async () => {
      const started = Date.now()
      const store = (prefix: string): StoreSpec => ({ kind: 'etcd', endpoint: url, prefix })
      const messages = await chainWithKeks(openStore(store(`${op}-template/`)), keks, op)
      let copies = 0
      const writes = await killAtEveryWrite(op, {
        messages,
        async fresh() {
          const prefix = `${op}-${++copies}/`
          await copyPrefix(`${op}-template/`, prefix)
          return store(prefix)
        },
      })
      expectWrites(op, keks, writes)
      console.log(`root change crash, etcd, ${op}, ${keks} KEKs: ${writes} kills, ${seconds(started)} s`)
    }, SLOW)
  }
})
