import { describe, expect, it } from 'vitest'
import {
  DecryptError,
  KeyChain,
  KmsProxyError,
  LimitError,
  StoreError,
  aesRootKey,
  embeddedStore,
  memoryStore,
  type KeyStore,
  type RootKey,
} from '../src/index.ts'
import { _setRandomSourceForVectors } from '../src/internal/random.ts'
import { ROOT_BYTES, expectCode, rejection } from './helpers.ts'

describe('arguments', () => {
  it('wrong types are TypeError, out-of-range options RangeError', async () => {
    const chain = await KeyChain.open()
    await expect(chain.encrypt(123 as never)).rejects.toBeInstanceOf(TypeError)
    await expect(chain.encrypt(new ArrayBuffer(4) as never)).rejects.toBeInstanceOf(TypeError)
    await expect(chain.encrypt('x', { associatedData: 5 as never })).rejects.toBeInstanceOf(TypeError)
    await expect(chain.decrypt('kp1.abc' as never)).rejects.toBeInstanceOf(TypeError)
    await expect(chain.encryptText(new Uint8Array(1) as never)).rejects.toBeInstanceOf(TypeError)
    await expect(chain.decryptText(new Uint8Array(1) as never)).rejects.toBeInstanceOf(TypeError)
    await expect(chain.rewrap(null as never)).rejects.toBeInstanceOf(TypeError)
    await expect(KeyChain.open({ maxWrapsPerKek: 2 ** 32 + 1 })).rejects.toBeInstanceOf(RangeError)
    await expect(KeyChain.open({ maxWrapsPerKek: 0 })).rejects.toBeInstanceOf(RangeError)
    await expect(KeyChain.open({ maxWrapsPerKek: 1.5 })).rejects.toBeInstanceOf(RangeError)
    await expect(KeyChain.open({ maxKekAgeMs: 0 })).rejects.toBeInstanceOf(RangeError)
    await expect(KeyChain.open({ dekCacheSize: -1 })).rejects.toBeInstanceOf(RangeError)
    await expect(KeyChain.open({ dekPoolSize: 5000 })).rejects.toBeInstanceOf(RangeError)
    await expect(KeyChain.open({ name: '' })).rejects.toBeInstanceOf(TypeError)
    await expect(KeyChain.open({ rootKey: {} as RootKey })).rejects.toBeInstanceOf(TypeError)
    await expect(KeyChain.open({ store: {} as KeyStore })).rejects.toBeInstanceOf(TypeError)
    expect(() => aesRootKey(new Uint8Array(20))).toThrow(RangeError)
    expect(() => aesRootKey('key' as never)).toThrow(TypeError)
    await KeyChain.open({ maxWrapsPerKek: 2 ** 32 })
  })

  it('errors have stable codes, subclasses and names', () => {
    const e = new DecryptError('decryption failed')
    expect(e).toBeInstanceOf(KmsProxyError)
    expect(e).toBeInstanceOf(Error)
    expect([e.code, e.name, e.retryable]).toEqual(['ERR_DECRYPT', 'DecryptError', false])
    expect(new StoreError('x', { retryable: true }).retryable).toBe(true)
    expect(JSON.parse(JSON.stringify(new LimitError('too big')))).toEqual({ name: 'LimitError', code: 'ERR_LIMIT', message: 'too big', retryable: false })
  })

  it('a decryption failure says nothing about which layer failed and carries no cause', async () => {
    const chain = await KeyChain.open({ store: memoryStore() })
    const encrypted = await chain.encrypt('x')
    const messages = new Set<string>()
    // iv1, wrapped DEK, iv2, ciphertext, tag: one message for all of them.
    for (const i of [10, 30, 55, encrypted.length - 17, encrypted.length - 1]) {
      const bad = encrypted.slice()
      bad[i]! ^= 1
      const error = await expectCode(chain.decrypt(bad), 'ERR_DECRYPT')
      expect(error.cause).toBeUndefined()
      messages.add(error.message)
    }
    expect([...messages]).toEqual(['decryption failed'])
  })
})

function failingStore(fail: Partial<Record<keyof KeyStore, boolean>>): KeyStore & { writes: number } {
  const inner = memoryStore()
  const wrap =
    <K extends 'getHead' | 'casHead' | 'getKek' | 'putKekIfAbsent' | 'listKeks'>(k: K) =>
    (...args: unknown[]) => {
      if (fail[k]) return Promise.reject(new Error(`disk on fire during ${k}`))
      if (k === 'putKekIfAbsent' || k === 'casHead') store.writes++
      return (inner[k] as (...a: unknown[]) => Promise<unknown>)(...args)
    }
  const store = {
    atomic: true,
    embedsKeks: false,
    writes: 0,
    getHead: wrap('getHead'),
    casHead: wrap('casHead'),
    getKek: wrap('getKek'),
    putKekIfAbsent: wrap('putKekIfAbsent'),
    listKeks: wrap('listKeks'),
  } as KeyStore & { writes: number }
  return store
}

