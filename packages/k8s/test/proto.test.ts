/**
 * proto/api.proto against Kubernetes' k8s.io/kms/apis/v2/api.proto: the package, the service,
 * the RPC paths kube-apiserver calls, and every message's field names, numbers and types, as
 * transcribed from upstream (see the comment at the top of the .proto for the version read).
 */
import { expect, it } from 'vitest'
import * as protoLoader from '@grpc/proto-loader'
import { LOADER_OPTIONS, PROTO_PATH, SERVICE_NAME, loadKmsService } from '../src/proto.ts'

const UPSTREAM: Record<string, [name: string, number: number, type: string, label?: string][]> = {
  StatusRequest: [],
  StatusResponse: [['version', 1, 'TYPE_STRING'], ['healthz', 2, 'TYPE_STRING'], ['key_id', 3, 'TYPE_STRING']],
  DecryptRequest: [['ciphertext', 1, 'TYPE_BYTES'], ['uid', 2, 'TYPE_STRING'], ['key_id', 3, 'TYPE_STRING'], ['annotations', 4, 'TYPE_MESSAGE', 'LABEL_REPEATED']],
  DecryptResponse: [['plaintext', 1, 'TYPE_BYTES']],
  EncryptRequest: [['plaintext', 1, 'TYPE_BYTES'], ['uid', 2, 'TYPE_STRING']],
  EncryptResponse: [['ciphertext', 1, 'TYPE_BYTES'], ['key_id', 2, 'TYPE_STRING'], ['annotations', 3, 'TYPE_MESSAGE', 'LABEL_REPEATED']],
}

it('matches upstream v2.KeyManagementService: RPC paths, messages, field names, numbers and types', () => {
  const service = loadKmsService().service
  expect(SERVICE_NAME).toBe('v2.KeyManagementService')
  expect(Object.fromEntries(Object.entries(service).map(([name, m]) => [name, [m.path, m.requestStream, m.responseStream]]))).toEqual({
    Status: ['/v2.KeyManagementService/Status', false, false],
    Decrypt: ['/v2.KeyManagementService/Decrypt', false, false],
    Encrypt: ['/v2.KeyManagementService/Encrypt', false, false],
  })
  const definition = protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS)
  for (const [message, fields] of Object.entries(UPSTREAM)) {
    const type = (definition[`v2.${message}`] as { type: { field: { name: string; number: number; type: string; label: string; typeName: string }[] } }).type
    expect(type.field.map((f) => [f.name, f.number, f.type, ...(f.label === 'LABEL_REPEATED' ? [f.label] : [])]), message).toEqual(fields)
  }
  // annotations is map<string, bytes>: a repeated entry message with key string = 1, value bytes = 2.
  for (const message of ['v2.EncryptResponse', 'v2.DecryptRequest']) {
    const entry = (definition[message] as { type: { nestedType: { options: { mapEntry?: boolean } | null; field: { name: string; number: number; type: string }[] }[] } }).type.nestedType[0]!
    expect(entry.options?.mapEntry, message).toBe(true)
    expect(entry.field.map((f) => [f.name, f.number, f.type]), message).toEqual([['key', 1, 'TYPE_STRING'], ['value', 2, 'TYPE_BYTES']])
  }
})
