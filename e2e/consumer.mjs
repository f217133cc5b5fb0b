// The consumer test: what a new user gets from the registry. Packs every package with
// `pnpm pack` (as `pnpm publish` would), installs the tarballs with npm into a fresh project
// outside the workspace, and checks it: the tarballs' LICENSE and metadata, publint --strict and
// arethetypeswrong (ESM-only profile), one copy of core (also once core has a patch release the
// adapters were not packed with), an app that imports the packages by name on Node, Deno and Bun
// and as an esbuild browser bundle, `tsc --noEmit` strict without @types/node, and the CLI's bin.
//   pnpm build && node e2e/consumer.mjs        (any Node: e2e/node_modules/node24/bin/node e2e/consumer.mjs)
// Builds nothing. Prints one line per check and ends with "N passed, N failed"; writes
// .tmp/consumer.json ({ node, passed, failed, seconds, results }).
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, cpSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import * as esbuild from 'esbuild'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const e2e = join(root, 'e2e')
const started = Date.now()
const tmp = mkdtempSync(join(tmpdir(), 'kms-proxy-consumer-'))
const packs = join(tmp, 'packs')
const app = join(tmp, 'app')
// Children (npm and the bins it links, #!/usr/bin/env node) run on the Node running this script.
const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH}`, NO_COLOR: '1', npm_config_update_notifier: 'false' }
const TIMEOUT_MS = 300_000

/** Runs a command; resolves to { code, stdout, stderr } and never rejects. */
function run(command, args, options = {}) {
  return new Promise((resolve) => {
    execFile(command, args, { cwd: app, env, timeout: TIMEOUT_MS, maxBuffer: 64 << 20, ...options }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout: String(stdout), stderr: String(stderr), error })
    })
  })
}
const tail = (r) => `${r.stderr}\n${r.stdout}`.trim().split('\n').slice(-12).join('\n').slice(0, 2000)

const results = []
async function check(name, fn) {
  const t0 = Date.now()
  const took = () => ` (${((Date.now() - t0) / 1000).toFixed(1)} s)`
  try {
    const detail = await fn()
    results.push({ name, ok: true })
    console.log(`ok   ${name}${detail ? `: ${detail}` : ''}${took()}`)
  } catch (error) {
    results.push({ name, ok: false })
    console.log(`FAIL ${name}${took()}: ${String(error?.message ?? error).replaceAll('\n', '\n       ')}`)
  }
}
function finish() {
  const failed = results.filter((r) => !r.ok).length
  const passed = results.length - failed
  console.log(`consumer: Node ${process.version}, ${Math.round((Date.now() - started) / 1000)} s; project left in ${failed ? tmp : '(removed)'}`)
  if (!failed) rmSync(tmp, { recursive: true, force: true })
  mkdirSync(join(root, '.tmp'), { recursive: true })
  writeFileSync(join(root, '.tmp', 'consumer.json'), JSON.stringify({ node: process.version, passed, failed, seconds: Math.round((Date.now() - started) / 1000), results }, null, 2))
  console.log(`${passed} passed, ${failed} failed`)
  process.exit(failed === 0 && passed > 0 ? 0 : 1)
}

const names = readdirSync(join(root, 'packages')).filter((p) => existsSync(join(root, 'packages', p, 'package.json'))).sort()
const manifests = Object.fromEntries(names.map((p) => [p, JSON.parse(readFileSync(join(root, 'packages', p, 'package.json'), 'utf8'))]))
const missing = names.filter((p) => !existsSync(join(root, 'packages', p, 'dist', 'index.js')))
if (missing.length > 0) {
  await check('every package is built', () => Promise.reject(new Error(`dist missing in ${missing.join(', ')}: run pnpm build first`)))
  finish()
}

// ------------------------------------------------------------------------------ pack

/** package folder name -> { file, manifest, files } of its tarball as pnpm packed it. */
const tarballs = {}
for (const p of names) {
  await check(`${p}: pnpm pack`, async () => {
    const r = await run('pnpm', ['pack', '--pack-destination', packs, '--json'], { cwd: join(root, 'packages', p) })
    if (r.code !== 0) throw new Error(tail(r))
    const { filename } = JSON.parse(r.stdout)
    const listing = await run('tar', ['-tzf', filename], { cwd: packs })
    const manifest = JSON.parse((await run('tar', ['-xzOf', filename, 'package/package.json'], { cwd: packs })).stdout)
    tarballs[p] = { file: filename, manifest, files: listing.stdout.split('\n').filter(Boolean).map((f) => f.replace(/^package\//, '')) }
    return `${relative(packs, filename)}, ${tarballs[p].files.length} files`
  })
}
const packed = names.filter((p) => tarballs[p])
const core = tarballs.core?.manifest
const caret = core ? `^${core.version}` : '^?'

// ------------------------------------------------------------------------------ tarball checks

// The linters start a process per tarball (attw loads TypeScript, 2-4 s each): a few at a time.
function limiter(concurrency) {
  let active = 0
  const waiting = []
  const next = () => {
    if (active >= concurrency || waiting.length === 0) return
    active++
    const { fn, resolve } = waiting.shift()
    fn().then(resolve).finally(() => {
      active--
      next()
    })
  }
  return (fn) => new Promise((resolve) => (waiting.push({ fn, resolve }), next()))
}
const limited = limiter(3)
const lints = Object.fromEntries(packed.map((p) => [p, {
  publint: limited(() => run(join(e2e, 'node_modules', '.bin', 'publint'), ['run', tarballs[p].file, '--strict'], { cwd: packs })),
  attw: limited(() => run(join(e2e, 'node_modules', '.bin', 'attw'), [tarballs[p].file, '--profile', 'esm-only', '--format', 'ascii', '--no-emoji', '--no-color'], { cwd: packs })),
}]))

const LICENSE_MARKS = ['Apache License', 'Version 2.0, January 2004', 'TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION', 'END OF TERMS AND CONDITIONS']
const DEP_FIELDS = ['dependencies', 'peerDependencies', 'optionalDependencies']
for (const p of packed) {
  const { file, manifest: m, files } = tarballs[p]
  await check(`${p}: the tarball has LICENSE (Apache-2.0, full text), README.md and its entry points`, async () => {
    for (const f of ['LICENSE', 'README.md', 'package.json', 'dist/index.js', 'dist/index.d.ts']) if (!files.includes(f)) throw new Error(`${f} is not in the tarball`)
    if (m.bin) for (const b of Object.values(m.bin)) if (!files.includes(b.replace(/^\.\//, ''))) throw new Error(`bin ${b} is not in the tarball`)
    const text = (await run('tar', ['-xzOf', file, 'package/LICENSE'], { cwd: packs })).stdout
    const absent = LICENSE_MARKS.filter((mark) => !text.includes(mark))
    if (absent.length) throw new Error(`LICENSE lacks: ${absent.join('; ')}`)
    return `${files.length} files, LICENSE ${text.length} bytes`
  })
  await check(`${p}: the published package.json has its metadata and is publishable`, async () => {
    const problems = []
    if (m.private) problems.push('private')
    if (m.license !== 'Apache-2.0') problems.push(`license ${m.license}`)
    if (typeof m.description !== 'string' || m.description.length < 20) problems.push('no description')
    if (!Array.isArray(m.keywords) || m.keywords.length === 0) problems.push('no keywords')
    if (m.repository?.type !== 'git' || typeof m.repository?.url !== 'string' || m.repository?.directory !== `packages/${p}`) problems.push(`repository ${JSON.stringify(m.repository)}`)
    if (typeof m.homepage !== 'string' || !m.homepage.startsWith('https://')) problems.push('no homepage')
    if (typeof m.bugs?.url !== 'string' && typeof m.bugs !== 'string') problems.push('no bugs')
    if (m.engines?.node !== manifests.core.engines.node) problems.push(`engines ${JSON.stringify(m.engines)}`)
    if (m.exports?.['./package.json'] !== './package.json') problems.push('no "./package.json" export')
    if (m.publishConfig?.access !== 'public') problems.push('publishConfig.access is not "public" (a scoped package is published restricted by default)')
    if (problems.length) throw new Error(problems.join('; '))
    return `${m.name}@${m.version}`
  })
  // The CLI is an application: it provides core to its adapters (a caret range, so npm shares
  // the app's copy). Every library takes the app's core as a peer.
  const coreField = p === 'cli' ? 'dependencies' : 'peerDependencies'
  const otherField = p === 'cli' ? 'peerDependencies' : 'dependencies'
  if (p !== 'core') await check(`${p}: @kms-proxy/core is in ${coreField} (${caret}), not in ${otherField}; @kms-proxy ranges are carets`, async () => {
    const problems = []
    if (m[coreField]?.['@kms-proxy/core'] !== caret) problems.push(`${coreField}["@kms-proxy/core"] = ${m[coreField]?.['@kms-proxy/core']}`)
    if (m[otherField]?.['@kms-proxy/core'] !== undefined) problems.push(`${otherField}["@kms-proxy/core"] = ${m[otherField]['@kms-proxy/core']}`)
    for (const field of DEP_FIELDS) {
      for (const [dep, range] of Object.entries(m[field] ?? {})) {
        if (range.startsWith('workspace:')) problems.push(`${field}.${dep} = ${range}`)
        else if (dep.startsWith('@kms-proxy/') && !/^\^\d+\.\d+\.\d+$/.test(range)) problems.push(`${field}.${dep} = ${range} (exact: a patch release would install a second copy)`)
      }
    }
    if (problems.length) throw new Error(problems.join('; '))
    return JSON.stringify(m.peerDependencies)
  })
  await check(`${p}: publint --strict`, async () => {
    const r = await lints[p].publint
    if (r.code !== 0 || !/All good/i.test(r.stdout)) throw new Error(tail(r))
    return 'all good'
  })
  await check(`${p}: arethetypeswrong (ESM-only profile)`, async () => {
    const r = await lints[p].attw
    if (r.code !== 0) throw new Error(tail(r))
    return r.stdout.split('\n').filter((l) => /^(node16 \(from ESM\)|bundler): OK/.test(l)).join(', ')
  })
}

// ------------------------------------------------------------------------------ install

/** A copy of a tarball with another version, as a later release of that package would be. */
async function repack(p, version) {
  const dir = join(tmp, `repack-${p}`)
  mkdirSync(dir)
  const x = await run('tar', ['-xzf', tarballs[p].file, '-C', dir], { cwd: tmp })
  if (x.code !== 0) throw new Error(tail(x))
  const manifestPath = join(dir, 'package', 'package.json')
  writeFileSync(manifestPath, JSON.stringify({ ...JSON.parse(readFileSync(manifestPath, 'utf8')), version }, null, 2))
  const out = join(packs, `${p}-${version}.tgz`)
  const r = await run('tar', ['-czf', out, '-C', dir, 'package'], { cwd: tmp })
  if (r.code !== 0) throw new Error(tail(r))
  return out
}

/** Every installed copy of a package under a project's node_modules. */
function copiesOf(project, name) {
  const found = []
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (!entry.isDirectory() || entry.name === '.bin') continue
      const here = join(dir, entry.name)
      if (entry.name.startsWith('@')) {
        walk(here)
        continue
      }
      const manifest = join(here, 'package.json')
      if (existsSync(manifest) && JSON.parse(readFileSync(manifest, 'utf8')).name === name) found.push(relative(project, here))
      if (existsSync(join(here, 'node_modules'))) walk(join(here, 'node_modules'))
    }
  }
  if (existsSync(join(project, 'node_modules'))) walk(join(project, 'node_modules'))
  return found
}

function writeProject(dir, dependencies) {
  cpSync(join(e2e, 'consumer'), dir, { recursive: true })
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'kms-proxy-consumer', version: '1.0.0', private: true, type: 'module', dependencies }, null, 2))
}

// pkcs11js's native build (graphene-pk11 -> pkcs11-bridge) is the only install script; nothing
// here loads it, and the workspace's own install builds it.
// --prefer-offline: third-party packages come from npm's cache when it has them (no revalidation).
const NPM_INSTALL = ['install', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error']

await check("core's next patch release installs as one copy with every other package as packed now", async () => {
  if (!core) throw new Error('core was not packed')
  const [major, minor, patch] = core.version.split('.').map(Number)
  const next = `${major}.${minor}.${patch + 1}`
  const project = join(tmp, 'patch')
  const adapters = packed.filter((p) => p !== 'core')
  writeProject(project, {
    '@kms-proxy/core': `file:${await repack('core', next)}`,
    ...Object.fromEntries(adapters.map((p) => [tarballs[p].manifest.name, `file:${tarballs[p].file}`])),
  })
  const r = await run('npm', NPM_INSTALL, { cwd: project })
  if (r.code !== 0) throw new Error(`npm install of core ${next} with the others at ${core.version} failed:\n${tail(r)}`)
  const copies = copiesOf(project, '@kms-proxy/core')
  if (copies.length !== 1) throw new Error(`${copies.length} copies: ${copies.join(', ')}`)
  return `core ${next} with ${adapters.length} packages at ${core.version}: ${copies[0]}`
})

await check('npm installs every tarball into a fresh project outside the workspace', async () => {
  writeProject(app, Object.fromEntries(packed.map((p) => [tarballs[p].manifest.name, `file:${tarballs[p].file}`])))
  if (app.startsWith(root)) throw new Error(`${app} is inside the workspace`)
  const r = await run('npm', NPM_INSTALL)
  if (r.code !== 0) throw new Error(tail(r))
  const ls = await run('npm', ['ls', '--all', '--json'])
  if (ls.code !== 0) throw new Error(`npm ls found problems:\n${tail(ls)}`)
  return `${packed.length} packages, ${readdirSync(join(app, 'node_modules')).length} entries in node_modules`
})
if (!existsSync(join(app, 'node_modules', '@kms-proxy', 'core'))) finish()

await check('one copy of @kms-proxy/core, and every package resolves to it', async () => {
  const copies = copiesOf(app, '@kms-proxy/core')
  if (copies.length !== 1) throw new Error(`${copies.length} copies: ${copies.join(', ')}`)
  const appsCore = createRequire(join(app, 'package.json')).resolve('@kms-proxy/core')
  const astray = packed
    .filter((p) => p !== 'core')
    .map((p) => [p, createRequire(join(app, 'node_modules', '@kms-proxy', p, 'package.json')).resolve('@kms-proxy/core')])
    .filter(([, resolved]) => resolved !== appsCore)
  if (astray.length) throw new Error(astray.map(([p, r]) => `${p} -> ${r}`).join('; '))
  return copies[0]
})

// ------------------------------------------------------------------------------ the app

const kms = createServer((req, res) => {
  req.resume()
  req.on('end', () => {
    res.writeHead(503, { 'content-type': 'application/x-amz-json-1.1' })
    res.end(JSON.stringify({ __type: 'com.amazonaws.kms#KMSInternalException', message: 'overloaded' }))
  })
})
await new Promise((resolve) => kms.listen(0, '127.0.0.1', resolve))
const kmsUrl = `http://127.0.0.1:${kms.address().port}`

