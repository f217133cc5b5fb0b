/**
 * Known-answer vectors for the passphrase root's wrapped KEK (docs/FORMAT.md, "Passphrase root key:
 * wrapped KEK layout"). vectors.json was made once by generate-vectors.ts with an independent
 * encoder (vector-encoder.ts, on node:crypto); this test only reads it.
 */
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { KmsProxyError, kekAad } from '@kms-proxy/core'
import { passphraseRootKey } from '../src/index.ts'
import { aadOf, unwrap, wrap, wrappingKeyOf, type WrapInput } from './vector-encoder.ts'

interface Vector extends WrapInput {
  name: string
  description: string
  kind: 'positive' | 'negative'
  aad: string
  wrappingKey: string
  wrappedKek: string
  expectedError?: string
  expectedMessage?: string
}

const vectors: Vector[] = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'))
const positives = vectors.filter((v) => v.kind === 'positive')
const negatives = vectors.filter((v) => v.kind === 'negative')
const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'))
const toHex = (b: Uint8Array | ArrayBuffer) => Buffer.from(b instanceof ArrayBuffer ? b : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)).toString('hex')

/** Whether a non-extractable KEK holds these bytes: both seal the same block under the same IV. */
async function sameKey(kek: CryptoKey, bytes: Uint8Array<ArrayBuffer>): Promise<boolean> {
  const known = await crypto.subtle.importKey('raw', bytes, 'AES-GCM', false, ['encrypt'])
  const seal = (k: CryptoKey) => crypto.subtle.encrypt({ name: 'AES-GCM', iv: new Uint8Array(12) }, k, new Uint8Array(16))
  return toHex(await seal(kek)) === toHex(await seal(known))
}

it('the file holds the cases the format page shows', () => {
  expect(positives.map((v) => v.name)).toEqual(['pbkdf2-default', 'pbkdf2-1000', 'scrypt-2^10', 'argon2id-64', 'argon2id-256-p2'])
  expect(negatives.length).toBeGreaterThanOrEqual(8)
  expect(negatives.every((v) => v.expectedError === 'ERR_ROOT_KEY' && v.expectedMessage)).toBe(true)
})

it('docs/FORMAT.md shows the same wrapped KEKs and AAD', () => {
  const page = readFileSync(new URL('../../../docs/FORMAT.md', import.meta.url), 'utf8')
  const section = page.slice(page.indexOf('## Passphrase root key: wrapped KEK layout'))
  for (const v of positives) {
    const row = section.split('\n').find((line) => line.startsWith(`| \`${v.name}\` |`))
    expect(row, v.name).toBeDefined()
    const shown = row!.split('|').at(-2)!.replace(/[`\s]/g, '')
    expect(shown, v.name).toBe(v.wrappedKek)
  }
  const aad = /The AAD\s+of the first case is `([0-9a-f ]+)`/.exec(section)
  expect(aad?.[1]!.replace(/\s/g, '')).toBe(positives[0]!.aad)
})

describe.each(positives)('$name', (v) => {
  it('the independent encoder reproduces the frozen bytes; the AAD is core\'s kekAad', () => {
    expect(toHex(kekAad(v.chain, v.kekId))).toBe(v.aad)
    expect(aadOf(v.chain, v.kekId).toString('hex')).toBe(v.aad)
    expect(wrappingKeyOf(v.kdf, v.passphrase, v.salt).toString('hex')).toBe(v.wrappingKey)
    expect(wrap(v)).toBe(v.wrappedKek)
  })

  it('the root unwraps it to the vector\'s KEK', async () => {
    const root = passphraseRootKey({ passphrase: v.passphrase, kdf: v.kdf })
    const kek = await root.unwrapKek(hex(v.wrappedKek), hex(v.aad))
    expect(kek.extractable).toBe(false)
    expect(await sameKey(kek, hex(v.kek))).toBe(true)
  })

  it('the root writes this layout: same KDF field and salt, and the independent decoder opens it', async () => {
    const root = passphraseRootKey({ passphrase: v.passphrase, kdf: v.kdf, salt: hex(v.salt) })
    const { kek, wrapped } = await root.newKek(hex(v.aad))
    const prefix = v.wrappedKek.slice(0, v.wrappedKek.length - 2 * (12 + 16 + 16))
    expect(toHex(wrapped).slice(0, prefix.length)).toBe(prefix)
    expect(wrapped.length).toBe(v.wrappedKek.length / 2)
    expect(await sameKey(kek, hex(unwrap(toHex(wrapped), v.passphrase, v.chain, v.kekId)))).toBe(true)
  })
})

describe.each(negatives)('$name', (v) => {
  it(`is ${v.expectedError}`, async () => {
    const root = passphraseRootKey({ passphrase: v.passphrase, kdf: v.kdf })
    const error = await root.unwrapKek(hex(v.wrappedKek), kekAad(v.chain, v.kekId)).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect((error as KmsProxyError).code).toBe(v.expectedError)
    expect((error as KmsProxyError).message).toContain(v.expectedMessage)
  })
})
