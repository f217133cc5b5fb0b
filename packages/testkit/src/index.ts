/**
 * Contract suites that need no test runner. `describeStore(t, options)` registers the tests that
 * every KeyStore must pass on a harness `t`; the same suite runs under vitest (pass vitest's `it`
 * to createHarness) or inside Deno, workerd and Chromium (collect, then `run()`).
 *
 * @example
 * ```ts
 * import { it } from 'vitest'
 * import { createHarness, describeStore } from '@kms-proxy/testkit'
 * describeStore(createHarness(it), { name: 'myStore', open: async () => ({ store, another: () => openAgain() }) })
 * // In Deno, workerd or a browser: const t = createHarness(); describeStore(t, …); await t.run()
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/testkit
 */
import { DEFAULT_ROOT, KeyChain, KmsProxyError, aesRootKey, rootOf, type ChainHead, type KeyChainOptions, type KeyStore, type KekRecord, type RootKey } from '@kms-proxy/core'

/** What the harness's assertions throw. */
export class AssertionError extends Error {}

/** One test's outcome, from `run()` of a harness made without a runner. */
export interface TestResult {
  /** The test's name. */
  name: string
  /** Whether it passed. */
  ok: boolean
  /** How long it took (ms). */
  ms: number
  /** The failure's message, when it failed. */
  error?: string
}

/** What the contract suites need of a test runner: registration and four assertions. */
export interface Harness {
  /** Registers a test. */
  test(name: string, fn: () => Promise<void> | void): void
  /** Asserts that `value` is truthy. */
  ok(value: unknown, message?: string): void
  /** Asserts `actual === expected`. */
  equal<T>(actual: T, expected: T, message?: string): void
  /** Asserts two byte arrays are equal, byte for byte. */
  bytesEqual(actual: Uint8Array, expected: Uint8Array, message?: string): void
  /** Awaits a rejection and returns the error; `check(error)` may assert more. */
  rejects(promise: Promise<unknown> | (() => Promise<unknown>), check?: (error: unknown) => void, message?: string): Promise<unknown>
}

/**
 * A harness. With `register` (vitest's `it`, node:test's `test`) tests go to that runner;
 * without, they are collected and `run()` runs them one after another.
 *
 * @example
 * ```ts
 * const t = createHarness()              // in Deno, workerd or a browser page
 * describeStore(t, { name: 'myStore', open })
 * const results = await t.run()          // [{ name, ok, ms, error? }, …]
 * ```
 */
export function createHarness(register?: (name: string, fn: () => Promise<void>) => void): Harness & {
  /** Runs the collected tests one after another (nothing, when a runner was given). */
  run(): Promise<TestResult[]>
} {
  const tests: Array<{ name: string; fn: () => Promise<void> | void }> = []
  const t = {
    test(name: string, fn: () => Promise<void> | void) {
      if (register) register(name, async () => void (await fn()))
      else tests.push({ name, fn })
    },
    ok(value: unknown, message = 'expected a truthy value') {
      if (!value) throw new AssertionError(message)
    },
    equal<T>(actual: T, expected: T, message = '') {
      if (actual !== expected) throw new AssertionError(`${message} expected ${show(expected)}, got ${show(actual)}`.trim())
    },
    bytesEqual(actual: Uint8Array, expected: Uint8Array, message = '') {
      if (!(actual instanceof Uint8Array)) throw new AssertionError(`${message} expected bytes, got ${show(actual)}`.trim())
      if (actual.length !== expected.length) throw new AssertionError(`${message} lengths differ: ${actual.length} vs ${expected.length}`.trim())
      for (let i = 0; i < actual.length; i++) {
        if (actual[i] !== expected[i]) throw new AssertionError(`${message} bytes differ at ${i}`.trim())
      }
    },
    async rejects(promise: Promise<unknown> | (() => Promise<unknown>), check?: (error: unknown) => void, message = 'expected a rejection') {
      let value: unknown
      try {
        value = await (typeof promise === 'function' ? promise() : promise)
      } catch (error) {
        check?.(error)
        return error
      }
      throw new AssertionError(`${message}; it resolved to ${show(value)}`)
    },
    async run(): Promise<TestResult[]> {
      const results: TestResult[] = []
      for (const { name, fn } of tests) {
        const started = Date.now()
        try {
          await fn()
          results.push({ name, ok: true, ms: Date.now() - started })
        } catch (error) {
          const e = error as Error | undefined
          results.push({ name, ok: false, ms: Date.now() - started, error: `${e?.name ?? 'Error'}: ${e?.message ?? String(error)}` })
        }
      }
      return results
    },
  }
  return t
}

function show(value: unknown): string {
  if (value instanceof Uint8Array) return `Uint8Array(${value.length})`
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? value.slice(0, 80) + '…' : value)
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

// ------------------------------------------------------------------------------------ stores

/** What {@link DescribeStoreOptions.open} returns for each test. */
export interface StoreUnderTest {
  /** A handle on a fresh, empty backing (its own namespace, prefix or database). */
  store: KeyStore
  /**
   * Another handle on the same backing, as another process would open it (a new connection or
   * client; the same object only where the store lives in one process, like memoryStore).
   */
  another(): Promise<KeyStore> | KeyStore
  /** Cleans up; optional. */
  close?(): Promise<void> | void
}

/** Options of {@link describeStore}. */
export interface DescribeStoreOptions {
  /** Shown in test names. */
  name: string
  /** Called once per test. */
  open(): Promise<StoreUnderTest>
  /**
   * How many chains rotate at once in the concurrency tests.
   *
   * @defaultValue 4
   */
  concurrency?: number
  /**
   * Whether the store promises compare-and-swap across handles (default true). A store that says
   * false (Workers KV) is held to "nothing lost" only, and the test names say so; the store's own
   * `atomic` flag must agree with this.
   */
  atomic?: boolean
  /**
   * Whether the store keeps one record per KEK and root, so that a chain may have several roots:
   * it then has both `getKekWraps` and `deleteKekWrap`, and the tests of records per root, of
   * deletion and of the head's `roots` list run. A store that says false has neither method
   * (a store with one of the two fails). One test always checks that the methods agree with this.
   *
   * @defaultValue false
   */
  severalRoots?: boolean
  /**
   * Whether the store pushes head changes (`watchHead`): then a change through another handle
   * must reach a watcher, and a stopped watch must stay quiet. One test always checks that the
   * method's presence agrees with this.
   *
   * @defaultValue false
   */
  watch?: boolean
  /**
   * How long a head change through another handle may take to reach a watcher (a store that
   * polls needs its interval and more).
   *
   * @defaultValue 10,000
   */
  watchTimeoutMs?: number
}

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 29 + 3) & 0xff)
const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
const text = (b: Uint8Array) => new TextDecoder().decode(b)

