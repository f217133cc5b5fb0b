/**
 * The end of a KEK's life, and of a chain's, from the command line on a real file store:
 * `rewrap` says what it moved off each KEK, `retire` stops a KEK decrypting (exit 11),
 * `unretire` undoes it, `destroy` deletes its records for good after the grace period (exit 12
 * for data under it), asking on a terminal and needing --yes elsewhere; `status` shows each.
 */
import { copyFileSync, mkdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openChainFromConfig } from '../src/index.ts'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutNotes, withoutWeakKdfWarning, type Result } from './helpers.js'

const PTY = fileURLToPath(new URL('./pty_run.py', import.meta.url))
const PASSPHRASE = 'lifecycle passphrase'
/**
 * 0.0001 days: 8.64 s of grace, long enough for a loaded machine to run a few commands between a
 * retirement and the destroy refused as too soon; a staleness bound of 1 s.
 */
const POLICY = ['--destroy-grace-days', '0.0001', '--max-staleness-seconds', '1']
const GRACE_MS = 8_640
let bundle: string
let work: ReturnType<typeof tempDir>

beforeAll(async () => {
  work = tempDir('lifecycle')
  bundle = await bundleCli(work.dir)
})
afterAll(() => work?.cleanup())

const env = (dir: string) => ({ KMS_PROXY_PASSPHRASE: PASSPHRASE, KMS_PROXY_CONFIG: join(dir, 'kms-proxy.json'), ...WEAK_KDF_ENV })
async function kp(dir: string, args: string[], input?: string | Uint8Array, extra: Record<string, string | undefined> = {}): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd: dir, env: { ...env(dir), ...extra }, input })
  const result = { ...r, stderr: withoutNotes(r.stderr) }
  expect(result.stdout.toString() + result.stderr).not.toContain(PASSPHRASE)
  return result
}
const ok = (r: Result): string => {
  expect(r.stderr).toBe('')
  expect(r.code).toBe(EXIT.OK)
  return r.stdout.toString()
}
const hex = (id: number) => `0x${id.toString(16).padStart(8, '0')}`
const storeText = (dir: string) => readFileSync(join(dir, 'kms-proxy-keys.json'), 'utf8')
/** KEK ids that still have a record in the file store. */
const recordIds = async (dir: string) => (JSON.parse(ok(await kp(dir, ['status', '--json']))).keks as Array<{ id: number; state: string; rootKind?: string }>).filter((k) => k.rootKind !== undefined).map((k) => k.id)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function newChain(name: string): Promise<string> {
  const dir = join(work.dir, name)
  mkdirSync(join(dir, 'data'), { recursive: true })
  ok(await kp(dir, ['init', ...FAST_KDF, ...POLICY]))
  return dir
}

/** Runs `kms-proxy args` on a pseudo-terminal, typing `answers`; stdout is what the terminal showed. */
async function onPty(dir: string, args: string[], answers: string[]): Promise<Result> {
  const r = await spawnCollect('python3', [PTY, JSON.stringify([process.execPath, bundle, ...args]), JSON.stringify(answers)], { cwd: dir, env: env(dir) })
  return { ...r, stdout: Buffer.from(withoutWeakKdfWarning(r.stdout.toString('latin1')), 'latin1') }
}

