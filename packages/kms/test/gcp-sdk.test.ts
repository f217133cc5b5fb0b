/**
 * The fake Cloud KMS and gcpKmsRootKey checked against Google's own client, @google-cloud/kms
 * (KeyManagementServiceClient) in its HTTP/JSON REST mode (`fallback: true`, protocol http,
 * apiEndpoint 127.0.0.1), which needs no TLS. Its auth client is a stub that adds a bearer token,
 * as google-auth-library's clients do.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyManagementServiceClient } from '@google-cloud/kms'
import { gcpKmsRootKey } from '../src/index.ts'
import { startFakeGcpKms, type FakeGcpKms } from './fakes/gcp.ts'

const token = 'ya29.kms-proxy-sdk-token'
const keyName = 'projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k'
const aad = new TextEncoder().encode('kms-proxy/kek/v1\0\0\0\0\x0bgcp-sdk')
let fake: FakeGcpKms

beforeAll(async () => {
  fake = await startFakeGcpKms({ token, keys: [keyName] })
})
afterAll(() => fake?.close())

/** The two methods the REST transport uses: fetch (adds the token) and getRequestHeaders. */
const authClient = (bearer: string) => ({
  async getRequestHeaders() {
    return new Headers({ authorization: `Bearer ${bearer}` })
  },
  async fetch(url: string, init: { method: string; headers: Headers; body?: string | Uint8Array; signal?: AbortSignal }) {
    const headers = new Headers(init.headers)
    headers.set('authorization', `Bearer ${bearer}`)
    return fetch(url, { method: init.method, headers, body: init.body as BodyInit | undefined, signal: init.signal })
  },
})

const sdk = (bearer = token) => {
  const port = Number(new URL(fake.url).port)
  // authClient is typed as google-auth-library's AuthClient; the transport needs only these two methods.
  return new KeyManagementServiceClient({ fallback: true, protocol: 'http', apiEndpoint: '127.0.0.1', port, authClient: authClient(bearer) as never })
}
const ours = () => gcpKmsRootKey({ keyName, accessToken: token, endpoint: fake.url, backoffMs: 1 })

async function sameKek(kek: CryptoKey, raw: Uint8Array): Promise<boolean> {
  const theirs = await crypto.subtle.importKey('raw', raw as Uint8Array<ArrayBuffer>, 'AES-GCM', false, ['decrypt'])
  const iv = new Uint8Array(12)
  const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, kek, Uint8Array.of(1, 2, 3))
  return (await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, theirs, sealed)).byteLength === 3
}

describe('fake Cloud KMS vs @google-cloud/kms (REST fallback)', () => {
  it('the SDK calls generateRandomBytes, encrypt and decrypt on the fake', async () => {
    const client = sdk()
    const [random] = await client.generateRandomBytes({ location: 'projects/p/locations/europe-west1', lengthBytes: 16, protectionLevel: 'HSM' })
    expect(random.data?.length).toBe(16)
    const [sealed] = await client.encrypt({ name: keyName, plaintext: random.data, additionalAuthenticatedData: aad })
    const [opened] = await client.decrypt({ name: keyName, ciphertext: sealed.ciphertext, additionalAuthenticatedData: aad })
    expect(Buffer.from(opened.plaintext as Uint8Array)).toEqual(Buffer.from(random.data as Uint8Array))
    await client.close()
  })

  it('what gcpKmsRootKey wraps, the SDK decrypts; what the SDK encrypts, gcpKmsRootKey unwraps', async () => {
    const client = sdk()
    const { kek, wrapped } = await ours().newKek(aad)
    // slice, not subarray: in @google-cloud/kms 6.3 / google-gax 6.17 REST mode, a bytes field given
    // as a view with a byteOffset is encoded from the start of its buffer (Uint8Array.of(9, 1, 2, 3)
    // .subarray(1) goes out as "CQEC", bytes 9 1 2), so the view must own its buffer.
    const [opened] = await client.decrypt({ name: keyName, ciphertext: wrapped.slice(1), additionalAuthenticatedData: aad })
    expect(await sameKek(kek, opened.plaintext as Uint8Array)).toBe(true)
    const raw = crypto.getRandomValues(new Uint8Array(16))
    const [sealed] = await client.encrypt({ name: keyName, plaintext: raw, additionalAuthenticatedData: aad })
    const unwrapped = await ours().unwrapKek(new Uint8Array([0x21, ...(sealed.ciphertext as Uint8Array)]), aad)
    expect(await sameKek(unwrapped, raw)).toBe(true)
    await client.close()
  })

  it('the AAD binds for the SDK too, and the SDK reads the fake\'s errors as gRPC statuses', async () => {
    const client = sdk()
    const { wrapped } = await ours().newKek(aad)
    const wrong = await client.decrypt({ name: keyName, ciphertext: wrapped.slice(1), additionalAuthenticatedData: Uint8Array.of(1) }).catch((e) => e)
    expect(wrong.code).toBe(3) // INVALID_ARGUMENT
    const missing = await client.encrypt({ name: `${keyName}x`, plaintext: Uint8Array.of(1) }).catch((e) => e)
    expect(missing.code).toBe(5) // NOT_FOUND
    await client.close()
    const refused = await sdk('ya29.wrong').encrypt({ name: keyName, plaintext: Uint8Array.of(1) }).catch((e) => e)
    expect(refused.code).toBe(16) // UNAUTHENTICATED
  })

  it('gcpKmsRootKey sends what the SDK sends: paths and body fields (the SDK asks for numeric enums)', async () => {
    const client = sdk()
    fake.requests.length = 0
    const [random] = await client.generateRandomBytes({ location: 'projects/p/locations/europe-west1', lengthBytes: 16, protectionLevel: 'HSM' })
    const [sealed] = await client.encrypt({ name: keyName, plaintext: random.data, additionalAuthenticatedData: aad })
    await client.decrypt({ name: keyName, ciphertext: sealed.ciphertext, additionalAuthenticatedData: aad })
    const theirs = fake.requests.splice(0)
    const { wrapped } = await ours().newKek(aad)
    await ours().unwrapKek(wrapped, aad)
    const mine = fake.requests.splice(0)
    expect(mine.map((r) => [r.path, r.fields])).toEqual(theirs.map((r) => [r.path, r.fields]))
    expect(mine.map((r) => r.path)).toEqual([
      '/v1/projects/p/locations/europe-west1:generateRandomBytes',
      `/v1/${keyName}:encrypt`,
      `/v1/${keyName}:decrypt`,
    ])
    expect(new Set(theirs.map((r) => r.alt))).toEqual(new Set(['json;enum-encoding=int']))
    await client.close()
  })
})
