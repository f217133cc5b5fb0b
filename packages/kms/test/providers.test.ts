/**
 * The credential providers against real servers on 127.0.0.1: moto's STS (the open-source AWS
 * emulator) for web identity, and local servers written from the documentation of the EC2
 * instance metadata service, the container credentials endpoint, the Google metadata server and
 * Azure's managed identity endpoints (fakes/metadata.ts), each checked against the vendor's own
 * client where it is installed. Every KMS request goes through a front that refuses a credential
 * that is unknown, revoked or expired when the request arrives (fakes/checking-front.ts).
 * Credentials live 2 s here, so that they expire inside the test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createServer } from 'node:http'
import { createRequire } from 'node:module'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fromContainerMetadata, fromHttp, fromInstanceMetadata, fromNodeProviderChain, fromTokenFile, fromWebToken } from '@aws-sdk/credential-providers'
import { KmsProxyError, type RootKey } from '@kms-proxy/core'
import {
  awsContainerCredentials,
  awsInstanceCredentials,
  awsKmsRootKey,
  awsWebIdentityCredentials,
  azureKeyVaultRootKey,
  azureManagedIdentityToken,
  gcpKmsRootKey,
  gcpMetadataToken,
  refreshingCredentials,
  vaultTransitRootKey,
  type AwsCredentials,
  type RefreshingCredentials,
} from '../src/index.ts'
import { startMoto, type Moto } from './fakes/moto.ts'
import { startFakeGcpKms, type FakeGcpKms } from './fakes/gcp.ts'
import { startFakeVault, type FakeVault } from './fakes/vault.ts'
import { startFakeAzureKeyVault, type FakeAzureKeyVault } from './fakes/azure.ts'
import { startCheckingFront, type CheckingFront, type FrontKind } from './fakes/checking-front.ts'
import { createLedger, startAzureIdentityFake, startContainerFake, startGcpMetadataFake, startImdsFake, type MetadataFake } from './fakes/metadata.ts'

const LIFETIME_MS = 2_000
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const region = 'eu-central-1'
const roleArn = 'arn:aws:iam::123456789012:role/kms-proxy-web'
const oidcToken = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwIn0.oidc-secret-signature'
const gcpKeyName = 'projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k'
const aad = new TextEncoder().encode('kms-proxy/kek/v1\0\0\0\0\x07refresh')
const fast = { backoffMs: 1, retries: 1 }

const ledger = createLedger()
let moto: Moto
let keyId = ''
let awsFront: CheckingFront
let gcpKms: FakeGcpKms
let gcpFront: CheckingFront
let azureKv: FakeAzureKeyVault
let azureFront: CheckingFront
let vault: FakeVault
let vaultFront: CheckingFront
let imds: MetadataFake
let container: MetadataFake
let gcpMetadata: MetadataFake
let azureIdentity: MetadataFake
let dir = ''
let containerTokenFile = ''
let containerToken = 'pod-identity-token-1'
const closers: (() => unknown)[] = []

beforeAll(async () => {
  const motoStarting = startMoto({ accessKeyId: 'AKIDSETUP', secretAccessKey: 'setup-secret' }, region)
  dir = mkdtempSync(join(tmpdir(), 'kms-credentials-'))
  containerTokenFile = join(dir, 'eks-pod-identity-token')
  writeFileSync(containerTokenFile, containerToken)
  imds = await startImdsFake({ ledger, lifetimeMs: LIFETIME_MS })
  container = await startContainerFake({ ledger, lifetimeMs: LIFETIME_MS, authorization: () => containerToken })
  gcpMetadata = await startGcpMetadataFake({ ledger, lifetimeMs: LIFETIME_MS })
  azureIdentity = await startAzureIdentityFake({ ledger, lifetimeMs: LIFETIME_MS, identityHeader: 'app-service-identity-header-secret', clientId: 'c0ffee00-0000-4000-8000-000000000001' })
  gcpKms = await startFakeGcpKms({ token: 'ya29.server-side', keys: [gcpKeyName] })
  azureKv = await startFakeAzureKeyVault({ token: 'eyJ.server-side', keys: ['app'] })
  vault = await startFakeVault({ token: 'hvs.server-side', keys: ['app'] })
  gcpFront = await startCheckingFront('gcp', gcpKms.url, ledger, 'ya29.server-side')
  azureFront = await startCheckingFront('azure', azureKv.url, ledger, 'eyJ.server-side')
  vaultFront = await startCheckingFront('vault', vault.url, ledger, 'hvs.server-side')
  closers.push(() => imds.close(), () => container.close(), () => gcpMetadata.close(), () => azureIdentity.close())
  closers.push(() => gcpKms.close(), () => azureKv.close(), () => vault.close(), () => gcpFront.close(), () => azureFront.close(), () => vaultFront.close())
  moto = await motoStarting
  closers.push(() => moto.close())
  keyId = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
  awsFront = await startCheckingFront('aws', moto.endpoint, ledger)
  closers.push(() => awsFront.close())
}, 120_000) // startMoto may take up to 100 s on a loaded machine

afterAll(async () => {
  for (const close of closers.reverse()) await close()
  if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
})

const awsRoot = (credentials: AwsKmsCredentials) => awsKmsRootKey({ keyId, region, endpoint: `${awsFront.url}/`, credentials, ...fast })
type AwsKmsCredentials = Parameters<typeof awsKmsRootKey>[0]['credentials']
const gcpRoot = (accessToken: string | (() => Promise<string>)) => gcpKmsRootKey({ keyName: gcpKeyName, endpoint: gcpFront.url, accessToken, ...fast })
const azureRoot = (accessToken: string | (() => Promise<string>)) => azureKeyVaultRootKey({ vaultUrl: azureFront.url, keyName: 'app', accessToken, ...fast })
const vaultRoot = (token: string | (() => Promise<string>)) => vaultTransitRootKey({ address: vaultFront.url, key: 'app', token, ...fast })

/** A new KEK and its unwrap: KMS requests that must each carry a valid credential. */
async function useRoot(root: RootKey): Promise<void> {
  const { kek, wrapped } = await root.newKek(aad)
  const again = await root.unwrapKek!(wrapped, aad)
  // Same KEK: a key wrapped under one unwraps under the other.
  const iv = new Uint8Array(12)
  const dek = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 128 }, true, ['encrypt'])
  const sealed = await crypto.subtle.wrapKey('raw', dek, kek, { name: 'AES-GCM', iv })
  await crypto.subtle.unwrapKey('raw', sealed, again, { name: 'AES-GCM', iv }, 'AES-GCM', false, ['encrypt'])
}

