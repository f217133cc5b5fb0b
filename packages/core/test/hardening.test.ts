// Findings of the security review (issue 11) that live in core: each test failed on the code
// before its fix.
import { describe, expect, it, vi } from 'vitest'
import {
  KeyChain,
  KmsProxyError,
  RootKeyError,
  StoreError,
  aesRootKey,
  embeddedStore,
  memoryStore,
  type ChainHead,
  type KeyStore,
  type RootKey,
} from '../src/index.ts'
import { ROOT_BYTES, counting, expectCode, kekIdOf, text } from './helpers.ts'

const head0 = (store: KeyStore, name = 'default') => store.getHead(name)

/** A root key that can be taken down: every call then fails as a KMS answering 503 would. */
function outageRoot(inner: RootKey = aesRootKey(ROOT_BYTES)) {
  const state = { down: false, calls: 0 }
  const root: RootKey = {
    kind: inner.kind,
    newKek: (aad) => (state.calls++, state.down ? Promise.reject(new RootKeyError('KMS: 503', { retryable: true })) : inner.newKek(aad)),
    unwrapKek: (w, a) => (state.calls++, state.down ? Promise.reject(new RootKeyError('KMS: 503', { retryable: true })) : inner.unwrapKek(w, a)),
  }
  return { root, state }
}

function countPerKek(all: Uint8Array[]): Map<number, number> {
  const perKek = new Map<number, number>()
  for (const e of all) perKek.set(kekIdOf(e), (perKek.get(kekIdOf(e)) ?? 0) + 1)
  return perKek
}

describe('usage limit after an ambiguous rotation (finding 2)', () => {
  it.each(['answers false', 'throws'] as const)(
    'a rotation whose compare-and-swap landed but %s is never installed again after others used its KEK',
    async (mode) => {
      const MAX = 10
      const shared = memoryStore()
      const all: Uint8Array[] = []
      const other = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: shared, maxWrapsPerKek: MAX, leaseSize: 5, dekPoolSize: 0 })
      let armed = true
      // Process A's view of the store: its first rotation lands, then, before A hears back,
      // another process uses the new KEK to its limit and rotates past it.
      const store: KeyStore = {
        ...shared,
        atomic: shared.atomic,
        embedsKeks: shared.embedsKeks,
        async casHead(chain, expected, next: ChainHead) {
          const before = await shared.getHead(chain)
          const ok = await shared.casHead(chain, expected, next)
          if (!(ok && armed && before?.value.primary !== next.primary)) return ok
          armed = false
          for (let i = 0; i < MAX + 3; i++) all.push(await other.encrypt(`other ${i}`))
          if (mode === 'throws') throw new Error('etcd: leader changed')
          return false
        },
      }
      const a = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, maxWrapsPerKek: MAX, leaseSize: 5, dekPoolSize: 0 })
      for (let i = 0; i < 60; i++) {
        try {
          all.push(await a.encrypt(`a ${i}`))
        } catch (error) {
          expect((error as KmsProxyError).code).toBe('ERR_STORE') // the throwing CAS, once
        }
        all.push(await other.encrypt(`other more ${i}`))
      }
      expect(armed).toBe(false)
      const perKek = countPerKek(all)
      expect(Math.max(...perKek.values())).toBeLessThanOrEqual(MAX)
      for (const e of all.slice(0, 5)) await a.decrypt(e)
    },
  )
})

