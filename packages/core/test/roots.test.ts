/**
 * Several roots per chain (DESIGN.md, "Key lifecycle", invariant 8): any one root unlocks, a
 * rotation wraps under every root, roots are added, removed and changed without a data byte
 * changing, and the embedded store carries one wrap per root (format v2).
 */
import { describe, expect, it } from 'vitest'
import {
  KeyChain,
  RootKeyError,
  aesRootKey,
  decodeHeader,
  embeddedStore,
  memoryStore,
  type KeyStore,
  type RootKey,
} from '../src/index.ts'
import { OTHER_ROOT_BYTES, ROOT_BYTES, expectCode, kekIdOf, text } from './helpers.ts'

const THIRD_ROOT_BYTES = Uint8Array.from({ length: 32 }, (_, i) => (i * 29 + 3) & 0xff)

/** A real AES root with its calls counted, and a switch that makes it unreachable. */
function root(bytes: Uint8Array) {
  const inner = aesRootKey(bytes)
  const calls = { newKek: 0, wrapKek: 0, unwrapKek: 0 }
  let down = false
  const unreachable = () => new RootKeyError('root unreachable', { retryable: true })
  const key: RootKey = {
    kind: inner.kind,
    newKek: (aad) => (calls.newKek++, down ? Promise.reject(unreachable()) : inner.newKek(aad)),
    wrapKek: (kek, aad) => (calls.wrapKek++, down ? Promise.reject(unreachable()) : inner.wrapKek!(kek, aad)),
    unwrapKek: (w, aad, o) => (calls.unwrapKek++, down ? Promise.reject(unreachable()) : inner.unwrapKek(w, aad, o)),
  }
  return { key, calls, setDown: (d: boolean) => void (down = d) }
}

async function snapshot(store: KeyStore, chain = 'default') {
  const records = await store.listKeks(chain)
  return records.map((r) => `${r.id}/${r.root ?? 'default'}`).sort()
}

describe('a chain of several roots', () => {
  it('any one root unlocks; a new KEK gets one wrap per root; a rotation needs every root', async () => {
    const store = memoryStore()
    const [a, b] = [root(ROOT_BYTES), root(OTHER_ROOT_BYTES)]
    const both = await KeyChain.open({ roots: { main: a.key, recovery: b.key }, store })
    const data = await both.encrypt('hello')
    const id = kekIdOf(data)
    expect(await snapshot(store)).toEqual([`${id}/main`, `${id}/recovery`].sort())
    expect((await store.getHead('default'))!.value.roots).toEqual([
      { name: 'main', kind: 'aes', state: 'active' },
      { name: 'recovery', kind: 'aes', state: 'active' },
    ])
    expect(a.calls).toMatchObject({ newKek: 0, wrapKek: 1 })
    expect(b.calls).toMatchObject({ newKek: 0, wrapKek: 1 })
    for (const only of [{ main: root(ROOT_BYTES).key }, { recovery: root(OTHER_ROOT_BYTES).key }] as Record<string, RootKey>[]) {
      const chain = await KeyChain.open({ roots: only, store })
      expect(text(await chain.decrypt(data))).toBe('hello')
      const before = await snapshot(store)
      const error = await expectCode(chain.rotate(), 'ERR_ROOT_KEY')
      expect(error.message).toMatch(/does not hold the root "(main|recovery)"/)
      expect(await snapshot(store)).toEqual(before)
    }
    // rootKey stands for "the only root": with two it decrypts, and refuses to rotate.
    const single = await KeyChain.open({ rootKey: root(OTHER_ROOT_BYTES).key, store })
    expect(text(await single.decrypt(data))).toBe('hello')
    expect((await expectCode(single.rotate(), 'ERR_ROOT_KEY')).message).toMatch(/open it with roots/)
  })

  it('with one root down the chain unlocks through another, and says which root failed', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ roots: { kms: root(ROOT_BYTES).key, recovery: root(OTHER_ROOT_BYTES).key }, store })
    const data = await writer.encrypt('still here')
    const [kms, recovery] = [root(ROOT_BYTES), root(OTHER_ROOT_BYTES)]
    kms.setDown(true)
    const reader = await KeyChain.open({ roots: { kms: kms.key, recovery: recovery.key }, store })
    expect(text(await reader.decrypt(data))).toBe('still here')
    const stats = reader.stats()
    expect(stats.roots.kms).toMatchObject({ unwraps: 1, available: false })
    expect(stats.roots.recovery).toMatchObject({ unwraps: 1, available: true })
    recovery.setDown(true)
    const third = await KeyChain.open({ roots: { kms: kms.key, recovery: recovery.key }, store })
    const error = await expectCode(third.decrypt(data), 'ERR_ROOT_KEY')
    expect(error.retryable).toBe(true)
  })

  it('a chain of several roots opened with a wrong one never wraps under it', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ roots: { main: root(ROOT_BYTES).key, recovery: root(OTHER_ROOT_BYTES).key }, store })
    await writer.encrypt('x')
    const before = await snapshot(store)
    const wrong = await KeyChain.open({ roots: { main: root(ROOT_BYTES).key, recovery: root(THIRD_ROOT_BYTES).key }, store })
    await wrong.encrypt('y') // the primary unwraps through main
    await expectCode(wrong.rotate(), 'ERR_ROOT_KEY')
    expect(await snapshot(store)).toEqual(before)
  })
})

