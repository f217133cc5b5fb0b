// Launchers for the web runtimes of the benchmark: workerd (through Miniflare) and Chromium
// (through playwright-core, a page on localhost). Each bundles its entry (bench/runtimes/worker.mjs
// or browser.mjs) with esbuild as a bundler of a user's app would, from the built packages, and
// runs the portable suite inside the runtime. The host (bench/run.mjs) calls
//   const rt = await start('workerd' | 'workerd+nodejs_compat' | 'chromium')
//   rt.version; await rt.run({ quick, only }); await rt.peakRss({ mib }); await rt.stop()
// What was checked on this machine, and why the launchers look as they do, is in bench/README.md.
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const bench = join(dirname(fileURLToPath(import.meta.url)), '..')
const root = join(bench, '..')
const out = join(root, '.tmp', 'bench')
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
// As the conformance suite launches it; --expose-gc gives the page a full GC (window.gc) for
// the suite to run between samples, as it does on Node.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--js-flags=--expose-gc',
]

const bundles = new Map()

/**
 * Bundles an entry of bench/runtimes for the browser: packages resolved through their `exports`.
 * Once per entry and host process: the fresh runtimes of peakRss reuse it.
 */
function bundle(entry) {
  if (!bundles.has(entry)) bundles.set(entry, build(entry))
  return bundles.get(entry)
}

async function build(entry) {
  mkdirSync(out, { recursive: true })
  const outfile = join(out, entry.replace(/\.mjs$/, '.js'))
  await esbuild.build({
    entryPoints: [join(bench, 'runtimes', entry)],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    outfile,
    absWorkingDir: bench,
    // The repo's tsconfig maps @kms-proxy/* to the sources for the unit tests; a bundler of a
    // user's app sees no such mapping, so neither may this one: the built dist is measured.
    tsconfigRaw: '{}',
    logLevel: 'error',
  })
  return outfile
}

// ------------------------------------------------------------------------------ process memory

/** Bytes of a `VmHWM:` / `VmRSS:` line of /proc/<pid>/status, or undefined. */
function procStatus(pid, field) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'))
    return m ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}

/**
 * The peak resident memory of one process between `reset()` and `read()`: Linux keeps the peak
 * (VmHWM) and lets the owner set it back to the current RSS (writing 5 to clear_refs). Polling
 * VmRSS as well covers a kernel without that reset (then the peak is the highest sample).
 */
function peakMeter(pid) {
  let polled = 0
  let timer
  let resettable = false
  return {
    pid,
    reset() {
      try {
        writeFileSync(`/proc/${pid}/clear_refs`, '5')
        resettable = true
      } catch {
        resettable = false
      }
      polled = procStatus(pid, 'VmRSS') ?? 0
      clearInterval(timer)
      timer = setInterval(() => (polled = Math.max(polled, procStatus(pid, 'VmRSS') ?? 0)), 20)
      timer.unref()
      return procStatus(pid, 'VmRSS')
    },
    read() {
      clearInterval(timer)
      const hwm = resettable ? procStatus(pid, 'VmHWM') ?? 0 : 0
      return { peakBytes: Math.max(hwm, polled, procStatus(pid, 'VmRSS') ?? 0), how: resettable ? 'VmHWM after clear_refs' : 'VmRSS polled every 20 ms' }
    },
  }
}

/** Pids of the live children of `pid` (from /proc/<pid>/task/<pid>/children, or a /proc scan). */
function childrenOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {
    const kids = []
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue
      try {
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
        if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) kids.push(Number(name))
      } catch {}
    }
    return kids
  }
}

/**
 * Streams `mib` MiB inside the runtime (`variant` 'idle', 'raw' or 'stream', as
 * bench/lib/stream.mjs's pipeThroughBoth) while reading the peak RSS of the process that runs it.
 */
async function pipeWithPeak(instance, variant, mib) {
  const meter = instance.pid ? peakMeter(instance.pid) : undefined
  const rssBefore = meter?.reset()
  const run = await instance.pipe(variant, mib)
  const peak = meter?.read()
  return { ...run, rssBeforeMiB: rssBefore === undefined ? undefined : rssBefore / 1048576, peakMiB: peak ? peak.peakBytes / 1048576 : undefined, how: peak?.how }
}

// ------------------------------------------------------------------------------ workerd

/**
 * workerd as a Workers project without flags runs it ('workerd'), or with the nodejs_compat flag
 * ('workerd+nodejs_compat': Node's Buffer as a global, which the AWS Encryption SDK for the
 * browser needs to load; kms-proxy itself uses no Node API).
 */
