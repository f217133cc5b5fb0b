/**
 * Staleness is bounded (DESIGN.md, invariant 10): a rotation made by any process is used by
 * every chain sharing the store within its `maxStalenessMs`, at once when the store pushes the
 * change; a superseded primary's lease and prepared DEKs are dropped; the check costs at most
 * one head read per bound.
 */
import { describe, expect, it } from 'vitest'
import { KeyChain, RootKeyError, aesRootKey, memoryStore, type KeyStore } from '../src/index.ts'
import { OTHER_ROOT_BYTES, ROOT_BYTES, expectCode, kekIdOf, text } from './helpers.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** `inner` with its head reads counted, its watches counted, and a switch that makes reads fail. */
function observed(inner: KeyStore = memoryStore()) {
  const seen = { headReads: 0, watching: 0, down: false }
  const store: KeyStore = {
    ...inner,
    getHead: (c) => {
      seen.headReads++
      return seen.down ? Promise.reject(new Error('store unreachable')) : inner.getHead(c)
    },
    watchHead: (c, onChange) => {
      seen.watching++
      const stop = inner.watchHead!(c, onChange)
      return () => {
        seen.watching--
        stop()
      }
    },
  }
  return { store, seen }
}

const open = (store: KeyStore, options: Parameters<typeof KeyChain.open>[0] = {}) =>
  KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: 'fleet', ...options })

describe('a rotation elsewhere', () => {
  it('is used within maxStalenessMs by polling alone, and no DEK prepared under the old primary is used after', async () => {
    const store = memoryStore()
    const a = await open(store, { watch: false })
    const b = await open(store, { watch: false, maxStalenessMs: 100, dekPoolSize: 16 })
    const old = kekIdOf(await b.encrypt('fills the pool'))
    expect(kekIdOf(await a.encrypt('x'))).toBe(old)
    const { id } = await a.rotate()
    await sleep(150)
    const after = await Promise.all(Array.from({ length: 40 }, (_, i) => b.encrypt(`m${i}`)))
    expect(new Set(after.map(kekIdOf))).toEqual(new Set([id]))
    // The old primary's uses stay counted: nothing is given back to a KEK that is no longer primary.
    expect((await store.getHead('fleet'))!.value.primary).toBe(id)
    for (const [i, e] of after.entries()) expect(text(await a.decrypt(e))).toBe(`m${i}`)
  })

  it('is used at once when the store pushes the change, however long the bound', async () => {
    const { store, seen } = observed()
    const a = await open(store, { watch: false })
    const b = await open(store, { maxStalenessMs: 3_600_000 })
    expect(seen.watching).toBe(1)
    await b.encrypt('first')
    const { id } = await a.rotate()
    await sleep(20) // the push arrives in a macrotask, as a store's would
    expect(kekIdOf(await b.encrypt('after'))).toBe(id)
    b.close()
    expect(seen.watching).toBe(0)
    b.close() // idempotent
    expect(seen.watching).toBe(0)
  })

  it('is not seen without a push or a refresh when the bound is Infinity; refresh() sees it', async () => {
    const store = memoryStore()
    const a = await open(store, { watch: false })
    const b = await open(store, { watch: false, maxStalenessMs: Infinity })
    const old = kekIdOf(await b.encrypt('first'))
    const { id } = await a.rotate()
    await sleep(30)
    expect(kekIdOf(await b.encrypt('stale'))).toBe(old)
    await b.refresh()
    expect(kekIdOf(await b.encrypt('fresh'))).toBe(id)
  })
})

