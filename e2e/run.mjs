// Runs the conformance suite on every runtime against the built packages, then the interop
// matrix (data made on each runtime decrypted on every other), then the packaging checks.
//   pnpm build && pnpm test:e2e        (E2E_ONLY=node,deno to pick runtimes)
// Writes .tmp/e2e.json ({ passed, failed, runtimes, matrix, checks }) and ends with
// "N passed, N failed".
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { gzipSync } from 'node:zlib'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const e2e = join(root, 'e2e')
const out = join(root, '.tmp', 'e2e')
mkdirSync(out, { recursive: true })
// deno: the binary itself. npm's `deno` package runs it through a Node wrapper (spawnSync) that
// does not pass signals on, so stopping the wrapper would leave deno running.
const bin = (name) => (name === 'deno' ? join(root, 'node_modules', 'deno', 'deno') : join(root, 'node_modules', '.bin', name))
const vectors = JSON.parse(readFileSync(join(e2e, 'vectors', 'v1.json'), 'utf8'))
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
const TIMEOUT_MS = 240_000

for (const pkg of ['core', 'passphrase']) {
  if (!existsSync(join(root, 'packages', pkg, 'dist', 'index.js'))) {
    console.error(`e2e: packages/${pkg}/dist is missing; run pnpm build first`)
    process.exit(1)
  }
}

// ------------------------------------------------------------------------------ bundles

/** Bundles an entry as a bundler would for the browser: resolution through package `exports`. */
async function bundle(entry, file) {
  await esbuild.build({
    entryPoints: [join(e2e, 'entries', entry)],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    outfile: join(out, file),
    absWorkingDir: e2e,
    // The repo's tsconfig maps @kms-proxy/* to the sources for the unit tests; a bundler of a
    // user's app sees no such mapping, so neither may this one.
    tsconfigRaw: '{}',
    logLevel: 'error',
  })
  return join(out, file)
}

// ------------------------------------------------------------------------------ runtimes

function runProcess(command, args, input, env = {}) {
  const inputFile = join(out, `input-${Math.random().toString(36).slice(2)}.json`) // a file name, not crypto
  writeFileSync(inputFile, JSON.stringify(input))
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args, inputFile], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      try {
        resolve(JSON.parse(stdout))
      } catch {
        reject(new Error(`${command} exited ${code}: ${(stderr || stdout).slice(0, 2000)}`))
      }
    })
  })
}

async function version(command, args) {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'ignore'] })
    let s = ''
    child.stdout.on('data', (d) => (s += d))
    child.on('close', () => resolve(s.trim().split('\n')[0]))
    child.on('error', () => resolve('not found'))
  })
}

const denoDir = join(out, 'deno-dir')
const cli = join(e2e, 'entries', 'cli.mjs')

const runtimes = [
  {
    name: 'node',
    version: () => process.version,
    start: async () => ({ run: (input) => runProcess(process.execPath, [cli], input), stop: async () => {} }),
  },
  {
    name: 'deno',
    version: () => version(bin('deno'), ['--version']),
    start: async () => ({
      run: (input) => runProcess(bin('deno'), ['run', '--quiet', '--allow-read', '--allow-env', cli], input, { DENO_DIR: denoDir, NO_COLOR: '1', DENO_NO_UPDATE_CHECK: '1' }),
      stop: async () => {},
    }),
  },
  {
    name: 'bun',
    version: async () => `bun ${await version(bin('bun'), ['--version'])}`,
    start: async () => ({ run: (input) => runProcess(bin('bun'), [cli], input), stop: async () => {} }),
  },
  ...[false, true].map((nodejsCompat) => ({
    name: nodejsCompat ? 'workerd+nodejs_compat' : 'workerd',
    version: async () => {
      const { Miniflare } = await import('miniflare')
      const pkg = JSON.parse(readFileSync(join(root, 'node_modules', 'miniflare', 'package.json'), 'utf8'))
      return `workerd via miniflare ${pkg.version}${Miniflare ? '' : ' (no Miniflare export)'}`
    },
    start: async () => {
      const { Miniflare } = await import('miniflare')
      const scriptPath = await bundle('worker.mjs', 'worker.js')
      const mf = new Miniflare({
        modules: true,
        scriptPath,
        compatibilityDate: '2026-05-01',
        compatibilityFlags: nodejsCompat ? ['nodejs_compat'] : [],
      })
      await mf.ready
      return {
        run: async (input) => {
          const response = await mf.dispatchFetch('http://localhost/', { method: 'POST', body: JSON.stringify(input) })
          const body = await response.text()
          if (!response.ok) throw new Error(`worker answered ${response.status}: ${body.slice(0, 2000)}`)
          return JSON.parse(body)
        },
        stop: () => mf.dispose(),
      }
    },
  })),
  {
    name: 'chromium',
    version: () => version(CHROMIUM, ['--version']),
    start: async () => {
      const { chromium } = await import('playwright-core')
      const script = readFileSync(await bundle('browser.mjs', 'browser.js'))
      const server = createServer((req, res) => {
        if (req.url === '/suite.js') {
          res.writeHead(200, { 'content-type': 'text/javascript' })
          res.end(script)
        } else {
          res.writeHead(200, { 'content-type': 'text/html' })
          res.end('<!doctype html><meta charset="utf-8"><title>kms-proxy e2e</title><script type="module" src="/suite.js"></script>')
        }
      })
      await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
      const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true })
      const page = await browser.newPage()
      const errors = []
      page.on('pageerror', (e) => errors.push(String(e)))
      await page.goto(`http://localhost:${server.address().port}/`)
      await page.waitForFunction(() => globalThis.suiteReady === true, undefined, { timeout: 30_000 }).catch(() => {
        throw new Error(`the page did not load the suite: ${errors.join('; ')}`)
      })
      return {
        run: (input) => page.evaluate((i) => globalThis.runSuite(i), input),
        stop: async () => {
          await browser.close()
          server.close()
        },
      }
    },
  },
]

