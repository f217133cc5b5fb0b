/**
 * The passphrase root as one of several roots of a chain: wrapKek wraps a KEK the chain already
 * has (unwrapped, extractable, from another root) in the layout unwrapKek reads, through the same
 * derived-key cache as unwrapKek and newKek; unwrapKek hands out an extractable KEK only when asked.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { KeyChain, KmsProxyError, aesRootKey, kekAad, memoryStore, type RootKey } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { passphraseRootKey } from '../src/index.ts'

const FAST = 1_000
const AAD = kekAad('chain', 7)
const BLOCK = new Uint8Array(16).fill(0x5a)
const IV = new Uint8Array(12)

afterEach(() => {
  vi.restoreAllMocks()
})

/** What the chain hands wrapKek: KEKs made under another root, unwrapped extractable. */
async function existingKeks(n: number, aad: (i: number) => Uint8Array = () => AAD) {
  const source = aesRootKey(crypto.getRandomValues(new Uint8Array(32)))
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const { kek, wrapped } = await source.newKek(aad(i))
      const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: IV }, kek, BLOCK))
      return { sealed, extractable: await source.unwrapKek(wrapped, aad(i), { extractable: true }) }
    }),
  )
}

/** Whether `kek` opens what the original KEK sealed (a KEK's usages are encrypt, wrapKey, unwrapKey: as the chain uses it). */
async function opens(kek: CryptoKey, sealed: Uint8Array<ArrayBuffer>): Promise<boolean> {
  const block = await crypto.subtle.unwrapKey('raw', sealed, kek, { name: 'AES-GCM', iv: IV }, 'AES-GCM', true, ['encrypt'])
  const plain = new Uint8Array(await crypto.subtle.exportKey('raw', block))
  return plain.length === BLOCK.length && plain.every((b, i) => b === BLOCK[i])
}

const wrapOf = (root: RootKey) => {
  if (typeof root.wrapKek !== 'function') throw new Error('this root has no wrapKek')
  return root.wrapKek.bind(root)
}

describe.each([
  ['pbkdf2', { name: 'pbkdf2', iterations: FAST }, 0x10],
  ['scrypt', { name: 'scrypt', N: 2 ** 10, r: 8, p: 1 }, 0x11],
  ['argon2id', { name: 'argon2id', t: 1, m: 64, p: 1 }, 0x12],
] as const)('%s', (_, kdf, tag) => {
  it('wrapKek: the layout newKek writes, read by a fresh root of the passphrase; the KEK opens what the original sealed; AAD bound; another passphrase refused', async () => {
    const { sealed, extractable } = (await existingKeks(1))[0]!
    const root = passphraseRootKey({ passphrase: 'correct horse', kdf })
    const wrapped = await wrapOf(root)(extractable, AAD)
    const { wrapped: made } = await root.newKek(AAD)
    expect(wrapped.length).toBe(made.length)
    // tag, KDF parameters and salt: the same prefix as newKek's (one salt per root)
    const prefix = made.length - 12 - 32
    expect(Buffer.from(wrapped.subarray(0, prefix))).toEqual(Buffer.from(made.subarray(0, prefix)))
    expect(wrapped[0]).toBe(tag)

    const fresh = passphraseRootKey({ passphrase: 'correct horse', kdf })
    const kek = await fresh.unwrapKek(wrapped, AAD)
    expect(kek.extractable).toBe(false)
    expect(await opens(kek, sealed)).toBe(true)
    await expect(fresh.unwrapKek(wrapped, kekAad('chain', 8))).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
    const wrong = passphraseRootKey({ passphrase: 'wrong horse', kdf })
    const error = await wrong.unwrapKek(wrapped, AAD).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect(error).toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/wrong passphrase/) })
    expect(`${String(error)} ${JSON.stringify(error)}`).not.toMatch(/horse/)
  })
})

