/**
 * Migrating a cluster from the HSM to an AWS KMS key with no downtime (docs/k8s.md, "Changing
 * the root"), against real parts: etcd 3.4 as the shared store, the AWS KMS emulator (moto) for
 * the KMS, SoftHSM2 behind the PKCS#11 bridge for the HSM (the bridge's own test harness starts
 * it in a child process with a throwaway token), the plugins over their real gRPC sockets. While a child process runs changeRoot, two plugins holding both roots keep
 * answering Status, Encrypt and Decrypt in a loop.
 */
import { afterAll, beforeAll, expect, it } from 'vitest'
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { KeyChain, type RootKey } from '@kms-proxy/core'
import { countingRootKey } from '@kms-proxy/testkit'
import { etcdStore } from '../../etcd/src/index.ts'
import { startEtcd, type EtcdCluster } from '../../etcd/test/etcd-process.ts'
import { awsKmsRootKey } from '../../kms/src/index.ts'
import { startMoto, type Moto } from '../../kms/test/fakes/moto.ts'
import { pkcs11BridgeRootKey } from '../../pkcs11/src/index.ts'
import { MODULE, PIN, TOKEN_LABEL, WORKSPACE, bearer, makeToken, readLine, spawnTs, type TestToken } from '../../pkcs11-bridge/test/hsm.ts'
import { serveKmsPlugin, type KmsPlugin, type KmsPluginOptions } from '../src/index.ts'
import { codeOf, grpcError, kmsClient, seed, tempDir, type EncryptResponse, type KmsClient } from './client.ts'
import { freePort } from '../../testkit/test/free-port.ts'

const CHAIN = 'cluster-a'
const PREFIX = 'kms-proxy-k8s/'
const KEKS = 16
const BRIDGE_TOKEN = bearer()
const credentials = { accessKeyId: 'AKIDKMSPROXYK8S', secretAccessKey: 'kms-proxy-k8s-test-secret' }
let etcd: EtcdCluster
let moto: Moto
let kmsKey = ''
let token: TestToken
let bridgeUrl = ''
const dir = tempDir('kms-proxy-k8s-migrate-')
const opened: { close(): unknown }[] = []
const children: ChildProcess[] = []

beforeAll(async () => {
  token = makeToken()
  const port = await freePort()
  const config = [{ module: MODULE, tokenLabel: TOKEN_LABEL, pin: PIN, token: BRIDGE_TOKEN, keyLabel: 'k8s-migration', createKey: true, port }]
  const bridge = spawnTs('./serve.ts', { ...token.env, KMS_PROXY_TEST_BRIDGES: JSON.stringify(config) })
  children.push(bridge)
  let urls: string[]
  ;[etcd, moto, urls] = await Promise.all([startEtcd(), startMoto(credentials), readLine<string[]>(bridge, 'READY ', 100_000)])
  bridgeUrl = urls[0]!
  kmsKey = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
}, 120_000)

afterAll(async () => {
  for (const o of opened.reverse()) await o.close()
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
  await etcd?.stop()
  moto?.close()
  token?.cleanup()
  dir.cleanup()
})

const hsm = () => countingRootKey(pkcs11BridgeRootKey({ url: bridgeUrl, token: BRIDGE_TOKEN }))
const kmsOptions = () => ({ keyId: kmsKey, region: 'eu-central-1', credentials, endpoint: moto.endpoint })
const kms = () => countingRootKey(awsKmsRootKey(kmsOptions()))
const store = () => etcdStore({ endpoints: etcd.urls, prefix: PREFIX })

interface Node {
  plugin: KmsPlugin
  client: KmsClient
  chain: KeyChain
}
/** One control-plane node's plugin: the chain opened as `chain` says, served as `plugin` says. */
async function node(name: string, chain: { rootKey: RootKey } | { roots: Record<string, RootKey> }, plugin: Partial<KmsPluginOptions> = {}): Promise<Node> {
  const c = await KeyChain.open({ ...chain, store: store(), name: CHAIN })
  // Deadlines far above kube-apiserver's 3 s: this test is about failures a root change could
  // cause, not about the speed of a loaded CI machine.
  const p = await serveKmsPlugin({ socket: `${dir.dir}/${name}.sock`, chain: c, healthCacheMs: 0, healthTimeoutMs: 30_000, ...plugin })
  const client = kmsClient(p.socket, 30_000)
  opened.push(p, client)
  return { plugin: p, client, chain: c }
}

function changeRootProcess(op: 'change' | 'add' | 'remove'): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./root-change-process.ts', import.meta.url))], {
    cwd: WORKSPACE,
    env: {
      ...process.env,
      KMS_PROXY_K8S_ETCD: etcd.urls[0],
      KMS_PROXY_K8S_PREFIX: PREFIX,
      KMS_PROXY_K8S_CHAIN: CHAIN,
      KMS_PROXY_K8S_BRIDGE_URL: bridgeUrl,
      KMS_PROXY_K8S_BRIDGE_TOKEN: BRIDGE_TOKEN,
      KMS_PROXY_K8S_KMS: JSON.stringify(kmsOptions()),
      KMS_PROXY_K8S_OP: op,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.push(child)
  return child
}

