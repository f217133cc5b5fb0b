// The conformance suite: `(t, lib, env) => void`. `lib` is { core, passphrase } as loaded from
// the built packages; `env` is { runtime, vectors }. Nothing here imports a runtime API:
// only Web APIs that every target has (crypto, TextEncoder, Promise).
import { countingRootKey as counting } from '@kms-proxy/testkit'

export const hex = {
  decode(s) {
    const out = new Uint8Array(s.length / 2)
    for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16)
    return out
  },
  encode(b) {
    let s = ''
    for (const x of b) s += x.toString(16).padStart(2, '0')
    return s
  },
}
const text = (b) => new TextDecoder().decode(b)
const kekIdOf = (e) => ((e[1] << 24) | (e[2] << 16) | (e[3] << 8) | e[4]) >>> 0
const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff)
const OTHER_ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 53 + 7) & 0xff)

function pattern(size) {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (i * 131 + (i >> 8)) & 0xff
  return out
}


// ------------------------------------------------------------------ WHATWG stream helpers (every runtime has them)

/** `bytes` cut at the given sizes, cycling through them. */
function chunksOf(bytes, sizes) {
  const out = []
  for (let o = 0, i = 0; o < bytes.length; i++) {
    const n = sizes[i % sizes.length]
    out.push(bytes.subarray(o, o + n))
    o += n
  }
  return out
}

function concatAll(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** Pipes `chunks` through a TransformStream; resolves to { output, error }. */
async function pipe(ts, chunks) {
  const list = [...chunks]
  const source = new ReadableStream({
    pull(controller) {
      if (list.length === 0) controller.close()
      else controller.enqueue(list.shift())
    },
  })
  const reader = source.pipeThrough(ts).getReader()
  const out = []
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) return { output: concatAll(out), error: undefined }
      out.push(value)
    }
  } catch (error) {
    return { output: concatAll(out), error }
  }
}

async function piped(ts, chunks) {
  const { output, error } = await pipe(ts, chunks)
  if (error) throw error
  return output
}

