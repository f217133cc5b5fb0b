/**
 * The end of a KEK's life and of a chain's (DESIGN.md, invariant 9): retiring is reversible and
 * stops decryption everywhere within the bound; destroying deletes every record for good, only
 * after a retirement and a grace period, never the primary; a destroy killed half-way is
 * finished by the same call.
 */
import { describe, expect, it } from 'vitest'
import { KeyChain, aesRootKey, embeddedStore, memoryStore, type KeyStore } from '../src/index.ts'
import { OTHER_ROOT_BYTES, ROOT_BYTES, expectCode, kekIdOf, text } from './helpers.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const open = (store: KeyStore, options: Parameters<typeof KeyChain.open>[0] = {}) =>
  KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: 'life', watch: false, ...options })

/** A chain with data under an old KEK and under the primary. */
async function twoKeks(store: KeyStore = memoryStore()) {
  const chain = await open(store)
  const old = await chain.encrypt('old data')
  await chain.rotate()
  const current = await chain.encrypt('current data')
  return { store, chain, old, oldId: kekIdOf(old), current }
}

describe('retire', () => {
  it('stops decryption and rewrap at once here, even of data whose DEK is cached, and counts what it refused; unretire undoes it', async () => {
    const { chain, old, oldId, current } = await twoKeks()
    expect(text(await chain.decrypt(old))).toBe('old data') // the DEK is cached now
    const entry = await chain.retireKek(oldId)
    expect(entry.id).toBe(oldId)
    expect(await chain.retireKek(oldId)).toEqual(entry) // idempotent: the first retirement stands
    await expectCode(chain.decrypt(old), 'ERR_RETIRED_KEK')
    await expectCode(chain.rewrap(old), 'ERR_RETIRED_KEK')
    expect(text(await chain.decrypt(current))).toBe('current data')
    expect(chain.stats().refusedRetired).toBe(2)
    expect(chain.stats().keks.find((k) => k.id === oldId)?.state).toBe('retired')
    expect((await chain.lifecycleStatus()).retired).toEqual([entry])
    await chain.unretireKek(oldId)
    await chain.unretireKek(oldId) // idempotent
    expect(text(await chain.decrypt(old))).toBe('old data')
    expect(await chain.lifecycleStatus()).toEqual({ retired: [] })
  })

  it('reaches another chain on the store within its maxStalenessMs, though it holds the KEK', async () => {
    const { store, chain, old, oldId } = await twoKeks()
    const other = await open(store, { maxStalenessMs: 100 })
    expect(text(await other.decrypt(old))).toBe('old data')
    await chain.retireKek(oldId)
    await sleep(150)
    await expectCode(other.decrypt(old), 'ERR_RETIRED_KEK')
  })

  it('refuses the primary, an id the store lacks, and what is not an id', async () => {
    const { chain, current, old } = await twoKeks()
    await expectCode(chain.retireKek(kekIdOf(current)), 'ERR_LIMIT')
    await expectCode(chain.retireKek([1, 2, 3].find((id) => id !== kekIdOf(current) && id !== kekIdOf(old))!), 'ERR_UNKNOWN_KEK')
    for (const bad of [0, -1, 1.5, 2 ** 32, '7', undefined]) await expect(chain.retireKek(bad as number)).rejects.toThrow(TypeError)
    await expectCode((await open(memoryStore())).retireKek(7), 'ERR_UNKNOWN_KEK') // no KEK at all yet
  })
})

