/**
 * `status --check` proves the root key and changes nothing: no use spent, no lease taken, no
 * rotation of an overdue primary, no KEK made. The store is read before and after, byte for
 * byte; the root key is a Vault Transit server on 127.0.0.1 (the kms package's fake, real
 * AES-GCM) that counts every call it receives.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startFakeVault, type FakeVault } from '../../kms/test/fakes/vault.ts'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutNotes, type Result } from './helpers.js'

const TOKEN = 'hvs.status-check-token'
const PASSPHRASE = 'status check passphrase'
let bundle: string
let work: ReturnType<typeof tempDir>
let vault: FakeVault

beforeAll(async () => {
  work = tempDir('status-check')
  bundle = await bundleCli(work.dir)
  vault = await startFakeVault({ token: TOKEN, keys: ['kp'] })
})
afterAll(async () => {
  await vault?.close()
  work?.cleanup()
})

async function kp(args: string[], env: Record<string, string> = {}): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd: work.dir, env: { VAULT_TOKEN: TOKEN, KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, ...env } })
  return { ...r, stderr: withoutNotes(r.stderr) }
}

/** Every byte the chain has in its store: head (with the lease counter) and KEK records. */
const storeBytes = (name: string) => readFileSync(join(work.dir, `${name}-keys.json`))

/** A chain whose primary is past its age (0.00001 days: 0.86 s) by the time this returns. */
async function overdueChain(name: string, root: string[]): Promise<string> {
  const config = join(work.dir, `${name}.json`)
  const init = await kp(['init', '--config', config, '--store-path', join(work.dir, `${name}-keys.json`), '--max-kek-age-days', '0.00001', ...root])
  expect(init.code, init.stderr).toBe(EXIT.OK)
  await new Promise((r) => setTimeout(r, 1_100))
  return config
}

describe('status --check', () => {
  it('with an overdue primary: exactly one root-key unwrap, and the store byte-identical (no use, no lease, no rotation)', async () => {
    const config = await overdueChain('vault', ['--root', 'vault', '--vault-address', vault.url, '--vault-key', 'kp'])
    const before = storeBytes('vault')
    const head = JSON.stringify(JSON.parse(before.toString()))
    for (const json of [true, false]) {
      vault.calls.length = 0
      const r = await kp(['status', '--check', '--config', config, ...(json ? ['--json'] : [])])
      expect(r.code, r.stderr).toBe(EXIT.OK)
      expect(r.stderr).toBe('')
      expect(vault.calls).toEqual(['decrypt']) // one unwrap of the primary KEK; no random/encrypt (a new KEK)
      expect(storeBytes('vault').equals(before), 'the store changed').toBe(true)
      if (json) {
        const report = JSON.parse(r.stdout.toString())
        expect(report.rootKeyCalls).toEqual({ wraps: 0, unwraps: 1 })
        expect(report.rootKeyAvailable).toBe(true)
        expect(report.primary.usesReserved).toBe(1) // init's own lease, and nothing since
        expect(report.keks).toHaveLength(1)
      } else {
        expect(r.stdout.toString()).toMatch(/^root-key calls by this command: 0 wraps, 1 unwrap \(root key ok\)$/m)
        expect(r.stdout.toString()).toMatch(/past its age by/)
      }
    }
    expect(JSON.stringify(JSON.parse(storeBytes('vault').toString()))).toBe(head)
  })

  it('a passphrase chain with an overdue primary: the right passphrase and a wrong one both leave the store as it was', async () => {
    const config = await overdueChain('pass', FAST_KDF)
    const before = storeBytes('pass')
    const right = await kp(['status', '--check', '--json', '--config', config])
    expect(right.code, right.stderr).toBe(EXIT.OK)
    expect(JSON.parse(right.stdout.toString()).rootKeyCalls).toEqual({ wraps: 0, unwraps: 1 })
    expect(storeBytes('pass').equals(before)).toBe(true)
    const wrong = await kp(['status', '--check', '--config', config], { KMS_PROXY_PASSPHRASE: 'not the passphrase' })
    expect(wrong.code).toBe(EXIT.ROOT_KEY)
    expect(wrong.stderr).toBe('kms-proxy status: the root key refused: wrong passphrase, or the wrapped KEK was altered\n')
    expect(storeBytes('pass').equals(before)).toBe(true)
  })

  it('the help says what a check costs and that it changes nothing', async () => {
    const help = (await kp(['status', '--help'])).stdout.toString()
    expect(help).toMatch(/--check +also unlock the primary KEK \(one root-key unwrap\) to prove the root key;\s+changes nothing in the store/)
  })
})
