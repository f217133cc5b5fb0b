/**
 * The built package (bin/kms-proxy.js over dist/) under Node, Bun and Deno, on one chain: what
 * one runtime encrypts another decrypts, and the exit codes are the same everywhere.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BIN, BUN, DENO, ROOT, EXIT, FAST_KDF, WEAK_KDF_ENV, assertBuilt, spawnCollect, tempDir, withoutNotes, type Result } from './helpers.js'

const PASSPHRASE = 'one chain, three runtimes'
let work: ReturnType<typeof tempDir>
let dir: string

const RUNTIMES = {
  node: [process.execPath, BIN],
  // Bun applies the nearest tsconfig's "paths" even to .js files; this repository's root tsconfig
  // maps @kms-proxy/* to the sources (for type checking), which would load core twice (from src
  // and from dist). An installed package has no such tsconfig; the override stands in for that.
  bun: [BUN, `--tsconfig-override=${join(ROOT, 'tsconfig.base.json')}`, BIN],
  deno: [DENO, 'run', '-A', BIN],
} as const
type Runtime = keyof typeof RUNTIMES

async function kp(runtime: Runtime, args: string[], options: { env?: Record<string, string | undefined>; input?: Uint8Array | string } = {}): Promise<Result> {
  const [command, ...pre] = RUNTIMES[runtime]
  const r = await spawnCollect(command, [...pre, ...args], {
    cwd: dir,
    env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, DENO_DIR: join(work.dir, 'deno-cache'), DENO_NO_UPDATE_CHECK: '1', ...options.env },
    input: options.input,
  })
  return { ...r, stderr: withoutNotes(r.stderr) }
}

const data = randomBytes(700_000)

beforeAll(async () => {
  assertBuilt()
  work = tempDir('runtimes')
  dir = join(work.dir, 'chain')
  mkdirSync(dir)
  writeFileSync(join(dir, 'data.bin'), data)
  const init = await kp('node', ['init', ...FAST_KDF])
  expect(init.stderr).toBe('')
  expect(init.code).toBe(EXIT.OK)
})
afterAll(() => work?.cleanup())

describe('the built CLI on Node, Bun and Deno', () => {
  it('files: each runtime decrypts what each other runtime encrypted', async () => {
    const names = Object.keys(RUNTIMES) as Runtime[]
    const encrypted = await Promise.all(names.map((r) => kp(r, ['encrypt', '-i', 'data.bin', '-o', `by-${r}.kp`, '--aad', 'x'])))
    for (const [i, r] of names.entries()) expect(encrypted[i]!.code, `${r}: ${encrypted[i]!.stderr}`).toBe(EXIT.OK)
    const pairs = names.flatMap((from) => names.filter((to) => to !== from).map((to) => [from, to] as const))
    const results = await Promise.all(pairs.map(([from, to]) => kp(to, ['decrypt', '-i', `by-${from}.kp`, '-o', `${from}-to-${to}.bin`, '--aad', 'x'])))
    for (const [i, [from, to]] of pairs.entries()) {
      expect(results[i]!.code, `${from} -> ${to}: ${results[i]!.stderr}`).toBe(EXIT.OK)
      expect(readFileSync(join(dir, `${from}-to-${to}.bin`)).equals(data), `${from} -> ${to}`).toBe(true)
    }
  })

  it('pipes: Bun encrypts stdin to stdout, Deno decrypts it, and back', async () => {
    const bun = await kp('bun', ['encrypt'], { input: data })
    expect(bun.code, bun.stderr).toBe(EXIT.OK)
    const deno = await kp('deno', ['decrypt'], { input: bun.stdout })
    expect(deno.code, deno.stderr).toBe(EXIT.OK)
    expect(deno.stdout.equals(data)).toBe(true)
    const denoEnc = await kp('deno', ['encrypt', '--message'], { input: 'from deno' })
    const bunDec = await kp('bun', ['decrypt'], { input: denoEnc.stdout })
    expect(bunDec.stdout.toString()).toBe('from deno')
  })

  it('the same exit codes and messages: wrong passphrase 4, tampered 5, missing or untrusted config 3', async () => {
    const good = readFileSync(join(dir, 'by-node.kp'))
    writeFileSync(join(dir, 'tampered.kp'), Uint8Array.from(good, (b, i) => (i === 100_000 ? b ^ 0x40 : b)))
    writeFileSync(join(dir, 'loose.json'), readFileSync(join(dir, 'kms-proxy.json')))
    chmodSync(join(dir, 'loose.json'), 0o666)
    for (const runtime of ['bun', 'deno'] as const) {
      const [wrong, tampered, missing, loose] = await Promise.all([
        kp(runtime, ['decrypt', '-i', 'by-node.kp', '-o', `wrong-${runtime}.bin`, '--aad', 'x'], { env: { KMS_PROXY_PASSPHRASE: 'nope' } }),
        kp(runtime, ['decrypt', '-i', 'tampered.kp', '-o', `tampered-${runtime}.bin`, '--aad', 'x']),
        kp(runtime, ['status', '--config', 'absent.json']),
        kp(runtime, ['status', '--config', 'loose.json']),
      ])
      expect(loose.code, runtime).toBe(EXIT.MISSING) // the trust checks hold on every runtime
      expect(loose.stderr, runtime).toMatch(/loose\.json: writable by other users \(mode 666\)/)
      expect(wrong.code, runtime).toBe(EXIT.ROOT_KEY)
      expect(wrong.stderr, runtime).toBe('kms-proxy decrypt: the root key refused: wrong passphrase, or the wrapped KEK was altered\n')
      expect(tampered.code, runtime).toBe(EXIT.TAMPERED)
      expect(tampered.stderr, runtime).toMatch(/^kms-proxy decrypt: decryption failed/)
      expect(missing.code, runtime).toBe(EXIT.MISSING)
      for (const f of [`wrong-${runtime}.bin`, `tampered-${runtime}.bin`]) expect(existsSync(join(dir, f)), f).toBe(false)
    }
  })

  it('a closed stdout (`| head`) or stderr: exit 9 with one line on every runtime, never a stack', async () => {
    for (const runtime of Object.keys(RUNTIMES) as Runtime[]) {
      const [command, ...pre] = RUNTIMES[runtime]
      for (const [closed, args, expected] of [
        ['stdout', ['status'], 'kms-proxy status: the output was closed before the end (broken pipe)\n'],
        ['stdout', ['decrypt', '-i', 'by-node.kp', '--aad', 'x'], 'kms-proxy decrypt: the output was closed before the end (broken pipe)\n'],
        ['stderr', ['status', '--config', 'absent.json'], ''],
      ] as const) {
        const child = spawn(command, [...pre, ...args], { cwd: dir, env: { PATH: process.env.PATH, KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, DENO_DIR: join(work.dir, 'deno-cache'), DENO_NO_UPDATE_CHECK: '1' }, stdio: ['ignore', 'pipe', 'pipe'] })
        let other = ''
        ;(closed === 'stdout' ? child.stderr : child.stdout).on('data', (c: Buffer) => (other += c))
        child[closed].destroy() // the reader is gone before the command writes anything
        const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)))
        expect(code, `${runtime} ${args.join(' ')}: ${other}`).toBe(EXIT.IO)
        expect(withoutNotes(other), `${runtime} ${args.join(' ')}`).toBe(expected)
      }
    }
  })

  it('rotate under Deno, rewrap under Bun, status under all three', async () => {
    const rotated = await kp('deno', ['rotate', '--json'])
    expect(rotated.code, rotated.stderr).toBe(EXIT.OK)
    const { primary } = JSON.parse(rotated.stdout.toString())
    mkdirSync(join(dir, 'box'))
    writeFileSync(join(dir, 'box', 'one.kp'), readFileSync(join(dir, 'by-bun.kp')))
    const rewrap = await kp('bun', ['rewrap', 'box', '--json'])
    expect(rewrap.code, rewrap.stderr).toBe(EXIT.OK)
    expect(JSON.parse(rewrap.stdout.toString())).toMatchObject({ rewrapped: 1, streams: 1, primary })
    expect(readFileSync(join(dir, 'box', 'one.kp')).readUInt32BE(1)).toBe(primary)
    const statuses = await Promise.all((Object.keys(RUNTIMES) as Runtime[]).map((r) => kp(r, ['status', '--json'])))
    for (const s of statuses) expect(JSON.parse(s.stdout.toString()).primary.id).toBe(primary)
    const back = await kp('deno', ['decrypt', '-i', join('box', 'one.kp'), '--aad', 'x'])
    expect(back.stdout.equals(data)).toBe(true)
  })
})
