// Deno side of the kv tests, on the BUILT packages (pnpm build first). Run with
//   deno run --quiet --unstable-kv --allow-read --allow-write --allow-env contract.mjs <mode> ...
// Modes (each prints one JSON object on stdout):
//   contract <dir>                      describeStore(denoKvStore) with a fresh Deno.openKv file per test
//   encrypt <kvFile> <count> <max> <tag> encrypts count records (rotating halfway), prints them as hex
//   check <kvFile> <inputJson>           decrypts every hex record in the input, lists KEKs, reads the head
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { denoKvStore } from '@kms-proxy/kv'
import { createHarness, describeStore } from '../../../testkit/dist/index.js'
import { describeRootsChain } from '../roots-chain.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 13 + 5) & 0xff)
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
const unhex = (s) => Uint8Array.from(s.match(/../g), (h) => parseInt(h, 16))
const [mode, ...args] = Deno.args

async function contract(dir) {
  const t = createHarness()
  const open = []
  let n = 0
  describeStore(t, {
    name: 'denoKvStore',
    severalRoots: true,
    watch: true,
    async open() {
      const path = `${dir}/contract-${n++}.sqlite`
      const handles = []
      const handle = async () => {
        const kv = await Deno.openKv(path)
        handles.push(kv)
        open.push(kv)
        return denoKvStore(kv)
      }
      // Another handle is another connection to the same file, as another process would open it.
      return { store: await handle(), another: handle, close: () => handles.forEach((kv) => kv.close()) }
    },
  })
  t.test('denoKvStore: keys are [prefix, chain, "head"] and [prefix, chain, "kek", id]; prefixes separate stores', async () => {
    const kv = await Deno.openKv(`${dir}/layout.sqlite`)
    try {
      const a = denoKvStore(kv, { prefix: 'a' })
      const b = denoKvStore(kv, { prefix: 'b' })
      t.equal(await a.putKekIfAbsent('c', { id: 5, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([9]) }), true)
      t.equal(await a.casHead('c', undefined, { primary: 5, primaryCreatedAt: 1, leased: 3 }), true)
      t.equal((await kv.get(['a', 'c', 'kek', 5])).value.rootKind, 'aes')
      t.equal((await kv.get(['a', 'c', 'head'])).value.leased, 3)
      t.equal(await b.getHead('c'), undefined, 'other prefix, head:')
      t.equal((await b.listKeks('c')).length, 0, 'other prefix, KEKs:')
      t.equal(typeof (await a.getHead('c')).version, 'string', 'version is the versionstamp:')
      t.equal((await a.getHead('c')).version, (await kv.get(['a', 'c', 'head'])).versionstamp)
    } finally {
      kv.close()
    }
  })
  t.test("denoKvStore: the 'default' record stays at [prefix, chain, 'kek', id] with no root field; other roots at [prefix, chain, 'kek-wrap', id, root]", async () => {
    const kv = await Deno.openKv(`${dir}/roots-layout.sqlite`)
    try {
      const store = denoKvStore(kv, { prefix: 'p' })
      const wrapped = new Uint8Array([1, 2, 3])
      t.equal(await store.putKekIfAbsent('c', { id: 5, createdAt: 1, rootKind: 'aes', wrapped, root: 'default' }), true)
      t.equal(await store.putKekIfAbsent('c', { id: 5, createdAt: 1, rootKind: 'kms', wrapped, root: 'recovery' }), true)
      t.equal(await store.putKekIfAbsent('c', { id: 50, createdAt: 2, rootKind: 'kms', wrapped, root: 'recovery' }), true)
      const keys = []
      for await (const e of kv.list({ prefix: ['p'] })) keys.push(JSON.stringify(e.key))
      t.equal(keys.sort().join(' '), '["p","c","kek",5] ["p","c","kek-wrap",5,"recovery"] ["p","c","kek-wrap",50,"recovery"]', 'keys:')
      t.equal(Object.keys((await kv.get(['p', 'c', 'kek', 5])).value).sort().join(','), 'createdAt,rootKind,wrapped', 'default value fields:')
      t.equal((await kv.get(['p', 'c', 'kek-wrap', 5, 'recovery'])).value.root, 'recovery', 'named value root:')
      // A record as the store wrote it before chains had several roots reads as the 'default' one.
      await kv.set(['p', 'c', 'kek', 9], { createdAt: 3, rootKind: 'aes', wrapped })
      const old = await store.getKekWraps('c', 9)
      t.equal(old.length, 1, 'wraps of the old record:')
      t.equal(old[0].root, undefined, 'old record root:')
      t.equal(await store.putKekIfAbsent('c', { id: 9, createdAt: 3, rootKind: 'aes', wrapped }), false, 'old record is the default one:')
      // A named record whose key and value disagree is malformed.
      await kv.set(['p', 'c', 'kek-wrap', 11, 'a'], { createdAt: 3, rootKind: 'aes', wrapped, root: 'b' })
      await t.rejects(store.getKekWraps('c', 11), (e) => t.equal(e.code, 'ERR_STORE', 'code:'))
      await t.rejects(store.putKekIfAbsent('c', { id: 12, createdAt: 3, rootKind: 'aes', wrapped, root: 'no/slash' }), (e) => t.ok(e instanceof TypeError, String(e)))
    } finally {
      kv.close()
    }
  })
  t.test('denoKvStore: a head with every field (roots, retired KEKs, chainRetiredAt, chainDestroyedAt) round-trips exactly, through another handle too', async () => {
    const path = `${dir}/full-head.sqlite`
    const kv = await Deno.openKv(path)
    const kv2 = await Deno.openKv(path)
    try {
      const store = denoKvStore(kv, { prefix: 'p' })
      const head = {
        primary: 7,
        primaryCreatedAt: 1_700_000_000_000,
        leased: 12,
        roots: [{ name: 'default', kind: 'aes', state: 'active' }],
        retired: [{ id: 3, retiredAt: 1_700_000_000_100 }, { id: 5, retiredAt: 1_700_000_000_200, destroyedAt: 1_700_000_000_300 }],
        chainRetiredAt: 1_700_000_000_400,
        chainDestroyedAt: 1_700_000_000_500,
      }
      t.equal(await store.casHead('c', undefined, head), true, 'create:')
      t.equal(JSON.stringify((await store.getHead('c')).value), JSON.stringify(head), 'read back:')
      t.equal(JSON.stringify((await kv.get(['p', 'c', 'head'])).value), JSON.stringify(head), 'as Deno KV keeps it:')
      const other = denoKvStore(kv2, { prefix: 'p' })
      const v = await other.getHead('c')
      t.equal(JSON.stringify(v.value), JSON.stringify(head), 'read by another handle:')
      const next = { ...head, leased: 13, retired: head.retired.slice(1) }
      t.equal(await other.casHead('c', v.version, next), true, 'swap from another handle:')
      t.equal(JSON.stringify((await store.getHead('c')).value), JSON.stringify(next), 'read after the swap:')
      for (const [i, bad] of [{ ...head, retired: [{ id: 'x', retiredAt: 1 }] }, { ...head, chainRetiredAt: 'soon' }, { ...head, chainDestroyedAt: Number.NaN }].entries()) {
        await t.rejects(store.casHead(`bad${i}`, undefined, bad), (e) => t.equal(e.code, 'ERR_STORE', `write ${i}:`))
        await kv.set(['p', `bad${i}`, 'head'], bad)
        await t.rejects(store.getHead(`bad${i}`), (e) => t.equal(e.code, 'ERR_STORE', `read ${i}:`))
      }
    } finally {
      kv.close()
      kv2.close()
    }
  })
  t.test('denoKvStore: a head whose roots are malformed is ERR_STORE, on read and on write', async () => {
    const kv = await Deno.openKv(`${dir}/roots-head.sqlite`)
    try {
      const store = denoKvStore(kv, { prefix: 'p' })
      const head = { primary: 1, primaryCreatedAt: 1, leased: 0 }
      const bad = [{ ...head, roots: 'default' }, { ...head, roots: [{ name: 'a', kind: 'aes', state: 'gone' }] }, { ...head, roots: [{ name: '', kind: 'aes', state: 'active' }] }, { ...head, roots: [{ name: 'a', state: 'active' }] }]
      for (const [i, value] of bad.entries()) {
        await kv.set(['p', `c${i}`, 'head'], value)
        await t.rejects(store.getHead(`c${i}`), (e) => t.equal(e.code, 'ERR_STORE', `read ${i}:`))
        await t.rejects(store.casHead(`d${i}`, undefined, value), (e) => t.equal(e.code, 'ERR_STORE', `write ${i}:`))
      }
    } finally {
      kv.close()
    }
  })
  let roots
  describeRootsChain(
    t,
    'denoKvStore',
    async () => {
      const path = `${dir}/roots-chain.sqlite`
      const connect = async () => {
        const kv = await Deno.openKv(path)
        open.push(kv)
        return kv
      }
      const kv = await connect()
      const keys = async () => {
        const out = []
        for await (const e of kv.list({ prefix: [] })) out.push(JSON.stringify(e.key))
        return out
      }
      return { store: denoKvStore(kv), another: async () => denoKvStore(await connect()), keys }
    },
    (m) => (roots = m),
  )
  const results = await t.run()
  open.forEach((kv) => { try { kv.close() } catch {} })
  return { results, roots }
}

