import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { gcpKmsRootKey } from '../src/index.ts'
import { countCallsThroughChain, decryptWithKekMovedToAnotherChain, describeWrapKek } from './chain.ts'
import { startFakeGcpKms, type FakeGcpKms } from './fakes/gcp.ts'

const token = 'ya29.kms-proxy-test-access-token'
const keyName = 'projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k'
const otherKeyName = 'projects/p/locations/europe-west1/keyRings/r/cryptoKeys/other'
let fake: FakeGcpKms

beforeAll(async () => {
  fake = await startFakeGcpKms({ token, keys: [keyName, otherKeyName] })
})
afterAll(() => fake?.close())

const root = (overrides = {}) => gcpKmsRootKey({ keyName, accessToken: token, endpoint: fake.url, backoffMs: 1, ...overrides })

describeRootKey(createHarness(it), {
  name: 'gcpKmsRootKey (fake Cloud KMS)',
  make: () => root(),
  other: () => root({ keyName: otherKeyName }),
  secrets: [token],
  wrapKek: true,
})

describe('Google Cloud KMS through a key chain', () => {
  it('one generateRandomBytes + encrypt per rotation, one decrypt per KEK per process, none per message', async () => {
    const { keks, used, encryptCalls, decryptCalls } = await countCallsThroughChain(root, fake.calls)
    expect([keks, used]).toEqual([4, 4])
    expect(encryptCalls).toEqual(Array(keks).fill(['generateRandomBytes', 'encrypt']).flat())
    expect(decryptCalls).toEqual(Array(used).fill('decrypt'))
  })

  it('additionalAuthenticatedData binds each KEK to its chain and id', async () => {
    const error = await decryptWithKekMovedToAnotherChain(root)
    expect([error.code, error.message]).toEqual(['ERR_ROOT_KEY', expect.stringMatching(/INVALID_ARGUMENT/)])
  })

  it('an access-token function is called per request', async () => {
    let n = 0
    const chain = await KeyChain.open({ rootKey: root({ accessToken: async () => (n++, token) }) })
    await chain.encrypt('x')
    expect(n).toBe(2)
  })
})

describe('when Cloud KMS refuses or fails', () => {
  it('a wrong token is ERR_ROOT_KEY, not retryable, and the token is in no error', async () => {
    fake.calls.length = 0
    const error = await root({ accessToken: 'ya29.wrong-token' }).newKek(new Uint8Array(4)).catch((e) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/refused the credentials/)
    expect(fake.calls.length).toBe(1) // not retried
    const shown = `${String(error)} ${JSON.stringify(error)} ${error.stack} ${JSON.stringify(root())} ${String(root())}`
    expect(shown).not.toContain('ya29.')
  })

  it('a missing key is ERR_ROOT_KEY, not retryable', async () => {
    const error = await root({ keyName: 'projects/p/locations/europe-west1/keyRings/r/cryptoKeys/none' }).newKek(new Uint8Array(4)).catch((e) => e)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
    expect(error.message).toMatch(/NOT_FOUND.*no such key/)
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
    expect(error.message).toMatch(/UNAVAILABLE/)
    expect(String(error)).not.toContain(token)
  })

  it('a 200 answer that is not JSON (a captive portal, a proxy page) is ERR_ROOT_KEY, not a SyntaxError', async () => {
    const portal: typeof fetch = async () => new Response('<html>sign in to the proxy</html>', { status: 200, headers: { 'content-type': 'text/html' } })
    const error = await root({ fetch: portal }).newKek(new Uint8Array(4)).catch((e) => e)
    expect([error.code, error.retryable, error.message]).toEqual(['ERR_ROOT_KEY', false, 'Google Cloud KMS generateRandomBytes returned no JSON object'])
  })

  it('bad options are TypeError', () => {
    expect(() => gcpKmsRootKey({ keyName: 'k', accessToken: token })).toThrow(TypeError)
    expect(() => gcpKmsRootKey({ keyName, accessToken: '' })).toThrow(TypeError)
  })
})

describeWrapKek('Google Cloud KMS', { root, calls: () => fake.calls, wrap: ['encrypt'], unwrap: ['decrypt'], tag: 0x25, newKekTag: 0x21 })
