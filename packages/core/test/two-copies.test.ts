// Finding 10: an adapter that resolved its own copy of @kms-proxy/core throws errors of that copy.
// The second copy here is core bundled anew from its sources, as a second install would be.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { build } from 'esbuild'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import * as core from '../src/index.ts'
import { KeyChain, KmsProxyError, RootKeyError, StoreError, aesRootKey, isKmsProxyError, memoryStore, type KeyStore, type RootKey } from '../src/index.ts'
import { ROOT_BYTES } from './helpers.ts'

let dir: string
let other: typeof core
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kp-core-copy-'))
  const outfile = join(dir, 'core-copy.mjs')
  await build({ entryPoints: [new URL('../src/index.ts', import.meta.url).pathname], bundle: true, format: 'esm', platform: 'neutral', outfile, logLevel: 'silent' })
  other = (await import(pathToFileURL(outfile).href)) as typeof core
})
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))

describe('errors from a second copy of core', () => {
  it('the copy is a different module (its classes are not ours)', () => {
    expect(other.RootKeyError).not.toBe(RootKeyError)
    expect(Object.getPrototypeOf(new other.RootKeyError('x').constructor)).not.toBe(KmsProxyError)
  })

  it('instanceof and isKmsProxyError recognise them, by class and by code', () => {
    const e = new other.RootKeyError('KMS 503', { retryable: true })
    expect(e).toBeInstanceOf(KmsProxyError)
    expect(e).toBeInstanceOf(RootKeyError)
    expect(e).not.toBeInstanceOf(StoreError)
    expect(isKmsProxyError(e)).toBe(true)
    expect(new RootKeyError('x')).toBeInstanceOf(other.KmsProxyError)
    expect(isKmsProxyError(new Error('plain'))).toBe(false)
    expect(isKmsProxyError({ code: 'ERR_ROOT_KEY' })).toBe(false) // a look-alike without the brand
    expect({ code: 'ERR_ROOT_KEY', retryable: true }).not.toBeInstanceOf(KmsProxyError)
  })

  it('a 503 from a root key of the other copy stays retryable and marks the root unavailable', async () => {
    const inner = aesRootKey(ROOT_BYTES)
    let down = true
    const rootKey: RootKey = {
      kind: 'kms',
      newKek: (aad) => (down ? Promise.reject(new other.RootKeyError('KMS answered 503', { retryable: true })) : inner.newKek(aad)),
      unwrapKek: (w, a) => inner.unwrapKek(w, a),
    }
    const chain = await KeyChain.open({ rootKey, store: memoryStore() })
    const error = await chain.encrypt('x').catch((e: unknown) => e)
    expect(error).toBeInstanceOf(RootKeyError)
    expect((error as RootKeyError).retryable).toBe(true)
    expect((error as RootKeyError).message).toBe('KMS answered 503')
    expect(chain.stats().rootKeyAvailable).toBe(false)
    down = false
    await chain.encrypt('x')
    expect(chain.stats().rootKeyAvailable).toBe(true)
  })

  it('a store error of the other copy keeps its code and is not re-wrapped', async () => {
    const inner = memoryStore()
    const store: KeyStore = { ...inner, atomic: true, embedsKeks: false, getHead: () => Promise.reject(new other.StoreError('etcd: permission denied', { retryable: false })) }
    const error = await KeyChain.open({ store }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoreError)
    expect((error as StoreError).retryable).toBe(false)
    expect((error as StoreError).message).toBe('etcd: permission denied')
  })
})
