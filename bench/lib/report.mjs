// Markdown for the benchmark: one set of tables per runtime, and one summary across runtimes with
// the issue's targets marked met or missed. Numbers are reported, never asserted.
import { IN_FLIGHT, SIZES } from './suite.mjs'

const opsPerSec = (v) => (v ? 1000 / v.msPerOp : undefined)
export const fmtOps = (n) => (n === undefined ? '–' : n >= 100000 ? `${Math.round(n / 1000)}k` : n >= 1000 ? `${(n / 1000).toFixed(1)}k` : String(Math.round(n)))
const fmtX = (x) => (x === undefined ? '–' : `${x.toFixed(2)}×`)
const fmtRatio = (v) => fmtX(v?.ratio)
const fmtUs = (ms) => (ms === undefined ? '–' : ms >= 1 ? `${ms.toFixed(2)} ms` : ms < 0.01 ? `${(ms * 1000).toPrecision(2)} µs` : `${(ms * 1000).toFixed(0)} µs`)
const fmtMiB = (m) => (m === undefined ? '–' : `${m.toFixed(1)} MiB`)
const find = (result, size, group) => result.results.find((r) => r.size === size && r.group === group)?.values

/**
 * The issue's targets. Each: id, label, limit, how to read the worst ratio (and its noise) from a
 * Result; undefined when not measured. Both stores must meet a kms-proxy target.
 */
const STORES = ['memory', 'embedded']
function worstOf(result, group, sizes, names = STORES) {
  let worst
  let noise
  for (const size of sizes) {
    const v = find(result, size, group)
    if (!v) continue
    for (const n of names) if (v[n] && (worst === undefined || v[n].ratio > worst)) worst = v[n].ratio
    if (v.control && (noise === undefined || Math.abs(v.control.ratio - 1) > Math.abs(noise - 1))) noise = v.control.ratio
  }
  return worst === undefined ? undefined : { value: worst, noise }
}
export const TARGETS = [
  { id: 'enc1k', label: 'encrypt 1 KiB, one at a time', limit: 1.3, get: (r) => worstOf(r, 'enc1', [1024]) },
  { id: 'encN1k', label: `encrypt 1 KiB, ${IN_FLIGHT} in flight`, limit: 2.0, get: (r) => worstOf(r, 'encN', [1024]) },
  {
    id: 'enc1m',
    label: 'encrypt 1 MiB (and encryptParts)',
    limit: 1.1,
    get: (r) => {
      const got = worstOf(r, 'enc1', [1048576])
      const parts = find(r, 1048576, 'enc1')?.parts
      return got && parts ? { ...got, extra: `encryptParts ${fmtRatio(parts)}` } : got
    },
  },
  { id: 'dec1m', label: 'decrypt 1 MiB (DEK cache hit)', limit: 1.1, get: (r) => worstOf(r, 'dec1', [1048576]) },
  { id: 'decHit', label: 'decrypt, DEK cache hit, every size measured', limit: 1.1, get: (r) => worstOf(r, 'dec1', SIZES.map(([s]) => s)) },
  {
    id: 'stream',
    label: 'streams, throughput × raw segmented (worse of encrypt, decrypt)',
    limit: 0.9,
    atLeast: true,
    get: (r) => {
      const rows = r.streams.filter((s) => s.id === 'streamEnc' || s.id === 'streamDec')
      if (!rows.length) return undefined
      const value = Math.min(...rows.map((s) => 1 / s.values.stream.ratio))
      const noise = rows.map((s) => 1 / s.values.control.ratio).sort((a, b) => Math.abs(b - 1) - Math.abs(a - 1))[0]
      const inStream = rows.every((s) => s.values.rawStream) ? Math.min(...rows.map((s) => s.values.rawStream.ratio / s.values.stream.ratio)) : undefined
      return { value, noise, extra: inStream === undefined ? undefined : `${fmtX(inStream)} raw in a TransformStream` }
    },
  },
]

