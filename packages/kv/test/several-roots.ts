/**
 * Interim: the store side of several roots per chain (records keyed by KEK and root,
 * getKekWraps, deleteKekWrap, head roots), until describeStore covers it. Runs in workerd, Deno
 * and Chromium through the harness. Type-only imports, so Deno runs it as it is.
 */
import type { KekRecord, KeyStore } from '@kms-proxy/core'
import type { Harness } from '@kms-proxy/testkit'

const rec = (id: number, fill: number, root?: string): KekRecord => ({
  id,
  createdAt: 1_700_000_000_000 + id,
  rootKind: root ? `kind-${root}` : 'aes',
  wrapped: new Uint8Array(45).fill(fill),
  ...(root ? { root } : {}),
})
const keyOf = (r: KekRecord) => `${r.id}/${r.root ?? 'default'}`
const keysOf = (rs: KekRecord[]) => rs.map(keyOf).sort().join(',')

export function describeSeveralRoots(t: Harness, name: string, open: () => Promise<{ store: KeyStore; another(): Promise<KeyStore> | KeyStore }>): void {
  t.test(`${name}: records are put-if-absent per (id, root); getKek prefers 'default'; listKeks and getKekWraps give one per (id, root)`, async () => {
    const { store, another } = await open()
    t.ok(typeof store.getKekWraps === 'function' && typeof store.deleteKekWrap === 'function', 'getKekWraps and deleteKekWrap')
    t.equal(await store.putKekIfAbsent('c', rec(5, 0x11, 'recovery')), true, 'put 5/recovery:')
    t.equal((await store.getKek('c', 5))?.root, 'recovery', 'getKek with only a named record:')
    t.equal(await store.putKekIfAbsent('c', rec(5, 0x22)), true, 'put 5/default:')
    t.equal(await store.putKekIfAbsent('c', rec(5, 0x33, 'default')), false, "put 5 with root 'default' again:")
    const other = await another()
    t.equal(await other.putKekIfAbsent('c', rec(5, 0x44, 'recovery')), false, 'put 5/recovery again from another handle:')
    t.equal(await other.putKekIfAbsent('c', rec(50, 0x55, 'recovery')), true, 'put 50/recovery:')
    t.equal(await other.putKekIfAbsent('c', rec(5, 0x66, 'kms.eu-1')), true, 'put 5/kms.eu-1:')
    const first = (await other.getKek('c', 5))!
    t.equal(first.root, undefined, "getKek prefers 'default', written without root:")
    t.bytesEqual(first.wrapped, new Uint8Array(45).fill(0x22), 'default wrapped')
    t.equal(keysOf(await store.listKeks('c')), '5/default,5/kms.eu-1,5/recovery,50/recovery', 'listKeks:')
    const wraps = await store.getKekWraps!('c', 5)
    t.equal(keysOf(wraps), '5/default,5/kms.eu-1,5/recovery', 'getKekWraps(5):')
    const recovery = wraps.find((w) => w.root === 'recovery')!
    t.bytesEqual(recovery.wrapped, new Uint8Array(45).fill(0x11), 'recovery wrapped')
    t.equal(recovery.rootKind, 'kind-recovery', 'rootKind:')
    t.equal(recovery.createdAt, 1_700_000_000_005, 'createdAt:')
    t.equal(keysOf(await store.getKekWraps!('c', 50)), '50/recovery', 'getKekWraps(50):')
    t.equal((await store.getKekWraps!('c', 6)).length, 0, 'getKekWraps of an absent id:')
    t.equal((await store.getKekWraps!('d', 5)).length, 0, 'chains are separate:')
  })

  t.test(`${name}: deleteKekWrap deletes that one record, a no-op when absent`, async () => {
    const { store, another } = await open()
    for (const r of [rec(7, 1), rec(7, 2, 'a'), rec(7, 3, 'b'), rec(70, 4, 'a')]) t.equal(await store.putKekIfAbsent('c', r), true, `put ${keyOf(r)}:`)
    const other = await another()
    await other.deleteKekWrap!('c', 7, 'a')
    t.equal(keysOf(await store.getKekWraps!('c', 7)), '7/b,7/default', 'after deleting 7/a:')
    t.equal(keysOf(await store.listKeks('c')), '7/b,7/default,70/a', 'listKeks after deleting 7/a:')
    await other.deleteKekWrap!('c', 7, 'a')
    await other.deleteKekWrap!('c', 8, 'a')
    await other.deleteKekWrap!('d', 7, 'b')
    await other.deleteKekWrap!('c', 7, 'default')
    t.equal(keysOf(await store.getKekWraps!('c', 7)), '7/b', "after deleting 7/default:")
    t.equal((await store.getKek('c', 7))?.root, 'b', "getKek with 'default' gone:")
    t.equal(await store.putKekIfAbsent('c', rec(7, 9, 'a')), true, 'a deleted wrap may be written again:')
  })

  t.test(`${name}: the head keeps its roots exactly; absent stays absent`, async () => {
    const { store, another } = await open()
    const plain = { primary: 1, primaryCreatedAt: 10, leased: 0 }
    t.equal(await store.casHead('c', undefined, plain), true, 'create:')
    const v1 = (await store.getHead('c'))!
    t.equal('roots' in v1.value, false, 'roots absent:')
    const roots = [
      { name: 'default', kind: 'aes', state: 'active' as const },
      { name: 'recovery', kind: 'passphrase', state: 'adding' as const },
      { name: 'old.kms_1', kind: 'aws-kms', state: 'removing' as const },
    ]
    t.equal(await store.casHead('c', v1.version, { ...plain, leased: 3, roots }), true, 'swap with roots:')
    const v2 = (await (await another()).getHead('c'))!
    t.equal(JSON.stringify(v2.value.roots), JSON.stringify(roots), 'roots:')
    t.equal(await store.casHead('c', v2.version, { ...plain, leased: 4 }), true, 'swap without roots:')
    t.equal('roots' in (await store.getHead('c'))!.value, false, 'roots absent again:')
  })
}
