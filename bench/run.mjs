// kms-proxy benchmark: envelope encryption against raw single-key crypto.subtle AES-GCM-128,
// and against peer libraries, measured in the same process, interleaved.
//
//   pnpm build && pnpm bench          full run (about 2 minutes)
//   BENCH_QUICK=1 pnpm bench          quick run (about 15 s, noisier)
//
// Method: for every payload size and measurement, each variant first runs a warm-up (which also
// sets how many operations make one sample), then the variants take turns: one sample of each,
// round after round, in a new random order every round. A sample's time per operation is
// its wall time divided by its operations. Reported: ops/s from the median sample, and the
// ratio (time per op of the variant / time per op of raw) as the median of the per-round
// ratios, so that drift of the machine hits both sides of a ratio alike. See README.md.
import os from 'node:os'
import v8 from 'node:v8'
import vm from 'node:vm'
import { KeyChain, aesRootKey, memoryStore, embeddedStore } from '@kms-proxy/core'
import { reportStreams, streamBench, streamMemory } from './stream.mjs'

// A full garbage collection before every sample, so that no sample pays for the garbage of the
// variant before it (1 MiB payloads make a lot). `node --expose-gc` without the flag on the
// command line, so that `pnpm bench` stays `node bench/run.mjs`.
v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc')

const subtle = globalThis.crypto.subtle
const QUICK = process.env.BENCH_QUICK === '1' || process.env.BENCH_QUICK === 'true'
const ONLY = process.env.BENCH_ONLY // optional: comma-separated group ids (enc1,dec1,encN,decN,peerEnc,peerDec,paced,stream)
// rounds: at most `rounds`, fewer (down to minRounds) where one round takes long (1 MiB, 64 in flight).
const CFG = QUICK
  ? { warmMs: 25, sampleMs: 10, rounds: 5, minRounds: 3, groupMs: 600, paced: 40 }
  : { warmMs: 150, sampleMs: 40, rounds: 13, minRounds: 5, groupMs: 4500, paced: 120 }
// In flight at 1 MiB, one batch alone is 64 MiB and takes about 0.2 s here: left out of the quick run.
const QUICK_SKIP = (size, group) => QUICK && size > 65536 && (group === 'encN' || group === 'decN')
const IN_FLIGHT = 64
const SIZES = [
  [64, '64 B'],
  [1024, '1 KiB'],
  [64 * 1024, '64 KiB'],
  [1024 * 1024, '1 MiB'],
]
/** The caller's associated data, the same for every library that takes one. */
const AD = new TextEncoder().encode('tenant=42;table=notes;row=1337')
const AD_TEXT = new TextDecoder().decode(AD)
const DISTINCT = 16 // distinct encrypted inputs cycled through by the decrypt measurements

