// The portable benchmark suite: the same measurements on every runtime, kms-proxy against raw
// single-key crypto.subtle AES-GCM-128 and against peer libraries, interleaved in one run.
// Web APIs only (crypto.subtle, performance.now, Web streams, TextEncoder), no node: imports, so
// that esbuild bundles it for workerd and the browser. The runtime's entry calls
//   runSuite(env, { quick, only }) -> Result
// (bench/runtimes/cli.mjs for Node, Deno and Bun; B's worker and browser entries for workerd and
// Chromium). The method is in bench/lib/measure.mjs and bench/README.md.
import { clockResolution, makeMeasure, paced } from './measure.mjs'
import { concat, streamSuite } from './stream.mjs'

const subtle = globalThis.crypto.subtle
export const IN_FLIGHT = 64
export const SIZES = [
  [64, '64 B'],
  [1024, '1 KiB'],
  [64 * 1024, '64 KiB'],
  [1024 * 1024, '1 MiB'],
]
/** The quick run keeps the sizes the targets name: 1 KiB and 1 MiB. */
const QUICK_SIZES = [1024, 1024 * 1024]
/** Every group id, for BENCH_ONLY. */
export const GROUPS = ['enc1', 'dec1', 'encN', 'decN', 'peerEnc', 'peerDec', 'dekPath', 'paced', 'stream']
/** The caller's associated data, the same for every library that takes one. */
export const AD = new TextEncoder().encode('tenant=42;table=notes;row=1337')
const DISTINCT = 16 // distinct encrypted inputs cycled through by the in-flight decrypt measurements

/** Full and quick settings. sampleMs is raised to 50 clock steps at run time. */
const CONFIG = {
  full: { warmMs: 150, sampleMs: 40, rounds: 13, minRounds: 5, groupMs: 4500, paced: 120, calibrationSamples: 4 },
  quick: { warmMs: 0, sampleMs: 8, rounds: 3, minRounds: 3, groupMs: 0, paced: 0, calibrationSamples: 1 },
}

function firstLine(error) {
  return String(error?.message ?? error).split('\n')[0]
}

export function sameBytes(a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** `size` random bytes (getRandomValues takes at most 64 KiB per call). */
export function randomBytes(size) {
  const out = new Uint8Array(size)
  for (let o = 0; o < size; o += 65536) crypto.getRandomValues(out.subarray(o, Math.min(size, o + 65536)))
  return out
}

const aesKey = (bytes, usages = ['encrypt', 'decrypt']) => subtle.importKey('raw', bytes, 'AES-GCM', false, usages)

/** Raw baseline: one AES-GCM-128 key, random 12-byte IV per message, output iv || ciphertext || tag. */
async function rawCipher() {
  const key = await aesKey(crypto.getRandomValues(new Uint8Array(16)))
  return {
    async encrypt(plaintext) {
      const iv = crypto.getRandomValues(new Uint8Array(12))
      return concat(iv, new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: AD }, key, plaintext)))
    },
    async decrypt(data) {
      return new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: data.subarray(0, 12), additionalData: AD }, key, data.subarray(12)))
    },
  }
}

/**
 * jose as a peer, for every entry to pass as `peers.jose`: compact JWE, A128GCMKW + A128GCM, the
 * key-wrapping key a CryptoKey (so jose does not import it again per call). Compact JWE takes no
 * external associated data, so none is passed.
 */
export function josePeer(jose) {
  return async () => {
    const key = await aesKey(crypto.getRandomValues(new Uint8Array(16)))
    const header = { alg: 'A128GCMKW', enc: 'A128GCM' }
    return {
      encrypt: (p) => new jose.CompactEncrypt(p).setProtectedHeader(header).encrypt(key),
      decrypt: async (jwe) => (await jose.compactDecrypt(jwe, key)).plaintext,
    }
  }
}

/** Encrypts, decrypts, compares; returns a failure reason or undefined. */
async function roundTrip(cipher, plaintext) {
  try {
    const dec = await cipher.decrypt(await cipher.encrypt(plaintext))
    if (!sameBytes(new Uint8Array(dec), plaintext)) return 'round trip returned different bytes'
  } catch (error) {
    return firstLine(error)
  }
  return undefined
}

