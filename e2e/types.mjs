// The public types of every package, as a consumer's compiler sees them: for each package, a
// consumer file imports every export of the BUILT package by name (through
// e2e/node_modules/@kms-proxy/*, so package.json `exports` resolve it), and `tsc --noEmit`
// compiles the consumers with strict and skipLibCheck false, under TypeScript 5.9, 6.0 and 7.0
// (the supported versions), in four settings:
//   dom-bundler   lib ES2022 + DOM, no @types/node, moduleResolution bundler   (browsers, Deno, Bun)
//   dom-node16    the same with moduleResolution node16
//   workers       lib ES2022 + @cloudflare/workers-types, no DOM, no @types/node (Cloudflare Workers)
//   node          lib ES2022 + DOM + @types/node, moduleResolution node16     (Node)
// On Node the DOM lib is needed: @types/node 20 declares CryptoKey and BufferSource only inside
// its webcrypto namespace, and every root key's type names CryptoKey.
// Plus one check that core's declarations, emitted with @types/node visible, name nothing of
// Node's (NodeJS.CallSite came in through an inferred error-class type once).
//
//   pnpm build && node e2e/types.mjs        TYPES_TS=5.9,7.0 TYPES_ONLY=core,kms to narrow
//
// Prints one line per check and "N passed, N failed" last; exits 1 on any failure.
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

const e2e = dirname(fileURLToPath(import.meta.url))
const root = join(e2e, '..')
const require = createRequire(import.meta.url)
const ts = require(join(root, 'node_modules', 'typescript'))

const compilers = [
  { version: '5.9', tsc: join(root, 'node_modules', 'typescript', 'bin', 'tsc') },
  { version: '6.0', tsc: join(e2e, 'node_modules', 'typescript-6', 'bin', 'tsc') },
  { version: '7.0', tsc: join(e2e, 'node_modules', 'typescript-7', 'bin', 'tsc') },
].filter((c) => !process.env.TYPES_TS || process.env.TYPES_TS.split(',').includes(c.version))

// Where each package is meant to run. indexeddb and webauthn are browser-only (IndexedDB, WebAuthn
// need DOM); file, k8s, cli and pkcs11-bridge are Node-only (node: imports).
const BROWSER_ONLY = ['indexeddb', 'webauthn']
const NODE_ONLY = ['file', 'k8s', 'cli', 'pkcs11-bridge']
const settings = {
  'dom-bundler': { module: 'ESNext', moduleResolution: 'bundler', lib: ['ES2022', 'DOM'], types: [], skip: NODE_ONLY },
  'dom-node16': { module: 'Node16', moduleResolution: 'node16', lib: ['ES2022', 'DOM'], types: [], skip: NODE_ONLY },
  workers: { module: 'ESNext', moduleResolution: 'bundler', lib: ['ES2022'], types: ['@cloudflare/workers-types'], skip: [...NODE_ONLY, ...BROWSER_ONLY] },
  node: { module: 'Node16', moduleResolution: 'node16', lib: ['ES2022', 'DOM'], types: ['node'], skip: BROWSER_ONLY },
}

const packages = readdirSync(join(root, 'packages'))
  .filter((name) => existsSync(join(root, 'packages', name, 'package.json')))
  .filter((name) => !process.env.TYPES_ONLY || process.env.TYPES_ONLY.split(',').includes(name))
  .sort()

const work = join(e2e, '.tmp', 'types')
rmSync(work, { recursive: true, force: true })
mkdirSync(work, { recursive: true })
// ESM, so that node16 resolution takes the `import` side of `exports`.
writeFileSync(join(work, 'package.json'), '{ "type": "module", "private": true }\n')

