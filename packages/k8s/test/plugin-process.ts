/**
 * The plugin as its own process, for restart tests: a key chain on the file store at
 * KMS_PROXY_K8S_STORE under an AES root key (hex in KMS_PROXY_K8S_ROOT), or under the PKCS#11
 * bridge at KMS_PROXY_K8S_BRIDGE_URL (token in KMS_PROXY_K8S_BRIDGE_TOKEN), served on
 * KMS_PROXY_K8S_SOCKET. Prints `READY {"keyId":…,"healthz":…}`; closes when stdin ends.
 */
import { KeyChain, aesRootKey, type RootKey } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { pkcs11BridgeRootKey } from '../../pkcs11/src/index.ts'
import { serveKmsPlugin } from '../src/index.ts'

const env = process.env
const rootKey: RootKey = env.KMS_PROXY_K8S_BRIDGE_URL
  ? pkcs11BridgeRootKey({ url: env.KMS_PROXY_K8S_BRIDGE_URL, token: env.KMS_PROXY_K8S_BRIDGE_TOKEN!, retries: 0, timeoutMs: 2_000 })
  : aesRootKey(Uint8Array.from(Buffer.from(env.KMS_PROXY_K8S_ROOT!, 'hex')))
const chain = await KeyChain.open({ rootKey, store: fileStore(env.KMS_PROXY_K8S_STORE!), name: 'cluster-a' })
const plugin = await serveKmsPlugin({ socket: env.KMS_PROXY_K8S_SOCKET!, chain, rootKey })
const healthz = await plugin.checkHealth()
process.stdout.write(`READY ${JSON.stringify({ keyId: plugin.stats().keyId, healthz, pid: process.pid })}\n`)
process.stdin.resume()
process.stdin.on('end', async () => {
  await plugin.close()
  process.exit(0)
})