/**
 * Uses a root four times, waiting out the credential's lifetime between uses: three expiries. The
 * root talks to the KMS through a checking front of its own (the runs are concurrent). Every
 * request carried a credential valid when it arrived, each use after an expiry carried a
 * credential never seen before (so it was fetched anew), and the source served at least one
 * fetch per use.
 */
async function acrossThreeExpiries(
  kms: { kind: FrontKind; target: () => string; serverCredential?: string },
  makeRoot: (kmsUrl: string) => RootKey,
  served: () => number,
): Promise<{ fetches: number; credentials: number }> {
  const front = await startCheckingFront(kms.kind, kms.target(), ledger, kms.serverCredential)
  try {
    const root = makeRoot(front.url)
    const servedBefore = served()
    const seen = new Set<string>()
    for (let use = 0; use < 4; use++) {
      if (use > 0) await sleep(LIFETIME_MS + 250)
      const start = front.checked.length
      await useRoot(root)
      const mine = front.checked.slice(start)
      expect(mine.length).toBeGreaterThan(0)
      expect(seen.has(mine[0]!.credential)).toBe(false)
      for (const r of mine) seen.add(r.credential)
    }
    expect(front.checked.filter((r) => r.verdict !== 'ok')).toEqual([])
    expect(served() - servedBefore).toBeGreaterThanOrEqual(4)
    return { fetches: served() - servedBefore, credentials: seen.size }
  } finally {
    await front.close()
  }
}

const MOTO = { kind: 'aws' as const, target: () => moto.endpoint }
const CLOUD_KMS = { kind: 'gcp' as const, target: () => gcpKms.url, serverCredential: 'ya29.server-side' }
const KEY_VAULT = { kind: 'azure' as const, target: () => azureKv.url, serverCredential: 'eyJ.server-side' }
const awsAt = (url: string, credentials: AwsKmsCredentials) => awsKmsRootKey({ keyId, region, endpoint: `${url}/`, credentials, ...fast })

