/**
 * The contract suites catch what they exist to catch: each faulty store or root below passes
 * everything but the test named for its fault, which fails. A suite that passed these would
 * pass a store that loses a root's wrap or a root that hands out extractable KEKs.
 */
import { expect, it } from 'vitest'
import { DEFAULT_ROOT, aesRootKey, checkRootName, memoryStore, rootOf, type KekRecord, type KeyStore, type RootKey } from '@kms-proxy/core'
import { createHarness, describeRootKey, describeStore, type TestResult } from '../src/index.ts'

async function storeResults(make: () => KeyStore, severalRoots = true, watch = false): Promise<TestResult[]> {
  const t = createHarness()
  describeStore(t, { name: 's', severalRoots, watch, watchTimeoutMs: 1_000, open: async () => { const store = make(); return { store, another: () => store } } })
  return t.run()
}
const failed = (results: TestResult[]) => results.filter((r) => !r.ok).map((r) => r.name.replace(/^s: /, ''))

/** memoryStore with some methods replaced, and without its push unless `change` gives one (the watch's own tests wait). */
function faulty(change: (inner: KeyStore) => Partial<KeyStore>): () => KeyStore {
  return () => {
    const inner = memoryStore()
    return { ...inner, watchHead: undefined, ...change(inner) } as KeyStore
  }
}

it('describeStore: memoryStore passes every test, the several-roots ones included', async () => {
  const results = await storeResults(memoryStore, true, true)
  expect(failed(results)).toEqual([])
  expect(results.filter((r) => r.name.startsWith('s: several roots')).length).toBe(7)
})

it('describeStore fails a store whose getKekWraps and deleteKekWrap disagree with each other or with severalRoots', async () => {
  const agreement = /^getKekWraps and deleteKekWrap/
  const onlyOne = await storeResults(faulty(() => ({ deleteKekWrap: undefined })))
  expect(failed(onlyOne).filter((n) => agreement.test(n)).length).toBe(1)
  expect((await storeResults(memoryStore, false, true)).filter((r) => !r.ok).map((r) => r.name)).toEqual(['s: getKekWraps and deleteKekWrap: neither present (chains of one root)'])
  // Neither method, not declared: the several-roots tests are not registered, and it passes.
  const single = await storeResults(faulty(() => ({ getKekWraps: undefined, deleteKekWrap: undefined })), false)
  expect(failed(single)).toEqual([])
  expect(single.some((r) => r.name.includes('several roots'))).toBe(false)
})

it('describeStore fails a store that keys records by id alone', async () => {
  // Today's single-root layout behind the new methods: the second root's put is refused.
  const byId = faulty((inner) => ({
    putKekIfAbsent: async (c, r) => ((await inner.getKek(c, r.id)) ? false : inner.putKekIfAbsent(c, r)),
  }))
  const names = failed(await storeResults(byId))
  expect(names).toContain('several roots: records of one id under two roots are both kept; put-if-absent per (id, root)')
  expect(names).toContain('several roots: listKeks returns one record per (id, root)')
})

it('describeStore fails a store whose getKekWraps matches ids by prefix, or whose getKek takes the first record', async () => {
  const prefix = faulty((inner) => ({
    getKekWraps: async (c, id) => (await inner.listKeks(c)).filter((r) => String(r.id).startsWith(String(id))),
  }))
  expect(failed(await storeResults(prefix))).toContain("several roots: getKekWraps returns every root's record byte for byte, of that id and chain only")
  const first = faulty((inner) => ({ getKek: async (c, id) => (await inner.getKekWraps!(c, id))[0] }))
  expect(failed(await storeResults(first))).toContain('several roots: a record without root reads back without one; getKek prefers the default record')
})

it('describeStore fails a store whose deleteKekWrap deletes every root of the id, or whose reads drop root', async () => {
  const all = faulty((inner) => ({
    deleteKekWrap: async (c, id, root) => {
      checkRootName(root)
      for (const r of await inner.getKekWraps!(c, id)) await inner.deleteKekWrap!(c, id, rootOf(r))
    },
  }))
  expect(failed(await storeResults(all))).toEqual(['several roots: deleteKekWrap deletes exactly one record, and nothing when it is absent'])
  const dropRoot = (r: KekRecord): KekRecord => ({ id: r.id, createdAt: r.createdAt, rootKind: r.rootKind, wrapped: r.wrapped })
  const noRoot = faulty((inner) => ({ getKekWraps: async (c, id) => (await inner.getKekWraps!(c, id)).map(dropRoot) }))
  expect(failed(await storeResults(noRoot)).length).toBeGreaterThanOrEqual(3)
  expect(DEFAULT_ROOT).toBe('default')
})