it('unwrapKek returns an extractable KEK only with { extractable: true }, and that KEK re-wraps under another root', async () => {
  const root = passphraseRootKey({ passphrase: 'pw', iterations: FAST })
  const { kek, wrapped } = await root.newKek(AAD)
  const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: IV }, kek, BLOCK))
  expect((await root.unwrapKek(wrapped, AAD)).extractable).toBe(false)
  expect((await root.unwrapKek(wrapped, AAD, {})).extractable).toBe(false)
  expect((await root.unwrapKek(wrapped, AAD, { extractable: false })).extractable).toBe(false)
  const handle = await root.unwrapKek(wrapped, AAD, { extractable: true })
  expect(handle.extractable).toBe(true)
  expect(handle.usages.sort()).toEqual(['encrypt', 'unwrapKey', 'wrapKey'])
  // onward to a second passphrase root, as addRoot / changeRoot do
  const second = passphraseRootKey({ passphrase: 'another', iterations: FAST })
  const rewrapped = await wrapOf(second)(handle, AAD)
  expect(await opens(await passphraseRootKey({ passphrase: 'another', iterations: FAST }).unwrapKek(rewrapped, AAD), sealed)).toBe(true)
})

it('wrapKek refuses a KEK it cannot wrap (not a CryptoKey, non-extractable, not AES-GCM) with TypeError, before any derivation', async () => {
  const derive = vi.spyOn(crypto.subtle, 'deriveKey')
  const root = passphraseRootKey({ passphrase: 'pw', iterations: FAST })
  const { kek } = await aesRootKey(new Uint8Array(32)).newKek(AAD)
  const hmac = await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-256' }, true, ['sign'])
  for (const bad of [kek, hmac, new Uint8Array(16), undefined]) {
    await expect(wrapOf(root)(bad as CryptoKey, AAD)).rejects.toThrow(TypeError)
  }
  expect(derive).not.toHaveBeenCalled()
})

it('wrapKek reuses the derived-key cache: 1,000 KEKs cost one derivation under a new root (concurrent or not) and none under a root that already unwrapped the chain\'s KEKs', async () => {
  const keks = await existingKeks(1_000, (i) => kekAad('chain', i + 1))
  const derive = vi.spyOn(crypto.subtle, 'deriveKey')

  // A new root (addRoot / changeRoot to a new passphrase): the default 600,000 iterations.
  const fresh = passphraseRootKey({ passphrase: 'recovery phrase' })
  let started = performance.now()
  const half = 500
  const first = await Promise.all(keks.slice(0, half).map((k, i) => wrapOf(fresh)(k.extractable, kekAad('chain', i + 1))))
  const rest: Uint8Array[] = []
  for (const [i, k] of keks.slice(half).entries()) rest.push(await wrapOf(fresh)(k.extractable, kekAad('chain', half + i + 1)))
  const wrapMs = performance.now() - started
  expect(derive).toHaveBeenCalledTimes(1)
  const wrapped = [...first, ...rest]
  expect(new Set(wrapped.map((w) => Buffer.from(w.subarray(0, 22)).toString('hex'))).size).toBe(1) // one salt

  // A second root object of that passphrase (another process) reads all 1,000 with one derivation,
  // then wraps them again (a second chain, or a re-run) with none.
  derive.mockClear()
  const reader = passphraseRootKey({ passphrase: 'recovery phrase' })
  started = performance.now()
  const opened = await Promise.all(wrapped.map((w, i) => reader.unwrapKek(w, kekAad('chain', i + 1), { extractable: true })))
  const unwrapMs = performance.now() - started
  expect(derive).toHaveBeenCalledTimes(1)
  for (const i of [0, 1, 499, 500, 998, 999]) expect(await opens(opened[i]!, keks[i]!.sealed)).toBe(true)
  derive.mockClear()
  const again = await Promise.all(opened.map((k, i) => wrapOf(reader)(k, kekAad('chain', i + 1))))
  expect(derive).not.toHaveBeenCalled()
  // the salt the reader found in the chain's KEKs is the one it wraps under
  expect(Buffer.from(again[0]!.subarray(0, 22))).toEqual(Buffer.from(wrapped[0]!.subarray(0, 22)))
  console.log(`passphrase root, PBKDF2 600,000: wrapKek of 1,000 KEKs under a new root ${wrapMs.toFixed(0)} ms (1 derivation); unwrapKek of the 1,000 by a fresh root ${unwrapMs.toFixed(0)} ms (1 derivation)`)
}, 30_000)