async function startWorkerd({ nodejsCompat = false } = {}) {
  const { Miniflare } = await import('miniflare')
  const require = createRequire(import.meta.url)
  const miniflareDir = dirname(require.resolve('miniflare/package.json', { paths: [root] }))
  const mfVersion = JSON.parse(readFileSync(join(miniflareDir, 'package.json'), 'utf8')).version
  const workerdVersion = JSON.parse(readFileSync(createRequire(join(miniflareDir, 'package.json')).resolve('workerd/package.json'), 'utf8')).version
  const version = `workerd ${workerdVersion} (miniflare ${mfVersion})${nodejsCompat ? ' with nodejs_compat' : ''}`
  const scriptPath = await bundle('worker.mjs')
  const before = new Set(childrenOf(process.pid))
  // No CPU or wall-time limit to lift: Miniflare gives workerd no per-request CPU limit (a 45 s
  // CPU-bound request completes) and its dispatchFetch turns undici's header and body timeouts
  // off, so one request carries a whole run.
  // A full GC between samples, as on Node and in Chromium: workerd takes V8 flags from this
  // variable when Miniflare writes its config (read once, at construction).
  const flags = process.env.MINIFLARE_WORKERD_V8_FLAGS
  process.env.MINIFLARE_WORKERD_V8_FLAGS = [flags, '--expose-gc'].filter(Boolean).join(' ')
  const mf = new Miniflare({
    modules: true,
    scriptPath,
    // Module paths are taken relative to this root; the default (the working directory) cannot
    // reach .tmp/bench from bench/, where `pnpm bench` runs.
    modulesRoot: dirname(scriptPath),
    compatibilityDate: '2026-05-01',
    compatibilityFlags: nodejsCompat ? ['nodejs_compat'] : [],
    bindings: { VERSION: version, RUNTIME: nodejsCompat ? 'workerd+nodejs_compat' : 'workerd' },
  })
  try {
    await mf.ready
  } finally {
    if (flags === undefined) delete process.env.MINIFLARE_WORKERD_V8_FLAGS
    else process.env.MINIFLARE_WORKERD_V8_FLAGS = flags
  }
  // The workerd process is a new child of this one (Miniflare spawns it directly).
  const comm = (p) => {
    try {
      return readFileSync(`/proc/${p}/comm`, 'utf8').trim()
    } catch {
      return undefined
    }
  }
  const pid = childrenOf(process.pid).find((p) => !before.has(p) && comm(p) === 'workerd')
  const post = async (input) => {
    const response = await mf.dispatchFetch('http://localhost/', { method: 'POST', body: JSON.stringify(input) })
    const body = await response.text()
    if (!response.ok) throw new Error(`the worker answered ${response.status}: ${body.slice(0, 2000)}`)
    return JSON.parse(body)
  }
  return {
    version,
    pid,
    run: (input) => post(input),
    pipe: (variant, mib) => post({ pipe: { variant, mib } }),
    stop: () => mf.dispose(),
  }
}

// ------------------------------------------------------------------------------ chromium

