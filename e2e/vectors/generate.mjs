#!/usr/bin/env node
/**
 * Known-answer vectors for encrypted data format v1, written ONCE to v1.json next to this file.
 *
 * An independent encoder: written from docs/FORMAT.md against raw crypto.subtle only. It does not
 * import kms-proxy, on purpose, so that the vectors check the library instead of echoing it.
 *
 *   node e2e/vectors/generate.mjs           writes v1.json; refuses if it exists
 *   node e2e/vectors/generate.mjs --force   overwrites (only for a deliberate, reviewed change:
 *                                           v1 vectors are frozen once published)
 *   node e2e/vectors/generate.mjs --stdout  prints the JSON instead of writing it (to diff)
 *
 * Every input is fixed: derived from SHA-256 of a label (so that the file is reproducible) and
 * written out in full in each case.
 *
 * Stream cases (kind "stream-positive" / "stream-negative", added after the message cases) are
 * sealed with node:crypto's AES-128-GCM (createCipheriv), not crypto.subtle, so that the two
 * halves of the file come from two implementations, and neither is kms-proxy.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto'
import { existsSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const subtle = globalThis.crypto.subtle
const OUT = fileURLToPath(new URL('./v1.json', import.meta.url))

// ------------------------------------------------------------------------------ bytes

const enc = new TextEncoder()
const utf8 = (s) => enc.encode(s)
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) out.set(p, (o += p.length) - p.length)
  return out
}
const u32 = (v) => new Uint8Array([(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff])
const u16 = (v) => new Uint8Array([(v >>> 8) & 0xff, v & 0xff])
const flip = (b, i, mask = 0x01) => {
  const out = b.slice()
  out[i < 0 ? out.length + i : i] ^= mask
  return out
}
const set = (b, i, v) => {
  const out = b.slice()
  out[i] = v
  return out
}

// RFC 4648 §5 base64url, no padding.
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
function base64url(b) {
  let out = ''
  for (let i = 0; i < b.length; i += 3) {
    const n = (b[i] << 16) | ((b[i + 1] ?? 0) << 8) | (b[i + 2] ?? 0)
    const chars = [n >> 18, (n >> 12) & 63, (n >> 6) & 63, n & 63].map((v) => B64URL[v])
    out += chars.slice(0, Math.min(4, b.length - i + 1)).join('')
  }
  return out
}

async function derive(label, n) {
  const d = new Uint8Array(await subtle.digest('SHA-256', utf8(`kms-proxy/vectors/v1/${label}`)))
  if (n > d.length) throw new Error('derive: at most 32 bytes')
  return d.slice(0, n)
}

// ------------------------------------------------------------------------------ format v1 (docs/FORMAT.md)

const VERSION = 0x01
const FLAG_EMBEDDED = 0x01
const KEK_AAD_LABEL = utf8('kms-proxy/kek/v1\0') // 17 bytes, trailing NUL
const AES_ROOT_LAYOUT = 0x01

async function gcmEncrypt(keyBytes, iv, plaintext, aad) {
  const key = await subtle.importKey('raw', keyBytes, 'AES-GCM', false, ['encrypt'])
  return new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: aad, tagLength: 128 }, key, plaintext))
}

async function gcmDecrypt(keyBytes, iv, sealed, aad) {
  const key = await subtle.importKey('raw', keyBytes, 'AES-GCM', false, ['decrypt'])
  return new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv, additionalData: aad, tagLength: 128 }, key, sealed))
}

/** Root KEK wrap AAD: label || u32 id || UTF-8 chain name. */
const kekAad = (chain, kekId) => cat(KEK_AAD_LABEL, u32(kekId), utf8(chain))

/** aes root key layout: 0x01 || iv0 (12) || AES-GCM(root, iv0, kek, kekAad). */
async function wrapKek(rootKey, chain, kekId, kek, iv0) {
  return cat(new Uint8Array([AES_ROOT_LAYOUT]), iv0, await gcmEncrypt(rootKey, iv0, kek, kekAad(chain, kekId)))
}

function header(kekId, embeddedKek, flags = embeddedKek ? FLAG_EMBEDDED : 0) {
  const fixed = cat(new Uint8Array([VERSION]), u32(kekId), new Uint8Array([flags]))
  return embeddedKek ? cat(fixed, u16(embeddedKek.length), embeddedKek) : fixed
}

/** Payload AAD: version, kind 0x00 (single message), caller's associated data. */
const payloadAad = (ad) => cat(new Uint8Array([VERSION, 0x00]), ad)

/** header || iv1 || AES-GCM(kek, iv1, dek, header) || iv2 || AES-GCM(dek, iv2, plaintext, payloadAad). */
async function encryptV1({ kek, kekId, embeddedKek, dek, iv1, iv2, plaintext, associatedData }) {
  const h = header(kekId, embeddedKek)
  const wrappedDek = await gcmEncrypt(kek, iv1, dek, h)
  const sealed = await gcmEncrypt(dek, iv2, plaintext, payloadAad(associatedData))
  if (wrappedDek.length !== 32) throw new Error('wrapped DEK must be 32 bytes')
  return cat(h, iv1, wrappedDek, iv2, sealed)
}

