/**
 * A KMS v2 client built from the plugin's own proto/api.proto, calling the plugin the way
 * kube-apiserver does: unary calls on the Unix socket, with a deadline (the EncryptionConfiguration
 * timeout, 3 s by default there).
 */
import * as grpc from '@grpc/grpc-js'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadKmsService } from '../src/index.ts'

export interface StatusResponse {
  version: string
  healthz: string
  key_id: string
}
export interface EncryptResponse {
  ciphertext: Buffer
  key_id: string
  annotations: Record<string, Buffer>
}
export interface DecryptRequest {
  ciphertext: Uint8Array
  uid?: string
  key_id: string
  annotations?: Record<string, Uint8Array>
}

export interface KmsClient {
  status(): Promise<StatusResponse>
  encrypt(plaintext: Uint8Array, uid?: string): Promise<EncryptResponse>
  decrypt(request: DecryptRequest): Promise<Buffer>
  close(): void
}

export function kmsClient(socket: string, deadlineMs = 3_000): KmsClient {
  const Service = loadKmsService()
  const client = new Service(`unix:${socket}`, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 1024 * 1024 })
  const call = <T>(method: string, request: object): Promise<T> =>
    new Promise((resolve, reject) => {
      const fn = (client as unknown as Record<string, Function>)[method]!.bind(client)
      fn(request, { deadline: Date.now() + deadlineMs }, (error: grpc.ServiceError | null, response: T) => (error ? reject(error) : resolve(response)))
    })
  return {
    status: () => call<StatusResponse>('Status', {}),
    encrypt: (plaintext, uid = crypto.randomUUID()) => call<EncryptResponse>('Encrypt', { plaintext, uid }),
    decrypt: async (r) => (await call<{ plaintext: Buffer }>('Decrypt', { uid: crypto.randomUUID(), annotations: {}, ...r })).plaintext,
    close: () => client.close(),
  }
}

/** The gRPC error a call failed with (fails the test if it succeeded). */
export async function grpcError(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  const outcome = await promise.then(
    () => undefined,
    (e: unknown) => e as grpc.ServiceError,
  )
  if (!outcome) throw new Error('expected the call to fail')
  return outcome
}

export const codeOf = (e: grpc.ServiceError): string => grpc.status[e.code] ?? String(e.code)

export function tempDir(prefix = 'kms-proxy-k8s-'): { dir: string; socket: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  return { dir, socket: join(dir, 'kms.sock'), cleanup: () => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }) }
}

export const seed = (): Uint8Array => crypto.getRandomValues(new Uint8Array(32))
export const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')
