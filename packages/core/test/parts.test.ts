import { describe, expect, it } from 'vitest'
import { KeyChain, OVERHEAD_BYTES, aesRootKey, decodeMessage, embeddedStore, memoryStore } from '../src/index.ts'
import { ROOT_BYTES, expectCode, text } from './helpers.ts'

/** Byte equality without the matcher's element-by-element walk (1 MiB would take seconds). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

describe('encryptParts', () => {
  it('gives the encrypted data in two parts that decrypt once joined, the body being the ciphertext itself', async () => {
    for (const store of [memoryStore(), embeddedStore()]) {
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
      const plaintext = new Uint8Array(1 << 20).map((_, i) => (i * 7) & 0xff)
      const [head, body] = await chain.encryptParts(plaintext, { associatedData: 'upload/7' })
      expect(body.length).toBe(plaintext.length + 16)
      const joined = new Uint8Array(await new Blob([head, body]).arrayBuffer())
      const parts = decodeMessage(joined)
      expect(same(parts.sealed, body)).toBe(true)
      expect(head.length).toBe(joined.length - body.length)
      expect(same(await chain.decrypt(joined, { associatedData: 'upload/7' }), plaintext)).toBe(true)
      await expectCode(chain.decrypt(joined, { associatedData: 'upload/8' }), 'ERR_DECRYPT')
      chain.close()
    }
  })

  it('has the layout, the counts and the errors of encrypt', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
    const [head, body] = await chain.encryptParts('hello')
    expect(head.length + body.length).toBe(OVERHEAD_BYTES + 5)
    expect(text(await chain.decrypt(new Uint8Array([...head, ...body])))).toBe('hello')
    expect(chain.stats().encryptions).toBe(1)
    await expect(chain.encryptParts(42 as never)).rejects.toBeInstanceOf(TypeError)
    await expect(chain.encryptParts('\uD800')).rejects.toBeInstanceOf(TypeError)
    chain.close()
  })
})