/** Independent check of a positive case: unwrap the KEK, the DEK, then the payload. */
async function selfCheck(c) {
  const b = (k) => Uint8Array.from(Buffer.from(c[k], 'hex'))
  const data = b('encrypted')
  const flags = data[5]
  const H = flags & FLAG_EMBEDDED ? 8 + ((data[6] << 8) | data[7]) : 6
  const wrapped = flags & FLAG_EMBEDDED ? data.subarray(8, H) : b('wrappedKek')
  if (wrapped[0] !== AES_ROOT_LAYOUT) throw new Error(`${c.name}: layout`)
  const kek = await gcmDecrypt(b('rootKey'), wrapped.subarray(1, 13), wrapped.subarray(13), kekAad(c.chain, c.kekId))
  if (hex(kek) !== c.kek) throw new Error(`${c.name}: KEK`)
  const dek = await gcmDecrypt(kek, data.subarray(H, H + 12), data.subarray(H + 12, H + 44), data.subarray(0, H))
  if (hex(dek) !== c.dek) throw new Error(`${c.name}: DEK`)
  const pt = await gcmDecrypt(dek, data.subarray(H + 44, H + 56), data.subarray(H + 56), payloadAad(b('associatedData')))
  if (hex(pt) !== c.plaintext) throw new Error(`${c.name}: plaintext`)
  if (data.length !== H + 72 + pt.length) throw new Error(`${c.name}: length`)
}

// ------------------------------------------------------------------------------ fixed inputs

const ROOT_256 = await derive('root-key-256', 32)
const ROOT_128 = await derive('root-key-128', 16)

/** KEKs: one record each (fixed id, bytes and iv0), shared by the cases that use it. */
const KEKS = {
  main: { rootKey: ROOT_256, chain: 'vectors', kekId: 0x9e3779b9, kek: await derive('kek-main', 16), iv0: await derive('iv0-main', 12) },
  // Smallest id, a 128-bit root key, and a chain name that is not ASCII (bound as UTF-8).
  unicode: { rootKey: ROOT_128, chain: 'tenant/Zürich-東京-🔑', kekId: 1, kek: await derive('kek-unicode', 16), iv0: await derive('iv0-unicode', 12) },
  // Largest id.
  max: { rootKey: ROOT_256, chain: 'vectors', kekId: 0xffffffff, kek: await derive('kek-max', 16), iv0: await derive('iv0-max', 12) },
}
for (const k of Object.values(KEKS)) k.wrappedKek = await wrapKek(k.rootKey, k.chain, k.kekId, k.kek, k.iv0)

const pattern = (n) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) & 0xff)

/** Plaintexts, each used in both modes. */
const MESSAGES = [
  { id: 'empty', kek: 'main', plaintext: new Uint8Array(0), ad: new Uint8Array(0), text: true },
  { id: 'one-byte', kek: 'main', plaintext: utf8('*'), ad: new Uint8Array(0), text: true },
  { id: 'pattern-1027', kek: 'main', plaintext: pattern(1027), ad: new Uint8Array(0) },
  { id: 'utf8-text-with-ad', kek: 'main', plaintext: utf8('Grüße, 世界: the envelope is sealed 🔐'), ad: utf8('table=users;row=42'), text: true },
  { id: 'unicode-chain-128-root', kek: 'unicode', plaintext: pattern(16), ad: Uint8Array.from([0x00, 0xff, 0x10, 0x80]) },
  { id: 'max-kek-id', kek: 'max', plaintext: utf8('largest KEK id'), ad: utf8('x'), text: true },
]

const cases = []
/** Positive cases by name, for the negatives to start from. */
const positives = new Map()

async function positive(m, mode) {
  const k = KEKS[m.kek]
  const name = `${mode}/${m.id}`
  const inputs = {
    kek: k.kek,
    kekId: k.kekId,
    embeddedKek: mode === 'embedded' ? k.wrappedKek : undefined,
    dek: await derive(`${name}/dek`, 16),
    iv1: await derive(`${name}/iv1`, 12),
    iv2: await derive(`${name}/iv2`, 12),
    plaintext: m.plaintext,
    associatedData: m.ad,
  }
  const encrypted = await encryptV1(inputs)
  const c = {
    name,
    description: `${mode === 'stored' ? 'KEK in the store (flags 0)' : 'wrapped KEK embedded in the header (flags 1)'}; ${m.plaintext.length} B plaintext, ${m.ad.length} B associated data`,
    kind: 'positive',
    rootKey: hex(k.rootKey),
    chain: k.chain,
    kekId: k.kekId,
    kek: hex(k.kek),
    iv0: hex(k.iv0),
    wrappedKek: hex(k.wrappedKek),
    mode,
    dek: hex(inputs.dek),
    iv1: hex(inputs.iv1),
    iv2: hex(inputs.iv2),
    plaintext: hex(m.plaintext),
    associatedData: hex(m.ad),
    encrypted: hex(encrypted),
  }
  if (m.text) c.text = 'kp1.' + base64url(encrypted)
  await selfCheck(c)
  cases.push(c)
  positives.set(name, { case: c, inputs, encrypted, k })
}

for (const mode of ['stored', 'embedded']) for (const m of MESSAGES) await positive(m, mode)

/**
 * A negative case from a positive one: `change` returns what to alter. `encrypted` is the altered
 * binary (or, for text cases, the valid binary and an altered `text`).
 */
