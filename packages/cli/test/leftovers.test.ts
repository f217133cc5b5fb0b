/**
 * What a killed command leaves behind, and what rewrap keeps of a file: real child processes,
 * killed with SIGKILL (no handler runs), and files owned by another user (the tests run as root).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutWeakKdfWarning, type Result } from './helpers.js'

const PASSPHRASE = 'leftovers passphrase'
const NOBODY = 65_534
let bundle: string
let work: ReturnType<typeof tempDir>
const children: ChildProcess[] = []

const ENV = { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV }

async function kp(cwd: string, args: string[], options: { input?: Uint8Array | string; uid?: number } = {}): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd, env: { ...ENV, KMS_PROXY_CONFIG: join(cwd, 'kms-proxy.json') }, ...options })
  return { ...r, stderr: withoutWeakKdfWarning(r.stderr) }
}

/** A child that writes an output file and waits for more input (its stdin stays open). */
function writer(cwd: string, args: string[]): ChildProcess {
  const child = spawn(process.execPath, [bundle, ...args], { cwd, env: { PATH: process.env.PATH, ...ENV }, stdio: ['pipe', 'ignore', 'ignore'] })
  child.stdin!.on('error', () => {}) // input still buffered when the child is killed: EPIPE, expected
  children.push(child)
  return child
}

const temps = (dir: string, prefix: string) => readdirSync(dir).filter((f) => f.startsWith(prefix) && f.endsWith('.kms-proxy-tmp'))

async function until(what: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !what(); i++) await new Promise((r) => setTimeout(r, 25))
  expect(what()).toBe(true)
}

async function initialized(name: string): Promise<string> {
  const dir = join(work.dir, name)
  mkdirSync(dir)
  const r = await kp(dir, ['init', ...FAST_KDF])
  expect(r.code, r.stderr).toBe(EXIT.OK)
  return dir
}

beforeAll(async () => {
  work = tempDir('leftovers')
  bundle = await bundleCli(work.dir)
})
afterAll(() => {
  for (const child of children) if (child.exitCode === null) child.kill('SIGKILL')
  work.cleanup()
})

