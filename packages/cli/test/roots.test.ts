/**
 * `kms-proxy root change|add|remove|list`: a chain's roots after `init`, run as a user would (a
 * child process per command), on a file store, with a passphrase and AWS KMS (moto) as roots.
 * A `root change` killed with SIGKILL part way, and one killed between the store change and the
 * config write, both finish when the same command runs again.
 */
import { spawn } from 'node:child_process'
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, kekAad } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { awsKmsRootKey } from '@kms-proxy/kms'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { startMoto, type Moto } from './moto.ts'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutNotes, type Result } from './helpers.js'

const OLD = 'correct horse battery staple'
const NEW = 'a new passphrase, typed twice'
const RECOVERY = 'the recovery passphrase of this chain'
const REGION = 'eu-central-1'
const CREDENTIALS = { accessKeyId: 'AKIAROOTSTEST0000000', secretAccessKey: 'roots-test-secret-access-key' }
const AWS_ENV = { AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey }
const SECRETS = [OLD, NEW, RECOVERY, CREDENTIALS.secretAccessKey]

let bundle: string
let work: ReturnType<typeof tempDir>
let moto: Moto
let keyId: string

beforeAll(async () => {
  work = tempDir('roots')
  ;[bundle, moto] = await Promise.all([bundleCli(work.dir), startMoto(CREDENTIALS, REGION, 60_000)])
  keyId = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
}, 120_000)
afterAll(() => {
  moto?.close()
  work?.cleanup()
})

/** The environment of every command: the config of `cwd` named (it may name AWS KMS), the old passphrase. */
const baseEnv = (cwd: string) => ({ KMS_PROXY_CONFIG: join(cwd, 'kms-proxy.json'), KMS_PROXY_PASSPHRASE: OLD, ...WEAK_KDF_ENV })

/** The CLI in `cwd` with `env` over baseEnv, stderr without the test notes. */
async function kp(cwd: string, args: string[], env: Record<string, string | undefined> = {}): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd, env: { ...baseEnv(cwd), ...env } })
  const result = { ...r, stderr: withoutNotes(r.stderr) }
  for (const secret of SECRETS) expect(result.stdout.toString() + result.stderr).not.toContain(secret)
  return result
}

const ok = (r: Result): string => {
  expect(r.stderr).toBe('')
  expect(r.code).toBe(EXIT.OK)
  return r.stdout.toString()
}

const awsArgs = () => ['--root', 'aws-kms', '--aws-key-id', keyId, '--aws-region', REGION, '--endpoint', moto.endpoint]
const readConfig = (dir: string) => JSON.parse(readFileSync(join(dir, 'kms-proxy.json'), 'utf8'))
const storeFile = (dir: string) => join(dir, 'kms-proxy-keys.json')

/** A chain made by `init` with `keks` KEKs in all, and one file encrypted under every `every`-th. */
async function chainWith(name: string, keks: number, every: number): Promise<{ dir: string; files: Map<string, string> }> {
  const dir = join(work.dir, name)
  mkdirSync(dir)
  ok(await kp(dir, ['init', ...FAST_KDF]))
  // The library makes the KEKs: one process instead of one per rotation.
  const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: OLD, kdf: 'pbkdf2', iterations: 1000 }), store: fileStore(storeFile(dir)), dekPoolSize: 0, leaseSize: 1 })
  const files = new Map<string, string>()
  for (let i = 0; i < keks; i++) {
    if (i % every === 0) {
      const path = join(dir, `file-${i}.kp`)
      writeFileSync(path, await chain.encrypt(`message ${i}`))
      files.set(path, `message ${i}`)
    }
    if (i < keks - 1) await chain.rotate()
  }
  return { dir, files }
}

async function decryptsAll(dir: string, files: Map<string, string>, env: Record<string, string | undefined>): Promise<void> {
  for (const [path, text] of files) expect(ok(await kp(dir, ['decrypt', '-i', path], env))).toBe(text)
}

/** Records in the store file by root name: the 'default' root's under keks, the others under wraps. */
function recordsByRoot(dir: string): Map<string, number> {
  const chain = JSON.parse(readFileSync(storeFile(dir), 'utf8')).chains.default
  const counts = new Map<string, number>([['default', Object.keys(chain.keks).length]])
  for (const byRoot of Object.values(chain.wraps ?? {}) as Record<string, unknown>[]) for (const root of Object.keys(byRoot)) counts.set(root, (counts.get(root) ?? 0) + 1)
  return counts
}

