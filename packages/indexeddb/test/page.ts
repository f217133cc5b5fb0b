// Page script for indexeddb.test.ts: bundled by esbuild from the sources (the repo tsconfig maps
// @kms-proxy/* to src), loaded by a page on http://localhost, driven through globalThis.kp.
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { describeRootsChain, type RootsChainMeasured } from '../../kv/test/roots-chain.ts'
import { createStore, get, set, type UseStore } from 'idb-keyval'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
const unique = () => `t-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`

const kp = {
  async contract() {
    const t = createHarness()
    describeStore(t, {
      name: 'indexeddb',
      severalRoots: true,
      watch: true,
      open: async () => {
        const name = unique()
        return { store: indexedDbStore({ name }), another: () => indexedDbStore({ name }) }
      },
    })
    return t.run()
  },

  /** Several roots per chain, what describeStore does not cover: the key layout, records written before, malformed heads. */
  async roots() {
    const t = createHarness()
    t.test("indexeddb: the 'default' record stays at [chain, 'kek', id] with no root field; other roots at [chain, 'kek-wrap', id, root]", async () => {
      const name = unique()
      const store = indexedDbStore({ name })
      const raw = createStore(`kms-proxy:${name}`, 'keys')
      const wrapped = new Uint8Array([1, 2, 3])
      t.equal(await store.putKekIfAbsent('c', { id: 5, createdAt: 1, rootKind: 'aes', wrapped, root: 'default' }), true)
      t.equal(await store.putKekIfAbsent('c', { id: 5, createdAt: 1, rootKind: 'kms', wrapped, root: 'recovery' }), true)
      t.equal(await store.putKekIfAbsent('c', { id: 50, createdAt: 2, rootKind: 'kms', wrapped, root: 'recovery' }), true)
      const keys = await idbKeys(raw)
      t.equal(keys.map((k) => JSON.stringify(k)).sort().join(' '), '["c","kek",5] ["c","kek-wrap",5,"recovery"] ["c","kek-wrap",50,"recovery"]', 'keys:')
      t.equal(Object.keys((await get(['c', 'kek', 5], raw)) ?? {}).sort().join(','), 'createdAt,id,rootKind,v,wrapped', 'default value fields:')
      t.equal((await get(['c', 'kek-wrap', 5, 'recovery'], raw)).root, 'recovery', 'named value root:')
      // A record as the store wrote it before chains had several roots reads as the 'default' one.
      await set(['c', 'kek', 9], { v: 1, id: 9, createdAt: 3, rootKind: 'aes', wrapped }, raw)
      const old = await store.getKekWraps!('c', 9)
      t.equal(old.length, 1, 'wraps of the old record:')
      t.equal(old[0]!.root, undefined, 'old record root:')
      t.equal(await store.putKekIfAbsent('c', { id: 9, createdAt: 3, rootKind: 'aes', wrapped }), false, 'old record is the default one:')
      // A named record whose key and value disagree is malformed.
      await set(['c', 'kek-wrap', 11, 'a'], { v: 1, id: 11, createdAt: 3, rootKind: 'aes', wrapped, root: 'b' }, raw)
      await t.rejects(store.getKekWraps!('c', 11), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', 'code:'))
      await t.rejects(store.putKekIfAbsent('c', { id: 12, createdAt: 3, rootKind: 'aes', wrapped, root: 'a/b' }), (e) => t.ok(e instanceof TypeError, String(e)))
    })
    t.test('indexeddb: a head whose roots are malformed is ERR_STORE, on read and on write', async () => {
      const name = unique()
      const store = indexedDbStore({ name })
      const raw = createStore(`kms-proxy:${name}`, 'keys')
      const head = { primary: 1, primaryCreatedAt: 1, leased: 0 }
      const bad = [{ ...head, roots: 'default' }, { ...head, roots: [{ name: 'a', kind: 'aes', state: 'gone' }] }, { ...head, roots: [{ name: '', kind: 'aes', state: 'active' }] }, { ...head, roots: [{ name: 'a', state: 'active' }] }]
      for (const [i, value] of bad.entries()) {
        await set([`c${i}`, 'head'], { v: 1, version: 'x', head: value }, raw)
        await t.rejects(store.getHead(`c${i}`), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `read ${i}:`))
        await t.rejects(store.casHead(`d${i}`, undefined, value as never), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `write ${i}:`))
      }
    })
    let roots: RootsChainMeasured | undefined
    describeRootsChain(
      t,
      'indexeddb',
      async () => {
        const name = unique()
        const raw = createStore(`kms-proxy:${name}`, 'keys')
        const keys = async () => (await idbKeys(raw)).map((k) => JSON.stringify(k))
        return { store: indexedDbStore({ name }), another: () => indexedDbStore({ name }), keys }
      },
      (m) => (roots = m),
    )
    return { results: await t.run(), roots }
  },

  /** The head's lifecycle fields through casHead and getHead, and malformed ones refused. */
  async lifecycle() {
    const t = createHarness()
    t.test('indexeddb: every lifecycle field of the head round-trips exactly, read through another handle', async () => {
      const name = unique()
      const store = indexedDbStore({ name })
      const heads = [
        { primary: 9, primaryCreatedAt: 90, leased: 2, retired: [{ id: 7, retiredAt: 70 }, { id: 8, retiredAt: 80, destroyedAt: 85 }] },
        { primary: 9, primaryCreatedAt: 90, leased: 2, retired: [{ id: 7, retiredAt: 70 }], chainRetiredAt: 100 },
        { primary: 9, primaryCreatedAt: 90, leased: 2, roots: [{ name: 'default', kind: 'aes', state: 'active' as const }], retired: [{ id: 7, retiredAt: 70 }], chainRetiredAt: 100, chainDestroyedAt: 110 },
        { primary: 9, primaryCreatedAt: 90, leased: 2, chainDestroyedAt: 110 },
        { primary: 9, primaryCreatedAt: 90, leased: 2, retired: [] },
        { primary: 9, primaryCreatedAt: 90, leased: 3 },
      ]
      const raw = createStore(`kms-proxy:${name}`, 'keys')
      let version: string | undefined
      for (const [i, head] of heads.entries()) {
        t.equal(await store.casHead('c', version, head), true, `swap ${i}:`)
        const read = (await indexedDbStore({ name }).getHead('c'))!
        t.equal(JSON.stringify(read.value), JSON.stringify(head), `head ${i}:`)
        version = read.version
        // Older versions read only v 1, field by field: they would write a head back without
        // its lifecycle fields (un-retiring KEKs). A head with one is v 2, which they refuse.
        const lifecycle = 'retired' in head || 'chainRetiredAt' in head || 'chainDestroyedAt' in head
        t.equal((await get(['c', 'head'], raw)).v, lifecycle ? 2 : 1, `stored v of head ${i}:`)
      }
    })
    t.test('indexeddb: malformed lifecycle fields are ERR_STORE, on read and on write', async () => {
      const name = unique()
      const store = indexedDbStore({ name })
      const raw = createStore(`kms-proxy:${name}`, 'keys')
      const good = { primary: 1, primaryCreatedAt: 1, leased: 0 }
      const bad = [
        { ...good, retired: 'all' }, { ...good, retired: [{ id: 7 }] }, { ...good, retired: [{ id: 0, retiredAt: 1 }] },
        { ...good, retired: [{ id: 7, retiredAt: 1, destroyedAt: 'soon' }] }, { ...good, chainRetiredAt: '1' }, { ...good, chainDestroyedAt: null },
      ]
      for (const [i, value] of bad.entries()) {
        await set([`c${i}`, 'head'], { v: 1, version: 'x', head: value }, raw)
        await t.rejects(store.getHead(`c${i}`), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `read ${i}:`))
        await t.rejects(store.casHead(`d${i}`, undefined, value as never), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `write ${i}:`))
        t.equal(await store.getHead(`d${i}`), undefined, `nothing written ${i}:`)
      }
    })
    t.test('indexeddb: watchHead tells every watcher once when the page is restored from the back/forward cache or resumed, having maybe missed posts', async () => {
      const store = indexedDbStore({ name: unique() })
      const calls = { a: 0, b: 0 }
      const stops = [store.watchHead!('a', () => calls.a++), store.watchHead!('b', () => calls.b++)]
      window.dispatchEvent(new PageTransitionEvent('pageshow', { persisted: false }))
      t.equal(JSON.stringify(calls), '{"a":0,"b":0}', 'a first load:')
      window.dispatchEvent(new PageTransitionEvent('pageshow', { persisted: true }))
      t.equal(JSON.stringify(calls), '{"a":1,"b":1}', 'restored:')
      document.dispatchEvent(new Event('resume'))
      t.equal(JSON.stringify(calls), '{"a":2,"b":2}', 'resumed:')
      for (const stop of stops) stop()
      window.dispatchEvent(new PageTransitionEvent('pageshow', { persisted: true }))
      document.dispatchEvent(new Event('resume'))
      t.equal(JSON.stringify(calls), '{"a":2,"b":2}', 'after stop:')
    })
    return t.run()
  },

  /** This tab's chain of the staleness tests: opened on `name`, answers the KEK of one encryption. */
  async openChain({ name, watch, maxStalenessMs }: { name: string; watch: boolean; maxStalenessMs: number }) {
    tabChain?.close()
    tabChain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: indexedDbStore({ name }), watch, maxStalenessMs })
    return kekOf(tabChain)
  },

  /** Rotates this tab's chain: the new primary, and when the rotation was done (ms since the epoch). */
  async rotate() {
    const { id } = await tabChain!.rotate()
    return { kek: id, at: Date.now() }
  },

  /** Encrypts every 10 ms until the KEK is no longer `from` (at most `timeoutMs`): which KEK, and when. */
  async change({ from, timeoutMs }: { from: number; timeoutMs: number }) {
    const end = Date.now() + timeoutMs
    let kek = await kekOf(tabChain!)
    while (kek === from && Date.now() < end) {
      await new Promise((resolve) => setTimeout(resolve, 10))
      kek = await kekOf(tabChain!)
    }
    return { kek, at: Date.now() }
  },

  /** One tab's share of the put-if-absent race: puts KEKs 1..count under `root`, all at once, after meeting the other tab. */
  async putWraps({ name, tab, count, root }: { name: string; tab: string; count: number; root: string }) {
    const store = indexedDbStore({ name })
    ;(await meet(`wraps:${name}`, tab)).channel.close()
    const ids = Array.from({ length: count }, (_, i) => i + 1)
    // Tab b puts in the reverse order, so that when the tabs overlap they meet on some record.
    const order = tab === 'b' ? [...ids].reverse() : ids
    const results = new Map(await Promise.all(order.map(async (id) => [id, await store.putKekIfAbsent('c', { id, createdAt: id, rootKind: tab, wrapped: new Uint8Array([tab.charCodeAt(0), id]), root })] as const)))
    const won = ids.map((id) => results.get(id)!)
    const wraps = await Promise.all(ids.map((id) => store.getKekWraps!('c', id)))
    return { won, stored: wraps.map((w) => w.map((r) => `${r.root ?? 'default'}:${r.rootKind}`)) }
  },

  /** One tab's share of the two-tab test: `count` records, rotate() halfway. */
  async work({ name, tab, count, max }: { name: string; tab: string; count: number; max: number }) {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: indexedDbStore({ name }), maxWrapsPerKek: max, leaseSize: 5, dekPoolSize: 0 })
    // The tabs talk over a BroadcastChannel. First each waits to hear from the other (a
    // wall-clock start could pass before a slow tab was even called), then they take two turns
    // each of 5 records (a, b, a, b): b's first lease is then from a KEK a made, so the tabs
    // provably share the store however the machine schedules them. Then both run free, racing
    // for leases and rotations.
    const { channel, hear } = await meet(`tabs:${name}`, tab)
    const out: string[] = []
    const encrypt = async (i: number) => {
      out.push(await chain.encryptText(`${tab}:${i}`))
      if (i === count >> 1) await chain.rotate()
    }
    const TURN = 5
    for (let turn = 0; turn < 2; turn++) {
      if (tab === 'b') await hear(`turn:a:${turn}`)
      for (let i = 0; i < TURN; i++) await encrypt(turn * TURN + i)
      channel.postMessage(`turn:${tab}:${turn}`)
      if (tab === 'a') await hear(`turn:b:${turn}`)
    }
    channel.close()
    for (let i = 2 * TURN; i < count; i++) await encrypt(i)
    return { texts: out, rotations: chain.stats().rotations }
  },

  async kekIds(name: string) {
    return (await indexedDbStore({ name }).listKeks('default')).map((r) => r.id)
  },

  /** Decrypts in a freshly loaded page; times the first decryption (store read + root unwrap). */
  async decryptAll({ name, texts }: { name: string; texts: string[] }) {
    const t0 = performance.now()
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: indexedDbStore({ name }) })
    const first = await chain.decryptText(texts[0]!)
    const firstMs = performance.now() - t0
    const plain = [first]
    for (const text of texts.slice(1)) plain.push(await chain.decryptText(text))
    return { plain, firstMs, totalMs: performance.now() - t0, rootKeyUnwraps: chain.stats().rootKeyUnwraps }
  },

  /** Median cost of one head compare-and-swap and one KEK write (strict durability). */
  async timings() {
    const store = indexedDbStore({ name: unique() })
    const cas: number[] = []
    let version: string | undefined
    for (let i = 0; i < 40; i++) {
      const t0 = performance.now()
      await store.casHead('c', version, { primary: 1, primaryCreatedAt: 1, leased: i })
      cas.push(performance.now() - t0)
      version = (await store.getHead('c'))!.version
    }
    const put: number[] = []
    for (let i = 1; i <= 20; i++) {
      const t0 = performance.now()
      await store.putKekIfAbsent('c', { id: i, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array(60) })
      put.push(performance.now() - t0)
    }
    // For comparison: a plain idb-keyval set (the browser's default durability).
    const plain = createStore(`kms-proxy:${unique()}`, 'keys')
    const relaxed: number[] = []
    for (let i = 0; i < 40; i++) {
      const t0 = performance.now()
      await set(['c', 'head'], { leased: i }, plain)
      relaxed.push(performance.now() - t0)
    }
    const median = (a: number[]) => Math.round(a.sort((x, y) => x - y)[a.length >> 1]! * 100) / 100
    return { casMs: median(cas), putMs: median(put), defaultDurabilitySetMs: median(relaxed) }
  },
}

