/**
 * "Another process" changing the root of the plugins' chain, as an operator's `kms-proxy root
 * change` would: opens chain KMS_PROXY_K8S_CHAIN on the etcd store at KMS_PROXY_K8S_ETCD (prefix
 * KMS_PROXY_K8S_PREFIX) holding the old root as 'default' (AES bytes in hex in
 * KMS_PROXY_K8S_ROOT, or the PKCS#11 bridge at KMS_PROXY_K8S_BRIDGE_URL with
 * KMS_PROXY_K8S_BRIDGE_TOKEN) and the AWS KMS key KMS_PROXY_K8S_KMS (JSON: endpoint, keyId,
 * region, credentials) as 'kms', then runs KMS_PROXY_K8S_OP: `change` (changeRoot from 'default'
 * to 'kms'), `add` or `remove`. Prints `START {}` just before the change, then
 * `DONE {report, kmsCalls, bridgeCalls, roots}` with the chain's RootChangeReport, the KMS calls
 * by action, the bridge's calls by path and the chain's roots after the change, or
 * `FAILED {code, message}`.
 */
import { KeyChain, aesRootKey, type RootKey } from '@kms-proxy/core'
import { etcdStore } from '../../etcd/src/index.ts'
import { awsKmsRootKey } from '../../kms/src/index.ts'
import { pkcs11BridgeRootKey } from '../../pkcs11/src/index.ts'

const env = process.env
const kmsCalls: Record<string, number> = {}
const bridgeCalls: Record<string, number> = {}
const counting =
  (calls: Record<string, number>, what: (input: RequestInfo | URL, init?: RequestInit) => string): typeof fetch =>
  (input, init) => {
    calls[what(input, init)] = (calls[what(input, init)] ?? 0) + 1
    return fetch(input, init)
  }
const old: RootKey = env.KMS_PROXY_K8S_BRIDGE_URL
  ? pkcs11BridgeRootKey({ url: env.KMS_PROXY_K8S_BRIDGE_URL, token: env.KMS_PROXY_K8S_BRIDGE_TOKEN!, fetch: counting(bridgeCalls, (input) => String(input).split('/').pop()!) })
  : aesRootKey(Uint8Array.from(Buffer.from(env.KMS_PROXY_K8S_ROOT!, 'hex')))
const kms = awsKmsRootKey({
  ...JSON.parse(env.KMS_PROXY_K8S_KMS!),
  fetch: counting(kmsCalls, (_, init) => (new Headers(init?.headers).get('x-amz-target') ?? '?').replace('TrentService.', '')),
})
const store = etcdStore({ endpoints: [env.KMS_PROXY_K8S_ETCD!], prefix: env.KMS_PROXY_K8S_PREFIX! })
try {
  const op = env.KMS_PROXY_K8S_OP
  const chain = await KeyChain.open({ roots: op === 'remove' ? { kms } : { default: old }, store, name: env.KMS_PROXY_K8S_CHAIN!, watch: false }) // a one-shot process: no push to follow, nothing to keep it alive
  process.stdout.write('START {}\n')
  const report =
    op === 'change' ? await chain.changeRoot(kms, { from: 'default', name: 'kms' }) : op === 'add' ? await chain.addRoot('kms', kms) : await chain.removeRoot('default')
  process.stdout.write(`DONE ${JSON.stringify({ report, kmsCalls, bridgeCalls, roots: await chain.listRoots() })}\n`)
} catch (error) {
  const e = error as { code?: string; message?: string }
  process.stdout.write(`FAILED ${JSON.stringify({ code: e.code, message: e.message })}\n`)
  process.exitCode = 1
}
