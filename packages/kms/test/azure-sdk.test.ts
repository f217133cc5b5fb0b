/**
 * The fake Azure Key Vault and azureKeyVaultRootKey checked against Microsoft's own client,
 * @azure/keyvault-keys (CryptographyClient, KeyClient). The SDK sends bearer tokens over https
 * only, so the fake also listens on https with a self-signed certificate made here by openssl,
 * trusted by this client's https agent alone. Its challenge flow is followed as on Azure: a first
 * request without a token, a 401 with WWW-Authenticate, then getToken for the challenged scope.
 * Resource verification is off because the fake is 127.0.0.1, not *.vault.azure.net.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent } from 'node:https'
import { constants, createHash, createPublicKey, publicEncrypt, randomBytes } from 'node:crypto'
import { CryptographyClient, KeyClient } from '@azure/keyvault-keys'
import type { AccessToken, GetTokenOptions, TokenCredential } from '@azure/core-auth'
import { createDefaultHttpClient, type HttpClient } from '@azure/core-rest-pipeline'
import { azureKeyVaultRootKey } from '../src/index.ts'
import { startFakeAzureKeyVault, type FakeAzureKeyVault } from './fakes/azure.ts'

const token = 'eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.kms-proxy-sdk-token'
const aad = new TextEncoder().encode('kms-proxy/kek/v1\0\0\0\0\x09azure-sdk')
let fake: FakeAzureKeyVault
let dir = ''
let httpClient: HttpClient
const tokenRequests: { scopes: string[]; tenantId?: string }[] = []

const credential: TokenCredential = {
  async getToken(scopes: string | string[], options?: GetTokenOptions): Promise<AccessToken> {
    tokenRequests.push({ scopes: [scopes].flat(), ...(options?.tenantId ? { tenantId: options.tenantId } : {}) })
    return { token, expiresOnTimestamp: Date.now() + 3_600_000 }
  },
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kms-azure-tls-'))
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
  ], { stdio: 'ignore' })
  const tls = { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert: readFileSync(join(dir, 'cert.pem'), 'utf8') }
  fake = await startFakeAzureKeyVault({ token, keys: ['app'], tls })
  // This client trusts the test certificate; nothing else in the worker does.
  const agent = new Agent({ ca: tls.cert, keepAlive: false })
  const inner = createDefaultHttpClient()
  httpClient = { sendRequest: (request) => ((request.agent = agent), inner.sendRequest(request)) }
})
afterAll(async () => {
  await fake?.close()
  if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
})

const sdkOptions = (serviceVersion?: string) => ({ httpClient, disableChallengeResourceVerification: true, retryOptions: { maxRetries: 0 }, ...(serviceVersion ? { serviceVersion } : {}) })
const ours = () => azureKeyVaultRootKey({ vaultUrl: fake.url, keyName: 'app', accessToken: token, backoffMs: 1 })
const sha256 = (b: Uint8Array) => new Uint8Array(createHash('sha256').update(b).digest())
const versionIn = (wrapped: Uint8Array) => new TextDecoder().decode(wrapped.subarray(2, 2 + wrapped[1]!))

/** Same key? Seal under one, open under the other. */
async function sameKek(kek: CryptoKey, raw: Uint8Array): Promise<boolean> {
  const theirs = await crypto.subtle.importKey('raw', raw as Uint8Array<ArrayBuffer>, 'AES-GCM', false, ['decrypt'])
  const iv = new Uint8Array(12)
  const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, kek, Uint8Array.of(1, 2, 3))
  return (await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, theirs, sealed)).byteLength === 3
}

