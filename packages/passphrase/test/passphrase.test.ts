import { afterEach, expect, it, vi } from 'vitest'
import { KeyChain, KmsProxyError, embeddedStore, memoryStore } from '@kms-proxy/core'
import { DEFAULT_ITERATIONS, passphraseRootKey } from '../src/index.ts'

const FAST = 1_000
const dec = (b: Uint8Array) => new TextDecoder().decode(b)

afterEach(() => {
  vi.restoreAllMocks()
})

it('round trip through a store and through embedded data, reopened with only the passphrase', async () => {
  for (const store of [memoryStore(), embeddedStore()]) {
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'correct horse', iterations: FAST }), store })
    const encrypted = await chain.encrypt('diary entry')
    // A new root key instance (a new process): nothing but the passphrase and the data/store.
    const reopened = await KeyChain.open({
      rootKey: passphraseRootKey({ passphrase: 'correct horse', iterations: FAST }),
      store: store.embedsKeks ? embeddedStore() : store,
    })
    expect(dec(await reopened.decrypt(encrypted))).toBe('diary entry')
  }
})

it('a wrong passphrase is ERR_ROOT_KEY with a clear message', async () => {
  const store = memoryStore()
  const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'right', iterations: FAST }), store })
  const encrypted = await chain.encrypt('x')
  for (const s of [store, embeddedStore()]) {
    const data = s === store ? encrypted : await (await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'right', iterations: FAST }) })).encrypt('x')
    const wrong = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'wrong', iterations: FAST }), store: s })
    const error = await wrong.decrypt(data).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect((error as KmsProxyError).code).toBe('ERR_ROOT_KEY')
    expect((error as KmsProxyError).message).toMatch(/wrong passphrase/)
    expect(String(error)).not.toMatch(/right|wrong'/)
  }
})

it('the salt and iterations travel with the wrapped KEK; one derivation per salt per process', async () => {
  const derive = vi.spyOn(crypto.subtle, 'deriveKey')
  const store = memoryStore()
  const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', iterations: 2_000 }), store, maxWrapsPerKek: 2 })
  for (let i = 0; i < 10; i++) await chain.encrypt(`m${i}`)
  expect(chain.stats().rotations).toBe(5)
  expect(derive).toHaveBeenCalledTimes(1)
  const records = await store.listKeks('default')
  const salts = new Set(records.map((r) => Buffer.from(r.wrapped.subarray(6, 22)).toString('hex')))
  expect(salts.size).toBe(1)
  expect(records.every((r) => new DataView(r.wrapped.buffer, r.wrapped.byteOffset).getUint32(1) === 2_000)).toBe(true)
  // A reader constructed with other iterations still reads them: the stored count wins.
  derive.mockClear()
  const reader = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', iterations: 5_000 }), store })
  const e = await chain.encrypt('last')
  expect(dec(await reader.decrypt(e))).toBe('last')
  expect(derive).toHaveBeenCalledTimes(1)
})

it('a planted wrapped KEK that asks for absurd iterations is refused before deriving', async () => {
  const store = memoryStore()
  const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', iterations: FAST }), store })
  const encrypted = await chain.encrypt('x')
  const [record] = await store.listKeks('default')
  const planted = record!.wrapped.slice()
  new DataView(planted.buffer).setUint32(1, 0xffffffff)
  const evil = memoryStore()
  await evil.putKekIfAbsent('default', { ...record!, wrapped: planted })
  const derive = vi.spyOn(crypto.subtle, 'deriveKey')
  const reader = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', iterations: FAST }), store: evil })
  await expect(reader.decrypt(encrypted)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
  expect(derive).not.toHaveBeenCalled()
})

it('bad options are TypeError / RangeError', () => {
  expect(() => passphraseRootKey({ passphrase: '' })).toThrow(RangeError)
  expect(() => passphraseRootKey({ passphrase: 42 as never })).toThrow(TypeError)
  expect(() => passphraseRootKey({ passphrase: 'x', iterations: 10 })).toThrow(RangeError)
  expect(() => passphraseRootKey({ passphrase: 'x', salt: new Uint8Array(3) })).toThrow(RangeError)
  expect(JSON.stringify(passphraseRootKey({ passphrase: 'hunter2' }))).not.toContain('hunter2')
  expect(String(passphraseRootKey({ passphrase: 'hunter2' }))).not.toContain('hunter2')
})

it(`defaults to ${DEFAULT_ITERATIONS} iterations (OWASP), and that unlock works`, async () => {
  const rootKey = passphraseRootKey({ passphrase: 'a long passphrase' })
  const chain = await KeyChain.open({ rootKey })
  const encrypted = await chain.encrypt('x')
  const wrappedKek = encrypted.subarray(8, 8 + ((encrypted[6]! << 8) | encrypted[7]!))
  expect(new DataView(wrappedKek.buffer, wrappedKek.byteOffset).getUint32(1)).toBe(600_000)
  expect(dec(await chain.decrypt(encrypted))).toBe('x')
})
