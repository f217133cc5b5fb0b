// `deno test` side of the Deno KV watch tests, on the BUILT packages (pnpm build first). Run with
//   deno test --sanitize-ops --sanitize-resources --unstable-kv --allow-read --allow-write \
//     --allow-env --allow-run watch.test.mjs
// KV_TEST_DIR names a folder for the database files. With the sanitizers (opt-in since Deno 2),
// a watch, a read of it or a timer that a closed chain left running fails its test as a leak.
// Lines starting with MEASURED are the numbers the README quotes.
import assert from 'node:assert/strict'
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { denoKvStore } from '@kms-proxy/kv'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 13 + 5) & 0xff)
const dir = Deno.env.get('KV_TEST_DIR')
const kekIdOf = (e) => ((e[1] << 24) | (e[2] << 16) | (e[3] << 8) | e[4]) >>> 0
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const head = { primary: 1, primaryCreatedAt: 1, leased: 0 }

/** Milliseconds until `check()` holds, polled every 10 ms; undefined after `timeoutMs`. */
async function until(check, timeoutMs) {
  const started = Date.now()
  while (Date.now() - started < timeoutMs) {
    if (await check()) return Date.now() - started
    await sleep(10)
  }
  return undefined
}

/** Runs helper.mjs in a second Deno process on the same database file; its JSON answer. */
async function inAnotherProcess(...args) {
  const helper = new URL('./helper.mjs', import.meta.url).pathname
  const out = await new Deno.Command(Deno.execPath(), {
    args: ['run', '--quiet', '--unstable-kv', '--allow-read', '--allow-write', '--allow-env', helper, ...args],
    stdout: 'piped',
    stderr: 'piped',
  }).output()
  const text = new TextDecoder().decode(out.stdout)
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr).slice(0, 2000))
  return JSON.parse(text)
}

/** A Deno.Kv handle that counts its `watch` calls, to see how many watches a store opens. */
function counting(kv) {
  const counted = { watches: 0, keys: [] }
  const handle = {
    get: (k) => kv.get(k),
    getMany: (k) => kv.getMany(k),
    list: (s) => kv.list(s),
    atomic: () => kv.atomic(),
    watch(keys) {
      counted.watches++
      counted.keys.push(keys.length)
      return kv.watch(keys)
    },
  }
  return { handle, counted }
}

Deno.test('watchHead: a casHead through another handle calls onChange within a few seconds; stop() stops it', async () => {
  const path = `${dir}/watch-handle.sqlite`
  const a = await Deno.openKv(path)
  const b = await Deno.openKv(path)
  try {
    const watched = denoKvStore(a, { watchPollMs: Infinity }) // the push alone, no poll
    const writer = denoKvStore(b)
    assert.equal(typeof watched.watchHead, 'function')
    assert.equal(await writer.casHead('c', undefined, head), true)
    let calls = 0
    const stop = watched.watchHead('c', () => calls++)
    // Once when the watch starts: the head may have changed while it started.
    assert.notEqual(await until(() => calls === 1, 5000), undefined, 'the call at start')
    await sleep(200)
    assert.equal(calls, 1, 'no call without a change')
    const { version } = await writer.getHead('c')
    const t0 = Date.now()
    assert.equal(await writer.casHead('c', version, { ...head, leased: 1 }), true)
    const ms = await until(() => calls === 2, 5000)
    assert.notEqual(ms, undefined, 'onChange after the casHead through the other handle')
    console.log(`MEASURED watch-handle ${Date.now() - t0}`)
    stop()
    stop() // idempotent
    const { version: v2 } = await writer.getHead('c')
    assert.equal(await writer.casHead('c', v2, { ...head, leased: 2 }), true)
    await sleep(1500)
    assert.equal(calls, 2, 'no call after stop()')
  } finally {
    a.close()
    b.close()
  }
})