describe('the cost and the failure of the check', () => {
  it('costs at most one head read per bound while the chain is used, none at maxStalenessMs: Infinity', async () => {
    const { store, seen } = observed()
    const chain = await open(store, { watch: false, maxStalenessMs: 60_000 })
    await chain.encrypt('first')
    const reads = seen.headReads
    for (let i = 0; i < 500; i++) await chain.encrypt('x')
    expect(seen.headReads - reads).toBe(0)
    const lazy = await open(store, { watch: false, maxStalenessMs: Infinity })
    const before = seen.headReads
    for (let i = 0; i < 200; i++) await lazy.decrypt(await lazy.encrypt('y'))
    expect(seen.headReads - before).toBeLessThanOrEqual(1) // its first lease only
  })

  it('opening a chain and encrypting once reads the head once, not twice; a head that moved in between costs a retry, not a wrong lease', async () => {
    const { store, seen } = observed()
    const first = await open(store, { watch: false })
    await first.encrypt('makes the chain')
    const before = seen.headReads
    const cold = await open(store, { watch: false })
    const data = await cold.encrypt('x')
    expect(seen.headReads - before).toBe(1)
    const moved = await open(store, { watch: false })
    const { id } = await first.rotate() // after moved's open, before its first lease
    expect(kekIdOf(await moved.encrypt('y'))).toBe(id)
    expect(text(await first.decrypt(data))).toBe('x')
  })

  it('an encryption past the bound with the head unreadable fails retryable (a rotation may have happened); a decryption goes on', async () => {
    const { store, seen } = observed()
    const chain = await open(store, { watch: false, maxStalenessMs: 50 })
    const data = await chain.encrypt('before the outage')
    seen.down = true
    await sleep(80)
    const error = await expectCode(chain.encrypt('x'), 'ERR_STORE')
    expect(error.retryable).toBe(true)
    expect(text(await chain.decrypt(data))).toBe('before the outage')
    seen.down = false
    expect(text(await chain.decrypt(await chain.encrypt('after')))).toBe('after')
    expect(chain.stats().headCheckedAt).toBeGreaterThan(Date.now() - 1_000)
  })

  it('options are checked', async () => {
    const store = memoryStore()
    await expect(open(store, { maxStalenessMs: -1 })).rejects.toThrow(RangeError)
    await expect(open(store, { maxStalenessMs: Number.NaN })).rejects.toThrow(RangeError)
    await expect(open(store, { watch: 'yes' as unknown as boolean })).rejects.toThrow(TypeError)
    await expect(open(store, { destroyGraceMs: -5 })).rejects.toThrow(RangeError)
  })

  it('a chain that cannot read its head at open stops its watch', async () => {
    const { store, seen } = observed()
    seen.down = true
    await expectCode(open(store), 'ERR_STORE')
    expect(seen.watching).toBe(0)
  })
})

describe('a stale read of an eventually consistent store', () => {
  it('naming a primary this process saw replaced does not send it back to that primary', async () => {
    const inner = memoryStore()
    let staleHead: Awaited<ReturnType<KeyStore['getHead']>>
    let stale = false
    const store: KeyStore = { ...inner, getHead: async (c) => (stale ? staleHead : inner.getHead(c)) }
    const chain = await open(store, { watch: false, maxStalenessMs: 50 })
    const old = kekIdOf(await chain.encrypt('first'))
    staleHead = await inner.getHead('fleet')
    const { id } = await chain.rotate()
    stale = true // reads now answer the head from before the rotation, as a lagging replica would
    await sleep(80)
    const after = await Promise.all(Array.from({ length: 20 }, () => chain.encrypt('x')))
    expect(new Set(after.map(kekIdOf))).toEqual(new Set([id]))
    expect(id).not.toBe(old)
  })
})

describe('a rotation elsewhere while this process cannot reach its root key', () => {
  it('leaves it encrypting under the KEK it holds (within its lease), and it moves once the root answers', async () => {
    const store = memoryStore()
    const inner = aesRootKey(ROOT_BYTES)
    let down = false
    const flaky = {
      ...inner,
      unwrapKek: (w: Uint8Array, aad: Uint8Array, o?: { extractable?: boolean }) =>
        down ? Promise.reject(new RootKeyError('root unreachable', { retryable: true })) : inner.unwrapKek(w, aad, o),
    }
    const a = await open(store, { watch: false })
    const b = await KeyChain.open({ rootKey: flaky, store, name: 'fleet', watch: false, maxStalenessMs: 50 })
    const old = kekIdOf(await b.encrypt('first'))
    down = true
    const { id } = await a.rotate()
    await sleep(80)
    const during = await Promise.all(Array.from({ length: 10 }, () => b.encrypt('x')))
    expect(new Set(during.map(kekIdOf))).toEqual(new Set([old]))
    expect(b.stats().rootKeyAvailable).toBe(false)
    down = false
    await b.refresh()
    expect(kekIdOf(await b.encrypt('after'))).toBe(id)
    for (const e of during) expect(text(await a.decrypt(e))).toBe('x')
  })

  it('a new primary under no root this process holds is not waited out: the call fails', async () => {
    const store = memoryStore()
    const roots = { hsm: aesRootKey(ROOT_BYTES), kms: aesRootKey(OTHER_ROOT_BYTES) }
    const a = await KeyChain.open({ roots, store, name: 'fleet', watch: false })
    await a.encrypt('first')
    const b = await KeyChain.open({ roots: { hsm: roots.hsm }, store, name: 'fleet', watch: false, maxStalenessMs: 50 })
    await b.encrypt('b holds the primary')
    await a.removeRoot('hsm')
    await a.rotate()
    await sleep(80)
    await expectCode(b.encrypt('x'), 'ERR_ROOT_KEY')
  })
})
