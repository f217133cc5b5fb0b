import { expect, it } from 'vitest'
import { inspect } from 'node:util'
import fc from 'fast-check'
import { KeyChain, KmsProxyError, aesRootKey, decodeHeader, decodeMessage, embeddedStore, memoryStore } from '../src/index.ts'
import { _setRandomSourceForVectors } from '../src/internal/random.ts'
import { OTHER_ROOT_BYTES, ROOT_BYTES, rejection } from './helpers.ts'

const PLAINTEXT = 'SECRET-PLAINTEXT-7f3a'

/** Every encoding a byte string might leak in. */
function forms(bytes: Uint8Array): string[] {
  const b = Buffer.from(bytes)
  return [b.toString('hex'), b.toString('base64'), b.toString('base64url').slice(0, 16), b.toString('latin1'), [...bytes].join(',')]
}

it('no key bytes or plaintext in errors, String(chain), JSON.stringify(chain) or inspect(chain)', async () => {
  // Record every random byte the library draws: DEKs, IVs, KEK ids.
  const drawn: Uint8Array[] = []
  _setRandomSourceForVectors((n) => {
    const bytes = crypto.getRandomValues(new Uint8Array(n))
    // Key draws are 16 bytes per DEK (several DEKs per draw when the pool refills): check each.
    if (n >= 16) for (let o = 0; o + 16 <= n; o += 16) drawn.push(bytes.slice(o, o + 16))
    return bytes
  })
  const outputs: string[] = []
  try {
    for (const store of [memoryStore(), embeddedStore()]) {
      const rootKey = aesRootKey(ROOT_BYTES.slice())
      const chain = await KeyChain.open({ rootKey, store })
      const encrypted = await chain.encrypt(PLAINTEXT, { associatedData: 'ad' })
      const errors: unknown[] = []
      errors.push(await rejection(chain.decrypt(encrypted, { associatedData: 'wrong' })))
      const flipped = encrypted.slice()
      flipped[flipped.length - 1]! ^= 1
      errors.push(await rejection(chain.decrypt(flipped, { associatedData: 'ad' })))
      errors.push(await rejection(chain.decrypt(encrypted.subarray(0, 20))))
      const wrong = await KeyChain.open({ rootKey: aesRootKey(OTHER_ROOT_BYTES), store: embeddedStore() })
      if (store.embedsKeks) errors.push(await rejection(wrong.decrypt(encrypted, { associatedData: 'ad' })))
      errors.push(await rejection(chain.decryptText('kp1.' + Buffer.from(flipped).toString('base64url'))))
      for (const e of errors) {
        expect(e).toBeInstanceOf(KmsProxyError)
        const err = e as KmsProxyError
        outputs.push(String(err), err.message, err.stack ?? '', JSON.stringify(err), inspect(err, { depth: 5 }))
      }
      outputs.push(String(chain), JSON.stringify(chain), inspect(chain, { depth: 5 }), JSON.stringify(chain.stats()))
      outputs.push(String(rootKey), JSON.stringify(rootKey))
      expect(JSON.parse(JSON.stringify(chain))).toMatchObject({ name: 'default', rootKey: 'aes' })
    }
  } finally {
    _setRandomSourceForVectors(undefined)
  }
  expect(drawn.length).toBeGreaterThanOrEqual(4)
  const secrets = [ROOT_BYTES, OTHER_ROOT_BYTES, ...drawn]
  for (const out of outputs) {
    expect(out).not.toContain(PLAINTEXT)
    expect(out).not.toContain('SECRET')
    for (const secret of secrets) for (const form of forms(secret)) expect(out.includes(form)).toBe(false)
  }
})

it('the decoder is pure and total: any bytes give parts or a FormatError, nothing else', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, plausible) => {
      if (plausible && bytes.length > 6) {
        bytes[0] = 1
        bytes[5]! &= 1
      }
      try {
        const parts = decodeMessage(bytes)
        expect(parts.headerLength).toBe(decodeHeader(bytes).headerLength)
        expect(parts.header.length + parts.iv1.length + parts.wrappedDek.length + parts.iv2.length + parts.sealed.length).toBe(bytes.length)
        expect(parts.sealed.length).toBeGreaterThanOrEqual(16)
      } catch (error) {
        expect(error).toBeInstanceOf(KmsProxyError)
        expect((error as KmsProxyError).code).toBe('ERR_FORMAT')
      }
    }),
    { numRuns: 5000 },
  )
})
