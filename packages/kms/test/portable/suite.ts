// The root-key contract for the four KMS root keys as a plain function, bundled by esbuild for
// Deno, Bun, workerd and Chromium: the same fetch-only code on every runtime.
import { createHarness, describeRootKey, type TestResult } from '@kms-proxy/testkit'
import { awsKmsRootKey, azureKeyVaultRootKey, gcpKmsRootKey, vaultTransitRootKey } from '@kms-proxy/kms'

export interface Targets {
  aws: { endpoint: string; keyId: string; otherKeyId: string; accessKeyId: string; secretAccessKey: string }
  gcp: { endpoint: string; token: string; keyName: string; otherKeyName: string }
  vault: { address: string; token: string }
  azure: { vaultUrl: string; token: string }
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
  return t.run()
}
