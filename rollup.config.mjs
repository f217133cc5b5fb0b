// Builds every package under packages/ to dist/index.js (ESM) and dist/index.d.ts.
// Dependencies, other @kms-proxy packages and node: builtins stay external.
import { readFileSync, readdirSync, existsSync } from 'node:fs'
import { builtinModules } from 'node:module'
import esbuild from 'rollup-plugin-esbuild'
import dts from 'rollup-plugin-dts'

const only = process.env.PACKAGES ? process.env.PACKAGES.split(',') : undefined
const packages = readdirSync('packages').filter(
  (name) => existsSync(`packages/${name}/src/index.ts`) && (!only || only.includes(name)),
)

function externalFor(dir) {
  const pkg = JSON.parse(readFileSync(`${dir}/package.json`, 'utf8'))
  const deps = Object.keys({ ...pkg.dependencies, ...pkg.peerDependencies, ...pkg.optionalDependencies })
  return (id) =>
    id.startsWith('node:') ||
    builtinModules.includes(id) ||
    deps.some((d) => id === d || id.startsWith(`${d}/`)) ||
    id.startsWith('@kms-proxy/')
}

export default packages.flatMap((name) => {
  const dir = `packages/${name}`
  const external = externalFor(dir)
  // A package may bring its own tsconfig (the Node-only ones add Node's types).
  const tsconfig = existsSync(`${dir}/tsconfig.json`) ? `${dir}/tsconfig.json` : 'tsconfig.base.json'
  return [
    {
      input: `${dir}/src/index.ts`,
      output: { file: `${dir}/dist/index.js`, format: 'es', sourcemap: true },
      external,
      // JSON: the CLI imports its package.json's version, inlined here (only that field is kept).
      plugins: [esbuild({ target: 'es2022', tsconfig, loaders: { '.json': 'json' } })],
    },
    {
      input: `${dir}/src/index.ts`,
      output: { file: `${dir}/dist/index.d.ts`, format: 'es' },
      external,
      plugins: [dts({ tsconfig })],
    },
  ]
})