function record(id: number, fill: number): KekRecord {
  return { id, createdAt: 1_700_000_000_000 + id, rootKind: 'aes', wrapped: new Uint8Array(45).fill(fill) }
}

/**
 * A record of KEK `id` under `root`, with bytes of every value and a length of its own, so that
 * a store that mixes up roots, trims or re-encodes shows it.
 */
function wrap(id: number, root: string | undefined, seed: number, length = 61): KekRecord {
  const wrapped = Uint8Array.from({ length }, (_, i) => (i * 37 + seed) & 0xff)
  return { id, createdAt: 1_700_000_000_000 + id, rootKind: `kind-${seed}`, wrapped, ...(root === undefined ? {} : { root }) }
}

/** A store that fails one operation on demand, to test what a failure leaves behind. */
function failing(inner: KeyStore, fail: { put?: boolean; cas?: boolean }): KeyStore {
  return {
    atomic: inner.atomic,
    embedsKeks: inner.embedsKeks,
    getHead: (c) => inner.getHead(c),
    getKek: (c, id) => inner.getKek(c, id),
    listKeks: (c) => inner.listKeks(c),
    casHead: (c, e, n) => (fail.cas ? Promise.reject(new Error('injected head failure')) : inner.casHead(c, e, n)),
    putKekIfAbsent: (c, r) => (fail.put ? Promise.reject(new Error('injected KEK write failure')) : inner.putKekIfAbsent(c, r)),
    ...(inner.getKekWraps ? { getKekWraps: (c: string, id: number) => inner.getKekWraps!(c, id) } : {}),
    ...(inner.deleteKekWrap ? { deleteKekWrap: (c: string, id: number, root: string) => inner.deleteKekWrap!(c, id, root) } : {}),
  }
}

/** Asserts that `actual` is `expected`, field by field, and its bytes byte for byte; `root` absent and 'default' are one. */
function sameRecord(t: Harness, actual: KekRecord | undefined, expected: KekRecord, what: string): void {
  t.ok(actual !== undefined, `${what}: missing`)
  t.equal(actual!.id, expected.id, `${what} id:`)
  t.equal(rootOf(actual!), rootOf(expected), `${what} root:`)
  t.equal(actual!.createdAt, expected.createdAt, `${what} createdAt:`)
  t.equal(actual!.rootKind, expected.rootKind, `${what} rootKind:`)
  t.bytesEqual(actual!.wrapped, expected.wrapped, `${what} wrapped:`)
}