Deno.test('watchHead: 12 chains on one store share 2 watches (Deno KV watches 10 keys at most); only the changed chain is called', async () => {
  const path = `${dir}/watch-many.sqlite`
  const a = await Deno.openKv(path)
  const b = await Deno.openKv(path)
  try {
    const { handle, counted } = counting(a)
    const watched = denoKvStore(handle, { watchPollMs: Infinity })
    const writer = denoKvStore(b)
    const calls = new Array(12).fill(0)
    const stops = calls.map((_, i) => watched.watchHead(`c${i}`, () => calls[i]++))
    assert.notEqual(await until(() => calls.every((n) => n === 1), 5000), undefined, 'the call at start, once per chain')
    assert.equal(counted.watches, 2, 'watches opened')
    assert.deepEqual(counted.keys.sort((x, y) => x - y), [2, 10])
    assert.equal(await writer.casHead('c11', undefined, head), true)
    assert.notEqual(await until(() => calls[11] === 2, 5000), undefined, 'chain c11 called')
    await sleep(200)
    assert.deepEqual(calls, [...new Array(11).fill(1), 2], 'the other chains are not called')
    // A chain leaving its group re-creates that group's watch only; the others keep theirs.
    stops[0]()
    await sleep(200)
    assert.equal(counted.watches, 3, 'watches opened after one chain left')
    assert.equal(counted.keys.at(-1), 9)
    assert.equal(await writer.casHead('c5', undefined, head), true)
    assert.notEqual(await until(() => calls[5] === 2, 5000), undefined, 'chain c5 called after the group changed')
    assert.equal(calls[0], 1, 'a stopped chain is not called')
    for (const stop of stops) stop()
  } finally {
    a.close()
    b.close()
  }
})

Deno.test('watchHead: a casHead by a second Deno process on the same file calls onChange (Deno KV does not push it; the store polls)', async () => {
  const path = `${dir}/watch-process.sqlite`
  const kv = await Deno.openKv(path)
  try {
    const store = denoKvStore(kv)
    assert.equal(await store.casHead('c', undefined, head), true)
    let calls = 0
    const stop = store.watchHead('c', () => calls++)
    try {
      assert.notEqual(await until(() => calls === 1, 5000), undefined, 'the call at start')
      const { at } = await inAnotherProcess('cas', path, 'c')
      assert.notEqual(await until(() => calls === 2, 10_000), undefined, 'onChange after the other process wrote')
      console.log(`MEASURED watch-process ${Date.now() - at}`)
    } finally {
      stop()
      await sleep(50) // a poll read already under way when stop() ran ends within milliseconds
    }
  } finally {
    kv.close()
  }
})

Deno.test('watchHead: a watch stream that fails is watched again, and a change made while it was down calls onChange', async () => {
  const path = `${dir}/watch-dropped.sqlite`
  const a = await Deno.openKv(path)
  const b = await Deno.openKv(path)
  try {
    // The first watch delivers its first reading, then fails when told to; later ones are real.
    let watches = 0
    let drop
    const handle = {
      get: (k) => a.get(k),
      list: (sel) => a.list(sel),
      atomic: () => a.atomic(),
      watch(keys) {
        if (watches++ > 0) return a.watch(keys)
        return new ReadableStream({
          async start(controller) {
            const real = a.watch(keys).getReader()
            controller.enqueue((await real.read()).value)
            await new Promise((resolve) => (drop = resolve))
            await real.cancel()
            controller.error(new Error('connection dropped'))
          },
        })
      },
    }
    const watched = denoKvStore(handle, { watchPollMs: Infinity })
    const writer = denoKvStore(b)
    assert.equal(await writer.casHead('c', undefined, head), true)
    let calls = 0
    const stop = watched.watchHead('c', () => calls++)
    try {
      assert.notEqual(await until(() => calls === 1 && drop, 5000), undefined, 'the call at start')
      // Written while the first stream can no longer deliver it: only the next watch shows it.
      const v = await writer.getHead('c')
      assert.equal(await writer.casHead('c', v.version, { ...head, leased: 1 }), true)
      await sleep(100)
      assert.equal(calls, 1, 'not delivered by the stalled stream')
      drop()
      assert.notEqual(await until(() => calls === 2, 5000), undefined, 'the missed change, once watched again')
      assert.equal(watches, 2, 'watches opened')
      const v2 = await writer.getHead('c')
      assert.equal(await writer.casHead('c', v2.version, { ...head, leased: 2 }), true)
      assert.notEqual(await until(() => calls === 3, 5000), undefined, 'a change after the new watch started')
    } finally {
      stop()
    }
  } finally {
    a.close()
    b.close()
  }
})

