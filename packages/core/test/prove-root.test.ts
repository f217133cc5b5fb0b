/**
 * A root is proved (it unwraps an existing KEK of the chain) before it may wrap a new one
 * (DESIGN.md, "Key lifecycle"): a chain opened with a wrong passphrase or a KMS key that cannot
 * unwrap the chain's KEKs never makes a KEK, at any entry point, and leaves the store byte for
 * byte. Two chains share one real store: A with the right root, B with another.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { fileStore } from '@kms-proxy/file'
import { MIN_ITERATIONS, passphraseRootKey } from '@kms-proxy/passphrase'
import { countingRootKey } from '@kms-proxy/testkit'
import {
  KeyChain,
  RootKeyError,
  aesRootKey,
  embeddedStore,
  fromBase64,
  memoryStore,
  toBase64,
  type KeyChainOptions,
  type KeyStore,
  type RootKey,
} from '../src/index.ts'
import { OTHER_ROOT_BYTES, ROOT_BYTES, counting, expectCode, kekIdOf, rejection, text } from './helpers.ts'
import { throughUntilError } from './stream-helpers.ts'

const NAME = 'orders'

const dirs: string[] = []
afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))))

async function storeFile(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kp-prove-root-'))
  dirs.push(dir)
  return join(dir, 'keys.json')
}

/** Two handles on one store, as two processes would hold it, and the file behind it if any. */
interface Shared {
  a: KeyStore
  b: KeyStore
  file?: string
}

const STORES: [string, () => Promise<Shared>][] = [
  [
    'memory store',
    async () => {
      const store = memoryStore()
      return { a: store, b: store }
    },
  ],
  [
    'file store',
    async () => {
      const file = await storeFile()
      return { a: fileStore(file), b: fileStore(file), file }
    },
  ],
]

const ROOTS: [string, () => RootKey, () => RootKey][] = [
  [
    'a wrong passphrase',
    () => passphraseRootKey({ passphrase: 'correct horse battery staple', iterations: MIN_ITERATIONS }),
    () => passphraseRootKey({ passphrase: 'correct horse battery stapel', iterations: MIN_ITERATIONS }),
  ],
  ['another AES root key', () => aesRootKey(ROOT_BYTES), () => aesRootKey(OTHER_ROOT_BYTES)],
]

/** Everything a chain could have written: the head, every KEK record, and the file's bytes. */
async function snapshot(shared: Shared): Promise<unknown> {
  const head = await shared.a.getHead(NAME)
  const keks = (await shared.a.listKeks(NAME)).map((r) => ({ ...r, wrapped: toBase64(r.wrapped) })).sort((x, y) => x.id - y.id)
  return { head, keks, file: shared.file === undefined ? undefined : (await readFile(shared.file)).toString('base64') }
}

/** Lets any refill the DEK pool scheduled (a macrotask) run before the store is compared. */
const poolTurn = () => new Promise((r) => setTimeout(r, 30))

/** A root that makes KEKs but cannot unwrap now (a KMS whose Decrypt answers 503). */
function unwrapUnavailable(inner: RootKey): RootKey {
  return {
    kind: inner.kind,
    newKek: (aad) => inner.newKek(aad),
    unwrapKek: () => Promise.reject(new RootKeyError('the root key is unreachable (503)', { retryable: true })),
  }
}

/** Each way a chain reaches a new KEK; `a` is what chain A does first, `b` chain B's options. */
interface EntryPoint {
  a: KeyChainOptions
  uses: number
  b: KeyChainOptions
  /** `encrypted`: A's last encryption. */
  run(chain: KeyChain, encrypted: Uint8Array): Promise<unknown>
}

const byStream = async (chain: KeyChain) => {
  const { error } = await throughUntilError(chain.encryptStream(), [new Uint8Array(100)])
  if (error === undefined) return 'no error'
  throw error
}

const ENTRY_POINTS: [string, EntryPoint][] = [
  ['first encrypt, the primary past its age', { a: {}, uses: 1, b: { maxKekAgeMs: 1 }, run: (c) => c.encrypt('x') }],
  [
    'first encrypt, the primary used up',
    { a: { maxWrapsPerKek: 4, leaseSize: 4, dekPoolSize: 0 }, uses: 4, b: { maxWrapsPerKek: 4 }, run: (c) => c.encrypt('x') },
  ],
  ['rotate()', { a: {}, uses: 1, b: {}, run: (c) => c.rotate() }],
  ['encryptStream, the primary past its age', { a: {}, uses: 1, b: { maxKekAgeMs: 1 }, run: byStream }],
  [
    'encryptStream, the primary used up',
    { a: { maxWrapsPerKek: 4, leaseSize: 4, dekPoolSize: 0 }, uses: 4, b: { maxWrapsPerKek: 4 }, run: byStream },
  ],
  [
    'rewrap() of data under the primary, past its age',
    { a: {}, uses: 1, b: { maxKekAgeMs: 1 }, run: (c, encrypted) => c.rewrap(encrypted) },
  ],
]

