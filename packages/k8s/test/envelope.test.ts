/** The KMS v2 limits and the ciphertext/annotation split, without gRPC or crypto. */
import { describe, expect, it } from 'vitest'
import {
  KEK_ANNOTATION,
  MAX_PLAINTEXT_BYTES,
  annotationsProblem,
  ciphertextProblem,
  isFullyQualifiedDomainName,
  joinEncryptedData,
  keyIdFor,
  keyIdProblem,
  parseKeyId,
  splitEncryptedData,
} from '../src/envelope.ts'

describe('annotation keys: fully qualified domain names as kube-apiserver checks them', () => {
  it.each(['kek.kms-proxy.dev', 'a.b', 'kek.kms-proxy.dev.', 'x1.example-2.io', `${'a'.repeat(63)}.io`])('accepts %s', (name) => {
    expect(isFullyQualifiedDomainName(name)).toBe(true)
  })
  it.each(['', 'kek', '.', 'Kek.kms-proxy.dev', 'kek..dev', '-a.dev', 'a-.dev', 'a_b.dev', 'kms-proxy.dev/kek', `${'a'.repeat(64)}.io`, `${'a.'.repeat(127)}ab`])(
    'refuses %j',
    (name) => {
      expect(isFullyQualifiedDomainName(name)).toBe(false)
    },
  )
  it('253 characters pass, 254 do not', () => {
    const exact = (n: number) => {
      const parts: string[] = []
      let left = n
      while (left > 0) {
        const take = Math.min(63, left)
        parts.push('a'.repeat(take))
        left -= take + 1
      }
      return parts.join('.') // labels of up to 63, so the length is exactly n
    }
    expect(exact(253).length).toBe(253)
    expect(isFullyQualifiedDomainName(exact(253))).toBe(true)
    expect(isFullyQualifiedDomainName(exact(254))).toBe(false)
  })
})

describe('size limits: exactly the numbers kube-apiserver enforces', () => {
  it('annotations: keys + values up to 32,768 bytes', () => {
    const key = KEK_ANNOTATION
    expect(annotationsProblem({ [key]: new Uint8Array(32 * 1024 - key.length) })).toBeUndefined()
    expect(annotationsProblem({ [key]: new Uint8Array(32 * 1024 - key.length + 1) })).toMatch(/32769 bytes; at most 32768/)
    expect(annotationsProblem({ 'a.io': new Uint8Array(16 * 1024), 'b.io': new Uint8Array(16 * 1024 - 8) })).toBeUndefined()
    expect(annotationsProblem({ 'a.io': new Uint8Array(16 * 1024), 'b.io': new Uint8Array(16 * 1024 - 7) })).toMatch(/at most 32768/)
    expect(annotationsProblem({ kek: new Uint8Array(1) })).toMatch(/fully qualified/)
    expect(annotationsProblem({})).toBeUndefined()
  })
  it('key_id: 1 to 1,024 bytes of UTF-8', () => {
    expect(keyIdProblem('')).toMatch(/empty/)
    expect(keyIdProblem('k'.repeat(1024))).toBeUndefined()
    expect(keyIdProblem('k'.repeat(1025))).toMatch(/1025 bytes; at most 1024/)
    expect(keyIdProblem('é'.repeat(512))).toBeUndefined() // 1024 bytes
    expect(keyIdProblem('é'.repeat(513))).toMatch(/1026 bytes/) // 513 characters, 1026 bytes
  })
  it('ciphertext: 1 to 1,024 bytes; the largest plaintext that fits is 946 bytes', () => {
    expect(ciphertextProblem(new Uint8Array(0))).toMatch(/empty/)
    expect(ciphertextProblem(new Uint8Array(1024))).toBeUndefined()
    expect(ciphertextProblem(new Uint8Array(1025))).toMatch(/1025 bytes; at most 1024/)
    expect(MAX_PLAINTEXT_BYTES).toBe(946)
  })
})

