/**
 * A plugin whose chain has several roots. Its configuration names them (`roots`), and each is
 * probed for health. The embedded store with a chain of several roots writes format v2: the KEK rides in the data
 * once per root, each wrap named by its root (core's decodeHeader gives `embeddedKeks`;
 * `embeddedKek` is undefined in v2). Encrypt must move all of them into the kek.kms-proxy.dev
 * annotation and Decrypt must put them back, byte for byte, over the real socket.
 */
import { afterEach, expect, it } from 'vitest'
import { join } from 'node:path'
import { KeyChain, RootKeyError, aesRootKey, decodeHeader, embeddedStore, type RootKey } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { countingRootKey } from '@kms-proxy/testkit'
import { KEK_ANNOTATION, serveKmsPlugin, type KmsPluginOptions } from '../src/index.ts'
import { codeOf, grpcError, kmsClient, seed, tempDir } from './client.ts'

const HSM_BYTES = crypto.getRandomValues(new Uint8Array(32))
const KMS_BYTES = crypto.getRandomValues(new Uint8Array(32))
const cleanups: (() => unknown)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function serve(chain: KeyChain, name: string, options: Partial<KmsPluginOptions> = {}) {
  const t = tempDir()
  cleanups.push(t.cleanup)
  const plugin = await serveKmsPlugin({ socket: t.socket, chain, ...options })
  cleanups.push(() => plugin.close())
  const client = kmsClient(t.socket)
  cleanups.push(() => client.close())
  return { plugin, client, name }
}

it('format v2 (two roots on the embedded store): every wrap moves to the annotation and back; a plugin holding either root alone decrypts', async () => {
  const both = await KeyChain.open({ roots: { default: aesRootKey(HSM_BYTES), kms: aesRootKey(KMS_BYTES) }, store: embeddedStore(), name: 'cluster-a' })
  const writer = await serve(both, 'both')
  const s = seed()
  const e = await writer.client.encrypt(s)
  // 110 bytes whatever the roots weigh: the wraps are in the annotation, not in the ciphertext.
  expect(e.ciphertext.length).toBe(110)
  expect(e.ciphertext[0]).toBe(2)
  const block = e.annotations[KEK_ANNOTATION]!
  // count (1) + per root: name length (1), name, u16 length (2), the 45-byte AES wrap
  expect(block.length).toBe(1 + (1 + 7 + 2 + 45) + (1 + 3 + 2 + 45))
  expect(Buffer.compare(await writer.client.decrypt({ ciphertext: e.ciphertext, key_id: e.key_id, annotations: e.annotations }), Buffer.from(s))).toBe(0)
  // Each root alone, in a plugin of its own (a node redeployed with one root), reads the same data.
  for (const [name, bytes] of [['default', HSM_BYTES], ['kms', KMS_BYTES]] as const) {
    const one = await serve(await KeyChain.open({ rootKey: aesRootKey(bytes), store: embeddedStore(), name: 'cluster-a' }), name)
    expect(Buffer.compare(await one.client.decrypt({ ciphertext: e.ciphertext, key_id: e.key_id, annotations: e.annotations }), Buffer.from(s)), name).toBe(0)
  }
  // The block is authenticated: one byte changed in it, or the annotation dropped, is refused.
  const bad = Uint8Array.from(block)
  bad[bad.length - 1]! ^= 1
  expect(codeOf(await grpcError(writer.client.decrypt({ ciphertext: e.ciphertext, key_id: e.key_id, annotations: { [KEK_ANNOTATION]: bad } })))).toMatch(/INVALID_ARGUMENT|FAILED_PRECONDITION/)
  expect(codeOf(await grpcError(writer.client.decrypt({ ciphertext: e.ciphertext, key_id: e.key_id, annotations: {} })))).toBe('INVALID_ARGUMENT')
  // The header the chain authenticated is exactly the one it wrote.
  const joined = decodeHeader(Uint8Array.from([...e.ciphertext.subarray(0, 6), ...block, ...e.ciphertext.subarray(6)]))
  expect(joined.embeddedKeks!.map((k) => k.root)).toEqual(['default', 'kms'])
})

