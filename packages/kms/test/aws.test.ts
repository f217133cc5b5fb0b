import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createServer, type Server } from 'node:http'
import { SignatureV4 } from '@smithy/signature-v4'
import { HttpRequest } from '@smithy/protocol-http'
import { Sha256 } from '@aws-crypto/sha256-js'
import { KMSClient, DecryptCommand, GenerateDataKeyCommand } from '@aws-sdk/client-kms'
import { KeyChain, KmsProxyError, aesRootKey, memoryStore } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { awsKmsRootKey } from '../src/index.ts'
import { signV4 } from '../src/sigv4.ts'
import { startMoto, type Moto } from './fakes/moto.ts'
import { startFront, type Front } from './fakes/front.ts'
import { countCallsThroughChain, decryptWithKekMovedToAnotherChain, describeWrapKek } from './chain.ts'

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

/** A second moto, started with the first (they take seconds on a loaded machine), for the test that stops it. */
let stoppable: Promise<Moto>

beforeAll(async () => {
  stoppable = startMoto(credentials)
  stoppable.catch(() => {}) // awaited by its test
  moto = await startMoto(credentials)
  endpoint = moto.endpoint
  keyId = (await kms('CreateKey', {})).KeyMetadata.KeyId
  otherKeyId = (await kms('CreateKey', {})).KeyMetadata.KeyId
  await kms('CreateAlias', { AliasName: 'alias/kms-proxy-test', TargetKeyId: keyId })
}, 120_000) // startMoto may take up to 100 s on a loaded machine

afterAll(async () => {
  moto?.close()
  ;(await stoppable.catch(() => undefined))?.close()
})

const root = (overrides = {}) => awsKmsRootKey({ keyId, region: 'eu-central-1', credentials, endpoint, fetch: countingFetch, ...overrides })

