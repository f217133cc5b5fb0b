/**
 * watchHead on a real etcd: one watch stream per store instance, whatever the number of chains,
 * counted by etcd itself (its /metrics gauge of open watch streams) and at the store's fetch;
 * changes dispatched to their own chain only; a dropped stream or a member down is followed by
 * a new stream on the next endpoint, after a capped backoff, and a call to every listener.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, aesRootKey, decodeHeader } from '@kms-proxy/core'
import { etcdStore } from '../src/index.ts'
import { haveEtcd, startEtcd, type EtcdCluster } from './etcd-process.ts'
import { passThrough, until, watchStreams, type PassThrough } from './pass-through.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 11 + 3) & 0xff)
let seq = 0
const uniquePrefix = () => `w${Date.now().toString(36)}-${++seq}/`
const head = (primary: number) => ({ primary, primaryCreatedAt: primary, leased: 0 })
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe.skipIf(!haveEtcd)('etcdStore.watchHead on one etcd member', () => {
  let etcd: EtcdCluster
  let url: string
  beforeAll(async () => {
    etcd = await startEtcd()
    url = etcd.urls[0]!
  }, 30_000)
  afterAll(async () => {
    await etcd?.stop()
  })

  it('a head change through a second store instance calls onChange within a few seconds, that chain only; stop() stops it and closes the stream', async () => {
    const prefix = uniquePrefix()
    const watcher = etcdStore({ endpoints: [url], prefix })
    const writer = etcdStore({ endpoints: [url], prefix })
    expect(await writer.casHead('c', undefined, head(1))).toBe(true)
    const baseline = await watchStreams(url)
    let calls = 0
    const stop = watcher.watchHead!('c', () => calls++)
    try {
      expect(await until(async () => (await watchStreams(url)) === baseline + 1, 5000), 'etcd counts one new watch stream').toBe(true)
      // Once the stream is confirmed, every listener is called once (a change may have come before it).
      expect(await until(() => calls === 1, 5000)).toBe(true)
      // Another chain's head and this chain's KEK record are under the watched range, and are not this head.
      expect(await writer.casHead('d', undefined, head(2))).toBe(true)
      expect(await writer.putKekIfAbsent('c', { id: 3, createdAt: 3, rootKind: 'aes', wrapped: new Uint8Array([3]) })).toBe(true)
      const v = (await writer.getHead('c'))!
      const changedAt = Date.now()
      expect(await writer.casHead('c', v.version, head(4))).toBe(true)
      expect(await until(() => calls > 1, 5000), 'onChange within 5 s').toBe(true)
      const latency = Date.now() - changedAt
      // Events come in order on one stream: by the time this head's arrived, the two before it were seen.
      await sleep(200)
      expect(calls).toBe(2)
      console.log(`watchHead: a head change through another store instance reached onChange after ${latency} ms`)
    } finally {
      stop()
    }
    stop() // idempotent
    expect(await until(async () => (await watchStreams(url)) === baseline, 5000), 'the stream is closed after stop()').toBe(true)
    const v = (await writer.getHead('c'))!
    expect(await writer.casHead('c', v.version, head(5))).toBe(true)
    await sleep(1500)
    expect(calls).toBe(2)
  })

  it('100 chains on one store instance: one watch stream (counted by etcd and at the fetch); a rotation elsewhere reaches its chain by push alone', async () => {
    const prefix = uniquePrefix()
    const watchRequests: string[] = []
    const counting: typeof fetch = (input, init) => {
      if (String(input).endsWith('/v3/watch')) watchRequests.push(String(input))
      return fetch(input, init)
    }
    const store = etcdStore({ endpoints: [url], prefix, fetch: counting })
    const baseline = await watchStreams(url)
    // maxStalenessMs Infinity: no polling at all, so only the push can show these chains a rotation.
    const chains = await Promise.all(Array.from({ length: 100 }, (_, i) => KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: `tenant-${i}`, maxStalenessMs: Infinity })))
    try {
      expect(await until(async () => (await watchStreams(url)) === baseline + 1, 5000)).toBe(true)
      expect(watchRequests.length).toBe(1)
      const target = chains[42]!
      const before = decodeHeader(await target.encrypt('before')).kekId
      const other = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: etcdStore({ endpoints: [url], prefix }), name: 'tenant-42', watch: false })
      const rotatedAt = Date.now()
      const { id } = await other.rotate()
      expect(id).not.toBe(before)
      let now = before
      const deadline = Date.now() + 5000
      while (now !== id && Date.now() < deadline) {
        now = decodeHeader(await target.encrypt('after')).kekId
        if (now !== id) await sleep(25)
      }
      expect(now, 'tenant-42 encrypts under the new primary within 5 s, by push').toBe(id)
      console.log(`100 chains, one store instance: ${watchRequests.length} watch request, etcd counts ${(await watchStreams(url)) - baseline} stream; a rotation elsewhere used after ${Date.now() - rotatedAt} ms`)
      expect(watchRequests.length).toBe(1)
      expect(await watchStreams(url)).toBe(baseline + 1)
    } finally {
      for (const c of chains.slice(0, 99)) c.close()
    }
    // Still one stream while one chain listens; none once the last one closes.
    await sleep(300)
    expect(await watchStreams(url)).toBe(baseline + 1)
    chains[99]!.close()
    expect(await until(async () => (await watchStreams(url)) === baseline, 5000), 'the stream is closed with the last chain').toBe(true)
    expect(watchRequests.length).toBe(1)
  })

  describe('through pass-throughs that drop streams and go down', () => {
    let proxies: PassThrough[] = []
    beforeAll(async () => {
      proxies = [await passThrough(url), await passThrough(url)]
    })
    afterAll(async () => {
      await Promise.all(proxies.map((p) => p.close()))
    })

    it('a dropped stream: a new one on the next endpoint, every listener called once, and changes reach the watchers again', async () => {
      const [a, b] = proxies as [PassThrough, PassThrough]
      const prefix = uniquePrefix()
      const store = etcdStore({ endpoints: [a.url, b.url], prefix })
      const writer = etcdStore({ endpoints: [url], prefix })
      const calls = [0, 0, 0]
      const stops = calls.map((_, i) => store.watchHead!(`c${i}`, () => calls[i]!++))
      try {
        expect(await until(() => a.openWatches === 1 && calls.every((n) => n === 1), 5000)).toBe(true)
        a.down = true
        a.dropWatches()
        const droppedAt = Date.now()
        expect(await until(() => b.openWatches === 1 && calls.every((n) => n === 2), 5000), 'a new stream through the second endpoint, every listener once more').toBe(true)
        const reconnected = Date.now() - droppedAt
        await sleep(300)
        expect(calls).toEqual([2, 2, 2])
        expect(b.requests.get('/v3/watch')).toBe(1)
        expect(await writer.casHead('c1', undefined, head(9))).toBe(true)
        expect(await until(() => calls[1] === 3, 5000)).toBe(true)
        expect(calls).toEqual([2, 3, 2])
        console.log(`watch: a dropped stream was replaced through the next endpoint after ${reconnected} ms`)
      } finally {
        for (const stop of stops) stop()
      }
      expect(await until(() => a.openWatches + b.openWatches === 0, 5000)).toBe(true)
    })

    it('every endpoint down: attempts back off (no tight loop, no giving up); back up, a stream again and every listener called', async () => {
      const [a, b] = proxies as [PassThrough, PassThrough]
      a.down = false
      const prefix = uniquePrefix()
      const store = etcdStore({ endpoints: [a.url, b.url], prefix, timeoutMs: 2000 })
      let calls = 0
      const stop = store.watchHead!('c', () => calls++)
      try {
        expect(await until(() => a.openWatches + b.openWatches === 1 && calls === 1, 5000)).toBe(true)
        a.down = true
        b.down = true
        const refusedBefore = a.refused + b.refused
        a.dropWatches()
        b.dropWatches()
        await sleep(4000)
        const attempts = a.refused + b.refused - refusedBefore
        // Both endpoints in turn, then waits of 125-250 ms (after the drop), 250-500, 500-1000,
        // 1000-2000 and 2000-4000 ms: 4 to 10 attempts in 4 s, where a loop without backoff makes thousands.
        expect(attempts).toBeGreaterThanOrEqual(4)
        expect(attempts).toBeLessThanOrEqual(14)
        a.down = false
        b.down = false
        const upAt = Date.now()
        // The longest wait is 4 s: a stream within that and a margin.
        expect(await until(() => a.openWatches + b.openWatches === 1 && calls === 2, 8000)).toBe(true)
        console.log(`watch with every endpoint down for 4 s: ${attempts} attempts (capped backoff with jitter); a stream again ${Date.now() - upAt} ms after they came back`)
      } finally {
        stop()
      }
    })
  })
})