describe('addRoot, removeRoot, changeRoot', () => {
  async function chainWithKeks(n: number, store: KeyStore, rootKey: RootKey) {
    const chain = await KeyChain.open({ rootKey, store })
    const data: Uint8Array[] = []
    for (let i = 0; i < n; i++) {
      data.push(await chain.encrypt(`message ${i}`))
      await chain.rotate()
    }
    return { chain, data }
  }

  it('changeRoot re-wraps every KEK under the new root: one unwrap and one wrap per KEK, no data byte changes', async () => {
    const store = memoryStore()
    const { data } = await chainWithKeks(20, store, aesRootKey(ROOT_BYTES))
    const copies = data.map((d) => d.slice())
    const old = root(ROOT_BYTES)
    const neu = root(OTHER_ROOT_BYTES)
    const chain = await KeyChain.open({ rootKey: old.key, store })
    const report = await chain.changeRoot(neu.key)
    // The old root: one unwrap to prove it holds the chain (none in a process that decrypted
    // already), then one per KEK; the new root: one wrap per KEK, one unwrap to prove itself.
    expect(report).toEqual({ name: 'default-2', keks: 21, wrapped: 21, deleted: 21, rootKeyUnwraps: 23, rootKeyWraps: 21 })
    expect(old.calls).toEqual({ newKek: 0, wrapKek: 0, unwrapKek: 22 })
    expect(neu.calls).toEqual({ newKek: 0, wrapKek: 21, unwrapKek: 1 })
    expect(data).toEqual(copies)
    expect((await store.getHead('default'))!.value.roots).toEqual([{ name: 'default-2', kind: 'aes', state: 'active' }])
    // The new root alone, opened as rootKey, decrypts everything; the old one opens nothing.
    const after = await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES), store })
    for (let i = 0; i < data.length; i++) expect(text(await after.decrypt(data[i]!))).toBe(`message ${i}`)
    await after.rotate()
    const stale = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    await expectCode(stale.decrypt(data[0]!), 'ERR_ROOT_KEY')
    // Again: a new passphrase twice is default-2 then default-3.
    expect((await after.changeRoot(aesRootKey(THIRD_ROOT_BYTES))).name).toBe('default-3')
  })

  it('addRoot then removeRoot; the last root cannot be removed', async () => {
    const store = memoryStore()
    const { data } = await chainWithKeks(3, store, aesRootKey(ROOT_BYTES))
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const added = await chain.addRoot('recovery', aesRootKey(OTHER_ROOT_BYTES))
    expect(added).toMatchObject({ name: 'recovery', keks: 4, wrapped: 4, deleted: 0 })
    expect(await chain.listRoots()).toEqual([
      { name: 'default', kind: 'aes', state: 'active', held: true },
      { name: 'recovery', kind: 'aes', state: 'active', held: true },
    ])
    // Again: nothing to do.
    expect(await chain.addRoot('recovery', aesRootKey(OTHER_ROOT_BYTES))).toMatchObject({ wrapped: 0, rootKeyWraps: 0 })
    // New KEKs now get both wraps.
    const fresh = await chain.rotate()
    expect((await store.getKekWraps!('default', fresh.id)).length).toBe(2)
    const recoveryOnly = await KeyChain.open({ roots: { recovery: aesRootKey(OTHER_ROOT_BYTES) }, store })
    for (const d of data) await recoveryOnly.decrypt(d)
    expect(await chain.removeRoot('default')).toMatchObject({ name: 'default', keks: 5, deleted: 5 })
    await expectCode(chain.removeRoot('recovery'), 'ERR_LIMIT')
    await expectCode(KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store }).then((c) => c.decrypt(data[0]!)), 'ERR_ROOT_KEY')
    expect(await chain.removeRoot('default')).toMatchObject({ deleted: 0 }) // already gone: not an error
  })

  it('a new root that cannot unwrap its own wrap writes nothing', async () => {
    const store = memoryStore()
    await chainWithKeks(2, store, aesRootKey(ROOT_BYTES))
    const before = await snapshot(store)
    const liar: RootKey = {
      kind: 'liar',
      newKek: (aad) => aesRootKey(OTHER_ROOT_BYTES).newKek(aad),
      wrapKek: (kek, aad) => aesRootKey(OTHER_ROOT_BYTES).wrapKek!(kek, aad),
      unwrapKek: (w, aad) => aesRootKey(THIRD_ROOT_BYTES).unwrapKek(w, aad),
    }
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    await expectCode(chain.addRoot('liar', liar), 'ERR_ROOT_KEY')
    expect(await snapshot(store)).toEqual(before)
    // The head lists it as being added; removing it ends the attempt.
    expect((await chain.listRoots()).map((r) => `${r.name}:${r.state}`)).toEqual(['default:active', 'liar:adding'])
    await chain.removeRoot('liar')
    expect((await chain.listRoots()).map((r) => r.name)).toEqual(['default'])
  })

  it('bad arguments are typed errors', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
    await chain.encrypt('x')
    await expect(chain.addRoot('', aesRootKey(OTHER_ROOT_BYTES))).rejects.toBeInstanceOf(TypeError)
    await expect(chain.addRoot('a/b', aesRootKey(OTHER_ROOT_BYTES))).rejects.toBeInstanceOf(TypeError)
    await expect(chain.addRoot('x', {} as RootKey)).rejects.toBeInstanceOf(TypeError)
    const { wrapKek: _, ...noWrap } = aesRootKey(OTHER_ROOT_BYTES) as RootKey & { wrapKek: unknown }
    await expect(chain.addRoot('x', noWrap as RootKey)).rejects.toBeInstanceOf(TypeError)
    await expect(chain.changeRoot(aesRootKey(OTHER_ROOT_BYTES), { from: 'nope' })).rejects.toBeInstanceOf(TypeError)
    await expect(KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), roots: { a: aesRootKey(ROOT_BYTES) } })).rejects.toBeInstanceOf(TypeError)
    await expect(KeyChain.open({ roots: {} })).rejects.toBeInstanceOf(TypeError)
    await expect(KeyChain.open({ roots: { 'no space': aesRootKey(ROOT_BYTES) } })).rejects.toBeInstanceOf(TypeError)
  })
})