/** JSON with every object's keys sorted, to compare values whatever order a store keeps keys in. */
const canonical = (v: unknown): string =>
  JSON.stringify(v, (_, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x)

/**
 * A chain on the store under test, not following its push (`watch: false`): the tests here
 * open many chains and close none, and a watch would hold a connection per chain. The watch
 * has tests of its own.
 */
const openChain = (options: KeyChainOptions) => KeyChain.open({ watch: false, ...options })

/** The records' (id, root) pairs, sorted, as one string to compare. */
const pairs = (records: KekRecord[]) => records.map((r) => `${r.id}/${rootOf(r)}`).sort().join(' ')

/**
 * The contract every KeyStore passes. Stores that say `atomic: false` (Workers KV) are held to
 * what they promise instead: nothing lost, every KEK used is stored; usage limits are not
 * checked across handles for them.
 *
 * @example
 * ```ts
 * import { it } from 'vitest'
 * describeStore(createHarness(it), {
 *   name: 'etcdStore',
 *   open: async () => {
 *     const prefix = `test-${crypto.randomUUID()}/`
 *     return { store: etcdStore({ endpoints, prefix }), another: () => etcdStore({ endpoints, prefix }) }
 *   },
 * })
 * ```
 */
export function describeStore(t: Harness, options: DescribeStoreOptions): void {
  const n = options.concurrency ?? 4
  const atomic = options.atomic ?? true
  const watchTimeoutMs = options.watchTimeoutMs ?? 10_000
  const test = (name: string, fn: (s: StoreUnderTest) => Promise<void>) =>
    t.test(`${options.name}: ${name}`, async () => {
      const s = await options.open()
      try {
        t.equal(s.store.atomic, atomic, 'the store\'s atomic flag:')
        await fn(s)
      } finally {
        await s.close?.()
      }
    })

  test('put-if-absent never overwrites a KEK record; records read back byte for byte', async ({ store, another }) => {
    t.equal(await store.putKekIfAbsent('c', record(7, 0xaa)), true, 'first put:')
    t.equal(await store.putKekIfAbsent('c', record(7, 0xbb)), false, 'second put of id 7:')
    const other = await another()
    t.equal(await other.putKekIfAbsent('c', record(7, 0xcc)), false, 'put of id 7 from another handle:')
    const back = await other.getKek('c', 7)
    t.ok(back !== undefined, 'record 7 missing')
    t.bytesEqual(back!.wrapped, new Uint8Array(45).fill(0xaa), 'wrapped bytes')
    t.equal(back!.createdAt, record(7, 0).createdAt, 'createdAt:')
    t.equal(back!.rootKind, 'aes', 'rootKind:')
    t.equal(await store.getKek('c', 8), undefined, 'absent id:')
    t.equal(await store.getKek('other-chain', 7), undefined, 'chains are separate:')
    await store.putKekIfAbsent('c', record(9, 0x09))
    const ids = (await store.listKeks('c')).map((r) => r.id).sort((a, b) => a - b)
    t.equal(ids.join(','), '7,9', 'listKeks:')
  })

  test('bad arguments are a TypeError or RangeError from every method, and nothing is written', async ({ store }) => {
    const badChains: unknown[] = ['', 'x'.repeat(256), 'a\ud800b', '\udc00', 7, undefined, null]
    const badIds: unknown[] = [0, -1, 1.5, 2 ** 32, Number.NaN, '1']
    const badRoots: unknown[] = ['', 'a/b', 'a:b', 'r'.repeat(65), 'é', 3]
    const head = { primary: 1, primaryCreatedAt: 10, leased: 0 }
    const expect = async (what: string, kind: typeof TypeError, call: () => unknown) => {
      let error: unknown
      try {
        await call()
      } catch (e) {
        error = e
      }
      t.ok(error instanceof kind, `${what}: expected a ${kind.name}, got ${String(error)}`)
    }
    const s = store as unknown as Record<string, (...args: unknown[]) => unknown>
    for (const chain of badChains) {
      const label = typeof chain === 'string' ? `chain of ${chain.length} characters` : `chain ${String(chain)}`
      await expect(`getHead(${label})`, TypeError, () => s.getHead!(chain))
      await expect(`casHead(${label})`, TypeError, () => s.casHead!(chain, undefined, head))
      await expect(`getKek(${label})`, TypeError, () => s.getKek!(chain, 1))
      await expect(`putKekIfAbsent(${label})`, TypeError, () => s.putKekIfAbsent!(chain, record(1, 1)))
      await expect(`listKeks(${label})`, TypeError, () => s.listKeks!(chain))
      if (store.getKekWraps) await expect(`getKekWraps(${label})`, TypeError, () => s.getKekWraps!(chain, 1))
      if (store.deleteKekWrap) await expect(`deleteKekWrap(${label})`, TypeError, () => s.deleteKekWrap!(chain, 1, DEFAULT_ROOT))
    }
    for (const id of badIds) {
      await expect(`getKek(id ${String(id)})`, RangeError, () => s.getKek!('c', id))
      await expect(`putKekIfAbsent(id ${String(id)})`, RangeError, () => s.putKekIfAbsent!('c', { ...record(1, 1), id }))
      if (store.getKekWraps) await expect(`getKekWraps(id ${String(id)})`, RangeError, () => s.getKekWraps!('c', id))
      if (store.deleteKekWrap) await expect(`deleteKekWrap(id ${String(id)})`, RangeError, () => s.deleteKekWrap!('c', id, DEFAULT_ROOT))
    }
    if (options.severalRoots) {
      for (const root of badRoots) {
        await expect(`putKekIfAbsent(root ${String(root)})`, TypeError, () => s.putKekIfAbsent!('c', { ...record(1, 1), root }))
        await expect(`deleteKekWrap(root ${String(root)})`, TypeError, () => s.deleteKekWrap!('c', 1, root))
      }
    }
    t.equal((await store.listKeks('c')).length, 0, 'records written by the bad calls:')
    t.equal(await store.getHead('c'), undefined, 'head written by the bad calls:')
  })

  test('chain names are kept apart exactly: separators, escapes, Unicode and 255 characters', async ({ store, another }) => {
    const names = ['a', 'a/', 'a/b', 'a:b', 'a%2Fb', 'a%252F', 'A', 'a b', 'é', 'e\u0301', '😀', '.', '..', 'x'.repeat(255)]
    for (const [i, name] of names.entries()) {
      t.equal(await store.casHead(name, undefined, { primary: i + 1, primaryCreatedAt: 10, leased: 0 }), true, `create the head of chain #${i}:`)
      t.equal(await store.putKekIfAbsent(name, record(i + 1, i + 1)), true, `put a KEK in chain #${i}:`)
    }
    const other = await another()
    for (const [i, name] of names.entries()) {
      t.equal((await other.getHead(name))?.value.primary, i + 1, `the head of chain #${i} read back:`)
      t.equal((await other.listKeks(name)).map((r) => r.id).join(','), String(i + 1), `the KEKs of chain #${i}:`)
    }
  })

  test('the head changes only by compare-and-swap on its version', async ({ store, another }) => {
    t.equal(await store.getHead('c'), undefined, 'no head yet:')
    const h1 = { primary: 1, primaryCreatedAt: 10, leased: 0 }
    t.equal(await store.casHead('c', undefined, h1), true, 'create:')
    const other = await another()
    t.equal(await other.casHead('c', undefined, { ...h1, leased: 99 }), false, 'create again from another handle:')
    const v1 = (await other.getHead('c'))!
    t.equal(v1.value.leased, 0, 'leased after create:')
    t.equal(await store.casHead('c', v1.version, { ...h1, leased: 5 }), true, 'swap at v1:')
    if (atomic) t.equal(await other.casHead('c', v1.version, { ...h1, leased: 6 }), false, 'stale swap at v1:')
    const v2 = (await store.getHead('c'))!
    t.equal(v2.value.leased, 5, 'leased after swap:')
    t.ok(v2.version !== v1.version, 'the version changed')
  })

  test('a chain reopened from the store decrypts all old data', async ({ store, another }) => {
    const chain = await openChain({ rootKey: aesRootKey(ROOT), store, maxWrapsPerKek: 10 })
    const encrypted: Uint8Array[] = []
    for (let i = 0; i < 45; i++) encrypted.push(await chain.encrypt(`m${i}`))
    t.ok(new Set(encrypted.map(kekIdOf)).size >= 5, 'expected at least 5 KEKs')
    const reopened = await openChain({ rootKey: aesRootKey(ROOT), store: await another(), maxWrapsPerKek: 10 })
    for (const [i, e] of encrypted.entries()) t.equal(text(await reopened.decrypt(e)), `m${i}`)
  })

  test('a store failure in the middle of a rotation never leaves data under an unpersisted KEK', async ({ store, another }) => {
    for (const fail of [{ put: true }, { cas: true }]) {
      const chain = await openChain({ rootKey: aesRootKey(ROOT), store: failing(store, fail), name: `f${fail.put ? 'put' : 'cas'}` })
      await t.rejects(chain.encrypt('x'), (e) => t.ok(e instanceof KmsProxyError && e.code === 'ERR_STORE', `expected ERR_STORE, got ${String(e)}`))
    }
    // What the failed KEK write left: nothing. What the failed head write left: a stored KEK, no head.
    const other = await another()
    t.equal((await other.listKeks('fput')).length, 0, 'KEKs after a failed put:')
    t.equal(await other.getHead('fput'), undefined, 'head after a failed put:')
    t.equal(await other.getHead('fcas'), undefined, 'head after a failed swap:')
    // The next try from a healthy handle works, and a reader decrypts it.
    const healthy = await openChain({ rootKey: aesRootKey(ROOT), store, name: 'fcas' })
    const e = await healthy.encrypt('after')
    const reader = await openChain({ rootKey: aesRootKey(ROOT), store: await another(), name: 'fcas' })
    t.equal(text(await reader.decrypt(e)), 'after')
  })

  test(`${n} chains rotating at once through one store lose no KEK${atomic ? ' and overuse none' : ' (non-atomic: usage limit not promised)'}`, async ({ store, another }) => {
    const max = 40
    const handles = [store]
    for (let i = 1; i < n; i++) handles.push(await another())
    const chains = await Promise.all(
      handles.map((h) => openChain({ rootKey: aesRootKey(ROOT), store: h, maxWrapsPerKek: max, leaseSize: 3, dekPoolSize: 0 })),
    )
    const encrypted = await Promise.all(
      chains.map(async (c, k) => {
        const out: Uint8Array[] = []
        for (let i = 0; i < 60; i++) {
          out.push(await c.encrypt(`c${k}m${i}`))
          if (i === 30) await c.rotate()
        }
        return out
      }),
    )
    const all = encrypted.flat()
    const perKek = new Map<number, number>()
    for (const e of all) perKek.set(kekIdOf(e), (perKek.get(kekIdOf(e)) ?? 0) + 1)
    const stored = new Set((await (await another()).listKeks('default')).map((r) => r.id))
    for (const id of perKek.keys()) t.ok(stored.has(id), `KEK ${id} was used but is not in the store`)
    if (atomic) t.ok(Math.max(...perKek.values()) <= max, `a KEK wrapped ${Math.max(...perKek.values())} DEKs, limit ${max}`)
    const reader = await openChain({ rootKey: aesRootKey(ROOT), store: await another() })
    for (const [k, list] of encrypted.entries()) for (const [i, e] of list.entries()) t.equal(text(await reader.decrypt(e)), `c${k}m${i}`)
  })

  test('the head\'s lifecycle fields (retired KEKs, a retired or destroyed chain) round-trip exactly', async ({ store, another }) => {
    const h1: ChainHead = { primary: 9, primaryCreatedAt: 90, leased: 2, retired: [{ id: 7, retiredAt: 70 }, { id: 8, retiredAt: 80, destroyedAt: 85 }] }
    t.equal(await store.casHead('life', undefined, h1), true, 'create:')
    const other = await another()
    const v1 = (await other.getHead('life'))!
    t.equal(canonical(v1.value), canonical(h1), 'head with retired KEKs:')
    const h2: ChainHead = { ...h1, chainRetiredAt: 100, chainDestroyedAt: 110 }
    t.equal(await other.casHead('life', v1.version, h2), true, 'swap:')
    const v2 = (await store.getHead('life'))!
    t.equal(canonical(v2.value), canonical(h2), 'head of a destroyed chain:')
    const h3: ChainHead = { primary: 9, primaryCreatedAt: 90, leased: 3 }
    t.equal(await store.casHead('life', v2.version, h3), true, 'swap to a head without them:')
    t.equal(canonical((await other.getHead('life'))!.value), canonical(h3), 'head without lifecycle fields:')
  })

  test('a rotation through one handle is used by a chain on another handle within maxStalenessMs, with no push', async ({ store, another }) => {
    const a = await openChain({ rootKey: aesRootKey(ROOT), store, name: 'fresh' })
    const b = await openChain({ rootKey: aesRootKey(ROOT), store: await another(), name: 'fresh', maxStalenessMs: 200 })
    const first = kekIdOf(await b.encrypt('before'))
    t.equal(kekIdOf(await a.encrypt('a')), first, 'both chains on one primary:')
    const { id } = await a.rotate()
    await new Promise((r) => setTimeout(r, 300))
    t.equal(kekIdOf(await b.encrypt('after')), id, 'the other chain, past its bound, encrypts under the new primary:')
  })

  test(`watchHead: ${options.watch ? 'present; a change through another handle reaches the watcher, and stop() stops it' : 'absent (the chain polls)'}`, async ({ store, another }) => {
    t.equal(typeof store.watchHead === 'function', options.watch === true, `the store ${store.watchHead ? 'has' : 'lacks'} watchHead; describeStore's watch option says`)
    if (!options.watch) return
    const other = await another()
    t.equal(await other.casHead('w', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 }), true, 'create:')
    let calls = 0
    const stop = store.watchHead!('w', () => calls++)
    try {
      // Let a watch that connects asynchronously get going, then change the head elsewhere.
      await new Promise((r) => setTimeout(r, 500))
      const before = calls
      const v = (await other.getHead('w'))!
      t.equal(await other.casHead('w', v.version, { primary: 2, primaryCreatedAt: 2, leased: 0 }), true, 'swap:')
      const deadline = Date.now() + watchTimeoutMs
      while (calls === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25))
      t.ok(calls > before, `onChange was not called within ${watchTimeoutMs} ms of a change through another handle`)
    } finally {
      stop()
    }
    const afterStop = calls
    const v = (await other.getHead('w'))!
    t.equal(await other.casHead('w', v.version, { primary: 3, primaryCreatedAt: 3, leased: 0 }), true, 'swap after stop:')
    await new Promise((r) => setTimeout(r, 1_500))
    t.equal(calls, afterStop, 'onChange calls after stop():')
  })

  test(`getKekWraps and deleteKekWrap: ${options.severalRoots ? 'both present (several roots per chain)' : 'neither present (chains of one root)'}`, async ({ store }) => {
    const has = [typeof store.getKekWraps === 'function', typeof store.deleteKekWrap === 'function']
    t.ok(has[0] === has[1], `the store has ${has[0] ? 'getKekWraps' : 'deleteKekWrap'} without ${has[0] ? 'deleteKekWrap' : 'getKekWraps'}: a chain of several roots needs both`)
    t.equal(has[0], options.severalRoots === true, `the store ${has[0] ? 'has' : 'lacks'} getKekWraps and deleteKekWrap; describeStore's severalRoots option says`)
  })
  if (options.severalRoots) describeSeveralRoots(t, test)

  if (!atomic) return // leases can be handed out twice without compare-and-swap: nothing to promise
  test('usage leases are never handed out twice', async ({ store, another }) => {
    const handles = [store]
    for (let i = 1; i < n; i++) handles.push(await another())
    // Many chains renew leases of one-use blocks on one KEK that never runs out: every use is a
    // compare-and-swap, so a lease handed out twice shows up as the head's count falling short.
    const chains = await Promise.all(handles.map((h) => openChain({ rootKey: aesRootKey(ROOT), store: h, leaseSize: 1, dekPoolSize: 0 })))
    await chains[0]!.encrypt('first')
    await Promise.all(chains.map(async (c) => {
      for (let i = 0; i < 25; i++) await c.encrypt('x')
    }))
    const head = (await store.getHead('default'))!
    t.equal(head.value.leased, 1 + n * 25, 'uses leased:')
  })
}