describe('leftovers of a killed command', () => {
  it('SIGKILL during a large decrypt leaves plaintext in a temporary file: status lists it, clean removes it and spares a running writer\'s', async () => {
    const dir = await initialized('killed')
    const plain = randomBytes(8 * 1024 * 1024)
    const enc = await kp(dir, ['encrypt', '-o', 'big.kp'], { input: plain })
    expect(enc.code, enc.stderr).toBe(EXIT.OK)
    const encrypted = readFileSync(join(dir, 'big.kp'))

    const killed = writer(dir, ['decrypt', '-o', 'big.out'])
    const exited = new Promise((resolve) => killed.on('close', resolve))
    killed.stdin!.write(encrypted.subarray(0, 4 * 1024 * 1024)) // half: the rest never comes
    await until(() => temps(dir, '.big.out.').some((f) => statSync(join(dir, f)).size >= 1024 * 1024))
    killed.kill('SIGKILL')
    await exited
    const [leftover] = temps(dir, '.big.out.')
    expect(leftover).toMatch(new RegExp(`^\\.big\\.out\\.${killed.pid}-[0-9a-f]{12}\\.kms-proxy-tmp$`))
    const written = readFileSync(join(dir, leftover!))
    expect(written.length).toBeGreaterThan(0)
    expect(written.equals(plain.subarray(0, written.length))).toBe(true) // plaintext, as the review said
    expect(statSync(join(dir, leftover!)).mode & 0o777).toBe(0o600)

    // A command still writing (its own temporary file) must not lose it to clean.
    const live = writer(dir, ['encrypt', '-o', 'live.kp'])
    live.stdin!.write(randomBytes(100_000))
    await until(() => temps(dir, '.live.kp.').length === 1)

    const status = await kp(dir, ['status'])
    expect(status.code, status.stderr).toBe(EXIT.OK)
    const text = status.stdout.toString()
    expect(text).toMatch(new RegExp(`^leftovers {4}1 temporary file left by a killed command \\(may hold plaintext\\); remove with: kms-proxy clean ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'))
    expect(text).toContain(`  ${join(dir, leftover!)}  ${written.length.toLocaleString('en-US')} bytes`)
    expect(text).not.toContain('.live.kp.')
    const json = JSON.parse((await kp(dir, ['status', '--json'])).stdout.toString())
    expect(json.leftovers).toEqual([{ path: join(dir, leftover!), bytes: written.length, pid: killed.pid, modifiedAt: expect.any(Number) }])

    const rewrap = await kp(dir, ['rewrap', dir, '--json'])
    expect(rewrap.code, rewrap.stderr).toBe(EXIT.OK)
    expect(rewrap.stderr).toBe(`kms-proxy rewrap: 1 leftover temporary file under ${dir} from a killed command: kms-proxy clean ${dir}\n`)
    const clean = await kp(dir, ['clean', dir])
    expect(clean.code, clean.stderr).toBe(EXIT.OK)
    expect(clean.stdout.toString()).toBe(`removed ${join(dir, leftover!)}\nremoved 1 leftover temporary file; 1 in use by a running command (left alone)\n`)
    expect(temps(dir, '.big.out.')).toEqual([])
    expect(temps(dir, '.live.kp.')).toHaveLength(1)
    expect(JSON.parse((await kp(dir, ['status', '--json'])).stdout.toString()).leftovers).toEqual([])

    const liveExit = new Promise((resolve) => live.on('close', resolve))
    live.kill('SIGTERM')
    expect(await liveExit).toBe(143)
    expect(temps(dir, '.live.kp.')).toEqual([])
    expect(existsSync(join(dir, 'big.out'))).toBe(false)
  })
})

describe('rewrap keeps each file as it was', () => {
  it('run by root, a file owned by nobody keeps its owner, group and mode', async () => {
    const dir = await initialized('owner')
    const files = join(dir, 'files')
    mkdirSync(files)
    const plain = { 'stream.kp': randomBytes(100_000), 'message.kp': Buffer.from('one message') }
    for (const [name, bytes] of Object.entries(plain)) {
      const r = await kp(dir, ['encrypt', '-o', join(files, name), ...(name === 'message.kp' ? ['--message'] : [])], { input: bytes })
      expect(r.code, r.stderr).toBe(EXIT.OK)
    }
    chownSync(join(files, 'stream.kp'), NOBODY, NOBODY)
    chmodSync(join(files, 'stream.kp'), 0o640)
    chownSync(join(files, 'message.kp'), NOBODY, 0)
    chmodSync(join(files, 'message.kp'), 0o604)
    const { primary } = JSON.parse((await kp(dir, ['rotate', '--json'])).stdout.toString())
    const r = await kp(dir, ['rewrap', 'files', '--json'])
    expect(r.code, r.stderr).toBe(EXIT.OK)
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ rewrapped: 2, failed: 0 })
    for (const [name, [uid, gid, mode]] of Object.entries({ 'stream.kp': [NOBODY, NOBODY, 0o640], 'message.kp': [NOBODY, 0, 0o604] })) {
      const s = statSync(join(files, name))
      expect([s.uid, s.gid, s.mode & 0o777], name).toEqual([uid, gid, mode])
      expect(readFileSync(join(files, name)).readUInt32BE(1), name).toBe(primary)
      const back = await kp(dir, ['decrypt', '-i', join(files, name)])
      expect(back.stdout.equals(plain[name as keyof typeof plain]), name).toBe(true)
    }
  })

  it('run by a user who cannot give the new copy the file\'s owner (nobody, a file of root\'s), the file is left as it is: exit 9', async () => {
    const dir = await initialized('not-permitted')
    const files = join(dir, 'files')
    mkdirSync(files)
    const r0 = await kp(dir, ['encrypt', '--message', '-o', join(files, 'root.kp')], { input: 'root owns this' })
    expect(r0.code, r0.stderr).toBe(EXIT.OK)
    chmodSync(join(files, 'root.kp'), 0o666)
    await kp(dir, ['rotate'])
    const before = readFileSync(join(files, 'root.kp'))
    // nobody runs the command: its config, store and folders are nobody's; the file stays root's.
    for (const path of [dir, join(dir, 'kms-proxy.json'), join(dir, 'kms-proxy-keys.json'), files]) chownSync(path, NOBODY, NOBODY)
    chmodSync(work.dir, 0o755)
    chmodSync(bundle, 0o644)
    const r = await kp(dir, ['rewrap', 'files', '--json'], { uid: NOBODY })
    expect(r.code, r.stderr).toBe(EXIT.IO)
    expect(r.stderr).toBe(`kms-proxy rewrap: ${join('files', 'root.kp')}: owned by uid 0 gid 0, which this user (uid ${NOBODY}) cannot give to the new copy; left as it is\n`)
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ rewrapped: 0, failed: 1 })
    expect(readFileSync(join(files, 'root.kp')).equals(before)).toBe(true)
    expect(statSync(join(files, 'root.kp')).uid).toBe(0)
    expect(readdirSync(files).filter((f) => f.endsWith('.kms-proxy-tmp'))).toEqual([])
  })
})

describe('an output that survives a power cut', () => {
  it('the folder is fsynced after the output file is linked or renamed into place (seen by strace)', async () => {
    const dir = await initialized('durable')
    writeFileSync(join(dir, 'plain.txt'), 'durable data')
    const traceDir = join(dir, 'trace')
    mkdirSync(traceDir)
    const r = await spawnCollect(
      'strace',
      ['-f', '-ff', '-ttt', '-e', 'trace=openat,close,rename,renameat,renameat2,link,linkat,fsync,fdatasync', '-o', join(traceDir, 't'), process.execPath, bundle, 'encrypt', '-i', 'plain.txt', '-o', 'out.kp'],
      { cwd: dir, env: { ...ENV, KMS_PROXY_CONFIG: join(dir, 'kms-proxy.json') } },
    )
    expect(r.code, `strace must be installed (Debian: apt-get install strace): ${r.stderr}`).toBe(EXIT.OK)
    // Merge the threads' traces in time order; follow which descriptor is the folder.
    const calls = readdirSync(traceDir)
      .flatMap((f) => readFileSync(join(traceDir, f), 'utf8').split('\n'))
      .map((line) => line.match(/^(\d+\.\d+) (\w+)\((.*)\)\s+= (-?\d+)/))
      .filter((m) => m !== null)
      .map((m) => ({ at: Number(m![1]), call: m![2]!, args: m![3]!, result: Number(m![4]) }))
      .sort((a, b) => a.at - b.at)
    const fds = new Map<number, string>()
    const events: string[] = []
    for (const { call, args, result } of calls) {
      const path = args.match(/"((?:[^"\\]|\\.)*)"/g)?.map((s) => s.slice(1, -1))
      if (call === 'openat' && result >= 0) fds.set(result, path?.[0] ?? '')
      else if (call === 'close') fds.delete(Number(args.split(',')[0]))
      // Put in place by a hard link (no -o file there: nothing is replaced), or a rename (--force).
      else if ((call.startsWith('rename') || call.startsWith('link')) && result === 0 && path?.[1]?.endsWith('out.kp')) events.push('rename')
      else if ((call === 'fsync' || call === 'fdatasync') && result === 0 && [dir, '.'].includes(fds.get(Number(args)) ?? '')) events.push('folder fsync')
    }
    // (The key file's store fsyncs the same folder before, when the encryption leases uses.)
    expect(events.filter((e) => e === 'rename')).toHaveLength(1)
    expect(events.slice(events.indexOf('rename'))).toEqual(['rename', 'folder fsync'])
  })
})
