// Page script for indexeddb.test.ts: bundled by esbuild from the sources (the repo tsconfig maps
// @kms-proxy/* to src), loaded by a page on http://localhost, driven through globalThis.kp.
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { createStore, set } from 'idb-keyval'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
const unique = () => `t-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`

const kp = {
  async contract() {
    const t = createHarness()
    describeStore(t, {
      name: 'indexeddb',
      open: async () => {
        const name = unique()
        return { store: indexedDbStore({ name }), another: () => indexedDbStore({ name }) }
      },
    })
    return t.run()
  },

  /** One tab's share of the two-tab test: `count` records, rotate() halfway. */
  async work({ name, tab, count, max }: { name: string; tab: string; count: number; max: number }) {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: indexedDbStore({ name }), maxWrapsPerKek: max, leaseSize: 5, dekPoolSize: 0 })
    // The tabs talk over a BroadcastChannel. First each waits to hear from the other (a
    // wall-clock start could pass before a slow tab was even called), then they take two turns
    // each of 5 records (a, b, a, b): b's first lease is then from a KEK a made, so the tabs
    // provably share the store however the machine schedules them. Then both run free, racing
    // for leases and rotations.
    const other = tab === 'a' ? 'b' : 'a'
    const channel = new BroadcastChannel(`tabs:${name}`)
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

;(globalThis as any).kp = kp
;(globalThis as any).kpReady = true
