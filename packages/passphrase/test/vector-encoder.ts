/**
 * An independent encoder for the passphrase root's wrapped KEK, written from docs/FORMAT.md
 * ("Passphrase root key: wrapped KEK layout") on node:crypto (PBKDF2, scrypt, AES-256-GCM) and
 * @noble/hashes (Argon2id: Node 20 has none). It imports nothing from the package's sources.
 */
import { createCipheriv, createDecipheriv, pbkdf2Sync, scryptSync } from 'node:crypto'
import { argon2id } from '@noble/hashes/argon2.js'

export type VectorKdf = { name: 'pbkdf2'; iterations: number } | { name: 'scrypt'; N: number; r: number; p: number } | { name: 'argon2id'; t: number; m: number; p: number }

export interface WrapInput {
  kdf: VectorKdf
  passphrase: string
  chain: string
  kekId: number
  salt: string
  iv: string
  kek: string
}

const bytes = (hex: string) => Buffer.from(hex, 'hex')

export function kdfField(kdf: VectorKdf): Buffer {
  if (kdf.name === 'pbkdf2') {
    const out = Buffer.alloc(5)
    out[0] = 0x10
    out.writeUInt32BE(kdf.iterations, 1)
    return out
  }
  if (kdf.name === 'scrypt') return Buffer.from([0x11, Math.log2(kdf.N), kdf.r, kdf.p])
  const out = Buffer.alloc(7)
  out[0] = 0x12
  out[1] = kdf.t
  out.writeUInt32BE(kdf.m, 2)
  out[6] = kdf.p
  return out
}

export function wrappingKeyOf(kdf: VectorKdf, passphrase: string, saltHex: string): Buffer {
  const pass = Buffer.from(passphrase, 'utf8')
  const salt = bytes(saltHex)
  if (kdf.name === 'pbkdf2') return pbkdf2Sync(pass, salt, kdf.iterations, 32, 'sha256')
  if (kdf.name === 'scrypt') return scryptSync(pass, salt, 32, { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r + 2 ** 20 })
  return Buffer.from(argon2id(pass, salt, { t: kdf.t, m: kdf.m, p: kdf.p, dkLen: 32 }))
}

export function aadOf(chain: string, kekId: number): Buffer {
  const id = Buffer.alloc(4)
  id.writeUInt32BE(kekId)
  return Buffer.concat([Buffer.from('kms-proxy/kek/v1\0', 'latin1'), id, Buffer.from(chain, 'utf8')])
}

/** tag ‖ parameters ‖ 0x10 ‖ salt (16) ‖ iv (12) ‖ AES-256-GCM(wrapping key, iv, KEK, AAD) ‖ GCM tag (16), as hex. */
export function wrap(v: WrapInput): string {
  const cipher = createCipheriv('aes-256-gcm', wrappingKeyOf(v.kdf, v.passphrase, v.salt), bytes(v.iv))
  cipher.setAAD(aadOf(v.chain, v.kekId))
  const sealed = Buffer.concat([cipher.update(bytes(v.kek)), cipher.final(), cipher.getAuthTag()])
  return Buffer.concat([kdfField(v.kdf), Buffer.from([16]), bytes(v.salt), bytes(v.iv), sealed]).toString('hex')
}

/** The inverse, for the package's own output: the KEK bytes (hex), or an exception. */
export function unwrap(wrappedHex: string, passphrase: string, chain: string, kekId: number): string {
  const w = bytes(wrappedHex)
  const at = w[0] === 0x10 ? 5 : w[0] === 0x11 ? 4 : 7
  const kdf: VectorKdf =
    w[0] === 0x10
      ? { name: 'pbkdf2', iterations: w.readUInt32BE(1) }
      : w[0] === 0x11
        ? { name: 'scrypt', N: 2 ** w[1]!, r: w[2]!, p: w[3]! }
        : { name: 'argon2id', t: w[1]!, m: w.readUInt32BE(2), p: w[6]! }
  if (w[at] !== 16) throw new Error('salt length')
  const salt = w.subarray(at + 1, at + 17)
  const iv = w.subarray(at + 17, at + 29)
  const body = w.subarray(at + 29)
  const decipher = createDecipheriv('aes-256-gcm', wrappingKeyOf(kdf, passphrase, salt.toString('hex')), iv)
  decipher.setAAD(aadOf(chain, kekId))
  decipher.setAuthTag(body.subarray(body.length - 16))
  return Buffer.concat([decipher.update(body.subarray(0, body.length - 16)), decipher.final()]).toString('hex')
}
