/**
 * What Workers KV does not guarantee, asserted where it can be. Runs inside workerd (bundled
 * into the test worker) on a real KV binding. `locationView` models one Workers KV location:
 * reads are served from a per-location cache that does not see other locations' writes until
 * `ttlMs` passes (KV: up to about 60 s), while a location's own writes are visible to it at once.
 */
import { KeyChain, aesRootKey, type KeyStore } from '@kms-proxy/core'
import type { Harness } from '@kms-proxy/testkit'
import { workersKvStore, type WorkersKvNamespace } from '../../src/index.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
const text = (b: Uint8Array) => new TextDecoder().decode(b)

export function locationView(ns: WorkersKvNamespace, ttlMs: number): WorkersKvNamespace {
  const cache = new Map<string, { value: string | null; at: number }>()
  return {
    async get(key, type) {
      const hit = cache.get(key)
      if (hit && Date.now() - hit.at < ttlMs) return hit.value
      const value = await ns.get(key, type)
      cache.set(key, { value, at: Date.now() })
      return value
    },
    async put(key, value) {
      await ns.put(key, value)
      cache.set(key, { value, at: Date.now() })
    },
    async delete(key) {
      await ns.delete(key)
      cache.set(key, { value: null, at: Date.now() })
    },
    list: (options) => ns.list(options),
  }
}

export interface Measured {
  instances: number
  staleMs: number
  maxWrapsPerKek: number
  leaseSize: number
  encryptions: number
  keks: number
  mostWrapsUnderOneKek: number
}

export const measurements: Measured[] = []

