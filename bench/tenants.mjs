// kms-proxy benchmark: one chain per tenant. 10,000 chains in one process on one etcd, one KEK
// each: memory per chain, time to open a chain cold, time to retire and destroy one, against a
// raw AES-GCM encryption and one etcd range read measured in the same run.
//
//   PACKAGES=core,etcd pnpm build && node bench/tenants.mjs      (about 2 minutes on 2 cores)
//   BENCH_TENANTS=2000 BENCH_SAMPLE=50 node bench/tenants.mjs    smaller, for a quick look
//
// Real parts only: etcd 3.4 (/usr/bin/etcd) started here on free loopback ports with its own data
// dir (on /dev/shm when there is one, as in the etcd tests) and killed at the end; the built
// @kms-proxy/etcd store on its JSON gateway; core's aesRootKey. Memory is measured in child
// processes, one per configuration, each holding every chain at once, so that no configuration
// inherits the heap of another. The script asserts what it measures (one KEK per chain, the
// etcd requests and root-key calls a cold open makes, a destroyed chain's data refused with
// ERR_DESTROYED_KEK by another chain instance, its KEK records gone) and exits 1 when a check fails.
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs'
import { createServer } from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import v8 from 'node:v8'
import vm from 'node:vm'
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { etcdStore } from '../packages/etcd/dist/index.js'

const TENANTS = Number(process.env.BENCH_TENANTS ?? 10_000)
const SAMPLE = Number(process.env.BENCH_SAMPLE ?? 200)
/** Chains opened at once while filling: enough to keep etcd busy, few enough for 2 cores. */
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32)
const ETCD = '/usr/bin/etcd'
/** The message every tenant encrypts once (64 bytes), and the raw baseline encrypts too. */
const MESSAGE = 'tenant record 0000: {"plan":"pro","seats":12,"region":"eu-west"}'.slice(0, 64)
const tenantName = (i) => `tenant-${String(i).padStart(5, '0')}`

v8.setFlagsFromString('--expose-gc')
const gc = globalThis.gc ?? vm.runInNewContext('gc')
const log = (line = '') => process.stdout.write(line + '\n')
const progress = (text) => process.stderr.isTTY && process.stderr.write(`\r\x1b[K${text}`)

class CheckFailed extends Error {}
function check(condition, what) {
  if (!condition) throw new CheckFailed(`check failed: ${what}`)
}

/** A store whose fetch counts requests per gateway path, so the script can say what a call cost. */
function countedStore(url) {
  const counts = new Map()
  const fetchCounted = (input, init) => {
    const path = new URL(typeof input === 'string' ? input : input.url).pathname
    counts.set(path, (counts.get(path) ?? 0) + 1)
    return fetch(input, init)
  }
  const store = etcdStore({ endpoints: [url], fetch: fetchCounted, timeoutMs: 30_000 })
  const snapshot = () => new Map(counts)
  /** Requests since `before`, by path, watch streams left out (they are not per call). */
  const since = (before) => {
    const out = {}
    for (const [path, n] of counts) if (!path.startsWith('/v3/watch') && n - (before.get(path) ?? 0) > 0) out[path] = n - (before.get(path) ?? 0)
    return out
  }
  return { store, snapshot, since, counts }
}

