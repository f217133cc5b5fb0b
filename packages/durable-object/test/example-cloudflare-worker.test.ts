/**
 * examples/cloudflare-worker: its behaviour in Miniflare (real workerd, the real KeyChainObject
 * Durable Object by default, a real KV binding with STORE=kv), and its
 * README followed as written: the `sh` blocks run literally in bash from a temporary copy of the
 * repository (see example-readme.ts; the copy leaves out package.json, whose `workspace:`
 * dependencies only resolve inside this workspace), with only the port changed. Stated rule: the
 * block whose first line starts with `# Deploy` is not run (it needs a Cloudflare account and
 * network); the test asserts that it is there and what it says.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable } from 'node:stream'
import * as esbuild from 'esbuild'
import { Miniflare } from 'miniflare'
import { readmeBlocks } from '../../testkit/test/readme-blocks.ts'
import { startMoto, type Moto } from '../../kms/test/fakes/moto.ts'
import { freePort, groupGone, killGroup, leftInGroup, listening, matchesShown, repoRoot, requireBuilt, runBash, shBlocks, startBlock, tempCheckout } from '../../kv/test/example-readme.ts'
import { durableObjectStore, type DurableObjectNamespaceLike } from '../src/index.ts'

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
const BACKUP_TOKEN = randomKey()

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
 * its own with its own bindings and its own KeyChainObject class (so its own objects);
 * `other-key` binds `main`'s class with another ROOT_KEY, `rotation-2` binds `rotation`'s.
 */
