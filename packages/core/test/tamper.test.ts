import { describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError, aesRootKey, embeddedStore, memoryStore } from '../src/index.ts'
import { OTHER_ROOT_BYTES, ROOT_BYTES, expectCode, rejection } from './helpers.ts'

const PLAINTEXT = new TextEncoder().encode('attack at dawn, bring the secret plans')

/** Decrypts with a fresh chain on the same root and store too, so no cache can hide a flip. */
async function assertRejectsQuietly(chains: KeyChain[], data: Uint8Array, ad?: Uint8Array) {
  for (const chain of chains) {
    const error = await rejection(chain.decrypt(data, ad ? { associatedData: ad } : undefined))
    if (!(error instanceof KmsProxyError)) throw new Error(`not a KmsProxyError: ${String(error)}`)
    expect(error.message).not.toContain('attack')
  }
}

describe.each([
  ['memory store', memoryStore],
  ['embedded store', embeddedStore],
] as const)('tampering, %s', (_, makeStore) => {
  it('every single-byte flip and every truncation gives a KmsProxyError, never plaintext', async () => {
    const store = makeStore()
    const rootKey = aesRootKey(ROOT_BYTES)
    const writer = await KeyChain.open({ rootKey, store })
    const ad = new TextEncoder().encode('row 7')
    const encrypted = await writer.encrypt(PLAINTEXT, { associatedData: ad })
    // The untouched data decrypts (so the failures below are the flips, not the setup).
    expect(await writer.decrypt(encrypted, { associatedData: ad })).toEqual(PLAINTEXT)
    const fresh = await KeyChain.open({ rootKey, store, dekCacheSize: 0 })
    const codes = new Map<string, number>()
    for (let i = 0; i < encrypted.length; i++) {
      for (const mask of [0x01, 0x80]) {
        const flipped = encrypted.slice()
        flipped[i]! ^= mask
        for (const chain of [writer, fresh]) {
          const error = await rejection(chain.decrypt(flipped, { associatedData: ad }))
          expect(error, `byte ${i} mask ${mask}`).toBeInstanceOf(KmsProxyError)
          const code = (error as KmsProxyError).code
          codes.set(code, (codes.get(code) ?? 0) + 1)
        }
      }
    }
    for (let n = 0; n < encrypted.length; n++) {
      await assertRejectsQuietly([writer, fresh], encrypted.subarray(0, n), ad)
    }
    // Extra bytes at the end are not ignored either.
    await assertRejectsQuietly([writer, fresh], Uint8Array.of(...encrypted, 0), ad)
    expect([...codes.keys()].every((c) => ['ERR_DECRYPT', 'ERR_FORMAT', 'ERR_UNKNOWN_KEK', 'ERR_ROOT_KEY'].includes(c))).toBe(true)
  })

  it('wrong associated data, missing associated data and wrong root key give typed errors', async () => {
    const store = makeStore()
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const encrypted = await chain.encrypt(PLAINTEXT, { associatedData: 'user 1' })
    await expectCode(chain.decrypt(encrypted, { associatedData: 'user 2' }), 'ERR_DECRYPT')
    await expectCode(chain.decrypt(encrypted), 'ERR_DECRYPT')
    const wrongRoot = await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES), store })
    const error = await expectCode(wrongRoot.decrypt(encrypted, { associatedData: 'user 1' }), 'ERR_ROOT_KEY')
    expect(error.message).toMatch(/root key/)
  })

  it('a KEK record cannot move to another chain name', async () => {
    const store = makeStore()
    const rootKey = aesRootKey(ROOT_BYTES)
    const a = await KeyChain.open({ rootKey, store, name: 'a' })
    const encrypted = await a.encrypt(PLAINTEXT)
    if (store.embedsKeks) {
      const b = await KeyChain.open({ rootKey, store, name: 'b' })
      await expectCode(b.decrypt(encrypted), 'ERR_ROOT_KEY')
    } else {
      // Copy the record under chain "b" with the same id: the root wrap binds the name.
      for (const record of await store.listKeks('a')) await store.putKekIfAbsent('b', record)
      const b = await KeyChain.open({ rootKey, store, name: 'b' })
      await expectCode(b.decrypt(encrypted), 'ERR_ROOT_KEY')
    }
  })

  it('a wrapped DEK swapped between two encrypted datas fails (payload authenticates only under its DEK)', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: makeStore() })
    const x = await chain.encrypt('first message')
    const y = await chain.encrypt('other message')
    const headerLength = x.length - 'first message'.length - 12 - 16 - 12 - 32 - 16 + 0
    const split = headerLength + 12 + 32
    const spliced = Uint8Array.of(...y.subarray(0, split), ...x.subarray(split))
    await expectCode(chain.decrypt(spliced), 'ERR_DECRYPT')
  })
})

it('text form: bad prefix, bad base64url and flipped characters give ERR_FORMAT or ERR_DECRYPT', async () => {
  const chain = await KeyChain.open()
  const t = await chain.encryptText('secret text')
  await expectCode(chain.decryptText('kp2.' + t.slice(4)), 'ERR_FORMAT')
  await expectCode(chain.decryptText(t.slice(4)), 'ERR_FORMAT')
  await expectCode(chain.decryptText(t + '='), 'ERR_FORMAT')
  await expectCode(chain.decryptText(t.slice(0, 10) + '+' + t.slice(11)), 'ERR_FORMAT')
  for (let i = 4; i < t.length; i += 7) {
    const c = t[i] === 'A' ? 'B' : 'A'
    const error = await rejection(chain.decryptText(t.slice(0, i) + c + t.slice(i + 1)))
    expect(error).toBeInstanceOf(KmsProxyError)
  }
})

it('decryptText of binary (non-UTF-8) plaintext is ERR_FORMAT, and decrypt still returns the bytes', async () => {
  const chain = await KeyChain.open()
  const encrypted = await chain.encrypt(Uint8Array.of(0xff, 0xfe, 0x80))
  const asText = 'kp1.' + Buffer.from(encrypted).toString('base64url')
  await expectCode(chain.decryptText(asText), 'ERR_FORMAT')
  expect(await chain.decrypt(encrypted)).toEqual(Uint8Array.of(0xff, 0xfe, 0x80))
})
