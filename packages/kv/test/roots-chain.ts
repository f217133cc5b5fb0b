/**
 * A chain of the released kind (one root, records where they always were) moves to several
 * roots and back to one through a store, as a user would: addRoot, unlock through the new root
 * alone, changeRoot away from 'default'. Run in the store's real runtime (workerd, Deno,
 * Chromium) by its package's tests; `keys` lists the store's raw keys as text (array keys as
 * JSON), to show where the records are.
 */
import { KeyChain, aesRootKey, type KeyStore } from '@kms-proxy/core'
import type { Harness } from '@kms-proxy/testkit'

const bytes = (seed: number) => Uint8Array.from({ length: 32 }, (_, i) => (i * 11 + seed) & 0xff)
const text = (b: Uint8Array) => new TextDecoder().decode(b)

/** What the scenario measured, for the README. */
export interface RootsChainMeasured {
  keks: number
  addRoot: { wrapped: number; rootKeyUnwraps: number; rootKeyWraps: number }
  changeRoot: { wrapped: number; deleted: number }
}

export function describeRootsChain(
  t: Harness,
  name: string,
  open: () => Promise<{ store: KeyStore; another(): Promise<KeyStore> | KeyStore; keys(): Promise<string[]> }>,
  measured: (m: RootsChainMeasured) => void = () => {},
): void {
  t.test(`${name}: a chain of one root gains a recovery root, unlocks through it alone, then changes its default root away; every message decrypts throughout`, async () => {
    const { store, another, keys } = await open()
    const first = await KeyChain.open({ rootKey: aesRootKey(bytes(1)), store, maxWrapsPerKek: 4, dekPoolSize: 0 })
    const data: Uint8Array[] = []
    for (let i = 0; i < 10; i++) data.push(await first.encrypt(`m${i}`))
    const keks = (await store.listKeks('default')).length
    t.ok(keks >= 3, `expected 3 KEKs or more, got ${keks}`)
    t.ok((await keys()).every((k) => !k.includes('kek-wrap')), 'one root: every record where records always were')

    const added = await first.addRoot('recovery', aesRootKey(bytes(2)))
    t.equal(added.wrapped, keks, 'KEKs wrapped under recovery:')
    t.equal((await keys()).filter((k) => k.includes('kek-wrap')).length, keks, 'records under kek-wrap:')
    const recovery = await KeyChain.open({ roots: { recovery: aesRootKey(bytes(2)) }, store: await another() })
    for (const [i, d] of data.entries()) t.equal(text(await recovery.decrypt(d)), `m${i}`)
    data.push(await first.encrypt('after addRoot')) // a new KEK or not, it has both wraps

    const changed = await recovery.changeRoot(aesRootKey(bytes(3)), { from: 'default', name: 'laptop' })
    const ids = new Set((await store.listKeks('default')).map((r) => r.id))
    t.equal(changed.wrapped, ids.size, 'KEKs wrapped under laptop:')
    t.equal(changed.deleted, ids.size, "'default' wraps deleted:")
    // `kek:5` or `"kek",5`: a record where the 'default' ones are (`kek-wrap` does not match).
    t.ok(!(await keys()).some((k) => /kek[:",]+\d/.test(k)), "a record left where the 'default' ones were")
    const laptop = await KeyChain.open({ roots: { laptop: aesRootKey(bytes(3)) }, store: await another() })
    for (const [i, d] of data.entries()) t.equal(text(await laptop.decrypt(d)), i < 10 ? `m${i}` : 'after addRoot')
    const roots = (await laptop.listRoots()).map((r) => `${r.name}:${r.state}`).sort().join(' ')
    t.equal(roots, 'laptop:active recovery:active', 'roots:')
    const old = KeyChain.open({ roots: { default: aesRootKey(bytes(1)) }, store: await another() }).then((c) => c.decrypt(data[0]!))
    await t.rejects(old, undefined, 'the removed root no longer decrypts')
    measured({
      keks,
      addRoot: { wrapped: added.wrapped, rootKeyUnwraps: added.rootKeyUnwraps, rootKeyWraps: added.rootKeyWraps },
      changeRoot: { wrapped: changed.wrapped, deleted: changed.deleted },
    })
  })
}
