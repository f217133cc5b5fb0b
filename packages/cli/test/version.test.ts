import { cpSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it, vi } from 'vitest'
import { VERSION, main } from '@kms-proxy/cli'
import { BIN, ROOT, assertBuilt, bundleCli, spawnCollect, tempDir } from './helpers.js'

const manifest = JSON.parse(readFileSync(join(ROOT, 'packages/cli/package.json'), 'utf8')) as { version: string }
const work = tempDir('version')
afterAll(() => work.cleanup())

describe('kms-proxy --version', () => {
  it('prints the version of package.json, from the sources (as vitest runs them)', async () => {
    const out: string[] = []
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => (out.push(String(chunk)), true))
    try {
      expect(await main(['--version'])).toBe(0)
    } finally {
      write.mockRestore()
    }
    expect(out.join('')).toBe(`kms-proxy ${manifest.version}\n`)
    expect(VERSION).toBe(manifest.version)
  })

  it('prints the version of package.json from the built bin (bin/kms-proxy.js over dist/)', async () => {
    assertBuilt()
    const r = await spawnCollect(process.execPath, [BIN, '--version'], { cwd: work.dir })
    expect(r.code).toBe(0)
    expect(r.stdout.toString()).toBe(`kms-proxy ${manifest.version}\n`)
  })

  it('a release prints its own version: the sources beside a package.json of another version print that one', async () => {
    // The package as a release would have it: the same sources, the version bumped.
    const release = join(work.dir, 'cli')
    cpSync(join(ROOT, 'packages/cli/src'), join(release, 'src'), { recursive: true })
    writeFileSync(join(release, 'package.json'), JSON.stringify({ ...manifest, version: '7.8.9-release.1' }))
    // Its dependencies installed beside it, as npm would (the PostgreSQL driver is one).
    symlinkSync(join(ROOT, 'packages/cli/node_modules'), join(release, 'node_modules'))
    const outfile = await bundleCli(work.dir, release)
    const r = await spawnCollect(process.execPath, [outfile, '--version'], { cwd: work.dir })
    expect(r.code).toBe(0)
    expect(r.stdout.toString()).toBe('kms-proxy 7.8.9-release.1\n')
  })
})