// ------------------------------------------------------------------------------ packaging checks

async function packagingChecks() {
  const checks = []
  const check = async (name, fn) => {
    try {
      const detail = await fn()
      checks.push({ name, ok: true, detail })
    } catch (error) {
      checks.push({ name, ok: false, detail: error.message })
    }
  }
  const budget = JSON.parse(readFileSync(join(e2e, 'size-budget.json'), 'utf8'))
  // Packages whose job is Node's file system, processes or sockets; every other must run anywhere.
  const NODE_ONLY = new Set(['file', 'cli', 'k8s', 'pkcs11-bridge'])
  const all = readdirSync(join(root, 'packages')).filter((p) => existsSync(join(root, 'packages', p, 'src', 'index.ts')))
  for (const pkg of all) {
    if (!existsSync(join(root, 'packages', pkg, 'dist', 'index.js'))) {
      checks.push({ name: `${pkg}: built`, ok: false, detail: 'dist/index.js missing' })
      continue
    }
    if (!NODE_ONLY.has(pkg)) await check(`${pkg}: no node: imports in dist (runs on every runtime)`, async () => {
      const code = readFileSync(join(root, 'packages', pkg, 'dist', 'index.js'), 'utf8')
      const hits = code.match(/(?:from\s*|import\s*\(\s*|require\s*\(\s*)['"]node:[^'"]+['"]/g)
      if (hits) throw new Error(`found ${hits.join(', ')}`)
      return 'none'
    })
    await check(`${pkg}: package.json exports has only "types" and "default", and both files exist`, async () => {
      const manifest = JSON.parse(readFileSync(join(root, 'packages', pkg, 'package.json'), 'utf8'))
      const entry = manifest.exports?.['.']
      const keys = Object.keys(entry ?? {})
      if (keys.join(',') !== 'types,default') throw new Error(`exports["."] keys are ${keys.join(',')}`)
      if (manifest.sideEffects !== false) throw new Error('sideEffects is not false')
      for (const k of keys) if (!existsSync(join(root, 'packages', pkg, entry[k]))) throw new Error(`${entry[k]} is missing`)
      return keys.join(' + ')
    })
    await check(`${pkg}: resolves by name under Node`, async () => {
      // e2e/package.json depends on every package, as an application would.
      const url = import.meta.resolve(`@kms-proxy/${pkg}`)
      if (!url.endsWith(`/packages/${pkg}/dist/index.js`)) throw new Error(`resolved to ${url}`)
      return url.slice(url.indexOf('/packages/'))
    })
  }
  await check('a bundler (esbuild, platform browser) resolves the packages through their exports', async () => {
    const result = await esbuild.build({
      stdin: { contents: "export * as a from '@kms-proxy/core'; export * as b from '@kms-proxy/passphrase'", resolveDir: e2e, loader: 'js' },
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      logLevel: 'silent',
      metafile: true,
      tsconfigRaw: '{}',
    })
    const inputs = Object.keys(result.metafile.inputs)
    const wanted = ['packages/core/dist/index.js', 'packages/passphrase/dist/index.js']
    for (const w of wanted) if (!inputs.some((i) => i.endsWith(w))) throw new Error(`${w} not in the bundle`)
    return `${inputs.length} inputs`
  })
  await check(`core: minified + gzipped size within the budget (${budget.coreMinGzipBytes} bytes)`, async () => {
    const result = await esbuild.build({
      stdin: { contents: "export * from '@kms-proxy/core'", resolveDir: e2e, loader: 'js' },
      bundle: true,
      minify: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      logLevel: 'silent',
      tsconfigRaw: '{}',
    })
    const size = gzipSync(result.outputFiles[0].contents, { level: 9 }).length
    if (size > budget.coreMinGzipBytes) throw new Error(`${size} bytes > ${budget.coreMinGzipBytes}`)
    return `${size} bytes (${(size / 1024).toFixed(2)} KiB)`
  })
  return checks
}

// ------------------------------------------------------------------------------ main

const only = process.env.E2E_ONLY?.split(',')
const selected = runtimes.filter((r) => !only || only.includes(r.name))
const report = { runtimes: [], matrix: {}, checks: [] }
const produced = []
const started = Date.now()

for (const runtime of selected) {
  const entry = { name: runtime.name, version: await runtime.version(), results: [], error: undefined }
  report.runtimes.push(entry)
  let instance
  try {
    instance = await runtime.start()
    const output = await instance.run({ runtime: runtime.name, suite: true, produce: true, env: { runtime: runtime.name, vectors } })
    entry.results = output.results
    produced.push(output.produced)
    entry.instance = instance
  } catch (error) {
    entry.error = error.message
    await instance?.stop().catch(() => {})
  }
  const failed = entry.results.filter((r) => !r.ok)
  console.log(`${runtime.name} (${entry.version}): ${entry.results.length - failed.length}/${entry.results.length} passed${entry.error ? `; could not run: ${entry.error}` : ''}`)
  for (const f of failed) console.log(`  FAIL ${f.name}\n       ${f.error}`)
}

// Interop: every runtime decrypts what every runtime made.
for (const entry of report.runtimes) {
  if (!entry.instance) continue
  try {
    const output = await entry.instance.run({ runtime: entry.name, consume: produced })
    for (const cell of output.consumed) report.matrix[`${cell.from}->${entry.name}`] = cell
  } catch (error) {
    for (const p of produced) report.matrix[`${p.runtime}->${entry.name}`] = { from: p.runtime, ok: false, error: error.message }
  }
  await entry.instance.stop().catch(() => {})
  delete entry.instance
}

const names = report.runtimes.map((r) => r.name)
console.log('\nInterop: rows made the encrypted data (passphrase root key, embedded store), columns decrypted it')
console.log(`| made on \\ decrypted on | ${names.join(' | ')} |`)
console.log(`| --- | ${names.map(() => ':---:').join(' | ')} |`)
for (const from of names) {
  const cells = names.map((to) => {
    const cell = report.matrix[`${from}->${to}`]
    return cell === undefined ? '–' : cell.ok ? 'ok' : 'FAIL'
  })
  console.log(`| ${from} | ${cells.join(' | ')} |`)
}
for (const [key, cell] of Object.entries(report.matrix)) if (!cell.ok) console.log(`  FAIL ${key}: ${cell.error ?? 'wrong plaintext'}`)

report.checks = await packagingChecks()
console.log('\nPackaging')
for (const c of report.checks) console.log(`  ${c.ok ? 'ok  ' : 'FAIL'} ${c.name}: ${c.detail}`)

let passed = 0
let failed = 0
for (const r of report.runtimes) {
  for (const t of r.results) t.ok ? passed++ : failed++
  if (r.error) failed++
}
const expectedCells = names.length * names.length
const okCells = Object.values(report.matrix).filter((c) => c.ok).length
passed += okCells
failed += expectedCells - okCells
for (const c of report.checks) c.ok ? passed++ : failed++
report.passed = passed
report.failed = failed
report.seconds = Math.round((Date.now() - started) / 1000)
writeFileSync(join(root, '.tmp', 'e2e.json'), JSON.stringify(report, null, 2))
console.log(`\ne2e: ${report.seconds} s`)
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed === 0 && passed > 0 ? 0 : 1)