function negative(from, name, description, expectedError, change) {
  const p = positives.get(from)
  if (!p) throw new Error(`no positive case ${from}`)
  const altered = change(p)
  const c = {
    ...p.case,
    name: `${p.case.mode}/negative/${name}`,
    description: `${description} (from ${from})`,
    kind: 'negative',
    ...altered.fields,
    encrypted: hex(altered.encrypted ?? p.encrypted),
    expectedError,
  }
  if (altered.text !== undefined) c.text = altered.text
  else delete c.text
  cases.push(c)
}

const H_STORED = 6
const H_EMBEDDED = 8 + KEKS.main.wrappedKek.length
const bytes = (e) => ({ encrypted: e })

// --- stored mode (memoryStore seeded with the KEK record)
const P = 'stored/pattern-1027'
negative(P, 'flipped-tag', 'last byte (tag) flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, -1)))
negative(P, 'flipped-ciphertext', 'first ciphertext byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_STORED + 56)))
negative(P, 'flipped-wrapped-dek', 'first wrapped-DEK byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_STORED + 12)))
negative(P, 'flipped-wrapped-dek-tag', 'last byte of the wrapped DEK (its tag) flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_STORED + 43)))
negative(P, 'flipped-iv1', 'first iv1 byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_STORED)))
negative(P, 'flipped-iv2', 'last iv2 byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_STORED + 55)))
negative(P, 'tag-cut-1', 'last byte cut: long enough to decode, the tag fails', 'ERR_DECRYPT', (p) => bytes(p.encrypted.slice(0, -1)))
negative(P, 'tag-cut-16', 'whole tag cut: long enough to decode, the tag fails', 'ERR_DECRYPT', (p) => bytes(p.encrypted.slice(0, -16)))
negative(P, 'byte-appended', 'one byte appended', 'ERR_DECRYPT', (p) => bytes(cat(p.encrypted, new Uint8Array([0]))))
negative(P, 'associated-data-given', 'associated data given that encryption did not use', 'ERR_DECRYPT', () => ({ fields: { associatedData: hex(utf8('table=users;row=42')) } }))
negative(P, 'unknown-kek-id', 'KEK id changed to one that is not in the store', 'ERR_UNKNOWN_KEK', (p) => bytes(flip(p.encrypted, 4)))
negative(P, 'kek-id-zero', 'KEK id 0 (reserved)', 'ERR_FORMAT', (p) => bytes(cat(p.encrypted.slice(0, 1), new Uint8Array(4), p.encrypted.slice(5))))
negative(P, 'version-2', 'version byte 0x02', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 0, 0x02)))
negative(P, 'version-0', 'version byte 0x00', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 0, 0x00)))
negative(P, 'unknown-flag-bit-2', 'flags 0x04: unknown bit', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 5, 0x04)))
negative(P, 'unknown-flag-bit-7', 'flags 0x80: unknown bit', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 5, 0x80)))
negative(P, 'stream-flag', 'flags 0x02: stream data given to the single-message decoder', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 5, 0x02)))
negative('stored/empty', 'truncated-77', 'empty-plaintext data cut to 77 bytes, one below the minimum 78', 'ERR_FORMAT', (p) => bytes(p.encrypted.slice(0, 77)))
negative('stored/empty', 'truncated-5', 'cut inside the fixed header', 'ERR_FORMAT', (p) => bytes(p.encrypted.slice(0, 5)))
negative('stored/empty', 'empty-input', 'zero bytes', 'ERR_FORMAT', () => bytes(new Uint8Array(0)))
negative('stored/utf8-text-with-ad', 'wrong-associated-data', 'associated data with its last byte changed', 'ERR_DECRYPT', (p) => ({ fields: { associatedData: hex(flip(p.inputs.associatedData, -1)) } }))
negative('stored/utf8-text-with-ad', 'associated-data-missing', 'associated data left out', 'ERR_DECRYPT', () => ({ fields: { associatedData: '' } }))
negative('stored/unicode-chain-128-root', 'kek-record-for-another-chain', 'the KEK record was wrapped for chain "vectors" (a record moved between chains)', 'ERR_ROOT_KEY', () => ({}))
negative('stored/unicode-chain-128-root', 'wrapped-kek-record-altered', 'last byte of the stored wrapped KEK flipped', 'ERR_ROOT_KEY', (p) => ({ fields: { wrappedKek: hex(flip(p.k.wrappedKek, -1)) } }))