function appResults(runtime, r) {
  let output
  try {
    output = JSON.parse(r.stdout)
  } catch {
    throw new Error(`${runtime} exited ${r.code}:\n${tail(r)}`)
  }
  const failed = output.filter((c) => !c.ok)
  if (output.length < 5 || failed.length) throw new Error(failed.map((c) => `${c.name}: ${c.detail}`).join('\n') || `${output.length} checks`)
  return `${output.length} checks (${output.map((c) => c.detail).filter(Boolean).join('; ')})`
}

// deno: the binary itself. npm's `deno` package runs it through a Node wrapper (spawnSync) that
// does not pass signals on, so stopping the wrapper would leave deno running.
const workspaceBin = (name) => (name === 'deno' ? join(root, 'node_modules', 'deno', 'deno') : join(root, 'node_modules', '.bin', name))
await check(`the app runs on Node ${process.version}, importing the packages by name`, async () => appResults('node', await run(process.execPath, ['app.mjs', kmsUrl])))
await check('the app runs on Deno, from the project\'s node_modules', async () => {
  const r = await run(workspaceBin('deno'), ['run', '--quiet', '--node-modules-dir=manual', '--allow-read', '--allow-write=.', '--allow-env', `--allow-net=${kmsUrl.slice('http://'.length)}`, 'app.mjs', kmsUrl], {
    env: { ...env, DENO_DIR: join(tmp, 'deno-dir'), DENO_NO_UPDATE_CHECK: '1' },
  })
  return `${(await run(workspaceBin('deno'), ['--version'])).stdout.split('\n')[0]}: ${appResults('deno', r)}`
})
await check('the app runs on Bun', async () => {
  const r = await run(workspaceBin('bun'), ['app.mjs', kmsUrl])
  return `bun ${(await run(workspaceBin('bun'), ['--version'])).stdout.trim()}: ${appResults('bun', r)}`
})
await check('esbuild bundles the app for the browser from the installed packages, and the bundle runs', async () => {
  const outfile = join(app, 'bundle.js')
  const result = await esbuild.build({
    entryPoints: [join(app, 'browser.mjs')],
    absWorkingDir: app,
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    outfile,
    metafile: true,
    logLevel: 'silent',
    tsconfigRaw: '{}',
  })
  const inputs = Object.keys(result.metafile.inputs)
  const wrong = inputs.filter((i) => !i.startsWith('node_modules/') && !/^(browser|checks)\.mjs$/.test(i))
  if (wrong.length) throw new Error(`inputs from outside the project's node_modules: ${wrong.join(', ')}`)
  const code = readFileSync(outfile, 'utf8')
  const nodeImports = code.match(/(?:from\s*|import\s*\(\s*)['"]node:[^'"]+['"]/g)
  if (nodeImports) throw new Error(`the bundle imports ${nodeImports.join(', ')}`)
  const { run: runBundle } = await import(pathToFileURL(outfile).href)
  const output = await runBundle({ kmsUrl })
  const failed = output.filter((c) => !c.ok)
  if (failed.length) throw new Error(failed.map((c) => `${c.name}: ${c.detail}`).join('\n'))
  return `${inputs.length} inputs, ${(statSync(outfile).size / 1024).toFixed(1)} KiB, ${output.length} checks passed`
})
kms.close()

// ------------------------------------------------------------------------------ types

const BROWSER_CAPABLE = ['core', 'passphrase', 'kms', 'etcd', 'kv', 'durable-object', 'dynamodb', 'indexeddb', 'webauthn', 'pkcs11', 'testkit']
for (const resolution of ['Bundler', 'Node16']) {
  await check(`tsc --noEmit: strict, skipLibCheck false, no @types/node, moduleResolution ${resolution} (${BROWSER_CAPABLE.length} packages)`, async () => {
    const tsconfig = `tsconfig.${resolution.toLowerCase()}.json`
    writeFileSync(join(app, tsconfig), JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: resolution === 'Bundler' ? 'ESNext' : 'Node16',
        moduleResolution: resolution,
        lib: ['ES2022', 'DOM'],
        types: [],
        strict: true,
        skipLibCheck: false,
        noEmit: true,
      },
      files: ['types.ts'],
    }))
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    const r = await run(process.execPath, [tsc, '-p', tsconfig, '--listFiles'])
    if (r.code !== 0) throw new Error(tail(r))
    const listed = r.stdout.split('\n').filter(Boolean)
    const node = listed.filter((f) => f.includes('/@types/node/'))
    if (node.length) throw new Error(`@types/node was loaded: ${node[0]}`)
    const ours = new Set(listed.map((f) => f.match(/node_modules\/@kms-proxy\/([^/]+)\//)?.[1]).filter(Boolean))
    const unseen = BROWSER_CAPABLE.filter((p) => !ours.has(p))
    if (unseen.length) throw new Error(`not type-checked: ${unseen.join(', ')}`)
    return `TypeScript ${JSON.parse(readFileSync(join(root, 'node_modules', 'typescript', 'package.json'), 'utf8')).version}, ${listed.length} files`
  })
}

// ------------------------------------------------------------------------------ the CLI

const cliVersion = tarballs.cli?.manifest.version
await check('the CLI tarball\'s bin runs and prints its package.json version (node_modules/.bin/kms-proxy --version)', async () => {
  const r = await run(join(app, 'node_modules', '.bin', 'kms-proxy'), ['--version'])
  if (r.code !== 0 || r.stdout.trim() !== `kms-proxy ${cliVersion}`) throw new Error(`exit ${r.code}, printed "${r.stdout.trim()}", expected "kms-proxy ${cliVersion}"\n${tail(r)}`)
  return r.stdout.trim()
})
await check('npx @kms-proxy/cli status --help runs the installed CLI (the form the READMEs give)', async () => {
  const r = await run('npx', ['--no', '@kms-proxy/cli', 'status', '--help'])
  if (r.code !== 0 || !r.stdout.startsWith('Usage: kms-proxy status')) throw new Error(`exit ${r.code}\n${tail(r)}`)
  return r.stdout.split('\n')[0]
})

finish()
