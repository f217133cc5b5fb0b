import { afterEach, describe, expect, it, vi } from 'vitest'
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fromBase64, fromBase64Url, toBase64, toBase64Url, toHex } from '../src/index.ts'

// Node's Buffer is the reference encoder here; the library itself never uses it.
const ref = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)

describe('base64, base64url and hex from @kms-proxy/core', () => {
  afterEach(() => vi.restoreAllMocks())

  it('encodes the RFC 4648 section 10 vectors', () => {
    const vectors: [string, string][] = [['', ''], ['f', 'Zg=='], ['fo', 'Zm8='], ['foo', 'Zm9v'], ['foob', 'Zm9vYg=='], ['fooba', 'Zm9vYmE='], ['foobar', 'Zm9vYmFy']]
    for (const [text, base64] of vectors) {
      const bytes = new TextEncoder().encode(text)
      expect(toBase64(bytes)).toBe(base64)
      expect(toBase64Url(bytes)).toBe(base64.replace(/=+$/, ''))
      expect(new TextDecoder().decode(fromBase64(base64))).toBe(text)
      expect(new TextDecoder().decode(fromBase64Url(base64.replace(/=+$/, '')))).toBe(text)
    }
    expect(toHex(new Uint8Array([0, 1, 0x7f, 0x80, 0xfe, 0xff]))).toBe('00017f80feff')
  })

  it('matches Node for every length 0..300 and for 1 MiB, both ways, and for subarray views', () => {
    for (let n = 0; n <= 300; n++) {
      const bytes = crypto.getRandomValues(new Uint8Array(n))
      expect(toBase64(bytes)).toBe(ref(bytes).toString('base64'))
      expect(toBase64Url(bytes)).toBe(ref(bytes).toString('base64url'))
      expect(toHex(bytes)).toBe(ref(bytes).toString('hex'))
      expect(fromBase64(ref(bytes).toString('base64'))).toEqual(bytes)
      expect(fromBase64Url(ref(bytes).toString('base64url'))).toEqual(bytes)
    }
    const big = new Uint8Array(1 << 20)
    for (let o = 0; o < big.length; o += 65536) crypto.getRandomValues(big.subarray(o, o + 65536))
    const view = big.subarray(3, big.length - 5)
    expect(toBase64(view)).toBe(ref(view).toString('base64'))
    expect(toBase64Url(view)).toBe(ref(view).toString('base64url'))
    expect(toHex(view)).toBe(ref(view).toString('hex'))
    // Buffer#equals: vitest's deep equality takes seconds over a MiB.
    expect(ref(fromBase64(ref(view).toString('base64'))).equals(ref(view))).toBe(true)
    const decoded = fromBase64Url(ref(view).toString('base64url'))
    expect(decoded.buffer).toBeInstanceOf(ArrayBuffer)
    expect(ref(decoded).equals(ref(view))).toBe(true)
  })

  it('refuses every non-canonical form with a TypeError that does not quote the text', () => {
    const base64Refused = [
      'Zg', // padding missing
      'Zg=', // padding short
      'Zg===', // padding long
      'Zh==', // nonzero leftover bits: 'Zh==' and 'Zg==' would both be "f"
      'Zm9=', // nonzero leftover bits with one '='
      'Zm9v\n', // line break
      ' Zm9v', // leading space
      'Zm 9v',
      'Zm9v\t',
      'Zg==Zg==', // padding inside
      'Z=g=',
      '====',
      'Zm8_', // base64url characters
      'Zm8-',
      'Zm9vYmFyé===',
      'Zm9\u0000',
    ]
    for (const text of base64Refused) {
      const error = (() => {
        try {
          fromBase64(text)
        } catch (e) {
          return e
        }
      })()
      expect(error, JSON.stringify(text)).toBeInstanceOf(TypeError)
      expect((error as Error).message).toBe('fromBase64: not canonical padded base64')
    }
    const base64UrlRefused = ['Zg==', 'Zg=', 'Zh', 'Zm9', 'Zm8+', 'Zm8/', 'Z', 'Zm9vY', ' Zm9v', 'Zm9v\n', 'Zm\r\n9v']
    for (const text of base64UrlRefused) {
      expect(() => fromBase64Url(text), JSON.stringify(text)).toThrow(new TypeError('fromBase64Url: not canonical unpadded base64url'))
    }
    for (const wrong of [undefined, null, 42, new Uint8Array(3)]) {
      expect(() => fromBase64(wrong as unknown as string)).toThrow(TypeError)
      expect(() => fromBase64Url(wrong as unknown as string)).toThrow(TypeError)
    }
    for (const wrong of ['abc', [1, 2, 3], undefined]) {
      expect(() => toBase64(wrong as unknown as Uint8Array)).toThrow(TypeError)
      expect(() => toBase64Url(wrong as unknown as Uint8Array)).toThrow(TypeError)
      expect(() => toHex(wrong as unknown as Uint8Array)).toThrow(TypeError)
    }
  })

  it('never goes through atob or btoa (no latin1 string copy of the bytes)', () => {
    const atob = vi.spyOn(globalThis, 'atob')
    const btoa = vi.spyOn(globalThis, 'btoa')
    const kek = crypto.getRandomValues(new Uint8Array(16))
    expect(fromBase64(toBase64(kek))).toEqual(kek)
    expect(fromBase64Url(toBase64Url(kek))).toEqual(kek)
    expect(atob).not.toHaveBeenCalled()
    expect(btoa).not.toHaveBeenCalled()
  })
})

describe('one implementation', () => {
  // The packages this rule covers; packages/cli and packages/k8s are listed in docs as pending.
  const packages = ['core', 'kms', 'pkcs11', 'webauthn', 'etcd', 'kv', 'indexeddb', 'passphrase', 'file', 'pkcs11-bridge', 'testkit']
  const root = new URL('../../', import.meta.url).pathname

  function sources(dir: string): string[] {
    return readdirSync(dir).flatMap((name) => {
      const path = join(dir, name)
      return statSync(path).isDirectory() ? sources(path) : path.endsWith('.ts') ? [path] : []
    })
  }

  it('no package but core encodes or decodes base64 or hex itself', () => {
    // atob/btoa, byte-to-hex and Buffer's own base64 are the copies there were.
    const copy = /\batob\(|\bbtoa\(|toString\(16\)\.padStart\(2|toString\('base64|toString\('hex'|\bfrom\(\s*\w+\s*,\s*'base64/
    const found: string[] = []
    for (const pkg of packages) {
      for (const file of sources(join(root, pkg, 'src'))) {
        if (file.endsWith(join('core', 'src', 'encoding.ts'))) continue
        readFileSync(file, 'utf8')
          .split('\n')
          .forEach((line, i) => {
            if (copy.test(line) && !line.trimStart().startsWith('//') && !line.trimStart().startsWith('*')) found.push(`${file.slice(root.length)}:${i + 1}`)
          })
      }
    }
    expect(found).toEqual([])
  })
})