function verdict(t, got) {
  if (!got) return 'not measured'
  const met = t.atLeast ? got.value >= t.limit : got.value <= t.limit
  return `${fmtX(got.value)} ${met ? 'met' : '**missed**'}${got.extra ? ` · ${got.extra}` : ''}${got.noise !== undefined ? ` · noise ${fmtX(got.noise)}` : ''}`
}

/** Peak memory of the 1 GiB stream: the streaming process above the runtime alone, and in all. */
function memoryCell(rss) {
  if (!rss?.stream) return 'not measured'
  const above = rss.idle ? rss.stream.peakMiB - rss.idle.peakMiB : undefined
  const size = rss.mib >= 1024 ? `${rss.mib / 1024} GiB` : `${rss.mib} MiB`
  const verdictText = above === undefined ? '' : above < 128 ? ' met' : ' **missed**'
  // Below zero where the runtime alone peaked higher (a browser's renderer varies by tens of MiB).
  const over = above === undefined ? '' : `${above < 0 ? '−' : '+'}${fmtMiB(Math.abs(above))} over idle, `
  return `${fmtMiB(rss.stream.peakMiB)} (${over}${size})${rss.mib >= 1024 ? verdictText : ''}`
}

/** The dekPath floor: µs per call (payload, importKey, wrap encrypt, deriveKey) and the two paths × raw. */
function dekFloor(result) {
  const v = find(result, 1024, 'dekPath')
  if (!v) return undefined
  const us = (x) => (x ? (x.msPerOp * 1000).toFixed(1) : '–')
  return { calls: `${us(v.raw)} / ${us(v.importKey)} / ${us(v.wrapCall)} / ${us(v.deriveKey)}`, paths: `${fmtRatio(v.wrap)} / ${fmtRatio(v.derive)}` }
}

/** The issue's limit for one row of a runtime's table (the hit rows of dec1; cold rows have none). */
function rowLimit(group, size) {
  if (group === 'enc1') return size === 1024 ? 1.3 : size >= 1048576 ? 1.1 : undefined
  if (group === 'encN') return size === 1024 ? 2.0 : undefined
  if (group === 'dec1') return 1.1
  return undefined
}

