#!/usr/bin/env node
/**
 * Known-answer vectors for encrypted data format v2 (one wrap of the KEK per named root, embedded
 * in the header), written ONCE to v2.json next to this file.
 *
 * An independent encoder, like generate.mjs: written from docs/FORMAT.md against raw
 * crypto.subtle only, without importing kms-proxy, so that the vectors check the library.
 *
 *   node e2e/vectors/generate-v2.mjs           writes v2.json; refuses if it exists
 *   node e2e/vectors/generate-v2.mjs --force   overwrites (a deliberate, reviewed change only)
 *   node e2e/vectors/generate-v2.mjs --stdout  prints the JSON instead
 *
 * Every input is derived from SHA-256 of a label, so the file is reproducible.
 */
import { existsSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const subtle = globalThis.crypto.subtle
const OUT = fileURLToPath(new URL('./v2.json', import.meta.url))

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

async function derive(label, n) {
  const d = new Uint8Array(await subtle.digest('SHA-256', utf8(`kms-proxy/vectors/v2/${label}`)))
  return d.slice(0, n)
}

async function gcmEncrypt(keyBytes, iv, plaintext, aad) {
  const key = await subtle.importKey('raw', keyBytes, 'AES-GCM', false, ['encrypt'])
  return new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: aad }, key, plaintext))
}

// ------------------------------------------------------------------------------ format v2 (docs/FORMAT.md)

const VERSION_2 = 0x02
const FLAG_EMBEDDED = 0x01
const KEK_AAD_LABEL = utf8('kms-proxy/kek/v1\0')
const AES_ROOT_LAYOUT = 0x01
const kekAad = (chain, kekId) => cat(KEK_AAD_LABEL, u32(kekId), utf8(chain))

/** aes root key layout: 0x01 || iv0 (12) || AES-GCM(root, iv0, kek, kekAad). */
async function wrapKek(rootKey, chain, kekId, kek, iv0) {
  return cat(new Uint8Array([AES_ROOT_LAYOUT]), iv0, await gcmEncrypt(rootKey, iv0, kek, kekAad(chain, kekId)))
}

/** version 2 || id || flags || u8 count || per root: u8 name length || name || u16 length || wrapped. */
function header(kekId, wraps) {
  const parts = [new Uint8Array([VERSION_2]), u32(kekId), new Uint8Array([FLAG_EMBEDDED]), new Uint8Array([wraps.length])]
  for (const w of wraps) parts.push(new Uint8Array([w.root.length]), utf8(w.root), u16(w.wrapped.length), w.wrapped)
  return cat(...parts)
}

/** The payload AAD starts with 0x01 in v2 too: a rewrap moves data between v1 and v2. */
const payloadAad = (ad) => cat(new Uint8Array([0x01, 0x00]), ad)

async function encrypt({ kek, kekId, wraps, dek, iv1, iv2, plaintext, associatedData }) {
  const h = header(kekId, wraps)
  const wrappedDek = await gcmEncrypt(kek, iv1, dek, h)
  const sealed = await gcmEncrypt(dek, iv2, plaintext, payloadAad(associatedData))
  return { headerLength: h.length, encrypted: cat(h, iv1, wrappedDek, iv2, sealed) }
}

// ------------------------------------------------------------------------------ cases

const CHAIN = 'vectors'
const KEK_ID = 0x9e3779b9
const KEK = await derive('kek', 16)
const ROOTS = [
  { root: 'passkey', rootKey: await derive('root-passkey', 32), iv0: await derive('iv0-passkey', 12) },
  { root: 'recovery', rootKey: await derive('root-recovery', 16), iv0: await derive('iv0-recovery', 12) },
  { root: 'kms.eu-west-1_B', rootKey: await derive('root-kms', 32), iv0: await derive('iv0-kms', 12) },
]
for (const r of ROOTS) r.wrapped = await wrapKek(r.rootKey, CHAIN, KEK_ID, KEK, r.iv0)

const pattern = (n) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) & 0xff)
const MESSAGES = [
  { id: 'two-roots/empty', roots: 2, plaintext: new Uint8Array(0), ad: new Uint8Array(0) },
  { id: 'two-roots/pattern-1027', roots: 2, plaintext: pattern(1027), ad: new Uint8Array(0) },
  { id: 'two-roots/text-with-ad', roots: 2, plaintext: utf8('Grüße, 世界 🔐'), ad: utf8('note/42') },
  { id: 'three-roots/pattern-64', roots: 3, plaintext: pattern(64), ad: utf8('x') },
]

const cases = []
const positives = new Map()
const rootsOf = (n) => ROOTS.slice(0, n)
const public_ = (rs) => rs.map((r) => ({ root: r.root, rootKey: hex(r.rootKey), wrappedKek: hex(r.wrapped) }))

