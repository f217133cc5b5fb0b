/**
 * Known-answer vectors for format v1 (docs/FORMAT.md), made by e2e/vectors/generate.mjs, an
 * independent encoder on raw crypto.subtle. This test only READS e2e/vectors/v1.json; it never
 * regenerates it. A failure here means the library and the written format disagree.
 */
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import {
  FORMAT_VERSION,
  KeyChain,
  KmsProxyError,
  OVERHEAD_BYTES,
  aesRootKey,
  decodeHeader,
  decodeMessage,
  embeddedStore,
  memoryStore,
  type ErrorCode,
  type KeyStore,
} from '../src/index.ts'
import { _setRandomSourceForVectors } from '../src/internal/random.ts'

interface VectorCase {
  name: string
  description: string
  kind: 'positive' | 'negative'
  rootKey: string
  chain: string
  kekId: number
  kek: string
  iv0: string
  wrappedKek: string
  mode: 'stored' | 'embedded'
  dek: string
  iv1: string
  iv2: string
  plaintext: string
  associatedData: string
  encrypted: string
  text?: string
  expectedError?: ErrorCode
}

const cases: VectorCase[] = JSON.parse(readFileSync(new URL('../../../e2e/vectors/v1.json', import.meta.url), 'utf8'))
const positives = cases.filter((c) => c.kind === 'positive')
const negatives = cases.filter((c) => c.kind === 'negative')

const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))
const toHex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex')

/** A fresh store for the case: stored mode holds the KEK record; embedded mode starts empty. */
async function storeFor(c: VectorCase, withHead: boolean): Promise<KeyStore> {
  const store = c.mode === 'stored' ? memoryStore() : embeddedStore()
  if (c.mode === 'stored' || withHead) {
    const put = await store.putKekIfAbsent(c.chain, { id: c.kekId, createdAt: Date.now(), rootKind: 'aes', wrapped: hex(c.wrappedKek) })
    expect(put).toBe(true)
  }
  if (withHead) {
    expect(await store.casHead(c.chain, undefined, { primary: c.kekId, primaryCreatedAt: Date.now(), leased: 0 })).toBe(true)
  }
  return store
}

async function openFor(c: VectorCase, options: { withHead?: boolean; dekPoolSize?: number } = {}): Promise<KeyChain> {
  return KeyChain.open({
    rootKey: aesRootKey(hex(c.rootKey)),
    store: await storeFor(c, options.withHead ?? false),
    name: c.chain,
    ...(options.dekPoolSize === undefined ? {} : { dekPoolSize: options.dekPoolSize }),
  })
}

/**
 * A random source that hands out exactly these byte strings, in this order, with these sizes,
 * and fails on any other draw. Each draw is a fresh copy: the chain zeroes DEK bytes after import.
 */
function scripted(draws: Array<[label: string, bytes: Uint8Array]>) {
  let next = 0
  const source = (n: number): Uint8Array => {
    const draw = draws[next]
    if (!draw) throw new Error(`unexpected random draw #${next + 1} of ${n} bytes (script has ${draws.length})`)
    const [label, bytes] = draw
    if (bytes.length !== n) throw new Error(`random draw #${next + 1}: wanted ${n} bytes, the script has ${label} (${bytes.length})`)
    next++
    return bytes.slice()
  }
  return { source, used: () => next }
}

describe('format v1 vectors file', () => {
  it('has positive and negative cases in both modes, with unique names', () => {
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length)
    expect(positives.length).toBeGreaterThanOrEqual(8)
    for (const mode of ['stored', 'embedded']) {
      expect(positives.filter((c) => c.mode === mode).length).toBeGreaterThanOrEqual(4)
      expect(negatives.filter((c) => c.mode === mode).length).toBeGreaterThan(0)
    }
    for (const c of negatives) expect(c.expectedError, c.name).toMatch(/^ERR_/)
  })
})