describe('the embedded store with several roots (format v2)', () => {
  it('data carries one wrap per root, and either root alone decrypts it', async () => {
    const writer = await KeyChain.open({ roots: { passkey: aesRootKey(ROOT_BYTES), recovery: aesRootKey(OTHER_ROOT_BYTES) } })
    const data = await writer.encrypt('notes')
    const header = decodeHeader(data)
    expect(header.version).toBe(2)
    expect(header.embeddedKeks!.map((e) => e.root)).toEqual(['passkey', 'recovery'])
    for (const rootKey of [aesRootKey(ROOT_BYTES), aesRootKey(OTHER_ROOT_BYTES)]) {
      expect(text(await (await KeyChain.open({ rootKey })).decrypt(data))).toBe('notes')
    }
    await expectCode((await KeyChain.open({ rootKey: aesRootKey(THIRD_ROOT_BYTES) })).decrypt(data), 'ERR_ROOT_KEY')
    const one = await (await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES) })).encrypt('notes')
    expect(data.length - one.length).toBe(1 + (1 + 7 + 2 + 45) + (1 + 8 + 2 + 45) - 2 - 45)
  })

  it('changeRoot then rewrap moves data to the new root by its header only', async () => {
    const old = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: embeddedStore() })
    const data = await old.encrypt('moved')
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: embeddedStore() })
    await chain.decrypt(data)
    await chain.changeRoot(aesRootKey(OTHER_ROOT_BYTES))
    const moved = await chain.rewrap(data)
    expect(decodeHeader(moved).version).toBe(1)
    expect(moved.subarray(moved.length - 12 - 5 - 16)).toEqual(data.subarray(data.length - 12 - 5 - 16)) // iv2 and payload kept
    expect(text(await (await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES) })).decrypt(moved))).toBe('moved')
    await expectCode((await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES) })).decrypt(moved), 'ERR_ROOT_KEY')
  })

  it('streams carry every root too, and rewrapStreamHeader moves them', async () => {
    const chain = await KeyChain.open({ roots: { a: aesRootKey(ROOT_BYTES), b: aesRootKey(OTHER_ROOT_BYTES) } })
    const input = new Uint8Array(100_000).map((_, i) => i & 0xff)
    const encrypted = new Uint8Array(await new Response(new Blob([input]).stream().pipeThrough(chain.encryptStream({ segmentSize: 4096 }))).arrayBuffer())
    expect(decodeHeader(encrypted).version).toBe(2)
    const readerB = await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES) })
    const back = new Uint8Array(await new Response(new Blob([encrypted]).stream().pipeThrough(readerB.decryptStream())).arrayBuffer())
    expect(back).toEqual(input)
    const single = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES) })
    const { header, replaces } = await single.rewrapStreamHeader(encrypted)
    const moved = new Uint8Array([...header, ...encrypted.subarray(replaces)])
    expect(decodeHeader(moved).version).toBe(1)
    const readerA = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES) })
    expect(new Uint8Array(await new Response(new Blob([moved]).stream().pipeThrough(readerA.decryptStream())).arrayBuffer())).toEqual(input)
  })
})