// The contract every root passes, with the wrapKek checks of issue 15 once testkit has them.
describeRootKey(createHarness(it), {
  name: 'passphraseRootKey',
  make: () => passphraseRootKey({ passphrase: 'correct horse', iterations: FAST }),
  other: () => passphraseRootKey({ passphrase: 'wrong horse', iterations: FAST }),
  secrets: ['correct horse', 'wrong horse'],
  wrapKek: true,
})

describe('in a chain: addRoot, changeRoot', () => {
  /** A chain under an AES root with `n` KEKs, and one message under every 100th. */
  async function chainOfKeks(n: number) {
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: aesRootKey(crypto.getRandomValues(new Uint8Array(32))), store })
    const messages: Array<{ text: string; encrypted: Uint8Array }> = []
    for (let i = 0; i < n; i++) {
      await chain.rotate()
      if (i % 100 === 0 || i === n - 1) messages.push({ text: `m${i}`, encrypted: await chain.encrypt(`m${i}`) })
    }
    return { store, chain, messages }
  }
  const text = (b: Uint8Array) => new TextDecoder().decode(b)

  it('addRoot of a new passphrase root to a chain of 1,000 KEKs costs one derivation; the passphrase alone then opens them all, a wrong one opens none and wraps nothing', async () => {
    const { store, chain, messages } = await chainOfKeks(1_000)
    const derive = vi.spyOn(crypto.subtle, 'deriveKey')
    const started = performance.now()
    const report = await chain.addRoot('recovery', passphraseRootKey({ passphrase: 'recovery phrase' }))
    const addMs = performance.now() - started
    expect(report).toMatchObject({ name: 'recovery', keks: 1_000, wrapped: 1_000, deleted: 0, rootKeyWraps: 1_000 })
    expect(derive).toHaveBeenCalledTimes(1)

    derive.mockClear()
    const recovered = await KeyChain.open({ roots: { recovery: passphraseRootKey({ passphrase: 'recovery phrase' }) }, store })
    for (const m of messages) expect(text(await recovered.decrypt(m.encrypted))).toBe(m.text)
    expect(derive).toHaveBeenCalledTimes(1)

    const records = (await store.listKeks('default')).length
    const wrong = await KeyChain.open({ roots: { recovery: passphraseRootKey({ passphrase: 'recovery phrasf' }) }, store })
    await expect(wrong.decrypt(messages[0]!.encrypted)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/wrong passphrase/) })
    await expect(wrong.rotate()).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
    await expect(wrong.addRoot('third', passphraseRootKey({ passphrase: 'third', iterations: FAST }))).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
    expect((await store.listKeks('default')).length).toBe(records)
    console.log(`passphrase root, PBKDF2 600,000: addRoot to a chain of 1,000 KEKs ${addMs.toFixed(0)} ms, 1 derivation, ${report.rootKeyUnwraps} unwraps by the AES root and ${report.rootKeyWraps} wraps`)
  }, 30_000)

  it('changeRoot to a new passphrase: one derivation (the old root\'s key is cached); the new passphrase alone opens every KEK, the old one none', async () => {
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'first phrase', iterations: FAST }), store })
    const messages: Array<{ text: string; encrypted: Uint8Array }> = []
    for (let i = 0; i < 100; i++) {
      await chain.rotate()
      if (i % 10 === 0) messages.push({ text: `m${i}`, encrypted: await chain.encrypt(`m${i}`) })
    }
    const derive = vi.spyOn(crypto.subtle, 'deriveKey')
    const report = await chain.changeRoot(passphraseRootKey({ passphrase: 'second phrase', iterations: FAST }))
    expect(report).toMatchObject({ name: 'default-2', keks: 100, wrapped: 100, deleted: 100, rootKeyWraps: 100 })
    expect(derive).toHaveBeenCalledTimes(1)
    const renewed = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'second phrase', iterations: FAST }), store })
    for (const m of messages) expect(text(await renewed.decrypt(m.encrypted))).toBe(m.text)
    const before = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'first phrase', iterations: FAST }), store })
    await expect(before.decrypt(messages[0]!.encrypted)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
  })
})
