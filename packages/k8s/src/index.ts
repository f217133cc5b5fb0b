export { serveKmsPlugin, grpcCodeFor } from './server.js'
export type { KmsPlugin, KmsPluginOptions, KmsPluginStats, KmsPluginHealth, KmsPluginRequestEvent } from './server.js'
export { PROTO_PATH, SERVICE_NAME, LOADER_OPTIONS, loadKmsService } from './proto.js'
export {
  KMS_API_VERSION,
  KEK_ANNOTATION,
  SEED_ASSOCIATED_DATA,
  MAX_CIPHERTEXT_BYTES,
  MAX_KEY_ID_BYTES,
  MAX_ANNOTATIONS_BYTES,
  MAX_PLAINTEXT_BYTES,
  isFullyQualifiedDomainName,
  annotationsProblem,
  keyIdProblem,
  ciphertextProblem,
  keyIdFor,
  parseKeyId,
  splitEncryptedData,
  joinEncryptedData,
} from './envelope.js'
