import { afterEach, expect, it, vi } from 'vitest'
import { KeyChain, aesRootKey, embeddedStore, memoryStore } from '../src/index.ts'
import { ROOT_BYTES, counting } from './helpers.ts'

afterEach(() => {
  vi.restoreAllMocks()
})

async function expectNotExportable(key: CryptoKey) {
  expect(key.extractable).toBe(false)
  await expect(crypto.subtle.exportKey('raw', key)).rejects.toThrow()
  await expect(crypto.subtle.exportKey('jwk', key)).rejects.toThrow()
}

it('every KEK is non-extractable: exportKey rejects', async () => {
  const rootKey = counting()
  const store = memoryStore()
  const chain = await KeyChain.open({ rootKey, store, maxWrapsPerKek: 5 })
  for (let i = 0; i < 20; i++) await chain.encrypt('x')
  const reader = await KeyChain.open({ rootKey, store })
  for (const e of [await chain.encrypt('y')]) await reader.decrypt(e)
  expect(rootKey.keks.length).toBeGreaterThanOrEqual(5)
  for (const kek of rootKey.keks) await expectNotExportable(kek)
})

it('every DEK used to decrypt, and every DEK used to encrypt, is non-extractable', async () => {
  const unwrapped: Promise<CryptoKey>[] = []
  const imported: Promise<CryptoKey>[] = []
  const realUnwrap = crypto.subtle.unwrapKey.bind(crypto.subtle)
  const realImport = crypto.subtle.importKey.bind(crypto.subtle)
  vi.spyOn(crypto.subtle, 'unwrapKey').mockImplementation((...args: Parameters<SubtleCrypto['unwrapKey']>) => {
    const p = realUnwrap(...args)
    unwrapped.push(p)
    return p
  })
  vi.spyOn(crypto.subtle, 'importKey').mockImplementation(((...args: Parameters<SubtleCrypto['importKey']>) => {
    const p = realImport(...(args as [any, any, any, any, any]))
    imported.push(p)
    return p
  }) as SubtleCrypto['importKey'])
  for (const store of [memoryStore(), embeddedStore()]) {
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const encrypted = await Promise.all(Array.from({ length: 20 }, (_, i) => writer.encrypt(`m${i}`)))
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    for (const e of encrypted) await reader.decrypt(e)
  }
  // 2 x 20 DEK unwraps plus the KEK unwraps; 40+ DEK imports.
  expect(unwrapped.length).toBeGreaterThanOrEqual(40)
  expect(imported.length).toBeGreaterThanOrEqual(40)
  for (const p of [...unwrapped, ...imported]) await expectNotExportable(await p)
})

it('DEK bytes are zeroed once imported and wrapped', async () => {
  const seen: Uint8Array[] = []
  const realImport = crypto.subtle.importKey.bind(crypto.subtle)
  vi.spyOn(crypto.subtle, 'importKey').mockImplementation(((...args: Parameters<SubtleCrypto['importKey']>) => {
    if (args[0] === 'raw' && args[1] instanceof Uint8Array && args[1].length === 16) seen.push(args[1])
    return realImport(...(args as [any, any, any, any, any]))
  }) as SubtleCrypto['importKey'])
  const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
  const encrypted = []
  for (let i = 0; i < 10; i++) encrypted.push(await chain.encrypt(`m${i}`))
  expect(seen.length).toBeGreaterThanOrEqual(10)
  for (const bytes of seen) expect(bytes.every((b) => b === 0)).toBe(true)
  // And the data still decrypts: the zeroing came after WebCrypto had copied the bytes.
  for (const [i, e] of encrypted.entries()) expect(new TextDecoder().decode(await chain.decrypt(e))).toBe(`m${i}`)
})

it('root keys refuse to hand back an extractable KEK', async () => {
  const leaky = {
    kind: 'leaky',
    async newKek() {
      // extractable: true on purpose: this test root is the bug the chain must catch.
      const kek = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 128 }, true, ['encrypt', 'wrapKey', 'unwrapKey'])
      return { kek, wrapped: new Uint8Array(8) }
    },
    async unwrapKek(): Promise<CryptoKey> {
      throw new Error('unused')
    },
  }
  const chain = await KeyChain.open({ rootKey: leaky, store: memoryStore() })
  await expect(chain.encrypt('x')).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/extractable/) })
})
