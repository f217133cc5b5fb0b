import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import { join } from 'node:path'
import postgres, { type Sql } from 'postgres'
import { KeyChain, KmsProxyError, StoreError, aesRootKey } from '@kms-proxy/core'
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { postgresSchema, postgresStore } from '../src/index.ts'
import { readmeBlocks } from '../../testkit/test/readme-blocks.ts'
import { PW_ROLE_PASSWORD, havePostgres, startPostgres, type PgServer } from './pg-process.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
let seq = 0
const uniqueTable = () => `t${Date.now().toString(36)}_${++seq}`

if (!havePostgres) console.log('postgres store tests: PostgreSQL is not installed (apt-get install postgresql); skipped')

describe.skipIf(!havePostgres)('postgresStore on PostgreSQL', () => {
  let pg: PgServer
  let admin: Sql
  const clients: Sql[] = []
  /** A driver instance of its own (its own connections, as another process would have), ended in afterAll. */
  const client = (url = pg.url, options: postgres.Options<{}> = {}) => {
    const sql = postgres(url, { max: 2, fetch_types: false, onnotice: () => {}, ...options })
    clients.push(sql)
    return sql
  }

  beforeAll(async () => {
    pg = await startPostgres()
    admin = postgres(pg.url, { max: 2, fetch_types: false, onnotice: () => {} })
    await admin.unsafe(`CREATE ROLE kms_pw LOGIN PASSWORD '${PW_ROLE_PASSWORD}'`)
  }, 90_000)
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.end({ timeout: 1 })))
    await admin?.end({ timeout: 1 })
    await pg?.stop()
  })

  describeStore(createHarness(it), {
    name: 'postgres',
    severalRoots: true,
    watch: false,
    async open() {
      const table = uniqueTable()
      const [a, b] = [postgres(pg.url, { max: 2, fetch_types: false, onnotice: () => {} }), postgres(pg.url, { max: 2, fetch_types: false, onnotice: () => {} })]
      return {
        store: postgresStore(a, { table }),
        another: () => postgresStore(b, { table }),
        close: async () => void (await Promise.all([a.end({ timeout: 1 }), b.end({ timeout: 1 })])),
      }
    },
  })

  it('keeps the layout: one head row with a counter version, one KEK row per (chain, id, root), bytes as bytea', async () => {
    const table = uniqueTable()
    const store = postgresStore(client(), { table })
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'layout', watch: false })
    const e = await chain.encrypt('x')
    const id = ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
    const [head] = await admin.unsafe(`SELECT head, version::text AS version FROM ${table}_heads WHERE chain = 'layout'`)
    expect(JSON.parse(head!.head)).toMatchObject({ primary: id, leased: expect.any(Number) })
    expect((await store.getHead('layout'))!.version).toBe(head!.version)
    const rows = await admin.unsafe(`SELECT id::text AS id, root, root_kind, length(wrapped) AS n FROM ${table}_keks WHERE chain = 'layout'`)
    expect(rows.map((r) => ({ ...r }))).toEqual([{ id: String(id), root: 'default', root_kind: 'aes', n: (await store.getKek('layout', id))!.wrapped.length }])
    // The schema is what postgresSchema documents and the README shows: its statements run again without error.
    await admin.unsafe(postgresSchema(table))
    const sqlBlocks = readmeBlocks(new URL('../README.md', import.meta.url).pathname, 'sql')
    expect(sqlBlocks.map((b) => b.text.trim())).toEqual([postgresSchema()])
    // Chain names are one column, never concatenated: 'a' + id 1 and 'a\\0' never meet, nor do names with NUL or '\'.
    const h = { primary: 1, primaryCreatedAt: 1, leased: 0 }
    for (const name of ['a', 'a\0', 'a\\0', 'a\\', 'a\\\\', 'a/kek/1', 'ünï 🔑']) expect(await store.casHead(name, undefined, { ...h, leased: name.length }), name).toBe(true)
    for (const name of ['a', 'a\0', 'a\\0', 'a\\', 'a\\\\', 'a/kek/1', 'ünï 🔑']) expect((await store.getHead(name))!.value.leased, name).toBe(name.length)
    await expect(store.getHead('a\uD800')).rejects.toThrow(TypeError)
    await expect(store.getHead('')).rejects.toThrow(TypeError)
  })

  it('a corrupt head or KEK row is ERR_STORE, not retryable, also through a chain; a malformed head is refused before it is written', async () => {
    const table = uniqueTable()
    const store = postgresStore(client(), { table })
    expect(await store.casHead('ok', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    await admin.unsafe(`INSERT INTO ${table}_heads (chain, head, version) VALUES ('notjson', 'not json', 1), ('bad', '{"primary":"nope","primaryCreatedAt":1,"leased":0}', 1), ('badroots', '{"primary":1,"primaryCreatedAt":1,"leased":0,"roots":[{"name":"a/b","kind":"aes","state":"active"}]}', 1)`)
    await admin.unsafe(`INSERT INTO ${table}_keks VALUES ('k', 7, 'default', 1, 'aes', ''::bytea), ('k2', 7, 'bad/root', 1, 'aes', '\\x01'::bytea)`)
    for (const call of [() => store.getHead('notjson'), () => store.getHead('bad'), () => store.getHead('badroots'), () => store.getKek('k', 7), () => store.listKeks('k2')]) {
      const error = await call().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(StoreError)
      expect(error).toMatchObject({ code: 'ERR_STORE', retryable: false })
    }
    const chainError = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'bad', watch: false }).catch((e: unknown) => e)
    expect(chainError).toMatchObject({ code: 'ERR_STORE', retryable: false })
    const version = (await store.getHead('ok'))!.version
    await expect(store.casHead('ok', version, { primary: 1, primaryCreatedAt: 1, leased: -1 })).rejects.toThrow(TypeError)
    expect((await store.getHead('ok'))!.version).toBe(version)
    // Versions the store never handed out cannot match, and are not an error.
    for (const v of ['0', '01', '-1', 'x', '1 OR true', '99999999999999999999']) expect(await store.casHead('ok', v, { primary: 1, primaryCreatedAt: 1, leased: 5 }), v).toBe(false)
  })

  it('the table option is validated and never reaches SQL unchecked; two tables are two stores; migrate: false needs the tables', async () => {
    const sql = client()
    for (const table of ['', 'Kms', '1abc', 'a-b', 'a.b', 'a b', 'x; DROP TABLE y', 'a"b', 'x'.repeat(58), 7, null]) {
      expect(() => postgresStore(sql, { table: table as string }), String(table)).toThrow(TypeError)
      if (typeof table === 'string') expect(() => postgresSchema(table), table).toThrow(TypeError)
    }
    expect(() => postgresStore(sql, { migrate: 'no' as never })).toThrow(TypeError)
    expect(() => postgresStore({} as never)).toThrow(TypeError)
    expect(() => postgresStore(sql, { table: 'x'.repeat(57) })).not.toThrow()
    const [one, two] = [uniqueTable(), uniqueTable()]
    const h = { primary: 1, primaryCreatedAt: 1, leased: 0 }
    expect(await postgresStore(sql, { table: one }).casHead('c', undefined, h)).toBe(true)
    expect(await postgresStore(sql, { table: two }).casHead('c', undefined, h)).toBe(true)
    // The default table name, kms_proxy.
    expect(await postgresStore(sql).casHead(uniqueTable(), undefined, h)).toBe(true)
    expect((await admin.unsafe(`SELECT count(*)::int AS n FROM kms_proxy_heads`))[0]!.n).toBe(1)
    // Without migration the tables must exist: a missing one is a typed error that says so, and nothing is created.
    const missing = uniqueTable()
    const error = await postgresStore(sql, { table: missing, migrate: false }).getHead('c').catch((e: unknown) => e)
    expect(error).toMatchObject({ code: 'ERR_STORE', retryable: false })
    expect((error as Error).message).toMatch(/42P01/)
    await admin.unsafe(postgresSchema(missing))
    expect(await postgresStore(sql, { table: missing, migrate: false }).casHead('c', undefined, h)).toBe(true)
  })

  it('the tables are created on first use by 8 clients at once without error (each its own session), where plain CREATE TABLE IF NOT EXISTS collides', async () => {
    const sessions = Array.from({ length: 8 }, () => client(pg.url, { max: 1 }))
    let plainFailures = 0
    for (let round = 0; round < 5; round++) {
      // The control: the same CREATE statements without the store's lock collide in the catalog.
      const plain = await Promise.allSettled(sessions.map((s) => s.unsafe(postgresSchema(`plain${round}`))))
      plainFailures += plain.filter((r) => r.status === 'rejected').length
      const table = uniqueTable()
      const results = await Promise.allSettled(sessions.map((s, i) => postgresStore(s, { table }).casHead(`c${i}`, undefined, { primary: 1, primaryCreatedAt: 1, leased: i })))
      expect(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason))).toEqual([])
      expect(results.every((r) => r.status === 'fulfilled' && r.value === true)).toBe(true)
    }
    console.log(`schema on first use, 8 sessions x 5 rounds: the store 0 failures; plain CREATE TABLE IF NOT EXISTS ${plainFailures} of 40 calls failed`)
  })

  it('retryable or not, as the SQLSTATE says: too many connections and a statement timeout are retryable; an ended driver is not', async () => {
    const table = uniqueTable()
    await admin.unsafe(postgresSchema(table))
    const h = { primary: 1, primaryCreatedAt: 1, leased: 0 }
    expect(await postgresStore(client(), { table }).casHead('c', undefined, h)).toBe(true)
    // 53300: a role allowed no connection at all.
    await admin.unsafe('CREATE ROLE kms_none LOGIN CONNECTION LIMIT 0')
    const none = await postgresStore(client(`postgres://kms_none@127.0.0.1:${pg.port}/postgres`), { table }).getHead('c').catch((e: unknown) => e)
    expect(none).toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: true })
    expect((none as Error).message).toMatch(/53300/)
    // 57014: the head row locked by another transaction past the session's statement_timeout.
    const slow = postgresStore(client(pg.url, { connection: { statement_timeout: 300 } }), { table, migrate: false })
    const version = (await slow.getHead('c'))!.version
    let timedOut: unknown
    await admin.begin(async (tx) => {
      await tx.unsafe(`SELECT 1 FROM ${table}_heads WHERE chain = 'c' FOR UPDATE`)
      timedOut = await slow.casHead('c', version, { ...h, leased: 1 }).catch((e: unknown) => e)
    })
    expect(timedOut).toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: true })
    expect((timedOut as Error).message).toMatch(/57014/)
    // Once the lock is gone the same swap wins: the timed-out one changed nothing.
    expect(await slow.casHead('c', version, { ...h, leased: 1 })).toBe(true)
    // A driver the app has ended will not answer again.
    const ended = client()
    await ended.end()
    expect(await postgresStore(ended, { table }).getHead('c').catch((e: unknown) => e)).toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: false })
  })

  it('the driver leaves a reset of its array-type lookup unhandled (so the README says fetch_types: false); without the lookup the same reset is a plain failed query', async () => {
    // In a child process: an unhandled rejection there is what an app would suffer, and it must not end this runner.
    const run = (mode: 'on' | 'off') =>
      new Promise<{ result: string; unhandled: string[] }>((resolve, reject) => {
        execFile(process.execPath, [join(import.meta.dirname, 'fixtures', 'types-reset.mjs'), String(pg.port), mode], { timeout: 30_000 }, (error, stdout) =>
          error ? reject(error) : resolve(JSON.parse(stdout.trim().split('\n').pop()!)),
        )
      })
    // Driver default (fetch_types on): the lookup's query is reset; the app's query fails, and the
    // lookup's own rejection reaches no handler (Node's default ends the process on it).
    expect(await run('on')).toEqual({ result: 'rejected ECONNRESET', unhandled: ['ECONNRESET'] })
    // fetch_types: false: no lookup, nothing to reset; the query answers.
    expect(await run('off')).toEqual({ result: 'ok 1', unhandled: [] })
  })

  it('no password from the connection string in any error, nor in the store or its options as JSON', async () => {
    const url = `postgres://kms_pw:${encodeURIComponent(PW_ROLE_PASSWORD)}@127.0.0.1:${pg.port}/postgres`
    const wrong = `postgres://kms_pw:Wr0ng-pw-2c9a@127.0.0.1:${pg.port}/postgres`
    const down = `postgres://kms_pw:${encodeURIComponent(PW_ROLE_PASSWORD)}@127.0.0.1:9/postgres`
    // The right password works. The role may not create tables in public (PostgreSQL 15's default;
    // refused below), so the admin made them, and the store's first-use check leaves them as they are.
    const table = uniqueTable()
    await admin.unsafe(postgresSchema(table))
    await admin.unsafe(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${table}_heads, ${table}_keks TO kms_pw`)
    const good = postgresStore(client(url), { table })
    expect(await good.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    const errors: unknown[] = []
    for (const [u, retryable] of [[wrong, false], [down, true]] as const) {
      const store = postgresStore(client(u, { connect_timeout: 5 }), { table })
      const error = await store.getHead('c').catch((e: unknown) => e)
      expect(error).toBeInstanceOf(KmsProxyError)
      expect(error).toMatchObject({ code: 'ERR_STORE', retryable })
      errors.push(error)
      errors.push(await KeyChain.open({ rootKey: aesRootKey(ROOT), store, watch: false }).catch((e: unknown) => e))
      expect(JSON.stringify(store)).not.toMatch(/pw/)
    }
    // Creating the tables as a role without CREATE on the schema: refused, typed, not retryable.
    errors.push(await postgresStore(client(url), { table: uniqueTable() }).getHead('c').catch((e: unknown) => e))
    expect(errors[4]).toMatchObject({ code: 'ERR_STORE', retryable: false })
    expect(String((errors[4] as Error).message)).toMatch(/42501/)
    for (const error of errors) {
      expect(error).toBeInstanceOf(KmsProxyError)
      const seen = [String(error), (error as Error).stack, JSON.stringify(error), JSON.stringify((error as { cause?: unknown }).cause ?? null)].join('\n')
      expect(seen).not.toContain(PW_ROLE_PASSWORD)
      expect(seen).not.toContain(encodeURIComponent(PW_ROLE_PASSWORD))
      expect(seen).not.toContain('Wr0ng-pw')
    }
    console.log(`errors without passwords: ${errors.map((e) => (e as Error).message).join(' | ')}`)
  })
})
