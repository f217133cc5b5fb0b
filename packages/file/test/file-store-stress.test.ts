/**
 * The folder's fsync after each rename is checked from the outside, with strace, on each runtime.
 *
 * Many real processes on one file store, a lock left by a crashed process planted before every
 * round: no record a put confirmed may go missing, no head version may be won twice. The child
 * (fixtures/stress.ts) is bundled from the sources by esbuild, so Node, Bun and Deno all run the
 * code in the tree.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { fileStore } from '../src/index.ts'
import { bundleChild } from '../../testkit/test/bundle.ts'

const ROOT = join(import.meta.dirname, '..', '..', '..')
const PROCESSES = 6
const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-file-stress-'))
const script = join(dir, 'stress.mjs')
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))
beforeAll(async () => {
  await bundleChild({ file: join(import.meta.dirname, 'fixtures', 'stress.ts') }, script)
})

const runtimes: Record<string, { command: string; args: string[]; rounds: number }> = {
  node: { command: process.execPath, args: [], rounds: 12 },
  bun: { command: join(ROOT, 'node_modules', '.bin', 'bun'), args: [], rounds: 10 },
  deno: { command: join(ROOT, 'node_modules', 'deno', 'deno'), // the binary: npm's wrapper does not pass signals on
    args: ['run', '--quiet', '--allow-read', '--allow-write', '--allow-env'], rounds: 10 },
}

interface RoundResult {
  round: number
  confirmed: number[]
  wins: string[]
  errors: string[]
}

/** A child that answers one JSON line per round sent on its stdin. */
function startChild(runtime: string, path: string, chain: string, index: number) {
  const { command, args } = runtimes[runtime]!
  const child: ChildProcessWithoutNullStreams = spawn(command, [...args, script, path, chain, String(index)], {
    env: { ...process.env, DENO_DIR: join(dir, 'deno'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' },
  })
  let stderr = ''
  child.stderr.on('data', (d) => (stderr += d))
  const waiting: ((r: RoundResult) => void)[] = []
  const failed: ((e: Error) => void)[] = []
  createInterface({ input: child.stdout }).on('line', (line) => waiting.shift()?.(JSON.parse(line)))
  child.on('close', (code) => {
    for (const reject of failed.splice(0)) reject(new Error(`${runtime} child ${index} exited ${code}: ${stderr.slice(0, 1000)}`))
  })
  return {
    round(n: number): Promise<RoundResult> {
      return new Promise((resolve, reject) => {
        waiting.push(resolve)
        failed.push(reject)
        child.stdin.write(`${n}\n`)
      }).finally(() => failed.shift()) as Promise<RoundResult>
    },
    stop: () => new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : (child.once('close', () => resolve()), child.stdin.end()))),
  }
}

for (const [runtime, { rounds }] of Object.entries(runtimes)) {
  it(`${PROCESSES} ${runtime} processes, a crashed process's lock before each of ${rounds} rounds: no confirmed KEK record lost, no head version won twice`, async () => {
    const path = join(dir, `${runtime}.json`)
    const chain = 'stress'
    const children = Array.from({ length: PROCESSES }, (_, i) => startChild(runtime, path, chain, i))
    const results: RoundResult[] = []
    try {
      for (let n = 0; n < rounds; n++) {
        // What a process that crashed while holding the lock leaves: a lock file an hour old.
        writeFileSync(`${path}.lock`, '4242 crashed\n')
        const anHourAgo = new Date(Date.now() - 3_600_000)
        utimesSync(`${path}.lock`, anHourAgo, anHourAgo)
        results.push(...(await Promise.all(children.map((c) => c.round(n)))))
      }
    } finally {
      await Promise.all(children.map((c) => c.stop()))
    }
    const stored = new Set((await fileStore(path).listKeks(chain)).map((r) => r.id))
    const lostRounds = new Set<number>()
    let confirmed = 0
    let lost = 0
    for (const r of results) {
      for (const id of r.confirmed) {
        confirmed++
        if (!stored.has(id)) (lost++, lostRounds.add(r.round))
      }
    }
    const wins = results.flatMap((r) => r.wins)
    const doubleWins = wins.length - new Set(wins).size
    const head = await fileStore(path).getHead(chain)
    const errors = results.flatMap((r) => r.errors)
    console.log(
      `file store, ${PROCESSES} ${runtime} processes x ${rounds} rounds with a stale lock: ${confirmed} puts confirmed, ${lost} lost (in ${lostRounds.size} rounds), ${wins.length} swaps won, ${doubleWins} won twice, ${errors.length} calls threw${errors.length ? ` (first: ${errors[0]})` : ''}`,
    )
    expect(confirmed).toBeGreaterThan(0)
    expect(lost, `confirmed KEK records missing from the file (rounds ${[...lostRounds].join(', ')})`).toBe(0)
    expect(doubleWins, 'head versions won by two swaps').toBe(0)
    expect(Number(head?.version ?? 0), 'every won swap moved the version by one').toBe(wins.length)
    expect(errors).toEqual([])
  }, 60_000)
}

