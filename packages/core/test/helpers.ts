import { expect } from 'vitest'
import { KmsProxyError, aesRootKey, type ErrorCode, type RootKey } from '../src/index.ts'
import { countingRootKey, type CountingRootKey } from '@kms-proxy/testkit'

export const ROOT_BYTES = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff)
export const OTHER_ROOT_BYTES = Uint8Array.from({ length: 32 }, (_, i) => (i * 53 + 7) & 0xff)

/** A real AES root key (fixed bytes) behind the testkit's call counter. */
export function counting(inner: RootKey = aesRootKey(ROOT_BYTES)): CountingRootKey {
  return countingRootKey(inner)
}

/** Resolves to the error a promise rejects with; fails the test if it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  let value: unknown
  try {
    value = await promise
  } catch (error) {
    return error
  }
  return expect.fail(`expected a rejection, got ${value instanceof Uint8Array ? `${value.length} bytes` : typeof value}`)
}

export async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<KmsProxyError> {
  const error = await rejection(promise)
  expect(error).toBeInstanceOf(KmsProxyError)
  expect((error as KmsProxyError).code).toBe(code)
  return error as KmsProxyError
}

export function kekIdOf(encrypted: Uint8Array): number {
  return new DataView(encrypted.buffer, encrypted.byteOffset).getUint32(1)
}

export const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)
