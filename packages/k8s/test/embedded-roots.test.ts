/**
 * The embedded store with a chain of several roots writes format v2: the KEK rides in the data
 * once per root, each wrap named by its root (core's decodeHeader gives `embeddedKeks`;
 * `embeddedKek` is undefined in v2). Encrypt must move all of them into the kek.kms-proxy.dev
 * annotation and Decrypt must put them back, byte for byte, over the real socket.
 */
import { afterEach, expect, it } from 'vitest'
import { KeyChain, aesRootKey, decodeHeader, embeddedStore } from '@kms-proxy/core'
import { KEK_ANNOTATION, serveKmsPlugin } from '../src/index.ts'
import { codeOf, grpcError, kmsClient, seed, tempDir } from './client.ts'

const HSM_BYTES = crypto.getRandomValues(new Uint8Array(32))
const KMS_BYTES = crypto.getRandomValues(new Uint8Array(32))
const cleanups: (() => unknown)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function serve(chain: KeyChain, name: string) {
  const t = tempDir()
  cleanups.push(t.cleanup)
  const plugin = await serveKmsPlugin({ socket: t.socket, chain })
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