describe('a root keeps working across three expiries (credentials live 2 s; every KMS request checked)', () => {
  // Concurrent: six runs of about 7 s each share the same wall time.
  it.concurrent('awsWebIdentityCredentials on moto STS, then moto KMS', async () => {
    let tokenReads = 0
    let sts = 0
    const credentials = awsWebIdentityCredentials({
      roleArn,
      webIdentityToken: async () => (tokenReads++, oidcToken),
      durationSeconds: LIFETIME_MS / 1000,
      endpoint: `${awsFront.url}/`,
      fetch: (input, init) => (sts++, fetch(input, init)),
      ...fast,
    })
    const got = await acrossThreeExpiries(MOTO, (url) => awsAt(url, credentials), () => sts)
    expect(tokenReads).toBe(got.fetches) // the token is read anew for each AssumeRoleWithWebIdentity
    console.log(`web identity on moto STS: ${got.fetches} AssumeRoleWithWebIdentity calls, ${got.credentials} credentials over three expiries`)
  }, 30_000)

  it.concurrent('awsInstanceCredentials (IMDSv2), then moto KMS', async () => {
    const credentials = awsInstanceCredentials({ endpoint: imds.url, ...fast })
    const got = await acrossThreeExpiries(MOTO, (url) => awsAt(url, credentials), () => imds.served)
    console.log(`IMDSv2: ${got.fetches} fetches, ${got.credentials} credentials over three expiries`)
  }, 30_000)

  it.concurrent('awsContainerCredentials (full URI, token file re-read), then moto KMS', async () => {
    const credentials = awsContainerCredentials({ fullUri: `${container.url}/v2/credentials/kms-proxy-task`, authorizationToken: () => readFile(containerTokenFile, 'utf8'), ...fast })
    await acrossThreeExpiries(MOTO, (url) => awsAt(url, credentials), () => container.served)
  }, 30_000)

  it.concurrent('gcpMetadataToken, then Cloud KMS', async () => {
    const accessToken = gcpMetadataToken({ endpoint: gcpMetadata.url, ...fast })
    await acrossThreeExpiries(CLOUD_KMS, (url) => gcpKmsRootKey({ keyName: gcpKeyName, endpoint: url, accessToken, ...fast }), () => gcpMetadata.served)
  }, 30_000)

  it.concurrent('azureManagedIdentityToken (IMDS), then Key Vault', async () => {
    const accessToken = azureManagedIdentityToken({ endpoint: azureIdentity.url, ...fast })
    await acrossThreeExpiries(KEY_VAULT, (url) => azureKeyVaultRootKey({ vaultUrl: url, keyName: 'app', accessToken, ...fast }), () => azureIdentity.served)
  }, 30_000)

  it.concurrent('azureManagedIdentityToken (App Service form, user-assigned), then Key Vault', async () => {
    const accessToken = azureManagedIdentityToken({
      identityEndpoint: `${azureIdentity.url}/msi/token`,
      identityHeader: 'app-service-identity-header-secret',
      clientId: 'c0ffee00-0000-4000-8000-000000000001',
      ...fast,
    })
    await acrossThreeExpiries(KEY_VAULT, (url) => azureKeyVaultRootKey({ vaultUrl: url, keyName: 'app', accessToken, ...fast }), () => azureIdentity.served)
  }, 30_000)
})

/** A source of credentials valid for a minute, entered in the ledger; `revokeAtOnce` revokes each as it is issued. */
function issuer(kind: 'aws' | 'token', revokeAtOnce = false) {
  let n = 0
  const source = {
    fetches: 0,
    credentials: undefined as unknown as RefreshingCredentials<never>,
  }
  source.credentials = refreshingCredentials(async () => {
    source.fetches++
    n++
    const token = `${kind}-issued-${n}-${crypto.randomUUID()}`
    const accessKeyId = `ASIAISSUED${n}`
    ledger.issue(token, Date.now() + 60_000, kind === 'aws' ? accessKeyId : undefined)
    if (revokeAtOnce) ledger.revoke(token)
    return { value: (kind === 'aws' ? { accessKeyId, secretAccessKey: `secret-${n}`, sessionToken: token } : token) as never, expiresAt: Date.now() + 60_000 }
  }) as RefreshingCredentials<never>
  return source
}

