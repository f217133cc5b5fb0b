/**
 * The README's commands, as written, in a fresh folder: the install line is done as npm would do
 * it here (the built package's bin linked as `kms-proxy` on PATH: the registry is not reached
 * from the tests), then every other command runs in one shell, in order, with nothing added but
 * the `report.pdf` the README encrypts. Default KDF cost: no test-only opt-in.
 */
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { readmeBlocks, readmeCommands } from '../../testkit/test/readme-blocks.ts'
import { BIN, ROOT, assertBuilt, spawnCollect, tempDir } from './helpers.js'

const README = join(ROOT, 'packages/cli/README.md')
let work: ReturnType<typeof tempDir>

beforeAll(() => {
  assertBuilt()
  work = tempDir('readme')
})
afterAll(() => work?.cleanup())

it('the README commands run as written: init, encrypt, decrypt, rotate and rewrap, status --check', async () => {
  const [install, ...commands] = readmeCommands(README)
  expect(install).toMatch(/^npm i -g @kms-proxy\/cli\b/)
  const bin = join(work.dir, 'bin')
  mkdirSync(bin)
  symlinkSync(BIN, join(bin, 'kms-proxy')) // what `npm i -g` puts on PATH
  const folder = join(work.dir, 'project')
  mkdirSync(folder)
  // Starts as a PDF does: random bytes could start with the format version byte, and rewrap would then try it.
  const report = Buffer.concat([Buffer.from('%PDF-1.7\n'), randomBytes(200_000)])
  writeFileSync(join(folder, 'report.pdf'), report)

  const script = ['set -e', ...commands].join('\n')
  const r = await spawnCollect('bash', ['-c', script], { cwd: folder, env: { PATH: `${bin}:${dirname(process.execPath)}:/usr/bin:/bin`, HOME: work.dir } })
  const out = r.stdout.toString()
  expect(r.code, `${out}\n${r.stderr}`).toBe(0)
  expect(readFileSync(join(folder, 'copy.pdf')).equals(report)).toBe(true)
  // init said what to back up; status --check proved the passphrase with one unwrap, and the
  // rotation and rewrap left two KEKs, report.pdf.kp under the new one.
  expect(out).toContain(`back up ${join(folder, 'kms-proxy-keys.json')}: it holds the chain's wrapped KEKs`)
  expect(out).toMatch(/^rewrapped 1 file \(0 messages, 1 stream\) to KEK (0x[0-9a-f]{8});/m)
  expect(out).toMatch(/^KEKs {9}2$/m)
  expect(out).toMatch(/^root-key calls by this command: 0 wraps, 1 unwrap \(root key ok\)$/m)
  const primary = /^primary KEK {2}(0x[0-9a-f]{8})/m.exec(out)?.[1]
  expect(readFileSync(join(folder, 'report.pdf.kp')).readUInt32BE(1)).toBe(Number(primary))
  // Nothing but the implicit config's note on stderr: no warning (the passphrase is long enough).
  expect(r.stderr.split('\n').filter((l) => l && !/^kms-proxy: using .* found in the working folder/.test(l))).toEqual([])
  expect(readdirSync(folder).sort()).toEqual(['copy.pdf', 'kms-proxy-keys.json', 'kms-proxy.json', 'report.pdf', 'report.pdf.kp'])
})

it("the root README's command-line block is this README's, command for command", () => {
  const strip = (text: string) => text.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).filter(Boolean)
  const cli = readmeBlocks(README, 'bash', 'sh').filter((b) => /kms-proxy (init|encrypt)|npm i -g/.test(b.text)).flatMap((b) => strip(b.text))
  const root = readmeBlocks(join(ROOT, 'README.md'), 'bash', 'sh').find((b) => b.text.includes('kms-proxy init'))
  expect(root, 'the root README has a command-line block').toBeDefined()
  expect(strip(root!.text)).toEqual(cli)
})
