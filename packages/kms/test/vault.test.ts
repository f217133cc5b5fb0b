import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError, memoryStore } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { vaultTransitRootKey } from '../src/index.ts'
import { startFakeVault, type FakeVault } from './fakes/vault.ts'

const token = 'hvs.kms-proxy-test-vault-token'
let fake: FakeVault

beforeAll(async () => {
  fake = await startFakeVault({ token, keys: ['app', 'other'] })
})
afterAll(() => fake?.close())

const root = (overrides = {}) => vaultTransitRootKey({ address: fake.url, token, key: 'app', backoffMs: 1, ...overrides })

describeRootKey(createHarness(it), {
  name: 'vaultTransitRootKey (fake Vault)',
  make: () => root(),
  other: () => root({ key: 'other' }),
  secrets: [token],
})

describe('Vault Transit through a key chain', () => {
  it('one random + encrypt per rotation, one decrypt per KEK per process, none per message', async () => {
    fake.calls.length = 0
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: root(), store, maxWrapsPerKek: 500, dekPoolSize: 0 })
    const encrypted = []
    for (let i = 0; i < 2000; i++) encrypted.push(await chain.encrypt(`record ${i}`))
    const keks = (await store.listKeks('default')).length
    expect(keks).toBe(4)
    expect(fake.calls.filter((c) => c === 'random').length).toBe(keks)
    expect(fake.calls.filter((c) => c === 'encrypt').length).toBe(keks)
    expect(fake.calls.filter((c) => c === 'decrypt').length).toBe(0)
    fake.calls.length = 0
    const reader = await KeyChain.open({ rootKey: root(), store })
    await Promise.all(encrypted.map((e) => reader.decrypt(e)))
    const used = new Set(encrypted.map((e) => new DataView(e.buffer, e.byteOffset).getUint32(1))).size
    expect(used).toBe(4)
    expect(fake.calls).toEqual(Array(used).fill('decrypt'))
  })

  it('keeps the vault:vN: key version in the wrapped form; KEKs survive a transit key rotation', async () => {
    const { wrapped } = await root().newKek(new Uint8Array([1, 2]))
    expect(wrapped[0]).toBe(0x22)
    expect(new TextDecoder().decode(wrapped.subarray(1))).toMatch(/^vault:v1:/)
    fake.rotate('app')
    await root().unwrapKek(wrapped, new Uint8Array([1, 2]))
    const next = await root().newKek(new Uint8Array([1, 2]))
    expect(new TextDecoder().decode(next.wrapped.subarray(1))).toMatch(/^vault:v2:/)
  })

  it('associated_data binds each KEK to its chain and id', async () => {
    const store = memoryStore()
    const a = await KeyChain.open({ rootKey: root(), store, name: 'a' })
    const encrypted = await a.encrypt('x')
    for (const r of await store.listKeks('a')) await store.putKekIfAbsent('b', r)
    const b = await KeyChain.open({ rootKey: root(), store, name: 'b' })
    const error = await b.decrypt(encrypted).catch((e) => e)
    expect([error.code, error.message]).toEqual(['ERR_ROOT_KEY', expect.stringMatching(/message authentication failed/)])
  })

  it('sends X-Vault-Namespace and uses a custom mount', async () => {
    const other = await startFakeVault({ token, keys: ['app'], mount: 'kms/transit' })
    try {
      const chain = await KeyChain.open({ rootKey: root({ address: other.url, mount: 'kms/transit', namespace: 'team-a' }) })
      expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('ns')))).toBe('ns')
      expect(new Set(other.namespaces)).toEqual(new Set(['team-a']))
    } finally {
      await other.close()
    }
  })
})

describe('when Vault refuses or fails', () => {
  it('a wrong token is ERR_ROOT_KEY, not retryable, and the token is in no error', async () => {
    fake.calls.length = 0
    const error = await root({ token: 'hvs.wrong-token' }).newKek(new Uint8Array(4)).catch((e) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/refused the credentials/)
    expect(fake.calls.length).toBe(1)
    const shown = `${String(error)} ${JSON.stringify(error)} ${error.stack} ${JSON.stringify(root())} ${String(root())}`
    expect(shown).not.toContain('hvs.')
  })

  it('a missing key is ERR_ROOT_KEY, not retryable', async () => {
    const error = await root({ key: 'none' }).newKek(new Uint8Array(4)).catch((e) => e)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/encryption key not found/)
  })

  it('retries 503s with backoff and succeeds', async () => {
    fake.fail(2)
    const chain = await KeyChain.open({ rootKey: root() })
    expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('x')))).toBe('x')
  })

  it('gives up after the retries with a retryable ERR_ROOT_KEY', async () => {
    fake.fail(1000)
    const error = await root({ retries: 2 }).newKek(new Uint8Array(4)).catch((e) => e)
    fake.fail(0)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', true])
    expect(String(error)).not.toContain(token)
  })

  it('bad options are TypeError', () => {
    expect(() => vaultTransitRootKey({ address: 'not a url', token, key: 'k' })).toThrow(TypeError)
    expect(() => vaultTransitRootKey({ address: 'http://x', token: '', key: 'k' })).toThrow(TypeError)
    expect(() => vaultTransitRootKey({ address: 'http://x', token, key: 'a/b' })).toThrow(TypeError)
  })
})