async function encrypt(file, count, max, tag) {
  const kv = await Deno.openKv(file)
  const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: denoKvStore(kv), maxWrapsPerKek: max, leaseSize: 7, dekPoolSize: 0 })
  const encrypted = []
  for (let i = 0; i < count; i++) {
    encrypted.push(hex(await chain.encrypt(`${tag}:${i}`)))
    if (i === count >> 1) await chain.rotate()
  }
  kv.close()
  return { encrypted, stats: chain.stats() }
}

async function check(file, input) {
  const kv = await Deno.openKv(file)
  const store = denoKvStore(kv)
  const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store })
  const plaintexts = []
  for (const h of JSON.parse(await Deno.readTextFile(input))) plaintexts.push(new TextDecoder().decode(await chain.decrypt(unhex(h))))
  const keks = (await store.listKeks('default')).map((r) => r.id)
  const head = await store.getHead('default')
  kv.close()
  return { plaintexts, keks, head: head?.value }
}

let out
if (mode === 'contract') out = await contract(args[0])
else if (mode === 'encrypt') out = await encrypt(args[0], Number(args[1]), Number(args[2]), args[3])
else if (mode === 'check') out = await check(args[0], args[1])
else throw new Error(`unknown mode ${mode}`)
console.log(JSON.stringify(out))