describe.each(positives.map((c) => [c.name, c] as const))('positive %s', (_, c) => {
  const plaintext = hex(c.plaintext)
  const associatedData = hex(c.associatedData)
  const encrypted = hex(c.encrypted)

  it('decodes: version, KEK id, flags, lengths', () => {
    const h = decodeHeader(encrypted)
    const embedded = c.mode === 'embedded'
    expect(h.version).toBe(FORMAT_VERSION)
    expect(h.kekId).toBe(c.kekId)
    expect(h.flags).toBe(embedded ? 0x01 : 0x00)
    expect(h.headerLength).toBe(embedded ? 8 + c.wrappedKek.length / 2 : 6)
    expect(h.embeddedKek === undefined ? undefined : toHex(h.embeddedKek)).toBe(embedded ? c.wrappedKek : undefined)

    const m = decodeMessage(encrypted)
    expect(m.kekId).toBe(c.kekId)
    expect(m.flags).toBe(h.flags)
    expect(m.headerLength).toBe(h.headerLength)
    expect(m.header.length).toBe(h.headerLength)
    expect(toHex(m.iv1)).toBe(c.iv1)
    expect(m.wrappedDek.length).toBe(32)
    expect(toHex(m.dekPrefix)).toBe(c.encrypted.slice(0, 2 * (h.headerLength + 44)))
    expect(toHex(m.iv2)).toBe(c.iv2)
    expect(m.sealed.length).toBe(plaintext.length + 16)
    expect(encrypted.length).toBe(plaintext.length + OVERHEAD_BYTES + (embedded ? 2 + c.wrappedKek.length / 2 : 0))
  })

  it('decrypts to the plaintext', async () => {
    const chain = await openFor(c)
    const decrypted = await chain.decrypt(encrypted, { associatedData })
    expect(toHex(decrypted)).toBe(c.plaintext)
    expect(chain.stats()).toMatchObject({ rootKeyUnwraps: 1, rootKeyWraps: 0 })
  })

  it('encrypts to the same bytes (KAT, randomness = dek, iv1, iv2)', async () => {
    const chain = await openFor(c, { withHead: true, dekPoolSize: 0 })
    const script = scripted([
      ['dek', hex(c.dek)],
      ['iv1', hex(c.iv1)],
      ['iv2', hex(c.iv2)],
    ])
    let output: Uint8Array
    _setRandomSourceForVectors(script.source)
    try {
      output = await chain.encrypt(plaintext, { associatedData })
    } finally {
      _setRandomSourceForVectors(undefined)
    }
    expect(script.used()).toBe(3)
    expect(toHex(output)).toBe(c.encrypted)
    // The head named an existing KEK: no rotation, no root-key wrap, one unwrap of the record.
    expect(chain.stats()).toMatchObject({ rotations: 0, rootKeyWraps: 0, rootKeyUnwraps: 1, encryptions: 1 })
  })

  if (c.text !== undefined) {
    const text = c.text
    it('text form: kp1. + unpadded base64url, and decryptText', async () => {
      expect(text).toBe('kp1.' + Buffer.from(encrypted).toString('base64url'))
      const chain = await openFor(c)
      expect(await chain.decryptText(text, { associatedData })).toBe(new TextDecoder().decode(plaintext))
    })
  }
})

/** Positive cases a chain opened for `c` can decrypt: same mode, root key, chain name and KEK record. */
const warmupsFor = (c: VectorCase) =>
  positives.filter(
    (p) => p.mode === c.mode && p.rootKey === c.rootKey && p.chain === c.chain && p.kekId === c.kekId && p.wrappedKek === c.wrappedKek,
  )

describe.each(negatives.map((c) => [c.name, c] as const))('negative %s', (_, c) => {
  it(`fails with ${c.expectedError}`, () => expectFailure(c, false))
  // With the genuine KEK and DEKs already cached: no cache may hide an altered byte.
  if (warmupsFor(c).length > 0) it(`fails with ${c.expectedError}, caches warm`, () => expectFailure(c, true))
})

async function expectFailure(c: VectorCase, warm: boolean): Promise<void> {
  const chain = await openFor(c)
  if (warm) {
    for (const p of warmupsFor(c)) {
      expect(toHex(await chain.decrypt(hex(p.encrypted), { associatedData: hex(p.associatedData) }))).toBe(p.plaintext)
    }
  }
  const associatedData = hex(c.associatedData)
  let result: unknown
  let error: unknown
  try {
    result = c.text !== undefined ? await chain.decryptText(c.text, { associatedData }) : await chain.decrypt(hex(c.encrypted), { associatedData })
  } catch (e) {
    error = e
  }
  expect(result, 'decryption must not return anything').toBeUndefined()
  expect(error).toBeInstanceOf(KmsProxyError)
  expect((error as KmsProxyError).code).toBe(c.expectedError)
  // Quiet errors: no plaintext in the message.
  const pt = new TextDecoder().decode(hex(c.plaintext))
  if (pt.length >= 4) expect((error as Error).message).not.toContain(pt)
}
