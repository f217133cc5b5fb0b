/**
 * What the four KMS root keys share about the transport: a deadline that covers the whole
 * answer (a server that stalls mid-body), and the plain-http rule (loopback, or a host the caller
 * names). Each runs against its real local server: moto for AWS, the fakes for the other three.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, memoryStore, type RootKey } from '@kms-proxy/core'
import { awsKmsRootKey, azureKeyVaultRootKey, gcpKmsRootKey, vaultTransitRootKey } from '../src/index.ts'
import { startMoto, type Moto } from './fakes/moto.ts'
import { startFakeGcpKms, type FakeGcpKms } from './fakes/gcp.ts'
import { startFakeVault, type FakeVault } from './fakes/vault.ts'
import { startFakeAzureKeyVault, type FakeAzureKeyVault } from './fakes/azure.ts'
import { startFront, type Front } from './fakes/front.ts'
import { within } from './chain.ts'

const credentials = { accessKeyId: 'AKIDKMSPROXYTRANSPORT', secretAccessKey: 'kms-proxy-transport-secret/abc+def' }
const gcpKey = 'projects/p/locations/europe-west1/keyRings/r/cryptoKeys/app'
let moto: Moto
let gcp: FakeGcpKms
let vault: FakeVault
let azure: FakeAzureKeyVault
let awsKeyId = ''

beforeAll(async () => {
  ;[moto, gcp, vault, azure] = await Promise.all([
    startMoto(credentials),
    startFakeGcpKms({ token: 'ya29.transport', keys: [gcpKey] }),
    startFakeVault({ token: 'hvs.transport', keys: ['app'] }),
    startFakeAzureKeyVault({ token: 'eyJ.transport', keys: ['app'] }),
  ])
  awsKeyId = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
}, 120_000) // startMoto may take up to 100 s on a loaded machine

afterAll(async () => {
  moto?.close()
  await Promise.all([gcp?.close(), vault?.close(), azure?.close()])
})

/** Each KMS root key with its server's URL and any other options; `url` is that KMS's URL option. */
const kmss: { name: string; server: () => string; make: (url: string, more?: object) => RootKey }[] = [
  { name: 'AWS KMS', server: () => moto.endpoint, make: (endpoint, more) => awsKmsRootKey({ keyId: awsKeyId, region: 'eu-central-1', credentials, endpoint, ...more }) },
  { name: 'Google Cloud KMS', server: () => gcp.url, make: (endpoint, more) => gcpKmsRootKey({ keyName: gcpKey, accessToken: 'ya29.transport', endpoint, ...more }) },
  { name: 'Vault Transit', server: () => vault.url, make: (address, more) => vaultTransitRootKey({ address, token: 'hvs.transport', key: 'app', ...more }) },
  { name: 'Azure Key Vault', server: () => azure.url, make: (vaultUrl, more) => azureKeyVaultRootKey({ vaultUrl, keyName: 'app', accessToken: 'eyJ.transport', ...more }) },
]

describe('a KMS that sends the headers and then stalls the body', () => {
  for (const kms of kmss) {
    it(`${kms.name}: the call fails within its timeout as a retryable ERR_ROOT_KEY; a key chain decrypts again once the KMS answers`, async () => {
      const front: Front = await startFront(kms.server())
      try {
        const root = () => kms.make(front.url, { timeoutMs: 400, retries: 1, backoffMs: 1 })
        const store = memoryStore()
        const writer = await KeyChain.open({ rootKey: root(), store })
        const encrypted = await writer.encrypt('kept')
        const [record] = await store.listKeks('default')

        front.intercept = () => 'stall'
        const started = Date.now()
        const direct = await within(5_000, root().unwrapKek(record!.wrapped, new Uint8Array(8)).catch((e) => e))
        expect([direct.code, direct.retryable]).toEqual(['ERR_ROOT_KEY', true])
        expect(direct.message).toMatch(/did not answer/)
        const elapsed = Date.now() - started
        expect(elapsed).toBeGreaterThanOrEqual(700) // two attempts of 400 ms each, none cut short

        const reader = await KeyChain.open({ rootKey: root(), store })
        const failed = await within(5_000, reader.decrypt(encrypted).catch((e) => e))
        expect([failed.code, failed.retryable]).toEqual(['ERR_ROOT_KEY', true])
        expect(reader.stats().rootKeyAvailable).toBe(false)

        front.intercept = undefined
        expect(new TextDecoder().decode(await within(5_000, reader.decrypt(encrypted)))).toBe('kept')
        expect(reader.stats().rootKeyAvailable).toBe(true)
        console.log(`${kms.name}: stalled body, timeoutMs 400 and 1 retry: failed after ${elapsed} ms`)
      } finally {
        await front.close()
      }
    }, 30_000)
  }
})

describe('plain http', () => {
  for (const kms of kmss) {
    it(`${kms.name}: refused to a non-loopback host (TypeError, no request); allowed on loopback and to a host named in plainHttpHosts`, async () => {
      let requests = 0
      const counting: typeof fetch = (input, init) => (requests++, fetch(input, init))
      expect(() => kms.make('http://kms.example.invalid', { fetch: counting })).toThrow(TypeError)
      expect(() => kms.make('http://kms.example.invalid', { fetch: counting })).toThrow(/plainHttpHosts/)
      expect(() => kms.make('http://kms.example.invalid', { fetch: counting, plainHttpHosts: ['other.example.invalid'] })).toThrow(TypeError)
      expect(requests).toBe(0)

      const port = new URL(kms.server()).port
      for (const host of ['localhost', '127.0.0.1', '[::1]', '127.1.2.3']) expect(() => kms.make(`http://${host}:${port}`)).not.toThrow()
      await kms.make(kms.server(), { fetch: counting }).newKek(new Uint8Array(8))

      // Named: the requests go to http://kms.example.invalid:port, delivered to the loopback server.
      const named = `http://kms.example.invalid:${port}`
      const deliver: typeof fetch = (input, init) => (requests++, fetch(String(input).replace('kms.example.invalid', '127.0.0.1'), init))
      const root = kms.make(named, { fetch: deliver, plainHttpHosts: ['KMS.example.invalid'] })
      const before = requests
      const { wrapped } = await root.newKek(new Uint8Array(8))
      await root.unwrapKek(wrapped, new Uint8Array(8))
      expect(requests).toBeGreaterThan(before)
      expect(() => kms.make('https://kms.example.invalid', { plainHttpHosts: 'kms.example.invalid' })).toThrow(TypeError)
    })
  }
})
