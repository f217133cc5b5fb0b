import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { KeyChain, OVERHEAD_BYTES, decodeMessage, aesRootKey, embeddedStore, memoryStore } from '../src/index.ts'
import { ROOT_BYTES, text } from './helpers.ts'

const modes = [
  ['memory store', () => memoryStore()],
  ['embedded store', () => embeddedStore()],
] as const

describe.each(modes)('round trips, %s', (_, makeStore) => {
  it('empty, 1 B, 1 KiB and 1 MiB', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
    for (const size of [0, 1, 1024, 1024 * 1024]) {
      const data = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)))
      const plaintext = new Uint8Array(size)
      for (let o = 0; o < size; o += data.length) plaintext.set(data.subarray(0, Math.min(data.length, size - o)), o)
      const encrypted = await chain.encrypt(plaintext)
      expect(encrypted.length).toBeGreaterThanOrEqual(size + OVERHEAD_BYTES)
      const decrypted = await chain.decrypt(encrypted)
      expect(decrypted.length).toBe(size)
      expect(Buffer.compare(decrypted, plaintext)).toBe(0)
    }
  })

  it('random sizes and associated data (property)', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 5000 }), fc.uint8Array({ maxLength: 64 }), async (plaintext, ad) => {
        const encrypted = await chain.encrypt(plaintext, { associatedData: ad })
        expect(await chain.decrypt(encrypted, { associatedData: ad })).toEqual(plaintext)
      }),
      { numRuns: 200 },
    )
  })

  it('strings in, the same strings out; text form survives JSON', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
    await fc.assert(
      fc.asyncProperty(fc.string({ unit: 'grapheme', maxLength: 200 }), fc.string({ maxLength: 20 }), async (s, ad) => {
        const encryptedText = await chain.encryptText(s, { associatedData: ad })
        expect(encryptedText.startsWith('kp1.')).toBe(true)
        expect(encryptedText).toMatch(/^kp1\.[A-Za-z0-9_-]+$/)
        const viaJson = JSON.parse(JSON.stringify({ v: encryptedText })).v
        expect(await chain.decryptText(viaJson, { associatedData: ad })).toBe(s)
        expect(text(await chain.decrypt(await chain.encrypt(s, { associatedData: ad }), { associatedData: ad }))).toBe(s)
      }),
      { numRuns: 100 },
    )
  })
})

it('two encryptions of the same plaintext differ (fresh DEK and IVs each time)', async () => {
  const chain = await KeyChain.open()
  const a = await chain.encrypt('same')
  const b = await chain.encrypt('same')
  expect(a).not.toEqual(b)
  const [pa, pb] = [decodeMessage(a), decodeMessage(b)]
  expect(pa.kekId).toBe(pb.kekId)
  expect(pa.iv1).not.toEqual(pb.iv1)
  expect(pa.wrappedDek).not.toEqual(pb.wrappedDek)
  expect(pa.iv2).not.toEqual(pb.iv2)
})

it('KeyChain.open() with no options: ephemeral root key and embedded store, like kms.New()', async () => {
  const chain = await KeyChain.open()
  const encrypted = await chain.encrypt('plaintext')
  expect(encrypted[5]! & 1).toBe(1) // the wrapped KEK travels in the data
  expect(text(await chain.decrypt(encrypted))).toBe('plaintext')
  // Another process (another ephemeral root) can never read it.
  const other = await KeyChain.open()
  await expect(other.decrypt(encrypted)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
})