const started = performance.now()
const log = (line = '') => process.stdout.write(line + '\n')
const progress = (text) => {
  if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K${text}`)
}

// ------------------------------------------------------------------------------------ variants

function same(a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** Raw baseline: one AES-GCM-128 key, random 12-byte IV per message, output iv || ciphertext || tag. */
async function rawCipher() {
  const key = await subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt', 'decrypt'])
  return {
    async encrypt(plaintext) {
      const iv = crypto.getRandomValues(new Uint8Array(12))
      const sealed = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: AD }, key, plaintext))
      const out = new Uint8Array(12 + sealed.length)
      out.set(iv)
      out.set(sealed, 12)
      return out
    },
    async decrypt(data) {
      return new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: data.subarray(0, 12), additionalData: AD }, key, data.subarray(12)))
    },
  }
}

/** memory: memoryStore + aesRootKey; embedded: KeyChain.open() with every default (embedded store, ephemeral root). */
async function kmsCipher(kind) {
  const chain = await KeyChain.open(kind === 'memory' ? { rootKey: aesRootKey(crypto.getRandomValues(new Uint8Array(16))), store: memoryStore() } : {})
  const opts = { associatedData: AD }
  return { chain, encrypt: (p) => chain.encrypt(p, opts), decrypt: (d) => chain.decrypt(d, opts) }
}

async function joseCipher(jose) {
  // A CryptoKey, so that jose does not import the key-wrapping key again on every call.
  const key = await subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt', 'decrypt'])
  const header = { alg: 'A128GCMKW', enc: 'A128GCM' }
  return {
    encrypt: (p) => new jose.CompactEncrypt(p).setProtectedHeader(header).encrypt(key),
    decrypt: async (jwe) => (await jose.compactDecrypt(jwe, key)).plaintext,
  }
}

async function awsCipher(aws) {
  const { buildClient, CommitmentPolicy, RawAesKeyringNode, RawAesWrappingSuiteIdentifier, NodeCachingMaterialsManager, getLocalCryptographicMaterialsCache, AlgorithmSuiteIdentifier } = aws
  const { encrypt, decrypt } = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
  const keyring = new RawAesKeyringNode({
    keyNamespace: 'bench',
    keyName: 'aes-128',
    unencryptedMasterKey: crypto.getRandomValues(new Uint8Array(16)),
    wrappingSuite: RawAesWrappingSuiteIdentifier.AES128_GCM_IV12_TAG16_NO_PADDING,
  })
  const cmm = new NodeCachingMaterialsManager({
    backingMaterials: keyring,
    cache: getLocalCryptographicMaterialsCache(1000),
    maxAge: 10 * 60 * 1000,
    maxMessagesEncrypted: 2 ** 32,
    maxBytesEncrypted: Number.MAX_SAFE_INTEGER,
  })
  // The SDK's recommended suite without signatures (kms-proxy does not sign either).
  const suiteId = AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY
  const encryptionContext = { ad: AD_TEXT }
  return {
    encrypt: async (p) => (await encrypt(cmm, p, { suiteId, encryptionContext })).result,
    decrypt: async (d) => (await decrypt(cmm, d)).plaintext,
  }
}

// ------------------------------------------------------------------------------------ timing

function median(values) {
  const s = [...values].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Runs `ops` operations (one at a time, or in Promise.all batches); returns ms per op. */
async function sample(variant, ops) {
  const { fn, inFlight } = variant
  const t0 = performance.now()
  if (inFlight > 1) {
    const batches = Math.max(1, Math.round(ops / inFlight))
    for (let b = 0; b < batches; b++) {
      const all = new Array(inFlight)
      for (let i = 0; i < inFlight; i++) all[i] = fn(i)
      await Promise.all(all)
    }
    return (performance.now() - t0) / (batches * inFlight)
  }
  for (let i = 0; i < ops; i++) await fn(i)
  return (performance.now() - t0) / ops
}

function shuffled(list) {
  const out = [...list]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Lets background work of the previous sample (kms-proxy's DEK pool refill) finish, then collects garbage. */
async function settle() {
  await sleep(2)
  gc()
}

/**
 * Latency with idle time between calls, as in a server that encrypts now and then: one call,
 * then 1 ms of idle, variants taking turns. Returns { name -> { p50, p90 } } in ms.
 */
async function paced(variants, label) {
  const lat = variants.map(() => [])
  const warm = Math.max(5, CFG.paced >> 3)
  for (let r = 0; r < CFG.paced + warm; r++) {
    if (r % 20 === 0) progress(`${label}: ${r}/${CFG.paced + warm}`)
    for (const k of shuffled(variants.map((_, k) => k))) {
      await sleep(1)
      const t0 = performance.now()
      await variants[k].fn(0)
      if (r >= warm) lat[k].push(performance.now() - t0)
    }
  }
  const q = (a, p) => [...a].sort((x, y) => x - y)[Math.floor(p * (a.length - 1))]
  const out = {}
  variants.forEach((v, k) => (out[v.name] = { p50: q(lat[k], 0.5), p90: q(lat[k], 0.9) }))
  return out
}

/** Warm-up and calibration, then interleaved rounds. Returns { name -> { msPerOp, ratio } }. */
async function measure(variants, label) {
  for (const v of variants) {
    const t0 = performance.now()
    let ops = 0
    const step = v.inFlight > 1 ? v.inFlight : 1
    while (performance.now() - t0 < CFG.warmMs || ops < step * (step > 1 ? 1 : 2)) {
      await sample(v, step)
      ops += step
    }
    v.perOp = (performance.now() - t0) / ops
    v.ops = Math.max(step, Math.round(CFG.sampleMs / v.perOp / step) * step)
    v.samples = []
  }
  const roundMs = variants.reduce((sum, v) => sum + v.ops * v.perOp, 0)
  const rounds = Math.max(CFG.minRounds, Math.min(CFG.rounds, Math.floor(CFG.groupMs / roundMs)))
  for (let r = 0; r < rounds; r++) {
    progress(`${label}: round ${r + 1}/${rounds}`)
    // A new order every round: no variant always runs right after the same other one (whose
    // leftovers, such as freed memory to map again, would otherwise bias it the same way each time).
    for (const v of shuffled(variants)) {
      await settle()
      v.samples.push(await sample(v, v.ops))
    }
  }
  const raw = variants[0]
  const out = {}
  for (const v of variants) {
    const ratios = v.samples.map((t, i) => t / raw.samples[i])
    out[v.name] = { msPerOp: median(v.samples), ratio: median(ratios), rounds }
    if (process.env.BENCH_DEBUG) console.error(`  ${v.name.padEnd(12)} ${v.samples.map((t) => (t * 1000).toFixed(0)).join(' ')} µs`)
  }
  return out
}

// ------------------------------------------------------------------------------------ setup

let jose
let joseNote
try {
  jose = await import('jose')
} catch (error) {
  joseNote = `jose: not measured: it could not be loaded (${firstLine(error)})`
}

let aws
let awsNote
try {
  aws = await import('@aws-crypto/client-node')
} catch (error) {
  awsNote = `AWS Encryption SDK (@aws-crypto/client-node): not measured: it could not be loaded on Node ${process.version} (${firstLine(error)})`
}

function firstLine(error) {
  return String(error?.message ?? error).split('\n')[0]
}

/** Encrypts, decrypts, compares; returns a failure reason or undefined. */
async function check(cipher, plaintext) {
  try {
    const enc = await cipher.encrypt(plaintext)
    const dec = await cipher.decrypt(enc)
    if (!same(new Uint8Array(dec), plaintext)) return 'round trip returned different bytes'
  } catch (error) {
    return firstLine(error)
  }
  return undefined
}

const raw = await rawCipher()
// The same raw code a second time, on its own key: its ratio to raw is the noise floor of the run.
const control = await rawCipher()
const kms = {
  memory: await kmsCipher('memory'),
  embedded: await kmsCipher('embedded'),
}
const joseC = jose ? await joseCipher(jose) : undefined
let awsC
if (aws) {
  try {
    awsC = await awsCipher(aws)
    const reason = await check(awsC, crypto.getRandomValues(new Uint8Array(1000)))
    if (reason) throw new Error(reason)
  } catch (error) {
    awsNote = `AWS Encryption SDK (@aws-crypto/client-node): not measured: it fails on Node ${process.version} (${firstLine(error)})`
    awsC = undefined
  }
}
// Cold decrypt: a reader chain with dekCacheSize: 0, so every decryption unwraps its DEK (the
// KEK stays cached, as it would in any long-lived process). The data comes from a writer chain
// on the same root key: the same store (memory), or any store (embedded: the KEK travels in it).
async function coldPair() {
  const rootKey = aesRootKey(crypto.getRandomValues(new Uint8Array(16)))
  const store = memoryStore()
  const writer = await KeyChain.open({ rootKey, store })
  const reader = await KeyChain.open({ rootKey, store, dekCacheSize: 0 })
  const eStore = embeddedStore()
  const eRoot = aesRootKey(crypto.getRandomValues(new Uint8Array(16)))
  const eWriter = await KeyChain.open({ rootKey: eRoot, store: eStore })
  const eReader = await KeyChain.open({ rootKey: eRoot, store: embeddedStore(), dekCacheSize: 0 })
  const opts = { associatedData: AD }
  return {
    memory: { encrypt: (p) => writer.encrypt(p, opts), decrypt: (d) => reader.decrypt(d, opts), chain: reader },
    embedded: { encrypt: (p) => eWriter.encrypt(p, opts), decrypt: (d) => eReader.decrypt(d, opts), chain: eReader },
  }
}
const cold = await coldPair()

for (const [name, c] of [
  ['raw', raw],
  ['kms-proxy memoryStore', kms.memory],
  ['kms-proxy embeddedStore', kms.embedded],
  ['kms-proxy memoryStore cold', cold.memory],
  ['kms-proxy embeddedStore cold', cold.embedded],
  ['jose', joseC],
]) {
  if (!c) continue
  const reason = await check(c, crypto.getRandomValues(new Uint8Array(1000)))
  if (reason) {
    if (name === 'jose') {
      joseNote = `jose: not measured: ${reason}`
      continue
    }
    throw new Error(`${name}: self-check failed: ${reason}`)
  }
}
const joseOk = joseC && !joseNote

// ------------------------------------------------------------------------------------ run

const results = [] // { size, label, group, values }

for (const [size, sizeLabel] of SIZES) {
  const plaintext = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)))
  let pt = plaintext
  if (size > 65536) {
    pt = new Uint8Array(size)
    for (let o = 0; o < size; o += 65536) crypto.getRandomValues(pt.subarray(o, Math.min(size, o + 65536)))
  }
  const seal = async (c, count = DISTINCT) => {
    const list = []
    for (let i = 0; i < count; i++) list.push(await c.encrypt(pt))
    return list
  }
  const tSeal = performance.now()
  const inputs = {
    raw: await seal(raw),
    control: await seal(control),
    memory: await seal(kms.memory),
    embedded: await seal(kms.embedded),
    memoryCold: await seal(cold.memory),
    embeddedCold: await seal(cold.embedded),
    jose: joseOk ? await seal(joseC, 1) : undefined,
    aws: awsC ? await seal(awsC, 1) : undefined,
  }
  if (process.env.BENCH_DEBUG) console.error(`${sizeLabel} inputs: ${((performance.now() - tSeal) / 1000).toFixed(1)} s`)
  const enc = (c) => () => c.encrypt(pt)
  // One at a time: the same encrypted data again and again (a DEK cache hit, or with
  // dekCacheSize: 0 a cold unwrap every time). In flight: DISTINCT encrypted data cycled, for
  // every variant alike (the same memory footprint: at 1 MiB, 16 MiB of input no longer sits in
  // the CPU caches, which alone costs a lot here).
  const decSame = (c, list) => () => c.decrypt(list[0])
  const decCycle = (c, list) => (i) => c.decrypt(list[i % list.length])

  const groups = [
    {
      id: 'enc1',
      title: 'encrypt, one at a time',
      variants: [
        ['raw', enc(raw)],
        ['control', enc(control)],
        ['memory', enc(kms.memory)],
        ['embedded', enc(kms.embedded)],
      ],
    },
    {
      id: 'dec1',
      title: 'decrypt, one at a time',
      variants: [
        ['raw', decSame(raw, inputs.raw)],
        ['control', decSame(control, inputs.control)],
        ['memory', decSame(kms.memory, inputs.memory)],
        ['embedded', decSame(kms.embedded, inputs.embedded)],
        ['memoryCold', decSame(cold.memory, inputs.memoryCold)],
        ['embeddedCold', decSame(cold.embedded, inputs.embeddedCold)],
      ],
    },
    // Peers in groups of their own (with raw again), so that their allocations do not disturb
    // the kms-proxy measurements.
    {
      id: 'peerEnc',
      title: 'peers, encrypt',
      variants: [['raw', enc(raw)], joseOk && ['jose', enc(joseC)], awsC && ['aws', enc(awsC)]],
    },
    {
      id: 'peerDec',
      title: 'peers, decrypt',
      variants: [['raw', decSame(raw, inputs.raw)], joseOk && ['jose', decSame(joseC, inputs.jose)], awsC && ['aws', decSame(awsC, inputs.aws)]],
    },
    {
      id: 'encN',
      title: `encrypt, ${IN_FLIGHT} in flight`,
      inFlight: IN_FLIGHT,
      variants: [
        ['raw', enc(raw)],
        ['control', enc(control)],
        ['memory', enc(kms.memory)],
        ['embedded', enc(kms.embedded)],
      ],
    },
    {
      id: 'decN',
      title: `decrypt, ${IN_FLIGHT} in flight`,
      inFlight: IN_FLIGHT,
      variants: [
        ['raw', decCycle(raw, inputs.raw)],
        ['control', decCycle(control, inputs.control)],
        ['memory', decCycle(kms.memory, inputs.memory)],
        ['embedded', decCycle(kms.embedded, inputs.embedded)],
        ['memoryCold', decCycle(cold.memory, inputs.memoryCold)],
        ['embeddedCold', decCycle(cold.embedded, inputs.embeddedCold)],
      ],
    },
  ]
  for (const g of groups) {
    if (ONLY && !ONLY.split(',').includes(g.id)) continue
    if (QUICK_SKIP(size, g.id)) continue
    if (g.variants.filter(Boolean).length < 2) continue
    const variants = g.variants.filter(Boolean).map(([name, fn]) => ({ name, fn, inFlight: g.inFlight ?? 1 }))
    const t0 = performance.now()
    const values = await measure(variants, `${sizeLabel} ${g.title}`)
    if (process.env.BENCH_DEBUG) console.error(`${sizeLabel} ${g.id}: ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    results.push({ size, sizeLabel, group: g.id, title: g.title, values })
  }
  if (!ONLY || ONLY.split(',').includes('paced')) {
    const variants = [
      ['raw', enc(raw)],
      ['memory', enc(kms.memory)],
      ['embedded', enc(kms.embedded)],
    ].map(([name, fn]) => ({ name, fn }))
    const t0 = performance.now()
    const values = await paced(variants, `${sizeLabel} encrypt latency, paced`)
    if (process.env.BENCH_DEBUG) console.error(`${sizeLabel} paced: ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    results.push({ size, sizeLabel, group: 'paced', values })
  }
}
// Streams: encryptStream / decryptStream against raw segmented AES-GCM (bench/stream.mjs).
let streamResults = []
let streamRss
if (!ONLY || ONLY.split(',').includes('stream')) {
  streamResults = await streamBench(measure, QUICK)
  progress('stream peak memory')
  streamRss = streamMemory(QUICK ? 256 : 1024)
}
progress('')
if (process.stderr.isTTY) process.stderr.write('\r\x1b[K')

// ------------------------------------------------------------------------------------ report

const cpu = os.cpus()
const machine = `node ${process.version} · ${cpu[0]?.model?.trim() || 'unknown cpu'} · ${cpu.length} cores · ${os.platform()} ${os.arch()} · UV_THREADPOOL_SIZE ${process.env.UV_THREADPOOL_SIZE ?? '4 (default)'}`

const opsPerSec = (v) => (v ? 1000 / v.msPerOp : undefined)
const fmtOps = (n) => (n === undefined ? '–' : n >= 100000 ? `${Math.round(n / 1000)}k` : n >= 1000 ? `${(n / 1000).toFixed(1)}k` : String(Math.round(n)))
const fmtRatio = (v) => (v ? `${v.ratio.toFixed(2)}×` : '–')
const fmtUs = (ms) => (ms >= 1 ? `${ms.toFixed(2)} ms` : `${Math.round(ms * 1000)} µs`)
const find = (size, group) => results.find((r) => r.size === size && r.group === group)?.values
const sizeName = (size) => SIZES.find(([s]) => s === size)[1]

/** The brief's targets: [group, size predicate, limit, what]. Met only if both stores meet it. */
const TARGETS = [
  ['enc1', (s) => s === 1024, 1.3, 'encrypt, one at a time'],
  ['encN', (s) => s === 1024, 2.5, `encrypt, ${IN_FLIGHT} in flight`],
  ['dec1', (s) => s <= 1024, 1.1, 'decrypt with a DEK cache hit, one at a time'],
  ['enc1', (s) => s >= 65536, 1.05, 'encrypt, one at a time'],
  ['dec1', (s) => s >= 65536, 1.05, 'decrypt with a DEK cache hit, one at a time'],
]
const verdicts = []
function targetCell(group, size, values) {
  const t = TARGETS.find(([g, pred]) => g === group && pred(size))
  if (!t) return ''
  const ratios = ['memory', 'embedded'].filter((n) => values[n]).map((n) => values[n].ratio)
  const worst = Math.max(...ratios)
  const pass = worst <= t[2]
  const noise = values.control ? `, noise floor ${values.control.ratio.toFixed(2)}×` : ''
  verdicts.push({ pass, text: `${t[3]}, ${sizeName(size)}: ≤ ${t[2]}× — ${pass ? 'met' : 'MISSED'} (worst ${worst.toFixed(2)}×${noise})` })
  return `≤ ${t[2]}× ${pass ? 'met' : '**missed**'}`
}

log(`## kms-proxy benchmark${QUICK ? ' (BENCH_QUICK: short samples, noisier)' : ''}`)
log()
log(`Machine: ${machine}`)
log()
log('× raw = time per operation / that of raw single-key `crypto.subtle` AES-GCM-128 (random 12-byte IV per message) in the same run: lower is better.')
log(`Medians of ${CFG.minRounds} to ${CFG.rounds} interleaved rounds (fewer where a round is long) after a warm-up. "noise" is a second, identical raw variant measured the same way: how far apart two equal things come out on this machine.`)
log(`Associated data: ${AD.length} bytes on every call. kms-proxy with default options: memoryStore + aesRootKey, or embeddedStore + ephemeral root key.`)
log()
log('| payload | measurement | raw ops/s | memoryStore ops/s | × raw | embeddedStore ops/s | × raw | noise | target |')
log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |')
for (const [size, sizeLabel] of SIZES) {
  const rows = [
    ['enc1', 'encrypt, one at a time', 'memory', 'embedded'],
    ['dec1', 'decrypt, DEK cache hit, one at a time', 'memory', 'embedded'],
    ['dec1', 'decrypt, cold (`dekCacheSize: 0`), one at a time', 'memoryCold', 'embeddedCold'],
    ['encN', `encrypt, ${IN_FLIGHT} in flight`, 'memory', 'embedded'],
    ['decN', `decrypt, DEK cache hit, ${IN_FLIGHT} in flight`, 'memory', 'embedded'],
    ['decN', `decrypt, cold, ${IN_FLIGHT} in flight`, 'memoryCold', 'embeddedCold'],
  ]
  for (const [group, label, a, b] of rows) {
    const v = find(size, group)
    if (!v) continue
    const target = a === 'memory' ? targetCell(group, size, v) : ''
    const noise = a === 'memory' ? fmtRatio(v.control) : ''
    log(`| ${sizeLabel} | ${label} | ${fmtOps(opsPerSec(v.raw))} | ${fmtOps(opsPerSec(v[a]))} | ${fmtRatio(v[a])} | ${fmtOps(opsPerSec(v[b]))} | ${fmtRatio(v[b])} | ${noise} | ${target} |`)
  }
}
if (QUICK) log(`\nIn flight at 1 MiB: not measured in the quick run (one batch of ${IN_FLIGHT} is ${IN_FLIGHT} MiB); run without BENCH_QUICK.`)
if (results.some((r) => r.group === 'paced')) {
  log()
  log('Encrypt latency with 1 ms of idle time between calls (the DEK pool refills while idle), p50 / p90 per call:')
  log()
  log('| payload | raw | memoryStore | p50 × raw | embeddedStore | p50 × raw |')
  log('| --- | ---: | ---: | ---: | ---: | ---: |')
  for (const [size, sizeLabel] of SIZES) {
    const v = find(size, 'paced')
    if (!v) continue
    const cell = (x) => `${fmtUs(x.p50)} / ${fmtUs(x.p90)}`
    log(`| ${sizeLabel} | ${cell(v.raw)} | ${cell(v.memory)} | ${(v.memory.p50 / v.raw.p50).toFixed(2)}× | ${cell(v.embedded)} | ${(v.embedded.p50 / v.raw.p50).toFixed(2)}× |`)
  }
}
if (results.some((r) => r.group === 'peerEnc' || r.group === 'peerDec') || joseNote || awsNote) {
  log()
  log('Peer libraries, one at a time, × raw (ops/s in brackets), measured in groups of their own against raw; kms-proxy (memoryStore) copied from the table above for comparison. Decrypt: kms-proxy with a DEK cache hit; jose has no cache; the AWS SDK hits its caching materials manager.')
  log()
  log('| payload | op | raw ops/s | kms-proxy | jose A128GCMKW + A128GCM | AWS Encryption SDK, raw AES keyring + caching CMM |')
  log('| --- | --- | ---: | ---: | ---: | ---: |')
  for (const [size, sizeLabel] of SIZES) {
    for (const [group, own, op] of [
      ['peerEnc', 'enc1', 'encrypt'],
      ['peerDec', 'dec1', 'decrypt'],
    ]) {
      const v = find(size, group)
      if (!v) continue
      const k = find(size, own)
      const cell = (x) => (x ? `${fmtRatio(x)} (${fmtOps(opsPerSec(x))})` : 'not measured')
      log(`| ${sizeLabel} | ${op} | ${fmtOps(opsPerSec(v.raw))} | ${k ? fmtRatio(k.memory) : '–'} | ${cell(v.jose)} | ${cell(v.aws)} |`)
    }
  }
  log()
  if (joseNote) log(joseNote)
  else log('jose: `CompactEncrypt` / `compactDecrypt`, key-wrapping key passed as a CryptoKey; compact JWE has no external associated data, so none is passed; output is a base64url string.')
  if (awsNote) log(awsNote)
  else log('AWS Encryption SDK: `@aws-crypto/client-node`, suite ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY (its recommended suite without signatures; kms-proxy does not sign either), raw AES-128-GCM keyring, `NodeCachingMaterialsManager`; the associated data goes in its encryption context.')
}
reportStreams(streamResults, streamRss, log)
if (verdicts.length) {
  log()
  log('Targets (met when both stores meet them; a ratio within the noise of its limit is a coin toss):')
  for (const v of verdicts) log(`- ${v.text}`)
}
log()
log(`Run time: ${((performance.now() - started) / 1000).toFixed(1)} s`)
