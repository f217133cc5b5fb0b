// kms-proxy benchmark on every runtime: the same portable suite (bench/lib/suite.mjs), from the
// built packages, in Node 20, 22 and 24, Deno, Bun (child processes: bench/lib/local.mjs), workerd
// through Miniflare and Chromium in a page (bench/lib/web.mjs).
//
//   pnpm build && pnpm bench                     every runtime, full (long: minutes per runtime)
//   BENCH_QUICK=1 pnpm bench                     quick: about 2 minutes in all, noisy
//   BENCH_RUNTIMES=node24,deno BENCH_ONLY=enc1,dekPath pnpm bench
//
// Prints one set of tables per runtime and a summary with the targets met or missed;
// writes .tmp/bench/<runtime>.json and .tmp/bench/report.md; ends with "N passed, N failed" (the
// suite's self-checks of every runtime, plus one per runtime that starts and finishes, plus one per
// peak-RSS measurement). The numbers are never asserted: only that everything ran and round-tripped.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LOCAL_RUNTIMES, start as startLocal } from './lib/local.mjs'
import { runtimeSection, summary } from './lib/report.mjs'
import { GROUPS } from './lib/suite.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(root, '.tmp', 'bench')
mkdirSync(out, { recursive: true })
const QUICK = process.env.BENCH_QUICK === '1' || process.env.BENCH_QUICK === 'true'
const list = (v) => v?.split(',').map((s) => s.trim()).filter(Boolean)
const firstLine = (error) => String(error?.message ?? error).split('\n')[0].slice(0, 500)

// The web launchers (bench/lib/web.mjs): when they cannot be loaded, their runtimes are reported
// as not run, each a failed check, and the local ones still run.
let web
let webError
try {
  web = await import('./lib/web.mjs')
} catch (error) {
  webError = `bench/lib/web.mjs could not be loaded (${firstLine(error)})`
}
/** Run by default: the seven runtimes of the issue. Others the launchers know (workerd+nodejs_compat) on request. */
const DEFAULT = [...LOCAL_RUNTIMES, 'workerd', 'chromium']
const KNOWN = [...new Set([...DEFAULT, ...(web?.WEB_RUNTIMES ?? [])])]
const selected = list(process.env.BENCH_RUNTIMES) ?? DEFAULT
const only = list(process.env.BENCH_ONLY)
for (const name of selected) if (!KNOWN.includes(name)) throw new Error(`BENCH_RUNTIMES: unknown runtime ${name} (known: ${KNOWN.join(', ')})`)
for (const g of only ?? []) if (!GROUPS.includes(g)) throw new Error(`BENCH_ONLY: unknown group ${g} (known: ${GROUPS.join(', ')})`)
/** The peak-RSS stream: 1 GiB as the issue asks; 32 MiB in the quick run, which only proves it runs. */
const RSS_MIB = Number(process.env.BENCH_RSS_MIB ?? (QUICK ? 32 : 1024))

if (!existsSync(join(root, 'packages', 'core', 'dist', 'index.js'))) {
  console.error('bench: packages/core/dist is missing; run `PACKAGES=core pnpm build` first')
  process.exit(1)
}

const started = performance.now()
const tty = process.stderr.isTTY
const progress = tty ? (text) => process.stderr.write(`\r\x1b[K${text.slice(0, (process.stderr.columns || 100) - 1)}`) : undefined
const clearProgress = () => tty && process.stderr.write('\r\x1b[K')

const entries = new Map()
const lines = []
const emit = (l = '') => {
  clearProgress()
  lines.push(l)
  process.stdout.write(l + '\n')
}
const cpu = os.cpus()
emit(`## kms-proxy benchmark${QUICK ? ' (BENCH_QUICK: short samples, noisy)' : ''}`)
emit()
emit(`Machine: ${cpu[0]?.model?.trim() || 'unknown cpu'} · ${cpu.length} cores · ${os.platform()} ${os.arch()} · load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} at the start · ${new Date().toISOString().slice(0, 16)} UTC`)
emit()
emit('× raw = time per operation / that of raw single-key `crypto.subtle` AES-GCM-128 (random 12-byte IV per message, 30 B of associated data) in the same run: lower is better. Medians of interleaved rounds; "noise" is a second, identical raw variant measured the same way.')

for (const name of selected) {
  const entry = { runtime: name }
  entries.set(name, entry)
  const t0 = performance.now()
  let instance
  try {
    progress?.(`${name}: starting`)
    const onProgress = progress && ((text) => progress(`${name}: ${text}`))
    if (LOCAL_RUNTIMES.includes(name)) instance = await startLocal(name, { progress: onProgress })
    else {
      if (!web) throw new Error(webError)
      instance = await web.start(name, { progress: onProgress })
    }
    entry.version = instance.version
    entry.result = await instance.run({ quick: QUICK, only })
    if (instance.peakRss && (!only || only.includes('stream'))) {
      try {
        entry.rss = await instance.peakRss({ mib: RSS_MIB, quick: QUICK })
      } catch (error) {
        entry.rss = { mib: RSS_MIB, error: firstLine(error) }
      }
    }
  } catch (error) {
    entry.error = firstLine(error)
  } finally {
    await instance?.stop?.().catch((error) => (entry.stopError = firstLine(error)))
  }
  entry.seconds = (performance.now() - t0) / 1000
  writeFileSync(join(out, `${name}.json`), JSON.stringify(entry, null, 2))
  emit()
  for (const l of runtimeSection(name, entry)) emit(l)
  emit()
  emit(`(${name}: ${entry.seconds.toFixed(1)} s with start and peak-RSS runs)`)
}

emit()
emit('### Summary: the issue\'s targets, per runtime (worst of memoryStore and embeddedStore; "noise" is raw against raw in the same group)')
emit()
for (const l of summary(entries, { quick: QUICK })) emit(l)

// Checks: the suite's own (round trips of every variant), one for each runtime that started and
// finished, one for each peak-RSS measurement (every chunk back, in order).
let passed = 0
let failed = 0
const failures = []
for (const [name, entry] of entries) {
  if (entry.result) {
    passed++
    for (const c of entry.result.checks) {
      if (c.ok) passed++
      else {
        failed++
        failures.push(`${name}: ${c.name}: ${c.detail}`)
      }
    }
  } else {
    failed++
    failures.push(`${name}: did not run: ${entry.error}`)
  }
  if (entry.rss) {
    const runs = ['idle', 'raw', 'stream'].filter((v) => entry.rss[v])
    if (entry.rss.error || runs.length === 0) {
      failed++
      failures.push(`${name}: peak RSS: ${entry.rss.error ?? 'no run'}`)
    } else {
      for (const v of runs) {
        if (entry.rss[v].ok === false) {
          failed++
          failures.push(`${name}: peak RSS ${v}: the piped stream did not give every chunk back in order`)
        } else passed++
      }
    }
  }
}
emit()
emit(`Run time: ${((performance.now() - started) / 1000).toFixed(1)} s; load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} at the end.`)
writeFileSync(join(out, 'report.md'), lines.join('\n') + '\n')
clearProgress()
for (const f of failures) console.log(`FAIL ${f}`)
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed === 0 && passed > 0 ? 0 : 1)
