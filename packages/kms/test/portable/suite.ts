// The root-key contract for the four KMS root keys as a plain function, bundled by esbuild for
// Deno, Bun, workerd and Chromium: the same fetch-only code on every runtime.
import { createHarness, describeRootKey, type TestResult } from '@kms-proxy/testkit'
import {
  awsContainerCredentials,
  awsInstanceCredentials,
  awsKmsRootKey,
  azureKeyVaultRootKey,
  azureManagedIdentityToken,
  gcpKmsRootKey,
  gcpMetadataToken,
  refreshingCredentials,
  vaultTransitRootKey,
} from '@kms-proxy/kms'

export interface Targets {
  aws: { endpoint: string; keyId: string; otherKeyId: string; accessKeyId: string; secretAccessKey: string }
  gcp: { endpoint: string; token: string; keyName: string; otherKeyName: string }
  vault: { address: string; token: string }
  azure: { vaultUrl: string; token: string }
  /** The local credential sources (test/fakes/metadata.ts). */
  sources: { imds: string; container: string; containerToken: string; gcp: string; azure: string; identityHeader: string }
}

export async function runSuite(x: Targets): Promise<TestResult[]> {
  const t = createHarness()
  const fast = { backoffMs: 1, retries: 1 }
  const aws = (keyId: string) =>
    awsKmsRootKey({ keyId, region: 'eu-central-1', endpoint: x.aws.endpoint, credentials: { accessKeyId: x.aws.accessKeyId, secretAccessKey: x.aws.secretAccessKey }, ...fast })
  describeRootKey(t, { name: 'aws', make: () => aws(x.aws.keyId), other: () => aws(x.aws.otherKeyId), secrets: [x.aws.secretAccessKey], wrapKek: true })
  const gcp = (keyName: string) => gcpKmsRootKey({ keyName, accessToken: x.gcp.token, endpoint: x.gcp.endpoint, ...fast })
  describeRootKey(t, { name: 'gcp', make: () => gcp(x.gcp.keyName), other: () => gcp(x.gcp.otherKeyName), secrets: [x.gcp.token], wrapKek: true })
  const vault = (key: string) => vaultTransitRootKey({ address: x.vault.address, token: x.vault.token, key, ...fast })
  describeRootKey(t, { name: 'vault', make: () => vault('app'), other: () => vault('other'), secrets: [x.vault.token], wrapKek: true })
  const azure = (keyName: string) => azureKeyVaultRootKey({ vaultUrl: x.azure.vaultUrl, keyName, accessToken: x.azure.token, ...fast })
  describeRootKey(t, { name: 'azure', make: () => azure('app'), other: () => azure('other'), secrets: [x.azure.token], wrapKek: true })
  describeCredentials(t, x)
  return t.run()
}

/** The credential providers and refreshingCredentials: the same fetch-only code on every runtime. */
function describeCredentials(t: ReturnType<typeof createHarness>, x: Targets): void {
  const fast = { backoffMs: 1, retries: 1 }
  t.test('credentials: each provider gets a credential from its local server; an AWS root signs with IMDSv2 credentials', async () => {
    const instance = awsInstanceCredentials({ endpoint: x.sources.imds, ...fast })
    const aws = [await instance(), await awsContainerCredentials({ fullUri: `${x.sources.container}/v2/credentials/kms-proxy-task`, authorizationToken: async () => x.sources.containerToken, ...fast })()]
    for (const c of aws) t.ok(/^ASIA/.test(c.accessKeyId) && c.secretAccessKey.length > 0 && (c.sessionToken ?? '').length > 0, 'AWS credentials')
    t.ok((await gcpMetadataToken({ endpoint: x.sources.gcp, ...fast })()).startsWith('ya29.'), 'a Google access token')
    const imds = await azureManagedIdentityToken({ endpoint: x.sources.azure, ...fast })()
    const appService = await azureManagedIdentityToken({ identityEndpoint: `${x.sources.azure}/msi/token`, identityHeader: x.sources.identityHeader, ...fast })()
    t.ok(imds.length > 0 && imds === appService, 'the same Azure token from IMDS and the App Service form')
    const root = awsKmsRootKey({ keyId: x.aws.keyId, region: 'eu-central-1', endpoint: x.aws.endpoint, credentials: instance, ...fast })
    const { wrapped } = await root.newKek(new Uint8Array(4))
    t.ok(wrapped.length > 1, 'a wrapped KEK')
  })
  t.test('credentials: refreshingCredentials shares one fetch among concurrent callers; invalidate fetches anew', async () => {
    let fetches = 0
    const get = refreshingCredentials(async () => {
      fetches++
      await new Promise((r) => setTimeout(r, 20))
      return { value: `v${fetches}`, expiresAt: Date.now() + 60_000 }
    })
    const values = await Promise.all([get(), get(), get(), get()])
    t.equal(values.join(), 'v1,v1,v1,v1')
    get.invalidate('v1')
    t.equal(await get(), 'v2')
    t.equal(fetches, 2)
  })
}
