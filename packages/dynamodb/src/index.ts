/**
 * A KeyStore on Amazon DynamoDB over `fetch`, signed with the SigV4 signer of
 * `@kms-proxy/kms` (no AWS SDK at run time): one key chain shared by many processes, every head
 * change a conditional write, every read strongly consistent.
 *
 * - One table, partition key `pk` (S) = `prefix` + the chain name (`encodeURIComponent`), sort
 *   key `sk` (S): `head` for the chain head, `kek/<id as 10 digits>/<root>` for each KEK record.
 * - casHead: one PutItem with `attribute_not_exists(pk)` (no head yet) or `#v = :v` on the
 *   head's version counter; putKekIfAbsent: one PutItem with `attribute_not_exists(pk)`. A
 *   `ConditionalCheckFailedException` is `false`, never an error: `atomic: true`.
 * - Reads: GetItem and Query with `ConsistentRead: true`; Query pages through
 *   `LastEvaluatedKey`.
 *
 * No `node:` imports: fetch, TextEncoder and crypto.subtle only.
 *
 * @example
 * ```ts
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { dynamoDbStore } from '@kms-proxy/dynamodb'
 * const store = dynamoDbStore({ table: 'kms-proxy', region: 'eu-central-1', credentials })
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store, name: 'orders' })
 * const encrypted = await chain.encrypt('hello') // any process on the same table and root key decrypts it
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/dynamodb
 */
import { checkRootName as checkRoot, checkKekId as checkId, checkChainName as checkChain, DEFAULT_ROOT, StoreError, checkServerUrl, fromBase64, isRootName, parseChainHead, rootOf, toBase64, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'
import type { AwsCredentials } from '@kms-proxy/kms'
import { DynamoDbAnswerError, dynamoDbCall, type ClientSettings } from './_client.js'

export type { AwsCredentials } from '@kms-proxy/kms'

/**
 * Where the table is and how to reach it: the options {@link dynamoDbStore} and {@link createDynamoDbTable} share.
 *
 * @example
 * ```ts
 * const connection: DynamoDbConnectionOptions = { table: 'kms-proxy', region: 'eu-central-1', credentials: { accessKeyId, secretAccessKey } }
 * ```
 */
export interface DynamoDbConnectionOptions {
  /** The table's name (3 to 255 letters, digits, `_`, `-`, `.`). */
  table: string
  /** The table's AWS region, such as `eu-central-1`. */
  region: string
  /**
   * Static credentials, or a function called before each request (for expiring ones:
   * `awsWebIdentityCredentials`, `awsContainerCredentials`, `awsInstanceCredentials` and
   * `refreshingCredentials` of `@kms-proxy/kms`). A function with `invalidate` is invalidated when
   * DynamoDB refuses the credentials it gave (HTTP 401 or 403, `ExpiredTokenException`,
   * `UnrecognizedClientException`, `InvalidClientTokenId`), and the request is sent once more.
   * Never kept on the store, never in an error.
   */
  credentials: AwsCredentials | (() => Promise<AwsCredentials>)
  /**
   * The DynamoDB endpoint. Plain http only on loopback or a host in `plainHttpHosts`.
   *
   * @defaultValue `https://dynamodb.{region}.amazonaws.com`
   */
  endpoint?: string
  /**
   * Hosts that may be reached over plain `http:` although they are not loopback (over it, anyone
   * on the path reads every record and can answer in DynamoDB's place). Host names only.
   *
   * @defaultValue none: plain http only to loopback
   */
  plainHttpHosts?: string[]
  /**
   * Deadline of each attempt, covering the whole answer (headers and body).
   *
   * @defaultValue 5,000
   */
  timeoutMs?: number
  /**
   * Attempts after the first on throttling (`ProvisionedThroughputExceededException` and its
   * kin), 5xx, timeouts and network errors.
   *
   * @defaultValue 3
   */
  retries?: number
  /**
   * First backoff in milliseconds; doubles each retry, with full jitter.
   *
   * @defaultValue 50
   */
  backoffMs?: number
  /**
   * The fetch to use.
   *
   * @defaultValue the global `fetch`
   */
  fetch?: typeof fetch
}

/**
 * Options of {@link dynamoDbStore}.
 *
 * @example
 * ```ts
 * const options: DynamoDbStoreOptions = { table: 'shared-keys', region: 'eu-central-1', credentials, prefix: 'billing/' }
 * ```
 */
export interface DynamoDbStoreOptions extends DynamoDbConnectionOptions {
  /**
   * Put before every chain name in `pk`, so that several apps can share one table.
   *
   * @defaultValue `'kms-proxy/'`
   */
  prefix?: string
}

/**
 * The store {@link dynamoDbStore} returns: a `KeyStore` with compare-and-swap that never embeds KEKs.
 *
 * @example
 * ```ts
 * const store: DynamoDbStore = dynamoDbStore({ table: 'kms-proxy', region: 'eu-central-1', credentials })
 * console.log(JSON.stringify(store)) // {"kind":"dynamodb","table":"kms-proxy",…}: never a credential
 * ```
 */
export interface DynamoDbStore extends KeyStore {
  /** Always true: the head changes only by a conditional PutItem. */
  readonly atomic: true
  /** Always false: data names its KEK by id; the wrapped KEK lives in the table. */
  readonly embedsKeks: false
}

// ------------------------------------------------------------------------------------ checks

const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)
/** A head version this store hands out: the decimal counter `v`, from 1. */
const isVersion = (v: unknown): v is string => typeof v === 'string' && /^[1-9][0-9]{0,14}$/.test(v)

