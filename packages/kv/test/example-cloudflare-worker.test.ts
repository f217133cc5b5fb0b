/**
 * examples/cloudflare-worker: its behaviour in Miniflare (real workerd, real KV binding), and its
 * README followed as written: the `sh` blocks run literally in bash from a temporary copy of the
 * repository (see example-readme.ts; the copy leaves out package.json, whose `workspace:`
 * dependencies only resolve inside this workspace), with only the port changed. Stated rule: the
 * block whose first line starts with `# Deploy` is not run (it needs a Cloudflare account and
 * network); the test asserts that it is there and what it says.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import * as esbuild from 'esbuild'
import { Miniflare } from 'miniflare'
import { readmeBlocks } from '../../testkit/test/readme-blocks.ts'
import { startMoto, type Moto } from '../../kms/test/fakes/moto.ts'
import { freePort, groupGone, killGroup, leftInGroup, listening, matchesShown, repoRoot, requireBuilt, runBash, shBlocks, startBlock, tempCheckout } from './example-readme.ts'

/** Miniflare's KV binding as seen from Node (its types need @cloudflare/workers-types, not installed). */
type NodeKv = { list(options?: { prefix?: string; cursor?: string }): Promise<{ keys: Array<{ name: string }>; list_complete: boolean; cursor?: string }>; get(key: string, type: 'text'): Promise<string | null>; put(key: string, value: string): Promise<unknown> }

