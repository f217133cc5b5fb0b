/**
 * A passphrase root reading wrapped KEKs it did not write: embedded data from anyone, or records in
 * a shared store. What a planted wrapped KEK can cost this process is bounded here.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { KeyChain, KmsProxyError, embeddedStore, kekAad } from '@kms-proxy/core'
import { MAX_KDF_MEMORY_BYTES, passphraseRootKey, type KdfOptions } from '../src/index.ts'
import { kdfCost, scryptOptions } from '../src/internal/kdf.ts'

afterEach(() => {
  vi.restoreAllMocks()
})

/** The embedded wrapped KEK inside encrypted data, as a view: patching it patches the data. */
function embeddedKek(encrypted: Uint8Array): Uint8Array {
  return encrypted.subarray(8, 8 + ((encrypted[6]! << 8) | encrypted[7]!))
}

const planted: Array<[label: string, made: KdfOptions, patch: (w: Uint8Array) => void]> = [
  ['PBKDF2 10,000,000 iterations', { name: 'pbkdf2', iterations: 1_000 }, (w) => new DataView(w.buffer, w.byteOffset).setUint32(1, 10_000_000)],
  ['scrypt N=2^20 r=4 p=16', { name: 'scrypt', N: 2 ** 10, r: 4, p: 1 }, (w) => w.set([20, 4, 16], 1)],
  [
    'Argon2id t=10 m=1 GiB p=16',
    { name: 'argon2id', t: 1, m: 128, p: 1 },
    (w) => {
      w[1] = 10
      new DataView(w.buffer, w.byteOffset).setUint32(2, 2 ** 20)
      w[6] = 16
    },
  ],
]

/** Encrypted data (embedded store) whose wrapped KEK names the planted parameters. */
async function plantedData(made: KdfOptions, patch: (w: Uint8Array) => void): Promise<Uint8Array> {
  const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'attacker', kdf: made }), store: embeddedStore() })
  const encrypted = await chain.encrypt('x')
  patch(embeddedKek(encrypted))
  return encrypted
}

describe('planted KDF parameters are refused before any derivation', () => {
  const readers: Array<[string, KdfOptions['name']]> = [
    ['a default reader (PBKDF2 600,000)', 'pbkdf2'],
    ['a default scrypt reader', 'scrypt'],
    ['a default Argon2id reader', 'argon2id'],
  ]
  for (const [label, made, patch] of planted) {
    for (const [readerLabel, kdf] of readers) {
      it(`${label}, read by ${readerLabel}: ERR_ROOT_KEY in well under a second`, async () => {
        const data = await plantedData(made, patch)
        const derive = vi.spyOn(crypto.subtle, 'deriveKey')
        const reader = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'victim', kdf }), store: embeddedStore() })
        const started = performance.now()
        const error = await reader.decrypt(data).then(() => undefined, (e: unknown) => e)
        const ms = performance.now() - started
        console.log(`planted ${label} read by ${readerLabel}: refused in ${ms.toFixed(1)} ms`)
        expect(error).toBeInstanceOf(KmsProxyError)
        expect((error as KmsProxyError).code).toBe('ERR_ROOT_KEY')
        expect((error as KmsProxyError).message).toMatch(/not accepted|times the configured/)
        expect(String(error)).not.toMatch(/victim|attacker/)
        expect(derive).not.toHaveBeenCalled()
        expect(ms).toBeLessThan(2_000)
      }, 10_000)
    }
  }
})

