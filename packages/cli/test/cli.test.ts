import { execFileSync, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { chmodSync, createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, watch, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutNotes, type Result } from './helpers.js'

const PASSPHRASE = 'correct horse battery staple'
let bundle: string
let work: ReturnType<typeof tempDir>

beforeAll(async () => {
  work = tempDir('cli')
  bundle = await bundleCli(work.dir)
})
afterAll(() => work.cleanup())

/** What init printed, by folder. */
const initOutput = new Map<string, string>()

/** A fresh folder with an initialized chain (passphrase root, file store). */
async function initialized(name: string, extra: string[] = []): Promise<string> {
  const dir = join(work.dir, name)
  mkdirSync(dir)
  const r = await kp(dir, ['init', ...FAST_KDF, ...extra])
  expect(r.stderr).toBe('')
  expect(r.code).toBe(EXIT.OK)
  initOutput.set(dir, r.stdout.toString())
  return dir
}

/** The CLI on the chain of `cwd` (its config found there), stderr without the notes every test command prints. */
async function kp(cwd: string, args: string[], options: { env?: Record<string, string | undefined>; input?: Uint8Array | string } = {}): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd, env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, ...options.env }, input: options.input })
  return { ...r, stderr: withoutNotes(r.stderr) }
}

/** Files in `dir` other than the config and store: what a failed command must not leave. */
const leftovers = (dir: string) => readdirSync(dir).filter((f) => !['kms-proxy.json', 'kms-proxy-keys.json', 'in.bin', 'in.kp'].includes(f))

const statusOf = async (dir: string) => JSON.parse((await kp(dir, ['status', '--json'])).stdout.toString())

