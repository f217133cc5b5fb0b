/**
 * KeyChainObject's own queue, outside workerd: there, input gates already keep other requests
 * out while a request awaits storage; here a storage that yields between every call (as a
 * runtime without input gates, or storage reached over the network, would) shows that the queue
 * alone keeps each compare-and-swap whole.
 */
import { expect, it } from 'vitest'
import { durableObjectStore, KeyChainObject, type DurableObjectNamespaceLike, type DurableObjectStorageLike } from '../src/index.ts'

/** A Map behind a storage API that waits `ms` (cycled 0, 1, 2) before each call. */
function slowStorage(): DurableObjectStorageLike {
  const m = new Map<string, unknown>()
  let tick = 0
  const pause = () => new Promise((r) => setTimeout(r, tick++ % 3))
  return {
    async get(key) {
      await pause()
      return structuredClone(m.get(key))
    },
    async put(key, value) {
      await pause()
      m.set(key, structuredClone(value))
    },
    async delete(key) {
      await pause()
      return m.delete(key)
    },
    async list({ prefix, limit = Infinity, startAfter = '' }) {
      await pause()
      const keys = [...m.keys()].filter((k) => k.startsWith(prefix) && k > startAfter).sort().slice(0, limit)
      return new Map(keys.map((k) => [k, structuredClone(m.get(k))]))
    },
  }
}

/** One object per name, as the runtime keeps them. */
function namespaceOver(make: () => KeyChainObject): DurableObjectNamespaceLike {
  const objects = new Map<string, KeyChainObject>()
  return {
    idFromName: (name) => name,
    get: (id) => {
      const name = id as unknown as string
      if (!objects.has(name)) objects.set(name, make())
      return { fetch: (url, init) => objects.get(name)!.fetch(new Request(url, init)) }
    },
  }
}

it('with a storage that yields between calls, 32 concurrent casHead on one version still have exactly one winner (the object queues requests)', async () => {
  const store = durableObjectStore(namespaceOver(() => new KeyChainObject({ storage: slowStorage() })))
  const head = { primary: 1, primaryCreatedAt: 1, leased: 0 }
  expect(await store.casHead('c', undefined, head)).toBe(true)
  for (let round = 0; round < 5; round++) {
    const { version } = (await store.getHead('c'))!
    const results = await Promise.all(Array.from({ length: 32 }, (_, i) => store.casHead('c', version, { ...head, leased: round * 100 + i })))
    expect(results.filter(Boolean)).toHaveLength(1)
    expect((await store.getHead('c'))!.value.leased).toBe(round * 100 + results.indexOf(true))
  }
  const puts = await Promise.all(Array.from({ length: 32 }, (_, i) => store.putKekIfAbsent('c', { id: 9, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([i + 1]) })))
  expect(puts.filter(Boolean)).toHaveLength(1)
})

it('every call makes its own stub (workerd refuses a stub of another request): after one rejected, the next call succeeds', async () => {
  const object = new KeyChainObject({ storage: slowStorage() })
  let stubsMade = 0
  const namespace: DurableObjectNamespaceLike = {
    idFromName: (name) => name,
    get: () => {
      const broken = stubsMade++ === 0
      return {
        fetch: async (url, init) => {
          if (broken) throw new Error('Durable Object reset because its code was updated.')
          return object.fetch(new Request(url, init))
        },
      }
    },
  }
  const store = durableObjectStore(namespace)
  await expect(store.getHead('c')).rejects.toMatchObject({ code: 'ERR_STORE', retryable: true })
  await expect(store.getHead('c')).resolves.toBeUndefined()
  expect(stubsMade).toBe(2)
})