/** Every export of the built package's declarations, value or type, from the compiler itself. */
function exportsOf(name) {
  const dts = join(root, 'packages', name, 'dist', 'index.d.ts')
  if (!existsSync(dts)) throw new Error(`${dts} is missing: run the build first`)
  const src = join(root, 'packages', name, 'src')
  const newest = Math.max(...readdirSync(src, { recursive: true }).map((f) => statSync(join(src, String(f))).mtimeMs))
  if (newest > statSync(dts).mtimeMs) throw new Error(`packages/${name}/dist is older than its src: run the build first`)
  const program = ts.createProgram([dts], { noEmit: true, types: [], lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'], skipLibCheck: true })
  const checker = program.getTypeChecker()
  const moduleSymbol = checker.getSymbolAtLocation(program.getSourceFile(dts))
  return checker.getExportsOfModule(moduleSymbol).map((symbol) => {
    const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol
    return { name: symbol.name, value: (target.flags & ts.SymbolFlags.Value) !== 0 }
  })
}

/** A consumer module that imports each export by name and re-exports it, so each must resolve. */
function consumer(name) {
  const names = exportsOf(name).map((e) => (e.value ? e.name : `type ${e.name}`))
  if (names.length === 0) throw new Error(`@kms-proxy/${name} has no exports`)
  return `import { ${names.join(', ')} } from '@kms-proxy/${name}'\nexport { ${names.join(', ')} }\n`
}

const run = (file, args) =>
  new Promise((resolve) => {
    const started = Date.now()
    execFile(process.execPath, [file, ...args], { cwd: work, maxBuffer: 16 << 20 }, (error, stdout, stderr) =>
      resolve({ ok: !error, output: `${stdout}${stderr}`.trim(), ms: Date.now() - started }),
    )
  })

let passed = 0
let failed = 0
const report = (ok, label, detail, ms) => {
  ok ? passed++ : failed++
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${label}${ms === undefined ? '' : ` (${(ms / 1000).toFixed(1)} s)`}`)
  if (!ok && detail) console.log(detail.replace(/^/gm, '       '))
}

// One program per TypeScript version and setting, holding every package's consumer: lib.dom and
// workers-types are checked once per program instead of once per package (about 10x faster). An
// error is the package's whose consumer or dist/ it is in; one anywhere else fails the program.
const checks = []
const ready = packages.filter((name) => {
  try {
    writeFileSync(join(work, `${name}.ts`), consumer(name))
    return true
  } catch (error) {
    report(false, `@kms-proxy/${name}: built declarations to check`, String(error?.message ?? error))
    return false
  }
})
for (const [setting, options] of Object.entries(settings)) {
  const members = ready.filter((name) => !options.skip.includes(name))
  if (members.length === 0) continue
  const config = `tsconfig.${setting}.json`
  const compilerOptions = {
    strict: true,
    skipLibCheck: false,
    noEmit: true,
    target: 'ES2022',
    module: options.module,
    moduleResolution: options.moduleResolution,
    lib: options.lib,
    types: options.types,
  }
  writeFileSync(join(work, config), JSON.stringify({ compilerOptions, files: members.map((name) => `${name}.ts`) }, null, 2))
  for (const compiler of compilers) checks.push({ compiler, setting, members, args: ['-p', config, '--pretty', 'false'] })
}

/** The package an error belongs to, from the file it is reported in. */
function ownerOf(line) {
  const file = line.match(/^(.+?)\(\d+,\d+\): error/)?.[1]
  if (file === undefined) return undefined
  const consumerFile = file.match(/^([\w-]+)\.ts$/)?.[1]
  if (consumerFile) return consumerFile
  return file.replace(/\\/g, '/').match(/packages\/([\w-]+)\/dist\//)?.[1]
}

// Core's declarations emitted with Node's types in view must still be plain (no NodeJS.*).
const nodeVisible = join(work, 'core-with-node-types')
writeFileSync(
  join(work, 'tsconfig.core-emit.json'),
  JSON.stringify({
    extends: join(root, 'tsconfig.base.json'),
    compilerOptions: { types: ['node'], typeRoots: [join(root, 'node_modules', '@types')], declaration: true, emitDeclarationOnly: true, outDir: nodeVisible, rootDir: join(root, 'packages', 'core', 'src') },
    files: [join(root, 'packages', 'core', 'src', 'index.ts')],
  }),
)
const nodeNames = (dir) =>
  readdirSync(dir, { recursive: true })
    .filter((f) => String(f).endsWith('.d.ts'))
    .flatMap((f) => (/\bNodeJS\.|\bBuffer\b|from 'node:/.test(readFileSync(join(dir, String(f)), 'utf8')) ? [String(f)] : []))

// Two at a time: the machine's cores are shared, and tsc is mostly single-threaded.
const parallel = Math.max(1, Math.min(Number(process.env.TYPES_JOBS) || 2, cpus().length))
let next = 0
const results = new Array(checks.length)
await Promise.all(
  Array.from({ length: parallel }, async () => {
    while (next < checks.length) {
      const i = next++
      results[i] = await run(checks[i].compiler.tsc, checks[i].args)
    }
  }),
)
checks.forEach(({ compiler, setting, members }, i) => {
  const { ok, output, ms } = results[i]
  const errors = output.split('\n').filter((line) => / error TS\d+/.test(line))
  const prefix = `TypeScript ${compiler.version} ${setting.padEnd(11)}`
  for (const name of members) {
    const own = errors.filter((line) => ownerOf(line) === name)
    report(own.length === 0, `${prefix} @kms-proxy/${name}`, own.slice(0, 20).join('\n'))
  }
  const other = errors.filter((line) => !members.includes(ownerOf(line)))
  // A failed run with no error line at all (a crash, a bad option) fails here too.
  const unexplained = !ok && errors.length === 0
  report(other.length === 0 && !unexplained, `${prefix} no errors outside the packages' own files (${(ms / 1000).toFixed(1)} s)`, unexplained ? output : other.slice(0, 20).join('\n'))
})

if (!process.env.TYPES_ONLY || process.env.TYPES_ONLY.split(',').includes('core')) {
  const emitted = await run(compilers[0]?.tsc ?? join(root, 'node_modules', 'typescript', 'bin', 'tsc'), ['-p', 'tsconfig.core-emit.json'])
  const leaked = emitted.ok ? nodeNames(nodeVisible) : []
  report(emitted.ok && leaked.length === 0, "core's declarations, emitted with @types/node visible, name nothing of Node's", emitted.ok ? `Node types in: ${leaked.join(', ')}` : emitted.output, emitted.ms)
}

console.log(`${passed} passed, ${failed} failed`)
process.exit(failed === 0 ? 0 : 1)
