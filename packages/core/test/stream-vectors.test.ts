/**
 * Known-answer vectors for streams (docs/FORMAT.md, "Streams"): the "stream-positive" and
 * "stream-negative" cases of e2e/vectors/v1.json, sealed by e2e/vectors/generate.mjs with
 * node:crypto. Read only; never regenerated here.
 */
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError, aesRootKey, decodeStreamHeader, embeddedStore, isStream, memoryStore, type ErrorCode } from '../src/index.ts'
import { _setRandomSourceForVectors } from '../src/internal/random.ts'
import { chunked, through, throughUntilError } from './stream-helpers.ts'

interface StreamCase {
  name: string
  kind: string
  rootKey: string
  chain: string
  kekId: number
  wrappedKek: string
  mode: 'stored' | 'embedded'
  dek: string
  iv1: string
  noncePrefix: string
  segmentSize: number
  plaintext: string
  associatedData: string
  encrypted: string
  expectedError?: ErrorCode
}

const all: StreamCase[] = JSON.parse(readFileSync(new URL('../../../e2e/vectors/v1.json', import.meta.url), 'utf8'))
const positives = all.filter((c) => c.kind === 'stream-positive')
const negatives = all.filter((c) => c.kind === 'stream-negative')
const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))
const toHex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')

async function openFor(c: StreamCase, withHead = false): Promise<KeyChain> {
  const store = c.mode === 'stored' ? memoryStore() : embeddedStore()
  if (c.mode === 'stored' || withHead) {
    await store.putKekIfAbsent(c.chain, { id: c.kekId, createdAt: Date.now(), rootKind: 'aes', wrapped: hex(c.wrappedKek) })
  }
  if (withHead) await store.casHead(c.chain, undefined, { primary: c.kekId, primaryCreatedAt: Date.now(), leased: 0 })
  return KeyChain.open({ rootKey: aesRootKey(hex(c.rootKey)), store, name: c.chain, dekPoolSize: 0 })
}

describe('stream vectors file', () => {
  it('has stream cases in both modes, with the message cases untouched before them', () => {
    expect(positives.length).toBeGreaterThanOrEqual(10)
    expect(negatives.length).toBeGreaterThanOrEqual(30)
    for (const mode of ['stored', 'embedded']) expect(positives.filter((c) => c.mode === mode).length).toBeGreaterThanOrEqual(3)
    // Appended, not interleaved: the first 64 cases are the original message vectors.
    expect(all.slice(0, 64).every((c) => c.kind === 'positive' || c.kind === 'negative')).toBe(true)
    expect(all.slice(64).every((c) => c.kind.startsWith('stream-'))).toBe(true)
  })
})

describe.each(positives.map((c) => [c.name, c] as const))('stream positive %s', (_, c) => {
  const plaintext = hex(c.plaintext)
  const associatedData = hex(c.associatedData)
  const encrypted = hex(c.encrypted)

  it('decodes and decrypts, whole and in small chunks', async () => {
    expect(isStream(encrypted)).toBe(true)
    const h = decodeStreamHeader(encrypted)
    expect(h.kekId).toBe(c.kekId)
    expect(h.segmentSize).toBe(c.segmentSize)
    expect(toHex(h.noncePrefix)).toBe(c.noncePrefix)
    expect(toHex(h.iv1)).toBe(c.iv1)
    const chain = await openFor(c)
    for (const sizes of [[encrypted.length], [1, 2, 3, 5, 8, 13]]) {
      const out = await through(chain.decryptStream({ associatedData }), chunked(encrypted, sizes))
      expect(toHex(out)).toBe(c.plaintext)
    }
  })

  it('encrypting with the same DEK, iv1 and nonce prefix gives the same bytes', async () => {
    const chain = await openFor(c, true)
    const draws = [hex(c.dek), hex(c.iv1), hex(c.noncePrefix)]
    let next = 0
    _setRandomSourceForVectors((n) => {
      const draw = draws[next++]
      if (!draw || draw.length !== n) throw new Error(`unexpected random draw #${next} of ${n} bytes`)
      return draw.slice()
    })
    try {
      const out = await through(chain.encryptStream({ associatedData, segmentSize: c.segmentSize }), chunked(plaintext, [3, 100]))
      expect(next).toBe(3)
      expect(toHex(out)).toBe(c.encrypted)
    } finally {
      _setRandomSourceForVectors(undefined)
    }
  })
})

describe.each(negatives.map((c) => [c.name, c] as const))('stream negative %s', (_, c) => {
  it(`fails with ${c.expectedError} and releases no plaintext it should not`, async () => {
    const chain = await openFor(c)
    const encrypted = hex(c.encrypted)
    const plaintext = hex(c.plaintext)
    for (const sizes of [[encrypted.length], [7, 1, 64]]) {
      const { output, error } = await throughUntilError(chain.decryptStream({ associatedData: hex(c.associatedData) }), chunked(encrypted, sizes))
      expect(error, 'the stream must error').toBeInstanceOf(KmsProxyError)
      expect((error as KmsProxyError).code).toBe(c.expectedError)
      // Whatever came out is authentic: a prefix of the real plaintext, in whole segments.
      expect(output.length % c.segmentSize).toBe(0)
      expect(Buffer.compare(output, plaintext.subarray(0, output.length))).toBe(0)
    }
  })
})