it('describeStore fails a store that takes bad arguments without a typed error, or whose chain names collide', async () => {
  const args = 'bad arguments are a TypeError or RangeError from every method, and nothing is written'
  const names = 'chain names are kept apart exactly: separators, escapes, Unicode and 255 characters'
  // A store over a plain map that checks nothing: an empty chain, id 0 and root "a/b" are written.
  const unchecked = () => {
    const inner = memoryStore()
    const safe = (chain: unknown) => `x${String(chain)}`
    return {
      ...inner,
      watchHead: undefined,
      getHead: (c: string) => inner.getHead(safe(c)),
      casHead: (c: string, e: string | undefined, n: Parameters<KeyStore['casHead']>[2]) => inner.casHead(safe(c), e, n),
      getKek: (c: string, id: number) => inner.getKek(safe(c), Number.isInteger(id) && id > 0 && id < 2 ** 32 ? id : 1),
      putKekIfAbsent: (c: string, r: KekRecord) => inner.putKekIfAbsent(safe(c), { ...r, id: Number.isInteger(r.id) && r.id > 0 && r.id < 2 ** 32 ? r.id : 1, root: DEFAULT_ROOT }),
      listKeks: (c: string) => inner.listKeks(safe(c)),
      getKekWraps: (c: string, id: number) => inner.getKekWraps!(safe(c), Number.isInteger(id) && id > 0 && id < 2 ** 32 ? id : 1),
      deleteKekWrap: async () => {},
    } as KeyStore
  }
  expect(failed(await storeResults(unchecked))).toContain(args)
  // A store that lowercases names, as a case-insensitive key or file system would.
  const folds = faulty((inner) => ({
    getHead: (c) => inner.getHead(c.toLowerCase()),
    casHead: (c, e, n) => inner.casHead(c.toLowerCase(), e, n),
    listKeks: (c) => inner.listKeks(c.toLowerCase()),
    putKekIfAbsent: (c, r) => inner.putKekIfAbsent(c.toLowerCase(), r),
    getKek: (c, id) => inner.getKek(c.toLowerCase(), id),
    getKekWraps: (c, id) => inner.getKekWraps!(c.toLowerCase(), id),
  }))
  expect(failed(await storeResults(folds))).toContain(names)
  // One that percent-decodes the name once, as a careless URL or key builder does ("a%2Fb" is "a/b").
  const decodes = faulty((inner) => {
    const key = (c: string) => c.replace(/%2F/gi, '/')
    return {
      getHead: (c) => inner.getHead(key(c)),
      casHead: (c, e, n) => inner.casHead(key(c), e, n),
      listKeks: (c) => inner.listKeks(key(c)),
      putKekIfAbsent: (c, r) => inner.putKekIfAbsent(key(c), r),
    }
  })
  expect(failed(await storeResults(decodes))).toContain(names)
})

it('describeStore fails a store that drops or changes the head\'s roots', async () => {
  const drops = faulty((inner) => ({
    casHead: (c, e, n) => inner.casHead(c, e, { primary: n.primary, primaryCreatedAt: n.primaryCreatedAt, leased: n.leased }),
  }))
  const roundTrip = "several roots: the head's roots list round-trips through casHead and getHead exactly"
  // toContain: a chain that reads the head's roots may fail other tests on such a store too.
  expect(failed(await storeResults(drops))).toContain(roundTrip)
  const sorts = faulty((inner) => ({
    casHead: (c, e, n) => inner.casHead(c, e, { ...n, ...(n.roots ? { roots: [...n.roots].sort((a, b) => (a.name < b.name ? -1 : 1)) } : {}) }),
  }))
  expect(failed(await storeResults(sorts))).toContain(roundTrip)
  const adds = faulty((inner) => ({ casHead: (c, e, n) => inner.casHead(c, e, { roots: [], ...n }) }))
  expect(failed(await storeResults(adds))).toContain(roundTrip)
})

const ROOT_BYTES = Uint8Array.from({ length: 32 }, (_, i) => i + 1)
const OTHER_BYTES = Uint8Array.from({ length: 32 }, (_, i) => i + 2)
async function rootResults(make: () => RootKey, declared: { wrapKek?: boolean; extractableUnwrap?: boolean } = { wrapKek: true }): Promise<TestResult[]> {
  const t = createHarness()
  describeRootKey(t, { name: 'r', make, other: () => aesRootKey(OTHER_BYTES), ...declared })
  return t.run()
}
const rootFailed = (results: TestResult[]) => results.filter((r) => !r.ok).map((r) => r.name.replace(/^r: /, ''))

