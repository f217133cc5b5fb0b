/**
 * A one-call client of a running plugin's Status, for operators (`kms-proxy status --plugin`):
 * what kube-apiserver sees when it polls.
 */
import * as grpc from '@grpc/grpc-js'
import { loadKmsService } from './proto.js'
import { grpcAddress, parseEndpoint } from './server.js'

/** Status as kube-apiserver reads it. */
export interface KmsPluginStatus {
  /** The API version: "v2". */
  version: string
  /** "ok", or why not: anything else takes the node's kube-apiserver out of its load balancer. */
  healthz: string
  /** The key_id the next Encrypt will return ("" only before the chain's first KEK). */
  key_id: string
}

/**
 * Calls Status on the plugin at `socket` (a path, `unix:///path`, or `unix:///@name` / `@name`
 * for an abstract socket) with a deadline, as kube-apiserver does (3 s by default). Rejects with
 * the gRPC error when the plugin does not answer.
 *
 * @param timeoutMs - the deadline in ms (default 3,000, as kube-apiserver's).
 * @throws RangeError - `timeoutMs` not a positive integer.
 * @throws TypeError - a malformed socket.
 * @example
 * ```ts
 * const { healthz, key_id } = await kmsPluginStatus('/run/kms-proxy/kms.sock')
 * if (healthz !== 'ok') console.error(`plugin unhealthy: ${healthz}`)
 * ```
 */
export function kmsPluginStatus(socket: string, timeoutMs = 3_000): Promise<KmsPluginStatus> {
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new RangeError('timeoutMs: expected a positive integer')
  const address = grpcAddress(parseEndpoint(socket, true))
  const Service = loadKmsService()
  const client = new Service(address, grpc.credentials.createInsecure())
  return new Promise<KmsPluginStatus>((resolve, reject) => {
    const status = (client as unknown as { Status: (r: object, o: object, cb: (e: Error | null, r: KmsPluginStatus) => void) => void }).Status
    status.call(client, {}, { deadline: Date.now() + timeoutMs }, (error, response) => {
      client.close()
      if (error) reject(error)
      else resolve({ version: response.version, healthz: response.healthz, key_id: response.key_id })
    })
  })
}