/** Markdown lines for one runtime. */
export function runtimeSection(name, entry) {
  const lines = []
  const log = (l = '') => lines.push(l)
  const r = entry.result
  log(`### ${name}${r ? `: ${r.version}` : entry.version ? `: ${entry.version}` : ''}`)
  log()
  if (!r) {
    log(`Not run: ${entry.error ?? 'no result'}`)
    return lines
  }
  log(`Clock resolution ${fmtUs(r.clockResolutionMs)}; samples of at least ${fmtUs(r.sampleMs)}; ${(r.elapsedMs / 1000).toFixed(1)} s in the runtime.`)
  const parts = r.results.some((x) => x.values.parts)
  const rows = []
  for (const [size, sizeLabel] of SIZES) {
    for (const [group, label, a, b] of [
      ['enc1', 'encrypt, one at a time', 'memory', 'embedded'],
      ['dec1', 'decrypt, DEK cache hit, one at a time', 'memory', 'embedded'],
      ['dec1', 'decrypt, cold (`dekCacheSize: 0`), one at a time', 'memoryCold', 'embeddedCold'],
      ['encN', `encrypt, ${IN_FLIGHT} in flight`, 'memory', 'embedded'],
      ['decN', `decrypt, DEK cache hit, ${IN_FLIGHT} in flight`, 'memory', 'embedded'],
      ['decN', `decrypt, cold, ${IN_FLIGHT} in flight`, 'memoryCold', 'embeddedCold'],
    ]) {
      const v = find(r, size, group)
      if (!v) continue
      const first = a === 'memory'
      const partsCell = parts ? ` ${first && v.parts ? fmtRatio(v.parts) : ''} |` : ''
      const limit = first ? rowLimit(group, size) : undefined
      const worst = Math.max(...[v[a], v[b]].filter(Boolean).map((x) => x.ratio))
      const target = limit === undefined ? '' : `≤ ${limit}× ${worst <= limit ? 'met' : '**missed**'}`
      rows.push(`| ${sizeLabel} | ${label} | ${fmtOps(opsPerSec(v.raw))} | ${fmtOps(opsPerSec(v[a]))} | ${fmtRatio(v[a])} | ${fmtOps(opsPerSec(v[b]))} | ${fmtRatio(v[b])} |${partsCell} ${first ? fmtRatio(v.control) : ''} | ${target} |`)
    }
  }
  if (rows.length) {
    log()
    log(`| payload | measurement | raw ops/s | memoryStore ops/s | × raw | embeddedStore ops/s | × raw |${parts ? ' encryptParts × raw |' : ''} noise | target |`)
    log(`| --- | --- | ---: | ---: | ---: | ---: | ---: |${parts ? ' ---: |' : ''} ---: | --- |`)
    for (const row of rows) log(row)
  }
  const dek = find(r, 1024, 'dekPath')
  if (dek) {
    log()
    log("Encrypt's DEK path at 1 KiB, raw `crypto.subtle` sequences without the library, one at a time:")
    log()
    log('| sequence | µs per op | × raw |')
    log('| --- | ---: | ---: |')
    for (const [n, label] of [
      ['raw', 'payload encrypt alone (raw)'],
      ['control', 'payload encrypt alone again (noise)'],
      ['wrap', 'wrap: importKey(new DEK) ∥ encrypt(DEK under KEK), then payload (today)'],
      ['derive', 'derive: deriveKey(HKDF-SHA-256, random salt), then payload'],
      ['importKey', 'importKey of 16 B alone'],
      ['wrapCall', 'encrypt of 16 B under the KEK alone'],
      ['deriveKey', 'deriveKey alone'],
    ]) {
      if (dek[n]) log(`| ${label} | ${(dek[n].msPerOp * 1000).toFixed(1)} | ${fmtRatio(dek[n])} |`)
    }
  }
  const paced = SIZES.filter(([s]) => find(r, s, 'paced'))
  if (paced.length) {
    log()
    log('Encrypt latency with 1 ms of idle between calls (the DEK pool refills while idle), p50 / p90:')
    log()
    log('| payload | raw | memoryStore | p50 × raw | embeddedStore | p50 × raw |')
    log('| --- | ---: | ---: | ---: | ---: | ---: |')
    for (const [size, sizeLabel] of paced) {
      const v = find(r, size, 'paced')
      const cell = (x) => `${fmtUs(x.p50)} / ${fmtUs(x.p90)}`
      log(`| ${sizeLabel} | ${cell(v.raw)} | ${cell(v.memory)} | ${fmtX(v.memory.p50 / v.raw.p50)} | ${cell(v.embedded)} | ${fmtX(v.embedded.p50 / v.raw.p50)} |`)
    }
  }
  const peerRows = SIZES.filter(([s]) => find(r, s, 'peerEnc') || find(r, s, 'peerDec'))
  if (peerRows.length) {
    log()
    log('Peers, one at a time, × raw (ops/s in brackets); kms-proxy (memoryStore) from the table above:')
    log()
    log('| payload | op | raw ops/s | kms-proxy | jose A128GCMKW + A128GCM | AWS Encryption SDK |')
    log('| --- | --- | ---: | ---: | ---: | ---: |')
    for (const [size, sizeLabel] of peerRows) {
      for (const [group, own, op] of [
        ['peerEnc', 'enc1', 'encrypt'],
        ['peerDec', 'dec1', 'decrypt'],
      ]) {
        const v = find(r, size, group)
        if (!v) continue
        const k = find(r, size, own)
        const cell = (x) => (x ? `${fmtRatio(x)} (${fmtOps(opsPerSec(x))})` : 'not measured')
        log(`| ${sizeLabel} | ${op} | ${fmtOps(opsPerSec(v.raw))} | ${k ? fmtRatio(k.memory) : '–'} | ${cell(v.jose)} | ${cell(v.aws)} |`)
      }
    }
  }
  const tp = r.streams.filter((s) => s.id === 'streamEnc' || s.id === 'streamDec')
  if (tp.length) {
    const mibps = (size, v) => size / 1048576 / (v.msPerOp / 1000)
    log()
    log(`Streams, ${tp[0].size >> 20} MiB per operation in 64 KiB chunks, against raw segmented AES-GCM (one call per segment, one after another); throughput × raw, higher is better:`)
    log()
    log('| op | raw MiB/s | raw in a TransformStream MiB/s | stream MiB/s | throughput × raw | × raw in a TransformStream | noise | target ≥ 0.9× |')
    log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |')
    for (const s of tp) {
      const v = s.values
      const x = 1 / v.stream.ratio
      const inStream = v.rawStream ? mibps(s.size, v.rawStream).toFixed(0) : '–'
      const overInStream = v.rawStream ? fmtX(v.rawStream.ratio / v.stream.ratio) : '–'
      log(`| ${s.title} | ${mibps(s.size, v.raw).toFixed(0)} | ${inStream} | ${mibps(s.size, v.stream).toFixed(0)} | ${fmtX(x)} | ${overInStream} | ${fmtX(1 / v.control.ratio)} | ${x >= 0.9 ? 'met' : '**missed**'} |`)
    }
    log()
    log('"Raw in a TransformStream" is the same raw call per 64 KiB chunk inside a TransformStream on the same pipe: what the runtime\'s streams alone cost, the floor of any streaming API there.')
  }
  const mem = r.streams.find((s) => s.id === 'streamMemory')
  if (mem) {
    log()
    log(`In-process ${mem.what} while piping ${mem.mib} MiB through encryptStream → decryptStream: ${fmtMiB(mem.beforeMiB)} before, ${fmtMiB(mem.peakMiB)} at the peak (${mem.seconds.toFixed(1)} s).`)
  }
  const rss = entry.rss
  if (rss) {
    log()
    if (rss.error) log(`Peak RSS from outside: not measured (${rss.error}).`)
    else log(`Peak RSS of a process piping ${rss.mib} MiB encrypt → decrypt (${rss.how}): the runtime alone ${fmtMiB(rss.idle?.peakMiB)}; raw segmented ${fmtMiB(rss.raw?.peakMiB)}; encryptStream → decryptStream ${fmtMiB(rss.stream?.peakMiB)} (${rss.stream?.seconds?.toFixed(1)} s).`)
  }
  const failed = r.checks.filter((c) => !c.ok)
  log()
  log(`Checks: ${r.checks.length - failed.length} of ${r.checks.length} passed${failed.length ? `; FAILED: ${failed.map((c) => `${c.name} (${c.detail})`).join('; ')}` : ''}.`)
  if (r.notes.length) {
    log()
    for (const n of r.notes) log(`- ${n}`)
  }
  return lines
}