// --- embedded mode (empty embeddedStore: decryption needs only the root key)
const E = 'embedded/pattern-1027'
negative(E, 'flipped-tag', 'last byte (tag) flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, -1)))
negative(E, 'flipped-ciphertext', 'first ciphertext byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_EMBEDDED + 56)))
negative(E, 'flipped-wrapped-dek', 'first wrapped-DEK byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_EMBEDDED + 12)))
negative(E, 'flipped-iv1', 'first iv1 byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.encrypted, H_EMBEDDED)))
negative(E, 'tag-cut-1', 'last byte cut', 'ERR_DECRYPT', (p) => bytes(p.encrypted.slice(0, -1)))
negative(E, 'flipped-embedded-kek-ct', 'last byte of the embedded wrapped KEK flipped (root unwrap fails first)', 'ERR_ROOT_KEY', (p) => bytes(flip(p.encrypted, H_EMBEDDED - 1)))
negative(E, 'flipped-embedded-kek-iv', 'first iv0 byte of the embedded wrapped KEK flipped', 'ERR_ROOT_KEY', (p) => bytes(flip(p.encrypted, 9)))
negative(E, 'flipped-embedded-kek-layout', 'layout byte 0x01 of the embedded wrapped KEK changed to 0x00', 'ERR_ROOT_KEY', (p) => bytes(flip(p.encrypted, 8)))
negative(E, 'embedded-length-short', 'embedded length 45 -> 44: a 44-byte wrapped KEK is not the aes root layout', 'ERR_ROOT_KEY', (p) => bytes(flip(p.encrypted, 7)))
negative(E, 'embedded-length-zero', 'embedded length 0', 'ERR_FORMAT', (p) => bytes(cat(p.encrypted.slice(0, 6), u16(0), p.encrypted.slice(8))))
negative(E, 'embedded-length-past-end', 'embedded length 0xffff, past the end', 'ERR_FORMAT', (p) => bytes(cat(p.encrypted.slice(0, 6), u16(0xffff), p.encrypted.slice(8))))
negative(E, 'truncated-in-embedded-kek', 'cut inside the embedded KEK', 'ERR_FORMAT', (p) => bytes(p.encrypted.slice(0, 30)))
negative(E, 'truncated-below-minimum', `cut to ${H_EMBEDDED + 71} bytes, one below header + 72`, 'ERR_FORMAT', (p) => bytes(p.encrypted.slice(0, H_EMBEDDED + 71)))
negative(E, 'embedded-flag-cleared', 'flags 1 -> 0: read as stored, and the store has no such KEK', 'ERR_UNKNOWN_KEK', (p) => bytes(set(p.encrypted, 5, 0x00)))
negative(E, 'stream-flag', 'flags 0x03: embedded + stream', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 5, 0x03)))
negative(E, 'unknown-flag-bit-2', 'flags 0x05: embedded + unknown bit', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 5, 0x05)))
negative(E, 'version-2', 'version byte 0x02', 'ERR_FORMAT', (p) => bytes(set(p.encrypted, 0, 0x02)))
negative('embedded/utf8-text-with-ad', 'wrong-associated-data', 'associated data with its first byte changed', 'ERR_DECRYPT', (p) => ({ fields: { associatedData: hex(flip(p.inputs.associatedData, 0)) } }))

// --- text form
const T = 'stored/one-byte' // 79 bytes: base64url ends in a character with 4 leftover bits
const textOf = (p) => 'kp1.' + base64url(p.encrypted)
negative(T, 'text-prefix-kp2', 'text form with the prefix kp2.', 'ERR_FORMAT', (p) => ({ text: 'kp2.' + textOf(p).slice(4) }))
negative(T, 'text-prefix-uppercase', 'text form with the prefix KP1.', 'ERR_FORMAT', (p) => ({ text: 'KP1.' + textOf(p).slice(4) }))
negative(T, 'text-no-prefix', 'base64url without the prefix', 'ERR_FORMAT', (p) => ({ text: textOf(p).slice(4) }))
negative(T, 'text-noncanonical', 'last character has nonzero leftover bits (decodes to the same bytes in a lax decoder)', 'ERR_FORMAT', (p) => {
  const t = textOf(p)
  const last = B64URL.indexOf(t.at(-1))
  if ((last & 0x0f) !== 0) throw new Error('expected 4 zero leftover bits')
  return { text: t.slice(0, -1) + B64URL[last | 0x01] }
})
negative('stored/max-kek-id', 'text-noncanonical-2-bits', 'last character has nonzero leftover bits (92 bytes: 2 leftover bits)', 'ERR_FORMAT', (p) => {
  const t = textOf(p)
  const last = B64URL.indexOf(t.at(-1))
  if ((t.length - 4) % 4 !== 3 || (last & 0x03) !== 0) throw new Error('expected 2 zero leftover bits')
  return { text: t.slice(0, -1) + B64URL[last | 0x02] }
})
negative(T, 'text-padded', 'base64url with = padding', 'ERR_FORMAT', (p) => ({ text: textOf(p) + '==' }))
negative(T, 'text-standard-alphabet', 'a "+" (standard base64, not base64url)', 'ERR_FORMAT', (p) => ({ text: textOf(p).slice(0, 10) + '+' + textOf(p).slice(11) }))
negative(T, 'text-bad-length', 'last character removed: length = 1 (mod 4)', 'ERR_FORMAT', (p) => {
  const t = textOf(p).slice(0, -1)
  if ((t.length - 4) % 4 !== 1) throw new Error('expected length 1 mod 4')
  return { text: t }
})
negative('stored/pattern-1027', 'text-not-utf8', 'valid text form, but decryptText of a plaintext that is not UTF-8', 'ERR_FORMAT', (p) => ({ text: textOf(p) }))