describe('a root-key outage (finding 3)', () => {
  it('encrypts that fail to load another process\'s primary reserve no uses; a process holding the primary goes on', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, maxWrapsPerKek: 1000, leaseSize: 10, dekPoolSize: 0 })
    await writer.encrypt('makes the primary')
    const { root, state } = outageRoot()
    const late = await KeyChain.open({ rootKey: root, store, maxWrapsPerKek: 1000, leaseSize: 10, dekPoolSize: 0 })
    const before = (await head0(store))!.value.leased
    state.down = true
    for (let i = 0; i < 64; i++) await expectCode(late.encrypt(`during the outage ${i}`), 'ERR_ROOT_KEY')
    expect((await head0(store))!.value.leased).toBe(before)
    expect(late.stats().rootKeyAvailable).toBe(false)
    // The writer holds the primary and renews its lease without the root key.
    for (let i = 0; i < 100; i++) await writer.encrypt(`writer during the outage ${i}`)
    state.down = false
    expect(text(await late.decrypt(await late.encrypt('after')))).toBe('after')
    expect(late.stats().rootKeyAvailable).toBe(true)
  })
})

describe('failed unwraps are remembered (finding 4)', () => {
  it('100 decrypts of a message naming a planted KEK record make at most 1 root call', async () => {
    const store = memoryStore()
    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store })
    const real = await chain.encrypt('x')
    const planted = 0x01020304
    await store.putKekIfAbsent('default', { id: planted, createdAt: Date.now(), rootKind: 'aes', wrapped: crypto.getRandomValues(new Uint8Array(60)) })
    const forged = real.slice()
    new DataView(forged.buffer).setUint32(1, planted)
    const reader = await KeyChain.open({ rootKey, store })
    const unwrapsBefore = rootKey.unwraps
    for (let i = 0; i < 50; i++) await expectCode(reader.decrypt(forged), 'ERR_ROOT_KEY')
    await Promise.all(Array.from({ length: 50 }, () => expectCode(reader.decrypt(forged), 'ERR_ROOT_KEY')))
    expect(rootKey.unwraps - unwrapsBefore).toBeLessThanOrEqual(1)
    expect(text(await reader.decrypt(real))).toBe('x') // the real KEK still works
  })

  it('100 decrypts of a message with a planted embedded KEK make at most 1 root call', async () => {
    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store: embeddedStore() })
    const real = await chain.encrypt('x')
    const forged = real.slice()
    forged[8] = forged[8]! ^ 1 // inside the embedded wrapped KEK: the root key refuses it
    const reader = await KeyChain.open({ rootKey, store: embeddedStore() })
    for (let i = 0; i < 100; i++) await expectCode(reader.decrypt(forged), 'ERR_ROOT_KEY')
    expect(rootKey.unwraps).toBeLessThanOrEqual(1)
  })

  it('an unknown KEK id costs one store read for many decrypts', async () => {
    const inner = memoryStore()
    let reads = 0
    const store: KeyStore = { ...inner, atomic: inner.atomic, embedsKeks: inner.embedsKeks, getKek: (c, id) => (reads++, inner.getKek(c, id)) }
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const forged = (await chain.encrypt('x')).slice()
    new DataView(forged.buffer).setUint32(1, 0x0badf00d)
    reads = 0
    for (let i = 0; i < 100; i++) await expectCode(chain.decrypt(forged), 'ERR_UNKNOWN_KEK')
    expect(reads).toBeLessThanOrEqual(1)
  })

  it('a retryable failure (a KMS that is down) is not remembered', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const encrypted = await writer.encrypt('x')
    const { root, state } = outageRoot()
    const reader = await KeyChain.open({ rootKey: root, store })
    state.down = true
    await expectCode(reader.decrypt(encrypted), 'ERR_ROOT_KEY')
    state.down = false
    expect(text(await reader.decrypt(encrypted))).toBe('x')
  })
})

