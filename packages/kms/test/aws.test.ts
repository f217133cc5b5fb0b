import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createServer, type Server } from 'node:http'
import { SignatureV4 } from '@smithy/signature-v4'
import { HttpRequest } from '@smithy/protocol-http'
import { Sha256 } from '@aws-crypto/sha256-js'
import { KMSClient, DecryptCommand, GenerateDataKeyCommand } from '@aws-sdk/client-kms'
import { KeyChain, KmsProxyError, memoryStore } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { awsKmsRootKey, signV4 } from '../src/index.ts'
import { startMoto, type Moto } from './fakes/moto.ts'
import { countCallsThroughChain, decryptWithKekMovedToAnotherChain } from './chain.ts'

const credentials = { accessKeyId: 'AKIDKMSPROXYTEST', secretAccessKey: 'kms-proxy-test-secret-key/abc+def' }
let moto: Moto
let endpoint = ''
let keyId = ''
let otherKeyId = ''
const calls: string[] = []

/** Counts KMS calls by X-Amz-Target, then forwards them to moto. */
const countingFetch: typeof fetch = async (input, init) => {
  const target = new Headers(init?.headers).get('x-amz-target') ?? '?'
  calls.push(target.replace('TrentService.', ''))
  return fetch(input, init)
}

const kms = (action: string, payload: object) => moto.kms(action, payload)

beforeAll(async () => {
  moto = await startMoto(credentials)
  endpoint = moto.endpoint
  keyId = (await kms('CreateKey', {})).KeyMetadata.KeyId
  otherKeyId = (await kms('CreateKey', {})).KeyMetadata.KeyId
  await kms('CreateAlias', { AliasName: 'alias/kms-proxy-test', TargetKeyId: keyId })
}, 30_000)

afterAll(() => {
  moto?.close()
})

const root = (overrides = {}) => awsKmsRootKey({ keyId, region: 'eu-central-1', credentials, endpoint, fetch: countingFetch, ...overrides })

describeRootKey(createHarness(it), {
  name: 'awsKmsRootKey (moto)',
  make: () => root(),
  other: () => root({ keyId: otherKeyId }),
  secrets: [credentials.secretAccessKey],
})

describe('SigV4', () => {
  it('matches AWS\'s own signer (@smithy/signature-v4) byte for byte', async () => {
    const cases = [
      { region: 'eu-central-1', body: '{"KeyId":"alias/x"}', creds: credentials, date: new Date('2026-11-28T12:34:56Z') },
      { region: 'us-east-1', body: '{}', creds: { ...credentials, sessionToken: 'FwoGZXIvYXdzEJr//////////wEaDH session token' }, date: new Date('2026-01-01T00:00:00Z') },
      { region: 'ap-southeast-2', body: JSON.stringify({ Plaintext: 'AAAA', EncryptionContext: { 'a b': 'ü' } }), creds: credentials, date: new Date('2027-02-28T23:59:59Z') },
    ]
    for (const c of cases) {
      const url = new URL('https://kms.' + c.region + '.amazonaws.com/')
      const headers = { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.Decrypt' }
      const ours = await signV4({ method: 'POST', url, headers, body: c.body, region: c.region, service: 'kms', credentials: c.creds, date: c.date })
      const signer = new SignatureV4({ credentials: c.creds, region: c.region, service: 'kms', sha256: Sha256, applyChecksum: false })
      const request = new HttpRequest({ method: 'POST', protocol: 'https:', hostname: url.hostname, path: '/', headers: { ...headers, host: url.hostname }, body: c.body })
      const theirs = await signer.sign(request, { signingDate: c.date })
      expect(ours.authorization).toBe(theirs.headers.authorization)
      expect(ours['x-amz-date']).toBe(theirs.headers['x-amz-date'])
    }
  })
})

describe('AWS KMS through a key chain', () => {
  it('one GenerateDataKey per rotation, one Decrypt per KEK per process, none per message', async () => {
    // No DEK pool in the helper: with it, a KEK may be made ahead of need, in the background.
    const { keks, used, encryptCalls, decryptCalls } = await countCallsThroughChain(root, calls)
    expect([keks, used]).toEqual([4, 4])
    expect(encryptCalls).toEqual(Array(keks).fill('GenerateDataKey'))
    expect(decryptCalls).toEqual(Array(used).fill('Decrypt'))
    console.log(`AWS KMS (moto): 2,000 encryptions made ${keks} GenerateDataKey calls (maxWrapsPerKek 500); 2,000 decryptions in a new chain made ${used} Decrypt calls`)
  })

  it('the encryption context binds each KEK to its chain and id; a wrong context is ERR_ROOT_KEY', async () => {
    const error = await decryptWithKekMovedToAnotherChain(root)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect(error.code).toBe('ERR_ROOT_KEY')
    expect(error.message).toMatch(/InvalidCiphertextException/)
  })

  it('works with a key alias', async () => {
    const chain = await KeyChain.open({ rootKey: root({ keyId: 'alias/kms-proxy-test' }) })
    expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('via alias')))).toBe('via alias')
  })

  it('speaks the same protocol as the official @aws-sdk/client-kms', async () => {
    const sdk = new KMSClient({ region: 'eu-central-1', endpoint, credentials })
    const aad = new TextEncoder().encode('kms-proxy/kek/v1\0\0\0\0\x01sdk')
    const ctx = { 'kms-proxy:kek': Buffer.from(aad).toString('base64') }
    // Ours wraps, the SDK unwraps.
    const { wrapped } = await root().newKek(aad)
    const out = await sdk.send(new DecryptCommand({ CiphertextBlob: wrapped.subarray(1), EncryptionContext: ctx, KeyId: keyId }))
    expect(out.Plaintext?.length).toBe(16)
    // The SDK wraps, ours unwraps into a usable KEK.
    const made = await sdk.send(new GenerateDataKeyCommand({ KeyId: keyId, KeySpec: 'AES_128', EncryptionContext: ctx }))
    const kek = await root().unwrapKek(Uint8Array.of(0x20, ...made.CiphertextBlob!), aad)
    const theirs = await crypto.subtle.importKey('raw', new Uint8Array(made.Plaintext!), 'AES-GCM', false, ['decrypt'])
    const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv: new Uint8Array(12) }, kek, new Uint8Array(4))
    expect(new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: new Uint8Array(12) }, theirs, sealed))).toEqual(new Uint8Array(4))
  })
})