// Cases whose inputs differ from their positive case need their own encryption.
{
  // A KEK record moved from chain "vectors" to the unicode chain, same id: record wrapped for the wrong chain.
  const c = cases.find((x) => x.name === 'stored/negative/kek-record-for-another-chain')
  const k = KEKS.unicode
  c.wrappedKek = hex(await wrapKek(k.rootKey, 'vectors', k.kekId, k.kek, k.iv0))
}
{
  // Embedded KEK wrapped for id A, header says id B; the DEK wrap over that header is valid.
  const k = KEKS.main
  const otherId = 0x12345678
  const misbound = await wrapKek(k.rootKey, k.chain, k.kekId, k.kek, k.iv0)
  const name = 'embedded/negative/embedded-kek-for-another-id'
  const inputs = {
    kek: k.kek,
    kekId: otherId,
    embeddedKek: misbound,
    dek: await derive(`${name}/dek`, 16),
    iv1: await derive(`${name}/iv1`, 12),
    iv2: await derive(`${name}/iv2`, 12),
    plaintext: utf8('bound to another id'),
    associatedData: new Uint8Array(0),
  }
  cases.push({
    name,
    description: `the embedded KEK was wrapped for id ${k.kekId}, the header says ${otherId}; the rest is valid under that header`,
    kind: 'negative',
    rootKey: hex(k.rootKey),
    chain: k.chain,
    kekId: otherId,
    kek: hex(k.kek),
    iv0: hex(k.iv0),
    wrappedKek: hex(misbound),
    mode: 'embedded',
    dek: hex(inputs.dek),
    iv1: hex(inputs.iv1),
    iv2: hex(inputs.iv2),
    plaintext: hex(inputs.plaintext),
    associatedData: '',
    encrypted: hex(await encryptV1(inputs)),
    expectedError: 'ERR_ROOT_KEY',
  })
}

// ------------------------------------------------------------------------------ streams (docs/FORMAT.md, "Streams")

const FLAG_STREAM = 0x02
const NONCE_PREFIX_BYTES = 7

/** AES-128-GCM with node:crypto: ciphertext || 16-byte tag. */
function ncSeal(key, iv, plaintext, aad) {
  const c = createCipheriv('aes-128-gcm', key, iv, { authTagLength: 16 })
  c.setAAD(aad)
  return cat(new Uint8Array(c.update(plaintext)), new Uint8Array(c.final()), new Uint8Array(c.getAuthTag()))
}
function ncOpen(key, iv, sealed, aad) {
  const d = createDecipheriv('aes-128-gcm', key, iv, { authTagLength: 16 })
  d.setAAD(aad)
  d.setAuthTag(sealed.subarray(sealed.length - 16))
  return cat(new Uint8Array(d.update(sealed.subarray(0, sealed.length - 16))), new Uint8Array(d.final()))
}

/** STREAM nonce: prefix (7) || counter u32 || last flag (1). */
const segmentNonce = (prefix, i, last) => cat(prefix, u32(i), new Uint8Array([last ? 1 : 0]))
/** Segment AAD: version, kind 0x01 (stream segment), segment size u32, caller's associated data. */
const segmentAad = (segmentSize, ad, kind = 0x01) => cat(new Uint8Array([VERSION, kind]), u32(segmentSize), ad)

/** Plaintext pieces: full segments, then a last one of 1..S bytes (0 only for an empty stream). */
function pieces(plaintext, S) {
  const out = []
  for (let o = 0; o === 0 || o < plaintext.length; o += S) out.push(plaintext.subarray(o, Math.min(plaintext.length, o + S)))
  return out
}

/**
 * header (flags with bit 1) || iv1 || AES-GCM(kek, iv1, dek, header) || u32 S || prefix || segments.
 * `tweak` lets a negative case seal the segments wrongly: ({ i, n }) -> { counter?, last?, aadKind? }.
 */
function encryptStreamV1({ kek, kekId, embeddedKek, dek, iv1, noncePrefix, segmentSize, plaintext, associatedData, tweak, wrapHeader }) {
  const flags = FLAG_STREAM | (embeddedKek ? FLAG_EMBEDDED : 0)
  const h = header(kekId, embeddedKek, flags)
  const wrappedDek = ncSeal(kek, iv1, dek, wrapHeader ?? h)
  const parts = pieces(plaintext, segmentSize)
  const segments = parts.map((piece, i) => {
    const t = tweak?.({ i, n: parts.length }) ?? {}
    const last = t.last ?? i === parts.length - 1
    return ncSeal(dek, segmentNonce(noncePrefix, t.counter ?? i, last), piece, segmentAad(segmentSize, associatedData, t.aadKind))
  })
  return { encrypted: cat(h, iv1, wrappedDek, u32(segmentSize), noncePrefix, ...segments), headerLength: h.length + 12 + 32 + 4 + NONCE_PREFIX_BYTES, segments }
}

/** Independent check of a positive stream case, by node:crypto: KEK, DEK, then every segment. */
function selfCheckStream(c) {
  const b = (k) => Uint8Array.from(Buffer.from(c[k], 'hex'))
  const data = b('encrypted')
  if (!(data[5] & FLAG_STREAM)) throw new Error(`${c.name}: stream flag`)
  const H = data[5] & FLAG_EMBEDDED ? 8 + ((data[6] << 8) | data[7]) : 6
  const wrapped = data[5] & FLAG_EMBEDDED ? data.subarray(8, H) : b('wrappedKek')
  const kekBytes = (() => {
    const root = b('rootKey')
    const d = createDecipheriv(root.length === 32 ? 'aes-256-gcm' : 'aes-128-gcm', root, wrapped.subarray(1, 13), { authTagLength: 16 })
    d.setAAD(kekAad(c.chain, c.kekId))
    d.setAuthTag(wrapped.subarray(wrapped.length - 16))
    return cat(new Uint8Array(d.update(wrapped.subarray(13, wrapped.length - 16))), new Uint8Array(d.final()))
  })()
  if (hex(kekBytes) !== c.kek) throw new Error(`${c.name}: KEK`)
  const dek = ncOpen(kekBytes, data.subarray(H, H + 12), data.subarray(H + 12, H + 44), data.subarray(0, H))
  if (hex(dek) !== c.dek) throw new Error(`${c.name}: DEK`)
  const S = ((data[H + 44] << 24) | (data[H + 45] << 16) | (data[H + 46] << 8) | data[H + 47]) >>> 0
  if (S !== c.segmentSize) throw new Error(`${c.name}: segment size`)
  const prefix = data.subarray(H + 48, H + 55)
  const body = data.subarray(H + 55)
  const out = []
  const n = Math.max(1, Math.ceil((body.length - 16) / (S + 16)))
  for (let i = 0; i < n; i++) {
    const seg = body.subarray(i * (S + 16), Math.min(body.length, (i + 1) * (S + 16)))
    out.push(ncOpen(dek, segmentNonce(prefix, i, i === n - 1), seg, segmentAad(S, b('associatedData'))))
  }
  if (hex(cat(...out)) !== c.plaintext) throw new Error(`${c.name}: plaintext`)
}