/**
 * The tests of a store that keeps one record per KEK and root (`getKekWraps`, `deleteKekWrap`).
 * Root names cover what `/^[A-Za-z0-9._-]{1,64}$/` allows and a file system or a key layout may
 * trip on: `.`, `..`, names that differ only in case, `__proto__`, 64 characters.
 */
function describeSeveralRoots(t: Harness, test: (name: string, fn: (s: StoreUnderTest) => Promise<void>) => void): void {
  const long = 'r'.repeat(60) + '.-_9'
  const wrapsOf = async (s: KeyStore, id: number) => {
    const list = await s.getKekWraps!('c', id)
    t.ok(Array.isArray(list), 'getKekWraps: expected an array')
    return list
  }

  test('several roots: records of one id under two roots are both kept; put-if-absent per (id, root)', async ({ store, another }) => {
    const main = wrap(7, undefined, 1, 45)
    const recovery = wrap(7, 'recovery', 2, 93)
    t.equal(await store.putKekIfAbsent('c', main), true, 'put of 7 under default:')
    t.equal(await store.putKekIfAbsent('c', recovery), true, 'put of 7 under recovery:')
    t.equal(await store.putKekIfAbsent('c', wrap(7, 'recovery', 3)), false, 'second put of 7 under recovery:')
    t.equal(await store.putKekIfAbsent('c', wrap(7, DEFAULT_ROOT, 4)), false, 'put of 7 under an explicit default:')
    const other = await another()
    t.equal(await other.putKekIfAbsent('c', wrap(7, 'recovery', 5)), false, 'put of 7 under recovery from another handle:')
    t.equal(await other.putKekIfAbsent('c', wrap(7, undefined, 6)), false, 'put of 7 under default from another handle:')
    const back = await wrapsOf(other, 7)
    t.equal(pairs(back), '7/default 7/recovery', 'records of 7:')
    sameRecord(t, back.find((r) => rootOf(r) === DEFAULT_ROOT), main, 'default record')
    sameRecord(t, back.find((r) => r.root === 'recovery'), recovery, 'recovery record')
  })

  test('several roots: a record without root reads back without one; getKek prefers the default record', async ({ store, another }) => {
    // The recovery record first, so that "the first record written" is not taken for "the default".
    await store.putKekIfAbsent('c', wrap(5, 'recovery', 9))
    await store.putKekIfAbsent('c', wrap(5, undefined, 8))
    await store.putKekIfAbsent('c', wrap(6, 'recovery', 7))
    const other = await another()
    for (const s of [store, other]) {
      const got = await s.getKek('c', 5)
      sameRecord(t, got, wrap(5, undefined, 8), 'getKek(5)')
      t.ok(got!.root === undefined || got!.root === DEFAULT_ROOT, `a record put without root read back with root ${show(got!.root)}`)
      sameRecord(t, await s.getKek('c', 6), wrap(6, 'recovery', 7), 'getKek(6), whose only record is under recovery')
    }
    t.equal((await wrapsOf(other, 8)).length, 0, 'getKekWraps of an absent id:')
  })

  test('several roots: getKekWraps returns every root\'s record byte for byte, of that id and chain only', async ({ store, another }) => {
    const roots = [undefined, 'recovery', 'Recovery', '.', '..', long, '__proto__', 'constructor']
    const written = roots.map((root, i) => wrap(12, root, 20 + i, 40 + i * 7))
    for (const r of written) t.equal(await store.putKekIfAbsent('c', r), true, `put of 12 under ${rootOf(r)}:`)
    // Neighbours a careless prefix match would take for id 12: ids 1, 123 and 120, chain 'cc'.
    for (const id of [1, 123, 120]) await store.putKekIfAbsent('c', wrap(id, 'recovery', id))
    await store.putKekIfAbsent('cc', wrap(12, 'recovery', 99))
    await store.putKekIfAbsent('c/x', wrap(12, 'other', 98))
    const other = await another()
    const back = await wrapsOf(other, 12)
    t.equal(pairs(back), pairs(written), 'records of 12:')
    for (const r of written) sameRecord(t, back.find((b) => rootOf(b) === rootOf(r)), r, `record of 12 under ${rootOf(r)}`)
    t.equal(pairs(await wrapsOf(other, 123)), '123/recovery', 'records of 123:')
    t.equal(pairs(await other.getKekWraps!('cc', 12)), '12/recovery', 'records of 12 in chain cc:')
  })

  test('several roots: listKeks returns one record per (id, root)', async ({ store, another }) => {
    const written = [wrap(7, undefined, 1), wrap(7, 'recovery', 2), wrap(7, 'r-3', 3), wrap(9, undefined, 4), wrap(10, 'recovery', 5)]
    for (const r of written) await store.putKekIfAbsent('c', r)
    await store.putKekIfAbsent('c', wrap(7, 'recovery', 6)) // refused: not a second record
    const listed = await (await another()).listKeks('c')
    t.equal(pairs(listed), pairs(written), 'listKeks:')
    for (const r of written) sameRecord(t, listed.find((l) => l.id === r.id && rootOf(l) === rootOf(r)), r, `listed ${r.id}/${rootOf(r)}`)
  })

  test('several roots: deleteKekWrap deletes exactly one record, and nothing when it is absent', async ({ store, another }) => {
    const written = [wrap(7, undefined, 1), wrap(7, 'recovery', 2), wrap(7, '..', 3), wrap(70, 'recovery', 4), wrap(17, 'recovery', 5)]
    for (const r of written) await store.putKekIfAbsent('c', r)
    await store.putKekIfAbsent('cc', wrap(7, 'recovery', 6))
    const other = await another()
    await other.deleteKekWrap!('c', 7, 'recovery')
    t.equal(pairs(await wrapsOf(store, 7)), '7/.. 7/default', 'records of 7 after deleting its recovery record:')
    t.equal(pairs(await store.listKeks('c')), pairs(written.filter((r) => !(r.id === 7 && r.root === 'recovery'))), 'listKeks after the delete:')
    t.equal(pairs(await store.getKekWraps!('cc', 7)), '7/recovery', 'the other chain\'s record:')
    // Absent: the same record again, a root the id never had, an id never stored, a chain never used.
    await other.deleteKekWrap!('c', 7, 'recovery')
    await other.deleteKekWrap!('c', 7, 'Recovery')
    await other.deleteKekWrap!('c', 8, 'recovery')
    await other.deleteKekWrap!('nowhere', 7, 'recovery')
    t.equal((await store.listKeks('c')).length, written.length - 1, 'records after deleting absent ones:')
    // The default record is one record like the others; getKek then falls back to another root's.
    await other.deleteKekWrap!('c', 7, DEFAULT_ROOT)
    t.equal(pairs(await wrapsOf(store, 7)), '7/..', 'records of 7 after deleting its default record:')
    sameRecord(t, await store.getKek('c', 7), wrap(7, '..', 3), 'getKek(7) after deleting its default record')
    // A root that comes back gets a record again, and it is the new one.
    t.equal(await store.putKekIfAbsent('c', wrap(7, 'recovery', 9)), true, 'put of 7 under recovery after its delete:')
    sameRecord(t, (await wrapsOf(other, 7)).find((r) => r.root === 'recovery'), wrap(7, 'recovery', 9), 'recovery record put again')
  })

  test('several roots: a KEK retired and destroyed through a chain leaves no record, and its data fails as destroyed elsewhere', async ({ store, another }) => {
    const chain = await openChain({ rootKey: aesRootKey(ROOT), store, name: 'shred' })
    const old = await chain.encrypt('under the old KEK')
    const oldId = kekIdOf(old)
    await chain.rotate()
    const kept = await chain.encrypt('under the new KEK')
    await chain.retireKek(oldId)
    if (store.embedsKeks) {
      // The data carries its KEK: deleting records would destroy nothing, so the chain refuses.
      await t.rejects(chain.destroyKek(oldId, { graceMs: 0 }), (e) => t.ok(e instanceof TypeError, `expected a TypeError, got ${String(e)}`))
      return
    }
    const reader = await openChain({ rootKey: aesRootKey(ROOT), store: await another(), name: 'shred' })
    await t.rejects(reader.decrypt(old), (e) => t.equal((e as KmsProxyError).code, 'ERR_RETIRED_KEK', 'data under a retired KEK, from another handle:'))
    const report = await chain.destroyKek(oldId, { graceMs: 0 })
    t.equal(report.deleted, 1, 'records deleted:')
    const other = await another()
    t.equal((await other.getKekWraps!('shred', oldId)).length, 0, 'records of the destroyed KEK left:')
    t.equal(await other.getKek('shred', oldId), undefined, 'getKek of the destroyed KEK:')
    t.equal((await other.listKeks('shred')).filter((r) => r.id === oldId).length, 0, 'listKeks entries of the destroyed KEK:')
    const fresh = await openChain({ rootKey: aesRootKey(ROOT), store: other, name: 'shred' })
    await t.rejects(fresh.decrypt(old), (e) => t.equal((e as KmsProxyError).code, 'ERR_DESTROYED_KEK', 'data under a destroyed KEK:'))
    t.equal(text(await fresh.decrypt(kept)), 'under the new KEK', 'data under the primary:')
  })

  test('several roots: the head\'s roots list round-trips through casHead and getHead exactly', async ({ store, another }) => {
    const roots = [
      { name: DEFAULT_ROOT, kind: 'aes', state: 'active' },
      { name: 'recovery', kind: 'passphrase-pbkdf2', state: 'adding' },
      { name: long, kind: 'aws-kms', state: 'removing' },
    ] as const
    const h1: ChainHead = { primary: 1, primaryCreatedAt: 10, leased: 3, roots }
    t.equal(await store.casHead('c', undefined, h1), true, 'create:')
    const other = await another()
    const v1 = (await other.getHead('c'))!
    t.equal(canonical(v1.value), canonical(h1), 'head with roots:')
    // Order is kept: the chain may read meaning into it.
    const h2: ChainHead = { primary: 2, primaryCreatedAt: 20, leased: 0, roots: [roots[1], roots[0]] }
    t.equal(await other.casHead('c', v1.version, h2), true, 'swap:')
    t.equal(canonical((await store.getHead('c'))!.value), canonical(h2), 'head with roots reordered:')
    const v2 = (await store.getHead('c'))!
    const h3: ChainHead = { primary: 3, primaryCreatedAt: 30, leased: 1 }
    t.equal(await store.casHead('c', v2.version, h3), true, 'swap to a head without roots:')
    const v3 = (await other.getHead('c'))!
    t.equal(v3.value.roots, undefined, 'roots of a head written without:')
    t.equal(canonical(v3.value), canonical(h3), 'head without roots:')
  })
}