/** Runs `fn(i)` for i in [0, n) with at most `limit` running at once. */
async function pool(n, limit, fn) {
  let next = 0
  const worker = async () => {
    while (next < n) {
      const i = next++
      await fn(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker))
}

function memory() {
  gc()
  gc()
  const m = process.memoryUsage()
  return { heapUsed: m.heapUsed, rss: m.rss, external: m.external }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** The commit measured, and whether the packages it imports had uncommitted changes when it ran. */
function sourceLine() {
  try {
    const git = (...args) => execFileSync('git', args, { cwd: fileURLToPath(new URL('..', import.meta.url)), encoding: 'utf8' }).trim()
    const dirty = git('status', '--porcelain', '--', 'packages/core/src', 'packages/etcd/src') !== ''
    return `commit ${git('rev-parse', '--short', 'HEAD')}${dirty ? ' with uncommitted changes in packages/core or packages/etcd' : ''}`
  } catch {
    return 'commit unknown'
  }
}

/**
 * A subscription that holds the store's watch stream open, once etcd has confirmed the stream
 * (the store then calls every listener once). Returns its stop function.
 */
async function watchStarted(store) {
  if (typeof store.watchHead !== 'function') return () => {}
  let stop
  let timer
  const confirmed = await new Promise((resolve) => {
    timer = setTimeout(() => resolve(false), 30_000)
    stop = store.watchHead('tenant-keeper', () => resolve(true))
  })
  clearTimeout(timer)
  check(confirmed, 'the etcd watch stream is confirmed within 30 s')
  return stop
}

// ------------------------------------------------------------------------------------ child

/**
 * One configuration: opens every tenant's chain in this process, encrypts once in each, waits
 * for the DEK pools to fill, and reports memory before and after (after a full GC) on stdout.
 */
async function child() {
  const input = JSON.parse(readFileSync(0, 'utf8'))
  const { url, watch, dekPoolSize } = input
  const rootKey = aesRootKey(Uint8Array.from(Buffer.from(input.root, 'base64')))
  const { store, snapshot, since } = countedStore(url)
  const options = { rootKey, store, watch, ...(dekPoolSize === undefined ? {} : { dekPoolSize }) }
  // With a watch, the store's one stream opens first (its confirmation calls every listener), so
  // that its start is not counted against the chains.
  const keeper = watch ? await watchStarted(store) : () => {}
  // Warm-up: the fetch connection pool, the modules' code, the root key's import; not per chain.
  await pool(CONCURRENCY * 2, CONCURRENCY, (i) => store.getHead(tenantName(i)))
  const warm = await KeyChain.open({ ...options, name: tenantName(0) })
  await warm.encrypt(MESSAGE)
  warm.close()
  await sleep(50)
  const before = memory()
  const requests = snapshot()
  const chains = new Array(TENANTS)
  const started = performance.now()
  await pool(TENANTS, CONCURRENCY, async (i) => {
    const chain = await KeyChain.open({ ...options, name: tenantName(i) })
    await chain.encrypt(MESSAGE)
    chains[i] = chain
  })
  const openMs = performance.now() - started
  const perChainRequests = since(requests)
  // DEK pools fill from macrotasks after the first encryption: wait until every pool is full.
  const wraps = () => chains.reduce((n, c) => n + c.stats().keks.reduce((m, k) => m + k.wraps, 0), 0)
  const target = TENANTS * (1 + (dekPoolSize ?? 16))
  const deadline = Date.now() + 120_000
  let wrapped = wraps()
  while (wrapped < target && Date.now() < deadline) {
    await sleep(100)
    wrapped = wraps()
  }
  await sleep(50)
  const after = memory()
  for (const c of chains) {
    const s = c.stats()
    check(s.keks.length === 1 && s.encryptions === 1 && s.rootKeyUnwraps === 1, `${c.name}: one KEK, one encryption, one root unwrap (got ${s.keks.length}, ${s.encryptions}, ${s.rootKeyUnwraps})`)
  }
  check(wrapped === target, `DEK pools filled: ${wrapped} of ${target} DEKs wrapped`)
  const result = { watch, dekPoolSize: dekPoolSize ?? 16, openMs, before, after, requests: perChainRequests, watchHead: typeof store.watchHead === 'function' }
  for (const c of chains) c.close()
  keeper()
  process.stdout.write(JSON.stringify(result))
}

// ------------------------------------------------------------------------------------ etcd

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function startEtcd() {
  if (!existsSync(ETCD)) throw new Error(`${ETCD} not found: apt-get install etcd-server`)
  const [client, peer] = [await freePort(), await freePort()]
  const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'kms-proxy-bench-etcd-'))
  const url = `http://127.0.0.1:${client}`
  const peerUrl = `http://127.0.0.1:${peer}`
  const proc = spawn(
    ETCD,
    ['--name', 'b1', '--data-dir', dir, '--logger=zap', '--log-level=error', '--listen-client-urls', url, '--advertise-client-urls', url, '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl, '--initial-cluster', `b1=${peerUrl}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let stderr = ''
  proc.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)))
  const stop = () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
  }
  process.once('exit', stop)
  // Ctrl-C ends Node without its 'exit' event: etcd would outlive the run.
  process.once('SIGINT', () => {
    stop()
    process.exit(130)
  })
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) })
      if (r.ok && (await r.json()).health === 'true') break
    } catch {
      // not up yet
    }
    if (Date.now() > deadline || proc.exitCode !== null) {
      stop()
      throw new Error(`etcd did not start:\n${stderr}`)
    }
    await sleep(100)
  }
  const version = (await (await fetch(`${url}/version`)).json()).etcdserver
  const rssOf = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${proc.pid}/status`, 'utf8'))?.[1] ?? NaN) * 1024
  return { url, dir, version, stop, rssOf }
}

function runChild(config) {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), 'child'], { stdio: ['pipe', 'pipe', 'inherit'], env: process.env })
    let out = ''
    p.stdout.on('data', (d) => (out += d))
    p.once('error', reject)
    p.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new CheckFailed(`child ${JSON.stringify({ ...config, root: undefined })} exited with ${code}`))))
    p.stdin.end(JSON.stringify(config))
  })
}

// ------------------------------------------------------------------------------------ parent

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]
}
const fmtMs = (ms) => (ms >= 100 ? `${Math.round(ms)} ms` : ms >= 1 ? `${ms.toFixed(2)} ms` : `${Math.round(ms * 1000)} µs`)
const fmtBytes = (b) => (Math.abs(b) >= 10240 ? `${(b / 1024).toFixed(1)} KiB` : `${Math.round(b).toLocaleString('en-US')} B`)
const fmtMiB = (b) => `${(b / 1048576).toFixed(1)} MiB`

async function parent() {
  const started = performance.now()
  const loadAtStart = os.loadavg()[0].toFixed(1)
  const source = sourceLine()
  const etcd = await startEtcd()
  try {
    const rootBytes = crypto.getRandomValues(new Uint8Array(32))
    const rootKey = aesRootKey(rootBytes)
    const { store, snapshot, since } = countedStore(etcd.url)
    const etcdRssBefore = etcd.rssOf()

    // 1. Every tenant's chain made: one KEK each, one message each, kept for the decryptions below.
    progress('making the chains')
    const messages = new Array(TENANTS)
    const madeAt = performance.now()
    const beforeMake = snapshot()
    await pool(TENANTS, CONCURRENCY, async (i) => {
      const chain = await KeyChain.open({ rootKey, store, name: tenantName(i), watch: false, dekPoolSize: 0 })
      messages[i] = await chain.encrypt(MESSAGE)
      chain.close()
    })
    const makeMs = performance.now() - madeAt
    const makeRequests = since(beforeMake)
    const etcdRssAfter = etcd.rssOf()
    const watchHead = typeof store.watchHead === 'function'

    // 2. Memory: one child process per configuration, each opening all chains at once.
    const configs = []
    for (const watch of watchHead ? [false, true] : [false]) for (const dekPoolSize of [undefined, 0]) configs.push({ watch, dekPoolSize })
    const mem = []
    for (const c of configs) {
      progress(`memory: watch ${c.watch}, dekPoolSize ${c.dekPoolSize ?? 'default'}`)
      mem.push(await runChild({ url: etcd.url, root: Buffer.from(rootBytes).toString('base64'), ...c }))
    }

    // 3. Cold opens, interleaved with the baselines so that drift of the machine hits all alike.
    // Chains open with the default `watch`: a process serving tenants has its store's one watch
    // stream open already, so a subscription that holds it open keeps the stream's start out of
    // every sample.
    const keeper = await watchStarted(store)
    const sample = Math.min(SAMPLE, Math.floor(TENANTS / 2))
    const stride = Math.floor(TENANTS / sample)
    const rawKey = await crypto.subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt'])
    const plain = new TextEncoder().encode(MESSAGE)
    const times = { raw: [], range: [], openDecrypt: [], openEncrypt: [], retire: [], destroy: [], retireDestroy: [] }
    const coldCosts = { decrypt: undefined, encrypt: undefined }
    const sameCost = (prev, next, what) => {
      check(prev === undefined || JSON.stringify(prev) === JSON.stringify(next), `${what}: the same etcd requests every time (${JSON.stringify(prev)} then ${JSON.stringify(next)})`)
      return next
    }
    for (let k = 0; k < sample; k++) {
      progress(`cold opens ${k + 1}/${sample}`)
      const i = k * stride
      const name = tenantName(i)
      let t = performance.now()
      await crypto.subtle.encrypt({ name: 'AES-GCM', iv: crypto.getRandomValues(new Uint8Array(12)) }, rawKey, plain)
      times.raw.push(performance.now() - t)

      let before = snapshot()
      t = performance.now()
      const head = await store.getHead(name)
      times.range.push(performance.now() - t)
      check(head !== undefined, `${name} has a head`)
      check(JSON.stringify(since(before)) === JSON.stringify({ '/v3/kv/range': 1 }), `getHead is one range read (${JSON.stringify(since(before))})`)

      before = snapshot()
      t = performance.now()
      const reader = await KeyChain.open({ rootKey, store, name })
      const text = new TextDecoder().decode(await reader.decrypt(messages[i]))
      times.openDecrypt.push(performance.now() - t)
      check(text === MESSAGE, `${name}: its message decrypts`)
      check(reader.stats().rootKeyUnwraps === 1, `${name}: one root-key unwrap to open and decrypt`)
      coldCosts.decrypt = sameCost(coldCosts.decrypt, since(before), 'open + first decrypt')
      reader.close()

      before = snapshot()
      t = performance.now()
      const writer = await KeyChain.open({ rootKey, store, name })
      await writer.encrypt(MESSAGE)
      times.openEncrypt.push(performance.now() - t)
      check(writer.stats().rootKeyUnwraps === 1 && writer.stats().rotations === 0, `${name}: the first encryption of a cold chain unwraps its KEK and makes none`)
      coldCosts.encrypt = sameCost(coldCosts.encrypt, since(before), 'open + first encrypt')
      writer.close()
      await sleep(2) // the writer's DEK pool fills off the next sample's clock
    }
    check(coldCosts.decrypt['/v3/kv/range'] === 2 && Object.keys(coldCosts.decrypt).length === 1, `open + first decrypt is two range reads (head, KEK): ${JSON.stringify(coldCosts.decrypt)}`)

    // 4. Retire and destroy other tenants' chains; another chain instance then refuses their data.
    const destroyCosts = {}
    let destroyRefused
    for (let k = 0; k < sample; k++) {
      progress(`retire + destroy ${k + 1}/${sample}`)
      const i = k * stride + Math.floor(stride / 2)
      const name = tenantName(i)
      const chain = await KeyChain.open({ rootKey, store, name })
      let before = snapshot()
      let t = performance.now()
      await chain.retireChain()
      const retireMs = performance.now() - t
      destroyCosts.retire = sameCost(destroyCosts.retire, since(before), 'retireChain')
      before = snapshot()
      t = performance.now()
      let report
      try {
        report = await chain.destroyChain({ graceMs: 0 })
      } catch (error) {
        chain.close()
        if (error?.code === 'ERR_LIMIT' && /not retired/.test(error.message)) {
          destroyRefused = `destroyChain refused with ERR_LIMIT "${error.message}": this etcd store did not keep the head's chainRetiredAt`
          break
        }
        throw error
      }
      const destroyMs = performance.now() - t
      destroyCosts.destroy = sameCost(destroyCosts.destroy, since(before), 'destroyChain')
      chain.close()
      times.retire.push(retireMs)
      times.destroy.push(destroyMs)
      times.retireDestroy.push(retireMs + destroyMs)
      check(report.keks.length === 1 && report.deleted === 1, `${name}: one KEK, one record deleted (${JSON.stringify(report)})`)

      const other = await KeyChain.open({ rootKey, store, name })
      let code
      try {
        await other.decrypt(messages[i])
      } catch (error) {
        code = error?.code
      }
      other.close()
      check(code === 'ERR_DESTROYED_KEK', `${name}: a destroyed chain's data fails with ERR_DESTROYED_KEK in another chain instance (got ${code ?? 'a decryption'})`)
      check((await store.listKeks(name)).length === 0, `${name}: no KEK record left in etcd`)
      const tombstone = await store.getHead(name)
      check(tombstone?.value.chainDestroyedAt !== undefined, `${name}: the head stays, marked destroyed`)
    }
    // A tenant not destroyed still decrypts, in a fresh instance.
    {
      const name = tenantName(1)
      const again = await KeyChain.open({ rootKey, store, name })
      check(new TextDecoder().decode(await again.decrypt(messages[1])) === MESSAGE, `${name}: a tenant not destroyed still decrypts`)
      again.close()
    }
    keeper()
    progress('')
    if (process.stderr.isTTY) process.stderr.write('\r\x1b[K')

    // ---------------------------------------------------------------------------------- report
    const cpu = os.cpus()
    log(`## kms-proxy benchmark: ${TENANTS.toLocaleString('en-US')} tenants, one chain each, on one etcd`)
    log()
    log(`Machine: node ${process.version} · ${cpu[0]?.model?.trim() || 'unknown cpu'} · ${cpu.length} cores (load average ${loadAtStart} at the start, ${os.loadavg()[0].toFixed(1)} at the end) · etcd ${etcd.version} (one member, data dir on ${etcd.dir.startsWith('/dev/shm') ? 'tmpfs' : 'disk'}) · message ${plain.length} B · ${CONCURRENCY} chains opened at once while filling · ${source}`)
    log()
    const perChain = (r) => Object.entries(r).map(([p, n]) => `${(n / TENANTS).toFixed(2)} ${p.replace('/v3/kv/', '')}`).join(' + ')
    log(`Making ${TENANTS.toLocaleString('en-US')} chains (open, first encryption: a new KEK each): ${(makeMs / 1000).toFixed(1)} s, ${Math.round(TENANTS / (makeMs / 1000)).toLocaleString('en-US')} chains/s; etcd requests per chain: ${perChain(makeRequests)}; etcd RSS ${fmtMiB(etcdRssBefore)} → ${fmtMiB(etcdRssAfter)}.`)
    log()
    log(`Memory per chain: ${TENANTS.toLocaleString('en-US')} chains open in one process, each after one encryption (a fresh process per row; after a forced full GC, minus before the first chain):`)
    log()
    log('| watch | dekPoolSize | heap per chain | RSS per chain | heap, all chains | RSS, all chains | open + encrypt all | etcd requests per chain |')
    log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |')
    for (const m of mem) {
      const heap = m.after.heapUsed - m.before.heapUsed
      const rss = m.after.rss - m.before.rss
      log(`| ${m.watch ? 'true (one watch per store)' : 'false'} | ${m.dekPoolSize}${m.dekPoolSize === 16 ? ' (default)' : ''} | ${fmtBytes(heap / TENANTS)} | ${fmtBytes(rss / TENANTS)} | ${fmtMiB(heap)} | ${fmtMiB(rss)} | ${(m.openMs / 1000).toFixed(1)} s | ${perChain(m.requests)} |`)
    }
    if (!watchHead) log(`\nwatch: not measured: this build of @kms-proxy/etcd has no watchHead, so \`watch: true\` subscribes to nothing (every chain reads its head every maxStalenessMs instead).`)
    log()
    log(`Per chain, median and p95 over ${sample} chains (interleaved, one of each per chain); × = median over the baseline's median:`)
    log()
    log('| operation | median | p95 | × raw AES-GCM | × etcd range read | etcd requests |')
    log('| --- | ---: | ---: | ---: | ---: | --- |')
    const rawMed = quantile(times.raw, 0.5)
    const rangeMed = quantile(times.range, 0.5)
    const reqs = (r) => (r ? Object.entries(r).map(([p, n]) => `${n} ${p.replace('/v3/kv/', '')}`).join(' + ') : '')
    const row = (label, xs, requests) => {
      if (xs.length === 0) return
      const med = quantile(xs, 0.5)
      log(`| ${label} | ${fmtMs(med)} | ${fmtMs(quantile(xs, 0.95))} | ${(med / rawMed).toFixed(0)}× | ${(med / rangeMed).toFixed(1)}× | ${requests} |`)
    }
    row(`raw \`crypto.subtle\` AES-GCM-128 encrypt, ${plain.length} B (baseline)`, times.raw, '')
    row('etcd range read: `store.getHead` (baseline)', times.range, reqs({ '/v3/kv/range': 1 }))
    row('cold: `KeyChain.open` + first decrypt of earlier data (head read, KEK read, 1 root unwrap)', times.openDecrypt, reqs(coldCosts.decrypt))
    row('cold: `KeyChain.open` + first encrypt (head read, KEK read, 1 root unwrap, lease)', times.openEncrypt, reqs(coldCosts.encrypt))
    row('`retireChain()`', times.retire, reqs(destroyCosts.retire))
    row('`destroyChain({ graceMs: 0 })`', times.destroy, reqs(destroyCosts.destroy))
    row('retire + destroy', times.retireDestroy, '')
    log()
    if (destroyRefused) {
      log(`Destroy: NOT measured: ${destroyRefused}.`)
    } else {
      log(`Checked for each of the ${sample} destroyed chains: another chain instance's decryption of its data fails with ERR_DESTROYED_KEK, etcd holds no KEK record of it, its head stays as a tombstone; a tenant not destroyed still decrypts.`)
    }
    log()
    log(`Run time: ${((performance.now() - started) / 1000).toFixed(1)} s`)
    if (destroyRefused) process.exitCode = 1
  } finally {
    etcd.stop()
  }
}

try {
  if (process.argv[2] === 'child') await child()
  else await parent()
} catch (error) {
  if (error instanceof CheckFailed) {
    console.error(error.message)
    process.exitCode = 1
  } else throw error
}
