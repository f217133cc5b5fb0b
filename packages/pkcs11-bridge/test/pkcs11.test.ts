/**
 * The PKCS#11 side on SoftHSM2: pkcs11RootKey (describeRootKey), typed errors at first use and
 * at bridge start, the key's attributes on the token, the bridge over a Unix socket. These run in
 * a child process (in-process.ts) because libsofthsm2 reads SOFTHSM2_CONF with getenv(), which a
 * vitest worker thread cannot set; each of its results becomes one vitest test here.
 */
import { afterAll, expect, it } from 'vitest'
import { makeToken, readLine, spawnTs } from './hsm.ts'

interface Result {
  name: string
  ok: boolean
  ms: number
  error?: string
}

const hsm = makeToken()
afterAll(() => hsm.cleanup())
const child = spawnTs('./in-process.ts', hsm.env)
const { results, notes } = await readLine<{ results: Result[]; notes: string[] }>(child, 'RESULTS ', 50_000)
for (const note of notes) console.log(note)

it('the child ran every PKCS#11 test', () => {
  expect(results.length).toBe(14) // 9 of describeRootKey (wrapKek included), 5 of its own
})

for (const r of results) {
  it(r.name, () => {
    if (!r.ok) throw new Error(r.error)
  })
}