describe('fake Azure Key Vault vs @azure/keyvault-keys', () => {
  it('the SDK follows the fake\'s 401 challenge and asks its credential for the challenged scope and tenant', async () => {
    fake.calls.length = 0
    tokenRequests.length = 0
    const client = new CryptographyClient(`${fake.httpsUrl}/keys/app`, credential, sdkOptions())
    const { result } = await client.wrapKey('RSA-OAEP-256', randomBytes(48))
    expect(result.length).toBe(256)
    expect(fake.calls).toEqual(['challenge', 'get', 'wrapkey'])
    expect(tokenRequests).toEqual([{ scopes: ['https://vault.azure.net/.default'], tenantId: '72f988bf-86f1-41af-91ab-2d7cd011db47' }])
  })

  it('what the SDK wraps, azureKeyVaultRootKey unwraps (and the fake\'s kid gives the version)', async () => {
    const kek = randomBytes(16)
    const client = new CryptographyClient(`${fake.httpsUrl}/keys/app/${fake.version('app')}`, credential, sdkOptions())
    const { result } = await client.wrapKey('RSA-OAEP-256', new Uint8Array([...kek, ...sha256(aad)]))
    const version = new TextEncoder().encode(fake.version('app'))
    const wrapped = new Uint8Array([0x23, version.length, ...version, ...result])
    expect(await sameKek(await ours().unwrapKek(wrapped, aad), kek)).toBe(true)
  })

  it('what azureKeyVaultRootKey wraps, the SDK unwraps to KEK || SHA-256(aad)', async () => {
    const { kek, wrapped } = await ours().newKek(aad)
    const client = new CryptographyClient(`${fake.httpsUrl}/keys/app/${versionIn(wrapped)}`, credential, sdkOptions())
    const { result } = await client.unwrapKey('RSA-OAEP-256', wrapped.subarray(2 + wrapped[1]!))
    expect(result.length).toBe(48)
    expect(new Uint8Array(result.subarray(16))).toEqual(sha256(aad))
    expect(await sameKek(kek, result.subarray(0, 16))).toBe(true)
  })

  it('the fake\'s RSA-OAEP-256 is the standard one: a KEK sealed locally with the public JWK the SDK fetched unwraps', async () => {
    const key = await new KeyClient(fake.httpsUrl!, credential, sdkOptions()).getKey('app')
    expect([key.keyType, key.properties.version]).toEqual(['RSA', fake.version('app')])
    const jwk = { kty: 'RSA', n: Buffer.from(key.key!.n!).toString('base64url'), e: Buffer.from(key.key!.e!).toString('base64url') }
    const kek = randomBytes(16)
    const sealed = publicEncrypt({ key: createPublicKey({ key: jwk, format: 'jwk' }), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.concat([kek, sha256(aad)]))
    const version = new TextEncoder().encode(key.properties.version!)
    expect(await sameKek(await ours().unwrapKek(new Uint8Array([0x23, version.length, ...version, ...sealed]), aad), kek)).toBe(true)
  })

  it('azureKeyVaultRootKey sends what the SDK sends: path, api-version, method, body fields, alg', async () => {
    const authorized = (op: string) => fake.requests.filter((r) => r.authorized && r.op === op)
    // The SDK pinned to our default api-version, without a key version (as our newKek) and with one (as our unwrapKek).
    fake.requests.length = 0
    const sdk = new CryptographyClient(`${fake.httpsUrl}/keys/app`, credential, sdkOptions('7.4'))
    const { result } = await sdk.wrapKey('RSA-OAEP-256', new Uint8Array(48))
    const pinned = new CryptographyClient(`${fake.httpsUrl}/keys/app/${fake.version('app')}`, credential, sdkOptions('7.4'))
    await pinned.unwrapKey('RSA-OAEP-256', result)
    const theirs = [...authorized('wrapkey'), ...authorized('unwrapkey')]
    fake.requests.length = 0
    const { wrapped } = await ours().newKek(aad)
    await ours().unwrapKek(wrapped, aad)
    expect(fake.requests).toEqual(theirs)
    expect(theirs).toEqual([
      { method: 'POST', path: '/keys/app//wrapkey', op: 'wrapkey', apiVersion: '7.4', fields: ['alg', 'value'], alg: 'RSA-OAEP-256', authorized: true },
      { method: 'POST', path: '/keys/app/{version}/unwrapkey', op: 'unwrapkey', apiVersion: '7.4', fields: ['alg', 'value'], alg: 'RSA-OAEP-256', authorized: true },
    ])
  })

  it('the fake accepts the SDK\'s own newest api-version, and the SDK reads the fake\'s errors', async () => {
    fake.requests.length = 0
    const client = new CryptographyClient(`${fake.httpsUrl}/keys/app/${fake.version('app')}`, credential, sdkOptions())
    await client.wrapKey('RSA-OAEP-256', new Uint8Array(48))
    const versions = new Set(fake.requests.filter((r) => r.authorized).map((r) => r.apiVersion))
    expect(versions.size).toBe(1)
    expect([...versions][0]).toMatch(/^\d{4}-\d{2}-\d{2}$/)
    const error = await client.unwrapKey('RSA-OAEP-256', new Uint8Array(256)).catch((e) => e)
    expect([error.statusCode, error.code]).toEqual([400, 'BadParameter'])
    const missing = await new CryptographyClient(`${fake.httpsUrl}/keys/none`, credential, sdkOptions()).wrapKey('RSA-OAEP-256', new Uint8Array(48)).catch((e) => e)
    expect([missing.statusCode, missing.code]).toEqual([404, 'KeyNotFound'])
  })
})