// ------------------------------------------------------------------------------------ root keys

/** Options of {@link describeRootKey}. */
export interface DescribeRootKeyOptions {
  /** Shown in test names. */
  name: string
  /** A root key under test; `other` makes a different root of the same kind (another key). */
  make(): Promise<RootKey> | RootKey
  /** A different root of the same kind (another key, another passphrase): it must not unwrap `make()`'s KEKs. */
  other?(): Promise<RootKey> | RootKey
  /** Strings that must never appear in an error (passwords, tokens, secret keys). */
  secrets?: string[]
  /**
   * Whether the root has `wrapKek` (it wraps an existing KEK, so it can join a chain that has
   * KEKs, or be one of several roots). When true, its tests run: the output unwraps to the same
   * KEK, is bound to the AAD and refused by `other`. One test always checks that the root agrees.
   *
   * @defaultValue false
   */
  wrapKek?: boolean
  /**
   * Whether `unwrapKek(wrapped, aad, { extractable: true })` returns an extractable KEK (what a
   * chain needs to re-wrap a KEK from this root under another). When false, the test holds the
   * root to refusing clearly instead: it rejects with `ERR_ROOT_KEY` or returns a non-extractable
   * KEK, never an extractable one it was not meant to give. Undefined: tested as true when
   * `wrapKek` is, not tested otherwise.
   *
   * @defaultValue the value of `wrapKek`
   */
  extractableUnwrap?: boolean
}