describe('stores and roots that fail', () => {
  it('a store that cannot persist the KEK means no encrypted data at all (persist before use)', async () => {
    const store = failingStore({ putKekIfAbsent: true })
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const error = await expectCode(chain.encrypt('x'), 'ERR_STORE')
    expect(error.retryable).toBe(true)
    expect(error.message).not.toContain('x'.repeat(2))
    // Also when many encrypts wait on the same rotation.
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => chain.encrypt('y')))
    expect(results.every((r) => r.status === 'rejected' && (r.reason as KmsProxyError).code === 'ERR_STORE')).toBe(true)
  })

  it('a head write that fails after the KEK was stored leaves no data under it; the next try reuses that KEK', async () => {
    const fail = { casHead: true }
    const store = failingStore(fail)
    let wraps = 0
    const inner = aesRootKey(ROOT_BYTES)
    const rootKey: RootKey = { kind: 'aes', newKek: (aad) => (wraps++, inner.newKek(aad)), unwrapKek: (w, a) => inner.unwrapKek(w, a) }
    const chain = await KeyChain.open({ rootKey, store })
    await expectCode(chain.encrypt('x'), 'ERR_STORE')
    fail.casHead = false
    const e = await chain.encrypt('x')
    expect(wraps).toBe(1)
    expect(new TextDecoder().decode(await chain.decrypt(e))).toBe('x')
  })

  it('a store that cannot be read fails open() with ERR_STORE', async () => {
    await expectCode(KeyChain.open({ store: failingStore({ getHead: true }) }), 'ERR_STORE')
  })

  it('a root key that throws gives ERR_ROOT_KEY, with the chain usable once it recovers', async () => {
    let down = true
    const inner = aesRootKey(ROOT_BYTES)
    const rootKey: RootKey = {
      kind: 'flaky',
      newKek: (aad) => (down ? Promise.reject(new Error('503 from KMS')) : inner.newKek(aad)),
      unwrapKek: (w, a) => inner.unwrapKek(w, a),
    }
    const chain = await KeyChain.open({ rootKey, store: memoryStore() })
    await expectCode(chain.encrypt('x'), 'ERR_ROOT_KEY')
    down = false
    expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('x')))).toBe('x')
  })

  it('a stored KEK missing from the store is ERR_UNKNOWN_KEK', async () => {
    const a = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
    const encrypted = await a.encrypt('x')
    const b = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore() })
    await expectCode(b.decrypt(encrypted), 'ERR_UNKNOWN_KEK')
  })

  it('ERR_LIMIT: a wrapped KEK too large to embed', async () => {
    const inner = aesRootKey(ROOT_BYTES)
    const bloated: RootKey = {
      kind: 'bloated',
      async newKek(aad) {
        const made = await inner.newKek(aad)
        return { kek: made.kek, wrapped: new Uint8Array(70_000) }
      },
      unwrapKek: (w, a) => inner.unwrapKek(w, a),
    }
    const embedded = await KeyChain.open({ rootKey: bloated, store: embeddedStore() })
    await expectCode(embedded.encrypt('x'), 'ERR_LIMIT')
    // The same root is fine where the KEK is not embedded.
    const stored = await KeyChain.open({ rootKey: bloated, store: memoryStore() })
    expect((await stored.encrypt('x')).length).toBeGreaterThan(0)
  })

  it('ERR_LIMIT: no free KEK id (ids collide)', async () => {
    const store = memoryStore()
    const first = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    await first.encrypt('x')
    const [taken] = await store.listKeks('default')
    const id = taken!.id
    const idBytes = Uint8Array.of(id >>> 24, (id >>> 16) & 255, (id >>> 8) & 255, id & 255)
    // Every random draw returns the taken id's bytes (4-byte draws) or zeros.
    _setRandomSourceForVectors((n) => (n === 4 ? idBytes.slice() : new Uint8Array(n)))
    try {
      const second = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
      await expectCode(second.rotate(), 'ERR_LIMIT')
    } finally {
      _setRandomSourceForVectors(undefined)
    }
  })
})

it('nothing thrown from a decryption is anything but a KmsProxyError or a TypeError for wrong types', async () => {
  const chain = await KeyChain.open({ store: memoryStore() })
  for (const input of [new Uint8Array(0), new Uint8Array(200), Uint8Array.of(1, 0, 0, 0, 0, 0), Uint8Array.of(1, 0, 0, 0, 1, 1, 0, 0)]) {
    const error = await rejection(chain.decrypt(input))
    expect(error).toBeInstanceOf(KmsProxyError)
  }
})