const STREAMS = [
  { id: 'empty', kek: 'main', size: 0, S: 16, ad: new Uint8Array(0), modes: ['stored', 'embedded'] },
  { id: 'one-byte', kek: 'main', size: 1, S: 16, ad: new Uint8Array(0), modes: ['stored'] },
  { id: 'one-full-segment', kek: 'main', size: 16, S: 16, ad: new Uint8Array(0), modes: ['stored'] },
  { id: 'segment-plus-one', kek: 'main', size: 17, S: 16, ad: utf8('file=a.bin'), modes: ['stored'] },
  { id: 'four-segments', kek: 'main', size: 64, S: 16, ad: utf8('file=plans.txt'), modes: ['stored', 'embedded'] },
  { id: 'pattern-1000-segment-64', kek: 'main', size: 1000, S: 64, ad: utf8('file=pattern'), modes: ['stored', 'embedded'] },
  { id: 'default-segment-size', kek: 'main', size: 100, S: 65536, ad: new Uint8Array(0), modes: ['stored', 'embedded'] },
  { id: 'unicode-chain-128-root', kek: 'unicode', size: 40, S: 32, ad: Uint8Array.from([0x00, 0xff]), modes: ['stored'] },
  { id: 'max-kek-id', kek: 'max', size: 33, S: 16, ad: utf8('x'), modes: ['stored'] },
]

const streamPositives = new Map()

async function streamInputs(name, k, mode, s, plaintext) {
  return {
    kek: k.kek,
    kekId: k.kekId,
    embeddedKek: mode === 'embedded' ? k.wrappedKek : undefined,
    dek: await derive(`${name}/dek`, 16),
    iv1: await derive(`${name}/iv1`, 12),
    noncePrefix: await derive(`${name}/nonce-prefix`, NONCE_PREFIX_BYTES),
    segmentSize: s.S,
    plaintext,
    associatedData: s.ad,
  }
}

function streamCase(name, description, kind, k, mode, inputs, encrypted, extra = {}) {
  return {
    name,
    description,
    kind,
    rootKey: hex(k.rootKey),
    chain: k.chain,
    kekId: inputs.kekId,
    kek: hex(k.kek),
    iv0: hex(k.iv0),
    wrappedKek: hex(k.wrappedKek),
    mode,
    dek: hex(inputs.dek),
    iv1: hex(inputs.iv1),
    noncePrefix: hex(inputs.noncePrefix),
    segmentSize: inputs.segmentSize,
    plaintext: hex(inputs.plaintext),
    associatedData: hex(inputs.associatedData),
    encrypted: hex(encrypted),
    ...extra,
  }
}

for (const s of STREAMS) {
  for (const mode of s.modes) {
    const k = KEKS[s.kek]
    const name = `stream/${mode}/${s.id}`
    const plaintext = pattern(s.size)
    const inputs = await streamInputs(name, k, mode, s, plaintext)
    const made = encryptStreamV1(inputs)
    const segs = made.segments.length
    const c = streamCase(
      name,
      `stream, ${mode === 'stored' ? 'KEK in the store (flags 2)' : 'wrapped KEK embedded (flags 3)'}; ${s.size} B plaintext in ${segs} segment${segs === 1 ? '' : 's'} of ${s.S} B, ${s.ad.length} B associated data`,
      'stream-positive',
      k,
      mode,
      inputs,
      made.encrypted,
    )
    selfCheckStream(c)
    cases.push(c)
    streamPositives.set(name, { case: c, inputs, made, k, s })
  }
}

/** A stream negative from a positive: `change(p)` returns { encrypted?, fields? }. */
function streamNegative(from, name, description, expectedError, change) {
  const p = streamPositives.get(from)
  if (!p) throw new Error(`no stream case ${from}`)
  const altered = change(p)
  cases.push({
    ...p.case,
    name: `stream/${p.case.mode}/negative/${name}`,
    description: `${description} (from ${from})`,
    kind: 'stream-negative',
    ...altered.fields,
    encrypted: hex(altered.encrypted ?? p.made.encrypted),
    expectedError,
  })
}