/** A real AES root that can be switched off (a KMS or HSM that stops answering). */
function switchable(bytes: Uint8Array) {
  const inner = countingRootKey(aesRootKey(bytes))
  let down = false
  const refuse = () => Promise.reject(new RootKeyError('the root is unreachable', { retryable: true }))
  const key: RootKey = {
    kind: inner.kind,
    newKek: (aad) => (down ? refuse() : inner.newKek(aad)),
    wrapKek: (kek, aad) => (down ? refuse() : inner.wrapKek!(kek, aad)),
    unwrapKek: (w, aad, o) => (down ? refuse() : inner.unwrapKek(w, aad, o)),
  }
  return { key, inner, setDown: (d: boolean) => void (down = d) }
}

it('roots in the configuration: each root is probed once per healthCacheMs; one down marks the plugin degraded and names it, healthz stays ok; rootKey and roots together are refused', async () => {
  const t = tempDir()
  cleanups.push(t.cleanup)
  const [hsm, kms] = [switchable(HSM_BYTES), switchable(KMS_BYTES)]
  const roots = { default: hsm.key, kms: kms.key }
  const chain = await KeyChain.open({ roots, store: fileStore(join(t.dir, 'keys.json')), name: 'cluster-a' })
  const { plugin, client } = await serve(chain, 'both', { roots, healthCacheMs: 3_600_000 })
  expect(await plugin.checkHealth()).toBe('ok')
  const health = plugin.stats().health
  expect(health.roots).toMatchObject({ default: { ok: true }, kms: { ok: true } })
  expect(health.degraded).toBeUndefined()
  // Probes are one newKek per root; more Status calls within healthCacheMs add none.
  const [hsmCalls, kmsCalls] = [hsm.inner.wraps, kms.inner.wraps]
  for (let i = 0; i < 5; i++) expect((await client.status()).healthz).toBe('ok')
  expect([hsm.inner.wraps, kms.inner.wraps]).toEqual([hsmCalls, kmsCalls])

  kms.setDown(true)
  expect(await plugin.checkHealth()).toBe('ok')
  const down = plugin.stats().health
  expect(down.roots!.default).toMatchObject({ ok: true })
  expect(down.roots!.kms).toMatchObject({ ok: false, error: 'ERR_ROOT_KEY: the root is unreachable' })
  expect(down.rootKey).toMatchObject({ ok: false, error: 'kms: ERR_ROOT_KEY: the root is unreachable' })
  expect(down.degraded).toBe('root key: kms: ERR_ROOT_KEY: the root is unreachable')
  // The chain unlocks through the other root: a fresh plugin on the same store serves with the KMS down.
  const reader = await KeyChain.open({ roots: { default: switchable(HSM_BYTES).key, kms: kms.key }, store: fileStore(join(t.dir, 'keys.json')), name: 'cluster-a' })
  const other = await serve(reader, 'reader')
  const s = seed()
  const e = await client.encrypt(s)
  expect(Buffer.compare(await other.client.decrypt({ ciphertext: e.ciphertext, key_id: e.key_id, annotations: e.annotations }), Buffer.from(s))).toBe(0)
  kms.setDown(false)
  expect(await plugin.checkHealth()).toBe('ok')
  expect(plugin.stats().health.degraded).toBeUndefined()

  await expect(serveKmsPlugin({ socket: join(t.dir, 'x.sock'), chain, roots, rootKey: hsm.key })).rejects.toThrow(TypeError)
  await expect(serveKmsPlugin({ socket: join(t.dir, 'x.sock'), chain, roots: {} })).rejects.toThrow(TypeError)
  await expect(serveKmsPlugin({ socket: join(t.dir, 'x.sock'), chain, roots: { 'no space': hsm.key } })).rejects.toThrow(TypeError)
  await expect(serveKmsPlugin({ socket: join(t.dir, 'x.sock'), chain, roots: { kms: {} as RootKey } })).rejects.toThrow(TypeError)
})
