/**
 * The CLI on the stores where users already keep their data: a DynamoDB table on moto (the AWS
 * emulator) and a PostgreSQL database (Debian's server, started here). Two hosts with their own
 * config share one chain; what one encrypts the other decrypts; a rotation on one is used by the
 * other; status names the store and never a secret; missing or unsafe settings are usage errors.
 * And etcd's password from a file that changes, as a long-running `k8s-plugin` sees it.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutWeakKdfWarning, type Result } from './helpers.js'
import { startMoto, type Moto } from './moto.ts'
import { CONFIG_FORMAT, openStore, type CliConfig } from '../src/config.ts'
import { enableAuth, haveEtcd, startEtcd, type EtcdCluster } from '../../etcd/test/etcd-process.ts'
import postgres from 'postgres'
import { PW_ROLE_PASSWORD, havePostgres, startPostgres, type PgServer } from '../../postgres/test/pg-process.ts'

const PASSPHRASE = 'shared store chain passphrase'
const REGION = 'eu-west-3'
const AWS = { AWS_ACCESS_KEY_ID: 'AKIASTORESCLITEST000', AWS_SECRET_ACCESS_KEY: 'stores-cli-secret-never-shown' }
let work: ReturnType<typeof tempDir>
let bundle: string

beforeAll(async () => {
  work = tempDir('stores')
  bundle = await bundleCli(work.dir)
})
afterAll(() => work?.cleanup())

/** Each host names its config (KMS_PROXY_CONFIG): one found in the working folder may reach no network service. */
async function kp(cwd: string, args: string[], env: Record<string, string>, input?: string | Uint8Array): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd, env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, KMS_PROXY_CONFIG: join(cwd, 'kms-proxy.json'), ...env }, input })
  return { ...r, stderr: withoutWeakKdfWarning(r.stderr) }
}

function hosts(name: string): [string, string] {
  const pair: [string, string] = [join(work.dir, `${name}-a`), join(work.dir, `${name}-b`)]
  for (const dir of pair) mkdirSync(dir)
  return pair
}

/** Two hosts on one chain: init on both, encrypt on one, decrypt on the other, rotate on the other, both use the new KEK. */
async function sharedChain(name: string, init: string[], env: Record<string, string>, secrets: string[]): Promise<Record<string, unknown>> {
  const [a, b] = hosts(name)
  const first = await kp(a, ['init', ...init, ...FAST_KDF], env)
  expect(first.code, first.stderr).toBe(EXIT.OK)
  expect(first.stdout.toString()).toMatch(/created chain "shop" with KEK/)
  const second = await kp(b, ['init', ...init, ...FAST_KDF], env)
  expect(second.code, second.stderr).toBe(EXIT.OK)
  expect(second.stdout.toString()).toMatch(/chain "shop" already exists; the root key unlocks its primary KEK/)
  const sealed = await kp(a, ['encrypt', '--message'], env, `${name} order 17`)
  expect(sealed.code, sealed.stderr).toBe(EXIT.OK)
  const opened = await kp(b, ['decrypt'], env, sealed.stdout)
  expect([opened.code, opened.stdout.toString()]).toEqual([EXIT.OK, `${name} order 17`])
  const before = JSON.parse((await kp(a, ['status', '--json'], env)).stdout.toString())
  const rotated = await kp(b, ['rotate'], env)
  expect(rotated.code, rotated.stderr).toBe(EXIT.OK)
  const after = JSON.parse((await kp(a, ['status', '--json'], env)).stdout.toString())
  expect(after.primary.id).not.toBe(before.primary.id)
  expect(after.keks.length).toBe(2)
  const again = await kp(b, ['decrypt'], env, sealed.stdout)
  expect(again.stdout.toString()).toBe(`${name} order 17`)
  const text = (await kp(a, ['status'], env)).stdout.toString()
  for (const shown of [JSON.stringify(after), text, first.stdout.toString(), first.stderr]) for (const secret of secrets) expect(shown).not.toContain(secret)
  return { status: after, text }
}