describe('root changes under crashes and races', () => {
  const [OLD, NEW] = [() => aesRootKey(ROOT_BYTES), () => aesRootKey(OTHER_ROOT_BYTES)]

  it('a process opened with the old root, still running after changeRoot, refuses to rotate (it would wrap under the old root)', async () => {
    const store = memoryStore()
    const stale = await KeyChain.open({ rootKey: OLD(), store, maxWrapsPerKek: 2, leaseSize: 1, dekPoolSize: 0 })
    await stale.encrypt('before')
    await (await KeyChain.open({ rootKey: OLD(), store })).changeRoot(NEW())
    const before = await snapshot(store)
    await expectCode(stale.rotate(), 'ERR_ROOT_KEY')
    expect(await snapshot(store)).toEqual(before)
  })

  it('changeRoot stopped after any head write is finished by the same call again', async () => {
    for (const stopAt of [1, 2, 3]) {
      const store = memoryStore()
      const data = await (await KeyChain.open({ rootKey: OLD(), store })).encrypt('x')
      let cas = 0
      const stopping: KeyStore = {
        ...store,
        casHead: async (...a) => {
          const r = await store.casHead(...a)
          if (++cas === stopAt) throw new Error('stopped')
          return r
        },
      }
      await expectCode((await KeyChain.open({ rootKey: OLD(), store: stopping })).changeRoot(NEW()), 'ERR_STORE')
      await (await KeyChain.open({ rootKey: OLD(), store })).changeRoot(NEW())
      expect((await store.getHead('default'))!.value.roots!.map((r) => `${r.name}:${r.state}`), `stopped at head write ${stopAt}`).toEqual(['default-2:active'])
      expect(text(await (await KeyChain.open({ rootKey: NEW(), store })).decrypt(data))).toBe('x')
      await expectCode((await KeyChain.open({ rootKey: OLD(), store })).decrypt(data), 'ERR_ROOT_KEY')
    }
  })

  it('changeRoot run again after it finished does nothing and writes nothing', async () => {
    const store = memoryStore()
    const data = await (await KeyChain.open({ rootKey: OLD(), store })).encrypt('x')
    await (await KeyChain.open({ rootKey: OLD(), store })).changeRoot(NEW())
    const before = await snapshot(store)
    const head = (await store.getHead('default'))!.version
    const again = await (await KeyChain.open({ rootKey: OLD(), store })).changeRoot(NEW())
    expect(again).toMatchObject({ name: 'default-2', wrapped: 0, deleted: 0 })
    expect(await snapshot(store)).toEqual(before)
    expect((await store.getHead('default'))!.version).toBe(head)
    expect(text(await (await KeyChain.open({ rootKey: NEW(), store })).decrypt(data))).toBe('x')
  })

  it('a KEK made as a root was being removed never becomes primary with a wrap under the removed root', async () => {
    const store = memoryStore()
    const admin = await KeyChain.open({ roots: { a: OLD(), b: NEW() }, store })
    await admin.encrypt('x')
    let release!: () => void
    const removed = new Promise<void>((r) => (release = r))
    let held = false
    const slow: KeyStore = {
      ...store,
      async putKekIfAbsent(chain, record) {
        if (!held && record.root === 'a') {
          held = true
          await removed
        }
        return store.putKekIfAbsent(chain, record)
      },
    }
    const writer = await KeyChain.open({ roots: { a: OLD(), b: NEW() }, store: slow, dekPoolSize: 0 })
    await writer.encrypt('proves both roots')
    const rotating = writer.rotate()
    await new Promise((r) => setTimeout(r, 50))
    await admin.removeRoot('a')
    release()
    // The writer drops the KEK it made under a and b, and makes one under b alone.
    const { id } = await rotating
    const head = (await store.getHead('default'))!.value
    expect(head.primary).toBe(id)
    expect(head.roots).toEqual([{ name: 'b', kind: 'aes', state: 'active' }])
    expect((await store.getKekWraps!('default', head.primary)).map((r) => r.root)).toEqual(['b'])
    // No wrap under the removed root remains, not even of the KEK that lost the race.
    expect((await store.listKeks('default')).filter((r) => r.root === 'a')).toEqual([])
    const data = await writer.encrypt('after the removal')
    await expectCode((await KeyChain.open({ roots: { a: OLD() }, store })).decrypt(data), 'ERR_ROOT_KEY')
  })
})