describe('root change', () => {
  it('passphrase to a new passphrase: every KEK re-wrapped, no file changed, the config names the new root', async () => {
    const { dir, files } = await chainWith('new-passphrase', 4, 1)
    const before = [...files.keys()].map((f) => readFileSync(f))
    const out = ok(await kp(dir, ['root', 'change', '--root', 'passphrase', ...FAST_KDF], { KMS_PROXY_NEW_PASSPHRASE: NEW }))
    expect(out).toContain('changed root "default" (passphrase) of chain "default" to "default-2" (passphrase)')
    expect(out).toContain('KEKs         4 re-wrapped under "default-2"; 4 wraps under "default" deleted')
    // One unwrap per KEK by the old root, one by each root to prove itself.
    expect(out).toMatch(/^root calls   [56] unwraps, 4 wraps$/m)
    expect(out).toContain('data         0 bytes written')
    expect(readConfig(dir)).toMatchObject({ rootKey: { type: 'passphrase', kdf: 'pbkdf2', iterations: 1000 } })
    expect(readConfig(dir).rootChange).toBeUndefined()
    expect(statSync(join(dir, 'kms-proxy.json')).mode & 0o777).toBe(0o644)
    expect([...files.keys()].map((f) => readFileSync(f))).toEqual(before)
    await decryptsAll(dir, files, { KMS_PROXY_PASSPHRASE: NEW })
    const refused = await kp(dir, ['decrypt', '-i', [...files.keys()][0]!])
    expect(refused.code).toBe(EXIT.ROOT_KEY)
    expect(refused.stderr).toMatch(/^kms-proxy decrypt: the root key refused/)
    // New KEKs are made under the new passphrase.
    ok(await kp(dir, ['rotate'], { KMS_PROXY_PASSPHRASE: NEW }))
    expect(recordsByRoot(dir)).toEqual(new Map([['default', 0], ['default-2', 5]]))
  })

  it('on a terminal the new passphrase is typed twice, not echoed', async () => {
    const { dir, files } = await chainWith('typed', 2, 1)
    const pty = fileURLToPath(new URL('./pty_run.py', import.meta.url))
    const command = [process.execPath, bundle, 'root', 'change', '--root', 'passphrase', ...FAST_KDF]
    const r = await spawnCollect('python3', [pty, JSON.stringify(command), JSON.stringify([NEW, NEW])], { cwd: dir, env: baseEnv(dir) })
    const screen = r.stdout.toString()
    expect(r.code, screen).toBe(EXIT.OK)
    expect(screen).toContain('New passphrase: ')
    expect(screen).toContain('New passphrase (again): ')
    expect(screen).toContain('KEKs         2 re-wrapped under "default-2"')
    expect(screen).not.toContain(NEW)
    await decryptsAll(dir, files, { KMS_PROXY_PASSPHRASE: NEW })
  })

  it('a new passphrase that is missing is a usage error and changes nothing', async () => {
    const { dir } = await chainWith('no-new-passphrase', 2, 10)
    const config = readFileSync(join(dir, 'kms-proxy.json'), 'utf8')
    const store = readFileSync(storeFile(dir), 'utf8')
    const r = await kp(dir, ['root', 'change', '--root', 'passphrase', ...FAST_KDF])
    expect(r.code).toBe(EXIT.USAGE)
    expect(r.stderr).toContain('KMS_PROXY_NEW_PASSPHRASE')
    expect(readFileSync(join(dir, 'kms-proxy.json'), 'utf8')).toBe(config)
    expect(readFileSync(storeFile(dir), 'utf8')).toBe(store)
  })

  it('passphrase to AWS KMS; killed part way, then between the store change and the config write, the same command finishes', async () => {
    const N = 40
    const { dir, files } = await chainWith('to-kms', N, 25)
    const oldConfig = readConfig(dir)
    const args = ['root', 'change', ...awsArgs(), '--json']
    // A real SIGKILL, when the store file shows some KEKs wrapped under the new root and not all.
    const child = spawn(process.execPath, [bundle, ...args], { cwd: dir, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...baseEnv(dir), ...AWS_ENV }, stdio: 'ignore' })
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
    let seen = 0
    let done = false
    void exited.then(() => (done = true))
    for (const started = Date.now(); !done && Date.now() - started < 60_000; ) {
      try {
        seen = recordsByRoot(dir).get('default-2') ?? 0
      } catch {
        seen = 0 // read while being renamed over: try again
      }
      if (seen >= 5) {
        child.kill('SIGKILL')
        break
      }
      await new Promise((r) => setTimeout(r, 5))
    }
    expect(await exited).toBeNull() // killed, not finished
    const killedAt = recordsByRoot(dir).get('default-2')!
    expect(killedAt).toBeGreaterThanOrEqual(5)
    expect(killedAt).toBeLessThan(N)
    // The config still names the old root, with the change it began; the old root still opens everything.
    const intent = readFileSync(join(dir, 'kms-proxy.json'), 'utf8')
    expect(JSON.parse(intent)).toEqual({ ...oldConfig, rootChange: { op: 'change', from: 'default', name: 'default-2', rootKey: { type: 'aws-kms', keyId, region: REGION, endpoint: moto.endpoint } } })
    await decryptsAll(dir, new Map([...files].slice(0, 2)), {})
    const list = ok(await kp(dir, ['root', 'list'], AWS_ENV))
    expect(list).toMatch(/^default\s+passphrase-pbkdf2\s+active\s+held$/m)
    expect(list).toMatch(/^default-2\s+aws-kms\s+adding\s+held$/m)
    expect(list).toContain('unfinished: root change of "default" to "default-2" (aws-kms): run the same `kms-proxy root change` again to finish')
    expect(ok(await kp(dir, ['status'], AWS_ENV))).toContain('unfinished: root change of "default" to "default-2" (aws-kms): run the same `kms-proxy root change` again to finish')
    // Another root command meanwhile is refused: the config names the unfinished one.
    const other = await kp(dir, ['root', 'add', 'recovery', '--root', 'passphrase', ...FAST_KDF], { KMS_PROXY_NEW_PASSPHRASE: RECOVERY, ...AWS_ENV })
    expect(other.code).toBe(EXIT.USAGE)
    expect(other.stderr).toContain('an unfinished root change')

    const started = performance.now()
    const rerun = JSON.parse(ok(await kp(dir, args, AWS_ENV)))
    const ms = performance.now() - started
    expect(rerun).toMatchObject({ op: 'change', from: 'default', name: 'default-2', resumed: true, keks: N, wrapped: N - killedAt, deleted: N })
    expect(rerun.rootKeyWraps).toBe(N - killedAt)
    expect(readConfig(dir)).toEqual({ ...oldConfig, rootKey: { type: 'aws-kms', keyId, region: REGION, endpoint: moto.endpoint } })
    expect(recordsByRoot(dir)).toEqual(new Map([['default', 0], ['default-2', N]]))
    // Every KEK unwraps under the new root, and every file decrypts with it alone.
    const kms = awsKmsRootKey({ keyId, region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint })
    const records = await fileStore(storeFile(dir)).listKeks('default')
    expect(records).toHaveLength(N)
    for (const r of records) await kms.unwrapKek(r.wrapped, kekAad('default', r.id))
    await decryptsAll(dir, files, { KMS_PROXY_PASSPHRASE: undefined, ...AWS_ENV })
    console.log(`root change resumed after a kill at ${killedAt} of ${N} KEKs: ${rerun.wrapped} re-wrapped, ${rerun.rootKeyUnwraps} unwraps, ${rerun.rootKeyWraps} wraps, ${Math.round(ms)} ms`)

    // The store changed and the config not yet written: the config as the kill left it, again.
    writeFileSync(join(dir, 'kms-proxy.json'), intent, { mode: 0o644 })
    const last = JSON.parse(ok(await kp(dir, args, AWS_ENV)))
    expect(last).toMatchObject({ resumed: true, wrapped: 0, deleted: 0, rootKeyWraps: 0 })
    expect(readConfig(dir)).toEqual({ ...oldConfig, rootKey: { type: 'aws-kms', keyId, region: REGION, endpoint: moto.endpoint } })
    await decryptsAll(dir, new Map([...files].slice(0, 1)), { KMS_PROXY_PASSPHRASE: undefined, ...AWS_ENV })
  }, 120_000)
})