it('at most one derivation in flight per root; identical requests coalesce', async () => {
  const kekCount = 6
  const wrapped: Uint8Array[] = []
  for (let i = 0; i < kekCount; i++) {
    // A root per KEK, so each KEK has its own random salt and needs its own derivation.
    wrapped.push((await passphraseRootKey({ passphrase: 'pw', iterations: 20_000 }).newKek(kekAad('c', i + 1))).wrapped)
  }
  const real = crypto.subtle.deriveKey.bind(crypto.subtle)
  let inFlight = 0
  let most = 0
  const derive = vi.spyOn(crypto.subtle, 'deriveKey').mockImplementation(async (...args: Parameters<SubtleCrypto['deriveKey']>) => {
    most = Math.max(most, ++inFlight)
    try {
      return await real(...args)
    } finally {
      inFlight--
    }
  })
  const reader = passphraseRootKey({ passphrase: 'pw', iterations: 20_000 })
  const keks = await Promise.all(wrapped.flatMap((w, i) => [0, 1, 2].map(() => reader.unwrapKek(w, kekAad('c', i + 1)))))
  expect(keks).toHaveLength(3 * kekCount)
  expect(keks.every((k) => k instanceof CryptoKey && !k.extractable)).toBe(true)
  expect(derive).toHaveBeenCalledTimes(kekCount)
  expect(most).toBe(1)
})

it('derived keys: at most 8 kept (least recently used out), and only after a successful unwrap', async () => {
  const kekCount = 40
  const aad = (i: number) => kekAad('c', i + 1)
  const made: Uint8Array[] = []
  for (let i = 0; i < kekCount; i++) made.push((await passphraseRootKey({ passphrase: 'pw', iterations: 1_000 }).newKek(aad(i))).wrapped)
  const derive = vi.spyOn(crypto.subtle, 'deriveKey')
  const reader = passphraseRootKey({ passphrase: 'pw', iterations: 1_000 })
  for (let i = 0; i < kekCount; i++) await reader.unwrapKek(made[i]!, aad(i))
  expect(derive).toHaveBeenCalledTimes(kekCount)

  derive.mockClear()
  for (let i = kekCount - 8; i < kekCount; i++) await reader.unwrapKek(made[i]!, aad(i))
  expect(derive).toHaveBeenCalledTimes(0) // the 8 most recent are kept
  await reader.unwrapKek(made[0]!, aad(0))
  expect(derive).toHaveBeenCalledTimes(1) // the first was dropped

  // 100 invented salts on a real KEK: each costs one derivation, fails, and is not kept.
  derive.mockClear()
  const invented = (j: number) => {
    const w = made[kekCount - 1]!.slice()
    w.set(crypto.getRandomValues(new Uint8Array(16)), 6)
    w[6] = j
    return w
  }
  const plantedKeks = Array.from({ length: 100 }, (_, j) => invented(j))
  for (const w of plantedKeks) {
    await expect(reader.unwrapKek(w, aad(kekCount - 1))).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/wrong passphrase/) })
  }
  expect(derive).toHaveBeenCalledTimes(100)
  derive.mockClear()
  await expect(reader.unwrapKek(plantedKeks[0]!, aad(kekCount - 1))).rejects.toMatchObject({ code: 'ERR_ROOT_KEY' })
  expect(derive).toHaveBeenCalledTimes(1) // not kept from the first try
  // ... and they pushed out none of the good ones.
  derive.mockClear()
  await reader.unwrapKek(made[kekCount - 1]!, aad(kekCount - 1))
  await reader.unwrapKek(made[0]!, aad(0))
  expect(derive).toHaveBeenCalledTimes(0)
})