for (const m of MESSAGES) {
  const roots = rootsOf(m.roots)
  const inputs = {
    kek: KEK,
    kekId: KEK_ID,
    wraps: roots,
    dek: await derive(`${m.id}/dek`, 16),
    iv1: await derive(`${m.id}/iv1`, 12),
    iv2: await derive(`${m.id}/iv2`, 12),
    plaintext: m.plaintext,
    associatedData: m.ad,
  }
  const { encrypted, headerLength } = await encrypt(inputs)
  const c = {
    name: m.id,
    description: `KEK embedded under ${m.roots} roots (format v2); ${m.plaintext.length} B plaintext, ${m.ad.length} B associated data`,
    kind: 'positive',
    chain: CHAIN,
    kekId: KEK_ID,
    kek: hex(KEK),
    roots: public_(roots),
    headerLength,
    dek: hex(inputs.dek),
    iv1: hex(inputs.iv1),
    iv2: hex(inputs.iv2),
    plaintext: hex(m.plaintext),
    associatedData: hex(m.ad),
    encrypted: hex(encrypted),
  }
  cases.push(c)
  positives.set(m.id, { case: c, encrypted, headerLength })
}

function negative(from, name, description, expectedError, change) {
  const p = positives.get(from)
  cases.push({ ...p.case, name: `negative/${name}`, description: `${description} (from ${from})`, kind: 'negative', encrypted: hex(change(p)), expectedError })
}

const P = 'two-roots/pattern-1027'
// Offsets in the two-roots header: 6 fixed, count at 6, "passkey" entry at 7 (name length), name 8..15, u16 15..17, wrapped 17..62,
// "recovery" entry at 62 (name length), name 63..71, u16 71..73, wrapped 73..118.
const FIRST_NAME = 8
const SECOND_WRAP = 73
negative(P, 'count-1', 'root count 1: v2 carries at least two wraps', 'ERR_FORMAT', (p) => set(p.encrypted, 6, 1))
negative(P, 'count-0', 'root count 0', 'ERR_FORMAT', (p) => set(p.encrypted, 6, 0))
negative(P, 'count-past-end', 'root count 255: entries run past the end', 'ERR_FORMAT', (p) => set(p.encrypted, 6, 255))
negative(P, 'name-length-0', 'first root name of length 0', 'ERR_FORMAT', (p) => set(p.encrypted, 7, 0))
negative(P, 'name-length-65', 'first root name of length 65', 'ERR_FORMAT', (p) => set(p.encrypted, 7, 65))
negative(P, 'name-with-slash', 'a "/" in the first root name', 'ERR_FORMAT', (p) => set(p.encrypted, FIRST_NAME + 2, 0x2f))
negative(P, 'name-not-ascii', 'a byte 0xc3 in the first root name', 'ERR_FORMAT', (p) => set(p.encrypted, FIRST_NAME, 0xc3))
negative(P, 'duplicate-name', 'both roots named "passkey"', 'ERR_FORMAT', (p) => {
  const e = p.encrypted.slice()
  // "recovery" (8) -> "passkey" + keep the length byte consistent by rewriting the entry's name length and name.
  const before = e.slice(0, 62)
  const after = e.slice(71)
  return cat(before, new Uint8Array([7]), utf8('passkey'), after)
})
negative(P, 'wrapped-length-0', 'the second wrapped KEK of length 0', 'ERR_FORMAT', (p) => cat(p.encrypted.slice(0, 71), u16(0), p.encrypted.slice(73)))
negative(P, 'no-embedded-flag', 'version 2 with flags 0 (v2 requires the embedded flag)', 'ERR_FORMAT', (p) => set(p.encrypted, 5, 0))
negative(P, 'truncated-in-entries', 'cut inside the second entry', 'ERR_FORMAT', (p) => p.encrypted.slice(0, 66))
negative(P, 'version-3', 'version byte 0x03', 'ERR_FORMAT', (p) => set(p.encrypted, 0, 3))
negative(P, 'renamed-root', 'the first root renamed "passkez": the header is the DEK wrap\'s AAD', 'ERR_DECRYPT', (p) => set(p.encrypted, FIRST_NAME + 6, 0x7a))
negative(P, 'second-wrap-altered', 'last byte of the second wrapped KEK flipped; the first root still opens the KEK, the DEK wrap fails', 'ERR_DECRYPT', (p) => flip(p.encrypted, SECOND_WRAP + 44))
negative(P, 'flipped-tag', 'last byte (tag) flipped', 'ERR_DECRYPT', (p) => flip(p.encrypted, -1))

// Self-check of the offsets the negatives use.
{
  const e = positives.get(P).encrypted
  if (new TextDecoder().decode(e.subarray(FIRST_NAME, FIRST_NAME + 7)) !== 'passkey') throw new Error('offset of the first name')
  if (e[62] !== 8 || new TextDecoder().decode(e.subarray(63, 71)) !== 'recovery') throw new Error('offset of the second entry')
  if (((e[71] << 8) | e[72]) !== 45 || positives.get(P).headerLength !== 118) throw new Error('offset of the second wrap')
}

const json = JSON.stringify(cases, null, 2) + '\n'
if (process.argv.includes('--stdout')) process.stdout.write(json)
else if (existsSync(OUT) && !process.argv.includes('--force')) {
  console.error(`${OUT} exists: v2 vectors are frozen (use --force only for a reviewed change)`)
  process.exit(1)
} else {
  writeFileSync(OUT, json)
  console.log(`wrote ${cases.length} cases to ${OUT}`)
}
