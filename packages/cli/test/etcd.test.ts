/** The CLI on a real etcd (Debian's etcd-server, one member on loopback): init, round trip, two configs sharing the chain, a root change seen by both, retire and destroy seen by both, etcd down. */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutWeakKdfWarning, type Result } from './helpers.js'
import { freePort } from '../../testkit/test/free-port.ts'

const ETCD = process.env.ETCD_BIN ?? 'etcd'
const PASSPHRASE = 'etcd chain passphrase'
const NEW_PASSPHRASE = 'the new etcd chain passphrase'
let work: ReturnType<typeof tempDir>
let bundle: string
let etcd: ChildProcess | undefined
let endpoint: string

beforeAll(async () => {
  work = tempDir('etcd')
  bundle = await bundleCli(work.dir)
  const [client, peer] = [await freePort(), await freePort()]
  endpoint = `http://127.0.0.1:${client}`
  const peerUrl = `http://127.0.0.1:${peer}`
  etcd = spawn(ETCD, [
    '--name', 'n1', '--data-dir', join(work.dir, 'etcd-data'), '--logger=zap', '--log-level', 'error',
    '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl, '--initial-cluster', `n1=${peerUrl}`,
  ], { stdio: 'ignore' })
  for (let i = 0; i < 200; i++) {
    const ok = await fetch(`${endpoint}/health`).then((r) => r.ok, () => false)
    if (ok) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`etcd did not start at ${endpoint}`)
})
afterAll(() => {
  etcd?.kill('SIGKILL')
  work?.cleanup()
})

/** Each host names its config (KMS_PROXY_CONFIG): one found in the working folder may not reach etcd. */
async function kp(cwd: string, args: string[], input?: string | Uint8Array, named = true, env: Record<string, string> = {}): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd, env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, ...(named ? { KMS_PROXY_CONFIG: join(cwd, 'kms-proxy.json') } : {}), ...env }, input })
  return { ...r, stderr: withoutWeakKdfWarning(r.stderr) }
}

