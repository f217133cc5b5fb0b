/**
 * The plugin as its own process, for restart tests: a key chain on the file store at
 * KMS_PROXY_K8S_STORE under an AES root key (hex in KMS_PROXY_K8S_ROOT), served on
 * KMS_PROXY_K8S_SOCKET. Prints `READY {"keyId":…}`; closes when stdin ends.
 */
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { serveKmsPlugin } from '../src/index.ts'

const rootKey = aesRootKey(Uint8Array.from(Buffer.from(process.env.KMS_PROXY_K8S_ROOT!, 'hex')))
const chain = await KeyChain.open({ rootKey, store: fileStore(process.env.KMS_PROXY_K8S_STORE!), name: 'cluster-a' })
const plugin = await serveKmsPlugin({ socket: process.env.KMS_PROXY_K8S_SOCKET!, chain, rootKey })
await plugin.checkHealth()
process.stdout.write(`READY ${JSON.stringify({ keyId: plugin.stats().keyId, pid: process.pid })}\n`)
process.stdin.resume()
process.stdin.on('end', async () => {
  await plugin.close()
  process.exit(0)
})