describe('one KEK: rewrap, retire, unretire, destroy', () => {
  it('rewrap says what it moved off each KEK; retire stops it decrypting, reversibly; destroy waits for the grace period, then deletes it for good', async () => {
    const dir = await newChain('kek')
    const data = join(dir, 'data')
    ok(await kp(dir, ['encrypt', '--message', '-o', join(data, 'a.kp')], 'message a'))
    ok(await kp(dir, ['encrypt', '-o', join(data, 'b.kp')], 'stream b'))
    copyFileSync(join(data, 'a.kp'), join(dir, 'a-before-rewrap.kp')) // kept outside DIR: still under the old KEK
    const old = JSON.parse(ok(await kp(dir, ['status', '--json']))).primary.id as number
    const primary = JSON.parse(ok(await kp(dir, ['rotate', '--json']))).primary as number
    ok(await kp(dir, ['encrypt', '--message', '-o', join(data, 'c.kp')], 'message c'))

    // rewrap: per KEK, what moved (the chain's own count), its bytes, and what is left under it.
    const bytes = statSync(join(data, 'a.kp')).size + statSync(join(data, 'b.kp')).size
    const rewrap = JSON.parse(ok(await kp(dir, ['rewrap', data, '--json'])))
    expect(rewrap).toMatchObject({ rewrapped: 2, messages: 1, streams: 1, current: 1, failed: 0, primary })
    expect(rewrap.byKek).toEqual([{ id: old, idHex: hex(old), moved: 2, bytes, left: 0 }])
    ok(await kp(dir, ['encrypt', '--message', '-o', join(data, 'd.kp')], 'message d'))
    copyFileSync(join(dir, 'a-before-rewrap.kp'), join(data, 'a-old.kp'))
    const text = ok(await kp(dir, ['rewrap', data]))
    expect(text).toContain(`  from KEK ${hex(old)}: 1 file moved (${statSync(join(dir, 'a-before-rewrap.kp')).size.toLocaleString('en-US')} bytes); no file under ${data} still under it\n`)

    // Refusals: the primary, an id that is none, an id the store does not have.
    const ofPrimary = await kp(dir, ['retire', hex(primary)])
    expect(ofPrimary.code).toBe(EXIT.USAGE)
    expect(ofPrimary.stderr).toContain(`KEK ${hex(primary)} is the primary KEK: \`kms-proxy rotate\` first, then retire it`)
    expect((await kp(dir, ['retire', 'zz'])).code).toBe(EXIT.USAGE)
    expect((await kp(dir, ['retire', '0x1'])).code).toBe(EXIT.UNKNOWN_KEK)

    const retired = ok(await kp(dir, ['retire', hex(old)]))
    expect(retired).toMatch(new RegExp(`^retired KEK ${hex(old)} of chain "default" \\(.+\\): data under it no longer decrypts \\(exit 11\\), here now and in every process on the chain within 1 s\\nundo {9}kms-proxy unretire ${hex(old)}\\ndestroy {6}kms-proxy destroy ${hex(old)}, from `))
    // Too soon (within the grace period), not retired, the primary: refused, nothing deleted.
    const tooSoon = await kp(dir, ['destroy', hex(old), '--yes'])
    expect(tooSoon.code, tooSoon.stderr).toBe(EXIT.USAGE)
    expect(tooSoon.stderr).toMatch(new RegExp(`KEK ${hex(old)} was retired \\d+ s ago: it can be destroyed after the grace period \\(9 s\\), from `))
    const [status, jsonText, refused, rewrapped, ofPrimaryDestroy] = await Promise.all([
      kp(dir, ['status']),
      kp(dir, ['status', '--json']),
      kp(dir, ['decrypt', '-i', join(dir, 'a-before-rewrap.kp')]),
      kp(dir, ['decrypt', '-i', join(data, 'a.kp')]),
      kp(dir, ['destroy', hex(primary), '--yes']),
    ])
    expect(ok(status)).toContain('staleness    a rotation or retirement anywhere is seen here within 1 s; destroy waits 9 s after a retirement')
    expect(status.stdout.toString()).toMatch(new RegExp(`  ${hex(old)}  \\S+  passphrase-pbkdf2  retired \\S+ \\(destroyable from \\S+\\)`))
    const json = JSON.parse(ok(jsonText))
    expect(json.policy).toMatchObject({ maxStalenessMs: 1_000, destroyGraceMs: GRACE_MS })
    expect(json.keks.find((k: { id: number }) => k.id === old)).toMatchObject({ state: 'retired', destroyableAt: expect.any(Number) })
    // Data still under it is refused (exit 11); rewrapped data decrypts.
    expect(refused.code).toBe(EXIT.RETIRED)
    expect(refused.stderr).toMatch(/kms-proxy unretire/)
    expect(ok(rewrapped)).toBe('message a')
    expect(ofPrimaryDestroy.stderr).toContain('is the primary KEK: it cannot be destroyed')
    expect(await recordIds(dir)).toContain(old)

    // Unretire: it decrypts again; retire it again (the grace period starts again).
    expect(ok(await kp(dir, ['unretire', hex(old)]))).toBe(`KEK ${hex(old)} is no longer retired: it decrypts again\n`)
    expect(ok(await kp(dir, ['decrypt', '-i', join(dir, 'a-before-rewrap.kp')]))).toBe('message a')
    const notRetired = await kp(dir, ['destroy', hex(old), '--yes'])
    expect(notRetired.code).toBe(EXIT.USAGE)
    expect(notRetired.stderr).toContain(`KEK ${hex(old)} is not retired: \`kms-proxy retire ${hex(old)}\` first`)
    const again = JSON.parse(ok(await kp(dir, ['retire', hex(old), '--json'])))
    expect(again).toMatchObject({ kek: old, destroyableAt: again.retiredAt + GRACE_MS })
    await sleep(again.destroyableAt + 100 - Date.now())

    // Off a terminal, destroy needs --yes; on one, the KEK id typed: anything else changes nothing.
    const before = storeText(dir)
    const unconfirmed = await kp(dir, ['destroy', hex(old)])
    expect(unconfirmed.code).toBe(EXIT.USAGE)
    expect(unconfirmed.stderr).toContain(`destroying KEK ${hex(old)} cannot be undone: pass --yes, or run on a terminal to confirm`)
    const wrong = await onPty(dir, ['destroy', hex(old)], ['yes'])
    expect(wrong.code).toBe(EXIT.USAGE)
    expect(wrong.stdout.toString()).toContain(`Type ${hex(old)} to destroy it: `)
    expect(wrong.stdout.toString()).toContain(`not confirmed: KEK ${hex(old)} was not destroyed`)
    expect(storeText(dir)).toBe(before)

    const typed = await onPty(dir, ['destroy', hex(old)], [hex(old)])
    expect(typed.code, typed.stdout.toString()).toBe(EXIT.OK)
    expect(typed.stdout.toString()).toContain(`destroyed KEK ${hex(old)}: 1 KEK record deleted from the store`)
    // Run again (as after a crash, or twice by a script): nothing left to delete.
    expect(JSON.parse(ok(await kp(dir, ['destroy', hex(old), '--yes', '--json'])))).toEqual({ kek: old, kekHex: hex(old), keks: [old], deleted: 0 })
    expect(await recordIds(dir)).toEqual([primary])
    expect(storeText(dir)).not.toContain(`"id":${old},"createdAt"`)
    const after = JSON.parse(ok(await kp(dir, ['status', '--json'])))
    expect(after.keks.find((k: { id: number }) => k.id === old)).toMatchObject({ state: 'destroyed', destroyedAt: expect.any(Number) })
    expect(ok(await kp(dir, ['status']))).toMatch(new RegExp(`  ${hex(old)}  destroyed \\S+\\n`))
    const gone = await kp(dir, ['decrypt', '-i', join(dir, 'a-before-rewrap.kp')])
    expect(gone.code).toBe(EXIT.DESTROYED)
    const back = await kp(dir, ['unretire', hex(old)])
    expect(back.code).toBe(EXIT.DESTROYED)
    // What was rewrapped off it still decrypts.
    for (const [file, plain] of [['a.kp', 'message a'], ['b.kp', 'stream b'], ['c.kp', 'message c'], ['a-old.kp', 'message a']]) {
      expect(ok(await kp(dir, ['decrypt', '-i', join(data, file!)]))).toBe(plain)
    }
  }, 240_000)
})