describe('strings that are not well-formed (finding 7) and the byte order mark (finding 8)', () => {
  const lone = ['t\uD800', 't\uDFFF', '\uDC00x', 'a\uD800b']

  it('chain names that are not well-formed UTF-16 are a TypeError', async () => {
    for (const name of lone) await expect(KeyChain.open({ name })).rejects.toBeInstanceOf(TypeError)
    await expect(KeyChain.open({ name: 't\uFFFD' })).resolves.toBeInstanceOf(KeyChain)
    await expect(KeyChain.open({ name: 'emoji \u{1F511}' })).resolves.toBeInstanceOf(KeyChain)
  })

  it('string associated data and string plaintext that are not well-formed are a TypeError', async () => {
    const chain = await KeyChain.open()
    for (const s of lone) {
      await expect(chain.encrypt('x', { associatedData: s })).rejects.toBeInstanceOf(TypeError)
      await expect(chain.encrypt(s)).rejects.toBeInstanceOf(TypeError)
      await expect(chain.encryptText(s)).rejects.toBeInstanceOf(TypeError)
      await expect(chain.decrypt(await chain.encrypt('x'), { associatedData: s })).rejects.toBeInstanceOf(TypeError)
    }
  })

  it('two names that differ only in an unpaired surrogate no longer bind the same KEK-wrap AAD', async () => {
    const store = memoryStore()
    const a = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: 't\uFFFD' })
    const encrypted = await a.encrypt('secret')
    await expect(KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: 't\uD800' })).rejects.toBeInstanceOf(TypeError)
    expect(text(await a.decrypt(encrypted))).toBe('secret')
  })

  it('text round trips are exact, a leading U+FEFF included', async () => {
    const chain = await KeyChain.open()
    for (const s of ['\uFEFFA', '\uFEFF', '\uFEFF\uFEFF', 'A\uFEFF', '', '\u{1F511}\uFFFD\u0000']) {
      expect(await chain.decryptText(await chain.encryptText(s))).toBe(s)
      expect(await chain.decryptText(await chain.encryptText('x', { associatedData: s }), { associatedData: s })).toBe('x')
    }
    expect([...(await chain.decrypt(await chain.encrypt('\uFEFF')))]).toEqual([0xef, 0xbb, 0xbf])
  })
})

describe('what the failure memory forgets', () => {
  it('a store that failed for good while reading a KEK is asked again; a refusal is believed for 60 s only', async () => {
    const inner = memoryStore()
    let deny = true
    const store: KeyStore = {
      ...inner,
      atomic: inner.atomic,
      embedsKeks: inner.embedsKeks,
      getKek: (c, id) => (deny ? Promise.reject(new StoreError('etcd: permission denied', { retryable: false })) : inner.getKek(c, id)),
      getKekWraps: (c, id) => (deny ? Promise.reject(new StoreError('etcd: permission denied', { retryable: false })) : inner.getKekWraps!(c, id)),
    }
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: inner })
    const encrypted = await writer.encrypt('x')
    const reader = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    await expectCode(reader.decrypt(encrypted), 'ERR_STORE')
    deny = false
    expect(text(await reader.decrypt(encrypted))).toBe('x')
  })

  it('a root key\'s refusal is asked again after 60 s (a key policy mended)', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const encrypted = await writer.encrypt('x')
    let refuse = true
    let calls = 0
    const inner = aesRootKey(ROOT_BYTES)
    const rootKey: RootKey = {
      kind: 'kms',
      newKek: (aad) => inner.newKek(aad),
      unwrapKek: (w, a) => (calls++, refuse ? Promise.reject(new RootKeyError('AccessDeniedException')) : inner.unwrapKek(w, a)),
    }
    const reader = await KeyChain.open({ rootKey, store })
    const now = Date.now()
    const clock = vi.spyOn(Date, 'now')
    try {
      clock.mockReturnValue(now)
      for (let i = 0; i < 10; i++) await expectCode(reader.decrypt(encrypted), 'ERR_ROOT_KEY')
      expect(calls).toBe(1)
      refuse = false
      clock.mockReturnValue(now + 59_000)
      await expectCode(reader.decrypt(encrypted), 'ERR_ROOT_KEY')
      expect(calls).toBe(1)
      clock.mockReturnValue(now + 61_000)
      expect(text(await reader.decrypt(encrypted))).toBe('x')
      expect(calls).toBe(2)
    } finally {
      clock.mockRestore()
    }
  })
})