const AAD = new TextEncoder().encode('kms-proxy/kek/v1\0\0\0\0\x07chain')

/**
 * The contract every RootKey passes: non-extractable KEKs that wrap and unwrap, bound to the
 * AAD, refused by another root of the same kind, typed errors without secrets in them.
 *
 * @example
 * ```ts
 * describeRootKey(createHarness(it), {
 *   name: 'passphraseRootKey',
 *   make: () => passphraseRootKey({ passphrase: 'correct horse', iterations: 1_000 }),
 *   other: () => passphraseRootKey({ passphrase: 'wrong horse', iterations: 1_000 }),
 *   secrets: ['correct horse'],
 * })
 * ```
 */
export function describeRootKey(t: Harness, options: DescribeRootKeyOptions): void {
  const isRootKeyError = (e: unknown) => t.ok(e instanceof KmsProxyError && e.code === 'ERR_ROOT_KEY', `expected ERR_ROOT_KEY, got ${String(e)}`)
  // As the chain uses a KEK: encrypt (wrap) 16 bytes under one handle, unwrapKey under the other.
  const roundTrip = async (kek: CryptoKey, again: CryptoKey) => {
    const iv = new Uint8Array(12)
    const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, kek, new Uint8Array(16))
    await crypto.subtle.unwrapKey('raw', sealed, again, { name: 'AES-GCM', iv }, 'AES-GCM', false, ['decrypt']) // throws if the keys differ
  }
  const noSecretIn = (errors: unknown[]) => {
    for (const e of errors) {
      const shown = `${String(e)} ${JSON.stringify(e)} ${(e as Error | undefined)?.stack ?? ''}`
      for (const s of options.secrets ?? []) t.ok(!shown.includes(s), 'a secret appears in an error')
    }
  }
  t.test(`${options.name}: newKek then unwrapKek gives the same key, non-extractable`, async () => {
    const root = await options.make()
    const { kek, wrapped } = await root.newKek(AAD)
    const again = await root.unwrapKek(wrapped, AAD)
    for (const k of [kek, again]) {
      t.equal(k.extractable, false, 'extractable:')
      await t.rejects(crypto.subtle.exportKey('raw', k), undefined, 'exportKey')
    }
    const reopened = await (await options.make()).unwrapKek(wrapped, AAD)
    await roundTrip(kek, again)
    await roundTrip(kek, reopened)
  })
  t.test(`${options.name}: the associated data is bound`, async () => {
    const root = await options.make()
    const { wrapped } = await root.newKek(AAD)
    const other = AAD.slice()
    other[other.length - 1]! ^= 1
    await t.rejects(root.unwrapKek(wrapped, other), isRootKeyError)
  })
  t.test(`${options.name}: altered wrapped bytes and another root fail with ERR_ROOT_KEY`, async () => {
    const root = await options.make()
    const { wrapped } = await root.newKek(AAD)
    const altered = wrapped.slice()
    altered[altered.length - 1]! ^= 1
    await t.rejects(root.unwrapKek(altered, AAD), isRootKeyError)
    if (options.other) await t.rejects((await options.other()).unwrapKek(wrapped, AAD), isRootKeyError)
  })
  t.test(`${options.name}: through a key chain, no secret in any error`, async () => {
    const root = await options.make()
    const chain = await KeyChain.open({ rootKey: root })
    const encrypted = await chain.encrypt('x')
    const errors: unknown[] = []
    if (options.other) errors.push(await t.rejects(KeyChain.open({ rootKey: await options.other() }).then((c) => c.decrypt(encrypted))))
    const bad = encrypted.slice()
    bad[10]! ^= 1
    errors.push(await t.rejects(chain.decrypt(bad)))
    noSecretIn(errors)
    const described = `${String(root)} ${JSON.stringify(root)}`
    for (const s of options.secrets ?? []) t.ok(!described.includes(s), 'a secret appears in String(rootKey) or JSON.stringify(rootKey)')
  })
  t.test(`${options.name}: wrapKek is ${options.wrapKek ? 'present' : 'absent, as declared (the root can be a chain\'s only root, not one of several)'}`, async () => {
    const root = await options.make()
    t.equal(typeof root.wrapKek === 'function', options.wrapKek === true, 'the root has wrapKek; describeRootKey\'s wrapKek option says')
  })
  if (options.wrapKek) {
    // A KEK as the chain hands one to wrapKek: made elsewhere, extractable only for wrapKey.
    const existingKek = () => crypto.subtle.generateKey({ name: 'AES-GCM', length: 128 }, true, ['encrypt', 'wrapKey', 'unwrapKey'])
    t.test(`${options.name}: wrapKek wraps an existing KEK; unwrapKek gives it back, non-extractable, in this and a new instance`, async () => {
      const kek = await existingKek()
      const root = await options.make()
      const wrapped = await root.wrapKek!(kek, AAD)
      t.ok(wrapped instanceof Uint8Array && wrapped.length > 0, 'wrapKek: expected non-empty bytes')
      for (const unwrapper of [root, await options.make()]) {
        const again = await unwrapper.unwrapKek(wrapped, AAD)
        t.equal(again.extractable, false, 'extractable:')
        await t.rejects(crypto.subtle.exportKey('raw', again), undefined, 'exportKey')
        await roundTrip(kek, again)
        await roundTrip(again, kek)
      }
    })
    t.test(`${options.name}: a KEK of newKek, unwrapped extractable and re-wrapped by wrapKek of a new instance, is the same KEK`, async () => {
      const root = await options.make()
      const made = await root.newKek(AAD)
      const handle = await root.unwrapKek(made.wrapped, AAD, { extractable: true })
      const moved = await (await options.make()).wrapKek!(handle, AAD)
      await roundTrip(made.kek, await root.unwrapKek(moved, AAD))
    })
    t.test(`${options.name}: wrapKek's output is bound to the associated data and refused when altered or by another root, with ERR_ROOT_KEY and no secret`, async () => {
      const root = await options.make()
      const wrapped = await root.wrapKek!(await existingKek(), AAD)
      const otherAad = AAD.slice()
      otherAad[otherAad.length - 1]! ^= 1
      const altered = wrapped.slice()
      altered[altered.length - 1]! ^= 1
      const errors = [
        await t.rejects(root.unwrapKek(wrapped, otherAad), isRootKeyError, 'unwrapKek with another AAD'),
        await t.rejects(root.unwrapKek(altered, AAD), isRootKeyError, 'unwrapKek of altered bytes'),
      ]
      if (options.other) errors.push(await t.rejects((await options.other()).unwrapKek(wrapped, AAD), isRootKeyError, 'unwrapKek by another root'))
      // A non-extractable KEK cannot be wrapped (WebCrypto's rule): it must fail, and quietly.
      const fixed = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 128 }, false, ['encrypt', 'wrapKey', 'unwrapKey'])
      errors.push(await t.rejects(root.wrapKek!(fixed, AAD), undefined, 'wrapKek of a non-extractable KEK'))
      noSecretIn(errors)
    })
  }
  const extractable = options.extractableUnwrap ?? options.wrapKek
  if (extractable === true) {
    t.test(`${options.name}: unwrapKek gives an extractable KEK only when asked, for newKek's and wrapKek's output`, async () => {
      const root = await options.make()
      const made = await root.newKek(AAD)
      const outputs = [made.wrapped]
      if (root.wrapKek) outputs.push(await root.wrapKek(await root.unwrapKek(made.wrapped, AAD, { extractable: true }), AAD))
      for (const wrapped of outputs) {
        const open = await root.unwrapKek(wrapped, AAD, { extractable: true })
        t.equal(open.extractable, true, 'extractable when asked:')
        await roundTrip(made.kek, open)
        t.equal((await root.unwrapKek(wrapped, AAD, { extractable: false })).extractable, false, 'extractable when told false:')
        t.equal((await root.unwrapKek(wrapped, AAD, {})).extractable, false, 'extractable when not told:')
      }
    })
  } else if (extractable === false) {
    t.test(`${options.name}: unwrapKek cannot give an extractable KEK, as declared: it refuses with ERR_ROOT_KEY or gives a non-extractable one`, async () => {
      const root = await options.make()
      const made = await root.newKek(AAD)
      let open: CryptoKey | undefined
      try {
        open = await root.unwrapKek(made.wrapped, AAD, { extractable: true })
      } catch (error) {
        isRootKeyError(error)
        noSecretIn([error])
      }
      if (open) {
        t.equal(open.extractable, false, 'extractable, though the root is declared unable to give an extractable KEK:')
        await roundTrip(made.kek, open)
      }
    })
  }
}