/**
 * The system calls of one run under `strace -ff -ttt` (a file per thread, so no call is split
 * across lines), merged in time order: the store file's renames, the fsyncs of descriptors
 * opened on its folder (following dup and F_DUPFD, which Deno uses), and the answer on stdout.
 */
function traceRenamesAndFolderSyncs(traceDir: string, path: string, folder: string): ('rename' | 'folder fsync' | 'answer')[] {
  const calls = readdirSync(traceDir)
    .flatMap((f) => readFileSync(join(traceDir, f), 'utf8').split('\n'))
    .map((line) => line.match(/^(\d+\.\d+) (\w+)\((.*)\)\s+= (-?\d+).* <(\d+\.\d+)>$/))
    .filter((m) => m !== null)
    .map((m) => {
      const [, start, call, args, result, took] = m as unknown as [string, string, string, string, string, string]
      // Threads overlap: order each call at the moment it acts. A new descriptor or a finished
      // rename exists when the call returns; close, fsync and write act on what exists at entry.
      const returns = /^(open|dup|fcntl|rename)/.test(call)
      return { at: Number(start) + (returns ? Number(took) : 0), call, args, result: Number(result) }
    })
    .sort((a, b) => a.at - b.at)
  const fds = new Map<number, string>([[1, '<stdout>']])
  const events: ('rename' | 'folder fsync' | 'answer')[] = []
  for (const { call, args, result } of calls) {
    const strings = [...args.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1])
    const first = Number(args.split(',')[0])
    if ((call === 'openat' || call === 'open') && result >= 0) fds.set(result, strings[0]!)
    else if (call === 'close') fds.delete(first)
    else if ((call === 'dup' || call === 'dup2' || call === 'dup3' || (call === 'fcntl' && /F_DUPFD/.test(args))) && result >= 0) fds.set(result, fds.get(first) ?? '')
    else if (call.startsWith('rename') && result === 0 && strings[1] === path) events.push('rename')
    else if ((call === 'fsync' || call === 'fdatasync') && result === 0 && fds.get(first) === folder) events.push('folder fsync')
    else if (/^(p?write\w*|send\w*)$/.test(call) && fds.get(first) === '<stdout>' && args.includes('{\\"round\\"')) events.push('answer')
  }
  return events
}

const TRACED = 'open,openat,close,dup,dup2,dup3,fcntl,rename,renameat,renameat2,fsync,fdatasync,write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg'
// The runtimes' own executables, not the node_modules/.bin shims: the shims fork helpers (and
// Deno's runs the binary under Node), whose descriptors would mix into the trace.
const binaries: Record<string, string> = {
  node: process.execPath,
  bun: join(ROOT, 'node_modules', 'bun', 'bin', 'bun.exe'),
  deno: join(ROOT, 'node_modules', 'deno', 'deno'),
}

for (const runtime of Object.keys(runtimes)) {
  it(`${runtime}: the folder is fsynced after every rename of the store file (seen by strace)`, () => {
    const path = join(dir, `fsync-${runtime}.json`)
    const traceDir = join(dir, `trace-${runtime}`)
    mkdirSync(traceDir)
    const { args } = runtimes[runtime]!
    const run = spawnSync(
      'strace',
      ['-f', '-ff', '-ttt', '-T', '-e', `trace=${TRACED}`, '-o', join(traceDir, 't'), binaries[runtime]!, ...args, script, path, 'c', '0'],
      { input: '0\n', encoding: 'utf8', timeout: 30_000, env: { ...process.env, DENO_DIR: join(dir, 'deno'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' } },
    )
    expect(run.error, 'strace must be installed (Debian: apt-get install strace) and allowed to trace').toBeUndefined()
    expect(run.status, run.stderr).toBe(0)
    const result = JSON.parse(run.stdout) as RoundResult
    expect(result.errors).toEqual([])
    const events = traceRenamesAndFolderSyncs(traceDir, path, dir)
    const renames = events.filter((e) => e === 'rename').length
    // Each confirmed put and each won swap renamed once.
    expect(renames).toBe(result.confirmed.length + result.wins.length)
    expect(renames).toBeGreaterThan(0)
    // rename, then the folder's fsync, before the next rename and before the answer.
    expect(events.join(' ')).toBe([...Array(renames).fill('rename folder fsync'), 'answer'].join(' '))
  }, 60_000)
}
