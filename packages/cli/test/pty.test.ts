/**
 * The CLI on a real pseudo-terminal (python3's pty module, no native addon): the progress bar is
 * drawn when stderr is a terminal and the input is large, and not otherwise; the passphrase is
 * typed without echo.
 */
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutWeakKdfWarning, type Result } from './helpers.js'

const PTY = fileURLToPath(new URL('./pty_run.py', import.meta.url))
const PASSPHRASE = 'typed on a terminal 7'
let bundle: string
let work: ReturnType<typeof tempDir>
let dir: string

/** Runs `kms-proxy args` on a pseudo-terminal; stdout is what the terminal showed (the weak-KDF warning left out). */
async function onPty(args: string[], answers: string[] = [], env: Record<string, string> = {}): Promise<Result> {
  const r = await spawnCollect('python3', [PTY, JSON.stringify(args), JSON.stringify(answers)], { cwd: dir, env: { ...WEAK_KDF_ENV, KMS_PROXY_CONFIG: join(dir, 'kms-proxy.json'), ...env } })
  return { ...r, stdout: Buffer.from(withoutWeakKdfWarning(r.stdout.toString('latin1')), 'latin1') }
}

const FRAME = /\r(encrypt|decrypt) \[[#.]+\] +\d+% [\d.]+\/[\d.]+ MiB \d+ MiB\/s/g

beforeAll(async () => {
  work = tempDir('pty')
  bundle = await bundleCli(work.dir)
  dir = join(work.dir, 'chain')
  mkdirSync(dir)
  writeFileSync(join(dir, 'large.bin'), randomBytes(12 * 1024 * 1024)) // over the 8 MiB threshold
  writeFileSync(join(dir, 'small.bin'), randomBytes(1024 * 1024))
})
afterAll(() => work.cleanup())

describe('on a terminal', () => {
  it('init reads the passphrase twice without echoing it', async () => {
    const r = await onPty([process.execPath, bundle, 'init', ...FAST_KDF], [PASSPHRASE, PASSPHRASE])
    const screen = r.stdout.toString()
    expect(r.code).toBe(EXIT.OK)
    expect(screen).toContain('Passphrase: ')
    expect(screen).toContain('Passphrase (again): ')
    expect(screen).toMatch(/created chain "default" with KEK 0x[0-9a-f]{8}/)
    expect(screen).not.toContain(PASSPHRASE)
    // The typed passphrase is the chain's: the same one from the environment unlocks it.
    const enc = await spawnCollect(process.execPath, [bundle, 'encrypt', '--message'], { cwd: dir, env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV }, input: 'x' })
    expect(enc.code).toBe(EXIT.OK)
    const wrong = await onPty([process.execPath, bundle, 'status', '--check'], ['not the passphrase'])
    expect(wrong.code).toBe(EXIT.ROOT_KEY)
    expect(wrong.stdout.toString()).toMatch(/wrong passphrase/)
  })

  it('init: two passphrases that differ are asked again; three times differing ends with exit 2 and nothing written', async () => {
    const first = join(dir, 'differ')
    mkdirSync(first)
    const config = join(first, 'kms-proxy.json')
    const retried = await onPty([process.execPath, bundle, 'init', ...FAST_KDF, '--store-path', first], [PASSPHRASE, 'a typo in it, 7', PASSPHRASE, PASSPHRASE], { KMS_PROXY_CONFIG: config })
    const screen = retried.stdout.toString()
    expect(retried.code, screen).toBe(EXIT.OK)
    expect(screen).toContain('the two passphrases differ; type it again\r\nPassphrase: ')
    expect(screen).toMatch(/created chain "default"/)
    expect(screen).not.toContain(PASSPHRASE)
    const other = join(dir, 'differ-thrice')
    mkdirSync(other)
    const gaveUp = await onPty([process.execPath, bundle, 'init', ...FAST_KDF, '--store-path', join(other, 'keys.json')], ['one passphrase 1', 'two passphrase 2', 'one passphrase 1', 'two passphrase 2', 'one passphrase 1', 'two passphrase 2'], { KMS_PROXY_CONFIG: join(other, 'kms-proxy.json') })
    expect(gaveUp.code).toBe(EXIT.USAGE)
    expect(gaveUp.stdout.toString()).toMatch(/kms-proxy init: the two passphrases differed 3 times; nothing was written\r\n$/)
    expect(readdirSync(other)).toEqual([])
  })

  it('init: an empty passphrase has its own message and is asked again; a weak one is warned about, not refused', async () => {
    const folder = join(dir, 'empty-weak')
    mkdirSync(folder)
    const r = await onPty([process.execPath, bundle, 'init', ...FAST_KDF, '--store-path', folder], ['', 'x', 'x'], { KMS_PROXY_CONFIG: join(folder, 'kms-proxy.json') })
    const screen = r.stdout.toString()
    expect(r.code, screen).toBe(EXIT.OK)
    expect(screen).toContain('Passphrase: \r\nthe passphrase must not be empty; type it again\r\nPassphrase: ')
    expect(screen).toContain('kms-proxy init: warning: this passphrase is 1 character long: 12 or more (not a well-known phrase) are advised, since anyone with a copy of the key file can guess at it offline')
  })

  it('draws the progress bar on stderr for a large input, frames up to 100 %, and the output is intact', async () => {
    const env = { KMS_PROXY_PASSPHRASE: PASSPHRASE }
    const enc = await onPty([process.execPath, bundle, 'encrypt', '-i', 'large.bin', '-o', 'large.kp'], [], env)
    expect(enc.code).toBe(EXIT.OK)
    const frames = enc.stdout.toString().match(FRAME) ?? []
    expect(frames.length).toBeGreaterThanOrEqual(2) // the first frame at once, the last at the end
    expect(frames[0]).toMatch(/\[\.+\] +0% 0\.0\/12\.0 MiB/)
    expect(frames.at(-1)).toMatch(/\[#+\] 100% 12\.0\/12\.0 MiB/)
    const dec = await onPty([process.execPath, bundle, 'decrypt', '-i', 'large.kp', '-o', 'large.out'], [], env)
    expect(dec.code).toBe(EXIT.OK)
    expect((dec.stdout.toString().match(FRAME) ?? []).at(-1)).toMatch(/^\rdecrypt .* 100% /)
    expect(readFileSync(join(dir, 'large.out')).equals(readFileSync(join(dir, 'large.bin')))).toBe(true)
  })

  it('draws no bar when stderr is a pipe, with --quiet, or for a small input', async () => {
    const env = { KMS_PROXY_PASSPHRASE: PASSPHRASE }
    // stdout stays on the terminal, stderr goes to a file: the bar must not go anywhere
    const piped = await onPty(['sh', '-c', `exec "${process.execPath}" "${bundle}" encrypt -i large.bin -o piped.kp 2>stderr.txt`], [], env)
    expect(piped.code).toBe(EXIT.OK)
    expect(piped.stdout.toString()).not.toMatch(FRAME)
    expect(withoutWeakKdfWarning(readFileSync(join(dir, 'stderr.txt'), 'utf8'))).toBe('')
    const quiet = await onPty([process.execPath, bundle, 'encrypt', '-q', '-i', 'large.bin', '-o', 'quiet.kp'], [], env)
    expect(quiet.code).toBe(EXIT.OK)
    expect(quiet.stdout.toString()).not.toMatch(FRAME)
    // encrypted bytes are never written to the terminal itself
    const toTty = await onPty([process.execPath, bundle, 'encrypt', '-i', 'small.bin'], [], env)
    expect(toTty.code).toBe(EXIT.USAGE)
    expect(toTty.stdout.toString()).toMatch(/refusing to write encrypted bytes to a terminal/)
    const small = await onPty([process.execPath, bundle, 'encrypt', '-i', 'small.bin', '-o', 'small.kp'], [], env)
    expect(small.code).toBe(EXIT.OK)
    expect(small.stdout.toString()).toBe('')
  })
})
