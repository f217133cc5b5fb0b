/** What every KMS test does through a key chain: count the KMS calls, and move a KEK to another chain. */
import { describe, expect, it, vi } from 'vitest'
import { KeyChain, kekAad, memoryStore, toBase64, toBase64Url, type KmsProxyError, type RootKey } from '@kms-proxy/core'

/**
 * 2,000 encryptions with maxWrapsPerKek 500 (so 4 KEKs), then 2,000 decryptions in a new chain on
 * the same store. `calls` is the KMS's call log; it is cleared before each phase and a copy of
 * each phase's calls is returned.
 */
export async function countCallsThroughChain(root: () => RootKey, calls: string[]) {
  calls.length = 0
  const store = memoryStore()
  const chain = await KeyChain.open({ rootKey: root(), store, maxWrapsPerKek: 500, dekPoolSize: 0 })
  const encrypted = []
  for (let i = 0; i < 2000; i++) encrypted.push(await chain.encrypt(`record ${i}`))
  const keks = (await store.listKeks('default')).length
  const encryptCalls = calls.splice(0)
  const reader = await KeyChain.open({ rootKey: root(), store })
  await Promise.all(encrypted.map((e) => reader.decrypt(e)))
  const used = new Set(encrypted.map((e) => new DataView(e.buffer, e.byteOffset).getUint32(1))).size
  return { keks, used, encryptCalls, decryptCalls: calls.splice(0) }
}

/** Copies chain a's KEK records to chain b and has b decrypt a's data: the error it gives. */
export async function decryptWithKekMovedToAnotherChain(root: () => RootKey): Promise<any> {
  const store = memoryStore()
  const a = await KeyChain.open({ rootKey: root(), store, name: 'a' })
  const encrypted = await a.encrypt('x')
  for (const r of await store.listKeks('a')) await store.putKekIfAbsent('b', r)
  const b = await KeyChain.open({ rootKey: root(), store, name: 'b' })
  return b.decrypt(encrypted).then(() => undefined, (e: unknown) => e)
}