describe('what stays in memory', () => {
  it('PBKDF2: the passphrase is imported once as a non-extractable key, and the copy given to the import is zeroed', async () => {
    const importKey = vi.spyOn(crypto.subtle, 'importKey')
    const passphrase = new TextEncoder().encode('correct horse battery staple')
    const root = passphraseRootKey({ passphrase, iterations: 1_000 })
    const imports = importKey.mock.calls.filter((c) => c[2] === 'PBKDF2')
    expect(imports).toHaveLength(1)
    expect(imports[0]![3]).toBe(false)
    const copy = imports[0]![1] as Uint8Array
    expect(copy).not.toBe(passphrase)
    expect(copy.length).toBe(passphrase.length)
    const { wrapped } = await root.newKek(kekAad('c', 1))
    expect(copy.every((b) => b === 0)).toBe(true) // zeroed once the import settled
    expect(new TextDecoder().decode(passphrase)).toBe('correct horse battery staple') // the caller's bytes are the caller's
    expect(await passphraseRootKey({ passphrase: 'correct horse battery staple', iterations: 1_000 }).unwrapKek(wrapped, kekAad('c', 1))).toBeInstanceOf(CryptoKey)
  })

  it.each([
    ['scrypt', { name: 'scrypt', N: 2 ** 10, r: 8, p: 1 }],
    ['argon2id', { name: 'argon2id', t: 1, m: 64, p: 1 }],
  ] as const)('%s: the passphrase is kept sealed under a non-extractable key; its plaintext copies are zeroed after each derivation', async (_, kdf) => {
    const text = 'correct horse battery staple'
    const isPassphrase = (b: Uint8Array) => new TextDecoder().decode(b) === text
    const encrypt = vi.spyOn(crypto.subtle, 'encrypt')
    const realDecrypt = crypto.subtle.decrypt.bind(crypto.subtle)
    const opened: Uint8Array[] = []
    vi.spyOn(crypto.subtle, 'decrypt').mockImplementation(async (...args: Parameters<SubtleCrypto['decrypt']>) => {
      const out = await realDecrypt(...args)
      opened.push(new Uint8Array(out))
      return out
    })
    const root = passphraseRootKey({ passphrase: text, kdf })
    const { wrapped } = await root.newKek(kekAad('c', 1))
    // A second salt needs the passphrase again: it is still there, sealed.
    const other = (await passphraseRootKey({ passphrase: text, kdf }).newKek(kekAad('c', 2))).wrapped
    expect(await root.unwrapKek(wrapped, kekAad('c', 1))).toBeInstanceOf(CryptoKey)
    expect(await root.unwrapKek(other, kekAad('c', 2))).toBeInstanceOf(CryptoKey)

    const sealed = encrypt.mock.calls.map((c) => c[2] as Uint8Array).filter((d) => d.length === text.length)
    expect(sealed.length).toBeGreaterThanOrEqual(1)
    expect(sealed.every((d) => d.every((b) => b === 0))).toBe(true)
    expect(opened.length).toBeGreaterThanOrEqual(2) // one opening per derivation
    expect(opened.some(isPassphrase)).toBe(false) // every opened copy was zeroed after use
    expect(opened.every((d) => d.length === text.length && d.every((b) => b === 0))).toBe(true)
  })
})

describe('scrypt: what the constructor accepts, @noble/hashes derives', () => {
  it('refuses at construction what noble would refuse at the first rotation (its 128·r·(N+p+1) bytes > 1 GiB)', () => {
    expect(() => passphraseRootKey({ passphrase: 'x', kdf: { name: 'scrypt', N: 2 ** 20, r: 8, p: 1 } })).toThrow(RangeError)
    expect(() => passphraseRootKey({ passphrase: 'x', kdf: { name: 'scrypt', N: 2 ** 19, r: 16, p: 1 } })).toThrow(RangeError)
  })

  it.each([
    [2 ** 20, 7, 16, true],
    [2 ** 19, 15, 16, true],
    [2 ** 10, 32, 16, true],
    [2 ** 14, 8, 3, false],
  ])('N=%i r=%i p=%i: accepted (r + 1 refused when at the limit: %s), and noble counts exactly the memory the root allows it', async (N, r, p, atLimit) => {
    const kdf = { name: 'scrypt', N, r, p } as const
    expect(() => passphraseRootKey({ passphrase: 'x', kdf })).not.toThrow()
    expect(kdfCost(kdf).memoryBytes).toBeLessThanOrEqual(MAX_KDF_MEMORY_BYTES)
    const { scryptAsync } = await import('@noble/hashes/scrypt.js')
    // One byte less than the root gives it and noble refuses before allocating: it counts no less.
    const options = scryptOptions(kdf)
    await expect(scryptAsync(new Uint8Array(8), new Uint8Array(16), { ...options, maxmem: options.maxmem - 1 })).rejects.toThrow(/maxmem/)
    if (atLimit) expect(() => passphraseRootKey({ passphrase: 'x', kdf: { ...kdf, r: r + 1 } })).toThrow(RangeError)
  })

  it('the largest set at N = 2^20 (r=7 p=16, 896 MiB) passes noble\'s own check with the options the root gives it', async () => {
    const kdf = { name: 'scrypt', N: 2 ** 20, r: 7, p: 16 } as const
    const { scryptAsync } = await import('@noble/hashes/scrypt.js')
    // Stopped at noble's first progress report: reaching it means its maxmem check passed and its
    // table was allocated.
    const stop = new Error('stop')
    const run = scryptAsync(new Uint8Array(8), new Uint8Array(16), {
      ...scryptOptions(kdf),
      onProgress: () => {
        throw stop
      },
    })
    await expect(run).rejects.toBe(stop)
    // 3.5-3.9 s on an idle machine, 61 s at a load average of 39: the limit is above both.
  }, 180_000)

  it('a rotation under scrypt derives with what the constructor accepted', async () => {
    const store = embeddedStore()
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', kdf: { name: 'scrypt', N: 2 ** 12, r: 8, p: 2 } }), store, maxWrapsPerKek: 1 })
    const [a, b] = [await chain.encrypt('a'), await chain.encrypt('b')]
    expect(chain.stats().rotations).toBeGreaterThanOrEqual(1)
    const reader = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'pw', kdf: 'scrypt' }), store: embeddedStore() })
    expect(new TextDecoder().decode(await reader.decrypt(a)) + new TextDecoder().decode(await reader.decrypt(b))).toBe('ab')
  })
})