/** The one-table summary across runtimes. */
export function summary(entries, { quick }) {
  const lines = []
  const log = (l = '') => lines.push(l)
  log(`| runtime | ${TARGETS.map((t) => `${t.label} (${t.atLeast ? '≥' : '≤'} ${t.limit}×)`).join(' | ')} | stream peak RSS (< 128 MiB over idle for 1 GiB) | µs per call: payload / importKey / wrap / deriveKey | wrap path / derive path × raw |`)
  log(`| --- | ${TARGETS.map(() => '---').join(' | ')} | --- | --- | --- |`)
  for (const [name, entry] of entries) {
    const r = entry.result
    if (!r) {
      log(`| ${name} | ${TARGETS.map(() => 'not run').join(' | ')} | – | – | – |`)
      continue
    }
    const floor = dekFloor(r)
    log(`| ${name} | ${TARGETS.map((t) => verdict(t, t.get(r))).join(' | ')} | ${memoryCell(entry.rss)} | ${floor?.calls ?? '–'} | ${floor?.paths ?? '–'} |`)
  }
  if (quick) {
    log()
    log('Quick run: 3 rounds of short samples, 1 KiB and 1 MiB only: this proves the bench runs everywhere; its ratios are noisy, read the noise column.')
  }
  return lines
}