/** Chain A makes the chain and spends `uses`; returns A's last encryption. */
async function chainOfA(shared: Shared, right: RootKey, point: EntryPoint): Promise<Uint8Array> {
  const a = await KeyChain.open({ rootKey: right, store: shared.a, name: NAME, ...point.a })
  let last: Uint8Array = new Uint8Array(0)
  for (let i = 0; i < point.uses; i++) last = await a.encrypt(`record ${i}`)
  await new Promise((r) => setTimeout(r, 5)) // so that a 1 ms age limit is past
  return last
}

describe.each(STORES)('a root that cannot unwrap the chain\'s KEKs makes no KEK (%s)', (_, open) => {
  describe.each(ROOTS)('%s', (_, right, wrong) => {
    it.each(ENTRY_POINTS)('%s: ERR_ROOT_KEY, not retryable, the store unchanged byte for byte', async (_, point) => {
      const shared = await open()
      const encrypted = await chainOfA(shared, right(), point)
      const before = await snapshot(shared)
      const rootKey = countingRootKey(wrong())
      const b = await KeyChain.open({ rootKey, store: shared.b, name: NAME, ...point.b })
      for (let attempt = 0; attempt < 3; attempt++) {
        const error = await expectCode(point.run(b, encrypted), 'ERR_ROOT_KEY')
        expect(error).toBeInstanceOf(RootKeyError)
        expect(error.retryable).toBe(false)
      }
      await poolTurn()
      // One refused unwrap (the primary), remembered: the next attempts make no root-key call.
      expect([rootKey.wraps, rootKey.unwraps]).toEqual([0, 1])
      expect(b.stats()).toMatchObject({ rotations: 0, rootKeyWraps: 0 })
      expect(await snapshot(shared)).toEqual(before)
    })
  })

  it.each(ENTRY_POINTS.slice(0, 5))('a root that cannot unwrap now (retryable) makes no KEK either: %s', async (_, point) => {
    const shared = await open()
    const encrypted = await chainOfA(shared, aesRootKey(ROOT_BYTES), point)
    const before = await snapshot(shared)
    const rootKey = countingRootKey(unwrapUnavailable(aesRootKey(ROOT_BYTES)))
    const b = await KeyChain.open({ rootKey, store: shared.b, name: NAME, ...point.b })
    const error = await expectCode(point.run(b, encrypted), 'ERR_ROOT_KEY')
    expect(error.retryable).toBe(true)
    await poolTurn()
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([0, 1])
    expect(b.stats().rootKeyAvailable).toBe(false)
    expect(await snapshot(shared)).toEqual(before)
  })

  it('afterwards the right root rotates by age as usual, and everything decrypts', async () => {
    const shared = await open()
    const encrypted = await chainOfA(shared, aesRootKey(ROOT_BYTES), ENTRY_POINTS[0]![1])
    const wrong = await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES), store: shared.b, name: NAME, maxKekAgeMs: 1 })
    await expectCode(wrong.encrypt('x'), 'ERR_ROOT_KEY')
    const rootKey = counting()
    // No pool: with a 1 ms age limit its refill would rotate again.
    const b = await KeyChain.open({ rootKey, store: shared.b, name: NAME, maxKekAgeMs: 1, dekPoolSize: 0 })
    const fresh = await b.encrypt('after')
    expect(kekIdOf(fresh)).not.toBe(kekIdOf(encrypted))
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([1, 1]) // the proof, then the new KEK
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: shared.a, name: NAME })
    expect(text(await reader.decrypt(encrypted))).toBe('record 0')
    expect(text(await reader.decrypt(fresh))).toBe('after')
    expect((await shared.a.listKeks(NAME)).length).toBe(2)
  })
})

