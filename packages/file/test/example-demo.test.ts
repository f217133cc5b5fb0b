/**
 * examples/demo/README.md followed as written: its quick command, run literally from the
 * repository root (the demo writes only to a temporary folder of its own), prints what the README
 * shows for it (see readme-run.ts), and its peak memory stays under the README's bound. The full
 * command takes minutes, so it is checked to be the quick one without the size settings.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { expect, it } from 'vitest'
import { expectOutput, readmeSteps, runCommand } from './readme-run.ts'

const ROOT = resolve(import.meta.dirname, '..', '..', '..')
const README = join(ROOT, 'examples/demo/README.md')

it('the demo README, followed as written: the quick run prints what it shows, within its memory bound', async () => {
  for (const pkg of ['core', 'file', 'passphrase', 'cli']) {
    if (!existsSync(join(ROOT, 'packages', pkg, 'dist', 'index.js'))) throw new Error('the built packages are missing: run `pnpm build` first')
  }
  const [full, quick, ...rest] = readmeSteps(README, ROOT)
  expect(rest).toEqual([])
  expect(full!.command).toBe('pnpm demo')
  expect(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts.demo).toBe('node examples/demo/demo.mjs')
  expect(quick!.command).toBe(`DEMO_RECORDS=3000 DEMO_FILE_MIB=16 ${full!.command}`)
  // The full run's sizes are the demo's defaults, and its output has the quick run's shape.
  const demo = readFileSync(join(ROOT, 'examples/demo/demo.mjs'), 'utf8')
  expect(demo).toContain('DEMO_RECORDS ?? 50_000')
  expect(demo).toContain('DEMO_FILE_MIB ?? 256')
  expect(full!.output).toMatch(/^kms-proxy demo: 50,000 records,/m)
  expect(full!.output).toContain('A 256 MiB file through the kms-proxy command')
  expect(full!.output!.trimEnd().split('\n')).toHaveLength(quick!.output!.trimEnd().split('\n').length)

  const printed = await runCommand(quick!.command, quick!.cwd, 170_000)
  expectOutput(printed, quick!.output!, quick!.command)
  const bound = Number(/quick run's demo process stays under (\d+) MiB/.exec(readFileSync(README, 'utf8'))?.[1])
  const peak = Number(/^Peak memory of the demo process: (\d+) MiB resident\.$/m.exec(printed)?.[1])
  expect(bound).toBeGreaterThan(0)
  expect(peak).toBeGreaterThan(0)
  expect(peak).toBeLessThan(bound)
}, 180_000)
