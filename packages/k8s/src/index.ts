/**
 * A Kubernetes KMS v2 plugin: kube-apiserver talks gRPC to it on a Unix socket (`Status`,
 * `Encrypt`, `Decrypt`), and it protects kube-apiserver's DEK seeds with a kms-proxy key chain
 * whose root is any root key: an HSM through the PKCS#11 bridge, a cloud KMS, a passphrase.
 * Node only. Operations and a sample `EncryptionConfiguration`: docs/k8s.md in the repository.
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { fileStore } from '@kms-proxy/file'
 * import { serveKmsPlugin } from '@kms-proxy/k8s'
 * const chain = await KeyChain.open({ rootKey, store: fileStore('/var/lib/kms-proxy/keys.json'), name: 'cluster-a' })
 * const plugin = await serveKmsPlugin({ socket: '/run/kms-proxy/kms.sock', chain, rootKey })  // plugin.close() to stop
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/k8s
 */
export { serveKmsPlugin } from './server.js'
export type { KmsPlugin, KmsPluginOptions, KmsPluginStats, KmsPluginHealth, KmsPluginRootState, KmsPluginRequestEvent } from './server.js'
export { loadKmsService } from './proto.js'
export {
  KMS_API_VERSION,
  KEK_ANNOTATION,
  MAX_CIPHERTEXT_BYTES,
  MAX_KEY_ID_BYTES,
  MAX_ANNOTATIONS_BYTES,
  MAX_PLAINTEXT_BYTES,
} from './envelope.js'
export { kmsPluginStatus } from './status.js'
export type { KmsPluginStatus } from './status.js'