export function conformance(t, lib, env) {
  const { core, passphrase } = lib
  const { KeyChain, KmsProxyError, aesRootKey, memoryStore, embeddedStore } = core

  const isCode = (code) => (error) => {
    t.ok(error instanceof KmsProxyError, `expected a KmsProxyError, got ${error?.name}: ${error?.message}`)
    t.equal(error.code, code, 'error code:')
  }
  const isKmsProxyError = (error) => t.ok(error instanceof KmsProxyError, `expected a KmsProxyError, got ${error?.name}: ${error?.message}`)

  // ------------------------------------------------------------------ frozen vectors

  const cases = env.vectors
  async function chainFor(c) {
    const store = c.mode === 'stored' ? memoryStore() : embeddedStore()
    if (c.mode === 'stored') {
      await store.putKekIfAbsent(c.chain, { id: c.kekId, createdAt: Date.now(), rootKind: 'aes', wrapped: hex.decode(c.wrappedKek) })
    }
    return KeyChain.open({ rootKey: aesRootKey(hex.decode(c.rootKey)), store, name: c.chain })
  }

  t.test(`vectors: ${cases.filter((c) => c.kind === 'positive').length} positive cases decrypt to the expected plaintext`, async () => {
    for (const c of cases.filter((c) => c.kind === 'positive')) {
      const chain = await chainFor(c)
      const ad = { associatedData: hex.decode(c.associatedData) }
      t.bytesEqual(await chain.decrypt(hex.decode(c.encrypted), ad), hex.decode(c.plaintext), c.name)
      const parts = core.decodeMessage(hex.decode(c.encrypted))
      t.equal(parts.kekId, c.kekId, `${c.name} kekId`)
      if (c.text) t.equal(await chain.decryptText(c.text, ad), text(hex.decode(c.plaintext)), `${c.name} text`)
    }
  })

  t.test(`vectors: ${cases.filter((c) => c.kind === 'negative').length} negative cases fail with their expected code`, async () => {
    for (const c of cases.filter((c) => c.kind === 'negative')) {
      const chain = await chainFor(c)
      const ad = { associatedData: hex.decode(c.associatedData) }
      const attempt = c.text !== undefined ? chain.decryptText(c.text, ad) : chain.decrypt(hex.decode(c.encrypted), ad)
      const error = await t.rejects(attempt, undefined, c.name)
      t.ok(error instanceof KmsProxyError, `${c.name}: not a KmsProxyError: ${error?.message}`)
      t.equal(error.code, c.expectedError, `${c.name}:`)
    }
  })

  // ------------------------------------------------------------------ round trips, text form

  for (const [label, makeStore] of [
    ['memory store', memoryStore],
    ['embedded store', embeddedStore],
  ]) {
    t.test(`round trips (${label}): 0 B, 1 B, 1 KiB, 64 KiB + 7, 1 MiB and 30 random sizes with associated data`, async () => {
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: makeStore() })
      const sizes = [0, 1, 1024, 65536 + 7, 1 << 20]
      const r = crypto.getRandomValues(new Uint16Array(30))
      for (const x of r) sizes.push(x % 5000)
      for (const size of sizes) {
        const plaintext = pattern(size)
        const ad = { associatedData: `row ${size}` }
        const encrypted = await chain.encrypt(plaintext, ad)
        t.equal(encrypted.length, size + core.OVERHEAD_BYTES + (makeStore === embeddedStore ? 2 + 45 : 0), `size ${size}:`)
        t.bytesEqual(await chain.decrypt(encrypted, ad), plaintext, `size ${size}`)
      }
    })

    t.test(`every single-byte flip and every truncation is a KmsProxyError (${label})`, async () => {
      const store = makeStore()
      const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT), store })
      const encrypted = await writer.encrypt('attack at dawn', { associatedData: 'ad' })
      const cold = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, dekCacheSize: 0 })
      for (let i = 0; i < encrypted.length; i++) {
        const flipped = encrypted.slice()
        flipped[i] ^= 0x01
        for (const chain of [writer, cold]) await t.rejects(chain.decrypt(flipped, { associatedData: 'ad' }), isKmsProxyError, `flip at ${i}`)
      }
      for (let n = 0; n < encrypted.length; n++) await t.rejects(cold.decrypt(encrypted.subarray(0, n), { associatedData: 'ad' }), isKmsProxyError, `truncation to ${n}`)
      await t.rejects(writer.decrypt(encrypted, { associatedData: 'other' }), isCode('ERR_DECRYPT'))
      t.equal(text(await writer.decrypt(encrypted, { associatedData: 'ad' })), 'attack at dawn')
    })
  }

  t.test('text form: kp1. + base64url, survives JSON; malformed text is ERR_FORMAT', async () => {
    const chain = await KeyChain.open()
    const s = 'grüße, 世界, 🔑'
    const encryptedText = await chain.encryptText(s, { associatedData: 'k' })
    t.ok(/^kp1\.[A-Za-z0-9_-]+$/.test(encryptedText), 'text form shape')
    t.equal(await chain.decryptText(JSON.parse(JSON.stringify(encryptedText)), { associatedData: 'k' }), s)
    await t.rejects(chain.decryptText('kp2.' + encryptedText.slice(4)), isCode('ERR_FORMAT'))
    await t.rejects(chain.decryptText(encryptedText + '='), isCode('ERR_FORMAT'))
  })

  t.test('wrong argument types are TypeError, bad options RangeError', async () => {
    const chain = await KeyChain.open()
    await t.rejects(chain.encrypt(42), (e) => t.ok(e instanceof TypeError, 'TypeError'))
    await t.rejects(chain.decrypt('kp1.x'), (e) => t.ok(e instanceof TypeError, 'TypeError'))
    await t.rejects(KeyChain.open({ maxWrapsPerKek: 2 ** 32 + 1 }), (e) => t.ok(e instanceof RangeError, 'RangeError'))
  })

  // ------------------------------------------------------------------ keys stay inside WebCrypto

  t.test('every KEK and every DEK is non-extractable: exportKey rejects', async () => {
    const rootKey = counting(aesRootKey(ROOT))
    const store = memoryStore()
    const subtle = crypto.subtle
    const seen = []
    const originalUnwrap = subtle.unwrapKey
    const originalImport = subtle.importKey
    // Watch every key the library makes through crypto.subtle, then give the originals back.
    subtle.unwrapKey = function (...args) {
      const p = originalUnwrap.apply(this, args)
      seen.push(p)
      return p
    }
    subtle.importKey = function (...args) {
      const p = originalImport.apply(this, args)
      seen.push(p)
      return p
    }
    try {
      t.ok(subtle.unwrapKey !== originalUnwrap, 'crypto.subtle could not be watched on this runtime')
      const writer = await KeyChain.open({ rootKey, store, maxWrapsPerKek: 4 })
      const encrypted = []
      for (let i = 0; i < 10; i++) encrypted.push(await writer.encrypt(`m${i}`))
      const reader = await KeyChain.open({ rootKey, store })
      for (const e of encrypted) await reader.decrypt(e)
    } finally {
      subtle.unwrapKey = originalUnwrap
      subtle.importKey = originalImport
      if (Object.prototype.hasOwnProperty.call(subtle, 'unwrapKey')) delete subtle.unwrapKey
      if (Object.prototype.hasOwnProperty.call(subtle, 'importKey')) delete subtle.importKey
    }
    const keys = [...rootKey.keks, ...(await Promise.all(seen))].filter((k) => k && k.type === 'secret' && k.algorithm.name === 'AES-GCM')
    t.ok(rootKey.keks.length >= 3 && keys.length >= 20, `too few keys seen: ${keys.length}`)
    for (const key of keys) {
      t.equal(key.extractable, false, 'extractable')
      await t.rejects(crypto.subtle.exportKey('raw', key), undefined, 'exportKey raw')
      await t.rejects(crypto.subtle.exportKey('jwk', key), undefined, 'exportKey jwk')
    }
  })

  // ------------------------------------------------------------------ rotation, root-key cost, rewrap

  t.test('after the first wrap, 2,000 encryptions make 0 root-key calls', async () => {
    const rootKey = counting(aesRootKey(ROOT))
    const chain = await KeyChain.open({ rootKey, store: memoryStore() })
    await chain.encrypt('first')
    for (let i = 0; i < 2000; i++) await chain.encrypt('x')
    t.equal(rootKey.wraps + rootKey.unwraps, 1, 'root-key calls:')
  })

  t.test('rotation happens exactly when due; 100 concurrent encrypts at the limit rotate once; old data decrypts', async () => {
    const rootKey = counting(aesRootKey(ROOT))
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey, store, maxWrapsPerKek: 100, dekPoolSize: 0 })
    const all = []
    for (let i = 0; i < 100; i++) all.push(await chain.encrypt(`a${i}`))
    t.equal(new Set(all.map(kekIdOf)).size, 1, 'KEKs for the first 100:')
    const burst = await Promise.all(Array.from({ length: 100 }, (_, i) => chain.encrypt(`b${i}`)))
    t.equal(new Set(burst.map(kekIdOf)).size, 1, 'KEKs for the burst:')
    t.ok(kekIdOf(burst[0]) !== kekIdOf(all[0]), 'the burst is under a new KEK')
    t.equal(rootKey.wraps, 2, 'root wraps:')
    for (let i = 0; i < 500; i++) all.push(await chain.encrypt(`c${i}`))
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT), store })
    for (const e of [...all, ...burst]) await reader.decrypt(e)
    t.equal(chain.stats().rotations, 7, 'rotations:')
  })

  t.test('a rotation by another chain is used after a push at once and after maxStalenessMs by polling; retire, destroy and a destroyed chain fail with their codes', async () => {
    const store = memoryStore()
    const a = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'fleet', watch: false })
    const pushed = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'fleet', maxStalenessMs: 3_600_000 })
    const polled = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'fleet', watch: false, maxStalenessMs: 100 })
    const old = await a.encrypt('old')
    await pushed.encrypt('x')
    await polled.encrypt('x')
    const { id } = await a.rotate()
    await new Promise((r) => setTimeout(r, 150))
    t.equal(kekIdOf(await pushed.encrypt('y')), id, 'pushed chain, KEK id:')
    t.equal(kekIdOf(await polled.encrypt('y')), id, 'polled chain, KEK id:')
    pushed.close()
    await a.retireKek(kekIdOf(old))
    await t.rejects(a.decrypt(old), isCode('ERR_RETIRED_KEK'))
    await a.destroyKek(kekIdOf(old), { graceMs: 0 })
    await new Promise((r) => setTimeout(r, 150))
    await t.rejects(polled.decrypt(old), isCode('ERR_DESTROYED_KEK'))
    await a.retireChain()
    await a.destroyChain({ graceMs: 0 })
    t.equal((await store.listKeks('fleet')).length, 0, 'records left:')
    await t.rejects(a.encrypt('z'), isCode('ERR_DESTROYED_KEK'))
  })

  t.test('rotate() and rewrap(): DEK moved to the primary, payload bytes untouched', async () => {
    for (const store of [memoryStore(), embeddedStore()]) {
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store })
      const old = await chain.encrypt('payload', { associatedData: 'ad' })
      const { id } = await chain.rotate()
      const moved = await chain.rewrap(old)
      t.equal(kekIdOf(moved), id, 'rewrapped KEK id:')
      t.bytesEqual(moved.subarray(moved.length - 7 - 16 - 12), old.subarray(old.length - 7 - 16 - 12), 'iv2 and payload')
      t.equal(text(await chain.decrypt(moved, { associatedData: 'ad' })), 'payload')
    }
  })

  t.test('embedded store: a new chain on the same root key decrypts with one unwrap; another root key cannot', async () => {
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT) })
    const encrypted = await Promise.all(Array.from({ length: 50 }, (_, i) => writer.encrypt(`m${i}`)))
    const rootKey = counting(aesRootKey(ROOT))
    const reader = await KeyChain.open({ rootKey })
    const plaintexts = await Promise.all(encrypted.map((e) => reader.decrypt(e)))
    t.equal(text(plaintexts[49]), 'm49')
    t.equal(rootKey.unwraps, 1, 'root unwraps:')
    const wrong = await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT) })
    await t.rejects(wrong.decrypt(encrypted[0]), isCode('ERR_ROOT_KEY'))
  })

  t.test('no key bytes or plaintext in errors, String(chain) or JSON.stringify(chain)', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT) })
    const encrypted = await chain.encrypt('SECRET-PLAINTEXT')
    const flipped = encrypted.slice()
    flipped[flipped.length - 1] ^= 1
    const error = await t.rejects(chain.decrypt(flipped))
    const outputs = [String(error), error.message, JSON.stringify(error), String(chain), JSON.stringify(chain)]
    for (const out of outputs) {
      t.ok(!out.includes('SECRET'), 'plaintext leaked')
      t.ok(!out.includes(hex.encode(ROOT)), 'root key leaked')
    }
  })


  // ------------------------------------------------------------------ streams

  const streamCases = cases.filter((c) => c.kind === 'stream-positive')
  const streamNegatives = cases.filter((c) => c.kind === 'stream-negative')

  t.test(`stream vectors: ${streamCases.length} positive cases decrypt through decryptStream, whole and in 1-7 byte chunks`, async () => {
    t.ok(streamCases.length >= 10, 'stream vectors present')
    for (const c of streamCases) {
      const chain = await chainFor(c)
      const encrypted = hex.decode(c.encrypted)
      t.ok(core.isStream(encrypted), `${c.name} isStream`)
      t.equal(core.decodeStreamHeader(encrypted).segmentSize, c.segmentSize, `${c.name} segment size`)
      for (const sizes of [[encrypted.length], [1, 7, 3]]) {
        const out = await piped(chain.decryptStream({ associatedData: hex.decode(c.associatedData) }), chunksOf(encrypted, sizes))
        t.bytesEqual(out, hex.decode(c.plaintext), c.name)
      }
    }
  })

  t.test(`stream vectors: ${streamNegatives.length} negative cases error the stream with their code and release only authentic segments`, async () => {
    t.ok(streamNegatives.length >= 30, 'stream negatives present')
    for (const c of streamNegatives) {
      const chain = await chainFor(c)
      const plaintext = hex.decode(c.plaintext)
      const { output, error } = await pipe(chain.decryptStream({ associatedData: hex.decode(c.associatedData) }), chunksOf(hex.decode(c.encrypted), [5, 64]))
      t.ok(error instanceof KmsProxyError, `${c.name}: not a KmsProxyError: ${error?.message}`)
      t.equal(error?.code, c.expectedError, `${c.name}:`)
      t.equal(output.length % c.segmentSize, 0, `${c.name}: whole segments only`)
      t.bytesEqual(output, plaintext.subarray(0, output.length), `${c.name}: released bytes`)
    }
  })

  for (const [label, makeStore] of [
    ['memory store', memoryStore],
    ['embedded store', embeddedStore],
  ]) {
    t.test(`stream round trips (${label}): 0, 1, S-1, S, S+1, 3S bytes at S = 64 and 64 KiB, random chunking, and 1 MiB`, async () => {
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: makeStore() })
      for (const S of [64, 65536]) {
        for (const size of [0, 1, S - 1, S, S + 1, 3 * S]) {
          const plaintext = pattern(size)
          const r = crypto.getRandomValues(new Uint16Array(4))
          const inSizes = [...r.subarray(0, 2)].map((x) => 1 + (x % (2 * S)))
          const outSizes = [...r.subarray(2)].map((x) => 1 + (x % (2 * S)))
          const ad = { associatedData: `file ${size}` }
          const encrypted = await piped(chain.encryptStream({ ...ad, segmentSize: S }), chunksOf(plaintext, inSizes))
          const headerBytes = makeStore === embeddedStore ? 61 + 2 + 45 : 61
          t.equal(encrypted.length, headerBytes + size + 16 * Math.max(1, Math.ceil(size / S)), `size ${size}, S ${S}:`)
          t.bytesEqual(await piped(chain.decryptStream(ad), chunksOf(encrypted, outSizes)), plaintext, `size ${size}, S ${S}`)
        }
      }
      const mib = pattern(1 << 20)
      const encrypted = await piped(chain.encryptStream(), [mib])
      t.bytesEqual(await piped(chain.decryptStream(), chunksOf(encrypted, [65536 + 16])), mib, '1 MiB')
    })
  }

  t.test('stream attacks: truncation, reordering, duplication, splicing, extra final segment, trailing bytes, wrong associated data: ERR_DECRYPT, only authentic plaintext released', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: memoryStore() })
    const S = 32
    const SEG = S + 16
    const plaintext = pattern(4 * S)
    const ad = { associatedData: 'ad' }
    const a = await piped(chain.encryptStream({ ...ad, segmentSize: S }), [plaintext])
    const b = await piped(chain.encryptStream({ ...ad, segmentSize: S }), [pattern(4 * S).reverse()])
    const head = a.subarray(0, 61)
    const seg = (x, i) => x.subarray(61 + i * SEG, 61 + (i + 1) * SEG)
    const attacks = {
      'final segment missing': concatAll([head, seg(a, 0), seg(a, 1), seg(a, 2)]),
      'cut mid segment': a.subarray(0, a.length - 20),
      'header only': head,
      reordered: concatAll([head, seg(a, 1), seg(a, 0), seg(a, 2), seg(a, 3)]),
      duplicated: concatAll([head, seg(a, 0), seg(a, 0), seg(a, 1), seg(a, 2), seg(a, 3)]),
      'spliced from another stream': concatAll([head, seg(a, 0), seg(b, 1), seg(a, 2), seg(a, 3)]),
      'extra final segment': concatAll([a, seg(b, 3)]),
      'trailing byte': concatAll([a, new Uint8Array(1)]),
      'another stream header': concatAll([b.subarray(0, 61), seg(a, 0), seg(a, 1), seg(a, 2), seg(a, 3)]),
    }
    for (const [name, data] of Object.entries(attacks)) {
      const { output, error } = await pipe(chain.decryptStream(ad), chunksOf(data, [SEG]))
      isCode('ERR_DECRYPT')(error)
      t.equal(output.length % S, 0, `${name}: whole segments`)
      t.bytesEqual(output, plaintext.subarray(0, output.length), `${name}: released bytes`)
    }
    const wrongAd = await pipe(chain.decryptStream({ associatedData: 'ae' }), [a])
    isCode('ERR_DECRYPT')(wrongAd.error)
    t.equal(wrongAd.output.length, 0, 'wrong associated data releases nothing')
    t.bytesEqual(await piped(chain.decryptStream(ad), [a]), plaintext, 'the untouched stream')
  })

  t.test('rewrapStreamHeader: new header under the new primary, segments untouched; rewrap() refuses a stream; decrypt() refuses a stream', async () => {
    for (const store of [memoryStore(), embeddedStore()]) {
      const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store })
      const plaintext = pattern(5000)
      const old = await piped(chain.encryptStream({ associatedData: 'f', segmentSize: 1000 }), [plaintext])
      const { id } = await chain.rotate()
      const { header, replaces } = await chain.rewrapStreamHeader(old.subarray(0, 200))
      t.equal(kekIdOf(header), id, 'new KEK id:')
      t.equal(header.length, replaces, 'same header length:')
      const moved = concatAll([header, old.subarray(replaces)])
      t.bytesEqual(await piped(chain.decryptStream({ associatedData: 'f' }), [moved]), plaintext, 'rewrapped stream')
      await t.rejects(chain.rewrapStreamHeader(old.subarray(0, 20)), isCode('ERR_FORMAT'))
      await t.rejects(chain.rewrap(old), isCode('ERR_FORMAT'))
      await t.rejects(chain.decrypt(old), isCode('ERR_FORMAT'))
      t.equal(core.isStream(await chain.encrypt('m')), false, 'isStream(message)')
    }
  })

  // ------------------------------------------------------------------ passphrase root key

  t.test('passphrase root key: round trip, reopen with the passphrase alone, wrong passphrase is ERR_ROOT_KEY', async () => {
    const { passphraseRootKey } = passphrase
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'correct horse', iterations: 10_000 }) })
    const encrypted = await chain.encrypt('diary')
    const reopened = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'correct horse', iterations: 10_000 }) })
    t.equal(text(await reopened.decrypt(encrypted)), 'diary')
    const wrong = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'battery staple', iterations: 10_000 }) })
    const error = await t.rejects(wrong.decrypt(encrypted), isCode('ERR_ROOT_KEY'))
    t.ok(/wrong passphrase/.test(error.message), `message: ${error.message}`)
  })

  t.test(`passphrase root key at the default ${passphrase.DEFAULT_ITERATIONS.toLocaleString('en')} iterations`, async () => {
    const { passphraseRootKey } = passphrase
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw' }) })
    const encrypted = await chain.encrypt('x')
    t.equal((encrypted[9] << 24) | (encrypted[10] << 16) | (encrypted[11] << 8) | encrypted[12], 600_000, 'iterations in the wrapped KEK:')
    t.equal(text(await chain.decrypt(encrypted)), 'x')
  })
}

