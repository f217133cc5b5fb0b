/**
 * A reader that goes away (`kms-proxy status | head -1`, a closed log collector): every command
 * ends in exit 9 with one line on stderr, never a stack trace, and leaves no temporary file.
 * Real pipes: the child's stdout (or stderr) is a pipe whose reading end this process closes.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutNotes } from './helpers.js'

const PASSPHRASE = 'closed pipes passphrase'
let bundle: string
let work: ReturnType<typeof tempDir>
let dir: string
const env = () => ({ PATH: process.env.PATH, KMS_PROXY_PASSPHRASE: PASSPHRASE, KMS_PROXY_CONFIG: join(dir, 'kms-proxy.json'), ...WEAK_KDF_ENV })

beforeAll(async () => {
  work = tempDir('pipes')
  bundle = await bundleCli(work.dir)
  dir = join(work.dir, 'chain')
  mkdirSync(join(dir, 'files'), { recursive: true })
  const init = await spawnCollect(process.execPath, [bundle, 'init', ...FAST_KDF], { cwd: dir, env: env() })
  expect(init.code, init.stderr).toBe(EXIT.OK)
  writeFileSync(join(dir, 'large.bin'), randomBytes(8 * 1024 * 1024))
  const enc = await spawnCollect(process.execPath, [bundle, 'encrypt', '-q', '-i', 'large.bin', '-o', 'large.kp'], { cwd: dir, env: env() })
  expect(enc.code, enc.stderr).toBe(EXIT.OK)
  const small = await spawnCollect(process.execPath, [bundle, 'encrypt', '--message', '-o', 'files/a.kp'], { cwd: dir, env: env(), input: 'a' })
  expect(small.code, small.stderr).toBe(EXIT.OK)
})
afterAll(() => work.cleanup())

/**
 * Runs the CLI with `closed` ('stdout' or 'stderr') a pipe whose reader goes away: at once
 * (before the child can write anything), or after the first bytes arrived.
 */
function withClosed(closed: 'stdout' | 'stderr', args: string[], when: 'at-once' | 'after-first-bytes', input?: Uint8Array): Promise<{ code: number | null; signal: string | null; other: string }> {
  const child = spawn(process.execPath, [bundle, ...args], { cwd: dir, env: env(), stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] })
  const other = closed === 'stdout' ? child.stderr! : child.stdout!
  const target = closed === 'stdout' ? child.stdout! : child.stderr!
  let text = ''
  other.on('data', (c: Buffer) => (text += c.toString('latin1')))
  if (when === 'at-once') target.destroy()
  else target.once('data', () => target.destroy())
  if (input) {
    child.stdin!.on('error', () => {})
    child.stdin!.end(input)
  }
  return new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => resolve({ code, signal, other: text }))
  })
}

const temps = () => readdirSync(dir).filter((f) => f.endsWith('.kms-proxy-tmp'))

describe('a closed stdout', () => {
  const line = (name: string) => `kms-proxy${name ? ` ${name}` : ''}: the output was closed before the end (broken pipe)\n`
  const commands: Array<[string, string[]]> = [
    ['', ['--help']],
    ['status', ['status']],
    ['status', ['status', '--json']],
    ['rotate', ['rotate']],
    ['rewrap', ['rewrap', 'files']],
    ['clean', ['clean', 'files']],
    ['decrypt', ['decrypt', '-i', 'large.kp']],
  ]
  it.each(commands)('%s %j: exit 9 and one line when the reader is gone before the first byte', async (name, args) => {
    const r = await withClosed('stdout', args, 'at-once')
    expect(r.signal, r.other).toBe(null)
    expect(r.code, r.other).toBe(EXIT.IO)
    expect(withoutNotes(r.other)).toBe(line(name))
  })

  it('decrypt and encrypt of 8 MiB to stdout: the reader leaves after the first bytes: exit 9, one line, no temporary file', async () => {
    for (const [name, args, input] of [
      ['decrypt', ['decrypt', '-i', 'large.kp'], undefined],
      ['encrypt', ['encrypt'], randomBytes(8 * 1024 * 1024)],
    ] as const) {
      const r = await withClosed('stdout', [...args], 'after-first-bytes', input)
      expect(r.code, r.other).toBe(EXIT.IO)
      expect(withoutNotes(r.other), name).toBe(line(name))
    }
    expect(temps()).toEqual([])
  })

  it('`kms-proxy status | head -1` in a shell: one line out, and the command ends in 0 (head read all in time) or 9 with one line, never a stack', async () => {
    // Which comes first, the last write or head's exit, is up to the scheduler: the cases above
    // close the pipe deterministically; this is the command line of the report, as typed.
    const r = await spawnCollect('bash', ['-c', '"$0" "$1" status | head -1; echo "exit ${PIPESTATUS[0]}" >&2', process.execPath, bundle], { cwd: dir, env: env() })
    expect(r.stdout.toString()).toMatch(/^config {7}\S+kms-proxy\.json\n$/)
    expect(['exit 0\n', `${line('status')}exit 9\n`]).toContain(withoutNotes(r.stderr))
  })
})

describe('a stdout that cannot be written', () => {
  it('stdout on a full device (/dev/full): exit 9 and one line that says so', async () => {
    const r = await spawnCollect('bash', ['-c', 'exec "$0" "$1" status > /dev/full', process.execPath, bundle], { cwd: dir, env: env() })
    expect(r.code).toBe(EXIT.IO)
    expect(withoutNotes(r.stderr)).toBe('kms-proxy status: the output could not be written (ENOSPC)\n')
  })
})

describe('a closed stderr', () => {
  it('a message to a stderr nobody reads: exit 9 (the stack trace of the write failure is nowhere)', async () => {
    const failing = await withClosed('stderr', ['status', '-c', 'no-such-config.json'], 'at-once')
    expect(failing.code).toBe(EXIT.IO)
    expect(failing.other).toBe('')
    // The tests' weak-KDF warning is the first line any command writes: with nobody reading it,
    // decrypt stops there, before it writes anything.
    const quiet = await withClosed('stderr', ['decrypt', '-i', 'large.kp', '-o', 'large.out'], 'at-once')
    expect(quiet.code).toBe(EXIT.IO)
    expect(readdirSync(dir)).not.toContain('large.out')
    expect(temps()).toEqual([])
  })
})