describe('DynamoDB (moto)', () => {
  let moto: Moto
  let env: Record<string, string>
  beforeAll(async () => {
    moto = await startMoto({ accessKeyId: AWS.AWS_ACCESS_KEY_ID, secretAccessKey: AWS.AWS_SECRET_ACCESS_KEY }, REGION, 100_000)
    env = { ...AWS }
  }, 120_000)
  afterAll(() => moto?.close())

  it('two hosts share a chain in one table (the first init creates it): init, encrypt here, decrypt there, rotate there, status names the table and no secret', async () => {
    const init = ['--chain', 'shop', '--store', 'dynamodb', '--dynamodb-table', 'kms-proxy-keys', '--dynamodb-region', REGION, '--dynamodb-endpoint', moto.endpoint, '--dynamodb-prefix', 'cli/']
    const [a] = hosts('dynamodb-missing')
    const missing = await kp(a, ['init', ...init, ...FAST_KDF], env)
    expect([missing.code, missing.stderr]).toEqual([EXIT.STORE, expect.stringMatching(/the store failed: .*ResourceNotFoundException/)])
    // --dynamodb-create-table on both hosts: the first makes the table, the second finds it.
    const { status, text } = await sharedChain('dynamodb', [...init, '--dynamodb-create-table'], env, [AWS.AWS_SECRET_ACCESS_KEY])
    expect((status as { store: unknown }).store).toEqual({ type: 'dynamodb', table: 'kms-proxy-keys', region: REGION, endpoint: moto.endpoint, prefix: 'cli/' })
    expect(text).toMatch(new RegExp(`store +dynamodb kms-proxy-keys \\(${REGION}, ${moto.endpoint}\\)`))
  })

  it('no credentials anywhere: a usage error naming what to set, before any request', async () => {
    const [a] = hosts('dynamodb-nocreds')
    const r = await kp(a, ['init', '--chain', 'x', '--store', 'dynamodb', '--dynamodb-table', 'kms-proxy-keys', '--dynamodb-region', REGION, '--dynamodb-endpoint', moto.endpoint, ...FAST_KDF], { AWS_EC2_METADATA_DISABLED: 'true' })
    expect(r.code).toBe(EXIT.USAGE)
    expect(r.stderr).toMatch(/DynamoDB: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/)
  })

  it('a table name missing, or an endpoint over plain http to a host not named: usage errors', async () => {
    const [a] = hosts('dynamodb-bad')
    const noTable = await kp(a, ['init', '--store', 'dynamodb', '--dynamodb-region', REGION], env)
    expect([noTable.code, noTable.stderr]).toEqual([EXIT.USAGE, expect.stringMatching(/--dynamodb-table/)])
    const plain = await kp(a, ['init', '--store', 'dynamodb', '--dynamodb-table', 't', '--dynamodb-region', REGION, '--dynamodb-endpoint', 'http://dynamodb.internal:8000', ...FAST_KDF], env)
    expect([plain.code, plain.stderr]).toEqual([EXIT.USAGE, expect.stringMatching(/plain http to dynamodb\.internal/)])
  })
})