describe('destroy', () => {
  it('refuses the primary, a KEK not retired, and one within the grace period (7 days by default)', async () => {
    const { chain, oldId, current } = await twoKeks()
    await expectCode(chain.destroyKek(kekIdOf(current), { graceMs: 0 }), 'ERR_LIMIT')
    await expectCode(chain.destroyKek(oldId, { graceMs: 0 }), 'ERR_LIMIT')
    await chain.retireKek(oldId)
    const early = await expectCode(chain.destroyKek(oldId), 'ERR_LIMIT')
    expect(early.message).toMatch(/grace period of 604800 s/)
    await expectCode(chain.destroyKek(oldId, { graceMs: 60_000 }), 'ERR_LIMIT')
    await expect(chain.destroyKek(oldId, { graceMs: -1 })).rejects.toThrow(RangeError)
  })

  it('deletes every record of the KEK, under every root; its data fails as destroyed here and, within the bound, where it was cached', async () => {
    const store = memoryStore()
    const roots = { main: aesRootKey(ROOT_BYTES), recovery: aesRootKey(OTHER_ROOT_BYTES) }
    const chain = await KeyChain.open({ roots, store, name: 'life', watch: false })
    const old = await chain.encrypt('old data')
    await chain.rotate()
    const current = await chain.encrypt('current data')
    const other = await KeyChain.open({ roots: { recovery: roots.recovery }, store, name: 'life', watch: false, maxStalenessMs: 100 })
    expect(text(await other.decrypt(old))).toBe('old data')
    await chain.retireKek(kekIdOf(old))
    await sleep(5)
    const report = await chain.destroyKek(kekIdOf(old), { graceMs: 1 })
    expect(report).toEqual({ keks: [kekIdOf(old)], deleted: 2 })
    expect(await store.getKekWraps!('life', kekIdOf(old))).toEqual([])
    await expectCode(chain.decrypt(old), 'ERR_DESTROYED_KEK')
    await sleep(150)
    await expectCode(other.decrypt(old), 'ERR_DESTROYED_KEK')
    expect(text(await other.decrypt(current))).toBe('current data')
    await expectCode(chain.unretireKek(kekIdOf(old)), 'ERR_DESTROYED_KEK')
    expect(await chain.destroyKek(kekIdOf(old), { graceMs: 0 })).toEqual({ keks: [kekIdOf(old)], deleted: 0 }) // again: nothing left
    expect(chain.stats().keks.find((k) => k.id === kekIdOf(old))?.state).toBe('destroyed')
  })

  it('killed after its first deletion, the same call finishes; meanwhile the KEK already counts as destroyed', async () => {
    const inner = memoryStore()
    let failAfter = Infinity
    const store: KeyStore = {
      ...inner,
      deleteKekWrap: async (c, id, root) => {
        if (failAfter-- <= 0) throw new Error('killed')
        return inner.deleteKekWrap!(c, id, root)
      },
    }
    const roots = { a: aesRootKey(ROOT_BYTES), b: aesRootKey(OTHER_ROOT_BYTES) }
    const chain = await KeyChain.open({ roots, store, name: 'life', watch: false })
    const old = await chain.encrypt('old')
    await chain.rotate()
    await chain.retireKek(kekIdOf(old))
    failAfter = 1
    await expectCode(chain.destroyKek(kekIdOf(old), { graceMs: 0 }), 'ERR_STORE')
    expect((await inner.getKekWraps!('life', kekIdOf(old))).length).toBe(1)
    const fresh = await KeyChain.open({ roots, store, name: 'life', watch: false })
    await expectCode(fresh.decrypt(old), 'ERR_DESTROYED_KEK')
    failAfter = Infinity
    expect(await chain.destroyKek(kekIdOf(old), { graceMs: 0 })).toEqual({ keks: [kekIdOf(old)], deleted: 1 })
    expect(await inner.getKekWraps!('life', kekIdOf(old))).toEqual([])
  })

  it('is refused on a store that embeds KEKs in the data, or cannot delete records', async () => {
    const { chain, oldId } = await twoKeks(embeddedStore())
    await chain.retireKek(oldId)
    await expect(chain.destroyKek(oldId, { graceMs: 0 })).rejects.toThrow(/destroy the data instead/)
    const { getKekWraps: _, deleteKekWrap: __, ...oneRoot } = memoryStore()
    const plain = await twoKeks(oneRoot as KeyStore)
    await plain.chain.retireKek(plain.oldId)
    await expect(plain.chain.destroyKek(plain.oldId, { graceMs: 0 })).rejects.toThrow(/cannot delete KEK records/)
  })
})

describe('a whole chain (one per tenant)', () => {
  it('retired: no encryption, decryption or rotation, here and elsewhere within the bound; unretired: all back', async () => {
    const { store, chain, old, current } = await twoKeks()
    const other = await open(store, { maxStalenessMs: 100 })
    await other.decrypt(current)
    const at = await chain.retireChain()
    expect(await chain.retireChain()).toBe(at)
    await expectCode(chain.encrypt('x'), 'ERR_RETIRED_KEK')
    await expectCode(chain.decrypt(old), 'ERR_RETIRED_KEK')
    await expectCode(chain.rotate(), 'ERR_RETIRED_KEK')
    await sleep(150)
    await expectCode(other.encrypt('x'), 'ERR_RETIRED_KEK')
    await expectCode(other.decrypt(current), 'ERR_RETIRED_KEK')
    await expectCode(chain.destroyChain(), 'ERR_LIMIT') // within the grace period
    await chain.unretireChain()
    expect(text(await chain.decrypt(old))).toBe('old data')
    await sleep(150)
    expect(text(await other.decrypt(await other.encrypt('back')))).toBe('back')
  })

  it('destroyed: every record deleted, the head a tombstone; every instance fails as destroyed; no way back', async () => {
    const { store, chain, old, current } = await twoKeks()
    await expectCode(chain.destroyChain({ graceMs: 0 }), 'ERR_LIMIT') // not retired
    await chain.retireChain()
    const report = await chain.destroyChain({ graceMs: 0 })
    expect(report.keks.sort()).toEqual([kekIdOf(old), kekIdOf(current)].sort())
    expect(report.deleted).toBe(2)
    expect(await store.listKeks('life')).toEqual([])
    const head = (await store.getHead('life'))!.value
    expect(head.chainDestroyedAt).toBeGreaterThan(0)
    const later = await open(store)
    await expectCode(later.decrypt(old), 'ERR_DESTROYED_KEK')
    await expectCode(later.encrypt('a new tenant under the old name'), 'ERR_DESTROYED_KEK')
    await expectCode(later.unretireChain(), 'ERR_DESTROYED_KEK')
    expect(await chain.destroyChain({ graceMs: 0 })).toEqual({ keks: [], deleted: 0 })
    expect(JSON.stringify(head)).not.toMatch(/wrapped/)
  })
})

describe('rewrap tells what it moved, per KEK', () => {
  it('stats().keks counts decryptions and data moved off each KEK, so a retirement can be checked', async () => {
    const { chain, old, oldId, current } = await twoKeks()
    const olds = [old, await chain.rewrap(current)] // the second is already under the primary: not moved
    const moved = await chain.rewrap(olds[0]!)
    await chain.decrypt(moved)
    const stats = chain.stats().keks
    expect(stats.find((k) => k.id === oldId)).toMatchObject({ rewrapped: 1, state: 'active', primary: false })
    expect(stats.find((k) => k.id === kekIdOf(current))).toMatchObject({ rewrapped: 0, decryptions: 1, primary: true })
  })
})
