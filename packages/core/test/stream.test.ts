import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import {
  DEFAULT_SEGMENT_SIZE,
  KeyChain,
  KmsProxyError,
  MAX_SEGMENT_SIZE,
  MIN_SEGMENT_SIZE,
  aesRootKey,
  decodeStreamHeader,
  embeddedStore,
  isStream,
  memoryStore,
  streamHeaderLength,
} from '../src/index.ts'
import { ROOT_BYTES, counting, expectCode, kekIdOf } from './helpers.ts'
import { chunked, concatAll, pattern, through, throughUntilError } from './stream-helpers.ts'

const TAG = 16
const modes = [
  ['memory store', () => memoryStore(), 61],
  ['embedded store', () => embeddedStore(), 61 + 2 + 45],
] as const

async function encrypt(chain: KeyChain, plaintext: Uint8Array, options: { segmentSize?: number; associatedData?: string | Uint8Array } = {}, sizes: number[] = []) {
  return through(chain.encryptStream(options), chunked(plaintext, sizes))
}
async function decrypt(chain: KeyChain, encrypted: Uint8Array, associatedData?: string | Uint8Array, sizes: number[] = []) {
  return through(chain.decryptStream(associatedData === undefined ? undefined : { associatedData }), chunked(encrypted, sizes))
}
async function decryptError(chain: KeyChain, encrypted: Uint8Array | Uint8Array[], associatedData?: string) {
  const chunks = Array.isArray(encrypted) ? encrypted : [encrypted]
  const result = await throughUntilError(chain.decryptStream(associatedData === undefined ? undefined : { associatedData }), chunks)
  return result
}
/** Expected encrypted length: header, then a 16-byte tag per segment (at least one). */
function expectedLength(headerBytes: number, size: number, segmentSize: number) {
  const segments = Math.max(1, Math.ceil(size / segmentSize))
  return headerBytes + size + segments * TAG
}

describe.each(modes)('stream round trips, %s', (_, makeStore, headerBytes) => {
  for (const segmentSize of [64, DEFAULT_SEGMENT_SIZE]) {
    const sizes = [0, 1, segmentSize - 1, segmentSize, segmentSize + 1, 3 * segmentSize]
    it(`sizes ${sizes.join(', ')} with segment size ${segmentSize}, random chunking on both sides (property)`, async () => {
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
      const options = segmentSize === DEFAULT_SEGMENT_SIZE ? {} : { segmentSize }
      await fc.assert(
        fc.asyncProperty(
          fc.constantFrom(...sizes),
          fc.array(fc.integer({ min: 1, max: 4 * segmentSize + 3 }), { maxLength: 12 }),
          fc.array(fc.integer({ min: 1, max: 4 * segmentSize + 3 }), { maxLength: 12 }),
          fc.uint8Array({ maxLength: 40 }),
          async (size, inSizes, outSizes, ad) => {
            const plaintext = pattern(size, size)
            const encrypted = await encrypt(chain, plaintext, { ...options, associatedData: ad }, inSizes)
            expect(encrypted.length).toBe(expectedLength(headerBytes, size, segmentSize))
            expect(isStream(encrypted)).toBe(true)
            expect(decodeStreamHeader(encrypted).segmentSize).toBe(segmentSize)
            const decrypted = await decrypt(chain, encrypted, ad, outSizes)
            expect(Buffer.compare(decrypted, plaintext)).toBe(0)
          },
        ),
        { numRuns: segmentSize === DEFAULT_SEGMENT_SIZE ? 12 : 60 },
      )
    })
  }

  it('one-byte chunks in and out', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
    const plaintext = pattern(300)
    const encrypted = await encrypt(chain, plaintext, { segmentSize: 32 }, Array(300).fill(1))
    const decrypted = await decrypt(chain, encrypted, undefined, Array(encrypted.length).fill(1))
    expect(Buffer.compare(decrypted, plaintext)).toBe(0)
  })

  it('a 5 MiB chunk at once is cut into segments; 20 streams at once on one chain', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
    const big = pattern(5 * 1024 * 1024 + 3)
    const encrypted = await encrypt(chain, big)
    expect(encrypted.length).toBe(expectedLength(headerBytes, big.length, DEFAULT_SEGMENT_SIZE))
    expect(Buffer.compare(await decrypt(chain, encrypted), big)).toBe(0)
    const many = await Promise.all(Array.from({ length: 20 }, (_, i) => encrypt(chain, pattern(1000 + i, i), { segmentSize: 100, associatedData: `s${i}` }, [7, 300])))
    const back = await Promise.all(many.map((e, i) => decrypt(chain, e, `s${i}`, [50])))
    back.forEach((b, i) => expect(Buffer.compare(b, pattern(1000 + i, i))).toBe(0))
    // Each stream has its own DEK: no two stream headers share a wrapped DEK or a nonce prefix.
    const prefixes = new Set(many.map((e) => Buffer.from(decodeStreamHeader(e).noncePrefix).toString('hex')))
    const wraps = new Set(many.map((e) => Buffer.from(decodeStreamHeader(e).wrappedDek).toString('hex')))
    expect(prefixes.size).toBe(20)
    expect(wraps.size).toBe(20)
  })
})