interface Made {
  seed: Uint8Array
  e: EncryptResponse
  phase: 'before' | 'during' | 'after'
}
const decrypts = async (client: KmsClient, m: Made) => Buffer.compare(await client.decrypt({ ciphertext: m.e.ciphertext, key_id: m.e.key_id, annotations: m.e.annotations }), Buffer.from(m.seed)) === 0

it('HSM to KMS with no downtime: plugins holding both roots serve through a changeRoot run by another process; then a plugin holding only the KMS key decrypts everything', { timeout: 180_000 }, async () => {
  // Day one: the plugin as deployed before, with one root (rootKey: the HSM), KEKS KEKs made over time.
  const legacy = await node('legacy', { rootKey: hsm() })
  const made: Made[] = []
  for (let i = 0; i < KEKS; i++) {
    if (i > 0) await legacy.chain.rotate()
    const s = seed()
    made.push({ seed: s, e: await legacy.client.encrypt(s), phase: 'before' })
  }
  const k0 = made.at(-1)!.e.key_id
  expect(new Set(made.map((m) => m.e.key_id)).size).toBe(KEKS)

  // Step 1: every node redeployed with both roots (the HSM keeps the name the chain gave it, 'default').
  const roots = () => ({ default: hsm(), kms: kms() })
  const aRoots = roots()
  const a = await node('a', { roots: aRoots }, { roots: aRoots })
  const bRoots = roots()
  const b = await node('b', { roots: bRoots }, { roots: bRoots })
  expect(await a.plugin.checkHealth()).toBe('ok')
  expect(a.plugin.stats().health.roots).toMatchObject({ default: { ok: true }, kms: { ok: true } })
  expect((await a.client.status()).key_id).toBe(k0) // same primary, same key_id: kube-apiserver makes no new seed

  // Step 2, from another process: changeRoot('default' -> 'kms'), while both plugins serve.
  let phase: Made['phase'] = 'before'
  const failures: string[] = []
  const keyIds: Record<string, Set<string>> = { a: new Set(), b: new Set() }
  const mismatches: string[] = []
  let stop = false
  let calls = 0
  const loop = async (name: 'a' | 'b', n: Node) => {
    for (let i = 0; !stop && i < 5_000; i++) {
      try {
        const status = await n.client.status()
        calls++
        if (status.healthz !== 'ok') failures.push(`${name} Status ${status.healthz}`)
        keyIds[name]!.add(status.key_id)
        const s = seed()
        const e = await n.client.encrypt(s)
        calls++
        if (e.key_id !== status.key_id) mismatches.push(`${name} ${status.key_id} -> ${e.key_id}`)
        keyIds[name]!.add(e.key_id)
        const m: Made = { seed: s, e, phase }
        made.push(m)
        // Its own seed, and one made earlier by any node (KEKs this plugin may not have loaded).
        for (const x of [m, made[i % made.length]!]) {
          if (!(await decrypts(n.client, x))) failures.push(`${name} Decrypt gave another seed`)
          calls++
        }
      } catch (error) {
        failures.push(`${name} ${codeOf(error as never)} ${(error as { details?: string }).details}`)
      }
    }
  }
  const loops = [loop('a', a), loop('b', b)]
  const child = changeRootProcess('change')
  await readLine(child, 'START ', 100_000)
  phase = 'during'
  const startedAt = performance.now()
  // Another node (a third chain instance holding both roots) rotates during the change: its new
  // KEK must end up under the KMS key too.
  const other = await KeyChain.open({ roots: roots(), store: store(), name: CHAIN })
  const rotated = await other.rotate()
  const done = await readLine<{ report: Record<string, number>; kmsCalls: Record<string, number>; bridgeCalls: Record<string, number>; roots: unknown[] }>(child, 'DONE ', 120_000)
  phase = 'after'
  const changeMs = Math.round(performance.now() - startedAt)
  const duringCalls = made.filter((m) => m.phase === 'during').length
  await new Promise((r) => setTimeout(r, 300))
  stop = true
  await Promise.all(loops)

  const kR = `${CHAIN}/${rotated.id.toString(16).padStart(8, '0')}`
  expect(failures).toEqual([])
  // The third node's rotation reaches both plugins (invariant 10): a Status+Encrypt pair it lands
  // between answers k0 then kR (kube-apiserver discards that Encrypt and asks again at its next
  // poll), at most once per plugin, never the other way round.
  expect(mismatches.length).toBeLessThanOrEqual(2)
  for (const m of mismatches) expect(m.slice(2)).toBe(`${k0} -> ${kR}`)
  expect(duringCalls).toBeGreaterThan(0)
  expect(made.filter((m) => m.phase === 'after').length).toBeGreaterThan(0)
  // The root change itself changed no KEK, so no key_id: kube-apiserver sees nothing to re-encrypt
  // but the third node's rotation.
  for (const n of [a, b]) expect(await n.client.status()).toMatchObject({ healthz: 'ok', key_id: kR })
  expect([...keyIds.a!].filter((k) => k !== k0 && k !== kR)).toEqual([])
  expect([...keyIds.b!].filter((k) => k !== k0 && k !== kR)).toEqual([])
  expect(done.roots).toEqual([{ name: 'kms', kind: 'aws-kms', state: 'active', held: true }])
  const keks = KEKS + 1
  // One unwrap per KEK under the HSM and one wrap per KEK under the KMS (one GenerateDataKey), one
  // Decrypt to prove the KMS key; every HSM wrap deleted.
  expect(done.report).toMatchObject({ name: 'kms', keks, deleted: keks })
  expect(done.report.rootKeyWraps).toBe(done.report.wrapped)
  expect(done.kmsCalls.GenerateDataKey).toBe(done.report.wrapped)
  expect(done.kmsCalls.Decrypt).toBe(1)
  // One HSM unwrap per KEK re-wrapped, and at most one more: proving the HSM is the chain's 'default'.
  expect(done.bridgeCalls.unwrap! - done.report.wrapped!).toBeGreaterThanOrEqual(0)
  expect(done.bridgeCalls.unwrap! - done.report.wrapped!).toBeLessThanOrEqual(1)
  expect(done.bridgeCalls.generate ?? 0).toBe(0)
  expect(done.report.wrapped).toBeLessThanOrEqual(keks)
  console.log(`root change: ${JSON.stringify(done)} in ${changeMs} ms; ${calls} plugin calls, ${duringCalls} Encrypts during the change, 0 failed, ${mismatches.length} Status+Encrypt pairs split by the third node's rotation`)

  // Step 3: redeployed with the KMS key only, as an existing configuration would say it (rootKey).
  const kmsOnly = kms()
  const c = await node('c', { rootKey: kmsOnly }, { rootKey: kmsOnly })
  const status = await c.client.status()
  expect(status.healthz).toBe('ok')
  expect(status.key_id).toBe(kR)
  const byKek = new Map<string, Made>()
  for (const m of made) byKek.set(m.e.key_id, m)
  let ok = 0
  for (const m of made) if (await decrypts(c.client, m)) ok++
  expect(ok).toBe(made.length)
  // One KMS Decrypt per KEK it needed (the data's, and the primary Status loaded), none for the HSM.
  expect(kmsOnly.unwraps).toBe(new Set([...byKek.keys(), kR]).size)

  // A node never redeployed (HSM only, rootKey) after the HSM root left the chain: it decrypts
  // under the KEKs it has loaded (every KEK it made), cannot load any other (its only wraps are
  // under the KMS key: FAILED_PRECONDITION, and no HSM call is made for it), so it cannot encrypt
  // under the primary another node made; it keeps reporting the key_id kube-apiserver holds a
  // seed for, unhealthy; it cannot rotate, and says so in its stats.
  const fresh = seed()
  const underNew: Made = { seed: fresh, e: await c.client.encrypt(fresh), phase: 'after' }
  const legacyRoot = legacy.chain.stats().roots
  const legacyUnwraps = Object.values(legacyRoot).reduce((n, r) => n + r.unwraps, 0)
  const unhealthy = /^unhealthy: cannot serve Encrypt: ERR_ROOT_KEY: this KEK has no wrap under a root this process holds/
  expect(await legacy.plugin.checkHealth()).toMatch(unhealthy)
  expect(legacy.plugin.stats().health.unheldRoots).toEqual(['kms'])
  expect(legacy.plugin.stats().health.degraded).toMatch(/the chain's roots kms are not held by this plugin: it cannot rotate until redeployed with them/)
  expect(legacy.plugin.stats().health.degraded).toContain(`key_id ${k0} kept: the store's primary ${kR} cannot be loaded yet`)
  expect(await legacy.client.status()).toMatchObject({ healthz: expect.stringMatching(unhealthy), key_id: k0 })
  expect(codeOf(await grpcError(legacy.client.encrypt(seed())))).toBe('FAILED_PRECONDITION')
  for (const m of made.filter((m) => m.phase === 'before')) expect(await decrypts(legacy.client, m)).toBe(true)
  const refused = await grpcError(decrypts(legacy.client, underNew))
  expect(codeOf(refused)).toBe('FAILED_PRECONDITION')
  expect(refused.details).toMatch(/^ERR_ROOT_KEY: /)
  expect(Object.values(legacy.chain.stats().roots).reduce((n, r) => n + r.unwraps, 0)).toBe(legacyUnwraps)
  await expect(legacy.chain.rotate()).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
  expect((await store().listKeks(CHAIN)).map((r) => `${r.root}:${r.rootKind}`)).toEqual(Array(KEKS + 1).fill('kms:aws-kms'))
  // Restarted with that old configuration, it loads nothing: unhealthy, still reporting the store's primary.
  const restarted = await node('legacy-restarted', { rootKey: hsm() })
  expect(await restarted.client.status()).toMatchObject({ healthz: expect.stringMatching(/^unhealthy: cannot serve Encrypt: ERR_ROOT_KEY: /), key_id: status.key_id })
})
