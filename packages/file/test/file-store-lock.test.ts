/**
 * The file store's lock and temporary files, one behaviour at a time: takeover of a crashed
 * process's lock, a live holder kept (its heartbeat), a holder whose lock was taken over writing
 * nothing, option checks, and temporary files that a planted symlink cannot redirect.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, utimesSync, watch, writeFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { StoreError } from '@kms-proxy/core'
import { afterAll, expect, it } from 'vitest'
import { createExclusive } from '../src/_lock.ts'
import { fileStore } from '../src/index.ts'

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-file-lock-'))
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))

const record = (id: number) => ({ id, createdAt: id, rootKind: 'aes', wrapped: new Uint8Array([id & 0xff]) })
const head = { primary: 1, primaryCreatedAt: 1, leased: 0 }
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const EMPTY_STORE = JSON.stringify({ format: 'kms-proxy-file-store/v1', chains: {} })
const leftovers = (name: string) => readdirSync(dir).filter((f) => f.startsWith(`${name}.`))

async function waitFor(condition: () => boolean, what: string) {
  for (const started = Date.now(); !condition(); await sleep(10)) if (Date.now() - started > 10_000) throw new Error(`timed out waiting for ${what}`)
}

it('a crashed process\'s lock is taken over, at once when old, after staleLockMs when fresh, and so is a crashed breaker', async () => {
  const path = join(dir, 'crashed.json')
  writeFileSync(`${path}.lock`, '12345 crashed\n')
  const anHourAgo = new Date(Date.now() - 3_600_000)
  utimesSync(`${path}.lock`, anHourAgo, anHourAgo)
  expect(await fileStore(path).casHead('c', undefined, head)).toBe(true)
  // Fresh, as right after the crash: the wait (by default longer than the stale age) outlasts it.
  writeFileSync(`${path}.lock`, '12346 crashed\n')
  const started = Date.now()
  expect(await fileStore(path, { staleLockMs: 1_500 }).putKekIfAbsent('c', record(1))).toBe(true)
  expect(Date.now() - started).toBeGreaterThanOrEqual(1_400)
  expect(await fileStore(path).listKeks('c')).toHaveLength(1)
  // A process that crashed in the middle of a takeover left the breaker too: both are taken over.
  for (const left of [`${path}.lock`, `${path}.lock.break`]) {
    writeFileSync(left, 'crashed\n')
    utimesSync(left, anHourAgo, anHourAgo)
  }
  expect(await fileStore(path).putKekIfAbsent('c', record(2))).toBe(true)
  expect(await fileStore(path).listKeks('c')).toHaveLength(2)
  expect(leftovers('crashed.json')).toEqual([])
})

it('a live lock (its holder touches it) is not taken over: waiting ends in a retryable ERR_STORE', async () => {
  const path = join(dir, 'live.json')
  writeFileSync(`${path}.lock`, 'live holder\n')
  const touch = setInterval(() => {
    const now = new Date()
    utimesSync(`${path}.lock`, now, now)
  }, 100)
  try {
    const started = Date.now()
    const error = await fileStore(path, { staleLockMs: 1_500, lockTimeoutMs: 3_000 }).putKekIfAbsent('c', record(1)).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoreError)
    expect(error).toMatchObject({ code: 'ERR_STORE', retryable: true, message: expect.stringMatching(/timed out waiting/) })
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_900)
    expect(readFileSync(`${path}.lock`, 'utf8')).toBe('live holder\n')
  } finally {
    clearInterval(touch)
  }
  expect(existsSync(path)).toBe(false)
})

it('a holder slower than staleLockMs keeps its lock (it touches it); a waiter times out instead of taking over', async () => {
  // The store file is a FIFO: the holder's read blocks until the test writes, so it holds the
  // lock, alive, for as long as the test likes.
  const path = join(dir, 'slow.json')
  execFileSync('mkfifo', [path])
  const holder = fileStore(path, { staleLockMs: 1_000, lockTimeoutMs: 10_000 }).putKekIfAbsent('c', record(1))
  await waitFor(() => existsSync(`${path}.lock`), 'the holder to take the lock')
  const waiter = await fileStore(path, { staleLockMs: 1_000, lockTimeoutMs: 3_000 })
    .putKekIfAbsent('c', record(2))
    .catch((e: unknown) => e)
  expect(waiter).toMatchObject({ code: 'ERR_STORE', retryable: true, message: expect.stringMatching(/timed out waiting/) })
  await writeFile(path, EMPTY_STORE)
  expect(await holder).toBe(true)
  expect(statSync(path).isFile()).toBe(true)
  expect((await fileStore(path).listKeks('c')).map((r) => r.id)).toEqual([1])
  expect(leftovers('slow.json')).toEqual([])
})

it('a holder whose lock was taken over meanwhile writes nothing and fails (retryable), leaving the new lock alone', async () => {
  const path = join(dir, 'lost.json')
  execFileSync('mkfifo', [path])
  const holder = fileStore(path).casHead('c', undefined, head).catch((e: unknown) => e)
  await waitFor(() => existsSync(`${path}.lock`), 'the holder to take the lock')
  // What a takeover does to a holder that stalled past staleLockMs: its lock is gone, another's is there.
  unlinkSync(`${path}.lock`)
  writeFileSync(`${path}.lock`, 'the new holder\n')
  await writeFile(path, EMPTY_STORE)
  const error = await holder
  expect(error).toBeInstanceOf(StoreError)
  expect(error).toMatchObject({ code: 'ERR_STORE', retryable: true, message: expect.stringMatching(/lost .* nothing was written/) })
  expect(statSync(path).isFIFO()).toBe(true) // nothing was renamed over it
  expect(readFileSync(`${path}.lock`, 'utf8')).toBe('the new holder\n')
  unlinkSync(`${path}.lock`)
  expect(leftovers('lost.json')).toEqual([])
})

it('lock options: the wait must be longer than the stale age; numbers only', () => {
  const path = join(dir, 'options.json')
  expect(() => fileStore(path, { staleLockMs: 60_000, lockTimeoutMs: 100 })).toThrow(RangeError)
  expect(() => fileStore(path, { staleLockMs: 5_000, lockTimeoutMs: 5_000 })).toThrow(/longer than staleLockMs/)
  expect(() => fileStore(path, { lockTimeoutMs: 5_000 })).toThrow(RangeError) // default stale age 10 s
  expect(() => fileStore(path, { staleLockMs: -1 })).toThrow(RangeError)
  expect(() => fileStore(path, { staleLockMs: Number.NaN })).toThrow(RangeError)
  expect(() => fileStore(path, { staleLockMs: '5' as unknown as number })).toThrow(RangeError)
  expect(fileStore(path, { staleLockMs: 1_000 }).atomic).toBe(true)
})

it('temporary files are created exclusively under unpredictable names: a planted symlink is never followed', async () => {
  const path = join(dir, 'planted.json')
  const victim = join(dir, 'victim.txt')
  writeFileSync(victim, 'precious')
  // Every name the pid-and-clock scheme would use in the next 3 s points at the victim.
  const from = Date.now()
  for (let t = from; t < from + 3_000; t++) symlinkSync(victim, `${path}.${process.pid}.${t}.tmp`)
  const planted = new Set(leftovers('planted.json'))
  const seen = new Set<string>()
  const watcher = watch(dir, (_, name) => {
    if (name && name.startsWith('planted.json.') && name.endsWith('.tmp') && !planted.has(name)) seen.add(name)
  })
  try {
    const store = fileStore(path)
    for (let i = 1; i <= 10; i++) expect(await store.putKekIfAbsent('c', record(i))).toBe(true)
    await sleep(200) // let the last watch events arrive
  } finally {
    watcher.close()
  }
  expect(readFileSync(victim, 'utf8')).toBe('precious')
  expect(statSync(path).isFile()).toBe(true)
  expect((await fileStore(path).listKeks('c')).length).toBe(10)
  // Each write used new names with 128 random bits: a data file and a lock token per write.
  expect(seen.size).toBeGreaterThanOrEqual(10)
  for (const name of seen) expect(name).toMatch(/^planted\.json\.(lock\.(break\.)*)?[0-9a-f]{32}\.tmp$/)
  expect(new Set([...seen].map((n) => n.match(/[0-9a-f]{32}/)![0])).size).toBe(seen.size)
  // And a name that someone did guess is refused, not followed.
  const guessed = join(dir, 'guessed.tmp')
  symlinkSync(victim, guessed)
  await expect(createExclusive(guessed, 'store contents')).rejects.toMatchObject({ code: 'EEXIST' })
  expect(readFileSync(victim, 'utf8')).toBe('precious')
  expect(leftovers('planted.json').filter((n) => !planted.has(n))).toEqual([])
})