describe('root-key calls the proof costs (countingRootKey, memory store)', () => {
  it('a brand-new chain needs no proof; steady state and rotations by usage make no unwrap', async () => {
    const store = memoryStore()
    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store, name: NAME, maxWrapsPerKek: 100 })
    await chain.encrypt('first')
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([1, 0])
    for (let i = 0; i < 999; i++) await chain.encrypt(`m${i}`)
    await poolTurn()
    expect(rootKey.unwraps).toBe(0)
    expect(rootKey.wraps).toBeGreaterThanOrEqual(10)
    expect(rootKey.wraps).toBeLessThanOrEqual(11) // the pool (16 DEKs ahead) may have rotated ahead once
    const wraps = rootKey.wraps
    await chain.rotate() // after any rotation the pool has in flight
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([wraps + 1, 0])
  })

  it('open, encrypt: one unwrap (the primary, needed anyway); its rotations by usage add none', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: NAME, maxWrapsPerKek: 20, leaseSize: 5, dekPoolSize: 0 })
    await writer.encrypt('x')
    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store, name: NAME, maxWrapsPerKek: 20, leaseSize: 5, dekPoolSize: 0 })
    await chain.encrypt('y')
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([0, 1])
    for (let i = 0; i < 60; i++) await chain.encrypt(`m${i}`)
    expect(chain.stats().rotations).toBeGreaterThanOrEqual(3)
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([chain.stats().rotations, 1])
  })

  it('a chain instance that has unwrapped nothing yet: one unwrap before its first rotation, none after', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: NAME })
    const old = await writer.encrypt('x')
    await new Promise((r) => setTimeout(r, 5))

    const byAge = counting()
    const overdue = await KeyChain.open({ rootKey: byAge, store, name: NAME, maxKekAgeMs: 1, dekPoolSize: 0 })
    await overdue.encrypt('y')
    expect([byAge.wraps, byAge.unwraps]).toEqual([1, 1])

    const byHand = counting()
    const rotating = await KeyChain.open({ rootKey: byHand, store, name: NAME })
    await rotating.rotate()
    expect([byHand.wraps, byHand.unwraps]).toEqual([1, 1])
    await rotating.rotate()
    expect([byHand.wraps, byHand.unwraps]).toEqual([2, 1])

    const usage = { maxWrapsPerKek: 3, leaseSize: 3, dekPoolSize: 0 }
    const spent = memoryStore()
    const spender = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: spent, name: NAME, ...usage })
    for (let i = 0; i < 3; i++) await spender.encrypt('x')
    const byUsage = counting()
    const next = await KeyChain.open({ rootKey: byUsage, store: spent, name: NAME, ...usage })
    await next.encrypt('y')
    expect([byUsage.wraps, byUsage.unwraps]).toEqual([1, 1])
    for (let i = 0; i < 3; i++) await next.encrypt('z')
    expect([byUsage.wraps, byUsage.unwraps]).toEqual([2, 1])

    // A decryption under an older KEK proves the root as well as the primary would.
    const reading = counting()
    const reader = await KeyChain.open({ rootKey: reading, store, name: NAME })
    expect(text(await reader.decrypt(old))).toBe('x')
    await reader.rotate()
    expect([reading.wraps, reading.unwraps]).toEqual([1, 1])
  })
})