describe('a credential refused before its expiry (revoked): invalidate, and the request once more with a new one', () => {
  const roots = {
    'AWS KMS (400 ExpiredTokenException)': { kind: 'aws' as const, front: () => awsFront, make: (c: unknown) => awsRoot(c as AwsKmsCredentials) },
    'Cloud KMS (401)': { kind: 'token' as const, front: () => gcpFront, make: (c: unknown) => gcpRoot(c as () => Promise<string>) },
    'Key Vault (401)': { kind: 'token' as const, front: () => azureFront, make: (c: unknown) => azureRoot(c as () => Promise<string>) },
    'Vault Transit (403)': { kind: 'token' as const, front: () => vaultFront, make: (c: unknown) => vaultRoot(c as () => Promise<string>) },
  }
  for (const [name, r] of Object.entries(roots)) {
    it(`${name}: one refused request, one new fetch, then it works`, async () => {
      const source = issuer(r.kind)
      const root = r.make(source.credentials)
      const first = await source.credentials()
      const firstSecret = typeof first === 'string' ? first : (first as AwsCredentials).sessionToken!
      ledger.revoke(firstSecret)
      const start = r.front().checked.length
      const { wrapped } = await root.newKek(aad)
      const verdicts = r.front().checked.slice(start).map((c) => c.verdict)
      expect(verdicts[0]).toBe('revoked')
      expect(verdicts.slice(1).every((v) => v === 'ok')).toBe(true)
      expect(source.fetches).toBe(2)
      await root.unwrapKek!(wrapped, aad)
      expect(source.fetches).toBe(2) // the new credential is cached
    })

    it(`${name}: refused again with the new one, it gives up after one retry (not retryable)`, async () => {
      const source = issuer(r.kind, true)
      const start = r.front().checked.length
      const error = (await r.make(source.credentials).newKek(aad).catch((e: unknown) => e)) as KmsProxyError
      expect(error).toBeInstanceOf(KmsProxyError)
      expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', false])
      expect(r.front().checked.slice(start).map((c) => c.verdict)).toEqual(['revoked', 'revoked'])
      expect(source.fetches).toBe(2)
    })
  }

  it('a plain credentials function (no invalidate) is not retried: one request', async () => {
    const source = issuer('aws', true)
    const plain = () => source.credentials() as Promise<AwsCredentials>
    const start = awsFront.checked.length
    await expect(awsRoot(plain).newKek(aad)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
    expect(awsFront.checked.length - start).toBe(1)
  })
})

describe('a credential source that is down', () => {
  async function closedUrl(): Promise<string> {
    const server = createServer()
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`
    await new Promise((r) => server.close(r))
    return url
  }

  it('every provider: a retryable ERR_ROOT_KEY, through the root too, without the secret', async () => {
    const down = await closedUrl()
    const identityHeader = 'identity-header-secret-value'
    const providers: [string, () => Promise<unknown>, RootKey][] = []
    const web = awsWebIdentityCredentials({ roleArn, webIdentityToken: async () => oidcToken, endpoint: down, ...fast })
    providers.push(['web identity', web, awsRoot(web)])
    const inst = awsInstanceCredentials({ endpoint: down, ...fast })
    providers.push(['instance', inst, awsRoot(inst)])
    const cont = awsContainerCredentials({ fullUri: `${down}/creds`, authorizationToken: 'container-token-secret', ...fast })
    providers.push(['container', cont, awsRoot(cont)])
    const gcp = gcpMetadataToken({ endpoint: down, ...fast })
    providers.push(['google', gcp, gcpRoot(gcp)])
    const az = azureManagedIdentityToken({ identityEndpoint: `${down}/msi/token`, identityHeader, ...fast })
    providers.push(['azure', az, azureRoot(az)])
    for (const [name, provider, root] of providers) {
      for (const attempt of [() => provider(), () => root.newKek(aad)]) {
        const error = (await attempt().catch((e: unknown) => e)) as KmsProxyError
        expect(error, name).toBeInstanceOf(KmsProxyError)
        expect([name, error.code, error.retryable]).toEqual([name, 'ERR_ROOT_KEY', true])
        expect(error.message).toMatch(/did not answer \(network\)/)
        const text = `${error.message} ${JSON.stringify(error)} ${String(error.cause ?? '')}`
        for (const secret of [oidcToken, 'container-token-secret', identityHeader]) expect(text).not.toContain(secret)
      }
    }
  })

  it('a source that answers 500 or 401 echoing the token: no token in the error; 500 retryable, 401 not', async () => {
    const echo = createServer((req, res) => {
      const status = req.url?.startsWith('/500') ? 500 : 401
      res.writeHead(status, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ Code: 'Denied', Message: `refused ${req.headers.authorization}` }))
    })
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r))
    const url = `http://127.0.0.1:${(echo.address() as { port: number }).port}`
    try {
      for (const [path, retryable] of [['/500', true], ['/401', false]] as const) {
        const error = (await awsContainerCredentials({ fullUri: url + path, authorizationToken: 'container-token-secret', ...fast })().catch((e: unknown) => e)) as KmsProxyError
        expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', retryable])
        expect(error.message).toMatch(/HTTP (500|401) Denied/)
        expect(JSON.stringify(error) + error.message).not.toContain('container-token-secret')
      }
    } finally {
      echo.close()
    }
  })
})