describe('changeRoot with names, run again after it finished', () => {
  it('does nothing and writes nothing', async () => {
    const store = memoryStore()
    const data = await (await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })).encrypt('x')
    const options = { from: 'default', name: 'kms' }
    await (await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })).changeRoot(aesRootKey(OTHER_ROOT_BYTES), options)
    const before = await snapshot(store)
    const again = await (await KeyChain.open({ roots: { kms: aesRootKey(OTHER_ROOT_BYTES) }, store })).changeRoot(aesRootKey(OTHER_ROOT_BYTES), options)
    expect(again).toMatchObject({ name: 'kms', wrapped: 0, deleted: 0, rootKeyWraps: 0 })
    expect(await snapshot(store)).toEqual(before)
    expect(text(await (await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES), store })).decrypt(data))).toBe('x')
    // A root that is not the chain's is still refused.
    await expect((await KeyChain.open({ roots: { kms: aesRootKey(OTHER_ROOT_BYTES) }, store })).changeRoot(aesRootKey(THIRD_ROOT_BYTES), options)).rejects.toBeInstanceOf(TypeError)
  })
})

describe('sealKek refuses what it cannot wrap with a typed error', () => {
  it('a non-extractable KEK, or not a CryptoKey, is a TypeError naming the fix, not a DOMException', async () => {
    const root = aesRootKey(ROOT_BYTES)
    const { kek } = await root.newKek(new Uint8Array(8)) // non-extractable, as every KEK the chain keeps
    const error = await root.wrapKek!(kek, new Uint8Array(8)).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(TypeError)
    expect(String(error)).toMatch(/extractable/)
    await expect(root.wrapKek!({} as CryptoKey, new Uint8Array(8))).rejects.toThrow(TypeError)
  })
})
