/**
 * A KeyStore on PostgreSQL through the `postgres` driver (npm `postgres`, 3.4 or later), which
 * runs on Node, Deno, Bun and Cloudflare Workers. The caller makes the `sql` instance (host,
 * password, TLS, pool size are the driver's options); the store only sends queries through it.
 *
 * - Two tables, `<table>_heads` and `<table>_keks` (`table` defaults to `kms_proxy`), created on
 *   first use unless `migrate: false` (the README gives the same SQL as a migration).
 * - casHead is one statement: `UPDATE … SET head, version = version + 1 WHERE chain = $1 AND
 *   version = $2` (one row: true) or, for a chain without a head, `INSERT … ON CONFLICT DO
 *   NOTHING`. PostgreSQL re-checks the `WHERE` of a row another transaction changed meanwhile,
 *   so two swaps from one version never both succeed: `atomic: true`.
 * - KEK records: `INSERT … ON CONFLICT DO NOTHING` keyed by (chain, id, root): put-if-absent,
 *   never overwritten.
 * - Give it a driver instance made with `fetch_types: false`: with the default, a connection
 *   reset during the driver's array-type lookup is an unhandled rejection (postgres 3.4.9),
 *   which ends a Node process; the store needs no array types. See the README.
 * - No watchHead: a chain reads the head at least every `maxStalenessMs`. (The driver's
 *   `sql.listen`, tried for it, crashed a process with an unhandled ECONNRESET or kept it from
 *   exiting after a server restart; see the README.)
 * - Every failure is a `StoreError`: `retryable` for a lost connection, a server shutting down
 *   or starting up, too many connections, a serialization failure or a cancelled statement.
 *   Messages carry the SQLSTATE and the server's message, never the connection's options.
 *
 * No `node:` imports and no import of the driver itself (its type only): the package loads
 * wherever the caller's `sql` works.
 *
 * @example
 * ```ts
 * import postgres from 'postgres'
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { postgresStore } from '@kms-proxy/postgres'
 * const sql = postgres(process.env.KMS_PROXY_POSTGRES_URL!, { fetch_types: false })
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store: postgresStore(sql), name: 'orders' })
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/postgres
 */
import { checkChainName, checkRootName as checkRoot, checkKekId as checkId, DEFAULT_ROOT, StoreError, isRootName, parseChainHead, rootOf, toHex, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'

/** A query as the `postgres` driver returns it: a promise of rows that can also answer plain value arrays. */
export interface PostgresQuery extends PromiseLike<ArrayLike<unknown> & { count: number | null }> {
  /** The rows as arrays of values (what the store reads: no column-name transform applies). */
  values(): PromiseLike<ArrayLike<ArrayLike<unknown>>>
}

/**
 * The part of a `postgres` driver instance (`postgres(url, options)`, version 3.4 or later) the
 * store uses. Declared here so that the package needs the driver's code only where the caller
 * made an instance.
 */
export interface PostgresSql {
  /** One statement with `$1`-style parameters (the driver sends them separately from the text). */
  unsafe(query: string, parameters?: never[] | unknown[], options?: { prepare?: boolean }): PostgresQuery
}

/** Options of {@link postgresStore}. */
export interface PostgresStoreOptions {
  /**
   * Base name of the two tables, `<table>_heads` and `<table>_keks`: lowercase letters, digits
   * and `_`, starting with a letter or `_`, at most 57 characters (so that the suffixed names
   * fit PostgreSQL's 63). Two apps sharing a database use two names, or two schemas through the
   * connection's `search_path`.
   *
   * @defaultValue `'kms_proxy'`
   */
  table?: string
  /**
   * Create the tables on first use (`CREATE TABLE IF NOT EXISTS`, behind an advisory lock, so
   * that many processes starting at once do not collide). `false` when the tables come from
   * your own migration (the SQL is in the README) and the store's role may not create tables.
   *
   * @defaultValue true
   */
  migrate?: boolean
}

/** The store {@link postgresStore} returns: a `KeyStore` with compare-and-swap that never embeds KEKs. */
export interface PostgresStore extends KeyStore {
  /** Always true: a conditional UPDATE / INSERT … ON CONFLICT DO NOTHING is a real compare-and-swap. */
  readonly atomic: true
  /** Always false: data names its KEK by id; the wrapped KEK lives in the table. */
  readonly embedsKeks: false
}

// ------------------------------------------------------------------------------------ checks

const TABLE = /^[a-z_][a-z0-9_]{0,56}$/
const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)
const isVersion = (v: unknown): v is string => typeof v === 'string' && /^[1-9][0-9]{0,17}$/.test(v)