describe('an unfinished root add', () => {
  it('a rerun with another new passphrase is refused before anything is written; with the same one it finishes; root remove of the root being added gives an add up', async () => {
    const { dir, files } = await chainWith('rerun-other-passphrase', 6, 3)
    // The state a root add killed after two wraps leaves: the head lists "recovery" as adding,
    // two KEKs have its wrap, and the config records the command.
    const root = passphraseRootKey({ passphrase: RECOVERY, kdf: 'pbkdf2', iterations: 1000 })
    let wraps = 0
    const failing = { ...root, kind: root.kind, wrapKek: (kek: CryptoKey, aad: Uint8Array) => (++wraps > 2 ? Promise.reject(new Error('killed')) : root.wrapKek!(kek, aad)) }
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: OLD, kdf: 'pbkdf2', iterations: 1000 }), store: fileStore(storeFile(dir)) })
    await expect(chain.addRoot('recovery', failing)).rejects.toThrow()
    expect(recordsByRoot(dir).get('recovery')).toBe(2)
    const pending = { op: 'add', name: 'recovery', rootKey: { type: 'passphrase', kdf: 'pbkdf2', iterations: 1000 } }
    writeFileSync(join(dir, 'kms-proxy.json'), `${JSON.stringify({ ...readConfig(dir), rootChange: pending }, null, 2)}\n`)
    const store = readFileSync(storeFile(dir), 'utf8')
    const config = readFileSync(join(dir, 'kms-proxy.json'), 'utf8')
    const args = ['root', 'add', 'recovery', '--root', 'passphrase', ...FAST_KDF]
    const other = await kp(dir, args, { KMS_PROXY_NEW_PASSPHRASE: NEW })
    expect(other.code).toBe(EXIT.ROOT_KEY)
    expect(other.stderr).toContain('the new root does not open the wraps the unfinished command already wrote under "recovery"')
    expect(readFileSync(storeFile(dir), 'utf8')).toBe(store)
    expect(readFileSync(join(dir, 'kms-proxy.json'), 'utf8')).toBe(config)
    const out = ok(await kp(dir, args, { KMS_PROXY_NEW_PASSPHRASE: RECOVERY }))
    expect(out).toContain('finished an unfinished root add of "recovery" (passphrase)')
    expect(out).toContain('KEKs         4 wrapped under "recovery"')
    expect(recordsByRoot(dir)).toEqual(new Map([['default', 6], ['recovery', 6]]))
    expect(readConfig(dir).rootChange).toBeUndefined()
    await decryptsAll(dir, files, { KMS_PROXY_PASSPHRASE: undefined, KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY })
    const status = JSON.parse(ok(await kp(dir, ['status', '--json'], { KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY })))
    expect(status.keks.map((k: { roots: string[] }) => k.roots)).toEqual(Array(6).fill(['default', 'recovery']))

    // An add that cannot finish (its root refuses every wrap) is given up by removing its root.
    const broken = { ...root, wrapKek: () => Promise.reject(new Error('refused')) }
    const opened = await KeyChain.open({ roots: { default: passphraseRootKey({ passphrase: OLD, kdf: 'pbkdf2', iterations: 1000 }), recovery: root }, store: fileStore(storeFile(dir)) })
    await expect(opened.addRoot('spare', broken)).rejects.toThrow()
    const before = readConfig(dir)
    writeFileSync(join(dir, 'kms-proxy.json'), `${JSON.stringify({ ...before, rootChange: { op: 'add', name: 'spare', rootKey: { type: 'passphrase', kdf: 'pbkdf2', iterations: 1000 } } }, null, 2)}\n`)
    expect(ok(await kp(dir, ['root', 'list'], { KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY }))).toMatch(/^spare\s+passphrase-pbkdf2\s+adding\s+no$/m)
    const gaveUp = ok(await kp(dir, ['root', 'remove', 'spare'], { KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY }))
    expect(gaveUp).toContain('gave up the unfinished root add of "spare" (passphrase)')
    expect(readConfig(dir)).toEqual(before)
    expect(JSON.parse(ok(await kp(dir, ['root', 'list', '--json'], { KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY }))).roots.map((r: { name: string }) => r.name)).toEqual(['default', 'recovery'])
  })
})