/** The kms-proxy ciphers: warm chains on both stores, and cold readers (dekCacheSize: 0). */
async function kmsCiphers(core) {
  const { KeyChain, aesRootKey, memoryStore, embeddedStore } = core
  const opts = { associatedData: AD }
  const wrap = (chain, reader = chain) => ({ chain, encrypt: (p) => chain.encrypt(p, opts), decrypt: (d) => reader.decrypt(d, opts) })
  const root = () => aesRootKey(crypto.getRandomValues(new Uint8Array(16)))
  const memory = wrap(await KeyChain.open({ rootKey: root(), store: memoryStore() }))
  const embedded = wrap(await KeyChain.open({}))
  // Cold decrypt: a reader chain with dekCacheSize: 0, so every decryption unwraps its DEK (the
  // KEK stays cached, as in any long-lived process). The data comes from a writer chain on the
  // same root key: the same store (memory), or any store (embedded: the KEK travels in the data).
  const mRoot = root()
  const mStore = memoryStore()
  const memoryCold = wrap(await KeyChain.open({ rootKey: mRoot, store: mStore }), await KeyChain.open({ rootKey: mRoot, store: mStore, dekCacheSize: 0 }))
  const eRoot = root()
  const embeddedCold = wrap(await KeyChain.open({ rootKey: eRoot, store: embeddedStore() }), await KeyChain.open({ rootKey: eRoot, store: embeddedStore(), dekCacheSize: 0 }))
  const ciphers = { memory, embedded, memoryCold, embeddedCold }
  if (typeof memory.chain.encryptParts === 'function') {
    // The same bytes as encrypt in two parts, without the copy of the ciphertext behind the header.
    ciphers.parts = {
      encrypt: (p) => memory.chain.encryptParts(p, opts),
      decrypt: (parts) => memory.chain.decrypt(concat(parts[0], parts[1]), opts),
    }
  }
  return ciphers
}

/**
 * Where encrypt's crypto.subtle calls go, as raw sequences without the library: the payload
 * alone (raw); 'wrap' = a new DEK imported and its 16 bytes wrapped under a KEK (AES-GCM, 12-byte
 * IV, the header as AAD), both issued together as the library does, then the payload; 'derive' =
 * one HKDF-SHA-256 deriveKey from a KEK with a random 16-byte salt, then the payload; and each
 * single call alone, so the cost of one call on this runtime is visible.
 */
async function dekPathVariants() {
  const header = crypto.getRandomValues(new Uint8Array(16))
  const info = new TextEncoder().encode('kms-proxy bench dek')
  const payloadKey = await aesKey(crypto.getRandomValues(new Uint8Array(16)))
  const wrapKek = await aesKey(crypto.getRandomValues(new Uint8Array(16)))
  const hkdfKek = await subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'HKDF', false, ['deriveKey'])
  const gcm = (iv) => ({ name: 'AES-GCM', iv, additionalData: AD })
  const hkdf = (salt) => ({ name: 'HKDF', hash: 'SHA-256', salt, info })
  const derive = (salt) => subtle.deriveKey(hkdf(salt), hkdfKek, { name: 'AES-GCM', length: 128 }, false, ['encrypt', 'decrypt'])
  const wrapPath = async (pt) => {
    const dekBytes = crypto.getRandomValues(new Uint8Array(16))
    const iv1 = crypto.getRandomValues(new Uint8Array(12))
    const iv2 = crypto.getRandomValues(new Uint8Array(12))
    const [dek, wrapped] = await Promise.all([
      aesKey(dekBytes),
      subtle.encrypt({ name: 'AES-GCM', iv: iv1, additionalData: header }, wrapKek, dekBytes),
    ])
    const sealed = await subtle.encrypt(gcm(iv2), dek, pt)
    return concat(header, iv1, new Uint8Array(wrapped), iv2, new Uint8Array(sealed))
  }
  const derivePath = async (pt) => {
    const salt = crypto.getRandomValues(new Uint8Array(16))
    const iv2 = crypto.getRandomValues(new Uint8Array(12))
    const dek = await derive(salt)
    const sealed = await subtle.encrypt(gcm(iv2), dek, pt)
    return concat(header, salt, iv2, new Uint8Array(sealed))
  }
  const rawPath = async (pt) => {
    const iv = crypto.getRandomValues(new Uint8Array(12))
    return concat(iv, new Uint8Array(await subtle.encrypt(gcm(iv), payloadKey, pt)))
  }
  /** Opens what each path made, so the sequences measured are the ones that work. */
  const checks = {
    async wrap(pt) {
      const out = await wrapPath(pt)
      const dekBytes = new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: out.subarray(16, 28), additionalData: header }, wrapKek, out.subarray(28, 60)))
      const dek = await aesKey(dekBytes)
      return new Uint8Array(await subtle.decrypt(gcm(out.subarray(60, 72)), dek, out.subarray(72)))
    },
    async derive(pt) {
      const out = await derivePath(pt)
      const dek = await derive(out.subarray(16, 32))
      return new Uint8Array(await subtle.decrypt(gcm(out.subarray(32, 44)), dek, out.subarray(44)))
    },
  }
  return {
    checks,
    variants: (pt) => [
      ['raw', () => rawPath(pt)],
      ['control', () => rawPath(pt)],
      ['wrap', () => wrapPath(pt)],
      ['derive', () => derivePath(pt)],
      ['importKey', () => aesKey(crypto.getRandomValues(new Uint8Array(16)))],
      ['wrapCall', () => subtle.encrypt({ name: 'AES-GCM', iv: crypto.getRandomValues(new Uint8Array(12)), additionalData: header }, wrapKek, crypto.getRandomValues(new Uint8Array(16)))],
      ['deriveKey', () => derive(crypto.getRandomValues(new Uint8Array(16)))],
    ],
  }
}