describe('streams and the key chain', () => {
  it('a stream costs one use of the primary KEK and no root-key call after the first wrap; stats count it', async () => {
    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store: memoryStore(), dekPoolSize: 0 })
    await chain.encrypt('first')
    for (let i = 0; i < 10; i++) await encrypt(chain, pattern(200), { segmentSize: 64 })
    expect(rootKey.wraps + rootKey.unwraps).toBe(1)
    expect(chain.stats().keks[0]!.wraps).toBe(11)
    expect(chain.stats().encryptions).toBe(11)
    const reader = await KeyChain.open({ rootKey, store: memoryStore() })
    expect(reader.stats().decryptions).toBe(0)
  })

  it('streams rotate the KEK at the usage limit like messages, and old streams still decrypt', async () => {
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, maxWrapsPerKek: 3, dekPoolSize: 0 })
    const streams: Uint8Array[] = []
    for (let i = 0; i < 7; i++) streams.push(await encrypt(chain, pattern(100, i), { segmentSize: 16 }))
    expect(new Set(streams.map(kekIdOf)).size).toBe(3)
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    for (let i = 0; i < 7; i++) expect(Buffer.compare(await decrypt(reader, streams[i]!), pattern(100, i))).toBe(0)
  })

  it('bad options are TypeError / RangeError at once; a chunk that is not a Uint8Array errors the stream with TypeError', async () => {
    const chain = await KeyChain.open()
    for (const segmentSize of [0, MIN_SEGMENT_SIZE - 1, MAX_SEGMENT_SIZE + 1, 1.5, Number.NaN]) {
      expect(() => chain.encryptStream({ segmentSize })).toThrow(RangeError)
    }
    expect(() => chain.encryptStream({ associatedData: 42 as never })).toThrow(TypeError)
    expect(() => chain.decryptStream({ associatedData: 42 as never })).toThrow(TypeError)
    const { error } = await throughUntilError(chain.encryptStream(), ['text' as never])
    expect(error).toBeInstanceOf(TypeError)
  })

  it('streams and messages are told apart, and neither decoder accepts the other', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
    const message = await chain.encrypt('a message')
    const stream = await encrypt(chain, pattern(10))
    expect(isStream(message)).toBe(false)
    expect(isStream(stream.subarray(0, 6))).toBe(true)
    expect(() => isStream(stream.subarray(0, 5))).toThrow(KmsProxyError)
    expect(streamHeaderLength(stream.subarray(0, 3))).toBeUndefined()
    expect(streamHeaderLength(stream.subarray(0, 6))).toBe(61)
    expect(() => streamHeaderLength(message)).toThrow(/single message/)
    const e1 = await expectCode(chain.decrypt(stream), 'ERR_FORMAT')
    expect(e1.message).toMatch(/decryptStream/)
    const e2 = await expectCode(chain.rewrap(stream), 'ERR_FORMAT')
    expect(e2.message).toMatch(/rewrapStreamHeader/)
    const { error } = await decryptError(chain, message)
    expect((error as KmsProxyError).code).toBe('ERR_FORMAT')
    await expectCode(chain.rewrapStreamHeader(message), 'ERR_FORMAT')
  })

  it('backpressure: a reader that does not read stops the writer after a few segments', async () => {
    const chain = await KeyChain.open()
    const encrypted = await encrypt(chain, pattern(200 * 1024), { segmentSize: 1024 })
    const inputs = [
      [chain.encryptStream({ segmentSize: 1024 }), chunked(pattern(200 * 1024), Array(200).fill(1024))],
      [chain.decryptStream(), chunked(encrypted, Array(200).fill(1024))],
    ] as const
    for (const [ts, chunks] of inputs) {
      const writer = ts.writable.getWriter()
      let written = 0
      const writes = chunks.map((chunk) => writer.write(chunk).then(() => void written++))
      await new Promise((r) => setTimeout(r, 150))
      // Writes wait for the reader (a TransformStream's readable side starts with no room):
      // at most a few of the 200 complete.
      expect(written).toBeLessThan(8)
      // Then reading lets everything through.
      const reader = ts.readable.getReader()
      let read = 0
      const all = Promise.all(writes).then(() => writer.close())
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        read += value.length
      }
      await all
      expect(read).toBe(ts === inputs[0][0] ? encrypted.length : 200 * 1024)
    }
  })
})

