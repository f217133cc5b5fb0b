import { afterEach, describe, expect, it, vi } from 'vitest'
import { KeyChain, KmsProxyError, decodeHeader, embeddedStore, memoryStore } from '@kms-proxy/core'
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
  const made = []
  for (let i = 0; i < 10; i++) made.push(await chain.encrypt(`m${i}`))
  // Five KEKs used, two messages each (a sixth may be under way: the DEK pool refills ahead).
  expect(new Set(made.map((e) => decodeHeader(e).kekId)).size).toBe(5)
  expect(chain.stats().rotations).toBeGreaterThanOrEqual(5)
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

it('a passphrase that is not well-formed UTF-16 is a TypeError (it would derive the same key as its U+FFFD twin)', () => {
  for (const p of ['a\uD800', 'a\uDFFF', '\uDC00pass']) expect(() => passphraseRootKey({ passphrase: p })).toThrow(TypeError)
  expect(() => passphraseRootKey({ passphrase: 'a\uFFFD \u{1F511}' })).not.toThrow()
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

describe('scrypt and Argon2id (through @noble/hashes)', () => {
  it.each([
    ['scrypt', { name: 'scrypt', N: 2 ** 10, r: 8, p: 1 }],
    ['argon2id', { name: 'argon2id', t: 1, m: 64, p: 1 }],
  ] as const)('%s: round trip, parameters carried in the wrapped KEK, wrong passphrase is ERR_ROOT_KEY', async (name, kdf) => {
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', kdf }), store })
    const encrypted = await chain.encrypt('x')
    const [record] = await store.listKeks('default')
    expect(record!.rootKind).toBe(`passphrase-${name}`)
    // A reader set up for PBKDF2 refuses another family unless it lists it in acceptKdfs.
    const pbkdf2Only = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', iterations: FAST }), store })
    await expect(pbkdf2Only.decrypt(encrypted)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/not accepted/) })
    const reader = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', iterations: FAST, acceptKdfs: [kdf] }), store })
    expect(dec(await reader.decrypt(encrypted))).toBe('x')
    const wrong = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'nope', kdf }), store })
    await expect(wrong.decrypt(encrypted)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/wrong passphrase/) })
  })

  it('planted scrypt / Argon2id parameters beyond the limits are refused before deriving', async () => {
    for (const [kdf, patch] of [
      [{ name: 'scrypt', N: 2 ** 10, r: 8, p: 1 }, (w: Uint8Array) => (w[1] = 30)],
      [{ name: 'argon2id', t: 1, m: 64, p: 1 }, (w: Uint8Array) => new DataView(w.buffer, w.byteOffset).setUint32(2, 0xffffffff)],
    ] as const) {
      const store = memoryStore()
      const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', kdf }), store })
      const encrypted = await chain.encrypt('x')
      const [record] = await store.listKeks('default')
      const planted = record!.wrapped.slice()
      patch(planted)
      const evil = memoryStore()
      await evil.putKekIfAbsent('default', { ...record!, wrapped: planted })
      const started = performance.now()
      const reader = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', kdf }), store: evil })
      await expect(reader.decrypt(encrypted)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
      expect(performance.now() - started).toBeLessThan(1000)
    }
    expect(() => passphraseRootKey({ passphrase: 'x', kdf: { name: 'scrypt', N: 1000 } })).toThrow(RangeError)
    expect(() => passphraseRootKey({ passphrase: 'x', kdf: { name: 'argon2id', m: 2 ** 31 } })).toThrow(RangeError)
    expect(() => passphraseRootKey({ passphrase: 'x', kdf: 'bcrypt' as never })).toThrow(RangeError)
  })

  it('OWASP defaults: scrypt N=2^17 r=8 p=1 and Argon2id m=19 MiB t=2 p=1 unlock', async () => {
    for (const kdf of ['scrypt', 'argon2id'] as const) {
      const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', kdf }) })
      const started = performance.now()
      const encrypted = await chain.encrypt('x')
      console.log(`${kdf} at the OWASP defaults: first encryption (one derivation) ${(performance.now() - started).toFixed(0)} ms`)
      expect(dec(await (await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', kdf }) })).decrypt(encrypted))).toBe('x')
    }
  // Four derivations, about 3 s on an idle 2-core machine; 29-30 s were seen at a load average
  // of 31 (other suites sharing the cores), so the limit is well above that.
  }, 120_000)
})