/**
 * The chain name as the `chain` column holds it. PostgreSQL text cannot hold NUL, so `\` and
 * NUL are escaped (`\\`, `\0`): one name, one value, and any name without either is stored as
 * it is. A name with an unpaired surrogate is refused: the driver sends UTF-8, where it would
 * become U+FFFD and meet another chain's name (core refuses such names for the same reason).
 */
function chainKey(chain: unknown): string {
  return checkChainName(chain).replace(/[\\\0]/g, (c) => (c === '\\' ? '\\\\' : '\\0'))
}

function fromHexColumn(text: unknown, id: number): Uint8Array {
  if (typeof text !== 'string' || text.length === 0 || text.length % 2 !== 0 || !/^[0-9a-f]*$/.test(text)) {
    throw new StoreError(`postgres store: the KEK record ${id} is malformed`)
  }
  const out = new Uint8Array(text.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16)
  return out
}

// ------------------------------------------------------------------------------------ errors

/** Connection-level failures the driver reports by name (and Node's socket errors): the server may answer later. */
const RETRYABLE_CODES = new Set([
  'CONNECTION_CLOSED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT',
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND',
])

/**
 * SQLSTATEs worth retrying: 08 connection exception, 53 insufficient resources (too many
 * connections), 57P01-57P03 (terminated by an administrator or a crash, starting up or shutting
 * down), 57014 (statement timeout), 40001 / 40P01 (serialization failure, deadlock), 55P03
 * (lock not available).
 */
const RETRYABLE_SQLSTATE = /^(08|53|57P0[123]$|57014$|40001$|40P01$|55P03$)/

/**
 * Any failure of the driver as a StoreError. Only the SQLSTATE (or the driver's error name) and
 * the server's own message are kept: the driver's other fields (host, query parameters) and
 * the error itself (no `cause`) stay out, so nothing of the connection's options can leak.
 */
function storeError(error: unknown, what: string): StoreError {
  if (error instanceof StoreError) return error
  const e = error as { code?: unknown; name?: unknown; message?: unknown } | null
  const code = typeof e?.code === 'string' ? e.code : undefined
  if (e?.name === 'PostgresError' && code !== undefined) {
    const message = typeof e.message === 'string' ? e.message.slice(0, 200) : ''
    return new StoreError(`postgres store: ${what}: ${code} ${message}`.trim(), { retryable: RETRYABLE_SQLSTATE.test(code) })
  }
  if (code !== undefined && /^[A-Z0-9_]{1,40}$/.test(code)) {
    return new StoreError(`postgres store: ${what}: ${code}`, { retryable: RETRYABLE_CODES.has(code) })
  }
  return new StoreError(`postgres store: ${what} failed`)
}

// ------------------------------------------------------------------------------------ schema

/**
 * The two tables. Every statement the store sends names them through these, after the name
 * was checked against TABLE: nothing the caller gives is ever spliced into SQL unchecked.
 */
function schemaSql(table: string): string {
  return `CREATE TABLE IF NOT EXISTS ${table}_heads (
  chain text PRIMARY KEY,
  head text NOT NULL,
  version bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS ${table}_keks (
  chain text NOT NULL,
  id bigint NOT NULL,
  root text NOT NULL,
  created_at double precision NOT NULL,
  root_kind text NOT NULL,
  wrapped bytea NOT NULL,
  PRIMARY KEY (chain, id, root)
);`
}

/**
 * One statement, one round trip: nothing when both tables are there (so a role without CREATE
 * on the schema works once they exist), else the advisory lock (many processes starting at
 * once would otherwise race in the catalog: "duplicate key value violates unique constraint
 * pg_type_typname_nsp_index") and the CREATEs, with the "already exists, skipping" notices
 * silenced for this transaction.
 */
function migrationSql(table: string): string {
  return `DO $kms_proxy$
BEGIN
  IF to_regclass('${table}_heads') IS NULL OR to_regclass('${table}_keks') IS NULL THEN
    PERFORM set_config('client_min_messages', 'warning', true);
    PERFORM pg_advisory_xact_lock(hashtext('kms-proxy schema ${table}'));
    ${schemaSql(table).replace(/\n/g, '\n    ')}
  END IF;
END
$kms_proxy$`
}