export function describeWorkersKvBehaviour(t: Harness, kv: WorkersKvNamespace, unique: () => string): void {
  t.test('workers KV: two locations doing casHead on the same stale version may both succeed (documented)', async () => {
    const prefix = unique()
    const a = workersKvStore(locationView(kv, 60_000), { prefix })
    const b = workersKvStore(locationView(kv, 60_000), { prefix })
    const h = { primary: 1, primaryCreatedAt: 1, leased: 0 }
    t.equal(await a.casHead('c', undefined, h), true, 'create:')
    const v1 = (await a.getHead('c'))!.version
    t.equal(await b.casHead('c', undefined, h), false, 'b sees the head once KV has it (its cache was empty):')
    t.equal((await b.getHead('c'))!.version, v1, 'b reads v1:')
    t.equal(await a.casHead('c', v1, { ...h, leased: 10 }), true, 'a swaps at v1:')
    t.equal(await b.casHead('c', v1, { ...h, leased: 10 }), true, 'b, not yet seeing a\'s write, also swaps at v1:')
    // Last write wins: one lease of 10 was handed out twice; the head counts 10, not 20.
    const fresh = workersKvStore(kv, { prefix })
    t.equal((await fresh.getHead('c'))!.value.leased, 10, 'leased as KV keeps it:')
  })

  t.test('workers KV: within one location, a stale casHead fails (read, compare, write, read back)', async () => {
    const store = workersKvStore(kv, { prefix: unique() })
    const h = { primary: 1, primaryCreatedAt: 1, leased: 0 }
    t.equal(await store.casHead('c', undefined, h), true, 'create:')
    const v1 = (await store.getHead('c'))!.version
    t.equal(await store.casHead('c', v1, { ...h, leased: 5 }), true, 'swap at v1:')
    t.equal(await store.casHead('c', v1, { ...h, leased: 6 }), false, 'stale swap at v1:')
    t.equal(await store.casHead('c', undefined, h), false, 'create again:')
  })

  t.test('workers KV: a record written over ours between put and read-back makes putKekIfAbsent refuse the id', async () => {
    const prefix = unique()
    let raced = false
    const racing: WorkersKvNamespace = {
      get: (k, ty) => kv.get(k, ty),
      list: (o) => kv.list(o),
      delete: (k) => kv.delete(k),
      async put(key, value) {
        await kv.put(key, value)
        if (!raced && key.includes(':kek:')) {
          raced = true
          // Another writer that picked the same id at the same moment; its put lands after ours.
          const theirs = JSON.parse(value)
          await kv.put(key, JSON.stringify({ ...theirs, wrapped: btoa('theirs'), writer: 'someone else' }))
        }
      },
    }
    const store = workersKvStore(racing, { prefix })
    const record = { id: 42, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([1, 2, 3]) }
    t.equal(await store.putKekIfAbsent('c', record), false, 'ours was overwritten:')
    t.equal(await store.putKekIfAbsent('c', record), false, 'the id is taken:')
    t.equal(text((await store.getKek('c', 42))!.wrapped), 'theirs', 'their record stays:')
  })

  t.test('workers KV: two locations that both see a KEK each lease up to maxWrapsPerKek of it (documented), losing nothing', async () => {
    const prefix = unique()
    const max = 20
    const leaseSize = 5
    const open = (view: WorkersKvNamespace) =>
      KeyChain.open({ rootKey: aesRootKey(ROOT), store: workersKvStore(view, { prefix }), maxWrapsPerKek: max, leaseSize, dekPoolSize: 0 })
    const viewA = locationView(kv, 60_000)
    const a = await open(viewA)
    const first = await a.encrypt('a0') // A makes KEK K and writes the head (leased: one lease)
    const k = kekIdOf(first)
    // B's location reads the head once A's write has reached it, then sees only its own writes
    // for the next minute, as does A: each counts K's uses on its own.
    const b = await open(locationView(kv, 60_000))
    const made = [first]
    for (let i = 1; i < max; i++) made.push(await a.encrypt(`a${i}`))
    for (let i = 0; i < max; i++) made.push(await b.encrypt(`b${i}`))
    const underK = made.filter((e) => kekIdOf(e) === k).length
    t.ok(underK > max, `expected the overrun Workers KV allows; K wrapped ${underK}`)
    t.ok(underK <= 2 * max, `K wrapped ${underK}, more than 2 x ${max}`)
    const fresh = workersKvStore(kv, { prefix })
    const stored = new Set((await fresh.listKeks('default')).map((r) => r.id))
    for (const e of made) t.ok(stored.has(kekIdOf(e)), 'a used KEK is not in KV')
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: fresh })
    for (const [i, e] of made.entries()) t.equal(text(await reader.decrypt(e)), i < max ? `a${i}` : `b${i - max}`)
    measurements.push({ instances: 2, staleMs: 60_000, maxWrapsPerKek: max, leaseSize, encryptions: made.length, keks: new Set(made.map(kekIdOf)).size, mostWrapsUnderOneKek: underK })
  })

  t.test('workers KV: three locations sharing a chain through stale views lose nothing and all data decrypts (usage may overrun)', async () => {
    const prefix = unique()
    const instances = 3
    const max = 30
    const leaseSize = 5
    // Staleness about as long as a lease lasts: the case where instances share a KEK on stale counts.
    const staleMs = 5
    const stores: KeyStore[] = Array.from({ length: instances }, () => workersKvStore(locationView(kv, staleMs), { prefix }))
    const chains = await Promise.all(stores.map((store) => KeyChain.open({ rootKey: aesRootKey(ROOT), store, maxWrapsPerKek: max, leaseSize, dekPoolSize: 0 })))
    const made = await Promise.all(
      chains.map(async (c, k) => {
        const out: Uint8Array[] = []
        for (let i = 0; i < 80; i++) {
          out.push(await c.encrypt(`c${k}m${i}`))
          if (i === 40) await c.rotate()
        }
        return out
      }),
    )
    const all = made.flat()
    const perKek = new Map<number, number>()
    for (const e of all) perKek.set(kekIdOf(e), (perKek.get(kekIdOf(e)) ?? 0) + 1)
    const fresh = workersKvStore(kv, { prefix })
    const stored = new Set((await fresh.listKeks('default')).map((r) => r.id))
    for (const id of perKek.keys()) t.ok(stored.has(id), `KEK ${id} was used but is not in KV`)
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: fresh })
    for (const [k, list] of made.entries()) for (const [i, e] of list.entries()) t.equal(text(await reader.decrypt(e)), `c${k}m${i}`)
    const most = Math.max(...perKek.values())
    // Not asserted: Workers KV cannot promise the usage limit. Reported, for the README.
    measurements.push({ instances, staleMs, maxWrapsPerKek: max, leaseSize, encryptions: all.length, keks: perKek.size, mostWrapsUnderOneKek: most })
  })
}