beforeAll(async () => {
  requireBuilt('core', 'durable-object', 'kv', 'kms')
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
  // [bindings, the worker whose KeyChainObject class KEYS binds]
  const configs: Record<string, [Record<string, string>, string]> = {
    main: [{ ROOT_KEY }, 'main'],
    'other-key': [{ ROOT_KEY: randomKey() }, 'main'],
    missing: [{}, 'missing'],
    malformed: [{ ROOT_KEY: 'c2hvcnQ=' }, 'malformed'],
    rotation: [{ ROOT_KEY, MAX_WRAPS_PER_KEK: '4' }, 'rotation'],
    'rotation-2': [{ ROOT_KEY, MAX_WRAPS_PER_KEK: '4' }, 'rotation'],
    'bad-number': [{ ROOT_KEY, MAX_WRAPS_PER_KEK: 'lots' }, 'bad-number'],
    'bad-store': [{ ROOT_KEY, STORE: 'sqlite' }, 'bad-store'],
    age: [{ ROOT_KEY, MAX_KEK_AGE_MS: '200' }, 'age'],
    kms: [kmsBindings, 'kms'],
    'kms-partial': [kmsPartial, 'kms-partial'],
    'kms-down': [{ ...kmsBindings, AWS_KMS_ENDPOINT: `http://127.0.0.1:${await freePort()}/` }, 'kms-down'],
    'backup-a': [{ ROOT_KEY, BACKUP_TOKEN }, 'backup-a'],
    'backup-b': [{ ROOT_KEY, BACKUP_TOKEN }, 'backup-b'],
    'backup-short': [{ ROOT_KEY, BACKUP_TOKEN: 'too-short' }, 'backup-short'],
  }
  const base = { modules: true, script, compatibilityDate: '2026-05-01' }
  mf = new Miniflare({
    workers: [
      ...Object.entries(configs).map(([name, [bindings, owner]]) => ({
        ...base,
        name,
        durableObjects: { KEYS: { className: 'KeyChainObject', useSQLite: true, ...(owner === name ? {} : { scriptName: owner }) } },
        bindings,
      })),
      { ...base, name: 'no-keys', bindings: { ROOT_KEY } },
      { ...base, name: 'kv', kvNamespaces: { KEYS: 'kv' }, bindings: { ROOT_KEY, STORE: 'kv' } },
      { ...base, name: 'kv-unbound', bindings: { ROOT_KEY, STORE: 'kv' } },
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
  // The worker's own objects, read from Node through Miniflare's binding with the same store.
  const store = async () => durableObjectStore((await mf.getDurableObjectNamespace('KEYS', name)) as unknown as DurableObjectNamespaceLike)
  return { call, kv, store }
}

/** The log lines of every worker that match `pattern` (after a moment for workerd's pipe to deliver them). */
async function logged(pattern: RegExp): Promise<string[]> {
  await new Promise((r) => setTimeout(r, 300))
  return log.split('\n').filter((line) => pattern.test(line))
}

/** The KEK id of a text-form encrypted data: bytes 1..5 after `kp1.`. */
const kekId = (e: string) => Buffer.from(e.slice(4), 'base64url').subarray(1, 5).toString('hex')

it('on its Durable Object (the default): round trip, tampered input is 400 ERR_DECRYPT, the head and KEK records are in the object', async () => {
  const w = worker('main')
  const encrypted = await exerciseApi(w.call)
  expect((await (await mf.getWorker('main')).fetch('http://localhost/')).status).toBe(404)
  const store = await w.store()
  const head = await store.getHead('default')
  expect(head?.value.primary).toBe(parseInt(kekId(encrypted), 16))
  const records = await store.listKeks('default')
  expect(records.map((r) => r.id)).toContain(head!.value.primary)
  expect(records[0]!.rootKind).toBe('aes')
  // Nothing of it went to a KV namespace: the worker has none.
  await expect(mf.getKVNamespace('KEYS', 'main')).rejects.toThrow()
}, 30_000)

it('BACKUP_TOKEN: GET /backup gives the head and wrapped KEKs (no key, no secret); POST /restore puts them into an empty object, whose worker then decrypts the old data; a wrong token is 401, a restore over a chain 409', async () => {
  const send = async (name: string, method: string, path: string, token: string | undefined, body?: unknown) => {
    const r = await (await mf.getWorker(name)).fetch(`http://localhost${path}`, { method, headers: token === undefined ? {} : { authorization: `Bearer ${token}` }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
    return { status: r.status, body: (await r.json()) as any }
  }
  const a = worker('backup-a')
  const first = await a.call('/encrypt', { text: 'kept through a backup' })
  await a.call('/encrypt', { text: 'and another' })
  expect(first.status).toBe(200)
  // Without the secret the routes do not exist; with a short one they refuse to serve.
  expect((await send('main', 'GET', '/backup', BACKUP_TOKEN)).status).toBe(404)
  expect((await send('backup-short', 'GET', '/backup', 'too-short')).body.error).toBe('ERR_CONFIG')
  for (const token of [undefined, 'wrong', BACKUP_TOKEN.slice(0, -1)]) expect(await send('backup-a', 'GET', '/backup', token)).toMatchObject({ status: 401, body: { error: 'ERR_UNAUTHORIZED' } })
  const dump = await send('backup-a', 'GET', '/backup', BACKUP_TOKEN)
  expect(dump.status).toBe(200)
  expect(dump.body).toMatchObject({ format: 'kms-proxy-chain-backup/v1', chain: 'default', head: { primary: parseInt(kekId(first.body.encrypted), 16) } })
  const stored = await (await a.store()).listKeks('default')
  expect(dump.body.keks.map((k: { id: number }) => k.id).sort()).toEqual(stored.map((r) => r.id).sort())
  expect(JSON.stringify(dump.body)).not.toContain(ROOT_KEY)
  expect(JSON.stringify(dump.body)).not.toContain(BACKUP_TOKEN)
  // Into backup-b's own, empty object: the records, then the head; its worker decrypts what a made.
  const b = worker('backup-b')
  expect(await (await b.store()).getHead('default')).toBe(undefined)
  expect(await send('backup-b', 'POST', '/restore', BACKUP_TOKEN, dump.body)).toEqual({ status: 200, body: { restored: stored.length } })
  expect(await b.call('/decrypt', { encrypted: first.body.encrypted })).toEqual({ status: 200, body: { text: 'kept through a backup' } })
  expect((await (await b.store()).getHead('default'))!.value).toEqual(dump.body.head)
  // Never over a chain that is there, never a malformed backup, never without the token.
  expect(await send('backup-b', 'POST', '/restore', BACKUP_TOKEN, dump.body)).toMatchObject({ status: 409, body: { error: 'ERR_EXISTS' } })
  expect(await send('backup-a', 'POST', '/restore', BACKUP_TOKEN, { ...dump.body, head: { primary: 'x' } })).toMatchObject({ status: 400, body: { error: 'ERR_REQUEST' } })
  expect(await send('backup-a', 'POST', '/restore', undefined, dump.body)).toMatchObject({ status: 401 })
}, 30_000)

it('STORE=kv: the same API on a real KV binding, the records in KV where they always were', async () => {
  const w = worker('kv')
  await exerciseApi(w.call)
  const names = (await (await w.kv()).list()).keys.map((k) => k.name)
  expect(names).toContain('kms-proxy:default:head')
  expect(names.some((n) => /^kms-proxy:default:kek:\d+$/.test(n))).toBe(true)
}, 30_000)

it('without the ROOT_KEY secret, with a malformed one, without the KEYS binding, or with an unknown STORE: 500 ERR_CONFIG "misconfigured", and one log line that names the binding and shows no secret', async () => {
  const r = await worker('missing').call('/encrypt', { text: 'hello' })
  expect(r).toEqual({ status: 500, body: { error: 'ERR_CONFIG', message: 'the worker is misconfigured: see its log' } })
  expect(await logged(/ROOT_KEY secret/)).toEqual(['kms-proxy worker misconfigured: the ROOT_KEY secret is not set (wrangler secret put ROOT_KEY; locally, in .dev.vars)'])
  expect((await worker('malformed').call('/decrypt', { encrypted: 'kp1.AAAA' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/ROOT_KEY must be base64 of 32 bytes/)).toHaveLength(1)
  expect(log).not.toContain('c2hvcnQ=')
  expect((await worker('no-keys').call('/encrypt', { text: 'x' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/the KEYS Durable Object namespace is not bound/)).toHaveLength(1)
  expect((await worker('kv-unbound').call('/encrypt', { text: 'x' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/the KEYS KV namespace is not bound/)).toHaveLength(1)
  expect((await worker('bad-store').call('/encrypt', { text: 'x' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/STORE must be "durable-object" or "kv"/)).toHaveLength(1)
}, 30_000)

it("a ROOT_KEY that cannot unwrap the chain's primary KEK: 500 ERR_CONFIG and a log line saying so, not 400", async () => {
  expect((await worker('main').call('/encrypt', { text: 'hello' })).status).toBe(200)
  expect(await worker('other-key').call('/encrypt', { text: 'hello' })).toMatchObject({ status: 500, body: { error: 'ERR_CONFIG' } })
  expect(await logged(/the root key cannot unwrap the primary KEK of chain "default" in KEYS/)).toHaveLength(1)
}, 30_000)

it('rotation: MAX_WRAPS_PER_KEK 4 with two Workers (two isolates) encrypting at once on one object: no KEK wraps more than 4, every record decrypts in either; a bad number is ERR_CONFIG', async () => {
  const [a, b] = [worker('rotation'), worker('rotation-2')]
  const made = await Promise.all(
    [a, b].map((w, k) => Promise.all(Array.from({ length: 12 }, async (_, i) => {
      const r = await w.call('/encrypt', { text: `record ${k}-${i}` })
      expect(r.status, JSON.stringify(r.body)).toBe(200)
      return [`record ${k}-${i}`, r.body.encrypted as string] as const
    })),
    ),
  )
  const all = made.flat()
  const perKek = new Map<string, number>()
  for (const [, e] of all) perKek.set(kekId(e), (perKek.get(kekId(e)) ?? 0) + 1)
  expect(Math.max(...perKek.values())).toBeLessThanOrEqual(4)
  expect(perKek.size).toBeGreaterThanOrEqual(6)
  expect((await (await a.store()).listKeks('default')).length).toBeGreaterThanOrEqual(perKek.size)
  for (const [i, [text, e]] of all.entries()) expect((await (i % 2 ? a : b).call('/decrypt', { encrypted: e })).body).toEqual({ text })
  expect((await worker('bad-number').call('/encrypt', { text: 'x' })).body.error).toBe('ERR_CONFIG')
  expect(await logged(/MAX_WRAPS_PER_KEK must be a positive integer/)).toHaveLength(1)
}, 30_000)

it('rotation by age: MAX_KEK_AGE_MS 200 makes a new KEK for an encryption after the primary turned 200 ms old', async () => {
  const w = worker('age')
  const first = (await w.call('/encrypt', { text: 'old' })).body.encrypted
  await new Promise((r) => setTimeout(r, 400))
  const second = (await w.call('/encrypt', { text: 'new' })).body.encrypted
  expect((await (await w.store()).listKeks('default')).length).toBeGreaterThanOrEqual(2)
  expect(kekId(first)).not.toBe(kekId(second))
  expect((await w.call('/decrypt', { encrypted: first })).body).toEqual({ text: 'old' })
}, 30_000)

describe('ROOT_KEY_TYPE "aws-kms": the KEKs wrapped by AWS KMS (moto on loopback) through fetch', () => {
  it('round trip; the KEK record in the object names the aws-kms root', async () => {
    const w = worker('kms')
    await exerciseApi(w.call)
    const records = await (await w.store()).listKeks('default')
    expect(records.map((r) => r.rootKind)).toEqual(['aws-kms'])
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

it('.dev.vars, .wrangler/, root.key, kv-backup.json, backup.token and chain-backup.json are git-ignored in examples/cloudflare-worker', () => {
  const paths = ['.dev.vars', '.wrangler/state/x', 'root.key', 'kv-backup.json', 'backup.token', 'chain-backup.json'].map((p) => `examples/cloudflare-worker/${p}`)
  const ignored = execFileSync('git', ['check-ignore', ...paths], { cwd: repoRoot, encoding: 'utf8' })
  expect(ignored.trim().split('\n')).toHaveLength(6)
})

describe('examples/cloudflare-worker README, as written (wrangler dev, offline)', () => {
  let checkout: string
  let port: number
  let blocks: Array<{ title: string; commands: string[] }>
  const env: NodeJS.ProcessEnv = { ...process.env, WRANGLER_SEND_METRICS: 'false', NO_COLOR: '1', WRANGLER_LOG_PATH: join(scratch, 'wrangler-logs') }
  const at = (prefix: string) => blocks.find((b) => b.title.startsWith(prefix))?.commands ?? []
  const local = (commands: string[]) => commands.map((c) => c.replaceAll('8787', String(port)))

  beforeAll(async () => {
    checkout = tempCheckout(scratch, 'cloudflare-worker', ['README.md', 'worker.mjs', 'wrangler.toml', 'wrangler.kv.toml', 'backup.mjs'])
    port = await freePort()
    blocks = shBlocks(readme, scratch)
  })

  it('the Build and Deploy blocks are there and are not run: pnpm build (checked by the built files); kept secret, deploy; on KV: namespace, deploy, remote backup and restore', () => {
    expect(at('# Build')).toEqual(['pnpm build'])
    requireBuilt('core', 'durable-object', 'kv', 'kms')
    expect(at('# Deploy, ')).toEqual([
      'test -e root.key || (umask 077 && openssl rand -base64 32 > root.key)',
      'pnpm exec wrangler secret put ROOT_KEY < root.key',
      'pnpm exec wrangler deploy',
      'test -e backup.token || (umask 077 && openssl rand -base64 32 > backup.token)',
      'pnpm exec wrangler secret put BACKUP_TOKEN < backup.token',
      'curl -sf -H "authorization: Bearer $(cat backup.token)" https://kms-proxy-example.YOUR-SUBDOMAIN.workers.dev/backup > chain-backup.json',
    ])
    expect(at('# Deploy on Workers KV')).toEqual([
      'pnpm exec wrangler kv namespace create KEYS -c wrangler.kv.toml',
      'test -e root.key || (umask 077 && openssl rand -base64 32 > root.key)',
      'pnpm exec wrangler secret put ROOT_KEY -c wrangler.kv.toml < root.key',
      'pnpm exec wrangler deploy -c wrangler.kv.toml',
      'node backup.mjs --remote > kv-backup.json',
      'pnpm exec wrangler kv bulk put kv-backup.json -c wrangler.kv.toml --binding KEYS --remote',
    ])
  })

  /** Runs a serve block, then the curl block against it, checks the answers against the README's; SIGTERM. */
  async function serveAndCurl(serve: string[], cwd: string): Promise<string> {
    const server = await startBlock(serve, cwd, env, /Ready on http/, 60_000)
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
      return JSON.parse(lines[0]!).encrypted
    } finally {
      process.kill(server.pid, 'SIGTERM')
      const gone = await groupGone(server.shell, 15_000)
      expect(gone, gone ? '' : `left running: ${leftInGroup(server.shell)}`).toBe(true)
      expect(await listening(port)).toBe(false)
    }
  }

  it('wrangler dev with .dev.vars serves locally on the Durable Object, curl prints what the README shows, SIGTERM stops it', async () => {
    const serve = local(at('# Serve locally, '))
    expect(serve[0]).toBe('cd examples/cloudflare-worker')
    await serveAndCurl(serve, checkout)
    // The chain went to the local Durable Object's storage, not to a KV namespace.
    const state = join(checkout, 'examples', 'cloudflare-worker', '.wrangler', 'state', 'v3')
    expect(readdirSync(join(state, 'do'))).toContain('kms-proxy-example-KeyChainObject')
    expect(existsSync(join(state, 'kv'))).toBe(false)
  }, 90_000)

  it('on Workers KV (wrangler.kv.toml): served, backed up to kv-backup.json, restored into an empty local namespace, the data decrypts again', async () => {
    const dir = join(checkout, 'examples', 'cloudflare-worker')
    const encrypted = await serveAndCurl(local(at('# Serve locally on Workers KV')), dir)
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
    const id = /^id = "(.*)"$/m.exec(readFileSync(join(dir, 'wrangler.kv.toml'), 'utf8'))![1]!
    const mf = new Miniflare({ modules: true, script, compatibilityDate: '2026-05-01', kvNamespaces: { KEYS: id }, kvPersist: join(dir, '.wrangler', 'state', 'v3', 'kv'), bindings: { ROOT_KEY: rootKey, STORE: 'kv' } })
    disposers.push(() => mf.dispose())
    const r = await mf.dispatchFetch('http://localhost/decrypt', { method: 'POST', body: JSON.stringify({ encrypted }) })
    expect(await r.json()).toEqual({ text: 'hello' })
  }, 120_000)
})