describe('root add, list, remove', () => {
  it('adds a recovery passphrase, either root decrypts, removes the first, and refuses to remove the last', async () => {
    const { dir, files } = await chainWith('add-remove', 3, 1)
    const out = ok(await kp(dir, ['root', 'add', 'recovery', '--root', 'passphrase', ...FAST_KDF], { KMS_PROXY_NEW_PASSPHRASE: RECOVERY }))
    expect(out).toContain('added root "recovery" (passphrase) to chain "default"')
    expect(out).toContain('KEKs         3 wrapped under "recovery"; 0 wraps deleted')
    expect(out).toMatch(/^root calls   [45] unwraps, 3 wraps$/m)
    expect(readConfig(dir)).toMatchObject({
      roots: [
        { name: 'default', type: 'passphrase', kdf: 'pbkdf2', iterations: 1000 },
        { name: 'recovery', type: 'passphrase', kdf: 'pbkdf2', iterations: 1000 },
      ],
    })
    expect(readConfig(dir).rootKey).toBeUndefined()
    // The first passphrase root reads KMS_PROXY_PASSPHRASE; each reads KMS_PROXY_PASSPHRASE_<NAME>.
    expect(ok(await kp(dir, ['root', 'list'], { KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY }))).toMatch(
      /^NAME\s+KIND\s+STATE\s+HELD\ndefault\s+passphrase-pbkdf2\s+active\s+held\nrecovery\s+passphrase-pbkdf2\s+active\s+held\n$/,
    )
    expect(JSON.parse(ok(await kp(dir, ['root', 'list', '--json'], { KMS_PROXY_PASSPHRASE: undefined })))).toEqual({
      roots: [
        { name: 'default', kind: 'passphrase-pbkdf2', state: 'active', held: false, type: 'passphrase' },
        { name: 'recovery', kind: 'passphrase-pbkdf2', state: 'active', held: false, type: 'passphrase' },
      ],
    })
    await decryptsAll(dir, files, { KMS_PROXY_PASSPHRASE: undefined, KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY })
    await decryptsAll(dir, files, {})
    // status --check proves each root at hand on its own wrap of the primary; a wrong one is exit 4.
    const checked = JSON.parse(ok(await kp(dir, ['status', '--check', '--json'], { KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY })))
    expect(checked.rootKeyCalls).toEqual({ wraps: 0, unwraps: 2 })
    expect(checked.roots).toEqual([{ name: 'default', type: 'passphrase' }, { name: 'recovery', type: 'passphrase' }])
    expect((await kp(dir, ['status', '--check'], { KMS_PROXY_PASSPHRASE_RECOVERY: NEW })).code).toBe(EXIT.ROOT_KEY)
    // A rotation wraps the new KEK under every root: it needs both.
    const rotateOne = await kp(dir, ['rotate'])
    expect(rotateOne.code).toBe(EXIT.USAGE)
    expect(rotateOne.stderr).toContain('KMS_PROXY_PASSPHRASE_RECOVERY')
    ok(await kp(dir, ['rotate'], { KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY }))
    expect(recordsByRoot(dir)).toEqual(new Map([['default', 4], ['recovery', 4]]))

    // Removing a root needs none of its secrets: a lost one can go.
    const removed = ok(await kp(dir, ['root', 'remove', 'default'], { KMS_PROXY_PASSPHRASE: undefined, KMS_PROXY_PASSPHRASE_RECOVERY: RECOVERY }))
    expect(removed).toContain('removed root "default" from chain "default"')
    expect(removed).toContain('KEKs         0 re-wrapped; 4 wraps under "default" deleted')
    expect(readConfig(dir).roots).toEqual([{ name: 'recovery', type: 'passphrase', kdf: 'pbkdf2', iterations: 1000 }])
    expect(recordsByRoot(dir)).toEqual(new Map([['default', 0], ['recovery', 4]]))
    const stale = await kp(dir, ['decrypt', '-i', [...files.keys()][0]!], { KMS_PROXY_PASSPHRASE: OLD, KMS_PROXY_PASSPHRASE_RECOVERY: undefined })
    expect(stale.code).toBe(EXIT.ROOT_KEY)
    // The only passphrase root of the config reads KMS_PROXY_PASSPHRASE too.
    await decryptsAll(dir, files, { KMS_PROXY_PASSPHRASE: RECOVERY })
    const last = await kp(dir, ['root', 'remove', 'recovery'], { KMS_PROXY_PASSPHRASE: RECOVERY })
    expect(last.code).toBe(EXIT.USAGE)
    expect(last.stderr).toContain('the chain\'s last root')
    const unknown = await kp(dir, ['root', 'remove', 'nope'], { KMS_PROXY_PASSPHRASE: RECOVERY })
    expect(unknown.code).toBe(EXIT.USAGE)
    expect(unknown.stderr).toContain('no root named "nope"')
  })

  it('bad command lines are usage errors', async () => {
    const { dir } = await chainWith('usage', 1, 10)
    for (const args of [['root'], ['root', 'rename'], ['root', 'add'], ['root', 'add', 'bad name'], ['root', 'add', 'default', '--root', 'passphrase'], ['root', 'remove']]) {
      const r = await kp(dir, args, { KMS_PROXY_NEW_PASSPHRASE: RECOVERY })
      expect(r.code, args.join(' ')).toBe(EXIT.USAGE)
      expect(r.stderr, args.join(' ')).toMatch(/^kms-proxy root: /)
    }
  })
})