let tabChain: KeyChain | undefined
const kekOf = async (chain: KeyChain) => new DataView((await chain.encrypt('x')).buffer).getUint32(1)

/** Every key of an object store, as IndexedDB keeps it. */
const idbKeys = (raw: UseStore) => raw('readonly', (s) => new Promise<IDBValidKey[]>((resolve) => (s.getAllKeys().onsuccess = (e) => resolve((e.target as IDBRequest<IDBValidKey[]>).result))))

/**
 * Tabs `a` and `b` meet over a BroadcastChannel: each waits to hear from the other (a wall-clock
 * start could pass before a slow tab was even called). Returns the channel and a way to wait for
 * a message on it.
 */
async function meet(channelName: string, tab: string) {
  const other = tab === 'a' ? 'b' : 'a'
  const channel = new BroadcastChannel(channelName)
  const heard = new Set<string>()
  let wake = () => {}
  channel.onmessage = (event: MessageEvent<string>) => {
    if (event.data === `ready:${other}` && !heard.has(event.data)) channel.postMessage(`ready:${tab}`) // it may have posted before this tab listened
    heard.add(event.data)
    wake()
  }
  const hear = async (message: string) => {
    while (!heard.has(message)) await new Promise<void>((resolve) => (wake = resolve))
  }
  channel.postMessage(`ready:${tab}`)
  await hear(`ready:${other}`)
  return { channel, hear }
}

;(globalThis as any).kp = kp
;(globalThis as any).kpReady = true
