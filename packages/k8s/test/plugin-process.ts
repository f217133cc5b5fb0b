/**
 * The plugin as its own process, for restart and fleet tests: a key chain named cluster-a under
 * an AES root key (hex in KMS_PROXY_K8S_ROOT), or under the PKCS#11 bridge at
 * KMS_PROXY_K8S_BRIDGE_URL (token in KMS_PROXY_K8S_BRIDGE_TOKEN), on the file store at
 * KMS_PROXY_K8S_STORE or on etcd at KMS_PROXY_K8S_ETCD (JSON list of client URLs; key prefix
 * KMS_PROXY_K8S_PREFIX), served on KMS_PROXY_K8S_SOCKET. KMS_PROXY_K8S_STALENESS sets the
 * chain's maxStalenessMs; KMS_PROXY_K8S_WATCH=off opens it with `watch: false` (the bound
 * alone); KMS_PROXY_K8S_POLL_WATCH=<ms> gives the store a watchHead that polls
 * the head at that interval on a timer that is not unref'd, as an open watch connection holds a
 * process: the process exits only if the plugin closes its chain.
 *
 * Prints `READY {"keyId":…,"healthz":…,"pid":…}`. Reads commands on stdin, one a line: `rotate`
 * (prints `ROTATED {"keyId":…,"at":…}`, `at` the Date.now() when rotate() resolved) and
 * `health` (prints `HEALTH <stats().health>`). When stdin ends it closes the plugin and prints
 * `CLOSED {}`, then ends on its own (no process.exit): whatever still holds the event loop
 * keeps it running, which the tests detect.
 */
import { createInterface } from 'node:readline'
import { KeyChain, aesRootKey, type KeyStore, type RootKey } from '@kms-proxy/core'
import { etcdStore } from '../../etcd/src/index.ts'
import { keyIdFor } from '../src/envelope.ts'
import { serveKmsPlugin } from '../src/index.ts'

const env = process.env
const rootKey: RootKey = env.KMS_PROXY_K8S_BRIDGE_URL
  ? (await import('../../pkcs11/src/index.ts')).pkcs11BridgeRootKey({ url: env.KMS_PROXY_K8S_BRIDGE_URL, token: env.KMS_PROXY_K8S_BRIDGE_TOKEN!, retries: 0, timeoutMs: 2_000 })
  : aesRootKey(Uint8Array.from(Buffer.from(env.KMS_PROXY_K8S_ROOT!, 'hex')))
let store: KeyStore = env.KMS_PROXY_K8S_ETCD
  ? etcdStore({ endpoints: JSON.parse(env.KMS_PROXY_K8S_ETCD) as string[], prefix: env.KMS_PROXY_K8S_PREFIX ?? 'kms-proxy/' })
  : (await import('@kms-proxy/file')).fileStore(env.KMS_PROXY_K8S_STORE!)
if (env.KMS_PROXY_K8S_POLL_WATCH) store = pollingWatch(store, Number(env.KMS_PROXY_K8S_POLL_WATCH))
const chain = await KeyChain.open({
  rootKey,
  store,
  name: 'cluster-a',
  ...(env.KMS_PROXY_K8S_STALENESS ? { maxStalenessMs: Number(env.KMS_PROXY_K8S_STALENESS) } : {}),
  ...(env.KMS_PROXY_K8S_WATCH === 'off' ? { watch: false } : {}),
})
const plugin = await serveKmsPlugin({ socket: env.KMS_PROXY_K8S_SOCKET!, chain, rootKey })
const healthz = await plugin.checkHealth()
process.stdout.write(`READY ${JSON.stringify({ keyId: plugin.stats().keyId, healthz, pid: process.pid })}\n`)

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (line === 'rotate') {
    void chain.rotate().then((p) => {
      const at = Date.now()
      process.stdout.write(`ROTATED ${JSON.stringify({ keyId: keyIdFor(chain.name, p.id), at })}\n`)
    })
  } else if (line === 'health') {
    process.stdout.write(`HEALTH ${JSON.stringify(plugin.stats().health)}\n`)
  }
})
lines.on('close', async () => {
  await plugin.close()
  process.stdout.write('CLOSED {}\n')
})

/** `inner` with a watchHead that polls the head's version every `intervalMs` on a ref'd timer. */
function pollingWatch(inner: KeyStore, intervalMs: number): KeyStore {
  const version = async (chainName: string) => JSON.stringify((await inner.getHead(chainName).catch(() => undefined))?.version ?? null)
  const watchHead = (chainName: string, onChange: () => void): (() => void) => {
    let last: string | undefined
    const timer = setInterval(() => {
      void version(chainName).then((v) => {
        if (last !== undefined && v !== last) onChange()
        last = v
      })
    }, intervalMs)
    return () => clearInterval(timer)
  }
  // Defined on the new object, in place of any watchHead the store has (the etcd store's is read-only).
  return Object.create(inner, { watchHead: { value: watchHead } }) as KeyStore
}
