/**
 * The plugin with an HSM root: SoftHSM2 behind the PKCS#11 bridge (@kms-proxy/pkcs11-bridge),
 * started in a child process by the bridge's own test harness (../../pkcs11-bridge/test/hsm.ts
 * and serve.ts: a throwaway token in a temporary directory). The key chain uses the embedded
 * store, so the HSM-wrapped KEK travels in the kek.kms-proxy.dev annotation. The bridge is then
 * stopped and started again on the same port: the failure mode of a root key that goes away.
 */
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { ChildProcess } from 'node:child_process'
import { KeyChain, embeddedStore } from '@kms-proxy/core'
import { countingRootKey } from '@kms-proxy/testkit'
import { PKCS11_WRAPPED_LENGTH, PKCS11_WRAP_TAG, pkcs11BridgeRootKey } from '../../pkcs11/src/index.ts'
import { MODULE, PIN, TOKEN_LABEL, bearer, makeToken, readLine, spawnTs, type TestToken } from '../../pkcs11-bridge/test/hsm.ts'
import { KEK_ANNOTATION, serveKmsPlugin, type KmsPlugin } from '../src/index.ts'
import { codeOf, grpcError, kmsClient, seed, tempDir, type KmsClient } from './client.ts'
import { freePort } from '../../testkit/test/free-port.ts'

const TOKEN = bearer()
let hsm: TestToken
let bridge: ChildProcess | undefined
let port = 0
const dir = tempDir('kms-proxy-k8s-hsm-')
const opened: { close(): unknown }[] = []
const children: ChildProcess[] = []

async function startBridge(): Promise<void> {
  const config = [{ module: MODULE, tokenLabel: TOKEN_LABEL, pin: PIN, token: TOKEN, keyLabel: 'k8s-kek-root', createKey: true, port }]
  bridge = spawnTs('./serve.ts', { ...hsm.env, KMS_PROXY_TEST_BRIDGES: JSON.stringify(config) })
  const [url] = await readLine<string[]>(bridge, 'READY ')
  expect(url).toBe(`http://127.0.0.1:${port}`)
}

async function stopBridge(): Promise<void> {
  if (!bridge || bridge.exitCode !== null) return
  const exited = new Promise((r) => bridge!.once('exit', r))
  bridge.stdin!.end()
  await exited
}

beforeAll(async () => {
  hsm = makeToken()
  port = await freePort()
  await startBridge()
}, 30_000)

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
  for (const o of opened.reverse()) await o.close()
  await stopBridge()
  hsm?.cleanup()
  dir.cleanup()
})

async function plugin(name: string, maxKekAgeMs?: number): Promise<{ plugin: KmsPlugin; client: KmsClient; root: ReturnType<typeof countingRootKey>; chain: KeyChain }> {
  // retries: 0, so that "the bridge is down" shows at once instead of after the backoff.
  const root = countingRootKey(pkcs11BridgeRootKey({ url: `http://127.0.0.1:${port}`, token: TOKEN, retries: 0, timeoutMs: 2_000 }))
  const chain = await KeyChain.open({ rootKey: root, store: embeddedStore(), name: 'hsm-cluster', ...(maxKekAgeMs ? { maxKekAgeMs } : {}) })
  const p = await serveKmsPlugin({ socket: `${dir.dir}/${name}.sock`, chain, rootKey: root, healthCacheMs: 0 })
  const client = kmsClient(p.socket)
  opened.push(p, client)
  return { plugin: p, client, root, chain }
}