async function startChromium({ progress } = {}) {
  const { chromium } = await import('playwright-core')
  const script = readFileSync(await bundle('browser.mjs'))
  // Cross-origin isolation (COOP + COEP) gives the page performance.now() in 5 µs steps instead
  // of 100 µs; localhost is a secure context, which crypto.subtle needs.
  const isolation = { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' }
  const server = createServer((req, res) => {
    if (req.url === '/suite.js') {
      res.writeHead(200, { 'content-type': 'text/javascript', ...isolation })
      res.end(script)
    } else {
      res.writeHead(200, { 'content-type': 'text/html', ...isolation })
      res.end('<!doctype html><meta charset="utf-8"><title>kms-proxy bench</title><script type="module" src="/suite.js"></script>')
    }
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  let browser
  try {
    const launch = () => chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true })
    // Once in a dozen starts on the loaded machine, the new browser closed itself during launch
    // ("Target page, context or browser has been closed"); a second launch then worked.
    browser = await launch().catch(() => new Promise((resolve) => setTimeout(resolve, 1000)).then(launch))
    const version = `Chromium ${browser.version()}`
    const page = await browser.newPage()
    const errors = []
    page.on('pageerror', (e) => errors.push(String(e)))
    await page.addInitScript((v) => (globalThis.benchVersion = v), version)
    if (progress) await page.exposeFunction('benchProgress', (text) => progress(text))
    await page.goto(`http://localhost:${server.address().port}/`)
    await page.waitForFunction(() => globalThis.suiteReady === true, undefined, { timeout: 30_000 }).catch(() => {
      throw new Error(`the page did not load the suite: ${errors.join('; ') || 'no error reported'}`)
    })
    if (!(await page.evaluate(() => globalThis.crossOriginIsolated))) throw new Error('the page is not cross-origin isolated: performance.now() would step in 100 µs')
    const pid = await rendererPid(browser, page)
    return {
      version,
      pid,
      // page.evaluate waits as long as the page computes: playwright sets no timeout on it.
      run: (input) => page.evaluate((i) => globalThis.runSuite(i), input),
      pipe: (variant, mib) => page.evaluate(([v, m]) => globalThis.pipe(v, m), [variant, mib]),
      stop: async () => {
        await browser.close()
        server.close()
      },
    }
  } catch (error) {
    await browser?.close().catch(() => {})
    server.close()
    throw error
  }
}

/**
 * The pid of the renderer process that runs the page. The browser lists its renderers (CDP
 * SystemInfo.getProcessInfo, browser target only) but not which page each one serves, and it
 * keeps more than one (three here, for one page): the page's renderer is the one whose
 * RSS grows by the 64 MiB the page fills (memory, not CPU time: on a loaded machine another
 * renderer's start-up work looked as busy as the page's spinning).
 */
async function rendererPid(browser, page) {
  const cdp = await browser.newBrowserCDPSession()
  const { processInfo } = await cdp.send('SystemInfo.getProcessInfo')
  await cdp.detach()
  const renderers = processInfo.filter((p) => p.type === 'renderer').map((p) => p.id)
  const before = new Map(renderers.map((pid) => [pid, procStatus(pid, 'VmRSS') ?? 0]))
  // Returns nothing: the array itself would be serialized back to the host (11 s for 64 MiB).
  await page.evaluate(() => void (globalThis.benchBallast = new Uint8Array(64 << 20).fill(1)))
  const grown = renderers.map((pid) => [pid, (procStatus(pid, 'VmRSS') ?? 0) - before.get(pid)]).sort((a, b) => b[1] - a[1])
  await page.evaluate(() => {
    delete globalThis.benchBallast
    globalThis.gc?.()
  })
  // Only a clear winner: the page's renderer grows by the 64 MiB, the others by a few MiB.
  const MiB = 1048576
  const [pid, growth] = grown[0] ?? []
  return growth >= 48 * MiB && growth > 2 * Math.max(0, grown[1]?.[1] ?? 0) ? pid : undefined
}

// ------------------------------------------------------------------------------ entry

const STARTERS = {
  workerd: startWorkerd,
  'workerd+nodejs_compat': (options) => startWorkerd({ ...options, nodejsCompat: true }),
  chromium: startChromium,
}
/** The names start() takes. */
export const WEB_RUNTIMES = Object.keys(STARTERS)
const WHO = { workerd: 'the workerd process', 'workerd+nodejs_compat': 'the workerd process', chromium: "the page's renderer process (not the browser, GPU or network processes)" }

/**
 * Starts a web runtime for the benchmark: 'workerd', 'workerd+nodejs_compat' or 'chromium'
 * (bench-contract). Resolves to `{ version, run(input) -> Result, peakRss({ mib }), stop() }`;
 * options.progress (Chromium only) receives the suite's progress lines.
 */
export async function start(name, options = {}) {
  const starter = STARTERS[name]
  if (!starter) throw new RangeError(`unknown web runtime: ${name}`)
  const instance = await starter(options)
  return {
    version: instance.version,
    run: instance.run,
    stop: instance.stop,
    /**
     * Peak RSS while `mib` MiB stream encrypt -> decrypt, piped, inside the runtime, per variant:
     * the runtime alone ('idle'), raw segmented AES-GCM, kms-proxy's streams. Each variant in a
     * fresh runtime (a new workerd, a new browser), as the local launchers use a new process each,
     * so that no variant inherits the heap of the suite or of the variant before it.
     */
    async peakRss({ mib }) {
      const result = { mib, how: `${WHO[name]}: /proc/<pid>/status, peak since the pipe began` }
      for (const variant of ['idle', 'raw', 'stream']) {
        options.progress?.(`${name} peak RSS, ${variant}, ${mib} MiB`)
        const fresh = await starter({ ...options, progress: undefined })
        try {
          if (!fresh.pid) throw new Error(`${name}: could not tell which process to measure`)
          const run = await pipeWithPeak(fresh, variant, mib)
          result[variant] = { peakMiB: run.peakMiB, rssBeforeMiB: run.rssBeforeMiB, seconds: run.seconds, ok: run.ok, how: run.how }
        } finally {
          await fresh.stop()
        }
      }
      return result
    },
  }
}