describe.each(modes)('stream attacks, %s', (_, makeStore, headerBytes) => {
  const S = 32
  const SEG = S + TAG
  const plaintext = pattern(5 * S) // five full segments, the last one full and final

  async function setup() {
    const store = makeStore()
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const encrypted = await encrypt(chain, plaintext, { segmentSize: S, associatedData: 'ad' })
    const other = await encrypt(chain, pattern(5 * S, 9), { segmentSize: S, associatedData: 'ad' })
    expect(encrypted.length).toBe(headerBytes + 5 * SEG)
    const cold = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, dekCacheSize: 0 })
    const head = encrypted.subarray(0, headerBytes)
    const segs = Array.from({ length: 5 }, (_, i) => encrypted.subarray(headerBytes + i * SEG, headerBytes + (i + 1) * SEG))
    const otherSegs = Array.from({ length: 5 }, (_, i) => other.subarray(headerBytes + i * SEG, headerBytes + (i + 1) * SEG))
    return { chain, cold, encrypted, other, head, segs, otherSegs, otherHead: other.subarray(0, headerBytes) }
  }

  /** Fails with `code`, and what came out before is whole, authenticated segments of the plaintext. */
  async function expectAttackFails(chain: KeyChain, data: Uint8Array, code = 'ERR_DECRYPT', ad = 'ad') {
    for (const sizes of [[data.length], [1, 7, 100], [SEG, SEG, SEG]]) {
      const { output, error } = await decryptError(chain, chunked(data, sizes), ad)
      expect(error, `chunks ${sizes}`).toBeInstanceOf(KmsProxyError)
      expect((error as KmsProxyError).code).toBe(code)
      expect(output.length % S).toBe(0)
      expect(Buffer.compare(output, plaintext.subarray(0, output.length))).toBe(0)
    }
  }

  it('the untouched stream decrypts', async () => {
    const { chain, cold, encrypted } = await setup()
    for (const c of [chain, cold]) expect(Buffer.compare(await decrypt(c, encrypted, 'ad'), plaintext)).toBe(0)
  })

  it('truncation at every length after the header is ERR_DECRYPT; inside the header ERR_FORMAT', async () => {
    const { chain, encrypted } = await setup()
    for (let n = headerBytes; n < encrypted.length; n++) await expectAttackFails(chain, encrypted.subarray(0, n))
    for (let n = 0; n < headerBytes; n++) {
      const { error, output } = await decryptError(chain, encrypted.subarray(0, n), 'ad')
      expect((error as KmsProxyError).code, `cut to ${n}`).toBe('ERR_FORMAT')
      expect(output.length).toBe(0)
    }
  })

  it('the final segment missing (cut at a segment boundary) is ERR_DECRYPT', async () => {
    const { chain, head, segs } = await setup()
    await expectAttackFails(chain, concatAll([head, ...segs.slice(0, 4)]))
    await expectAttackFails(chain, concatAll([head, ...segs.slice(0, 1)]))
    await expectAttackFails(chain, head)
  })

  it('reordered, duplicated or dropped segments are ERR_DECRYPT', async () => {
    const { chain, head, segs } = await setup()
    const [a, b, c, d, e] = segs as [Uint8Array, Uint8Array, Uint8Array, Uint8Array, Uint8Array]
    await expectAttackFails(chain, concatAll([head, b, a, c, d, e]))
    await expectAttackFails(chain, concatAll([head, a, c, b, d, e]))
    await expectAttackFails(chain, concatAll([head, a, b, b, c, d, e]))
    await expectAttackFails(chain, concatAll([head, a, a, b, c, d, e]))
    await expectAttackFails(chain, concatAll([head, a, c, d, e]))
    await expectAttackFails(chain, concatAll([head, a, b, c, e, d]))
  })

  it('segments spliced from another stream (same chain, size and associated data) are ERR_DECRYPT', async () => {
    const { chain, head, segs, otherSegs, otherHead } = await setup()
    await expectAttackFails(chain, concatAll([head, segs[0]!, otherSegs[1]!, segs[2]!, segs[3]!, segs[4]!]))
    await expectAttackFails(chain, concatAll([head, ...segs.slice(0, 4), otherSegs[4]!]))
    // Another stream's header in front of these segments: another DEK.
    await expectAttackFails(chain, concatAll([otherHead, ...segs]))
  })

  it('an extra final segment or trailing bytes are ERR_DECRYPT', async () => {
    const { chain, encrypted, segs, otherSegs } = await setup()
    await expectAttackFails(chain, concatAll([encrypted, segs[4]!]))
    await expectAttackFails(chain, concatAll([encrypted, otherSegs[4]!]))
    for (const extra of [1, 15, 16, 17, SEG]) await expectAttackFails(chain, concatAll([encrypted, new Uint8Array(extra)]))
    // Two whole streams back to back.
    await expectAttackFails(chain, concatAll([encrypted, encrypted]))
  })

  it('a short final segment with trailing bytes, and an empty stream with its final segment removed or doubled', async () => {
    const { chain } = await setup()
    const short = await encrypt(chain, pattern(S + 5), { segmentSize: S, associatedData: 'ad' })
    expect(Buffer.compare(await decrypt(chain, short, 'ad'), pattern(S + 5))).toBe(0)
    const tail = (await decryptError(chain, concatAll([short, new Uint8Array([0])]), 'ad')).error as KmsProxyError
    expect(tail.code).toBe('ERR_DECRYPT')
    const empty = await encrypt(chain, new Uint8Array(0), { segmentSize: S, associatedData: 'ad' })
    expect(empty.length).toBe(headerBytes + TAG)
    expect((await decrypt(chain, empty, 'ad')).length).toBe(0)
    for (const bad of [empty.subarray(0, headerBytes), concatAll([empty, empty.subarray(headerBytes)]), empty.subarray(0, empty.length - 1)]) {
      const { error, output } = await decryptError(chain, bad, 'ad')
      expect((error as KmsProxyError).code).toBe('ERR_DECRYPT')
      expect(output.length).toBe(0)
    }
  })

  it('wrong, missing or extra associated data is ERR_DECRYPT and releases nothing', async () => {
    const { chain, encrypted } = await setup()
    for (const ad of ['ae', '', 'ad ', 'AD']) {
      const { error, output } = await decryptError(chain, encrypted, ad)
      expect((error as KmsProxyError).code).toBe('ERR_DECRYPT')
      expect(output.length).toBe(0)
    }
    const { error } = await decryptError(chain, encrypted)
    expect((error as KmsProxyError).code).toBe('ERR_DECRYPT')
    const noAd = await encrypt(chain, plaintext, { segmentSize: S })
    expect((await decryptError(chain, noAd, 'ad')).error).toBeInstanceOf(KmsProxyError)
  })

  it('every single-byte flip is a KmsProxyError; a flip in segment k releases nothing from segment k on', async () => {
    const { chain, cold, encrypted } = await setup()
    const codes = new Map<string, number>()
    for (let i = 0; i < encrypted.length; i++) {
      const flipped = encrypted.slice()
      flipped[i]! ^= 0x01
      for (const c of [chain, cold]) {
        const { error, output } = await decryptError(c, flipped, 'ad')
        expect(error, `flip at ${i}`).toBeInstanceOf(KmsProxyError)
        const code = (error as KmsProxyError).code
        codes.set(code, (codes.get(code) ?? 0) + 1)
        if (i >= headerBytes) {
          expect(code).toBe('ERR_DECRYPT')
          const k = Math.floor((i - headerBytes) / SEG)
          // Never the flipped segment, nor anything after it. Earlier ones may or may not have
          // come out before the failure (they are authentic either way).
          expect(output.length).toBeLessThanOrEqual(k * S)
          expect(Buffer.compare(output, plaintext.subarray(0, output.length))).toBe(0)
        } else {
          expect(output.length).toBe(0)
        }
      }
    }
    expect(codes.get('ERR_DECRYPT')).toBeGreaterThan(5 * SEG)
  })

  it('the segment size and nonce prefix in the header are authenticated', async () => {
    const { chain, encrypted } = await setup()
    const s = headerBytes - 11 // segment size u32, then the 7-byte nonce prefix
    const grown = encrypted.slice()
    grown[s + 3] = 48 // 32 -> 48: still in range, so it decodes, and every segment is cut wrong
    await expectAttackFails(chain, grown)
    // A stream whose one segment is shorter than both sizes: only the AAD catches the change.
    const small = await encrypt(chain, pattern(10), { segmentSize: S, associatedData: 'ad' })
    const relabelled = small.slice()
    relabelled[s + 3] = 64
    expect(decodeStreamHeader(relabelled).segmentSize).toBe(64)
    const { error } = await decryptError(chain, relabelled, 'ad')
    expect((error as KmsProxyError).code).toBe('ERR_DECRYPT')
    const prefixFlip = small.slice()
    prefixFlip[s + 4]! ^= 1
    expect((await decryptError(chain, prefixFlip, 'ad')).error).toMatchObject({ code: 'ERR_DECRYPT' })
    for (const size of [0, 15, MAX_SEGMENT_SIZE + 1]) {
      const bad = small.slice()
      new DataView(bad.buffer).setUint32(s, size)
      expect((await decryptError(chain, bad, 'ad')).error).toMatchObject({ code: 'ERR_FORMAT' })
    }
  })
})