/** A head read, or about to be written, checked and copied by core's one parser. */
function checkHead(v: unknown): ChainHead {
  const head = parseChainHead(v)
  if (!head) throw new StoreError('DynamoDB store: the chain head is malformed')
  return head
}

/** Checks the connection options and turns them into the client's settings. */
function settingsOf(options: DynamoDbConnectionOptions): ClientSettings {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { table, region, credentials } = options
  if (typeof table !== 'string' || !/^[A-Za-z0-9_.-]{3,255}$/.test(table)) throw new TypeError('table: expected a DynamoDB table name (3 to 255 letters, digits, "_", "-", ".")')
  if (typeof region !== 'string' || !/^[a-z0-9-]+$/.test(region)) throw new TypeError('region: expected an AWS region such as eu-central-1')
  if (typeof credentials !== 'function' && (typeof credentials?.accessKeyId !== 'string' || typeof credentials?.secretAccessKey !== 'string')) {
    throw new TypeError('credentials: expected { accessKeyId, secretAccessKey, sessionToken? } or a function returning them')
  }
  const endpoint = checkServerUrl(options.endpoint ?? `https://dynamodb.${region}.amazonaws.com`, 'endpoint', options.plainHttpHosts)
  const timeoutMs = options.timeoutMs ?? 5000
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new RangeError('timeoutMs: expected a positive number')
  const retries = options.retries ?? 3
  if (!Number.isInteger(retries) || retries < 0 || retries > 20) throw new RangeError('retries: expected an integer from 0 to 20')
  const backoffMs = options.backoffMs ?? 50
  if (typeof backoffMs !== 'number' || !(backoffMs >= 0) || !Number.isFinite(backoffMs)) throw new RangeError('backoffMs: expected a number of milliseconds, 0 or more')
  if (options.fetch !== undefined && typeof options.fetch !== 'function') throw new TypeError('fetch: expected a function')
  if (options.fetch === undefined && typeof globalThis.fetch !== 'function') throw new TypeError('fetch: expected a function (no global fetch here)')
  return { region, endpoint, credentials, timeoutMs, retries, backoffMs, clock: { offsetMs: 0 }, ...(options.fetch ? { fetch: options.fetch } : {}) }
}

// ------------------------------------------------------------------------------------ items

type AttributeValue = { S?: unknown; N?: unknown; B?: unknown }
type Item = Record<string, AttributeValue | undefined>

const SK_HEAD = 'head'
const pad10 = (id: number) => String(id).padStart(10, '0')
/** The sort key of a KEK record: ids have a fixed width, so `kek/0000000012/` never reaches id 123's. */
const kekSk = (id: number, root: string) => `kek/${pad10(id)}/${root}`
const KEK_SK = /^kek\/([0-9]{10})\/([A-Za-z0-9._-]{1,64})$/