describe('a whole chain: retire --chain, unretire --chain, destroy --chain', () => {
  it('a retired chain neither encrypts nor decrypts until unretired; destroyed after the grace period, every KEK record is gone and the head stays as a tombstone', async () => {
    const dir = await newChain('chain')
    const first = join(dir, 'first.kp')
    ok(await kp(dir, ['encrypt', '--message', '-o', first], 'tenant data'))
    ok(await kp(dir, ['rotate']))
    ok(await kp(dir, ['rotate']))
    expect(await recordIds(dir)).toHaveLength(3)

    const early = await kp(dir, ['destroy', '--chain', '--yes'])
    expect(early.code).toBe(EXIT.USAGE)
    expect(early.stderr).toContain('chain "default" is not retired: `kms-proxy retire --chain` first')
    expect(ok(await kp(dir, ['retire', '--chain']))).toMatch(/^retired chain "default" \(.+\): it no longer encrypts or decrypts \(exit 11\)/)
    const [encrypted, decrypted, status] = await Promise.all([kp(dir, ['encrypt', '--message'], 'x'), kp(dir, ['decrypt', '-i', first]), kp(dir, ['status'])])
    expect(encrypted.code).toBe(EXIT.RETIRED)
    expect(decrypted.code).toBe(EXIT.RETIRED)
    expect(ok(status)).toMatch(/^chain state  retired \S+: no encryption or decryption; `kms-proxy unretire --chain` undoes it/m)
    expect(ok(await kp(dir, ['unretire', '--chain']))).toBe('chain "default" is no longer retired: it encrypts and decrypts again\n')
    expect(ok(await kp(dir, ['decrypt', '-i', first]))).toBe('tenant data')

    const retired = JSON.parse(ok(await kp(dir, ['retire', '--chain', '--json'])))
    const tooSoon = await kp(dir, ['destroy', '--chain', '--yes'])
    expect(tooSoon.code).toBe(EXIT.USAGE)
    expect(tooSoon.stderr).toMatch(/chain "default" was retired \d+ s ago: it can be destroyed after the grace period/)
    await sleep(retired.destroyableAt + 100 - Date.now())
    expect((await kp(dir, ['destroy', '--chain'])).stderr).toContain('destroying chain "default" cannot be undone: pass --yes')
    const wrong = await onPty(dir, ['destroy', '--chain'], ['0x0'])
    expect(wrong.code).toBe(EXIT.USAGE)
    expect(wrong.stdout.toString()).toContain('Type default to destroy it: ')
    expect(await recordIds(dir)).toHaveLength(3)

    const destroyed = ok(await kp(dir, ['destroy', '--chain', '--yes']))
    expect(destroyed).toBe('destroyed chain "default" (3 KEKs): 3 KEK records deleted from the store; data under it can no longer be decrypted by anyone (exit 12)\n')
    const [ids, after, gone, back] = await Promise.all([recordIds(dir), kp(dir, ['status']), kp(dir, ['decrypt', '-i', first]), kp(dir, ['unretire', '--chain'])])
    expect(ids).toEqual([])
    expect(ok(after)).toMatch(/^chain state  destroyed \S+: its KEKs are deleted/m)
    expect(gone.code).toBe(EXIT.DESTROYED)
    expect(back.code).toBe(EXIT.DESTROYED)
    // Run again (as after a crash): nothing left to delete.
    expect(JSON.parse(ok(await kp(dir, ['destroy', '--chain', '--yes', '--json'])))).toMatchObject({ chain: 'default', deleted: 0 })
  }, 240_000)
})

