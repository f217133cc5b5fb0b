/**
 * The KMS v2 API (proto/api.proto, written from Kubernetes' k8s.io/kms/apis/v2/api.proto), loaded
 * with @grpc/proto-loader. The server and the tests' client load the same file.
 */
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import { fileURLToPath } from 'node:url'

/** proto/api.proto in this package; the same path from src/ and from dist/. */
export const PROTO_PATH = fileURLToPath(new URL('../proto/api.proto', import.meta.url))

/** The fully qualified gRPC service name kube-apiserver calls. */
export const SERVICE_NAME = 'v2.KeyManagementService'

/** Field names as in the .proto (key_id, not keyId); bytes as Buffer; absent fields at their defaults. */
export const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }

interface KmsV2Package {
  v2: { KeyManagementService: grpc.ServiceClientConstructor }
}

/** The KeyManagementService client constructor (its `.service` is the definition a server adds). */
export function loadKmsService(): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS)
  return (grpc.loadPackageDefinition(definition) as unknown as KmsV2Package).v2.KeyManagementService
}