const example = join(repoRoot, 'examples', 'cloudflare-worker')
const readme = join(example, 'README.md')
const scratch = mkdtempSync(join(tmpdir(), 'kms-proxy-worker-example-'))
const disposers: Array<() => unknown> = []
afterAll(async () => {
  for (const dispose of disposers) await Promise.resolve().then(dispose).catch(() => {}) // some were disposed by their test already
  rmSync(scratch, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
})
const randomKey = () => Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64')
const ROOT_KEY = randomKey()

/** Flips one bit in the middle of the base64url body of a text-form encrypted data. */
function tamper(encrypted: string): string {
  const i = Math.floor(encrypted.length / 2)
  const c = encrypted[i] === 'A' ? 'B' : 'A'
  return encrypted.slice(0, i) + c + encrypted.slice(i + 1)
}

type Call = (path: string, body: unknown) => Promise<{ status: number; body: any }>

async function exerciseApi(call: Call): Promise<string> {
  const text = 'héllo, wörld ' + 'x'.repeat(100)
  const enc = await call('/encrypt', { text })
  expect(enc.status).toBe(200)
  expect(enc.body.encrypted).toMatch(/^kp1\./)
  const dec = await call('/decrypt', { encrypted: enc.body.encrypted })
  expect(dec).toEqual({ status: 200, body: { text } })
  const tampered = await call('/decrypt', { encrypted: tamper(enc.body.encrypted) })
  expect(tampered.status).toBe(400)
  expect(tampered.body.error).toBe('ERR_DECRYPT')
  expect(JSON.stringify(tampered.body)).not.toContain('héllo')
  const truncated = await call('/decrypt', { encrypted: enc.body.encrypted.slice(0, 20) })
  expect(truncated).toMatchObject({ status: 400, body: { error: 'ERR_FORMAT' } })
  expect(await call('/encrypt', { nope: 1 })).toMatchObject({ status: 400, body: { error: 'ERR_REQUEST' } })
  return enc.body.encrypted
}

const credentials = { accessKeyId: 'AKIDEXAMPLEWORKER', secretAccessKey: 'worker-example-secret' }
let script: string
let mf: Miniflare
let log = ''
let moto: Moto
let kmsBindings: Record<string, string>

/**
 * One workerd (Miniflare) runs the example once per configuration under test, each a worker of
 * its own with its own bindings; `other-key` shares `main`'s KV namespace with another ROOT_KEY.
 */
beforeAll(async () => {
  requireBuilt('core', 'kv', 'kms')
  const [built, started] = await Promise.all([
    esbuild.build({ entryPoints: [join(example, 'worker.mjs')], bundle: true, format: 'esm', platform: 'browser', target: 'es2022', write: false, absWorkingDir: repoRoot, logLevel: 'error' }),
    startMoto(credentials),
  ])
  script = built.outputFiles[0]!.text
  moto = started
  disposers.push(() => moto.close())
  kmsBindings = {
    ROOT_KEY_TYPE: 'aws-kms',
    AWS_KMS_KEY_ID: (await moto.kms('CreateKey', {})).KeyMetadata.KeyId,
    AWS_REGION: 'eu-central-1',
    AWS_KMS_ENDPOINT: moto.endpoint,
    AWS_ACCESS_KEY_ID: credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
  }
  const { AWS_SECRET_ACCESS_KEY: _, ...kmsPartial } = kmsBindings
  const configs: Record<string, [Record<string, string>, string]> = {
    main: [{ ROOT_KEY }, 'main'],
    'other-key': [{ ROOT_KEY: randomKey() }, 'main'],
    missing: [{}, 'missing'],
    malformed: [{ ROOT_KEY: 'c2hvcnQ=' }, 'malformed'],
    rotation: [{ ROOT_KEY, MAX_WRAPS_PER_KEK: '4' }, 'rotation'],
    'bad-number': [{ ROOT_KEY, MAX_WRAPS_PER_KEK: 'lots' }, 'bad-number'],
    age: [{ ROOT_KEY, MAX_KEK_AGE_MS: '200' }, 'age'],
    kms: [kmsBindings, 'kms'],
    'kms-partial': [kmsPartial, 'kms-partial'],
    'kms-down': [{ ...kmsBindings, AWS_KMS_ENDPOINT: `http://127.0.0.1:${await freePort()}/` }, 'kms-down'],
  }
  mf = new Miniflare({
    workers: [
      ...Object.entries(configs).map(([name, [bindings, namespace]]) => ({ name, modules: true, script, compatibilityDate: '2026-05-01', kvNamespaces: { KEYS: namespace }, bindings })),
      { name: 'no-kv', modules: true, script, compatibilityDate: '2026-05-01', bindings: { ROOT_KEY } },
    ],
    handleRuntimeStdio(stdout: Readable, stderr: Readable) {
      stdout.on('data', (d: Buffer) => (log += d))
      stderr.on('data', (d: Buffer) => (log += d))
    },
  })
  disposers.push(() => mf.dispose())
}, 60_000)

/** The example running under one of the configurations above. */
function worker(name: string) {
  const call: Call = async (path, body) => {
    const r = await (await mf.getWorker(name)).fetch(`http://localhost${path}`, { method: 'POST', body: JSON.stringify(body) })
    return { status: r.status, body: await r.json() }
  }
  const kv = async () => (await mf.getKVNamespace('KEYS', name)) as unknown as NodeKv
  return { call, kv }
}

/** The log lines of every worker that match `pattern` (after a moment for workerd's pipe to deliver them). */
async function logged(pattern: RegExp): Promise<string[]> {
  await new Promise((r) => setTimeout(r, 300))
  return log.split('\n').filter((line) => pattern.test(line))
}

it('in Miniflare on a real KV binding: round trip, tampered input is 400 ERR_DECRYPT, the records are in KV', async () => {
  const w = worker('main')
  await exerciseApi(w.call)
  expect((await (await mf.getWorker('main')).fetch('http://localhost/')).status).toBe(404)
  const names = (await (await w.kv()).list()).keys.map((k) => k.name)
  expect(names.some((n) => n === 'kms-proxy:default:head')).toBe(true)
  expect(names.some((n) => /^kms-proxy:default:kek:\d+$/.test(n))).toBe(true)
}, 30_000)

it('without the ROOT_KEY secret, with a malformed one, or without the KEYS binding: 500 ERR_CONFIG "misconfigured", and one log line that names the binding and shows no secret', async () => {
  const r = await worker('missing').call('/encrypt', { text: 'hello' })
  expect(r).toEqual({ status: 500, body: { error: 'ERR_CONFIG', message: 'the worker is misconfigured: see its log' } })
  expect(await logged(/ROOT_KEY secret/)).toEqual(['kms-proxy worker misconfigured: the ROOT_KEY secret is not set (wrangler secret put ROOT_KEY; locally, in .dev.vars)'])
  expect((await worker('malformed').call('/decrypt', { encrypted: 'kp1.AAAA' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/ROOT_KEY must be base64 of 32 bytes/)).toHaveLength(1)
  expect(log).not.toContain('c2hvcnQ=')
  expect((await worker('no-kv').call('/encrypt', { text: 'x' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/the KEYS KV namespace is not bound/)).toHaveLength(1)
}, 30_000)

it('a ROOT_KEY that cannot unwrap the namespace\'s primary KEK: 500 ERR_CONFIG and a log line saying so, not 400', async () => {
  expect((await worker('main').call('/encrypt', { text: 'hello' })).status).toBe(200)
  expect(await worker('other-key').call('/encrypt', { text: 'hello' })).toMatchObject({ status: 500, body: { error: 'ERR_CONFIG' } })
  expect(await logged(/the root key cannot unwrap the primary KEK of chain "default" in KEYS/)).toHaveLength(1)
}, 30_000)

it('rotation: MAX_WRAPS_PER_KEK 4 makes a new KEK every 4 encryptions (counted per isolate), every record still decrypts; a bad number is ERR_CONFIG', async () => {
  const w = worker('rotation')
  const encrypted: string[] = []
  for (let i = 0; i < 12; i++) encrypted.push((await w.call('/encrypt', { text: `record ${i}` })).body.encrypted)
  const keks = (await (await w.kv()).list({ prefix: 'kms-proxy:default:kek:' })).keys
  expect(keks.length).toBeGreaterThanOrEqual(3)
  for (let i = 0; i < 12; i++) expect((await w.call('/decrypt', { encrypted: encrypted[i] })).body).toEqual({ text: `record ${i}` })
  expect((await worker('bad-number').call('/encrypt', { text: 'x' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/MAX_WRAPS_PER_KEK must be a positive integer/)).toHaveLength(1)
}, 30_000)

it('rotation by age: MAX_KEK_AGE_MS 200 makes a new KEK for an encryption after the primary turned 200 ms old', async () => {
  const w = worker('age')
  const first = (await w.call('/encrypt', { text: 'old' })).body.encrypted
  await new Promise((r) => setTimeout(r, 400))
  const second = (await w.call('/encrypt', { text: 'new' })).body.encrypted
  expect((await (await w.kv()).list({ prefix: 'kms-proxy:default:kek:' })).keys.length).toBeGreaterThanOrEqual(2)
  // The KEK id is bytes 1..5 of the encrypted data: the two differ.
  const kekId = (e: string) => Buffer.from(e.slice(4), 'base64url').subarray(1, 5).toString('hex')
  expect(kekId(first)).not.toBe(kekId(second))
  expect((await w.call('/decrypt', { encrypted: first })).body).toEqual({ text: 'old' })
}, 30_000)

describe('ROOT_KEY_TYPE "aws-kms": the KEKs wrapped by AWS KMS (moto on loopback) through fetch', () => {
  it('round trip; the KEK record in KV names the aws-kms root', async () => {
    const w = worker('kms')
    await exerciseApi(w.call)
    const kv = await w.kv()
    const name = (await kv.list({ prefix: 'kms-proxy:default:kek:' })).keys[0]!.name
    expect(JSON.parse((await kv.get(name, 'text'))!).rootKind).toBe('aws-kms')
  }, 30_000)

  it('KMS unreachable (nothing listens on its port): 503 ERR_ROOT_KEY, retryable, logged in one line', async () => {
    expect(await worker('kms-down').call('/encrypt', { text: 'x' })).toMatchObject({ status: 503, body: { error: 'ERR_ROOT_KEY' } })
    expect(await logged(/^\/encrypt: ERR_ROOT_KEY: /)).toHaveLength(1)
  }, 30_000)

  it('a missing credential is ERR_CONFIG naming it (and not its value)', async () => {
    expect(await worker('kms-partial').call('/encrypt', { text: 'x' })).toMatchObject({ status: 500, body: { error: 'ERR_CONFIG' } })
    expect(await logged(/ROOT_KEY_TYPE is aws-kms but AWS_SECRET_ACCESS_KEY is not set/)).toHaveLength(1)
    expect(log).not.toContain(credentials.secretAccessKey)
  }, 30_000)
})

it('.dev.vars, .wrangler/, root.key and kv-backup.json are git-ignored in examples/cloudflare-worker', () => {
  const paths = ['.dev.vars', '.wrangler/state/x', 'root.key', 'kv-backup.json'].map((p) => `examples/cloudflare-worker/${p}`)
  const ignored = execFileSync('git', ['check-ignore', ...paths], { cwd: repoRoot, encoding: 'utf8' })
  expect(ignored.trim().split('\n')).toHaveLength(4)
})

describe('examples/cloudflare-worker README, as written (wrangler dev, offline)', () => {
  let checkout: string
  let port: number
  let blocks: Array<{ title: string; commands: string[] }>
  const env: NodeJS.ProcessEnv = { ...process.env, WRANGLER_SEND_METRICS: 'false', NO_COLOR: '1', WRANGLER_LOG_PATH: join(scratch, 'wrangler-logs') }
  const at = (prefix: string) => blocks.find((b) => b.title.startsWith(prefix))?.commands ?? []
  const local = (commands: string[]) => commands.map((c) => c.replaceAll('8787', String(port)))
  let encrypted: string

  beforeAll(async () => {
    checkout = tempCheckout(scratch, 'cloudflare-worker', ['README.md', 'worker.mjs', 'wrangler.toml', 'backup.mjs'])
    port = await freePort()
    blocks = shBlocks(readme, scratch)
  })

  it('the Build and Deploy blocks are there and are not run: pnpm build (checked by the built files); namespace, kept secret, deploy, remote backup and restore', () => {
    expect(at('# Build')).toEqual(['pnpm build'])
    requireBuilt('core', 'kv', 'kms')
    expect(at('# Deploy')).toEqual([
      'pnpm exec wrangler kv namespace create KEYS',
      'test -e root.key || (umask 077 && openssl rand -base64 32 > root.key)',
      'pnpm exec wrangler secret put ROOT_KEY < root.key',
      'pnpm exec wrangler deploy',
      'node backup.mjs --remote > kv-backup.json',
      'pnpm exec wrangler kv bulk put kv-backup.json --binding KEYS --remote',
    ])
  })

  it('wrangler dev with .dev.vars serves locally, curl prints what the README shows, SIGTERM stops it', async () => {
    const serve = local(at('# Serve locally'))
    expect(serve[0]).toBe('cd examples/cloudflare-worker')
    const server = await startBlock(serve, checkout, env, /Ready on http/, 60_000)
    disposers.push(() => killGroup(server.shell))
    try {
      expect(server.stdout() + server.stderr()).toMatch(/Ready on http/)
      expect(server.stdout() + server.stderr()).toMatch(/Using secrets defined in \.dev\.vars/)
      expect(server.stdout() + server.stderr()).not.toContain(readFileSync(join(checkout, 'examples', 'cloudflare-worker', '.dev.vars'), 'utf8').slice(9, 30))
      const curl = local(at('# In another terminal'))
      const run = await runBash(curl.join('\n'), checkout, env)
      expect(run.stderr).toBe('')
      const all = readmeBlocks(readme)
      const i = all.findIndex((b) => b.lang === 'sh' && b.text.startsWith('# In another terminal'))
      const shown = all[i + 1]!.text.trimEnd().split('\n')
      const lines = run.stdout.trimEnd().split('\n')
      expect(lines.length).toBe(shown.length)
      lines.forEach((line, k) => expect(matchesShown(shown[k]!, line), `${line} vs ${shown[k]}`).toBe(true))
      encrypted = JSON.parse(lines[0]!).encrypted
    } finally {
      process.kill(server.pid, 'SIGTERM')
      const gone = await groupGone(server.shell, 15_000)
      expect(gone, gone ? '' : `left running: ${leftInGroup(server.shell)}`).toBe(true)
      expect(await listening(port)).toBe(false)
    }
  }, 90_000)

  it('the backup block writes kv-backup.json; restored into an empty local namespace, the data decrypts again', async () => {
    const dir = join(checkout, 'examples', 'cloudflare-worker')
    const run = await runBash(at('# Back up').join('\n'), dir, env, 60_000)
    expect(run.code, run.stderr).toBe(0)
    const backup = JSON.parse(readFileSync(join(dir, 'kv-backup.json'), 'utf8')) as Array<{ key: string; value: string }>
    expect(backup.map((e) => e.key)).toContain('kms-proxy:default:head')
    expect(backup.filter((e) => /^kms-proxy:default:kek:\d+$/.test(e.key)).length).toBeGreaterThanOrEqual(1)
    // Lose the local state, then restore it as the README says.
    rmSync(join(dir, '.wrangler'), { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
    const restore = await runBash(at('# Restore').join('\n'), dir, env, 60_000)
    expect(restore.code, restore.stderr).toBe(0)
    const rootKey = /^ROOT_KEY=(.*)$/m.exec(readFileSync(join(dir, '.dev.vars'), 'utf8'))![1]!
    const id = /^id = "(.*)"$/m.exec(readFileSync(join(dir, 'wrangler.toml'), 'utf8'))![1]!
    const mf = new Miniflare({ modules: true, script, compatibilityDate: '2026-05-01', kvNamespaces: { KEYS: id }, kvPersist: join(dir, '.wrangler', 'state', 'v3', 'kv'), bindings: { ROOT_KEY: rootKey } })
    disposers.push(() => mf.dispose())
    const r = await mf.dispatchFetch('http://localhost/decrypt', { method: 'POST', body: JSON.stringify({ encrypted }) })
    expect(await r.json()).toEqual({ text: 'hello' })
  }, 90_000)
})
