import { describe, expect, it } from 'vitest'
import { KeyChain, aesRootKey, decodeMessage, embeddedStore, memoryStore } from '../src/index.ts'
import { hashPrefix, prefixEnd } from '../src/internal/deks.ts'
import { OTHER_ROOT_BYTES, ROOT_BYTES, expectCode, text } from './helpers.ts'

const AD = { associatedData: 'row 7' }

/** A chain of each header shape: no embedded KEK, one embedded KEK (v1), wraps under two roots (v2). */
async function chains() {
  return [
    ['stored KEK', await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })],
    ['embedded KEK, format v1', await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: embeddedStore() })],
    [
      'embedded KEK under two roots, format v2',
      await KeyChain.open({ roots: { a: aesRootKey(ROOT_BYTES), b: aesRootKey(OTHER_ROOT_BYTES) }, store: embeddedStore() }),
    ],
  ] as const
}

describe('the DEK cache on decryption', () => {
  it('a hit finds the DEK of every header shape without parsing, and gives the same plaintext', async () => {
    for (const [name, chain] of await chains()) {
      const encrypted = await chain.encrypt('hello', AD)
      expect(prefixEnd(encrypted), name).toBe(decodeMessage(encrypted).dekPrefix.length)
      expect(text(await chain.decrypt(encrypted, AD)), name).toBe('hello')
      const before = chain.stats().dekCacheHits
      for (let i = 0; i < 5; i++) expect(text(await chain.decrypt(encrypted, AD)), name).toBe('hello')
      expect(chain.stats().dekCacheHits - before, name).toBe(5)
      chain.close()
    }
  })

  it('the layout reader says nothing of bytes too short to hold a DEK prefix', () => {
    expect(prefixEnd(new Uint8Array(5))).toBeUndefined()
    expect(prefixEnd(Uint8Array.of(1, 0, 0, 0, 1, 1, 0))).toBeUndefined() // v1 embedded, no length
    expect(prefixEnd(Uint8Array.of(2, 0, 0, 0, 1, 1, 2, 3, 97))).toBeUndefined() // v2, cut inside a name
  })

  it('a DEK used since it was cached outlives one that was not (least recently used out, by second chance)', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore(), dekCacheSize: 2 })
    const [a, b, c] = [await chain.encrypt('a', AD), await chain.encrypt('b', AD), await chain.encrypt('c', AD)]
    await chain.decrypt(a, AD)
    await chain.decrypt(b, AD)
    await chain.decrypt(a, AD) // a is used again: b is now the least recently used
    await chain.decrypt(c, AD) // evicts b, not a
    const { dekCacheHits, dekCacheMisses } = chain.stats()
    await chain.decrypt(a, AD)
    expect(chain.stats().dekCacheHits - dekCacheHits).toBe(1)
    await chain.decrypt(b, AD)
    expect(chain.stats().dekCacheMisses - dekCacheMisses).toBe(1)
    chain.close()
  })

  it("a stream's cached DEK never lets its header pass as a message", async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
    const input = new Blob([new Uint8Array(100)]).stream()
    const sealed = new Uint8Array(await new Response(input.pipeThrough(chain.encryptStream(AD))).arrayBuffer())
    // Decrypting the stream caches its DEK under its header || iv1 || wrapped DEK.
    await new Response(new Blob([sealed]).stream().pipeThrough(chain.decryptStream(AD))).arrayBuffer()
    const error = await expectCode(chain.decrypt(sealed, AD), 'ERR_FORMAT')
    expect(error.message).toMatch(/stream/)
    chain.close()
  })

  it('a message cut right after a cached prefix is ERR_FORMAT, as without the cache', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
    const encrypted = await chain.encrypt('hello', AD)
    await chain.decrypt(encrypted, AD)
    const end = prefixEnd(encrypted)!
    for (const n of [end, end + 12, end + 12 + 15]) await expectCode(chain.decrypt(encrypted.subarray(0, n), AD), 'ERR_FORMAT')
    chain.close()
  })

  it("a prefix whose hash equals a cached one is a miss: another message's DEK never decrypts it", async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore(), dekCacheSize: 1024 })
    const cached = new Map<number, Uint8Array>()
    for (let i = 0; i < 1024; i++) {
      const encrypted = await chain.encrypt(`message ${i}`, AD)
      await chain.decrypt(encrypted, AD)
      cached.set(hashPrefix(encrypted, prefixEnd(encrypted)!), encrypted)
    }
    // A forged prefix (the wrapped DEK's tag of a fresh message changed: the bytes the hash
    // reads) whose 32-bit hash hits a cached entry: about 2^22 tries against 1,024 entries.
    const victim = await chain.encrypt('not this one', AD)
    const end = prefixEnd(victim)!
    const forged = victim.slice(0, end)
    const view = new DataView(forged.buffer)
    let target: Uint8Array | undefined
    for (let n = 0; n < 2 ** 26 && !target; n++) {
      view.setUint32(end - 4, n)
      target = cached.get(hashPrefix(forged, end))
    }
    expect(target, 'no colliding prefix found').toBeDefined()
    // The forged prefix, then the payload of the cached message it collides with: were the hash
    // the whole check, this would decrypt under that message's DEK and return its plaintext.
    const tEnd = prefixEnd(target!)!
    const spliced = new Uint8Array([...forged, ...target!.subarray(tEnd)])
    expect(hashPrefix(spliced, end)).toBe(hashPrefix(target!, tEnd))
    const hits = chain.stats().dekCacheHits
    await expectCode(chain.decrypt(spliced, AD), 'ERR_DECRYPT')
    expect(chain.stats().dekCacheHits).toBe(hits)
    chain.close()
  })
})
