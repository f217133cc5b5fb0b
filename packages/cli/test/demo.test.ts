/** examples/demo (the README's demo command) run as a user runs it, with smaller sizes. */
import { join } from 'node:path'
import { beforeAll, expect, it } from 'vitest'
import { ROOT, assertBuilt, spawnCollect } from './helpers.js'

beforeAll(() => assertBuilt())

it('the demo: 3,000 records under each policy cost 2 root-key calls; a 16 MiB file round-trips through the CLI', async () => {
  const r = await spawnCollect(process.execPath, ['demo.mjs'], {
    cwd: join(ROOT, 'examples/demo'),
    env: { DEMO_RECORDS: '3000', DEMO_FILE_MIB: '16', KMS_PROXY_PASSPHRASE: 'demo test passphrase' },
  })
  expect(r.stderr.toString()).toBe('')
  expect(r.code).toBe(0)
  const out = r.stdout.toString()
  const rows = out.split('\n').filter((l) => /^\| (default|maxWraps|embedded)/.test(l))
  expect(rows).toHaveLength(3)
  for (const row of rows) {
    const cells = row.split('|').map((c) => c.trim())
    expect(cells[2]).toBe('6,000') // encryptions + decryptions
    expect(cells[3]).toBe('2 (1 / 1)') // one wrap by the writer, one unwrap by the reader
  }
  expect(out).toMatch(/Each record grew by 78 bytes on average .*; 146 with the KEK embedded\./)
  expect(out).toMatch(/\| encrypt \(stream, 64 KiB segments\) \| \d+\.\d\d \| \d+ \|/)
  expect(out).toMatch(/SHA-256 equal after the round trip; the encrypted file is 4,1\d\d bytes larger/)
}, 120_000)