/**
 * The SQL that creates the tables of {@link postgresStore} under `table`: what the store runs on
 * first use, for a migration of your own (then `migrate: false`).
 *
 * @throws TypeError - `table` is not a valid base name (see {@link PostgresStoreOptions.table}).
 * @example
 * ```ts
 * await sql.unsafe(postgresSchema('kms_proxy')) // or paste its text into a migration file
 * ```
 */
export function postgresSchema(table = 'kms_proxy'): string {
  return schemaSql(checkTable(table))
}

function checkTable(table: unknown): string {
  if (typeof table !== 'string' || !TABLE.test(table)) {
    throw new TypeError('table: expected 1 to 57 lowercase letters, digits or "_", not starting with a digit')
  }
  return table
}

// ------------------------------------------------------------------------------------ store

/**
 * A KeyStore on PostgreSQL through a `postgres` driver instance. `atomic: true`: the head changes
 * only by a conditional UPDATE (or INSERT … ON CONFLICT DO NOTHING), so many processes share one
 * chain and its usage limit. The store never ends `sql`: the caller does (`await sql.end()`).
 *
 * @throws TypeError - `sql` is not a driver instance, `table` not a valid name, `migrate` not a boolean.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`: `retryable` when
 *   the server may answer later (a lost connection, a restart, too many connections); not
 *   retryable when it refused (permission denied, a missing table with `migrate: false`) or a
 *   row is malformed.
 * @example
 * ```ts
 * import postgres from 'postgres'
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { postgresStore } from '@kms-proxy/postgres'
 *
 * const sql = postgres(process.env.KMS_PROXY_POSTGRES_URL!, { max: 4, fetch_types: false })
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store: postgresStore(sql, { table: 'app_keys' }), name: 'orders' })
 * ```
 */