describe('a head whose primary KEK record is missing or corrupt', () => {
  async function chainWithTwoKeks(store: KeyStore): Promise<Uint8Array> {
    const a = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: NAME })
    const old = await a.encrypt('old')
    await a.rotate()
    return old
  }

  it('the head names a KEK the store lacks, no other KEK: refused with ERR_STORE, nothing written, even by the right root', async () => {
    const store = memoryStore()
    expect(await store.casHead(NAME, undefined, { primary: 0x1234, primaryCreatedAt: Date.now() - 1000, leased: 0 })).toBe(true)
    const before = await snapshot({ a: store, b: store })
    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store, name: NAME, maxKekAgeMs: 1 })
    const error = await expectCode(chain.rotate(), 'ERR_STORE')
    expect(error.message).toMatch(/does not have/)
    expect(error.retryable).toBe(true) // an eventually consistent store may still deliver it
    await expectCode(chain.encrypt('x'), 'ERR_STORE')
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([0, 0])
    expect(await snapshot({ a: store, b: store })).toEqual(before)
  })

  it('the head names a KEK the store lacks: the newest other KEK proves the right root (which then rotates); a wrong root is refused', async () => {
    const store = memoryStore()
    const old = await chainWithTwoKeks(store)
    const head = await store.getHead(NAME)
    expect(await store.casHead(NAME, head!.version, { primary: 0x1234, primaryCreatedAt: head!.value.primaryCreatedAt, leased: 0 })).toBe(true)
    const before = await snapshot({ a: store, b: store })

    const wrongKey = countingRootKey(aesRootKey(OTHER_ROOT_BYTES))
    const wrong = await KeyChain.open({ rootKey: wrongKey, store, name: NAME })
    await expectCode(wrong.rotate(), 'ERR_ROOT_KEY')
    expect(wrongKey.wraps).toBe(0)
    expect(wrongKey.unwraps).toBe(1) // the newest listed KEK
    expect(await snapshot({ a: store, b: store })).toEqual(before)

    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store, name: NAME })
    const { id } = await chain.rotate()
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([1, 1])
    expect((await store.getHead(NAME))!.value.primary).toBe(id)
    expect(text(await chain.decrypt(old))).toBe('old')
  })

  it('the primary\'s record is corrupt in the file: every root is refused (a corrupt record and a wrong root look alike), nothing written', async () => {
    const file = await storeFile()
    const old = await chainWithTwoKeks(fileStore(file))
    const json = JSON.parse(await readFile(file, 'utf8'))
    const chain = json.chains[NAME]
    const record = chain.keks[String(chain.head.value.primary)]
    const wrapped = fromBase64(record.wrapped)
    wrapped[wrapped.length - 1]! ^= 1
    record.wrapped = toBase64(wrapped)
    await writeFile(file, JSON.stringify(json))
    const shared = { a: fileStore(file), b: fileStore(file), file }
    const before = await snapshot(shared)

    for (const rootKey of [countingRootKey(aesRootKey(OTHER_ROOT_BYTES)), counting()]) {
      const b = await KeyChain.open({ rootKey, store: shared.b, name: NAME })
      await expectCode(b.rotate(), 'ERR_ROOT_KEY')
      await expectCode(b.encrypt('x'), 'ERR_ROOT_KEY')
      // The older KEK is never offered as proof: it might be a stray KEK of a wrong root.
      expect([rootKey.wraps, rootKey.unwraps]).toEqual([0, 1])
      await poolTurn()
      expect(await snapshot(shared)).toEqual(before)
    }
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: shared.b, name: NAME })
    expect(text(await reader.decrypt(old))).toBe('old')
  })

  it('no head but KEK records (a head lost, or a first writer that died before it): a wrong root is refused, the right one proves itself', async () => {
    const origin = memoryStore()
    const old = await chainWithTwoKeks(origin)
    const store = memoryStore()
    for (const r of await origin.listKeks(NAME)) expect(await store.putKekIfAbsent(NAME, r)).toBe(true)
    const before = await snapshot({ a: store, b: store })

    const wrong = await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES), store, name: NAME })
    await expectCode(wrong.encrypt('x'), 'ERR_ROOT_KEY')
    await expectCode(wrong.rotate(), 'ERR_ROOT_KEY')
    await poolTurn()
    expect(await snapshot({ a: store, b: store })).toEqual(before)

    const rootKey = counting()
    const right = await KeyChain.open({ rootKey, store, name: NAME })
    const fresh = await right.encrypt('new')
    expect([rootKey.wraps, rootKey.unwraps]).toEqual([1, 1])
    expect(text(await right.decrypt(old))).toBe('old')
    expect(text(await right.decrypt(fresh))).toBe('new')
  })
})

describe('what a failed proof leaves', () => {
  it('a rejection is the root\'s own typed error, with no key material', async () => {
    const store = memoryStore()
    await chainOfA({ a: store, b: store }, passphraseRootKey({ passphrase: 'the right one', iterations: MIN_ITERATIONS }), ENTRY_POINTS[2]![1])
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'the wrong one', iterations: MIN_ITERATIONS }), store, name: NAME })
    const error = await rejection(chain.rotate())
    expect(error).toBeInstanceOf(RootKeyError)
    expect(String(error)).toMatch(/wrong passphrase/)
    expect(JSON.stringify(error)).not.toMatch(/the wrong one|the right one/)
  })
})

describe('the embedded store has no shared state to prove against', () => {
  it('a wrong passphrase makes its own KEK and data that only it opens; the right one is refused on that data', async () => {
    const right = () => passphraseRootKey({ passphrase: 'the right one', iterations: MIN_ITERATIONS })
    const wrong = () => passphraseRootKey({ passphrase: 'the wrong one', iterations: MIN_ITERATIONS })
    const first = await KeyChain.open({ rootKey: right(), store: embeddedStore() })
    const good = await first.encrypt('good')
    // Another process: its own embedded store, so a brand-new chain, whatever the passphrase.
    const typo = await KeyChain.open({ rootKey: wrong(), store: embeddedStore() })
    const stranded = await typo.encrypt('stranded')
    expect(typo.stats()).toMatchObject({ rootKeyWraps: 1, rootKeyUnwraps: 0 })
    expect(kekIdOf(stranded)).not.toBe(kekIdOf(good))
    const reader = await KeyChain.open({ rootKey: right(), store: embeddedStore() })
    expect(text(await reader.decrypt(good))).toBe('good')
    await expectCode(reader.decrypt(stranded), 'ERR_ROOT_KEY')
    const typoReader = await KeyChain.open({ rootKey: wrong(), store: embeddedStore() })
    expect(text(await typoReader.decrypt(stranded))).toBe('stranded')
  })
})