/** Where several roots' records live in Workers KV, what records written before read as, and a malformed head. */
export function describeWorkersKvRoots(t: Harness, kv: WorkersKvNamespace, unique: () => string): void {
  t.test("workers KV: the 'default' record stays at …:kek:<id> with no root field; other roots at …:kek-wrap:<id>:<root>", async () => {
    const prefix = unique()
    const store = workersKvStore(kv, { prefix })
    const wrapped = new Uint8Array([1, 2, 3])
    t.equal(await store.putKekIfAbsent('c', { id: 5, createdAt: 1, rootKind: 'aes', wrapped, root: 'default' }), true)
    t.equal(await store.putKekIfAbsent('c', { id: 5, createdAt: 1, rootKind: 'kms', wrapped, root: 'recovery' }), true)
    t.equal(await store.putKekIfAbsent('c', { id: 50, createdAt: 2, rootKind: 'kms', wrapped, root: 'recovery' }), true)
    const names = (await kv.list({ prefix })).keys.map((k) => k.name.slice(prefix.length)).sort()
    t.equal(names.join(' '), 'c:kek-wrap:50:recovery c:kek-wrap:5:recovery c:kek:5', 'keys:')
    const raw = JSON.parse((await kv.get(`${prefix}c:kek:5`, 'text'))!)
    t.equal(Object.keys(raw).sort().join(','), 'createdAt,id,rootKind,v,wrapped,writer', 'default value fields:')
    t.equal(JSON.parse((await kv.get(`${prefix}c:kek-wrap:5:recovery`, 'text'))!).root, 'recovery', 'named value root:')
    // A record as the store wrote it before chains had several roots reads as the 'default' one.
    await kv.put(`${prefix}c:kek:9`, JSON.stringify({ v: 1, id: 9, createdAt: 3, rootKind: 'aes', wrapped: 'AQID', writer: 'w' }))
    const old = await store.getKekWraps!('c', 9)
    t.equal(old.length, 1, 'wraps of the old record:')
    t.equal(old[0]!.root, undefined, 'old record root:')
    t.equal(await store.putKekIfAbsent('c', { id: 9, createdAt: 3, rootKind: 'aes', wrapped }), false, 'old record is the default one:')
    // A named record whose key and value disagree is malformed.
    await kv.put(`${prefix}c:kek-wrap:11:a`, JSON.stringify({ v: 1, id: 11, createdAt: 3, rootKind: 'aes', wrapped: 'AQID', writer: 'w', root: 'b' }))
    await t.rejects(store.getKekWraps!('c', 11), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', 'code:'))
    await t.rejects(store.putKekIfAbsent('c', { id: 12, createdAt: 3, rootKind: 'aes', wrapped, root: 'a:b' }), (e) => t.ok(e instanceof TypeError, String(e)))
  })

  t.test('workers KV: a root added in one location while another renews a lease on a stale head may drop out of the head (documented); its wraps stay, and addRoot again restores it', async () => {
    const prefix = unique()
    const recoveryRoot = Uint8Array.from(ROOT, (b) => b ^ 0x5a)
    const open = (view: WorkersKvNamespace) =>
      KeyChain.open({ rootKey: aesRootKey(ROOT), store: workersKvStore(view, { prefix }), leaseSize: 2, dekPoolSize: 0 })
    const a = await open(locationView(kv, 60_000))
    const made = [await a.encrypt('a0')] // KEK K, head v1, as A's location sees it for a minute
    const b = await open(locationView(kv, 60_000))
    made.push(await b.encrypt('b0')) // B leases from v1 and sees only its own head from now on
    const added = await a.addRoot('recovery', aesRootKey(recoveryRoot))
    t.equal(added.wrapped, 1, 'K wrapped under recovery:')
    for (let i = 1; i < 4; i++) made.push(await b.encrypt(`b${i}`)) // B's next lease overwrites the head A wrote
    const fresh = () => workersKvStore(kv, { prefix })
    const head = (await fresh().getHead('default'))!.value
    t.equal(head.roots, undefined, "the head as KV keeps it, after B's lease: roots")
    const k = kekIdOf(made[0]!)
    t.equal((await fresh().getKekWraps!('default', k)).map((r) => r.root ?? 'default').sort().join(' '), 'default recovery', 'the wraps of K stay:')
    // Nothing is lost: the chain's only root still opens everything. Run again, from one place, addRoot finishes.
    const again = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: fresh() })
    await again.addRoot('recovery', aesRootKey(recoveryRoot))
    t.equal((await fresh().getHead('default'))!.value.roots?.map((r) => `${r.name}:${r.state}`).join(' '), 'default:active recovery:active', 'roots after addRoot again:')
    const recovery = await KeyChain.open({ roots: { recovery: aesRootKey(recoveryRoot) }, store: fresh() })
    for (const [i, e] of made.entries()) t.equal(text(await recovery.decrypt(e)), i === 0 ? 'a0' : `b${i - 1}`)
  })

  t.test('workers KV: a head with every field (roots, retired KEKs, chainRetiredAt, chainDestroyedAt) round-trips exactly, through another handle too', async () => {
    const prefix = unique()
    const store = workersKvStore(kv, { prefix })
    const head = {
      primary: 7,
      primaryCreatedAt: 1_700_000_000_000,
      leased: 12,
      roots: [{ name: 'default', kind: 'aes', state: 'active' as const }],
      retired: [{ id: 3, retiredAt: 1_700_000_000_100 }, { id: 5, retiredAt: 1_700_000_000_200, destroyedAt: 1_700_000_000_300 }],
      chainRetiredAt: 1_700_000_000_400,
      chainDestroyedAt: 1_700_000_000_500,
    }
    t.equal(await store.casHead('c', undefined, head), true, 'create:')
    t.equal(JSON.stringify((await store.getHead('c'))!.value), JSON.stringify(head), 'read back:')
    const other = workersKvStore(kv, { prefix })
    const v = (await other.getHead('c'))!
    t.equal(JSON.stringify(v.value), JSON.stringify(head), 'read by another handle:')
    const next = { ...head, leased: 13, retired: head.retired.slice(1) }
    t.equal(await other.casHead('c', v.version, next), true, 'swap from another handle:')
    t.equal(JSON.stringify((await store.getHead('c'))!.value), JSON.stringify(next), 'read after the swap:')
    // A malformed new field is refused like any malformed head.
    for (const [i, bad] of [{ ...head, retired: [{ id: 'x', retiredAt: 1 }] }, { ...head, chainRetiredAt: 'soon' }, { ...head, chainDestroyedAt: Number.NaN }].entries()) {
      await t.rejects(store.casHead(`bad${i}`, undefined, bad as never), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `write ${i}:`))
      await kv.put(`${prefix}bad${i}:head`, JSON.stringify({ v: 1, version: 'x', head: bad }))
      await t.rejects(store.getHead(`bad${i}`), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `read ${i}:`))
    }
  })

  t.test('workers KV: a head whose roots are malformed is ERR_STORE, on read and on write', async () => {
    const prefix = unique()
    const store = workersKvStore(kv, { prefix })
    const head = { primary: 1, primaryCreatedAt: 1, leased: 0 }
    const bad = [{ ...head, roots: 'default' }, { ...head, roots: [{ name: 'a', kind: 'aes', state: 'gone' }] }, { ...head, roots: [{ name: '', kind: 'aes', state: 'active' }] }, { ...head, roots: [{ name: 'a', state: 'active' }] }]
    for (const [i, value] of bad.entries()) {
      await kv.put(`${prefix}c${i}:head`, JSON.stringify({ v: 1, version: 'x', head: value }))
      await t.rejects(store.getHead(`c${i}`), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `read ${i}:`))
      await t.rejects(store.casHead(`d${i}`, undefined, value as never), (e) => t.equal((e as { code?: string }).code, 'ERR_STORE', `write ${i}:`))
    }
  })
}