it('retire on one host stops the other host decrypting at its next command; unretire brings it back; destroy --chain deletes every KEK key from etcd', async () => {
  const [a, b] = [join(work.dir, 'life-a'), join(work.dir, 'life-b')]
  mkdirSync(a)
  mkdirSync(b)
  const policy = ['--max-staleness-seconds', '1', '--destroy-grace-days', '0.00003']
  const common = ['--store', 'etcd', '--etcd-endpoints', endpoint, '--etcd-prefix', 'life/', '--chain', 'tenant-7', ...FAST_KDF, ...policy]
  expect((await kp(a, ['init', ...common])).code).toBe(EXIT.OK)
  expect((await kp(b, ['init', ...common])).code).toBe(EXIT.OK)
  const enc = await kp(a, ['encrypt', '--message'], 'tenant 7 data')
  expect(enc.code, enc.stderr).toBe(EXIT.OK)
  const old = JSON.parse((await kp(a, ['status', '--json'])).stdout.toString()).primary.id as number
  expect((await kp(b, ['rotate'])).code).toBe(EXIT.OK)
  const hex = `0x${old.toString(16).padStart(8, '0')}`
  expect((await kp(b, ['retire', hex])).code).toBe(EXIT.OK)
  const refused = await kp(a, ['decrypt'], enc.stdout)
  expect(refused.code).toBe(EXIT.RETIRED)
  expect(JSON.parse((await kp(a, ['status', '--json'])).stdout.toString()).keks.find((k: { id: number }) => k.id === old).state).toBe('retired')
  expect((await kp(a, ['unretire', hex])).code).toBe(EXIT.OK)
  expect((await kp(b, ['decrypt'], enc.stdout)).stdout.toString()).toBe('tenant 7 data')

  // The tenant leaves: its chain retired, then destroyed after the grace period (2.6 s).
  const retired = JSON.parse((await kp(a, ['retire', '--chain', '--json'])).stdout.toString())
  expect((await kp(b, ['encrypt', '--message'], 'x')).code).toBe(EXIT.RETIRED)
  await new Promise((r) => setTimeout(r, retired.destroyableAt + 100 - Date.now()))
  const keys = async () => {
    const range = await fetch(`${endpoint}/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: Buffer.from('life/').toString('base64'), range_end: Buffer.from('life0').toString('base64'), keys_only: true }) }).then((r) => r.json())
    return ((range.kvs ?? []) as Array<{ key: string }>).map((kv) => Buffer.from(kv.key, 'base64').toString())
  }
  const before = await keys()
  expect(before.length).toBeGreaterThan(2)
  const destroyed = await kp(b, ['destroy', '--chain', '--yes'])
  expect(destroyed.code, destroyed.stderr).toBe(EXIT.OK)
  expect(destroyed.stdout.toString()).toMatch(/^destroyed chain "tenant-7" \(2 KEKs\): 2 KEK records deleted from the store/)
  const after = await keys()
  expect(after.length).toBe(1) // the head alone, as a tombstone
  expect(before).toContain(after[0])
  expect((await kp(a, ['decrypt'], enc.stdout)).code).toBe(EXIT.DESTROYED)
}, 120_000)

it('init --store etcd; two hosts with their own config share the chain; a root change on one is seen by the other; etcd down exits 7', async () => {
  const [a, b] = [join(work.dir, 'host-a'), join(work.dir, 'host-b')]
  mkdirSync(a)
  mkdirSync(b)
  const init = await kp(a, ['init', '--store', 'etcd', '--etcd-endpoints', endpoint, '--etcd-prefix', 'cli-test/', '--chain', 'shared', ...FAST_KDF], undefined, false)
  expect(init.code, init.stderr).toBe(EXIT.OK)
  expect(init.stdout.toString()).toMatch(/it reaches the network, so commands use it only when named: --config kms-proxy\.json or KMS_PROXY_CONFIG\n$/)
  expect(JSON.parse(readFileSync(join(a, 'kms-proxy.json'), 'utf8')).store).toEqual({ type: 'etcd', endpoints: [endpoint], prefix: 'cli-test/' })
  // The second host joins: init finds the chain and checks that the passphrase unlocks it.
  const join2 = await kp(b, ['init', '--store', 'etcd', '--etcd-endpoints', endpoint, '--etcd-prefix', 'cli-test/', '--chain', 'shared', ...FAST_KDF])
  expect(join2.code, join2.stderr).toBe(EXIT.OK)
  expect(join2.stdout.toString()).toMatch(/chain "shared" already exists/)

  const implicit = await kp(a, ['encrypt'], 'x', false)
  expect(implicit.code).toBe(EXIT.MISSING)
  expect(implicit.stderr).toMatch(/found in the working folder, and such a config may reach no network service \(it names an etcd store\)/)
  const enc = await kp(a, ['encrypt'], 'written on host a')
  expect(enc.code, enc.stderr).toBe(EXIT.OK)
  const dec = await kp(b, ['decrypt'], enc.stdout)
  expect(dec.stdout.toString()).toBe('written on host a')
  const rotated = JSON.parse((await kp(b, ['rotate', '--json'])).stdout.toString())
  const status = JSON.parse((await kp(a, ['status', '--json'])).stdout.toString())
  expect(status.store).toEqual({ type: 'etcd', endpoints: [endpoint] })
  expect(status.primary.id).toBe(rotated.primary)
  expect(status.keks).toHaveLength(2)

  // Host a changes the passphrase; host b's config (a passphrase root) needs only the new one.
  const changed = await kp(a, ['root', 'change', '--root', 'passphrase', ...FAST_KDF], undefined, true, { KMS_PROXY_NEW_PASSPHRASE: NEW_PASSPHRASE })
  expect(changed.code, changed.stderr).toBe(EXIT.OK)
  expect(changed.stdout.toString()).toContain('KEKs         2 re-wrapped under "default-2"; 2 wraps under "default" deleted')
  expect((await kp(b, ['decrypt'], enc.stdout)).code).toBe(EXIT.ROOT_KEY)
  const after = await kp(b, ['decrypt'], enc.stdout, true, { KMS_PROXY_PASSPHRASE: NEW_PASSPHRASE })
  expect(after.stdout.toString(), after.stderr).toBe('written on host a')
  expect((await kp(b, ['root', 'list'])).stdout.toString()).toMatch(/^default-2\s+passphrase-pbkdf2\s+active\s+held$/m) // held: its secret is set (list makes no root call)

  etcd!.kill('SIGKILL')
  await new Promise((r) => etcd!.once('exit', r))
  const down = await kp(a, ['encrypt', '--message'], 'x')
  expect(down.code).toBe(EXIT.STORE)
  expect(down.stderr).toMatch(/^kms-proxy encrypt: the store failed: /)
})
