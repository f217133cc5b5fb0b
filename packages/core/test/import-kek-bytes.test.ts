/** importKekBytes: the one way a byte-oriented root (KMS, HSM bridge) turns KEK bytes into a KEK. */
import { expect, it } from 'vitest'
import { KEK_ALGORITHM, RootKeyError, importKekBytes } from '@kms-proxy/core'

it('imports 16 bytes as a non-extractable AES-128-GCM KEK and zeroes the bytes', async () => {
  const bytes = crypto.getRandomValues(new Uint8Array(16))
  const copy = bytes.slice()
  const kek = await importKekBytes(bytes, 'test KMS')
  expect(bytes).toEqual(new Uint8Array(16))
  expect(kek.extractable).toBe(false)
  expect(kek.algorithm).toEqual({ name: KEK_ALGORITHM.name, length: KEK_ALGORITHM.length })
  expect([...kek.usages].sort()).toEqual(['encrypt', 'unwrapKey', 'wrapKey'])
  // The same key as the bytes given: a message sealed under one opens under the other.
  const iv = crypto.getRandomValues(new Uint8Array(12))
  const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, kek, new TextEncoder().encode('x'))
  const again = await crypto.subtle.importKey('raw', copy, 'AES-GCM', false, ['decrypt'])
  expect(new TextDecoder().decode(await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, again, sealed))).toBe('x')
})

it('refuses another length with a RootKeyError naming the root and the length, and still zeroes the bytes', async () => {
  for (const length of [0, 15, 17, 32]) {
    const bytes = new Uint8Array(length).fill(0xab)
    const error = await importKekBytes(bytes, 'test KMS').catch((e: unknown) => e)
    expect(error).toBeInstanceOf(RootKeyError)
    expect((error as RootKeyError).message).toBe(`test KMS returned a ${length * 8}-bit KEK; expected 128`)
    expect(bytes.every((b) => b === 0)).toBe(true)
  }
})
