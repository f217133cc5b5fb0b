// JSR: every package with a jsr.json goes through `deno publish --dry-run` (type check, slow-type
// check, file list), never with --allow-slow-types or --no-check.
//
// The packages are staged into a Deno workspace in .tmp/jsr/ (each package's jsr.json, src/,
// README.md and LICENSE), whose root deno.json this script writes from the package.json files:
//   - the members, so that '@kms-proxy/core' resolves to the member next to it (deno publish
//     rewrites it to jsr:@kms-proxy/core@^<version>);
//   - an import map of the npm dependencies, "name" -> "npm:name@<range in package.json>", so the
//     versions live in package.json only;
//   - sloppy imports, for the sources' './x.js' specifiers (which Node and bundlers need), which
//     deno publish rewrites to the .ts files.
// No root deno.json is kept in the repository: Deno would then resolve '@kms-proxy/*' to the
// sources in every `deno run` under it, the e2e suite's included.
//
//   node e2e/jsr.mjs              dry run (offline apart from npm for the npm dependencies)
//   node e2e/jsr.mjs --publish    the real thing, from the same staging (needs jsr.io and a login)
//   node e2e/jsr.mjs --sync-versions   writes each package.json's version into its jsr.json (after
//                                 `changeset version`, which bumps package.json only), then checks
//
// Prints one line per check and "N passed, N failed" last; exits 1 on any failure.
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const publish = process.argv.includes('--publish')
const syncVersions = process.argv.includes('--sync-versions')
const stage = join(root, '.tmp', 'jsr')
const denoDir = join(root, '.tmp', 'jsr-deno-dir') // kept: npm tarballs are fetched once
// deno: the binary itself. npm's `deno` package runs it through a Node wrapper (spawnSync) that
// does not pass signals on, so stopping the wrapper would leave deno running.
const deno = join(root, 'node_modules', 'deno', 'deno')
const read = (path) => JSON.parse(readFileSync(path, 'utf8'))

let passed = 0
let failed = 0
const report = (ok, label, detail) => {
  ok ? passed++ : failed++
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${label}`)
  if (!ok && detail) console.log(detail.trim().replace(/^/gm, '       '))
}

// The packages that run on Deno (file through Deno's node:fs, tested there). Not k8s, cli or
// pkcs11-bridge (gRPC, the CLI's Node process model, a native PKCS#11 addon), nor testkit (private).
const JSR_PACKAGES = ['core', 'durable-object', 'dynamodb', 'etcd', 'file', 'indexeddb', 'kms', 'kv', 'passphrase', 'pkcs11', 'postgres', 'webauthn']
const names = readdirSync(join(root, 'packages'))
  .filter((name) => existsSync(join(root, 'packages', name, 'jsr.json')))
  .sort()
for (const name of JSR_PACKAGES) report(names.includes(name), `packages/${name}/jsr.json exists`)
const jsrNames = new Set(names.map((name) => read(join(root, 'packages', name, 'jsr.json')).name))

rmSync(stage, { recursive: true, force: true })
mkdirSync(stage, { recursive: true })
const imports = {}
for (const name of names) {
  const dir = join(root, 'packages', name)
  const jsr = read(join(dir, 'jsr.json'))
  const pkg = read(join(dir, 'package.json'))
  if (syncVersions && jsr.version !== pkg.version) {
    jsr.version = pkg.version
    writeFileSync(join(dir, 'jsr.json'), `${JSON.stringify(jsr, null, 2)}\n`)
  }
  const deps = { ...pkg.dependencies, ...pkg.peerDependencies }
  const problems = []
  if (jsr.name !== pkg.name) problems.push(`jsr.json name ${jsr.name} is not package.json's ${pkg.name}`)
  if (jsr.version !== pkg.version) problems.push(`jsr.json version ${jsr.version} is not package.json's ${pkg.version}`)
  if (pkg.private) problems.push('package.json says private')
  for (const dep of Object.keys(deps)) {
    if (dep.startsWith('@kms-proxy/') && !jsrNames.has(dep)) problems.push(`depends on ${dep}, which has no jsr.json`)
  }
  report(problems.length === 0, `${jsr.name}: jsr.json agrees with package.json`, problems.join('\n'))
  for (const [dep, range] of Object.entries(deps)) {
    if (dep.startsWith('@kms-proxy/')) continue
    const spec = `npm:${dep}@${range}`
    if (imports[dep] !== undefined && imports[dep] !== spec) report(false, `${dep}: one version range for every package`, `${imports[dep]} and ${spec}`)
    imports[dep] = spec
    imports[`${dep}/`] = `npm:/${dep}@${range}/`
  }
  const to = join(stage, 'packages', name)
  mkdirSync(to, { recursive: true })
  for (const entry of ['jsr.json', 'src', 'README.md', 'LICENSE']) {
    if (existsSync(join(dir, entry))) cpSync(join(dir, entry), join(to, entry), { recursive: true })
  }
}
writeFileSync(
  join(stage, 'deno.json'),
  JSON.stringify(
    {
      workspace: names.map((name) => `./packages/${name}`),
      imports,
      unstable: ['sloppy-imports'],
      // webauthn and indexeddb are browser code: their types need the DOM's declarations.
      compilerOptions: { lib: ['deno.window', 'dom'] },
    },
    null,
    2,
  ),
)

// The whole workspace in one run (one type check of the shared sources); if it fails, each
// package again from its own folder, so that the failure names its package.
const env = { ...process.env, DENO_DIR: denoDir, NO_COLOR: '1', DENO_NO_UPDATE_CHECK: '1' }
const args = publish ? ['publish'] : ['publish', '--dry-run', '--allow-dirty']
const label = `deno ${args.join(' ')}`
const denoRun = (cwd) => {
  const started = Date.now()
  const r = spawnSync(deno, args, { cwd, env, encoding: 'utf8', timeout: 600_000 })
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`
  const warnings = output.split('\n').filter((line) => /^warning/i.test(line.trim())).length
  return { ok: r.status === 0 && (publish || /Dry run complete/.test(output)), output, warnings, s: ((Date.now() - started) / 1000).toFixed(1) }
}
const all = denoRun(stage)
if (all.ok) {
  for (const name of names) {
    const simulated = new RegExp(`(Simulating publish|Publishing) of @kms-proxy/${name}@`).test(all.output)
    report(simulated || publish, `${label} @kms-proxy/${name}`, simulated ? '' : all.output)
  }
  console.log(`     (one workspace run, ${all.s} s${all.warnings ? `, ${all.warnings} warning(s)` : ''})`)
} else {
  for (const name of names) {
    const one = denoRun(join(stage, 'packages', name))
    report(one.ok, `${label} @kms-proxy/${name} (${one.s} s)`, one.ok ? '' : one.output.split('\n').slice(-60).join('\n'))
  }
}

console.log(`${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