describe('init', () => {
  it('writes a config with no secret and a chain with one KEK in the file store', async () => {
    const dir = await initialized('init')
    const config = readFileSync(join(dir, 'kms-proxy.json'), 'utf8')
    expect(JSON.parse(config)).toEqual({
      format: 'kms-proxy-cli/v1',
      chain: 'default',
      store: { type: 'file', path: 'kms-proxy-keys.json' },
      rootKey: { type: 'passphrase', kdf: 'pbkdf2', iterations: 1000 },
    })
    const store = readFileSync(join(dir, 'kms-proxy-keys.json'), 'utf8')
    for (const text of [config, store]) expect(text).not.toContain('correct horse')
    expect(statSync(join(dir, 'kms-proxy-keys.json')).mode & 0o777).toBe(0o600)
    expect(initOutput.get(dir)).toContain(`back up ${join(dir, 'kms-proxy-keys.json')}: it holds the chain's wrapped KEKs`)
    const status = await statusOf(dir)
    expect(status.keks).toHaveLength(1)
    expect(status.keks[0].primary).toBe(true)
    expect(status.rootKeyCalls).toEqual({ wraps: 0, unwraps: 0 }) // status needs no secret and no root-key call
  })

  it('refuses to overwrite a config without --force, and checks the passphrase when the chain exists, writing nothing to the store', async () => {
    const dir = await initialized('init-again')
    const again = await kp(dir, ['init', ...FAST_KDF])
    expect(again.code).toBe(EXIT.USAGE)
    expect(again.stderr).toMatch(/exists: pass --force/)
    const wrong = await kp(dir, ['init', '--force', ...FAST_KDF], { env: { KMS_PROXY_PASSPHRASE: 'not it' } })
    expect(wrong.code).toBe(EXIT.ROOT_KEY)
    expect(wrong.stderr).toMatch(/wrong passphrase/)
    const store = readFileSync(join(dir, 'kms-proxy-keys.json'))
    const right = await kp(dir, ['init', '--force', ...FAST_KDF])
    expect(right.code).toBe(EXIT.OK)
    // One unwrap of the primary proves the passphrase; the store is left byte for byte (no use spent).
    expect(readFileSync(join(dir, 'kms-proxy-keys.json')).equals(store)).toBe(true)
    expect(right.stdout.toString()).toMatch(/already exists; the root key unlocks its primary KEK 0x[0-9a-f]{8}/)
  })

  it('a wrong passphrase never makes a KEK: rotate, and encrypt once the primary is past its age, exit 4 and write nothing', async () => {
    const dir = await initialized('wrong-rotate', ['--max-kek-age-days', '0.00001']) // 0.86 s
    const first = (await statusOf(dir)).primary.id
    const wrong = { env: { KMS_PROXY_PASSPHRASE: 'a typo' } }
    const rotate = await kp(dir, ['rotate'], wrong)
    expect(rotate.code).toBe(EXIT.ROOT_KEY)
    expect(rotate.stderr).toMatch(/wrong passphrase/)
    await new Promise((r) => setTimeout(r, 1_000))
    const enc = await kp(dir, ['encrypt', '--message', '-o', 'typo.kp'], { ...wrong, input: 'x' })
    expect(enc.code).toBe(EXIT.ROOT_KEY)
    expect(existsSync(join(dir, 'typo.kp'))).toBe(false)
    const after = await statusOf(dir)
    expect(after.keks.map((k: { id: number }) => k.id)).toEqual([first])
    // The right passphrase rotates by age as usual, and what it writes decrypts.
    const ok = await kp(dir, ['encrypt', '--message', '-o', 'ok.kp'], { input: 'x' })
    expect(ok.code, ok.stderr).toBe(EXIT.OK)
    expect((await statusOf(dir)).keks).toHaveLength(2)
    expect((await kp(dir, ['decrypt', '-i', 'ok.kp'])).stdout.toString()).toBe('x')
  })

  it('a weak passphrase for a new chain: a warning with the rule, and the chain is made', async () => {
    const cases: Array<[string, string | undefined]> = [
      ['x', 'is 1 character long'],
      ['hunter2', 'is 7 characters long'],
      ['aaaaaaaaaaaaaaaa', 'has only 1 different character'],
      ['abababab12121212', 'has only 4 different characters'],
      ['a long passphrase', undefined],
    ]
    for (const [i, [passphrase, why]] of cases.entries()) {
      const dir = join(work.dir, `weak-${i}`)
      mkdirSync(dir)
      const r = await kp(dir, ['init', ...FAST_KDF], { env: { KMS_PROXY_PASSPHRASE: passphrase } })
      expect(r.code, passphrase).toBe(EXIT.OK)
      expect(r.stderr, passphrase).toBe(why ? `kms-proxy init: warning: this passphrase ${why}: 12 or more (not a well-known phrase) are advised, since anyone with a copy of the key file can guess at it offline\n` : '')
      expect(r.stderr).not.toContain(`passphrase ${passphrase}`)
    }
  })

  it('keeps config and store where asked, the store path relative to the config', async () => {
    const dir = join(work.dir, 'places')
    mkdirSync(join(dir, 'etc'), { recursive: true })
    mkdirSync(join(dir, 'var'))
    const r = await kp(dir, ['init', '--config', 'etc/kp.json', '--store-path', join(dir, 'var'), '--chain', 'orders', ...FAST_KDF])
    expect(r.code, r.stderr).toBe(EXIT.OK)
    const config = JSON.parse(readFileSync(join(dir, 'etc/kp.json'), 'utf8'))
    expect(config.store).toEqual({ type: 'file', path: '../var/kms-proxy-keys.json' })
    expect(config.chain).toBe('orders')
    const enc = await kp(join(dir, 'var'), ['encrypt', '--message'], { input: 'x', env: { KMS_PROXY_CONFIG: join(dir, 'etc/kp.json') } })
    expect(enc.code, enc.stderr).toBe(EXIT.OK)
  })

  it('leaves no config when the root key cannot be reached, and exits with its own code', async () => {
    const dir = join(work.dir, 'init-vault-down')
    mkdirSync(dir)
    const r = await kp(dir, ['init', '--root', 'vault', '--vault-address', 'http://127.0.0.1:9', '--vault-key', 'k'], { env: { VAULT_TOKEN: 'hvs.secret-token-value' } })
    expect(r.code).toBe(EXIT.ROOT_KEY_UNREACHABLE)
    expect(r.stderr).toMatch(/root key is unreachable/)
    expect(r.stderr).not.toContain('hvs.secret-token-value')
    expect(existsSync(join(dir, 'kms-proxy.json'))).toBe(false)
  })

  it('names the variable when a secret is missing and there is no terminal', async () => {
    const dir = join(work.dir, 'init-no-secret')
    mkdirSync(dir)
    const r = await kp(dir, ['init'], { env: { KMS_PROXY_PASSPHRASE: undefined } })
    expect(r.code).toBe(EXIT.USAGE)
    expect(r.stderr).toMatch(/set KMS_PROXY_PASSPHRASE/)
    // Set but empty (`KMS_PROXY_PASSPHRASE=`, an unset variable expanded): its own message.
    const empty = await kp(dir, ['init', ...FAST_KDF], { env: { KMS_PROXY_PASSPHRASE: '' } })
    expect(empty.code).toBe(EXIT.USAGE)
    expect(empty.stderr).toBe('kms-proxy init: KMS_PROXY_PASSPHRASE is set but empty: a passphrase must not be empty\n')
    expect(existsSync(join(dir, 'kms-proxy.json'))).toBe(false)
    const vault = await kp(dir, ['init', '--root', 'vault', '--vault-address', 'http://127.0.0.1:9', '--vault-key', 'k'])
    expect(vault.code).toBe(EXIT.USAGE)
    expect(vault.stderr).toMatch(/set VAULT_TOKEN/)
  })
})