/** A root key that counts the calls reaching the root it wraps: see {@link countingRootKey}. */
export interface CountingRootKey extends RootKey {
  /** newKek calls that reached the inner root. */
  wraps: number
  /** unwrapKek calls that reached the inner root. */
  unwraps: number
  /** wrapKek calls that reached the inner root (a KEK wrapped under it that another root made). */
  kekWraps: number
  /** Every KEK the inner root handed out, to check them (non-extractable, usable). */
  keks: CryptoKey[]
}

/**
 * Wraps a root key and counts the calls that reach it: the cost the library exists to cut.
 *
 * @example
 * ```ts
 * const rootKey = countingRootKey(aesRootKey(rootBytes))
 * const chain = await KeyChain.open({ rootKey, store: memoryStore() })
 * for (let i = 0; i < 1000; i++) await chain.encrypt('x')
 * rootKey.wraps // 1
 * ```
 */
export function countingRootKey(inner: RootKey): CountingRootKey {
  const root: CountingRootKey = {
    kind: inner.kind,
    wraps: 0,
    unwraps: 0,
    kekWraps: 0,
    keks: [],
    async newKek(aad) {
      root.wraps++
      const made = await inner.newKek(aad)
      root.keks.push(made.kek)
      return made
    },
    async unwrapKek(wrapped, aad, options) {
      root.unwraps++
      const kek = await inner.unwrapKek(wrapped, aad, options)
      root.keks.push(kek)
      return kek
    },
  }
  // Only when the inner root has one: a chain reads a missing wrapKek as "cannot join a chain".
  if (inner.wrapKek) {
    root.wrapKek = async (kek, aad) => {
      root.kekWraps++
      return inner.wrapKek!(kek, aad)
    }
  }
  return root
}
