/**
 * Known-answer vectors for format v2 (docs/FORMAT.md: the KEK embedded once per named root), made
 * by e2e/vectors/generate-v2.mjs, an independent encoder on raw crypto.subtle. This test only
 * READS e2e/vectors/v2.json.
 */
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import {
  FORMAT_VERSION_ROOTS,
  KeyChain,
  KmsProxyError,
  OVERHEAD_BYTES,
  aesRootKey,
  decodeHeader,
  decodeMessage,
  embeddedStore,
  type ErrorCode,
} from '../src/index.ts'
import { _setRandomSourceForVectors } from '../src/internal/random.ts'

interface V2Case {
  name: string
  description: string
  kind: 'positive' | 'negative'
  chain: string
  kekId: number
  kek: string
  roots: { root: string; rootKey: string; wrappedKek: string }[]
  headerLength: number
  dek: string
  iv1: string
  iv2: string
  plaintext: string
  associatedData: string
  encrypted: string
  expectedError?: ErrorCode
}

const cases: V2Case[] = JSON.parse(readFileSync(new URL('../../../e2e/vectors/v2.json', import.meta.url), 'utf8'))
const positives = cases.filter((c) => c.kind === 'positive')
const negatives = cases.filter((c) => c.kind === 'negative')
const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))
const toHex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')

describe('format v2 vectors file', () => {
  it('has positive and negative cases with unique names', () => {
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length)
    expect(positives.length).toBeGreaterThanOrEqual(4)
    expect(negatives.length).toBeGreaterThanOrEqual(10)
    for (const c of negatives) expect(c.expectedError, c.name).toMatch(/^ERR_/)
  })
})

describe.each(positives.map((c) => [c.name, c] as const))('positive %s', (_, c) => {
  const encrypted = hex(c.encrypted)
  const associatedData = hex(c.associatedData)

  it('decodes: version 2, KEK id, every root by name with its wrapped KEK', () => {
    const h = decodeHeader(encrypted)
    expect(h.version).toBe(FORMAT_VERSION_ROOTS)
    expect(h.kekId).toBe(c.kekId)
    expect(h.flags).toBe(0x01)
    expect(h.embeddedKek).toBeUndefined()
    expect(h.embeddedKeks!.map((e) => [e.root, toHex(e.wrapped)])).toEqual(c.roots.map((r) => [r.root, r.wrappedKek]))
    expect(h.headerLength).toBe(c.headerLength)
    expect(h.headerLength).toBe(7 + c.roots.reduce((n, r) => n + 1 + r.root.length + 2 + r.wrappedKek.length / 2, 0))
    const m = decodeMessage(encrypted)
    expect(toHex(m.iv1)).toBe(c.iv1)
    expect(toHex(m.iv2)).toBe(c.iv2)
    expect(encrypted.length).toBe(hex(c.plaintext).length + OVERHEAD_BYTES + c.headerLength - 6)
  })

  it.each(c.roots.map((r) => [r.root, r] as const))('decrypts with the root %s alone', async (_, r) => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(hex(r.rootKey)), store: embeddedStore(), name: c.chain })
    expect(toHex(await chain.decrypt(encrypted, { associatedData }))).toBe(c.plaintext)
    expect(chain.stats().rootKeyUnwraps).toBeLessThanOrEqual(c.roots.length)
  })

  it('encrypts to the same bytes (KAT: the KEK stored under every root, randomness = dek, iv1, iv2)', async () => {
    const store = embeddedStore()
    for (const r of c.roots) {
      expect(await store.putKekIfAbsent(c.chain, { id: c.kekId, createdAt: Date.now(), rootKind: 'aes', wrapped: hex(r.wrappedKek), root: r.root })).toBe(true)
    }
    const roots = c.roots.map((r) => ({ name: r.root, kind: 'aes', state: 'active' as const }))
    expect(await store.casHead(c.chain, undefined, { primary: c.kekId, primaryCreatedAt: Date.now(), leased: 0, roots })).toBe(true)
    const chain = await KeyChain.open({ roots: Object.fromEntries(c.roots.map((r) => [r.root, aesRootKey(hex(r.rootKey))])), store, name: c.chain, dekPoolSize: 0 })
    const draws = [hex(c.dek), hex(c.iv1), hex(c.iv2)]
    let next = 0
    _setRandomSourceForVectors((n) => {
      const d = draws[next++]
      if (!d || d.length !== n) throw new Error(`unexpected random draw #${next} of ${n} bytes`)
      return d.slice()
    })
    let output: Uint8Array
    try {
      output = await chain.encrypt(hex(c.plaintext), { associatedData })
    } finally {
      _setRandomSourceForVectors(undefined)
    }
    expect(next).toBe(3)
    expect(toHex(output)).toBe(c.encrypted)
    expect(chain.stats()).toMatchObject({ rotations: 0, rootKeyWraps: 0, rootKeyUnwraps: 1 })
  })
})

describe.each(negatives.map((c) => [c.name, c] as const))('negative %s', (_, c) => {
  it(`fails with ${c.expectedError}`, async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(hex(c.roots[0]!.rootKey)), store: embeddedStore(), name: c.chain })
    let error: unknown
    try {
      await chain.decrypt(hex(c.encrypted), { associatedData: hex(c.associatedData) })
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(KmsProxyError)
    expect((error as KmsProxyError).code).toBe(c.expectedError)
  })
})

describe('text form of v2 data', () => {
  it('is kp2. + base64url; a kp1. prefix on v2 bytes (or kp2. on v1) is ERR_FORMAT', async () => {
    const [c] = positives
    const chain = await KeyChain.open({ rootKey: aesRootKey(hex(c!.roots[0]!.rootKey)), store: embeddedStore(), name: c!.chain })
    const b64 = Buffer.from(hex(c!.encrypted)).toString('base64url')
    expect(toHex(await chain.decrypt(hex(c!.encrypted)))).toBe(c!.plaintext)
    const two = await KeyChain.open({ roots: { a: aesRootKey(hex(c!.roots[0]!.rootKey)), b: aesRootKey(hex(c!.roots[1]!.rootKey)) } })
    const text = await two.encryptText('hi')
    expect(text.startsWith('kp2.')).toBe(true)
    expect(await two.decryptText(text)).toBe('hi')
    for (const bad of ['kp1.' + b64, 'kp1.' + text.slice(4)]) {
      let error: unknown
      try {
        await chain.decryptText(bad)
      } catch (e) {
        error = e
      }
      expect((error as KmsProxyError).code).toBe('ERR_FORMAT')
    }
  })
})
