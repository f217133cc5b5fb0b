/**
 * Made packages/passphrase/test/vectors.json once: `pnpm exec tsx packages/passphrase/test/generate-vectors.ts`.
 * The vectors are frozen: tests read the file and never rewrite it.
 */
import { writeFileSync } from 'node:fs'
import { aadOf, kdfField, wrap, wrappingKeyOf, type VectorKdf, type WrapInput } from './vector-encoder.ts'

const passphrase = 'correct horse battery staple'
const base = {
  passphrase,
  chain: 'default',
  kekId: 0x01020304,
  salt: '000102030405060708090a0b0c0d0e0f',
  iv: '101112131415161718191a1b',
  kek: 'a0a1a2a3a4a5a6a7a8a9aaabacadaeaf',
}
const positives: Array<[string, string, VectorKdf, Partial<WrapInput>?]> = [
  ['pbkdf2-default', 'PBKDF2-SHA-256 at the default 600,000 iterations', { name: 'pbkdf2', iterations: 600_000 }],
  ['pbkdf2-1000', 'PBKDF2-SHA-256 at the minimum, 1,000 iterations; a non-ASCII chain name', { name: 'pbkdf2', iterations: 1_000 }, { chain: 'tenant/é' }],
  ['scrypt-2^10', 'scrypt N=2^10 r=8 p=1', { name: 'scrypt', N: 2 ** 10, r: 8, p: 1 }],
  ['argon2id-64', 'Argon2id (v0x13) t=1 m=64 KiB p=1', { name: 'argon2id', t: 1, m: 64, p: 1 }],
  ['argon2id-256-p2', 'Argon2id (v0x13) t=2 m=256 KiB p=2; another KEK id, salt, iv and KEK', { name: 'argon2id', t: 2, m: 256, p: 2 }, {
    kekId: 0xfffffffe,
    salt: 'f0e1d2c3b4a5968778695a4b3c2d1e0f',
    iv: 'cafebabecafebabecafebabe',
    kek: '00112233445566778899aabbccddeeff',
  }],
]

const cases: object[] = positives.map(([name, description, kdf, over]) => {
  const input = { ...base, ...over, kdf }
  return {
    name,
    description,
    kind: 'positive',
    ...input,
    aad: aadOf(input.chain, input.kekId).toString('hex'),
    wrappingKey: wrappingKeyOf(kdf, input.passphrase, input.salt).toString('hex'),
    wrappedKek: wrap(input),
  }
})

const byName = (n: string) => cases.find((c) => (c as { name: string }).name === n) as WrapInput & { wrappedKek: string }
const patched = (hex: string, at: number, replacement: Buffer) => {
  const b = Buffer.from(hex, 'hex')
  replacement.copy(b, at)
  return b.toString('hex')
}
const negative = (name: string, description: string, from: string, wrappedKek: string, reader: VectorKdf, message: string, chain?: string) => {
  const c = byName(from)
  return { name, description, kind: 'negative', kdf: reader, passphrase: c.passphrase, chain: chain ?? c.chain, kekId: c.kekId, wrappedKek, expectedError: 'ERR_ROOT_KEY', expectedMessage: message }
}
const argon = byName('argon2id-64')
const scrypt = byName('scrypt-2^10')
const pbkdf2 = byName('pbkdf2-1000')
cases.push(
  negative('planted-argon2id-1gib', 'argon2id-64 with its parameters changed to t=10 m=1 GiB p=16: refused before any derivation', 'argon2id-64',
    patched(argon.wrappedKek, 0, kdfField({ name: 'argon2id', t: 10, m: 2 ** 20, p: 16 })), argon.kdf, 'times the configured'),
  negative('planted-pbkdf2-10m', 'pbkdf2-1000 with 10,000,000 iterations, read by the default reader (600,000): refused before any derivation', 'pbkdf2-1000',
    patched(pbkdf2.wrappedKek, 0, kdfField({ name: 'pbkdf2', iterations: 10_000_000 })), { name: 'pbkdf2', iterations: 600_000 }, 'times the configured'),
  negative('other-family', 'scrypt-2^10 read by a root configured for PBKDF2 (no acceptKdfs)', 'scrypt-2^10', scrypt.wrappedKek, { name: 'pbkdf2', iterations: 600_000 }, 'not accepted'),
  negative('altered-tag', 'argon2id-64 with the last byte (GCM tag) flipped', 'argon2id-64',
    patched(argon.wrappedKek, argon.wrappedKek.length / 2 - 1, Buffer.from([Buffer.from(argon.wrappedKek, 'hex').at(-1)! ^ 1])), argon.kdf, 'wrong passphrase'),
  negative('altered-salt', 'scrypt-2^10 with the first salt byte changed (the salt is bound through the derived key)', 'scrypt-2^10',
    patched(scrypt.wrappedKek, 5, Buffer.from([0xff])), scrypt.kdf, 'wrong passphrase'),
  negative('other-chain', 'pbkdf2-1000 read as a KEK of the chain "default" (it was bound to "tenant/é")', 'pbkdf2-1000', pbkdf2.wrappedKek, pbkdf2.kdf, 'wrong passphrase', 'default'),
  negative('salt-length-15', 'argon2id-64 with the salt length byte set to 15', 'argon2id-64', patched(argon.wrappedKek, 7, Buffer.from([15])), argon.kdf, 'salt length'),
  negative('unknown-tag', 'argon2id-64 with tag 0x13', 'argon2id-64', patched(argon.wrappedKek, 0, Buffer.from([0x13])), argon.kdf, 'not wrapped by a passphrase root key'),
)

writeFileSync(new URL('./vectors.json', import.meta.url), JSON.stringify(cases, null, 2) + '\n')
console.log(`${cases.length} cases`)