const str = (item: Item, name: string) => (typeof item[name]?.S === 'string' ? (item[name]!.S as string) : undefined)
/** A DynamoDB number attribute as a JS number, or undefined when absent or not a decimal number. */
function num(item: Item, name: string): number | undefined {
  const n = item[name]?.N
  return typeof n === 'string' && /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/.test(n) ? Number(n) : undefined
}

/** A KEK record item, checked field by field: its `id` and `root` must be those of its sort key. */
function recordOf(item: Item): KekRecord | undefined {
  const sk = str(item, 'sk')
  const m = sk === undefined ? null : KEK_SK.exec(sk)
  if (!m) return undefined // no KEK record of any version (another app's item under its own sk): left alone
  const id = Number(m[1])
  const root = m[2]!
  const malformed = () => new StoreError(`DynamoDB store: the KEK record ${id} (root ${root}) is malformed`)
  const createdAt = num(item, 'createdAt')
  const rootKind = str(item, 'rootKind')
  const named = root === DEFAULT_ROOT ? item.root === undefined : str(item, 'root') === root
  if (!isU32(id) || id === 0 || num(item, 'id') !== id || !named || !isTime(createdAt) || rootKind === undefined || typeof item.wrapped?.B !== 'string') throw malformed()
  let wrapped: Uint8Array
  try {
    wrapped = fromBase64(item.wrapped.B)
  } catch {
    throw malformed()
  }
  if (wrapped.length === 0) throw malformed()
  return Object.freeze({ id, createdAt, rootKind, wrapped, ...(root === DEFAULT_ROOT ? {} : { root }) })
}

/**
 * A KeyStore on one DynamoDB table (partition key `pk` S, sort key `sk` S; make it with
 * {@link createDynamoDbTable}). `atomic: true`: the head changes only by a conditional PutItem,
 * so many processes on many machines share one chain and its usage limit. A rotation costs 4
 * requests (one Query, two conditional PutItems, one GetItem), an unlock 2 (GetItem, Query),
 * a message none.
 *
 * The IAM principal needs `dynamodb:GetItem`, `dynamodb:PutItem`, `dynamodb:Query` and
 * `dynamodb:DeleteItem` (removing a root) on the table.
 *
 * @throws TypeError - a missing or malformed option (table, region, credentials, endpoint or
 *   plain http to a host that is neither loopback nor in `plainHttpHosts`, prefix, fetch).
 * @throws RangeError - `timeoutMs`, `retries` or `backoffMs` out of range.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`: `retryable` for
 *   throttling, 5xx, a timeout or no answer (after `retries` more attempts); not retryable when
 *   DynamoDB refused (no table, access denied) or an item is malformed. Its methods reject a bad
 *   argument with TypeError (a chain name, a root name, a head) or RangeError (a KEK id).
 * @example
 * ```ts
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { awsContainerCredentials } from '@kms-proxy/kms'
 * import { dynamoDbStore } from '@kms-proxy/dynamodb'
 *
 * // On ECS or EKS: expiring credentials, refreshed before they expire and when DynamoDB refuses them.
 * const credentials = awsContainerCredentials({ relativeUri: process.env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI })
 * const store = dynamoDbStore({ table: 'kms-proxy', region: 'eu-central-1', credentials })
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store, name: 'orders' })
 * ```
 */