describe('a long-running process on the config (openChainFromConfig, as the plugin opens it)', () => {
  it('uses a rotation made by another process, and refuses a KEK another process retired, within the config\'s staleness bound (1 s; the default is 15 s), with the store\'s push turned off', async () => {
    const dir = await newChain('staleness')
    const config = join(dir, 'kms-proxy.json')
    const saved = { passphrase: process.env.KMS_PROXY_PASSPHRASE, weak: process.env.KMS_PROXY_ALLOW_WEAK_KDF }
    process.env.KMS_PROXY_PASSPHRASE = PASSPHRASE
    process.env.KMS_PROXY_ALLOW_WEAK_KDF = '1'
    const chain = await openChainFromConfig(config)
    // The file store also pushes head changes (a watch polling the file); without it, the chain
    // reads the head every maxStalenessMs: the bound alone is what this test measures.
    chain.close()
    try {
      const kekOf = (data: Uint8Array) => new DataView(data.buffer, data.byteOffset).getUint32(1)
      const first = await chain.encrypt('before the rotation')
      const rotated = JSON.parse(ok(await kp(dir, ['rotate', '--json']))).primary as number
      expect(kekOf(first)).not.toBe(rotated)
      // The bound is 1 s ("maxStalenessMs": 1000 in the config): well within 3 s the rotation is used here.
      const started = Date.now()
      let seenAfter = Number.POSITIVE_INFINITY
      while (Date.now() - started < 3_000) {
        if (kekOf(await chain.encrypt('after')) === rotated) {
          seenAfter = Date.now() - started
          break
        }
        await sleep(50)
      }
      expect(seenAfter).toBeLessThan(3_000)
      ok(await kp(dir, ['retire', hex(kekOf(first))]))
      const retiredAt = Date.now()
      let refusedAfter = Number.POSITIVE_INFINITY
      while (Date.now() - retiredAt < 3_000) {
        const error = await chain.decrypt(first).then(() => undefined, (e: { code?: string }) => e)
        if (error?.code === 'ERR_RETIRED_KEK') {
          refusedAfter = Date.now() - retiredAt
          break
        }
        await sleep(50)
      }
      expect(refusedAfter).toBeLessThan(3_000)
    } finally {
      chain.close()
      process.env.KMS_PROXY_PASSPHRASE = saved.passphrase
      process.env.KMS_PROXY_ALLOW_WEAK_KDF = saved.weak
      if (saved.passphrase === undefined) delete process.env.KMS_PROXY_PASSPHRASE
      if (saved.weak === undefined) delete process.env.KMS_PROXY_ALLOW_WEAK_KDF
    }
  }, 60_000)
})