describe.skipIf(!havePostgres)('PostgreSQL (Debian server)', () => {
  let pg: PgServer
  let url: string
  const PASSWORD = PW_ROLE_PASSWORD
  beforeAll(async () => {
    pg = await startPostgres()
    // The server asks this role for its password (scram-sha-256 over TCP); it may create the store's tables.
    const admin = postgres(pg.url, { fetch_types: false, onnotice: () => {} })
    await admin.unsafe(`CREATE ROLE kms_pw LOGIN PASSWORD '${PASSWORD}'`)
    await admin.unsafe('GRANT CREATE ON SCHEMA public TO kms_pw')
    await admin.end()
    url = `postgres://kms_pw:${encodeURIComponent(PASSWORD)}@127.0.0.1:${pg.port}/postgres`
  }, 120_000)
  afterAll(async () => {
    await pg?.stop()
  })

  it('two hosts share a chain in one database: init, encrypt here, decrypt there, rotate there, status names the tables and never the URL', async () => {
    const env = { KMS_PROXY_POSTGRES_URL: url }
    const { status, text } = await sharedChain('postgres', ['--chain', 'shop', '--store', 'postgres', '--postgres-table', 'cli_keys'], env, [PASSWORD, url])
    expect((status as { store: unknown }).store).toEqual({ type: 'postgres', table: 'cli_keys' })
    expect(text).toMatch(/store +postgres cli_keys_heads, cli_keys_keks/)
  })

  it('no URL, a URL that is not postgres://, or a remote host without TLS: usage errors that never repeat the password', async () => {
    const [a] = hosts('postgres-bad')
    const init = ['init', '--chain', 'x', '--store', 'postgres', ...FAST_KDF]
    const none = await kp(a, init, {})
    expect([none.code, none.stderr]).toEqual([EXIT.USAGE, expect.stringMatching(/set KMS_PROXY_POSTGRES_URL/)])
    const http = await kp(a, init, { KMS_PROXY_POSTGRES_URL: `http://u:${PASSWORD}@127.0.0.1/db` })
    expect([http.code, http.stderr]).toEqual([EXIT.USAGE, expect.stringMatching(/expected a postgres:\/\/ or postgresql:\/\/ URL/)])
    const remote = await kp(a, init, { KMS_PROXY_POSTGRES_URL: `postgres://u:${PASSWORD}@db.internal:5432/app` })
    expect([remote.code, remote.stderr]).toEqual([EXIT.USAGE, expect.stringMatching(/to db\.internal without TLS .*sslmode=verify-full/)])
    for (const r of [none, http, remote]) expect(r.stderr).not.toContain(PASSWORD)
  })

  it('the database down: the store fails with exit 7 and a message without the password', async () => {
    const [a] = hosts('postgres-down')
    const down = url.replace(/:(\d+)\//, ':9/')
    const r = await kp(a, ['init', '--chain', 'x', '--store', 'postgres', ...FAST_KDF], { KMS_PROXY_POSTGRES_URL: down })
    expect(r.code, r.stderr).toBe(EXIT.STORE)
    expect(r.stderr).not.toContain(PASSWORD)
  })
})

describe.skipIf(!haveEtcd)('etcd with auth: the password file is read again when it changes', () => {
  let etcd: EtcdCluster
  let asRoot: Awaited<ReturnType<typeof enableAuth>>
  beforeAll(async () => {
    etcd = await startEtcd()
    asRoot = await enableAuth(etcd.urls[0]!, { root: 'root-Pw-never-shown-1', app: 'app-Pw-first-2' })
  }, 60_000)
  afterAll(async () => {
    await etcd?.stop()
  })

  it('a store opened from the config logs in with the file; after the password changes in etcd and in the file, the next call logs in with the new one, with no restart', async () => {
    const dir = join(work.dir, 'etcd-password')
    mkdirSync(dir)
    const file = join(dir, 'etcd-password')
    writeFileSync(file, 'app-Pw-first-2\n')
    const saved = { ...process.env }
    process.env.KMS_PROXY_ETCD_PASSWORD_FILE = file
    delete process.env.KMS_PROXY_ETCD_PASSWORD
    try {
      const config = { format: CONFIG_FORMAT, chain: 'shop', store: { type: 'etcd', endpoints: etcd.urls, prefix: 'app/cli/', username: 'app' }, rootKey: { type: 'passphrase' } } as CliConfig
      const store = await openStore(config, join(dir, 'kms-proxy.json'))
      expect(await store.casHead('shop', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
      // A simple token dies with its user's password: the store's next call must log in again.
      await asRoot('/v3/auth/user/changepw', { name: 'app', password: 'app-Pw-second-3' })
      writeFileSync(file, 'app-Pw-second-3\n')
      expect((await store.getHead('shop'))!.value.primary).toBe(1)
      // And a password that no longer works fails as the store's typed error, naming no password.
      await asRoot('/v3/auth/user/changepw', { name: 'app', password: 'app-Pw-third-4' })
      const error = await store.getHead('shop').catch((e: unknown) => e as Error)
      expect(error).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(/authentication as "app" failed/) })
      for (const secret of ['app-Pw-first-2', 'app-Pw-second-3', 'app-Pw-third-4']) expect(`${String(error)} ${(error as Error).stack}`).not.toContain(secret)
    } finally {
      process.env = saved
    }
  })
})