describe('sources that answer badly', () => {
  /** A local server answering each request with the next of `answers` (the last one repeats). */
  async function scripted(answers: { status: number; body: string; headers?: Record<string, string> }[]) {
    const seen: string[] = []
    const server = createServer((req, res) => {
      seen.push(req.url ?? '')
      const a = answers[Math.min(seen.length - 1, answers.length - 1)]!
      res.writeHead(a.status, { 'content-type': a.body.startsWith('<') ? 'text/xml' : 'application/json', ...a.headers })
      res.end(a.body)
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, seen, close: () => new Promise((r) => server.close(r)) }
  }
  const stsError = (code: string) => ({ status: 400, body: `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>${code}</Code><Message>token ${oidcToken} refused</Message></Error><RequestId>r</RequestId></ErrorResponse>` })

  it('STS: InvalidIdentityToken is not retryable, IDPCommunicationError is retried and then retryable; neither quotes the token', async () => {
    for (const [code, retryable, requests] of [['InvalidIdentityToken', false, 1], ['IDPCommunicationError', true, 2]] as const) {
      const sts = await scripted([stsError(code)])
      try {
        const error = (await awsWebIdentityCredentials({ roleArn, webIdentityToken: async () => oidcToken, endpoint: sts.url, ...fast })().catch((e: unknown) => e)) as KmsProxyError
        expect([error.code, error.retryable, error.message]).toEqual(['ERR_ROOT_KEY', retryable, `AWS STS AssumeRoleWithWebIdentity failed: HTTP 400 ${code}`])
        expect(JSON.stringify(error)).not.toContain(oidcToken.slice(-20))
        expect(sts.seen).toHaveLength(requests)
      } finally {
        await sts.close()
      }
    }
  })

  it('Azure IMDS: 410 and 404 (identity not ready) are retried, as Microsoft asks, then the token comes', async () => {
    const expiresOn = String(Math.floor(Date.now() / 1000) + 3600)
    const imdsLike = await scripted([
      { status: 410, body: '{"error":"gone"}' },
      { status: 404, body: '{"error":"not_found","error_description":"Identity not found"}' },
      { status: 200, body: JSON.stringify({ access_token: 'eyJ.after-retries', expires_in: '3600', expires_on: expiresOn, resource: 'https://vault.azure.net', token_type: 'Bearer' }) },
    ])
    try {
      expect(await azureManagedIdentityToken({ endpoint: imdsLike.url, retries: 3, backoffMs: 1 })()).toBe('eyJ.after-retries')
      expect(imdsLike.seen).toHaveLength(3)
      expect(imdsLike.seen[0]).toBe('/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net')
    } finally {
      await imdsLike.close()
    }
  })

  it('Google: an answer without Metadata-Flavor: Google is refused (not a metadata server)', async () => {
    const impostor = await scripted([{ status: 200, body: JSON.stringify({ access_token: 'ya29.impostor', expires_in: 3600, token_type: 'Bearer' }) }])
    try {
      const error = (await gcpMetadataToken({ endpoint: impostor.url, ...fast })().catch((e: unknown) => e)) as KmsProxyError
      expect([error.code, error.message]).toEqual(['ERR_ROOT_KEY', expect.stringMatching(/lacks Metadata-Flavor: Google/)])
      expect(error.message).not.toContain('impostor')
    } finally {
      await impostor.close()
    }
  })
})

describe('provider options', () => {
  it('bad options are TypeError or RangeError at once; plain http only to loopback and the metadata hosts', () => {
    const token = async () => oidcToken
    expect(() => awsWebIdentityCredentials({ roleArn: 'role', webIdentityToken: token })).toThrow(TypeError)
    expect(() => awsWebIdentityCredentials({ roleArn, webIdentityToken: oidcToken as never })).toThrow(TypeError)
    expect(() => awsWebIdentityCredentials({ roleArn, webIdentityToken: token, endpoint: 'http://sts.example.com/' })).toThrow(TypeError)
    expect(() => awsWebIdentityCredentials({ roleArn, webIdentityToken: token, durationSeconds: 0 })).toThrow(RangeError)
    expect(() => awsContainerCredentials({})).toThrow(TypeError)
    expect(() => awsContainerCredentials({ fullUri: 'http://creds.example.com/v1' })).toThrow(TypeError)
    expect(() => awsContainerCredentials({ relativeUri: 'v2/credentials' })).toThrow(TypeError)
    expect(() => awsInstanceCredentials({ tokenTtlSeconds: 21_601 })).toThrow(RangeError)
    expect(() => awsInstanceCredentials({ endpoint: 'http://imds.example.com' })).toThrow(TypeError)
    expect(() => gcpMetadataToken({ scopes: 'https://www.googleapis.com/auth/cloudkms' as never })).toThrow(TypeError)
    expect(() => azureManagedIdentityToken({ identityEndpoint: 'http://127.0.0.1:1/msi/token' })).toThrow(TypeError)
    // The documented defaults and link-local hosts are allowed over plain http; constructing asks nothing.
    for (const make of [
      () => awsWebIdentityCredentials({ roleArn, webIdentityToken: token, region }),
      () => awsContainerCredentials({ relativeUri: '/v2/credentials/x' }),
      () => awsContainerCredentials({ fullUri: 'http://169.254.170.23/v1/credentials' }),
      () => awsContainerCredentials({ fullUri: 'http://[fd00:ec2::23]/v1/credentials' }),
      () => awsInstanceCredentials(),
      () => awsInstanceCredentials({ endpoint: 'http://[fd00:ec2::254]' }),
      () => gcpMetadataToken(),
      () => azureManagedIdentityToken({ clientId: 'c0ffee00-0000-4000-8000-000000000001' }),
      () => azureManagedIdentityToken({ identityEndpoint: 'http://localhost:42356/msi/token', identityHeader: 'h' }),
      () => awsContainerCredentials({ fullUri: 'http://creds.internal/v1', plainHttpHosts: ['creds.internal'] }),
    ]) {
      expect(typeof make().invalidate).toBe('function')
    }
  })
})

describe('concurrent callers', () => {
  it('50 concurrent unwraps with a cold provider make one metadata fetch', async () => {
    const fresh = await startGcpMetadataFake({ ledger, lifetimeMs: 60_000 })
    try {
      const { wrapped } = await gcpRoot(gcpMetadataToken({ endpoint: fresh.url, ...fast })).newKek(aad)
      const cold = gcpRoot(gcpMetadataToken({ endpoint: fresh.url, ...fast }))
      const before = fresh.served
      await Promise.all(Array.from({ length: 50 }, () => cold.unwrapKek!(wrapped, aad)))
      expect(fresh.served - before).toBe(1)
    } finally {
      await fresh.close()
    }
  })
})

describe('the local servers answer the vendors\' own clients as they answer ours', () => {
  // Credentials that live a minute here: the checks compare what two clients get one after the other.
  let imds: MetadataFake
  let container: MetadataFake
  let gcpMetadata: MetadataFake
  beforeAll(async () => {
    imds = await startImdsFake({ ledger, lifetimeMs: 60_000 })
    container = await startContainerFake({ ledger, lifetimeMs: 60_000, authorization: () => containerToken })
    gcpMetadata = await startGcpMetadataFake({ ledger, lifetimeMs: 60_000 })
  })
  afterAll(async () => {
    await Promise.all([imds?.close(), container?.close(), gcpMetadata?.close()])
  })
  /** Sets environment variables for one vendor call, then puts them back. */
  async function withEnv<T>(vars: Record<string, string | undefined>, run: () => Promise<T>): Promise<T> {
    const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
    for (const [k, v] of Object.entries(vars)) v === undefined ? delete process.env[k] : (process.env[k] = v)
    try {
      return await run()
    } finally {
      for (const [k, v] of Object.entries(saved)) v === undefined ? delete process.env[k] : (process.env[k] = v)
    }
  }
  const sameAws = (ours: AwsCredentials, theirs: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }) =>
    expect({ accessKeyId: theirs.accessKeyId, secretAccessKey: theirs.secretAccessKey, sessionToken: theirs.sessionToken }).toEqual({ ...ours })

  it('IMDSv2: @aws-sdk fromInstanceMetadata gets the credentials awsInstanceCredentials gets', async () => {
    const ours = await awsInstanceCredentials({ endpoint: imds.url })()
    const theirs = await withEnv({ AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, AWS_EC2_METADATA_V1_DISABLED: 'true' }, () => fromInstanceMetadata({ timeout: 2_000, maxRetries: 1 })())
    sameAws(ours, theirs)
    // Both speak IMDSv2: a token PUT with a TTL, then the two GETs carrying it.
    const paths = imds.requests.slice(-6).map((r) => `${r.method} ${r.url} ${r.method === 'PUT' ? r.headers['x-aws-ec2-metadata-token-ttl-seconds'] : r.headers['x-aws-ec2-metadata-token'] ? 'token' : 'none'}`)
    expect(paths.slice(0, 3)).toEqual(paths.slice(3))
    expect(paths[0]).toBe('PUT /latest/api/token 21600')
  })

  it('container endpoint: fromHttp (options, token and token file) and fromContainerMetadata (environment) get what awsContainerCredentials gets', async () => {
    const fullUri = `${container.url}/v2/credentials/kms-proxy-task`
    const ours = awsContainerCredentials({ fullUri, authorizationToken: () => readFile(containerTokenFile, 'utf8') })
    sameAws(await ours(), await fromHttp({ awsContainerCredentialsFullUri: fullUri, awsContainerAuthorizationToken: containerToken })())
    sameAws(await ours(), await fromHttp({ awsContainerCredentialsFullUri: fullUri, awsContainerAuthorizationTokenFile: containerTokenFile })())
    const viaEnv = await withEnv({ AWS_CONTAINER_CREDENTIALS_FULL_URI: fullUri, AWS_CONTAINER_AUTHORIZATION_TOKEN: containerToken, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: undefined }, () => fromContainerMetadata({ timeout: 2_000 })())
    sameAws(await ours(), viaEnv)
    // ECS form: a relative URI on the (here local) link-local host.
    sameAws(await ours(), await awsContainerCredentials({ relativeUri: '/v2/credentials/kms-proxy-task', endpoint: container.url, authorizationToken: containerToken })())
  })

  it('container endpoint: a rotated token file is read anew at the next refresh (ours and fromHttp)', async () => {
    const fullUri = `${container.url}/v2/credentials/kms-proxy-task`
    const ours = awsContainerCredentials({ fullUri, authorizationToken: () => readFile(containerTokenFile, 'utf8'), refreshBeforeMs: 0 })
    await ours()
    const previous = containerToken
    containerToken = 'pod-identity-token-2'
    writeFileSync(containerTokenFile, containerToken)
    try {
      ours.invalidate()
      sameAws(await ours(), await fromHttp({ awsContainerCredentialsFullUri: fullUri, awsContainerAuthorizationTokenFile: containerTokenFile })())
      expect(container.requests.at(-1)!.headers.authorization).toBe('pod-identity-token-2')
      const stale = await awsContainerCredentials({ fullUri, authorizationToken: previous, ...fast })().catch((e: unknown) => e)
      expect(stale).toMatchObject({ code: 'ERR_ROOT_KEY', retryable: false })
    } finally {
      containerToken = previous
      writeFileSync(containerTokenFile, previous)
    }
  })

  it('fromNodeProviderChain (the container endpoint in the environment) plugs into awsKmsRootKey directly and through refreshingCredentials', async () => {
    const fullUri = `${container.url}/v2/credentials/kms-proxy-task`
    const env = {
      AWS_CONTAINER_CREDENTIALS_FULL_URI: fullUri,
      AWS_CONTAINER_AUTHORIZATION_TOKEN: containerToken,
      AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: undefined,
      AWS_ACCESS_KEY_ID: undefined,
      AWS_SECRET_ACCESS_KEY: undefined,
      AWS_PROFILE: undefined,
      AWS_WEB_IDENTITY_TOKEN_FILE: undefined,
      AWS_CONFIG_FILE: join(dir, 'no-config'),
      AWS_SHARED_CREDENTIALS_FILE: join(dir, 'no-credentials'),
      AWS_EC2_METADATA_DISABLED: 'true',
    }
    await withEnv(env, async () => {
      const chain = fromNodeProviderChain()
      await useRoot(awsRoot(chain))
      const wrapped = refreshingCredentials(async () => {
        const c = await chain()
        return { value: c, expiresAt: c.expiration?.getTime() }
      })
      await useRoot(awsRoot(wrapped))
      sameAws(await awsContainerCredentials({ fullUri, authorizationToken: containerToken })(), await wrapped())
    })
  })

  it('moto STS: @aws-sdk fromWebToken and fromTokenFile send the fields awsWebIdentityCredentials sends; all three credentials work on moto KMS', async () => {
    const tokenFile = join(dir, 'web-identity-token')
    writeFileSync(tokenFile, oidcToken)
    const clientConfig = { endpoint: `${awsFront.url}/`, region }
    const start = awsFront.sts.length
    const ours = await awsWebIdentityCredentials({ roleArn, webIdentityToken: () => readFile(tokenFile, 'utf8'), roleSessionName: 'kms-proxy-check', durationSeconds: 900, region, endpoint: `${awsFront.url}/` })()
    const web = await fromWebToken({ roleArn, webIdentityToken: readFileSync(tokenFile, 'utf8'), roleSessionName: 'kms-proxy-check', durationSeconds: 900, clientConfig })()
    const file = await fromTokenFile({ roleArn, webIdentityTokenFile: tokenFile, roleSessionName: 'kms-proxy-check', clientConfig })()
    const sent = awsFront.sts.slice(start)
    expect(sent).toHaveLength(3)
    expect(sent[0]).toEqual(sent[1])
    const { DurationSeconds: _, ...withoutDuration } = sent[0]!
    expect(sent[2]).toEqual(withoutDuration)
    for (const c of [ours, web, file]) await useRoot(awsRoot({ accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey, sessionToken: c.sessionToken! }))
    expect(ours.accessKeyId).toMatch(/^ASIA/)
  })

  it('Google metadata server: google-auth-library (Compute, and GoogleAuth.getAccessToken) gets the token gcpMetadataToken gets', async () => {
    // google-auth-library comes with @google-cloud/kms (through google-gax), not as our own dependency.
    const fromKms = createRequire(createRequire(import.meta.url).resolve('@google-cloud/kms'))
    // Only what this test calls: google-auth-library's types are not reachable from this package.
    type Gal = {
      Compute: new (o: { scopes: string[] }) => { getAccessToken(): Promise<{ token?: string | null }> }
      GoogleAuth: new (o: { scopes: string[] }) => { getAccessToken(): Promise<string | null | undefined> }
    }
    let gal: Gal
    try {
      gal = fromKms('google-auth-library')
    } catch {
      gal = createRequire(fromKms.resolve('google-gax'))('google-auth-library')
    }
    const host = new URL(gcpMetadata.url).host
    const ours = await gcpMetadataToken({ endpoint: gcpMetadata.url, scopes: ['https://www.googleapis.com/auth/cloudkms'] })()
    const env = { GCE_METADATA_HOST: host, GCE_METADATA_IP: undefined, GOOGLE_APPLICATION_CREDENTIALS: undefined, CLOUDSDK_CONFIG: join(dir, 'no-gcloud'), METADATA_SERVER_DETECTION: 'assume-present', GOOGLE_CLOUD_PROJECT: 'kms-proxy-test' }
    const [compute, viaAuth] = await withEnv(env, async () => [
      (await new gal.Compute({ scopes: ['https://www.googleapis.com/auth/cloudkms'] }).getAccessToken()).token,
      await new gal.GoogleAuth({ scopes: ['https://www.googleapis.com/auth/cloudkms'] }).getAccessToken(),
    ])
    expect([compute, viaAuth]).toEqual([ours, ours])
    const tokenRequests = gcpMetadata.requests.filter((r) => r.url.includes('/token'))
    expect(tokenRequests.at(-1)!.url).toBe(tokenRequests.at(-3)!.url) // same path and scopes as ours
    // GoogleAuth.getAccessToken plugs into gcpKmsRootKey as it is (GoogleAuth caches and refreshes its token).
    const auth = await withEnv(env, async () => new gal.GoogleAuth({ scopes: ['https://www.googleapis.com/auth/cloudkms'] }))
    await withEnv(env, () => useRoot(gcpRoot(async () => (await auth.getAccessToken())!)))
  })
})
