/**
 * examples/bun-script/README.md followed as written, with the real bun: its shell commands, run
 * literally from the repository root in a copy of the repository's layout (the example's files
 * copied, its packages and Bun linked), so that what they write stays out of the tree. Each
 * command but `cd` prints what the README's next `text` block shows (see readme-run.ts).
 */
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { expectOutput, readmeSteps, runCommand } from './readme-run.ts'

const ROOT = resolve(import.meta.dirname, '..', '..', '..')
const EXAMPLE = 'examples/bun-script'
const README = join(ROOT, EXAMPLE, 'README.md')

let checkout: string
const example = () => join(checkout, EXAMPLE)
const copied = new Set<string>()

/**
 * The repository's layout in a temporary folder: the example's files copied, its packages and Bun
 * linked. Only leaves are links (never node_modules or packages as a whole): pnpm checks a
 * workspace's dependencies before `exec`, and an install run here must not reach the real tree.
 * The copy's pnpm-workspace.yaml holds the example alone and turns that check off.
 */
beforeAll(() => {
  for (const pkg of ['core', 'file', 'passphrase']) {
    if (!existsSync(join(ROOT, 'packages', pkg, 'dist', 'index.js'))) throw new Error('the built packages are missing: run `pnpm build` first')
  }
  checkout = mkdtempSync(join(tmpdir(), 'kms-proxy-bun-script-'))
  // No packageManager field: pnpm then writes no lockfile here and asks no registry.
  writeFileSync(join(checkout, 'package.json'), '{ "name": "kms-proxy-checkout", "private": true }\n')
  writeFileSync(join(checkout, 'pnpm-workspace.yaml'), `packages:\n  - ${EXAMPLE}\nverifyDepsBeforeRun: false\n`)
  mkdirSync(join(checkout, 'node_modules', '.bin'), { recursive: true })
  symlinkSync(join(ROOT, 'node_modules', '.bin', 'bun'), join(checkout, 'node_modules', '.bin', 'bun'))
  const source = join(ROOT, EXAMPLE)
  // The files git tracks, as a fresh clone has them (not a data/ left by someone's own run).
  const tracked = spawnSync('git', ['-C', ROOT, 'ls-files', '-z', EXAMPLE], { encoding: 'utf8' }).stdout.split('\0').filter(Boolean)
  expect(tracked).toContain(`${EXAMPLE}/README.md`)
  for (const file of tracked) cpSync(join(ROOT, file), join(checkout, file))
  mkdirSync(join(example(), 'node_modules', '@kms-proxy'), { recursive: true })
  for (const name of readdirSync(join(source, 'node_modules', '@kms-proxy'))) {
    symlinkSync(realpathSync(join(source, 'node_modules', '@kms-proxy', name)), join(example(), 'node_modules', '@kms-proxy', name))
  }
  for (const file of listFiles(checkout)) copied.add(file)
})
afterAll(() => {
  if (checkout) rmSync(checkout, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
})

/** Files (not folders) under `dir`, relative to it, without descending into symlinks. */
function listFiles(dir: string, under = ''): string[] {
  return readdirSync(join(dir, under), { withFileTypes: true }).flatMap((entry) => {
    const path = join(under, entry.name)
    return entry.isDirectory() ? listFiles(dir, path) : [path]
  })
}

it('the README, followed as written, prints what it shows; other failures are one line too; its outputs are git-ignored', async () => {
  const steps = readmeSteps(README, checkout)
  expect(steps[0]!.command, 'the README starts from the repository root').toBe(`cd ${EXAMPLE}`)
  const runs = steps.filter((step) => step.output !== undefined)
  expect(runs.every((step) => step.command.includes('pnpm exec bun main.ts') && step.cwd === example()), 'Bun is reached through pnpm exec, in the example').toBe(true)
  for (const step of runs) expectOutput(await runCommand(step.command, step.cwd, 60_000), step.output!, step.command)

  // Failures the README does not show end the same way: one line, exit status 2 for a setting.
  const bad: Array<[string, string]> = [
    ['KMS_PROXY_PASSPHRASE= pnpm exec bun main.ts ./data', 'KMS_PROXY_PASSPHRASE is empty: set it to the passphrase that protects ./data/keys.json'],
    ['KMS_PROXY_PASSPHRASE=x KMS_PROXY_ITERATIONS=many pnpm exec bun main.ts ./data', 'KMS_PROXY_ITERATIONS=many: '],
  ]
  for (const [command, start] of bad) {
    const [line, status, ...more] = (await runCommand(`${command}; echo "exit status $?"`, example(), 60_000)).split('\n')
    expect(line!.startsWith(`bun-script: ${start}`), `${command}: ${line}`).toBe(true)
    expect([status, ...more]).toEqual(['exit status 2', ''])
  }

  // What the README says the first run wrote: the folder 0700, keys.json 0600.
  const data = join(example(), 'data')
  expect(statSync(data).mode & 0o777).toBe(0o700)
  expect(statSync(join(data, 'keys.json')).mode & 0o777).toBe(0o600)
  expect(readdirSync(data).sort()).toEqual(['keys.json', 'report.bin', 'report.bin.kp', 'report.out'])

  // Everything the commands wrote is ignored by the repository's git.
  const paths = listFiles(checkout).filter((file) => !copied.has(file) && file.startsWith(`${EXAMPLE}/`))
  expect(paths.length).toBeGreaterThan(0)
  const ignored = spawnSync('git', ['-C', ROOT, 'check-ignore', '--no-index', '--stdin'], { input: paths.join('\n'), encoding: 'utf8' })
  expect(ignored.stdout.trim().split('\n').sort(), 'written but not git-ignored').toEqual(paths.sort())
}, 120_000)