describe.each(modes)('rewrapStreamHeader, %s', (_, makeStore, headerBytes) => {
  it('moves the stream to the new primary KEK; the segments are untouched; a reader with only the new KEK decrypts it', async () => {
    const store = makeStore()
    const rootKey = aesRootKey(ROOT_BYTES)
    const chain = await KeyChain.open({ rootKey, store })
    const plaintext = pattern(1000)
    const old = await encrypt(chain, plaintext, { segmentSize: 100, associatedData: 'file.txt' })
    const oldId = kekIdOf(old)
    const { id } = await chain.rotate()
    // Only the first bytes are needed; more are fine.
    for (const head of [old.subarray(0, headerBytes), old.subarray(0, headerBytes + 7), old]) {
      const { header, replaces } = await chain.rewrapStreamHeader(head)
      expect(replaces).toBe(headerBytes)
      expect(header.length).toBe(headerBytes)
      expect(kekIdOf(header)).toBe(id)
      // Segment size and nonce prefix carried over.
      expect(header.subarray(headerBytes - 11)).toEqual(old.subarray(headerBytes - 11, headerBytes))
      const moved = concatAll([header, old.subarray(replaces)])
      expect(moved.subarray(replaces)).toEqual(old.subarray(replaces))
      expect(Buffer.compare(await decrypt(chain, moved, 'file.txt'), plaintext)).toBe(0)
      expect((await decryptError(chain, moved, 'other')).error).toMatchObject({ code: 'ERR_DECRYPT' })
    }
    expect(id).not.toBe(oldId)
    // A reader that has only the new KEK (a store holding that one record, or, embedded, none).
    const moved = concatAll([(await chain.rewrapStreamHeader(old)).header, old.subarray(headerBytes)])
    const onlyNew = makeStore()
    if (!onlyNew.embedsKeks) {
      const record = await store.getKek(chain.name, id)
      expect(await onlyNew.putKekIfAbsent(chain.name, record!)).toBe(true)
    }
    const reader = await KeyChain.open({ rootKey, store: onlyNew, acceptEmbeddedKeks: true })
    expect(Buffer.compare(await decrypt(reader, moved, 'file.txt'), plaintext)).toBe(0)
    if (!onlyNew.embedsKeks) expect((await decryptError(reader, old, 'file.txt')).error).toMatchObject({ code: 'ERR_UNKNOWN_KEK' })
    // Already under the primary: the same header back, after authenticating it.
    const again = await chain.rewrapStreamHeader(moved)
    expect(again.header).toEqual(moved.subarray(0, headerBytes))
  })

  it('a too-short head is ERR_FORMAT; a tampered header ERR_DECRYPT; a message ERR_FORMAT', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
    const stream = await encrypt(chain, pattern(10))
    await chain.rotate()
    for (const n of [0, 5, 6, headerBytes - 1]) await expectCode(chain.rewrapStreamHeader(stream.subarray(0, n)), 'ERR_FORMAT')
    const flipped = stream.slice()
    flipped[headerBytes - 20]! ^= 1 // inside the wrapped DEK
    await expectCode(chain.rewrapStreamHeader(flipped), 'ERR_DECRYPT')
    await expectCode(chain.rewrapStreamHeader(await chain.encrypt('m')), 'ERR_FORMAT')
    await expect(chain.rewrapStreamHeader('x' as never)).rejects.toBeInstanceOf(TypeError)
  })
})