export function dynamoDbStore(options: DynamoDbStoreOptions): DynamoDbStore {
  const settings = settingsOf(options)
  const { table } = options
  const prefix = options.prefix ?? 'kms-proxy/'
  if (typeof prefix !== 'string') throw new TypeError('prefix: expected a string')

  const call = (action: string, payload: unknown) => dynamoDbCall(settings, action, payload)

  /** The chain's partition key: encoded, so that no two chain names meet in one partition. */
  function pkOf(chain: unknown): string {
    try {
      return `${prefix}${encodeURIComponent(checkChain(chain))}`
    } catch (error) {
      if (error instanceof TypeError) throw error
      throw new TypeError('chain: expected well-formed Unicode (no lone surrogate)')
    }
  }

  /** Writes `item` if `condition` holds: true, or false when DynamoDB says the condition failed. */
  async function putIf(item: Record<string, AttributeValue>, condition: string, names?: Record<string, string>, values?: Record<string, AttributeValue>): Promise<boolean> {
    try {
      await call('PutItem', {
        TableName: table,
        Item: item,
        ConditionExpression: condition,
        ...(names ? { ExpressionAttributeNames: names } : {}),
        ...(values ? { ExpressionAttributeValues: values } : {}),
      })
      return true
    } catch (error) {
      if (error instanceof DynamoDbAnswerError && error.type === 'ConditionalCheckFailedException') return false
      throw error
    }
  }

  /** Every item of `pk` whose sort key starts with `skPrefix`, strongly consistent, every page. */
  async function query(pk: string, skPrefix: string): Promise<Item[]> {
    const items: Item[] = []
    let start: unknown
    for (;;) {
      const out = await call('Query', {
        TableName: table,
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :p)',
        ExpressionAttributeValues: { ':pk': { S: pk }, ':p': { S: skPrefix } },
        ConsistentRead: true,
        ...(start === undefined ? {} : { ExclusiveStartKey: start }),
      })
      if (!Array.isArray(out.Items)) throw new StoreError('DynamoDB Query: malformed answer')
      for (const item of out.Items) {
        if (typeof item !== 'object' || item === null) throw new StoreError('DynamoDB Query: malformed answer')
        items.push(item as Item)
      }
      start = out.LastEvaluatedKey
      if (start === undefined) return items
      if (typeof start !== 'object' || start === null) throw new StoreError('DynamoDB Query: malformed LastEvaluatedKey')
    }
  }

  const recordsOf = (items: Item[]) => items.map(recordOf).filter((r): r is KekRecord => r !== undefined)
  const wrapsOf = async (chain: string, id: number) => recordsOf(await query(pkOf(chain), `kek/${pad10(checkId(id))}/`))

  const store: DynamoDbStore = {
    atomic: true,
    embedsKeks: false,

    async getHead(chain): Promise<Versioned<ChainHead> | undefined> {
      const out = await call('GetItem', { TableName: table, Key: { pk: { S: pkOf(chain) }, sk: { S: SK_HEAD } }, ConsistentRead: true })
      if (out.Item === undefined) return undefined
      const item = out.Item as Item
      const version = item.v?.N
      const text = str(item, 'head')
      if (!isVersion(version) || text === undefined) throw new StoreError('DynamoDB store: the chain head is malformed')
      let value: unknown
      try {
        value = JSON.parse(text)
      } catch {
        throw new StoreError('DynamoDB store: the chain head is not JSON')
      }
      return Object.freeze({ value: checkHead(value), version })
    },

    async casHead(chain, expected, next) {
      const pk = pkOf(chain)
      // Core's copy of the head: every field it knows, so a new head field needs no change here.
      const head = parseChainHead(next)
      if (!head) throw new TypeError('next: expected a chain head (primary, primaryCreatedAt, leased, and its optional fields well-formed)')
      const item = (v: number) => ({ pk: { S: pk }, sk: { S: SK_HEAD }, v: { N: String(v) }, head: { S: JSON.stringify(head) } })
      if (expected === undefined) return putIf(item(1), 'attribute_not_exists(pk)')
      if (typeof expected !== 'string') throw new TypeError('expected: a version string or undefined')
      if (!isVersion(expected)) return false // not a version this store handed out: it cannot match
      return putIf(item(Number(expected) + 1), '#v = :v', { '#v': 'v' }, { ':v': { N: expected } })
    },

    async getKek(chain, id) {
      const wraps = await wrapsOf(chain, id)
      // 'default' when there is one, else the first root by name (the sort key's order), so that every reader picks the same.
      return wraps.find((r) => r.root === undefined) ?? wraps.sort((a, b) => (rootOf(a) < rootOf(b) ? -1 : 1))[0]
    },

    async putKekIfAbsent(chain, record) {
      const pk = pkOf(chain)
      const id = checkId(record?.id)
      const root = checkRoot(rootOf(record))
      if (!isTime(record.createdAt) || typeof record.rootKind !== 'string' || !(record.wrapped instanceof Uint8Array) || record.wrapped.length === 0) {
        throw new TypeError('record: expected a KekRecord')
      }
      // The 'default' record has no root attribute, as core's records without a root.
      const item: Record<string, AttributeValue> = {
        pk: { S: pk },
        sk: { S: kekSk(id, root) },
        id: { N: String(id) },
        createdAt: { N: String(record.createdAt) },
        rootKind: { S: record.rootKind },
        wrapped: { B: toBase64(record.wrapped) },
        ...(root === DEFAULT_ROOT ? {} : { root: { S: root } }),
      }
      return putIf(item, 'attribute_not_exists(pk)')
    },

    async listKeks(chain) {
      return recordsOf(await query(pkOf(chain), 'kek/'))
    },

    getKekWraps: wrapsOf,

    async deleteKekWrap(chain, id, root) {
      // One item by its full key: never another root's record.
      await call('DeleteItem', { TableName: table, Key: { pk: { S: pkOf(chain) }, sk: { S: kekSk(checkId(id), checkRoot(root)) } } })
    },
  }
  // What a log line may show: where the store is, never how it signs.
  const described = { kind: 'dynamodb', table, region: settings.region, endpoint: settings.endpoint.origin, prefix }
  Object.defineProperties(store, {
    toString: { value: () => `[KeyStore dynamodb ${table}]` },
    toJSON: { value: () => described },
  })
  return Object.freeze(store)
}