Deno.test('watchHead never throws and leaves nothing running: on a closed handle, for an empty chain name', async () => {
  const kv = await Deno.openKv(`${dir}/watch-closed.sqlite`)
  const store = denoKvStore(kv)
  kv.close()
  let calls = 0
  const stop = store.watchHead('c', () => calls++)
  assert.equal(typeof stop, 'function')
  await sleep(100)
  stop()
  const none = store.watchHead('', () => calls++)
  assert.equal(typeof none, 'function')
  none()
  assert.equal(calls, 0)
})

// Opened before the test and closed after it: closing a handle ends its watches too, so only a
// handle that outlives the test shows what chain.close() alone leaves running.
const rotatePath = `${dir}/watch-rotate.sqlite`
const rotateKv = await Deno.openKv(rotatePath)

Deno.test('a chain with watch: true encrypts under a primary rotated by another Deno process well within maxStalenessMs; chain.close() alone leaves nothing running', async () => {
  const path = rotatePath
  const kv = rotateKv
  const maxStalenessMs = 60_000 // so that the chain's own staleness check plays no part here
  const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: denoKvStore(kv), maxStalenessMs, dekPoolSize: 0 })
  try {
    const before = kekIdOf(await chain.encrypt('x'))
    const { primary, at } = await inAnotherProcess('rotate', path)
    assert.notEqual(primary, before)
    let last = before
    const ms = await until(async () => (last = kekIdOf(await chain.encrypt('x'))) === primary, 20_000)
    assert.notEqual(ms, undefined, `still encrypting under ${last}, not the new primary ${primary}`)
    const seen = Date.now() - at
    assert.ok(seen < 10_000, `${seen} ms`)
    console.log(`MEASURED rotate-process ${seen}`)
  } finally {
    chain.close()
    await sleep(50) // a poll read already under way when close() ran ends within milliseconds
  }
})

// Closes a resource made outside any test: the sanitizers would call that a leak of this test.
Deno.test({ name: '(closes the database of the test before)', sanitizeOps: false, sanitizeResources: false, fn: () => rotateKv.close() })

Deno.test('a chain with watch: true encrypts under a primary rotated through another handle in this process at once', async () => {
  const path = `${dir}/watch-rotate-here.sqlite`
  const a = await Deno.openKv(path)
  const b = await Deno.openKv(path)
  const maxStalenessMs = 60_000
  const one = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: denoKvStore(a, { watchPollMs: Infinity }), maxStalenessMs, dekPoolSize: 0 })
  const two = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: denoKvStore(b), maxStalenessMs, dekPoolSize: 0, watch: false })
  try {
    const before = kekIdOf(await one.encrypt('x'))
    await two.rotate()
    const t0 = Date.now()
    const primary = kekIdOf(await two.encrypt('y'))
    assert.notEqual(primary, before)
    const ms = await until(async () => kekIdOf(await one.encrypt('x')) === primary, 10_000)
    assert.notEqual(ms, undefined, 'the new primary in use')
    console.log(`MEASURED rotate-handle ${Date.now() - t0}`)
  } finally {
    one.close()
    two.close()
    a.close()
    b.close()
  }
})
