import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError, memoryStore } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { azureKeyVaultRootKey } from '../src/index.ts'
import { countCallsThroughChain, decryptWithKekMovedToAnotherChain, describeWrapKek } from './chain.ts'
import { startFakeAzureKeyVault, type FakeAzureKeyVault } from './fakes/azure.ts'

const token = 'eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.kms-proxy-test-azure-token'
let fake: FakeAzureKeyVault

beforeAll(async () => {
  fake = await startFakeAzureKeyVault({ token, forbiddenToken: 'eyJ.no-permission', keys: ['app', 'other', 'rotating'] })
})
afterAll(() => fake?.close())

const root = (overrides = {}) => azureKeyVaultRootKey({ vaultUrl: fake.url, keyName: 'app', accessToken: token, backoffMs: 1, ...overrides })
const AAD = new TextEncoder().encode('kms-proxy/kek/v1\0\0\0\0\x07azure')

describeRootKey(createHarness(it), {
  name: 'azureKeyVaultRootKey (fake Key Vault)',
  make: () => root(),
  other: () => root({ keyName: 'other' }),
  secrets: [token],
  wrapKek: true,
})

describe('Azure Key Vault through a key chain', () => {
  it('one wrapkey per rotation, one unwrapkey per KEK per process, none per message', async () => {
    const { keks, used, encryptCalls, decryptCalls } = await countCallsThroughChain(root, fake.calls)
    expect([keks, used]).toEqual([4, 4])
    expect(encryptCalls).toEqual(Array(keks).fill('wrapkey'))
    expect(decryptCalls).toEqual(Array(used).fill('unwrapkey'))
  })

  it('binds the KEK AAD itself: a KEK moved to another chain is ERR_ROOT_KEY, found locally after one unwrapkey', async () => {
    const store = memoryStore()
    const a = await KeyChain.open({ rootKey: root(), store, name: 'a' })
    const encrypted = await a.encrypt('x')
    for (const r of await store.listKeks('a')) await store.putKekIfAbsent('b', r)
    fake.calls.length = 0
    const b = await KeyChain.open({ rootKey: root(), store, name: 'b' })
    const error = await b.decrypt(encrypted).catch((e) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/KEK moved to another chain or id/)
    expect(fake.calls).toEqual(['unwrapkey']) // the vault unwrapped it; the digest check refused it
  })

  it('wraps KEK || SHA-256(aad) with RSA-OAEP-256 and records the key version from kid', async () => {
    fake.requests.length = 0
    const { wrapped } = await root().newKek(AAD)
    expect(wrapped[0]).toBe(0x23)
    const version = new TextDecoder().decode(wrapped.subarray(2, 2 + wrapped[1]!))
    expect(version).toBe(fake.version('app'))
    expect(wrapped.length).toBe(2 + 32 + 256) // RSA-2048 block
    expect(fake.requests).toEqual([
      { method: 'POST', path: '/keys/app//wrapkey', op: 'wrapkey', apiVersion: '7.4', fields: ['alg', 'value'], alg: 'RSA-OAEP-256', authorized: true },
    ])
    fake.requests.length = 0
    await root().unwrapKek(wrapped, AAD)
    expect(fake.requests.map((r) => [r.path, r.alg])).toEqual([['/keys/app/{version}/unwrapkey', 'RSA-OAEP-256']])
  })

  it('KEKs wrapped before an Azure key rotation still unwrap; new ones use the new version', async () => {
    const before = await root({ keyName: 'rotating' }).newKek(AAD)
    const old = fake.version('rotating')
    const next = await fake.rotate('rotating')
    expect(next).not.toBe(old)
    const after = await root({ keyName: 'rotating' }).newKek(AAD)
    expect(new TextDecoder().decode(after.wrapped.subarray(2, 2 + after.wrapped[1]!))).toBe(next)
    await root({ keyName: 'rotating' }).unwrapKek(before.wrapped, AAD)
    await root({ keyName: 'rotating' }).unwrapKek(after.wrapped, AAD)
    // A pinned keyVersion keeps wrapping under that version.
    const pinned = await root({ keyName: 'rotating', keyVersion: old }).newKek(AAD)
    expect(new TextDecoder().decode(pinned.wrapped.subarray(2, 2 + pinned.wrapped[1]!))).toBe(old)
  })

  it('an access-token function is called per request', async () => {
    let n = 0
    const chain = await KeyChain.open({ rootKey: root({ accessToken: async () => (n++, token) }) })
    await chain.encrypt('x')
    expect(n).toBe(1)
  })
})