// ------------------------------------------------------------------ interop matrix

export const INTEROP_PASSPHRASE = 'interop: same bytes everywhere'
export const INTEROP_ITERATIONS = 100_000

/** Encrypted data made on this runtime (a message, its text form and a stream): passphrase root key, embedded store. */
export async function produce(lib, runtime) {
  const chain = await lib.core.KeyChain.open({
    rootKey: lib.passphrase.passphraseRootKey({ passphrase: INTEROP_PASSPHRASE, iterations: INTEROP_ITERATIONS }),
  })
  const plaintext = `made on ${runtime}`
  return {
    runtime,
    plaintext,
    encrypted: hex.encode(await chain.encrypt(plaintext, { associatedData: 'interop' })),
    text: await chain.encryptText(plaintext, { associatedData: 'interop-text' }),
    stream: hex.encode(await piped(chain.encryptStream({ associatedData: 'interop-stream', segmentSize: 16 }), [new TextEncoder().encode(plaintext.repeat(3))])),
  }
}

/** Decrypts each producer's data; returns { from, ok, error? } per producer. */
export async function consume(lib, items) {
  const chain = await lib.core.KeyChain.open({
    rootKey: lib.passphrase.passphraseRootKey({ passphrase: INTEROP_PASSPHRASE, iterations: INTEROP_ITERATIONS }),
  })
  const out = []
  for (const item of items) {
    try {
      const a = new TextDecoder().decode(await chain.decrypt(hex.decode(item.encrypted), { associatedData: 'interop' }))
      const b = await chain.decryptText(item.text, { associatedData: 'interop-text' })
      const c = new TextDecoder().decode(await piped(chain.decryptStream({ associatedData: 'interop-stream' }), [hex.decode(item.stream)]))
      out.push({ from: item.runtime, ok: a === item.plaintext && b === item.plaintext && c === item.plaintext.repeat(3) })
    } catch (error) {
      out.push({ from: item.runtime, ok: false, error: `${error?.code ?? error?.name}: ${error?.message}` })
    }
  }
  return out
}