export function postgresStore(sql: PostgresSql, options: PostgresStoreOptions = {}): PostgresStore {
  if ((typeof sql !== 'function' && typeof sql !== 'object') || sql === null || typeof sql.unsafe !== 'function') {
    throw new TypeError('sql: expected a postgres driver instance (postgres(url))')
  }
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const table = options.table === undefined ? 'kms_proxy' : checkTable(options.table)
  const migrate = options.migrate === undefined ? true : options.migrate
  if (typeof migrate !== 'boolean') throw new TypeError('migrate: expected a boolean')
  const heads = `${table}_heads`
  const keks = `${table}_keks`

  let migrated: Promise<void> | undefined
  /** The tables, once per store instance; a failed attempt is tried again by the next call. */
  function ready(): Promise<void> {
    if (!migrate) return Promise.resolve()
    migrated ??= Promise.resolve(sql.unsafe(migrationSql(table))).then(
      () => undefined,
      (error: unknown) => {
        migrated = undefined
        throw storeError(error, 'creating the tables')
      },
    )
    return migrated
  }

  /** A write: the number of rows it touched. */
  async function write(what: string, text: string, parameters: unknown[]): Promise<number> {
    await ready()
    try {
      const result = await sql.unsafe(text, parameters, { prepare: true })
      return result.count ?? 0
    } catch (error) {
      throw storeError(error, what)
    }
  }

  /** A read: rows as value arrays. */
  async function read(what: string, text: string, parameters: unknown[]): Promise<ArrayLike<ArrayLike<unknown>>> {
    await ready()
    try {
      return await sql.unsafe(text, parameters, { prepare: true }).values()
    } catch (error) {
      throw storeError(error, what)
    }
  }

  // Every text column is read back as text and the bytes as hex, so that no type parser the
  // caller configured (bigint as BigInt, bytea as Buffer) changes what the store sees.
  const RECORD_COLUMNS = `id::text, root, created_at::text, root_kind, encode(wrapped, 'hex')`

  function recordOf(row: ArrayLike<unknown>, expectedId?: number): KekRecord {
    const [idText, root, createdText, rootKind, wrappedHex] = Array.from(row)
    const id = typeof idText === 'string' && /^[0-9]{1,10}$/.test(idText) ? Number(idText) : NaN
    const createdAt = typeof createdText === 'string' ? Number(createdText) : NaN
    if (!isU32(id) || id === 0 || (expectedId !== undefined && id !== expectedId) || !isRootName(root) || !isTime(createdAt) || typeof rootKind !== 'string') {
      throw new StoreError(`postgres store: the KEK record ${expectedId ?? String(idText).slice(0, 12)} is malformed`)
    }
    const wrapped = fromHexColumn(wrappedHex, id)
    return Object.freeze({ id, createdAt, rootKind, wrapped, ...(root === DEFAULT_ROOT ? {} : { root }) })
  }

  async function wrapsOf(chain: string, id: number): Promise<KekRecord[]> {
    const key = chainKey(chain)
    checkId(id)
    const rows = await read('reading a KEK', `SELECT ${RECORD_COLUMNS} FROM ${keks} WHERE chain = $1 AND id = $2 ORDER BY root`, [key, id])
    return Array.from(rows, (row) => recordOf(row, id))
  }

  const store: PostgresStore = {
    atomic: true,
    embedsKeks: false,

    async getHead(chain): Promise<Versioned<ChainHead> | undefined> {
      const rows = await read('reading the head', `SELECT head, version::text FROM ${heads} WHERE chain = $1`, [chainKey(chain)])
      const row = rows[0]
      if (!row) return undefined
      const [text, version] = Array.from(row)
      if (!isVersion(version)) throw new StoreError('postgres store: the chain head has no valid version')
      let value: unknown
      try {
        value = JSON.parse(String(text))
      } catch {
        throw new StoreError('postgres store: the chain head is not JSON')
      }
      const head = parseChainHead(value)
      if (!head) throw new StoreError('postgres store: the chain head is malformed')
      return Object.freeze({ value: head, version })
    },

    async casHead(chain, expected, next) {
      const key = chainKey(chain)
      // Core's copy of the head: every field it knows, so a new head field needs no change here.
      const head = parseChainHead(next)
      if (!head) throw new TypeError('next: expected a chain head (primary, primaryCreatedAt, leased, and its optional fields well-formed)')
      const value = JSON.stringify(head)
      if (expected === undefined) {
        const inserted = `INSERT INTO ${heads} (chain, head, version) VALUES ($1, $2, 1) ON CONFLICT (chain) DO NOTHING`
        return (await write('writing the head', inserted, [key, value])) === 1
      }
      if (typeof expected !== 'string') throw new TypeError('expected: a version string or undefined')
      if (!isVersion(expected)) return false // not a version this store handed out: it cannot match
      const updated = `UPDATE ${heads} SET head = $2, version = version + 1 WHERE chain = $1 AND version = $3`
      return (await write('writing the head', updated, [key, value, expected])) === 1
    },

    async getKek(chain, id) {
      const wraps = await wrapsOf(chain, id)
      // 'default' when there is one, else the first root by name (the query's order), so that every reader picks the same.
      return wraps.find((r) => r.root === undefined) ?? wraps[0]
    },

    async putKekIfAbsent(chain, record) {
      const key = chainKey(chain)
      const id = checkId(record?.id)
      const root = checkRoot(rootOf(record))
      if (!isTime(record.createdAt) || typeof record.rootKind !== 'string' || !(record.wrapped instanceof Uint8Array) || record.wrapped.length === 0) {
        throw new TypeError('record: expected a KekRecord')
      }
      const text = `INSERT INTO ${keks} (chain, id, root, created_at, root_kind, wrapped) VALUES ($1, $2, $3, $4, $5, decode($6, 'hex')) ON CONFLICT DO NOTHING`
      return (await write('writing a KEK', text, [key, id, root, record.createdAt, record.rootKind, toHex(record.wrapped)])) === 1
    },

    async listKeks(chain) {
      const rows = await read('listing KEKs', `SELECT ${RECORD_COLUMNS} FROM ${keks} WHERE chain = $1 ORDER BY id, root`, [chainKey(chain)])
      return Array.from(rows, (row) => recordOf(row))
    },

    getKekWraps: wrapsOf,

    async deleteKekWrap(chain, id, root) {
      await write('deleting a KEK wrap', `DELETE FROM ${keks} WHERE chain = $1 AND id = $2 AND root = $3`, [chainKey(chain), checkId(id), checkRoot(root)])
    },

  }
  return Object.freeze(store)
}