describe('the cost cap: maxCostFactor times the configured parameters', () => {
  const made = async (iterations: number) => (await passphraseRootKey({ passphrase: 'pw', iterations }).newKek(kekAad('c', 1))).wrapped
  const read = (wrapped: Uint8Array, options: Partial<Parameters<typeof passphraseRootKey>[0]> = {}) =>
    passphraseRootKey({ passphrase: 'pw', iterations: 1_000, ...options }).unwrapKek(wrapped, kekAad('c', 1))

  it('4x the configured work is read; a little more is refused unless maxCostFactor or acceptKdfs allows it', async () => {
    expect(await read(await made(4_000))).toBeInstanceOf(CryptoKey)
    const over = await made(4_001)
    await expect(read(over)).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/more than 4 times the configured/) })
    expect(await read(over, { maxCostFactor: 5 })).toBeInstanceOf(CryptoKey)
    expect(await read(over, { acceptKdfs: [{ name: 'pbkdf2', iterations: 2_000 }] })).toBeInstanceOf(CryptoKey)
    // Less than configured is cheap, so it is read.
    expect(await read(await made(1_000), { iterations: 3_000 })).toBeInstanceOf(CryptoKey)
  })

  it('Argon2id: memory counts on its own, and p (lanes over the same m blocks) adds no work', async () => {
    const argon = (t: number, m: number, p: number) => ({ name: 'argon2id', t, m, p }) as const
    const w = (await passphraseRootKey({ passphrase: 'pw', kdf: argon(1, 512, 4) }).newKek(kekAad('c', 1))).wrapped
    expect(await read(w, { kdf: argon(1, 512, 1) })).toBeInstanceOf(CryptoKey)
    expect(await read(w, { kdf: argon(4, 128, 1) })).toBeInstanceOf(CryptoKey) // same work, 4x memory
    await expect(read(w, { kdf: argon(8, 64, 1) })).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/times the configured/) }) // 8x memory
  })

  it('bad options are RangeError / TypeError', () => {
    expect(() => passphraseRootKey({ passphrase: 'x', maxCostFactor: 0.5 })).toThrow(RangeError)
    expect(() => passphraseRootKey({ passphrase: 'x', maxCostFactor: Number.NaN })).toThrow(RangeError)
    expect(() => passphraseRootKey({ passphrase: 'x', acceptKdfs: 'scrypt' as never })).toThrow(TypeError)
    expect(() => passphraseRootKey({ passphrase: 'x', acceptKdfs: ['bcrypt' as never] })).toThrow(RangeError)
    expect(() => passphraseRootKey({ passphrase: 'x', acceptKdfs: [{ name: 'scrypt', N: 2 ** 21 }] })).toThrow(RangeError)
  })
})