it('SoftHSM2 through the PKCS#11 bridge: seeds encrypt and decrypt, key_id follows rotation; with the bridge down Status stays ok (degraded) while the primary is loaded and Encrypt goes on, until a rotation is due; back up, the rotation happens and all decrypts', async () => {
  const a = await plugin('a')
  // Plugin c's KEK expires 2 s after it is made: its rotation falls due while the bridge is down.
  const c = await plugin('c', 2_000)
  const cKeyId = (await c.client.encrypt(seed())).key_id
  const cMadeAt = Date.now()
  const status = await a.client.status()
  expect(status).toMatchObject({ version: 'v2', healthz: 'ok' })

  const s1 = seed()
  const e1 = await a.client.encrypt(s1)
  expect(e1.key_id).toBe(status.key_id)
  const wrappedKek = e1.annotations[KEK_ANNOTATION]!
  expect(wrappedKek.length).toBe(PKCS11_WRAPPED_LENGTH) // 45 bytes: tag, IV, KEK, GCM tag from the token
  expect(wrappedKek[0]).toBe(PKCS11_WRAP_TAG)
  expect(e1.ciphertext.length).toBe(110)
  expect(Buffer.compare(await a.client.decrypt({ ciphertext: e1.ciphertext, key_id: e1.key_id, annotations: e1.annotations }), Buffer.from(s1))).toBe(0)

  await a.chain.rotate()
  const s2 = seed()
  const e2 = await a.client.encrypt(s2)
  expect(e2.key_id).not.toBe(e1.key_id)
  expect((await a.client.status()).key_id).toBe(e2.key_id)

  // The bridge goes away: the plugin can still serve from its loaded primary, so it stays healthy
  // (kube-apiserver keeps it in its load balancer) and says what is wrong in its own stats.
  await stopBridge()
  expect(await a.plugin.checkHealth()).toBe('ok')
  const degraded = a.plugin.stats().health.degraded
  expect(degraded).toMatch(/^root key: ERR_ROOT_KEY: the PKCS#11 bridge at http:\/\/127\.0\.0\.1:\d+: no answer \(.+\); is it running\?$/)
  expect(degraded).not.toContain(TOKEN)
  const down = await a.client.status()
  expect(down).toMatchObject({ healthz: 'ok', key_id: e2.key_id })
  // Encrypt goes on under the cached primary KEK until a rotation is due; Decrypt of known KEKs too.
  const s3 = seed()
  const e3 = await a.client.encrypt(s3)
  expect(e3.key_id).toBe(e2.key_id)
  expect(Buffer.compare(await a.client.decrypt({ ciphertext: e1.ciphertext, key_id: e1.key_id, annotations: e1.annotations }), Buffer.from(s1))).toBe(0)
  // A fresh plugin (a restarted one) cannot unwrap while the HSM is away: UNAVAILABLE, retryable.
  const b = await plugin('b')
  const unavailable = await grpcError(b.client.decrypt({ ciphertext: e3.ciphertext, key_id: e3.key_id, annotations: e3.annotations }))
  expect(codeOf(unavailable)).toBe('UNAVAILABLE')
  expect(unavailable.details).not.toContain(TOKEN)

  // Rotation due with the root away: it fails, so key_id stays (kube-apiserver keeps its seed);
  // past its age the primary cannot serve Encrypt (UNAVAILABLE): now Status is unhealthy.
  await new Promise((r) => setTimeout(r, Math.max(0, cMadeAt + 2_100 - Date.now())))
  const cDown = await c.client.status()
  expect(cDown.healthz).toMatch(/^unhealthy: cannot serve Encrypt: ERR_ROOT_KEY: /)
  expect(cDown.key_id).toBe(cKeyId)
  expect(codeOf(await grpcError(c.client.encrypt(seed())))).toBe('UNAVAILABLE')

  // Back on the same port: healthy again, and the restarted plugin decrypts everything.
  await startBridge()
  // The probe carries out the overdue rotation: a new key_id without any Encrypt call.
  const cUp = await c.client.status()
  expect(cUp.healthz).toBe('ok')
  expect(cUp.key_id).not.toBe(cKeyId)
  expect((await c.client.encrypt(seed())).key_id).toBe(cUp.key_id)
  expect(await a.plugin.checkHealth()).toBe('ok')
  expect(a.plugin.stats().health.degraded).toBeUndefined()
  for (const [e, s] of [[e1, s1], [e2, s2], [e3, s3]] as const) {
    expect(Buffer.compare(await b.client.decrypt({ ciphertext: e.ciphertext, key_id: e.key_id, annotations: e.annotations }), Buffer.from(s))).toBe(0)
  }
  // Root-key calls: plugin a made 2 KEKs (first, rotate) plus one call per root-key probe (the
  // failed one included); it never unwrapped.
  const probes = a.plugin.stats().health.probes
  expect(probes).toBeGreaterThanOrEqual(3)
  expect(a.root.wraps).toBe(2 + probes)
  expect(a.root.unwraps).toBe(0)
  // Plugin b: one unwrap per distinct KEK (2), after the failed attempt.
  expect(b.root.unwraps).toBe(1 + 2)
}, 60_000)

it('a plugin process restarted while the HSM is unreachable reports the store\'s primary key_id (never ""), answers UNAVAILABLE until the bridge is back, then serves that same key_id', async () => {
  const storeFile = `${dir.dir}/restart-keys.json`
  const socket = `${dir.dir}/restart.sock`
  const env = { ...process.env, KMS_PROXY_K8S_SOCKET: socket, KMS_PROXY_K8S_STORE: storeFile, KMS_PROXY_K8S_BRIDGE_URL: `http://127.0.0.1:${port}`, KMS_PROXY_K8S_BRIDGE_TOKEN: TOKEN }
  const start = async () => {
    const child = spawnTs(new URL('./plugin-process.ts', import.meta.url).href, env)
    children.push(child)
    return { child, ready: await readLine<{ keyId: string; healthz: string }>(child, 'READY ') }
  }
  const stop = async (child: ChildProcess) => {
    const exited = new Promise((r) => child.once('exit', r))
    child.stdin!.end()
    await exited
  }

  const first = await start()
  expect(first.ready.healthz).toBe('ok')
  let client = kmsClient(socket)
  const s1 = seed()
  const e1 = await client.encrypt(s1)
  expect(e1.key_id).toBe(first.ready.keyId)
  client.close()
  await stop(first.child)

  // The HSM goes away, then the plugin restarts (an upgrade, a crash) during the outage.
  await stopBridge()
  const second = await start()
  expect(second.ready.keyId).toBe(e1.key_id) // from the store's head: no root-key call needed
  expect(second.ready.healthz).toMatch(/^unhealthy: .*ERR_ROOT_KEY: the PKCS#11 bridge at http:\/\/127\.0\.0\.1:\d+: no answer/)
  client = kmsClient(socket)
  const down = await client.status()
  expect(down.key_id).toBe(e1.key_id) // kube-apiserver validates it and keeps extending its seed
  expect(down.healthz).not.toContain(TOKEN)
  // Nothing is cached in a fresh process: Encrypt and Decrypt are UNAVAILABLE (kube-apiserver retries).
  expect(codeOf(await grpcError(client.encrypt(seed())))).toBe('UNAVAILABLE')
  expect(codeOf(await grpcError(client.decrypt({ ciphertext: e1.ciphertext, key_id: e1.key_id, annotations: e1.annotations })))).toBe('UNAVAILABLE')
  expect((await client.status()).key_id).toBe(e1.key_id) // the failed calls did not move it

  await startBridge()
  const up = await client.status()
  expect(up).toMatchObject({ healthz: 'ok', key_id: e1.key_id })
  expect((await client.encrypt(seed())).key_id).toBe(e1.key_id)
  expect(Buffer.compare(await client.decrypt({ ciphertext: e1.ciphertext, key_id: e1.key_id, annotations: e1.annotations }), Buffer.from(s1))).toBe(0)
  client.close()
  await stop(second.child)
}, 60_000)