describe('key_id', () => {
  it('is <chain>/<8 hex digits> and parses back only for its own chain', () => {
    expect(keyIdFor('default', 0xdeadbeef)).toBe('default/deadbeef')
    expect(keyIdFor('a/b', 1)).toBe('a/b/00000001')
    expect(parseKeyId('default/deadbeef', 'default')).toBe(0xdeadbeef)
    expect(parseKeyId('a/b/00000001', 'a/b')).toBe(1)
    for (const bad of ['other/deadbeef', 'default/DEADBEEF', 'default/deadbee', 'default/00000000', 'default', 'defaultdeadbeef', 'default/deadbeef0']) {
      expect(parseKeyId(bad, 'default'), bad).toBeUndefined()
    }
  })
})

describe('split and join', () => {
  const embeddedData = () => {
    // version 1, KEK id 0x01020304, flags 1, u16 length 3, wrapped KEK [9,9,9], then the rest
    const rest = Uint8Array.from({ length: 72 }, (_, i) => i)
    return { data: Uint8Array.from([1, 1, 2, 3, 4, 1, 0, 3, 9, 9, 9, ...rest]), rest }
  }
  it('moves an embedded KEK into the annotation and back, byte for byte', () => {
    const { data, rest } = embeddedData()
    const split = splitEncryptedData(data, 11)
    expect([...split.ciphertext]).toEqual([1, 1, 2, 3, 4, 1, ...rest])
    expect(Object.keys(split.annotations)).toEqual([KEK_ANNOTATION])
    expect([...split.annotations[KEK_ANNOTATION]!]).toEqual([9, 9, 9])
    const joined = joinEncryptedData(split.ciphertext, split.annotations)
    expect(joined.ok && [...joined.data]).toEqual([...data])
    expect(joined.ok && joined.kekId).toBe(0x01020304)
  })
  it('format v2: the whole block of wraps by root (count, names, lengths) moves to the annotation and back verbatim', () => {
    // version 2, KEK id 0x01020304, flags 1, count 2, "a" [7,7], "kms" [8]
    const block = [2, 1, 0x61, 0, 2, 7, 7, 3, 0x6b, 0x6d, 0x73, 0, 1, 8]
    const rest = Uint8Array.from({ length: 72 }, (_, i) => i)
    const data = Uint8Array.from([2, 1, 2, 3, 4, 1, ...block, ...rest])
    const split = splitEncryptedData(data, 6 + block.length)
    expect([...split.ciphertext]).toEqual([2, 1, 2, 3, 4, 1, ...rest])
    expect([...split.annotations[KEK_ANNOTATION]!]).toEqual(block)
    const joined = joinEncryptedData(split.ciphertext, split.annotations)
    expect(joined.ok && [...joined.data]).toEqual([...data])
    expect(joined.ok && joined.kekId).toBe(0x01020304)
    expect(joinEncryptedData(split.ciphertext, {})).toEqual({ ok: false, problem: `annotation ${KEK_ANNOTATION} is missing` })
  })
  it('leaves data without an embedded KEK untouched, with no annotations', () => {
    const data = Uint8Array.from([1, 0xff, 0, 0, 1, 0, 5, 5])
    const split = splitEncryptedData(data, 6)
    expect(split).toEqual({ ciphertext: data, annotations: {} })
    const joined = joinEncryptedData(data, {})
    expect(joined.ok && joined.kekId).toBe(0xff000001)
  })
  it('refuses a missing, extra or empty KEK annotation and a truncated ciphertext', () => {
    const { data } = embeddedData()
    const { ciphertext, annotations } = splitEncryptedData(data, 11)
    expect(joinEncryptedData(ciphertext, {})).toEqual({ ok: false, problem: `annotation ${KEK_ANNOTATION} is missing` })
    expect(joinEncryptedData(ciphertext, { [KEK_ANNOTATION]: new Uint8Array(0) })).toMatchObject({ ok: false })
    expect(joinEncryptedData(Uint8Array.from([1, 0, 0, 0, 1, 0, 7]), annotations)).toMatchObject({ ok: false, problem: expect.stringMatching(/without an embedded KEK/) })
    expect(joinEncryptedData(Uint8Array.from([1, 0, 0, 0, 1]), {})).toEqual({ ok: false, problem: 'ciphertext is truncated' })
  })
})