describe('when the KMS misbehaves', () => {
  let flaky: Server
  let flakyUrl = ''
  let failuresLeft = 0
  let mode: '503' | 'hang' = '503'
  beforeAll(async () => {
    flaky = createServer(async (req, res) => {
      if (failuresLeft > 0) {
        failuresLeft--
        if (mode === 'hang') return // never answers
        res.writeHead(503, { 'content-type': 'application/x-amz-json-1.1' })
        return res.end('{"__type":"KMSInternalException"}')
      }
      const chunks: Buffer[] = []
      for await (const c of req) chunks.push(c as Buffer)
      const upstream = await fetch(endpoint, { method: 'POST', headers: req.headers as Record<string, string>, body: Buffer.concat(chunks) })
      res.writeHead(upstream.status, { 'content-type': 'application/x-amz-json-1.1' })
      res.end(Buffer.from(await upstream.arrayBuffer()))
    })
    await new Promise<void>((r) => flaky.listen(0, '127.0.0.1', r))
    flakyUrl = `http://127.0.0.1:${(flaky.address() as { port: number }).port}/`
  })
  afterAll(() => {
    flaky.closeAllConnections()
    flaky.close()
  })

  it('retries 503s with backoff and succeeds', async () => {
    failuresLeft = 2
    mode = '503'
    const chain = await KeyChain.open({ rootKey: root({ endpoint: flakyUrl, backoffMs: 5 }) })
    expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('x')))).toBe('x')
    expect(failuresLeft).toBe(0)
  })

  it('gives up with a retryable ERR_ROOT_KEY; the chain keeps encrypting under its KEK meanwhile', async () => {
    mode = '503'
    failuresLeft = 0
    const chain = await KeyChain.open({ rootKey: root({ endpoint: flakyUrl, backoffMs: 1, retries: 1 }), store: memoryStore() })
    await chain.encrypt('first')
    failuresLeft = 1000
    for (let i = 0; i < 100; i++) await chain.encrypt('while down') // no KMS call needed
    const error = await chain.rotate().catch((e) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', true])
    expect(error.message).toMatch(/KMSInternalException/)
    failuresLeft = 0
  })

  it('times out a KMS that never answers', async () => {
    mode = 'hang'
    failuresLeft = 1
    const chain = await KeyChain.open({ rootKey: root({ endpoint: flakyUrl, timeoutMs: 200, retries: 0 }) })
    const error = await chain.encrypt('x').catch((e) => e)
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', true])
    expect(String(error)).not.toContain(credentials.secretAccessKey)
  })

  it('bad options are TypeError', () => {
    expect(() => awsKmsRootKey({ keyId: '', region: 'x', credentials })).toThrow(TypeError)
    expect(() => awsKmsRootKey({ keyId: 'k', region: 'EU 1', credentials })).toThrow(TypeError)
    expect(() => awsKmsRootKey({ keyId: 'k', region: 'eu-west-1', credentials: {} as never })).toThrow(TypeError)
  })
})

describe('stats() while the KMS is down', () => {
  it('says so, and says when it is back', async () => {
    let down = false
    const flakyFetch: typeof fetch = (input, init) =>
      down ? Promise.resolve(new Response('{"__type":"KMSInternalException"}', { status: 503 })) : fetch(input, init)
    const chain = await KeyChain.open({ rootKey: root({ fetch: flakyFetch, retries: 0 }), store: memoryStore() })
    await chain.encrypt('x')
    expect(chain.stats().rootKeyAvailable).toBe(true)
    down = true
    await expect(chain.rotate()).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', retryable: true })
    expect(chain.stats()).toMatchObject({ rootKeyAvailable: false, rootKeyLastError: expect.stringMatching(/ERR_ROOT_KEY: AWS KMS GenerateDataKey failed: KMSInternalException/) })
    for (let i = 0; i < 50; i++) await chain.encrypt('still encrypting under the current KEK')
    down = false
    await chain.rotate()
    expect(chain.stats().rootKeyAvailable).toBe(true)
  })
})
