/** examples/bun-script run by the real bun binary, twice on one key file (as two processes). */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { BUN, ROOT, assertBuilt, spawnCollect, tempDir } from './helpers.js'

let work: ReturnType<typeof tempDir>
beforeAll(() => {
  assertBuilt()
  work = tempDir('bun-script')
})
afterAll(() => work?.cleanup())

const run = () =>
  spawnCollect(BUN, ['main.ts', work.dir], {
    cwd: join(ROOT, 'examples/bun-script'),
    env: { KMS_PROXY_PASSPHRASE: 'bun script passphrase', KMS_PROXY_ITERATIONS: '1000' },
  })

it('encrypts records and a file stream under Bun; a second process unwraps the KEK once', async () => {
  const first = await run()
  expect(first.stderr).toBe('')
  expect(first.code).toBe(0)
  const lines = first.stdout.toString().trim().split('\n')
  expect(lines.slice(0, 3)).toEqual([
    expect.stringMatching(/^row 1: kp1\.[\w-]{8}… \(\d+ chars\)$/),
    expect.stringMatching(/^row 2: kp1\./),
    expect.stringMatching(/^row 3: kp1\./),
  ])
  expect(lines.slice(3, 5)).toEqual(['records: all decrypted', 'moved column: refused (ERR_DECRYPT)'])
  expect(lines[5]).toMatch(/^stream: 3145728 bytes -> 31465\d\d encrypted -> identical \(sha256 [0-9a-f]{16}…\)$/)
  expect(lines[6]).toBe('root-key calls: 1 wrap, 0 unwrap for 4 encryptions and 4 decryptions')
  expect(existsSync(join(work.dir, 'keys.json'))).toBe(true)

  const second = await run()
  expect(second.code).toBe(0)
  expect(second.stdout.toString().trim().split('\n').at(-1)).toBe('root-key calls: 0 wrap, 1 unwrap for 4 encryptions and 4 decryptions')

  const wrong = await spawnCollect(BUN, ['main.ts', work.dir], { cwd: join(ROOT, 'examples/bun-script'), env: { KMS_PROXY_PASSPHRASE: 'not it', KMS_PROXY_ITERATIONS: '1000' } })
  expect(wrong.code).not.toBe(0)
  expect(wrong.stderr).toMatch(/RootKeyError|wrong passphrase/)
  expect(wrong.stderr).not.toContain('not it')
})