/**
 * Options of {@link createDynamoDbTable}.
 *
 * @example
 * ```ts
 * await createDynamoDbTable({ table: 'kms-proxy', region: 'eu-central-1', credentials, waitMs: 120_000 })
 * ```
 */
export interface CreateDynamoDbTableOptions extends DynamoDbConnectionOptions {
  /**
   * How long to wait for the table to become `ACTIVE` (DescribeTable once a second).
   *
   * @defaultValue 60,000
   */
  waitMs?: number
}

/**
 * Creates the table {@link dynamoDbStore} uses, if it does not exist: partition key `pk` (S),
 * sort key `sk` (S), on-demand capacity (`PAY_PER_REQUEST`); then waits until it is `ACTIVE`.
 * Resolves `true` when it created the table, `false` when a table of that name was already there.
 * The IAM principal needs `dynamodb:CreateTable` and `dynamodb:DescribeTable`; the same table can
 * be made by CloudFormation or Terraform instead (see the README).
 *
 * @throws TypeError - as {@link dynamoDbStore}; RangeError - `waitMs` not a positive number.
 * @throws {@link @kms-proxy/core!StoreError} - `ERR_STORE`: DynamoDB refused, or the table was
 *   not `ACTIVE` within `waitMs` (retryable).
 * @example
 * ```ts
 * await createDynamoDbTable({ table: 'kms-proxy', region: 'eu-central-1', credentials })
 * ```
 */
export async function createDynamoDbTable(options: CreateDynamoDbTableOptions): Promise<boolean> {
  const settings = settingsOf(options)
  const waitMs = options.waitMs ?? 60_000
  if (typeof waitMs !== 'number' || !(waitMs > 0) || !Number.isFinite(waitMs)) throw new RangeError('waitMs: expected a positive number')
  let created = true
  try {
    await dynamoDbCall(settings, 'CreateTable', {
      TableName: options.table,
      AttributeDefinitions: [
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ],
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
    })
  } catch (error) {
    if (!(error instanceof DynamoDbAnswerError && error.type === 'ResourceInUseException')) throw error
    created = false
  }
  const deadline = Date.now() + waitMs
  for (;;) {
    const out = await dynamoDbCall(settings, 'DescribeTable', { TableName: options.table })
    if ((out.Table as { TableStatus?: unknown } | undefined)?.TableStatus === 'ACTIVE') return created
    if (Date.now() >= deadline) throw new StoreError(`DynamoDB table ${options.table} is not ACTIVE after ${waitMs} ms`, { retryable: true })
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
}