/** `promise`, or a rejection after `ms`: turns a hang into a test failure instead of a stuck run. */
export function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms (hung)`)), ms)
  })
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer))
}

/** What {@link wrapKekOneCallEach} saw. */
export interface WrapKekRun {
  /** The envelope form wrapKek returned. */
  wrapped: Uint8Array
  /** KMS calls made by the one wrapKek, and by the one unwrapKek. */
  wrapCalls: string[]
  unwrapCalls: string[]
  /** Times `crypto.subtle.exportKey` was called during wrapKek and unwrapKek. */
  exports: number
  /** Whether any request body held the KEK's bytes (base64 or base64url). */
  kekSent: boolean
  /** The unwrapped KEK is the original: it encrypts the same bytes under the same IV. */
  decrypts: boolean
  /** `extractable` of the KEK unwrapped without options, and with `{ extractable: true }`, from the envelope and from newKek's form. */
  extractable: { plain: boolean; asked: boolean; newKekPlain: boolean; newKekAsked: boolean }
  /** The error of an unwrap of the envelope under another AAD. */
  otherAad: any
  /** wrapKek of a non-extractable KEK: whether it threw a TypeError, and the KMS calls it made. */
  nonExtractable: { typeError: boolean; calls: number }
}

/**
 * wrapKek of a KEK whose bytes the test knows, then unwrapKek of what it returned: the KMS calls
 * each made (`calls` is the KMS's log), whether the KEK's bytes were exported or sent, and
 * whether the extractable option was honoured for both wrapped forms. `make` builds the root with
 * the given fetch (which records request bodies and forwards to `base`).
 */
export async function wrapKekOneCallEach(make: (fetch: typeof globalThis.fetch) => RootKey, calls: string[], base: typeof globalThis.fetch = globalThis.fetch): Promise<WrapKekRun> {
  const bodies: string[] = []
  const recording: typeof globalThis.fetch = async (input, init) => {
    bodies.push(String(init?.body ?? ''))
    return base(input, init)
  }
  const root = make(recording)
  const bytes = crypto.getRandomValues(new Uint8Array(16))
  const kek = await crypto.subtle.importKey('raw', bytes, 'AES-GCM', true, ['encrypt', 'decrypt', 'wrapKey', 'unwrapKey'])
  const iv = crypto.getRandomValues(new Uint8Array(12))
  const sample = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, kek, new TextEncoder().encode('sample')))
  const aad = kekAad('wrap-kek', 7)
  const exportKey = vi.spyOn(crypto.subtle, 'exportKey')
  let run: Omit<WrapKekRun, 'extractable' | 'otherAad' | 'kekSent' | 'nonExtractable'> & { plain: boolean }
  try {
    calls.length = 0
    const wrapped = await root.wrapKek!(kek, aad)
    const wrapCalls = calls.splice(0)
    const plain = await root.unwrapKek(wrapped, aad)
    const unwrapCalls = calls.splice(0)
    // A KEK has no decrypt usage: the same plaintext under the same IV must give the same bytes.
    const again = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, plain, new TextEncoder().encode('sample')))
    const same = again.length === sample.length && again.every((b, i) => b === sample[i])
    run = { wrapped, wrapCalls, unwrapCalls, exports: exportKey.mock.calls.length, decrypts: same, plain: plain.extractable }
  } finally {
    exportKey.mockRestore()
  }
  const asked = await root.unwrapKek(run.wrapped, aad, { extractable: true })
  const { wrapped: legacy } = await root.newKek(aad)
  const extractable = {
    plain: run.plain,
    asked: asked.extractable,
    newKekPlain: (await root.unwrapKek(legacy, aad)).extractable,
    newKekAsked: (await root.unwrapKek(legacy, aad, { extractable: true })).extractable,
  }
  const otherAad = await root.unwrapKek(run.wrapped, kekAad('wrap-kek', 8)).then(() => undefined, (e: unknown) => e)
  calls.length = 0
  const refused = await root.wrapKek!(await root.unwrapKek(run.wrapped, aad), aad).then(() => undefined, (e: unknown) => e)
  const nonExtractable = { typeError: refused instanceof TypeError, calls: calls.length - 1 } // less the unwrap's own call
  const b64 = toBase64(bytes)
  const kekSent = bodies.some((b) => b.includes(b64) || b.includes(toBase64Url(bytes)))
  const { plain: _, ...rest } = run
  return { ...rest, extractable, otherAad, kekSent, nonExtractable }
}

/**
 * The assertions every KMS makes on a {@link wrapKekOneCallEach} run: the calls named, the tag,
 * nothing exported or sent, the option honoured, the AAD bound. Returns the envelope's length.
 */
export function expectWrapKek(run: WrapKekRun, expected: { wrap: string[]; unwrap: string[]; tag: number }): number {
  expect(run.wrapCalls).toEqual(expected.wrap)
  expect(run.unwrapCalls).toEqual(expected.unwrap)
  expect(run.wrapped[0]).toBe(expected.tag)
  // tag, u16 length, the KMS's wrapped data key, iv (12), sealed KEK (16 + 16)
  expect(run.wrapped.length).toBe(3 + ((run.wrapped[1]! << 8) | run.wrapped[2]!) + 44)
  expect({ exports: run.exports, kekSent: run.kekSent, decrypts: run.decrypts }).toEqual({ exports: 0, kekSent: false, decrypts: true })
  expect(run.extractable).toEqual({ plain: false, asked: true, newKekPlain: false, newKekAsked: true })
  expect(run.otherAad?.code).toBe('ERR_ROOT_KEY')
  expect(run.nonExtractable).toEqual({ typeError: true, calls: 0 })
  return run.wrapped.length
}

/** `extractable` of newKek's form unwrapped without options, then with `{ extractable: true }`. */
export async function extractableOfNewKekForm(root: RootKey): Promise<[boolean, boolean]> {
  const aad = kekAad('extractable', 3)
  const { wrapped } = await root.newKek(aad)
  return [(await root.unwrapKek(wrapped, aad)).extractable, (await root.unwrapKek(wrapped, aad, { extractable: true })).extractable]
}

/**
 * The wrapKek tests of a KMS root key: the extractable option on newKek's form, then one wrapKek
 * and one unwrapKek of a known KEK ({@link wrapKekOneCallEach}, {@link expectWrapKek}). `calls`
 * reads the KMS's call log (its server may start after this runs); `length` is the envelope's
 * size where it does not depend on the server's ciphertext format.
 */
export function describeWrapKek(name: string, o: { root: (overrides?: { fetch: typeof globalThis.fetch }) => RootKey; calls: () => string[]; base?: typeof globalThis.fetch; wrap: string[]; unwrap: string[]; tag: number; newKekTag: number; length?: number }): void {
  describe(`${name}: wrapKek of an existing KEK (a second root of a chain)`, () => {
    it('unwrapKek of the newKek form gives a non-extractable KEK, an extractable one only with { extractable: true }', async () => {
      expect(await extractableOfNewKekForm(o.root())).toEqual([false, true])
    })

    it(`wrapKek makes one ${o.wrap.join(' + ')} and unwrapKek one ${o.unwrap.join(' + ')}; the KEK is never exported nor sent; extractable only when asked, for both forms`, async () => {
      const run = await wrapKekOneCallEach((fetch) => o.root({ fetch }), o.calls(), o.base)
      const length = expectWrapKek(run, o)
      if (o.length !== undefined) expect(length).toBe(o.length)
      console.log(`${name} wrapKek envelope: ${length} bytes`)
    })

    it('a data key cut out of an envelope and offered in the newKek form is refused by its length, never used as a KEK', async () => {
      const root = o.root()
      const aad = kekAad('cut-out', 5)
      const kek = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 128 }, true, ['encrypt', 'wrapKey', 'unwrapKey'])
      const wrapped = await root.wrapKek!(kek, aad)
      const dataKey = wrapped.subarray(3, 3 + ((wrapped[1]! << 8) | wrapped[2]!))
      const error = await root.unwrapKek(Uint8Array.of(o.newKekTag, ...dataKey), aad).then(() => undefined, (e: unknown) => e)
      expect([(error as KmsProxyError)?.code, (error as Error)?.message]).toEqual(['ERR_ROOT_KEY', expect.stringMatching(/256-bit KEK; expected 128/)])
    })
  })
}