it('describeRootKey: aesRootKey passes every test, the wrapKek and extractable ones included', async () => {
  const results = await rootResults(() => aesRootKey(ROOT_BYTES))
  expect(rootFailed(results)).toEqual([])
  expect(results.length).toBe(9)
})

it('describeRootKey fails a root that ignores the extractable option, either way', async () => {
  const never = () => { const r = aesRootKey(ROOT_BYTES); return { ...r, unwrapKek: (w, a) => r.unwrapKek(w, a) } as RootKey }
  expect(rootFailed(await rootResults(never))).toEqual([
    'a KEK of newKek, unwrapped extractable and re-wrapped by wrapKek of a new instance, is the same KEK',
    'unwrapKek gives an extractable KEK only when asked, for newKek\'s and wrapKek\'s output',
  ])
  const always = () => { const r = aesRootKey(ROOT_BYTES); return { ...r, unwrapKek: (w, a) => r.unwrapKek(w, a, { extractable: true }) } as RootKey }
  const names = rootFailed(await rootResults(always))
  expect(names).toContain('newKek then unwrapKek gives the same key, non-extractable')
  expect(names).toContain('wrapKek wraps an existing KEK; unwrapKek gives it back, non-extractable, in this and a new instance')
  // Declared unable, yet it hands out an extractable KEK: fails.
  expect(rootFailed(await rootResults(always, { wrapKek: true, extractableUnwrap: false }))).toContain(
    'unwrapKek cannot give an extractable KEK, as declared: it refuses with ERR_ROOT_KEY or gives a non-extractable one',
  )
  // Declared unable, and it does refuse: passes.
  expect(rootFailed(await rootResults(never, { wrapKek: false, extractableUnwrap: false })).filter((n) => !n.startsWith('wrapKek is'))).toEqual([])
})

it('describeRootKey fails a root whose wrapKek ignores the AAD, or that disagrees with the wrapKek option', async () => {
  const loose = () => { const r = aesRootKey(ROOT_BYTES); return { ...r, wrapKek: (k) => r.wrapKek!(k, new Uint8Array(0)), unwrapKek: (w, _a, o) => r.unwrapKek(w, new Uint8Array(0), o) } as RootKey }
  expect(rootFailed(await rootResults(loose))).toContain("wrapKek's output is bound to the associated data and refused when altered or by another root, with ERR_ROOT_KEY and no secret")
  const undeclared = await rootResults(() => aesRootKey(ROOT_BYTES), {})
  expect(rootFailed(undeclared)).toEqual(["wrapKek is absent, as declared (the root can be a chain's only root, not one of several)"])
  expect(undeclared.length).toBe(5)
  const missing = () => { const { wrapKek: _, ...rest } = aesRootKey(ROOT_BYTES); return rest as RootKey }
  const names = rootFailed(await rootResults(missing))
  expect(names).toContain('wrapKek is present')
})

it('describeStore fails a store that drops the head\'s lifecycle fields', async () => {
  const drops = faulty((inner) => ({
    casHead: (c, e, n) => inner.casHead(c, e, { primary: n.primary, primaryCreatedAt: n.primaryCreatedAt, leased: n.leased, ...(n.roots ? { roots: n.roots } : {}) }),
  }))
  const names = failed(await storeResults(drops))
  expect(names).toContain("the head's lifecycle fields (retired KEKs, a retired or destroyed chain) round-trip exactly")
  expect(names).toContain('several roots: a KEK retired and destroyed through a chain leaves no record, and its data fails as destroyed elsewhere')
})

it('describeStore fails a store whose watchHead never calls, or keeps calling after stop(), or that has it undeclared', async () => {
  const name = 'watchHead: present; a change through another handle reaches the watcher, and stop() stops it'
  const deaf = faulty(() => ({ watchHead: () => () => {} }))
  expect(failed(await storeResults(deaf, true, true))).toEqual([name])
  const endless = faulty((inner) => ({
    watchHead: (c, onChange) => {
      inner.watchHead!(c, onChange)
      return () => {}
    },
  }))
  expect(failed(await storeResults(endless, true, true))).toEqual([name])
  const undeclared = await storeResults(memoryStore, true, false)
  expect(failed(undeclared)).toEqual(['watchHead: absent (the chain polls)'])
}, 60_000)