describe('encrypt and decrypt', () => {
  let dir: string
  const data = randomBytes(300_000)
  beforeAll(async () => {
    dir = await initialized('crypt')
    writeFileSync(join(dir, 'in.bin'), data)
    // Later tests read in.kp; the first test checks how it is made.
    expect((await kp(dir, ['encrypt', '-i', 'in.bin', '-o', 'in.kp', '--aad', 'invoice-42'])).code).toBe(EXIT.OK)
  })

  it('round-trips a file with associated data, through a private output file', async () => {
    const enc = await kp(dir, ['encrypt', '-i', 'in.bin', '-o', 'in.kp', '--aad', 'invoice-42', '--force'])
    expect(enc.code).toBe(EXIT.OK)
    expect(enc.stdout.length + enc.stderr.length).toBe(0)
    const encrypted = readFileSync(join(dir, 'in.kp'))
    expect(encrypted[0]).toBe(0x01)
    expect(encrypted[5]! & 0x02).toBe(0x02) // a stream
    expect(encrypted.length).toBeGreaterThan(data.length)
    expect(statSync(join(dir, 'in.kp')).mode & 0o777).toBe(0o600)
    const dec = await kp(dir, ['decrypt', '-i', 'in.kp', '-o', 'out.bin', '--aad', 'invoice-42'])
    expect(dec.code).toBe(EXIT.OK)
    expect(readFileSync(join(dir, 'out.bin')).equals(data)).toBe(true)
  })

  it('an existing -o file is refused (exit 2, before any root-key call), unless --force', async () => {
    writeFileSync(join(dir, 'kept.bin'), 'precious')
    for (const args of [['encrypt', '-i', 'in.bin'], ['encrypt', '--message', '-i', 'in.bin'], ['decrypt', '-i', 'in.kp', '--aad', 'invoice-42']]) {
      const r = await kp(dir, [...args, '-o', 'kept.bin'], { env: { KMS_PROXY_PASSPHRASE: 'not even the passphrase' } })
      expect(r.code, args.join(' ')).toBe(EXIT.USAGE)
      expect(r.stderr).toBe(`kms-proxy ${args[0]}: kept.bin exists: pass --force to overwrite it\nSee kms-proxy ${args[0]} --help\n`)
      expect(readFileSync(join(dir, 'kept.bin'), 'utf8')).toBe('precious')
    }
    mkdirSync(join(dir, 'a-folder'))
    for (const force of [[], ['--force']]) {
      const folder = await kp(dir, ['encrypt', '-i', 'in.bin', '-o', 'a-folder', ...force])
      expect(folder.code).toBe(EXIT.IO)
      expect(folder.stderr).toBe('kms-proxy encrypt: cannot access a-folder: is a directory\n')
    }
    rmSync(join(dir, 'a-folder'), { recursive: true })
    const forced = await kp(dir, ['decrypt', '-i', 'in.kp', '--aad', 'invoice-42', '-o', 'kept.bin', '--force'])
    expect(forced.code, forced.stderr).toBe(EXIT.OK)
    expect(readFileSync(join(dir, 'kept.bin')).equals(data)).toBe(true)
    expect(readdirSync(dir).filter((f) => f.includes('kms-proxy-tmp'))).toEqual([])
    rmSync(join(dir, 'kept.bin'))
  })

  it('round-trips a pipe (stdin to stdout), as a stream and as a single message', async () => {
    const enc = await kp(dir, ['encrypt'], { input: data })
    expect(enc.code).toBe(EXIT.OK)
    const dec = await kp(dir, ['decrypt'], { input: enc.stdout })
    expect(dec.code).toBe(EXIT.OK)
    expect(dec.stdout.equals(data)).toBe(true)
    const message = await kp(dir, ['encrypt', '--message'], { input: 'a short secret' })
    expect(message.stdout[5]! & 0x02).toBe(0) // not a stream
    expect(message.stdout.length).toBe('a short secret'.length + 78)
    const back = await kp(dir, ['decrypt', '-i', '-'], { input: message.stdout })
    expect(back.stdout.toString()).toBe('a short secret')
  })

  it('-o naming a FIFO (or a device such as /dev/null) writes into it instead of renaming a regular file over it', async () => {
    const fifo = join(dir, 'out.fifo')
    execFileSync('mkfifo', [fifo])
    try {
      const received = new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = []
        createReadStream(fifo).on('data', (c) => chunks.push(c as Buffer)).on('end', () => resolve(Buffer.concat(chunks))).on('error', reject)
      })
      const dec = await kp(dir, ['decrypt', '-i', 'in.kp', '-o', fifo, '--aad', 'invoice-42'])
      expect(dec.code, dec.stderr).toBe(EXIT.OK)
      expect(statSync(fifo).isFIFO()).toBe(true)
      expect((await received).equals(data)).toBe(true)
      expect(readdirSync(dir).filter((f) => f.includes('kms-proxy-tmp'))).toEqual([])
    } finally {
      rmSync(fifo, { force: true })
    }
  })

  it('a reader that stops early (| head): exit 9 with one line, no crash and no stack trace', async () => {
    for (let round = 0; round < 4; round++) {
      const child = spawn(process.execPath, [bundle, 'decrypt', '-i', 'in.kp', '--aad', 'invoice-42'], { cwd: dir, env: { PATH: process.env.PATH, KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV }, stdio: ['ignore', 'pipe', 'pipe'] })
      let stderr = ''
      child.stderr.on('data', (c: Buffer) => (stderr += c))
      const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
      child.stdout.once('data', () => child.stdout.destroy()) // like `head -c 10`: read a little, then close
      expect(await exited, stderr).toBe(EXIT.IO)
      expect(withoutNotes(stderr)).toBe('kms-proxy decrypt: the output was closed before the end (broken pipe)\n')
    } // a race (which error ends the pipe first): several rounds
  })

  it('wrong passphrase: exit 4, a clear message, no output file, no passphrase printed', async () => {
    const r = await kp(dir, ['decrypt', '-i', 'in.kp', '-o', 'wrong.bin', '--aad', 'invoice-42'], { env: { KMS_PROXY_PASSPHRASE: 'Tr0ub4dor&3' } })
    expect(r.code).toBe(EXIT.ROOT_KEY)
    expect(r.stderr).toBe('kms-proxy decrypt: the root key refused: wrong passphrase, or the wrapped KEK was altered\n')
    expect(r.stdout.length).toBe(0)
    expect(leftovers(dir)).toEqual(['out.bin'])
    const enc = await kp(dir, ['encrypt', '-i', 'in.bin', '-o', 'wrong.kp'], { env: { KMS_PROXY_PASSPHRASE: 'Tr0ub4dor&3' } })
    expect(enc.code).toBe(EXIT.ROOT_KEY)
    expect(leftovers(dir)).toEqual(['out.bin'])
  })

  it('tampered input, wrong associated data, truncation and non-kms-proxy input: exit 5 and no output file', async () => {
    const good = readFileSync(join(dir, 'in.kp'))
    const cases: Array<[string, Uint8Array, string[]]> = [
      ['flipped', Uint8Array.from(good, (b, i) => (i === 200_000 ? b ^ 1 : b)), ['--aad', 'invoice-42']],
      ['cut', good.subarray(0, good.length - 70_000), ['--aad', 'invoice-42']],
      ['aad', good, ['--aad', 'invoice-43']],
      ['header', Uint8Array.from(good, (b, i) => (i === 5 ? b | 0x80 : b)), ['--aad', 'invoice-42']],
      ['plain', new TextEncoder().encode('just some text, not encrypted'), []],
      ['pdf', new TextEncoder().encode('%PDF-1.7\n'), []],
    ]
    const results = await Promise.all(
      cases.map(([name, bytes, aad]) => {
        writeFileSync(join(dir, `${name}.kp`), bytes)
        return kp(dir, ['decrypt', '-i', `${name}.kp`, '-o', `${name}.out`, ...aad])
      }),
    )
    for (const [i, [name]] of cases.entries()) {
      const r = results[i]!
      expect(r.code, name).toBe(EXIT.TAMPERED)
      expect(r.stderr, name).toMatch(/^kms-proxy decrypt: (decryption failed: the input was altered|the input is not intact kms-proxy data|\w+\.kp is not kms-proxy data)/)
      expect(r.stderr, name).not.toMatch(/\n\s+at /) // no stack trace
      expect(existsSync(join(dir, `${name}.out`)), name).toBe(false)
    }
    expect(leftovers(dir).filter((f) => f.includes('kms-proxy-tmp'))).toEqual([])
    // Input that is not kms-proxy data at all says so, not "unsupported format version 106".
    for (const name of ['plain', 'pdf']) expect(results[cases.findIndex(([n]) => n === name)]!.stderr).toBe(`kms-proxy decrypt: ${name}.kp is not kms-proxy data\n`)
    const piped = await kp(dir, ['decrypt'], { input: 'hello' })
    expect(piped.code).toBe(EXIT.TAMPERED)
    expect(piped.stderr).toBe('kms-proxy decrypt: stdin is not kms-proxy data\n')
    const empty = await kp(dir, ['decrypt'], { input: '' })
    expect(empty.stderr).toBe('kms-proxy decrypt: stdin is empty: not kms-proxy data\n')
  })

  it('missing config, missing store and missing chain: exit 3', async () => {
    const empty = join(work.dir, 'empty')
    mkdirSync(empty)
    const noConfig = await kp(empty, ['encrypt', '-i', join(dir, 'in.bin'), '-o', 'x.kp'])
    expect(noConfig.code).toBe(EXIT.MISSING)
    expect(noConfig.stderr).toMatch(/no config at .*kms-proxy\.json: run `kms-proxy init` first/)
    expect(existsSync(join(empty, 'x.kp'))).toBe(false)
    const viaEnv = await kp(empty, ['decrypt', '-i', join(dir, 'in.kp')], { env: { KMS_PROXY_CONFIG: join(empty, 'other.json') } })
    expect(viaEnv.code).toBe(EXIT.MISSING)
    expect(viaEnv.stderr).toContain('other.json')
    const config = JSON.parse(readFileSync(join(dir, 'kms-proxy.json'), 'utf8'))
    writeFileSync(join(empty, 'nostore.json'), JSON.stringify({ ...config, store: { type: 'file', path: 'gone.json' } }))
    const noStore = await kp(empty, ['status', '-c', 'nostore.json'])
    expect(noStore.code).toBe(EXIT.MISSING)
    // A deleted key file: `init` would make a new chain that can never read the old files.
    expect(noStore.stderr).toMatch(/^kms-proxy status: the key file \S*gone\.json named by \S*nostore\.json is missing: restore it from a backup\. What chain "default" encrypted cannot be decrypted without it \(`kms-proxy init` would make a new chain, which cannot read it either\)\n$/)
    const noStoreDecrypt = await kp(empty, ['decrypt', '-c', 'nostore.json', '-i', join(dir, 'in.kp'), '-o', 'x.out'])
    expect(noStoreDecrypt.code).toBe(EXIT.MISSING)
    expect(noStoreDecrypt.stderr).toMatch(/restore it from a backup/)
    expect(noStoreDecrypt.stderr).not.toMatch(/run `kms-proxy init`/)
    writeFileSync(join(dir, 'bad-policy.json'), JSON.stringify({ ...config, maxWrapsPerKek: -1 }))
    const badPolicy = await kp(dir, ['encrypt', '-c', 'bad-policy.json', '-i', 'in.bin', '-o', 'bad-policy.out'])
    expect(badPolicy.code).toBe(EXIT.MISSING) // a config problem, not a usage error
    expect(badPolicy.stderr).toMatch(/bad-policy\.json: "maxWrapsPerKek" must be an integer/)
    writeFileSync(join(dir, 'other-chain.json'), JSON.stringify({ ...config, chain: 'payroll' }))
    const noChain = await kp(dir, ['decrypt', '-c', 'other-chain.json', '-i', 'in.kp', '-o', 'nochain.out'])
    expect(noChain.code).toBe(EXIT.MISSING)
    expect(noChain.stderr).toMatch(/chain "payroll" is not in the store/)
    expect(existsSync(join(dir, 'nochain.out'))).toBe(false)
  })

  it('data of another chain: exit 8 (unknown KEK); an unreadable input: exit 9', async () => {
    const other = await initialized('other')
    const r = await kp(other, ['decrypt', '-i', join(dir, 'in.kp'), '-o', 'x.out', '--aad', 'invoice-42'])
    expect(r.code).toBe(EXIT.UNKNOWN_KEK)
    expect(r.stderr).toMatch(/\(was it encrypted with another chain or store, or before the key file was replaced\? then restore that key file from a backup\)\n$/)
    expect(existsSync(join(other, 'x.out'))).toBe(false)
    const missing = await kp(dir, ['encrypt', '-i', 'no-such-file', '-o', 'x.kp'])
    expect(missing.code).toBe(EXIT.IO)
    expect(missing.stderr).toMatch(/no-such-file: no such file or directory/)
    const noFolder = await kp(dir, ['encrypt', '-i', 'in.bin', '-o', join('no-such-folder', 'x.kp')])
    expect(noFolder.code).toBe(EXIT.IO)
    // The path the user gave, not the temporary file's name beside it.
    expect(noFolder.stderr).toBe('kms-proxy encrypt: cannot access no-such-folder/x.kp: no such file or directory\n')
    const absent = await kp(dir, ['decrypt', '-i', 'in.kp', '--aad', 'invoice-42', '-o', '/nonexistent/x.kp'])
    expect(absent.code).toBe(EXIT.IO)
    expect(absent.stderr).toBe('kms-proxy decrypt: cannot access /nonexistent/x.kp: no such file or directory\n')
  })

  it('usage errors: exit 2 with a pointer to --help; --help for every command', async () => {
    const unknown = await kp(dir, ['encrypt', '--bogus'])
    expect(unknown.code).toBe(EXIT.USAGE)
    expect(unknown.stderr).toMatch(/Unknown option '--bogus'[\s\S]*See kms-proxy encrypt --help/)
    expect((await kp(dir, ['frobnicate'])).code).toBe(EXIT.USAGE)
    // Names that an object lookup would find on Object.prototype are unknown commands too.
    for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
      const r = await kp(dir, [name])
      expect(r.code, name).toBe(EXIT.USAGE)
      expect(r.stderr, name).toMatch(new RegExp(`unknown command "${name}"`))
    }
    expect((await kp(dir, [])).code).toBe(EXIT.USAGE)
    expect((await kp(dir, ['rewrap'])).code).toBe(EXIT.USAGE)
    expect((await kp(dir, ['k8s-plugin'])).stderr).toMatch(/--socket is required/)
    const overview = await kp(dir, ['--help'])
    expect(overview.code).toBe(EXIT.OK)
    const commands = ['init', 'encrypt', 'decrypt', 'rotate', 'status', 'rewrap', 'k8s-plugin']
    const helps = await Promise.all(commands.map((command) => kp(dir, [command, '--help'])))
    for (const [i, command] of commands.entries()) {
      expect(overview.stdout.toString()).toContain(`  ${command} `)
      const help = helps[i]!
      expect(help.code, command).toBe(EXIT.OK)
      expect(help.stdout.toString(), command).toMatch(new RegExp(`^Usage: kms-proxy ${command}`))
    }
  })

  it.each([
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const)('%s while writing (Ctrl-C, kill, a closed terminal) removes the temporary output file (exit %i)', async (signal, exitCode) => {
    const child = spawn(process.execPath, [bundle, 'encrypt', '-o', 'interrupted.kp'], { cwd: dir, env: { PATH: process.env.PATH, KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV }, stdio: ['pipe', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (c: Buffer) => (stderr += c))
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
    child.stdin.write(randomBytes(200_000)) // and keep stdin open: the command waits for more
    const temp = () => readdirSync(dir).filter((f) => f.startsWith('.interrupted.kp.') && f.endsWith('.kms-proxy-tmp'))
    for (let i = 0; i < 200 && temp().length === 0; i++) await new Promise((r) => setTimeout(r, 25))
    expect(temp()).toHaveLength(1)
    child.kill(signal)
    expect(await exited).toBe(exitCode)
    expect(stderr).toMatch(/interrupted; no output written/)
    expect(temp()).toEqual([])
    expect(existsSync(join(dir, 'interrupted.kp'))).toBe(false)
  })

  it('k8s-plugin without @kms-proxy/k8s installed: exit 10 and what to install', async () => {
    const r = await kp(dir, ['k8s-plugin', '--socket', join(dir, 'kms.sock')])
    expect(r.code).toBe(EXIT.NOT_INSTALLED)
    expect(r.stderr).toMatch(/needs the package @kms-proxy\/k8s, which is not installed/)
  })
})

describe('rotate, status and rewrap', () => {
  it('rotate makes a new primary; status shows both KEKs, usage and root-key calls', async () => {
    const dir = await initialized('rotate')
    const before = await statusOf(dir)
    const rotated = await kp(dir, ['rotate', '--json'])
    expect(rotated.code).toBe(EXIT.OK)
    const { primary } = JSON.parse(rotated.stdout.toString())
    expect(primary).not.toBe(before.primary.id)
    const after = await statusOf(dir)
    expect(after.primary.id).toBe(primary)
    expect(after.keks.map((k: { id: number }) => k.id).sort()).toEqual([before.primary.id, primary].sort())
    expect(after.keks.find((k: { primary: boolean }) => k.primary).id).toBe(primary)
    const checked = JSON.parse((await kp(dir, ['status', '--json', '--check'])).stdout.toString())
    expect(checked.rootKeyCalls).toEqual({ wraps: 0, unwraps: 1 })
    expect(checked.rootKeyAvailable).toBe(true)
    expect(checked.primary.usesReserved).toBe(after.primary.usesReserved) // a check spends no use
    const text = (await kp(dir, ['status'])).stdout.toString()
    expect(text).toMatch(/^chain {8}default$/m)
    expect(text).toMatch(/^KEKs {9}2$/m)
    expect(text).toMatch(new RegExp(`0x${primary.toString(16).padStart(8, '0')} .* primary$`, 'm'))
    expect(text).toMatch(/^usage {8}\d+ of 2,097,152 uses reserved/m)
    expect(text).not.toContain('correct horse')
  })

  it('rewrap moves every file of a folder to the new primary, changing header bytes only', async () => {
    const dir = await initialized('rewrap')
    const files = join(dir, 'files')
    mkdirSync(join(files, 'nested'), { recursive: true })
    const plain: Record<string, Buffer> = {
      'a.kp': randomBytes(200_000),
      'nested/b.kp': randomBytes(10),
      'c.kp': Buffer.from('a single message'),
      'empty.kp': Buffer.alloc(0),
    }
    for (const [name, bytes] of Object.entries(plain)) {
      const r = await kp(dir, ['encrypt', '-o', join(files, name), ...(name === 'c.kp' ? ['--message'] : [])], { input: bytes })
      expect(r.code).toBe(EXIT.OK)
    }
    writeFileSync(join(files, 'notes.txt'), 'not encrypted')
    const before = Object.fromEntries(Object.keys(plain).map((n) => [n, readFileSync(join(files, n))]))
    const oldPrimary = (await statusOf(dir)).primary.id
    const { primary } = JSON.parse((await kp(dir, ['rotate', '--json'])).stdout.toString())

    // Modes are kept exactly, even those the umask (022 here) would narrow.
    chmodSync(join(files, 'a.kp'), 0o664)
    chmodSync(join(files, 'c.kp'), 0o660)
    const r = await kp(dir, ['rewrap', 'files', '--json'])
    expect(r.stderr).toBe('')
    expect(statSync(join(files, 'a.kp')).mode & 0o777).toBe(0o664)
    expect(statSync(join(files, 'c.kp')).mode & 0o777).toBe(0o660)
    expect(statSync(join(files, 'nested/b.kp')).mode & 0o777).toBe(0o600)
    expect(r.code).toBe(EXIT.OK)
    // Per old KEK: the files moved off it (the chain's count) and their bytes; none left under it.
    const bytes = Object.values(before).reduce((n, b) => n + b.length, 0)
    const byKek = [{ id: oldPrimary, idHex: `0x${oldPrimary.toString(16).padStart(8, '0')}`, moved: 4, bytes, left: 0 }]
    expect(JSON.parse(r.stdout.toString())).toEqual({ rewrapped: 4, messages: 1, streams: 3, current: 0, skipped: 1, failed: 0, primary, byKek, rootKeyUnwraps: 2, rootKeyWraps: 0 })
    for (const [name, old] of Object.entries(before)) {
      const now = readFileSync(join(files, name))
      expect(now.length, name).toBe(old.length)
      const changed = [...now.keys()].filter((i) => now[i] !== old[i])
      // version 0, KEK id 1..4, flags 5; iv1 and wrapped DEK 6..49; everything after is untouched
      expect(Math.max(...changed), name).toBeLessThan(50)
      expect(now.readUInt32BE(1), name).toBe(primary)
      expect(old.readUInt32BE(1), name).toBe(oldPrimary)
      const back = await kp(dir, ['decrypt', '-i', join(files, name)])
      expect(back.code, name).toBe(EXIT.OK)
      expect(back.stdout.equals(plain[name]!), name).toBe(true)
    }
    expect(readFileSync(join(files, 'notes.txt'), 'utf8')).toBe('not encrypted')
    expect(readdirSync(files).filter((f) => f.includes('kms-proxy-tmp'))).toEqual([])

    const again = JSON.parse((await kp(dir, ['rewrap', 'files', '--json'])).stdout.toString())
    expect(again).toMatchObject({ rewrapped: 0, current: 4, skipped: 1, failed: 0 })

    // A tampered file fails alone, keeps its bytes, and sets the exit code; the others are done.
    await kp(dir, ['rotate'])
    const a = readFileSync(join(files, 'a.kp'))
    a[20] = a[20]! ^ 1 // inside the wrapped DEK
    writeFileSync(join(files, 'a.kp'), a)
    const partial = await kp(dir, ['rewrap', 'files', '--json'])
    expect(partial.code).toBe(EXIT.TAMPERED)
    expect(partial.stderr).toMatch(/a\.kp: decryption failed/)
    expect(JSON.parse(partial.stdout.toString())).toMatchObject({ rewrapped: 3, failed: 1 })
    expect(readFileSync(join(files, 'a.kp')).equals(a)).toBe(true)

    // One of a kind is singular, in every count the text output has.
    const one = join(dir, 'one')
    mkdirSync(one)
    writeFileSync(join(one, 'c.kp'), readFileSync(join(files, 'c.kp')))
    await kp(dir, ['rotate'])
    const text = await kp(dir, ['rewrap', 'one'])
    expect(text.code, text.stderr).toBe(EXIT.OK)
    expect(text.stdout.toString()).toMatch(/^rewrapped 1 file \(1 message, 0 streams\) to KEK 0x[0-9a-f]{8}; 0 already current, 0 skipped \(not kms-proxy data\), 0 failed\n  from KEK 0x[0-9a-f]{8}: 1 file moved \([0-9,]+ bytes\); no file under one still under it\nroot-key calls: 2 unwraps, 0 wraps\n$/) // the old KEK and the new primary
  })
  it('rewrap never overwrites a file that another writer replaced while it was being rewrapped', async () => {
    const dir = await initialized('rewrap-race')
    const files = join(dir, 'files')
    mkdirSync(files)
    const big = join(files, 'big.kp')
    const enc = await kp(dir, ['encrypt', '-i', '-', '-o', big], { input: randomBytes(48 * 1024 * 1024) })
    expect(enc.code, enc.stderr).toBe(EXIT.OK)
    await kp(dir, ['rotate'])
    // As soon as rewrap opens its temporary file (it then copies 48 MiB and fsyncs), a newer
    // version of big.kp lands under the same name, the way `encrypt -o` writes it.
    const newer = (await kp(dir, ['encrypt', '--message'], { input: 'the newer version' })).stdout
    writeFileSync(join(dir, 'newer.kp'), newer)
    const watcher = watch(files, (_event, name) => {
      if (name && String(name).endsWith('.kms-proxy-tmp') && existsSync(join(dir, 'newer.kp'))) renameSync(join(dir, 'newer.kp'), big)
    })
    try {
      const r = await kp(dir, ['rewrap', 'files', '--json'])
      expect(existsSync(join(dir, 'newer.kp'))).toBe(false) // the swap happened during the rewrap
      expect(r.code).toBe(EXIT.IO)
      expect(r.stderr).toMatch(/big\.kp: it changed while being rewrapped; left as it is/)
      expect(JSON.parse(r.stdout.toString())).toMatchObject({ rewrapped: 0, failed: 1 })
    } finally {
      watcher.close()
    }
    expect(readFileSync(big).equals(newer)).toBe(true)
    expect(readdirSync(files).filter((f) => f.includes('kms-proxy-tmp'))).toEqual([])
  })
})