describe('when Azure Key Vault refuses or fails', () => {
  it('a wrong token is ERR_ROOT_KEY, not retryable, and the token is in no error', async () => {
    fake.calls.length = 0
    const error = await root({ accessToken: 'eyJ.wrong-token' }).newKek(AAD).catch((e) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/Unauthorized \(HTTP 401\): the KMS refused the credentials/)
    expect(fake.calls.length).toBe(1) // not retried
    const shown = `${String(error)} ${JSON.stringify(error)} ${error.stack} ${JSON.stringify(root())} ${String(root())}`
    expect(shown).not.toContain('eyJ')
  })

  it('a token without the key permission (403) is ERR_ROOT_KEY, not retryable', async () => {
    fake.calls.length = 0
    const error = await root({ accessToken: 'eyJ.no-permission' }).newKek(AAD).catch((e) => e)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/Forbidden \(HTTP 403\): the KMS refused the credentials/)
    expect(fake.calls).toEqual(['wrapkey'])
  })

  it('the fake answers a request without a token with Azure\'s 401 challenge', async () => {
    const response = await fetch(`${fake.url}/keys/app//wrapkey?api-version=7.4`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })
    expect(response.status).toBe(401)
    expect(response.headers.get('www-authenticate')).toMatch(/^Bearer authorization="https:\/\/login\.microsoftonline\.com\/[^"]+", resource="https:\/\/vault\.azure\.net"$/)
    expect(await response.json()).toMatchObject({ error: { code: 'Unauthorized' } })
  })

  it('a missing key or version is ERR_ROOT_KEY, not retryable', async () => {
    const error = await root({ keyName: 'none' }).newKek(AAD).catch((e) => e)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/KeyNotFound \(HTTP 404\): no such key/)
    const version = await root({ keyVersion: '0123456789abcdef0123456789abcdef' }).newKek(AAD).catch((e) => e)
    expect(version.message).toMatch(/KeyNotFound/)
  })

  it('retries 503s with backoff and succeeds', async () => {
    fake.fail(2)
    fake.calls.length = 0
    const chain = await KeyChain.open({ rootKey: root() })
    expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('x')))).toBe('x')
    expect(fake.calls).toEqual(['wrapkey', 'wrapkey', 'wrapkey'])
  })

  it('gives up after the retries with a retryable ERR_ROOT_KEY', async () => {
    fake.fail(1000)
    fake.calls.length = 0
    const error = await root({ retries: 2 }).newKek(AAD).catch((e) => e)
    fake.fail(0)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', true])
    expect(error.message).toMatch(/ServiceUnavailable \(HTTP 503\)/)
    expect(fake.calls.length).toBe(3)
    expect(String(error)).not.toContain(token)
  })

  it('a wrapped KEK of another kind or with a bad version is ERR_ROOT_KEY without a call', async () => {
    fake.calls.length = 0
    for (const bad of [Uint8Array.of(0x22, 1, 2), Uint8Array.of(0x23, 40, 1), Uint8Array.of(0x23, 2, 0x2f, 0x2e, 1)]) {
      await expect(root().unwrapKek(bad, AAD)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
    }
    expect(fake.calls).toEqual([])
  })

  it('bad options are TypeError', () => {
    expect(() => azureKeyVaultRootKey({ vaultUrl: 'not a url', keyName: 'k', accessToken: token })).toThrow(TypeError)
    expect(() => azureKeyVaultRootKey({ vaultUrl: 'http://vault.example.com', keyName: 'k', accessToken: token })).toThrow(/https/)
    expect(() => azureKeyVaultRootKey({ vaultUrl: 'https://v.vault.azure.net', keyName: 'a/b', accessToken: token })).toThrow(TypeError)
    expect(() => azureKeyVaultRootKey({ vaultUrl: 'https://v.vault.azure.net', keyName: 'k', keyVersion: '../x', accessToken: token })).toThrow(TypeError)
    expect(() => azureKeyVaultRootKey({ vaultUrl: 'https://v.vault.azure.net', keyName: 'k', accessToken: '' })).toThrow(TypeError)
    expect(() => azureKeyVaultRootKey({ vaultUrl: 'https://v.vault.azure.net', keyName: 'k', accessToken: token, apiVersion: 'latest' })).toThrow(TypeError)
    expect(() => azureKeyVaultRootKey(null as never)).toThrow(TypeError)
  })
})

describeWrapKek('Azure Key Vault', { root, calls: () => fake.calls, wrap: ['wrapkey'], unwrap: ['unwrapkey'], tag: 0x27, newKekTag: 0x23, length: 336 })
