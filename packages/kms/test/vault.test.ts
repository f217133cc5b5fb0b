import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { vaultTransitRootKey } from '../src/index.ts'
import { countCallsThroughChain, decryptWithKekMovedToAnotherChain, describeWrapKek } from './chain.ts'
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
  wrapKek: true,
})

describe('Vault Transit through a key chain', () => {
  it('one random + encrypt per rotation, one decrypt per KEK per process, none per message', async () => {
    const { keks, used, encryptCalls, decryptCalls } = await countCallsThroughChain(root, fake.calls)
    expect([keks, used]).toEqual([4, 4])
    expect(encryptCalls).toEqual(Array(keks).fill(['random', 'encrypt']).flat())
    expect(decryptCalls).toEqual(Array(used).fill('decrypt'))
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
    const error = await decryptWithKekMovedToAnotherChain(root)
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

describeWrapKek('Vault Transit', { root, calls: () => fake.calls, wrap: ['encrypt'], unwrap: ['decrypt'], tag: 0x26, newKekTag: 0x22, length: 136 })