const SP = 'stream/stored/four-segments' // 61-byte header, four 32-byte segments (16 B + tag), the last full
const seg = (p, i) => p.made.segments[i]
const headOf = (p) => p.made.encrypted.subarray(0, p.made.headerLength)
const rebuilt = (p, ...segments) => ({ encrypted: cat(headOf(p), ...segments) })
const resealed = (p, tweak, more = {}) => ({ encrypted: encryptStreamV1({ ...p.inputs, ...more, tweak }).encrypted })
const HS = 61

streamNegative(SP, 'final-segment-missing', 'cut at a segment boundary: the last of four segments removed', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 0), seg(p, 1), seg(p, 2)))
streamNegative(SP, 'only-first-segment', 'cut after the first segment', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 0)))
streamNegative(SP, 'header-only', 'every segment removed', 'ERR_DECRYPT', (p) => rebuilt(p))
streamNegative(SP, 'last-byte-cut', 'last byte (of the final tag) cut', 'ERR_DECRYPT', (p) => bytes(p.made.encrypted.slice(0, -1)))
streamNegative(SP, 'cut-mid-segment', 'cut in the middle of the third segment', 'ERR_DECRYPT', (p) => bytes(p.made.encrypted.slice(0, HS + 2 * 32 + 20)))
streamNegative(SP, 'cut-to-15-bytes-after-header', 'header and 15 bytes: shorter than a tag', 'ERR_DECRYPT', (p) => bytes(p.made.encrypted.slice(0, HS + 15)))
streamNegative(SP, 'segments-swapped', 'segments 1 and 2 swapped', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 0), seg(p, 2), seg(p, 1), seg(p, 3)))
streamNegative(SP, 'segment-duplicated', 'segment 1 repeated', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 0), seg(p, 1), seg(p, 1), seg(p, 2), seg(p, 3)))
streamNegative(SP, 'segment-dropped', 'segment 1 removed', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 0), seg(p, 2), seg(p, 3)))
streamNegative(SP, 'segment-from-another-stream', 'segment 1 replaced by segment 1 of another stream (other DEK and prefix, same size and associated data)', 'ERR_DECRYPT', (p) => {
  const other = encryptStreamV1({ ...p.inputs, dek: p.inputs.dek.map((x) => x ^ 0x5a), noncePrefix: p.inputs.noncePrefix.map((x) => x ^ 0xa5) })
  return rebuilt(p, seg(p, 0), other.segments[1], seg(p, 2), seg(p, 3))
})
streamNegative(SP, 'same-dek-other-prefix-spliced', 'segment 1 sealed under the same DEK but another nonce prefix', 'ERR_DECRYPT', (p) => {
  const other = encryptStreamV1({ ...p.inputs, noncePrefix: p.inputs.noncePrefix.map((x) => x ^ 0x01) })
  return rebuilt(p, seg(p, 0), other.segments[1], seg(p, 2), seg(p, 3))
})
streamNegative(SP, 'extra-final-segment', 'a fifth segment, correctly sealed as final (counter 4), after the real final one', 'ERR_DECRYPT', (p) => {
  const extra = ncSeal(p.inputs.dek, segmentNonce(p.inputs.noncePrefix, 4, true), utf8('0123456789abcdef'), segmentAad(16, p.inputs.associatedData))
  return rebuilt(p, ...p.made.segments, extra)
})
streamNegative(SP, 'no-final-flag', 'every segment sealed as not last (a stream that was never finished)', 'ERR_DECRYPT', (p) => resealed(p, () => ({ last: false })))
streamNegative(SP, 'final-flag-early', 'segment 2 sealed as last, and segment 3 too', 'ERR_DECRYPT', (p) => resealed(p, ({ i }) => ({ last: i >= 2 })))
streamNegative(SP, 'counter-from-1', 'segments sealed with counters 1..4 instead of 0..3', 'ERR_DECRYPT', (p) => resealed(p, ({ i }) => ({ counter: i + 1 })))
streamNegative(SP, 'segments-with-message-aad-kind', 'segments sealed with AAD kind 0x00 (single message) instead of 0x01', 'ERR_DECRYPT', (p) => resealed(p, () => ({ aadKind: 0x00 })))
streamNegative(SP, 'dek-wrapped-under-message-header', 'the DEK wrap AAD is the header without the stream flag', 'ERR_DECRYPT', (p) => resealed(p, undefined, { wrapHeader: header(p.inputs.kekId, undefined, 0) }))
streamNegative(SP, 'trailing-byte', 'one zero byte appended', 'ERR_DECRYPT', (p) => bytes(cat(p.made.encrypted, new Uint8Array(1))))
streamNegative(SP, 'trailing-16-bytes', 'sixteen zero bytes appended (a tag-sized empty segment)', 'ERR_DECRYPT', (p) => bytes(cat(p.made.encrypted, new Uint8Array(16))))
streamNegative(SP, 'wrong-associated-data', 'associated data with its last byte changed', 'ERR_DECRYPT', (p) => ({ fields: { associatedData: hex(flip(p.inputs.associatedData, -1)) } }))
streamNegative(SP, 'associated-data-missing', 'associated data left out', 'ERR_DECRYPT', () => ({ fields: { associatedData: '' } }))
streamNegative(SP, 'segment-size-changed', 'segment size 16 -> 32 in the header (in range, so it decodes)', 'ERR_DECRYPT', (p) => bytes(set(p.made.encrypted, HS - 8, 32)))
streamNegative(SP, 'segment-size-15', 'segment size 15, below the minimum 16', 'ERR_FORMAT', (p) => bytes(set(p.made.encrypted, HS - 8, 15)))
streamNegative(SP, 'segment-size-0', 'segment size 0', 'ERR_FORMAT', (p) => bytes(set(p.made.encrypted, HS - 8, 0)))
streamNegative(SP, 'segment-size-too-large', 'segment size 2^24 + 1, above the maximum', 'ERR_FORMAT', (p) => bytes(cat(p.made.encrypted.slice(0, HS - 11), u32(2 ** 24 + 1), p.made.encrypted.slice(HS - 7))))
streamNegative(SP, 'nonce-prefix-flipped', 'first nonce-prefix byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.made.encrypted, HS - 7)))
streamNegative(SP, 'flipped-wrapped-dek', 'first wrapped-DEK byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.made.encrypted, 6 + 12)))
streamNegative(SP, 'flipped-iv1', 'first iv1 byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.made.encrypted, 6)))
streamNegative(SP, 'flipped-first-segment-tag', 'last byte of segment 0 (its tag) flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.made.encrypted, HS + 31)))
streamNegative(SP, 'flipped-final-ciphertext', 'first ciphertext byte of the final segment flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.made.encrypted, HS + 3 * 32)))
streamNegative(SP, 'unknown-kek-id', 'KEK id changed to one that is not in the store', 'ERR_UNKNOWN_KEK', (p) => bytes(flip(p.made.encrypted, 4)))
streamNegative(SP, 'stream-flag-cleared', 'flags 2 -> 0: a single message, which a stream decryptor refuses', 'ERR_FORMAT', (p) => bytes(set(p.made.encrypted, 5, 0x00)))
streamNegative(SP, 'unknown-flag-bit-2', 'flags 0x06: stream + unknown bit', 'ERR_FORMAT', (p) => bytes(set(p.made.encrypted, 5, 0x06)))
streamNegative(SP, 'version-2', 'version byte 0x02', 'ERR_FORMAT', (p) => bytes(set(p.made.encrypted, 0, 0x02)))
streamNegative(SP, 'truncated-in-header', 'cut inside the stream header (after the wrapped DEK)', 'ERR_FORMAT', (p) => bytes(p.made.encrypted.slice(0, HS - 3)))
streamNegative(SP, 'truncated-5', 'cut inside the fixed header', 'ERR_FORMAT', (p) => bytes(p.made.encrypted.slice(0, 5)))
streamNegative(SP, 'empty-input', 'zero bytes', 'ERR_FORMAT', () => bytes(new Uint8Array(0)))
streamNegative(SP, 'single-message-given', 'a valid single message (stored/one-byte) given to the stream decryptor', 'ERR_FORMAT', () => bytes(positives.get('stored/one-byte').encrypted))
streamNegative('stream/stored/empty', 'empty-final-segment-missing', 'empty stream with its only (final, empty) segment removed', 'ERR_DECRYPT', (p) => rebuilt(p))
streamNegative('stream/stored/empty', 'empty-final-segment-doubled', 'empty stream with its final segment twice', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 0), seg(p, 0)))
const SE = 'stream/embedded/four-segments'
const HE = 61 + 2 + KEKS.main.wrappedKek.length
streamNegative(SE, 'flipped-embedded-kek', 'last byte of the embedded wrapped KEK flipped (root unwrap fails first)', 'ERR_ROOT_KEY', (p) => bytes(flip(p.made.encrypted, HE - 55 - 1)))
streamNegative(SE, 'final-segment-missing', 'the last of four segments removed', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 0), seg(p, 1), seg(p, 2)))
streamNegative(SE, 'segments-swapped', 'segments 0 and 1 swapped', 'ERR_DECRYPT', (p) => rebuilt(p, seg(p, 1), seg(p, 0), seg(p, 2), seg(p, 3)))
streamNegative(SE, 'flipped-last-tag', 'last byte flipped', 'ERR_DECRYPT', (p) => bytes(flip(p.made.encrypted, -1)))
streamNegative(SE, 'embedded-flag-cleared', 'flags 3 -> 2: read as a stored-KEK stream, whose segment-size field then falls inside the embedded KEK and is out of range (decoding comes before the KEK lookup)', 'ERR_FORMAT', (p) => {
  const e = p.made.encrypted
  const size = ((e[50] << 24) | (e[51] << 16) | (e[52] << 8) | e[53]) >>> 0
  if (size >= 16 && size <= 2 ** 24) throw new Error('expected an out-of-range segment size')
  return bytes(set(e, 5, FLAG_STREAM))
})

// ------------------------------------------------------------------------------ write

const names = new Set()
for (const c of cases) {
  if (names.has(c.name)) throw new Error(`duplicate case name ${c.name}`)
  names.add(c.name)
}
const json = JSON.stringify(cases, null, 2) + '\n'
if (process.argv.includes('--stdout')) {
  process.stdout.write(json)
} else if (existsSync(OUT) && !process.argv.includes('--force')) {
  console.error(`${OUT} exists and is frozen; pass --force to overwrite it (a format change needs a new version instead)`)
  process.exit(1)
} else {
  writeFileSync(OUT, json)
  const count = (kind) => cases.filter((c) => c.kind === kind).length
  console.log(
    `wrote ${OUT}: ${cases.length} cases (messages: ${count('positive')} positive, ${count('negative')} negative; ` +
      `streams: ${count('stream-positive')} positive, ${count('stream-negative')} negative)`,
  )
}