describeRootKey(createHarness(it), {
  name: 'awsKmsRootKey (moto)',
  make: () => root(),
  other: () => root({ keyId: otherKeyId }),
  secrets: [credentials.secretAccessKey],
  wrapKek: true,
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

describe('SigV4 canonical path and query', () => {
  // Paths and queries as a caller may give them in an endpoint (a VPC endpoint or a gateway
  // with a path prefix), in the form fetch sends them: URL parsing encodes spaces and unicode,
  // keeps %, + and = as they are. Smithy's query is the decoded parameters of that same URL.
  const urls = [
    'https://kms.eu-central-1.amazonaws.com/a b/ü/',
    'https://kms.eu-central-1.amazonaws.com/100%/x+y/k=v/',
    'https://kms.eu-central-1.amazonaws.com/already%20encoded/%2F/%25',
    'https://kms.eu-central-1.amazonaws.com//double//slashes///',
    'https://kms.eu-central-1.amazonaws.com/./dot/../segments/.',
    "https://kms.eu-central-1.amazonaws.com/sub-delims/!'()*~/",
    'https://gw.example.com:8443/prefix/kms?b=2&a=1&a=0&a-b=3&c=x y&d=%2B&e=+&f=ü&g=&h&%C3%A9=%&X-Amz-Signature=ignored',
    'https://kms.eu-central-1.amazonaws.com/?z=1&Z=2&_=3&~=4',
  ]
  for (const href of urls) {
    it(`matches @smithy/signature-v4 for ${href}`, async () => {
      const url = new URL(href)
      const headers = { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.Decrypt' }
      const date = new Date('2026-11-30T05:00:00Z')
      const body = '{"KeyId":"k"}'
      const ours = await signV4({ method: 'POST', url, headers, body, region: 'eu-central-1', service: 'kms', credentials, date })
      const query: Record<string, string | string[]> = {}
      for (const [k, v] of url.searchParams) query[k] = k in query ? [query[k]!].flat().concat(v) : v
      const signer = new SignatureV4({ credentials, region: 'eu-central-1', service: 'kms', sha256: Sha256, applyChecksum: false })
      const request = new HttpRequest({ method: 'POST', protocol: 'https:', hostname: url.hostname, port: url.port ? Number(url.port) : undefined, path: url.pathname, query, headers: { ...headers, host: url.host }, body })
      const theirs = await signer.sign(request, { signingDate: date })
      expect(ours.authorization).toBe(theirs.headers.authorization)
    })
  }
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

describe('AWS KMS protocol details', () => {
  let front: Front
  beforeAll(async () => {
    front = await startFront(endpoint)
  })
  afterAll(() => front?.close())
  const via = (overrides = {}) => root({ endpoint: `${front.url}/`, fetch, backoffMs: 5, ...overrides })
  const throttled = { status: 400, body: '{"__type":"ThrottlingException","message":"Rate exceeded"}' }

  it('throttling (HTTP 400 ThrottlingException) is retried, and the call then succeeds', async () => {
    let left = 2
    front.requests = 0
    front.intercept = () => (left-- > 0 ? throttled : undefined)
    try {
      const chain = await KeyChain.open({ rootKey: via(), store: memoryStore() })
      expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('x')))).toBe('x')
      expect(left).toBeLessThan(0)
      expect(front.requests).toBe(3) // 2 throttled + GenerateDataKey (the chain keeps the KEK it made)
    } finally {
      front.intercept = undefined
    }
  })

  it('throttling past the retries is a retryable ERR_ROOT_KEY, and stats() says the root key is unavailable', async () => {
    const chain = await KeyChain.open({ rootKey: via({ retries: 2 }), store: memoryStore() })
    await chain.encrypt('x')
    front.requests = 0
    front.intercept = () => throttled
    try {
      const error = await chain.rotate().catch((e) => e)
      expect(error).toBeInstanceOf(KmsProxyError)
      expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', true])
      expect(error.message).toMatch(/ThrottlingException/)
      expect(front.requests).toBe(3)
      expect(chain.stats().rootKeyAvailable).toBe(false)
    } finally {
      front.intercept = undefined
    }
    await chain.rotate()
    expect(chain.stats().rootKeyAvailable).toBe(true)
  })

  it('an empty, missing or non-canonical CiphertextBlob from GenerateDataKey is ERR_ROOT_KEY, and nothing is stored', async () => {
    const plaintext = Buffer.alloc(16, 7).toString('base64')
    // atob, which the KMS roots used before, read the last two as AQIDBA== (a line break, nonzero leftover bits).
    const blobs = ['', undefined, '!!', 'AQIDBA==\n', 'AQIDBB==', 'AQIDBA']
    for (const answer of blobs.map((CiphertextBlob) => ({ CiphertextBlob, Plaintext: plaintext, KeyId: keyId }))) {
      front.intercept = () => ({ status: 200, body: JSON.stringify(answer) })
      try {
        const store = memoryStore()
        const chain = await KeyChain.open({ rootKey: via(), store })
        const error = await chain.encrypt('x').catch((e) => e)
        expect(error).toBeInstanceOf(KmsProxyError)
        expect([error.code, error.message]).toEqual(['ERR_ROOT_KEY', expect.stringMatching(/CiphertextBlob/)])
        expect(await store.listKeks('default')).toEqual([])
      } finally {
        front.intercept = undefined
      }
    }
  })

  /** A KMS whose clock is `serverSkewMs` off this machine's, and that refuses a request signed more than 5 minutes off its own. */
  function skewedKms(serverSkewMs: number, withDate = true) {
    const seen = { refused: 0, accepted: 0 }
    front.intercept = (req) => {
      const now = Date.now() + serverSkewMs
      const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(String(req.headers['x-amz-date']))
      const signed = m ? Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) : NaN
      if (Math.abs(signed - now) <= 5 * 60_000) return void seen.accepted++
      seen.refused++
      const stamp = new Date(now).toISOString().replace(/[-:]|\.\d{3}/g, '')
      return {
        status: 400,
        body: JSON.stringify({ __type: 'InvalidSignatureException', message: `Signature expired: ${req.headers['x-amz-date']} is now earlier than ${stamp} (${stamp} - 5 min.)` }),
        headers: withDate ? { date: new Date(now).toUTCString() } : ({} as Record<string, string>),
      }
    }
    return seen
  }

  it('a KMS whose clock is an hour ahead: the signing clock is corrected from its Date header, the call retried once, the correction kept', async () => {
    const seen = skewedKms(3_600_000)
    try {
      const store = memoryStore()
      const rootKey = via()
      const chain = await KeyChain.open({ rootKey, store })
      const encrypted = await chain.encrypt('skewed')
      expect(seen).toEqual({ refused: 1, accepted: 1 })
      await rootKey.newKek(new Uint8Array(8))
      expect(seen).toEqual({ refused: 1, accepted: 2 }) // the same root key now signs with the server's time
      const reader = await KeyChain.open({ rootKey: via(), store })
      expect(new TextDecoder().decode(await reader.decrypt(encrypted))).toBe('skewed')
      expect(seen).toEqual({ refused: 2, accepted: 3 }) // a new root key corrects once too
    } finally {
      front.intercept = undefined
    }
  })

  it('a host whose own clock is an hour behind (the now option): corrected the same way', async () => {
    const seen = skewedKms(0)
    try {
      const chain = await KeyChain.open({ rootKey: via({ now: () => Date.now() - 3_600_000 }), store: memoryStore() })
      expect(new TextDecoder().decode(await chain.decrypt(await chain.encrypt('late')))).toBe('late')
      expect(seen).toEqual({ refused: 1, accepted: 1 })
    } finally {
      front.intercept = undefined
    }
  })

  it('a signature error without a Date header, or with a Date that agrees with ours (a wrong secret), is not retried', async () => {
    const seen = skewedKms(3_600_000, false)
    try {
      const error = await via({ retries: 3 }).newKek(new Uint8Array(4)).catch((e) => e)
      expect([error.code, error.retryable, error.message]).toEqual(['ERR_ROOT_KEY', false, expect.stringMatching(/InvalidSignatureException/)])
      expect(seen).toEqual({ refused: 1, accepted: 0 })
      front.requests = 0
      front.intercept = () => ({
        status: 400,
        body: '{"__type":"InvalidSignatureException","message":"The request signature we calculated does not match the signature you provided."}',
        headers: { date: new Date().toUTCString() },
      })
      const wrong = await via({ retries: 3 }).newKek(new Uint8Array(4)).catch((e) => e)
      expect([wrong.code, wrong.retryable, wrong.message]).toEqual(['ERR_ROOT_KEY', false, expect.stringMatching(/InvalidSignatureException/)])
      expect(front.requests).toBe(1)
    } finally {
      front.intercept = undefined
    }
  })
})

describeWrapKek('AWS KMS', { root, calls: () => calls, base: countingFetch, wrap: ['GenerateDataKey'], unwrap: ['Decrypt'], tag: 0x24, newKekTag: 0x20 })

describe('AWS KMS as one root of several (a key chain on a second moto)', () => {
  it('addRoot: one GenerateDataKey per KEK (and one Decrypt to prove the root); the chain then opens through AWS KMS alone, and with moto stopped through the other root', async () => {
    // Started with the first moto; on a machine so loaded that it missed its 100 s, once more.
    const second = await stoppable.catch(() => (stoppable = startMoto(credentials)))
    try {
      const secondKey = (await second.kms('CreateKey', {})).KeyMetadata.KeyId
      const log: string[] = []
      const counting: typeof fetch = async (input, init) => {
        log.push((new Headers(init?.headers).get('x-amz-target') ?? '?').replace('TrentService.', ''))
        return fetch(input, init)
      }
      const kmsRoot = () => awsKmsRootKey({ keyId: secondKey, region: 'eu-central-1', credentials, endpoint: second.endpoint, fetch: counting, retries: 0, backoffMs: 1 })
      const mainBytes = crypto.getRandomValues(new Uint8Array(32))
      const store = memoryStore()
      const chain = await KeyChain.open({ roots: { main: aesRootKey(mainBytes) }, store, maxWrapsPerKek: 2, dekPoolSize: 0 })
      const encrypted: Uint8Array[] = []
      for (let i = 0; i < 20; i++) encrypted.push(await chain.encrypt(`record ${i}`))
      const ids = new Set((await store.listKeks('default')).map((r) => r.id))
      expect(ids.size).toBe(10) // 20 messages, 2 per KEK

      const report = await chain.addRoot('kms', kmsRoot())
      expect(report).toMatchObject({ name: 'kms', keks: ids.size, wrapped: ids.size, rootKeyWraps: ids.size })
      // One GenerateDataKey per KEK, and the one Decrypt that proves the new root before it is trusted.
      expect(log.filter((c) => c === 'GenerateDataKey').length).toBe(ids.size)
      expect(log.filter((c) => c === 'Decrypt').length).toBe(1)
      const kmsWraps = (await store.listKeks('default')).filter((r) => r.root === 'kms')
      expect(kmsWraps.length).toBe(ids.size)
      for (const r of kmsWraps) expect(r.wrapped[0]).toBe(0x24)

      log.length = 0
      const throughKms = await KeyChain.open({ roots: { kms: kmsRoot() }, store })
      for (const [i, e] of encrypted.entries()) expect(new TextDecoder().decode(await throughKms.decrypt(e))).toBe(`record ${i}`)
      expect(log).toEqual(Array(ids.size).fill('Decrypt'))

      second.close()
      await second.exited
      // AWS KMS first in the order given, and down: each KEK opens through the AES root instead.
      const fallback = await KeyChain.open({ roots: { kms: kmsRoot(), main: aesRootKey(mainBytes) }, store })
      for (const [i, e] of encrypted.entries()) expect(new TextDecoder().decode(await fallback.decrypt(e))).toBe(`record ${i}`)
    } finally {
      second.close()
    }
  }, 150_000)
})