/**
 * Runs the suite. env: { runtime, version, core, peers?, gc?, memory?, progress? };
 * input: { quick, only?, streamMemoryMiB? }. Returns the Result of bench-contract.
 */
export async function runSuite(env, input = {}) {
  const started = performance.now()
  const quick = input.quick === true
  const only = input.only?.length ? input.only : undefined
  const wants = (group) => !only || only.includes(group)
  const progress = env.progress
  const notes = []
  const checks = []
  const results = []
  const check = (name, reason) => checks.push({ name, ok: !reason, detail: reason ?? 'ok' })

  const clockResolutionMs = await clockResolution()
  const cfg = { ...(quick ? CONFIG.quick : CONFIG.full), resolutionMs: clockResolutionMs }
  // A sample must span at least 50 steps of the clock, or its time is mostly rounding.
  cfg.sampleMs = Math.max(cfg.sampleMs, 50 * clockResolutionMs)
  cfg.warmMs = Math.max(cfg.warmMs, cfg.sampleMs)
  const measure = makeMeasure(cfg, { gc: env.gc, progress })
  if (!env.gc) notes.push('no full GC between samples: the runtime offers none to scripts')
  if (clockResolutionMs >= 0.05) notes.push(`performance.now() steps in ${clockResolutionMs} ms here: samples last at least ${cfg.sampleMs} ms (50 steps)`)

  const raw = await rawCipher()
  // The same raw code a second time, on its own key: its ratio to raw is the noise of the run.
  const control = await rawCipher()
  const kms = await kmsCiphers(env.core)
  const probe = crypto.getRandomValues(new Uint8Array(1000))
  check('raw AES-GCM round trip', await roundTrip(raw, probe))
  check('kms-proxy memoryStore round trip', await roundTrip(kms.memory, probe))
  check('kms-proxy embeddedStore round trip', await roundTrip(kms.embedded, probe))
  check('kms-proxy memoryStore, cold reader (dekCacheSize 0) decrypts', await roundTrip(kms.memoryCold, probe))
  check('kms-proxy embeddedStore, cold reader (dekCacheSize 0) decrypts', await roundTrip(kms.embeddedCold, probe))
  if (kms.parts) check('kms-proxy encryptParts: head + body decrypt', await roundTrip(kms.parts, probe))
  else notes.push('encryptParts: not measured: this build of @kms-proxy/core has no chain.encryptParts')

  const peers = {}
  for (const [name, label] of [
    ['jose', 'jose'],
    ['aws', env.peers?.awsName ?? 'AWS Encryption SDK'],
  ]) {
    const factory = env.peers?.[name]
    if (!factory) {
      const why = name === 'aws' ? env.peers?.awsNote : undefined
      notes.push(why ?? `${label}: not measured on ${env.runtime}: ${name === 'aws' ? 'no AWS Encryption SDK build for this runtime in the bench' : 'the entry did not load it'}`)
      continue
    }
    let reason
    try {
      peers[name] = await factory(AD)
      reason = await roundTrip(peers[name], probe)
    } catch (error) {
      reason = firstLine(error)
    }
    check(`peer ${label} round trip`, reason)
    if (reason) delete peers[name]
  }
  const dek = await dekPathVariants()
  if (wants('dekPath')) {
    const pt = crypto.getRandomValues(new Uint8Array(1024))
    for (const path of ['wrap', 'derive']) {
      let reason
      try {
        if (!sameBytes(await dek.checks[path](pt), pt)) reason = 'round trip returned different bytes'
      } catch (error) {
        reason = firstLine(error)
      }
      check(`dekPath ${path}: the raw sequence decrypts`, reason)
    }
  }

  const sizes = SIZES.filter(([size]) => !quick || QUICK_SIZES.includes(size))
  for (const [size, sizeLabel] of sizes) {
    const pt = randomBytes(size)
    const big = size > 65536
    const seal = async (c, count) => {
      const list = []
      for (let i = 0; i < count; i++) list.push(await c.encrypt(pt))
      return list
    }
    // In flight at 1 MiB (one batch alone is 64 MiB) and peers at 1 MiB: left out of the quick run.
    const heavy = !(quick && big)
    const count = heavy && wants('decN') ? DISTINCT : 1
    const inputs = {}
    for (const [name, c] of Object.entries({ raw, control, ...kms })) if (name !== 'parts') inputs[name] = await seal(c, count)
    if (heavy) for (const [name, c] of Object.entries(peers)) inputs[name] = await seal(c, 1)
    const enc = (c) => () => c.encrypt(pt)
    // One at a time: the same encrypted data again and again (a DEK cache hit, or with
    // dekCacheSize 0 a cold unwrap every time). In flight: DISTINCT encrypted data cycled, for
    // every variant alike (the same memory footprint).
    const all = { ...kms, raw, control, ...peers }
    const decSame = (name) => {
      const c = all[name]
      const data = inputs[name][0]
      return () => c.decrypt(data)
    }
    const decCycle = (name) => {
      const c = all[name]
      const list = inputs[name]
      return (i) => c.decrypt(list[i % list.length])
    }
    const encVariants = [
      ['raw', enc(raw)],
      ['control', enc(control)],
      ['memory', enc(kms.memory)],
      ['embedded', enc(kms.embedded)],
      kms.parts && ['parts', enc(kms.parts)],
    ]
    const decNames = ['raw', 'control', 'memory', 'embedded', 'memoryCold', 'embeddedCold']
    const groups = [
      { id: 'enc1', title: 'encrypt, one at a time', variants: encVariants },
      { id: 'dec1', title: 'decrypt, one at a time', variants: decNames.map((n) => [n, decSame(n)]) },
      // Peers at 1 MiB take tens of ms per call (jose base64url-encodes the ciphertext): full runs only.
      heavy && { id: 'peerEnc', title: 'peers, encrypt', variants: [['raw', enc(raw)], ...Object.keys(peers).map((n) => [n, enc(peers[n])])] },
      heavy && { id: 'peerDec', title: 'peers, decrypt', variants: [['raw', decSame('raw')], ...Object.keys(peers).map((n) => [n, decSame(n)])] },
      heavy && { id: 'encN', title: `encrypt, ${IN_FLIGHT} in flight`, inFlight: IN_FLIGHT, variants: encVariants },
      heavy && { id: 'decN', title: `decrypt, ${IN_FLIGHT} in flight`, inFlight: IN_FLIGHT, variants: decNames.map((n) => [n, decCycle(n)]) },
    ]
    if (size === 1024) groups.push({ id: 'dekPath', title: 'encrypt DEK path, raw crypto.subtle sequences', variants: dek.variants(pt) })
    for (const g of groups) {
      if (!g || !wants(g.id)) continue
      const variants = g.variants.filter(Boolean).map(([name, fn]) => ({ name, fn, inFlight: g.inFlight ?? 1 }))
      if (variants.length < 2) continue
      const t0 = performance.now()
      const values = await measure(variants, `${env.runtime} ${sizeLabel} ${g.title}`)
      results.push({ size, sizeLabel, group: g.id, title: g.title, values, ms: performance.now() - t0 })
    }
    // Latency with idle time needs a clock far finer than one call: full runs on fine clocks only.
    if (wants('paced') && cfg.paced && clockResolutionMs <= 0.01) {
      const variants = [
        ['raw', enc(raw)],
        ['memory', enc(kms.memory)],
        ['embedded', enc(kms.embedded)],
      ].map(([name, fn]) => ({ name, fn }))
      const values = await paced(variants, cfg.paced, progress, `${env.runtime} ${sizeLabel} encrypt latency, paced`)
      results.push({ size, sizeLabel, group: 'paced', title: 'encrypt latency with 1 ms idle between calls', values })
    }
  }
  if (quick) notes.push('quick run: 1 KiB and 1 MiB only, 3 rounds; in flight and peers at 1 MiB, and the paced latency, left out')

  let streams = []
  if (wants('stream')) {
    const out = await streamSuite(env, measure, { quick, memoryMiB: input.streamMemoryMiB })
    streams = out.rows
    for (const c of out.checks) checks.push(c)
    notes.push(...out.notes)
  }
  return {
    runtime: env.runtime,
    version: env.version,
    results,
    streams,
    notes,
    checks,
    clockResolutionMs,
    sampleMs: cfg.sampleMs,
    elapsedMs: performance.now() - started,
  }
}
