/**
 * The store against AWS's own client and protocol: the SDK (@aws-sdk/client-dynamodb) reads what
 * the store wrote and the store reads what the SDK wrote, on one moto; the store's SigV4
 * Authorization equals the SDK's for the same request; throttling, 5xx and silence are retryable
 * StoreErrors; an expired token is refreshed once; listKeks pages past moto's 1 MB page.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DynamoDBClient, GetItemCommand, PutItemCommand, QueryCommand } from '@aws-sdk/client-dynamodb'
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { refreshingCredentials, signV4, type AwsCredentials } from '@kms-proxy/kms'
import { createDynamoDbTable, dynamoDbStore, type DynamoDbStoreOptions } from '../src/index.ts'
import { startFake, type FakeServer } from './http-fakes.ts'
import { CREDENTIALS, REGION, startMotoDynamoDb, type MotoDynamoDb } from './moto-dynamodb.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
let seq = 0
const uniquePrefix = () => `aws${Date.now().toString(36)}-${++seq}/`

let moto: MotoDynamoDb
const fakes: FakeServer[] = []
beforeAll(async () => {
  moto = await startMotoDynamoDb()
}, 120_000)
afterAll(async () => {
  for (const f of fakes) await f.close()
  await moto?.stop()
})

const open = (prefix: string, extra: Partial<DynamoDbStoreOptions> = {}) =>
  dynamoDbStore({ table: moto.table, region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint, prefix, ...extra })
const sdk = () => new DynamoDBClient({ region: REGION, endpoint: moto.endpoint, credentials: { ...CREDENTIALS }, maxAttempts: 1 }) // a copy: the SDK marks the object it is given
async function fake(...args: Parameters<typeof startFake>) {
  const f = await startFake(...args)
  fakes.push(f)
  return f
}

describe('checked against @aws-sdk/client-dynamodb on the same moto', () => {
  it('the SDK reads the items the store wrote: the head, its version and every KEK record byte for byte', async () => {
    const prefix = uniquePrefix()
    const store = open(prefix)
    // No DEK pool: it would reserve uses in the background, writing the head between the two reads below.
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'orders', maxWrapsPerKek: 3, leaseSize: 1, dekPoolSize: 0 })
    for (let i = 0; i < 7; i++) await chain.encrypt(`m${i}`)
    chain.close()
    const client = sdk()
    const head = await client.send(new GetItemCommand({ TableName: moto.table, Key: { pk: { S: `${prefix}orders` }, sk: { S: 'head' } }, ConsistentRead: true }))
    const ours = (await store.getHead('orders'))!
    expect(head.Item!.v!.N).toBe(ours.version)
    expect(JSON.parse(head.Item!.head!.S!)).toEqual(ours.value)
    const q = await client.send(
      new QueryCommand({
        TableName: moto.table,
        KeyConditionExpression: 'pk = :pk AND begins_with(sk, :p)',
        ExpressionAttributeValues: { ':pk': { S: `${prefix}orders` }, ':p': { S: 'kek/' } },
        ConsistentRead: true,
      }),
    )
    const listed = await store.listKeks('orders')
    expect(listed.length).toBeGreaterThanOrEqual(3)
    expect(q.Items!.length).toBe(listed.length)
    for (const r of listed) {
      const item = q.Items!.find((i) => Number(i.id!.N) === r.id)!
      expect(item.sk!.S).toBe(`kek/${String(r.id).padStart(10, '0')}/default`)
      expect(Number(item.createdAt!.N)).toBe(r.createdAt)
      expect(item.rootKind!.S).toBe(r.rootKind)
      expect(Buffer.from(item.wrapped!.B!).equals(Buffer.from(r.wrapped))).toBe(true)
      expect(item.root).toBeUndefined()
    }
    client.destroy()
  })

  it('the store reads what the SDK wrote, and the SDK\'s conditional writes and the store\'s exclude each other', async () => {
    const prefix = uniquePrefix()
    const pk = `${prefix}c`
    const client = sdk()
    const wrapped = Uint8Array.from({ length: 45 }, (_, i) => i * 3)
    await client.send(new PutItemCommand({ TableName: moto.table, Item: { pk: { S: pk }, sk: { S: 'kek/0000000042/default' }, id: { N: '42' }, createdAt: { N: '1700000000123' }, rootKind: { S: 'aes' }, wrapped: { B: wrapped } } }))
    await client.send(
      new PutItemCommand({ TableName: moto.table, Item: { pk: { S: pk }, sk: { S: 'kek/0000000042/backup.1' }, id: { N: '42' }, root: { S: 'backup.1' }, createdAt: { N: '1700000000123' }, rootKind: { S: 'pbkdf2' }, wrapped: { B: wrapped.slice(1) } } }),
    )
    const head = { primary: 42, primaryCreatedAt: 1700000000123, leased: 5 }
    await client.send(new PutItemCommand({ TableName: moto.table, Item: { pk: { S: pk }, sk: { S: 'head' }, v: { N: '7' }, head: { S: JSON.stringify(head) } }, ConditionExpression: 'attribute_not_exists(pk)' }))
    const store = open(prefix)
    expect(await store.getHead('c')).toEqual({ value: head, version: '7' })
    const kek = (await store.getKek('c', 42))!
    expect(kek).toEqual({ id: 42, createdAt: 1700000000123, rootKind: 'aes', wrapped })
    const wraps = await store.getKekWraps!('c', 42)
    expect(wraps.find((r) => r.root === 'backup.1')).toEqual({ id: 42, root: 'backup.1', createdAt: 1700000000123, rootKind: 'pbkdf2', wrapped: wrapped.slice(1) })
    // The store swaps from the SDK's version; the SDK's swap from the old version then fails, and the store's put-if-absent too.
    expect(await store.casHead('c', '7', { ...head, leased: 10 })).toBe(true)
    const late = await client
      .send(new PutItemCommand({ TableName: moto.table, Item: { pk: { S: pk }, sk: { S: 'head' }, v: { N: '8' }, head: { S: '{}' } }, ConditionExpression: '#v = :v', ExpressionAttributeNames: { '#v': 'v' }, ExpressionAttributeValues: { ':v': { N: '7' } } }))
      .catch((e: Error) => e)
    expect((late as Error).name).toBe('ConditionalCheckFailedException')
    expect(await store.putKekIfAbsent('c', { id: 42, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([9]) })).toBe(false)
    expect(await store.casHead('c', '7', { ...head, leased: 11 })).toBe(false)
    expect(await store.getHead('c')).toEqual({ value: { ...head, leased: 10 }, version: '8' })
    // A chain opened on the SDK-written items reads the SDK-written KEK as it is.
    expect((await store.getKek('c', 42))!.wrapped).toEqual(wrapped)
    client.destroy()
  })

  it('SigV4: the SDK\'s request, captured by a local server and signed by ours with the same date and credentials, has the same Authorization; the store sends the same GetItem', async () => {
    const server = await fake(() => undefined)
    const credentials = { accessKeyId: 'ASIAEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', sessionToken: 'IQoJb3JpZ2luX2VjEXAMPLE//token+/=' }
    const client = new DynamoDBClient({ region: REGION, endpoint: server.endpoint, credentials, maxAttempts: 1 })
    const key = { pk: { S: 'kms-proxy/orders' }, sk: { S: 'head' } }
    await client.send(new GetItemCommand({ TableName: 'kms-proxy', Key: key, ConsistentRead: true }))
    client.destroy()
    const store = dynamoDbStore({ table: 'kms-proxy', region: REGION, credentials, endpoint: server.endpoint })
    expect(await store.getHead('orders')).toBeUndefined()
    const [theirs, ours] = server.seen
    const authorization = String(theirs!.headers.authorization)
    const signed = /SignedHeaders=([^,]+)/.exec(authorization)![1]!.split(';')
    expect(signed).toEqual(expect.arrayContaining(['host', 'x-amz-date', 'x-amz-security-token', 'x-amz-target', 'content-type']))
    const amzDate = String(theirs!.headers['x-amz-date'])
    const date = new Date(`${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`)
    const headers: Record<string, string> = {}
    for (const name of signed) if (!['host', 'x-amz-date', 'x-amz-security-token'].includes(name)) headers[name] = String(theirs!.headers[name])
    const resigned = await signV4({ method: 'POST', url: new URL(server.endpoint), headers, body: theirs!.body, region: REGION, service: 'dynamodb', credentials, date })
    expect(resigned.authorization).toBe(authorization)
    // The store's request is the same call: target, content type, body, and a signature of the same form.
    expect(ours!.headers['x-amz-target']).toBe(theirs!.headers['x-amz-target'])
    expect(ours!.headers['content-type']).toBe(theirs!.headers['content-type'])
    expect(JSON.parse(ours!.body)).toEqual(JSON.parse(theirs!.body))
    expect(ours!.headers['x-amz-security-token']).toBe(credentials.sessionToken)
    expect(String(ours!.headers.authorization)).toMatch(new RegExp(`^AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/\\d{8}/${REGION}/dynamodb/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=[0-9a-f]{64}$`))
  })
})

describe('failures', () => {
  const secret = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY'
  const noSecret = (e: unknown) => {
    expect(String(e)).not.toContain(secret)
    expect(JSON.stringify(e)).not.toContain(secret)
    expect(String((e as Error).stack)).not.toContain(secret)
  }

  it('throttling (ProvisionedThroughputExceededException, ThrottlingException), 5xx, a timeout and a refused connection are retryable StoreErrors after the retries; a passing one is retried', async () => {
    for (const [status, type] of [
      [400, 'ProvisionedThroughputExceededException'],
      [400, 'ThrottlingException'],
      [500, 'InternalServerError'],
      [503, undefined],
    ] as const) {
      const server = await fake(() => ({ status, ...(type ? { type } : {}) }))
      const error = await open('x/', { endpoint: server.endpoint, retries: 2, backoffMs: 1 }).getHead('c').catch((e: unknown) => e)
      expect(error).toBeInstanceOf(KmsProxyError)
      expect(error).toMatchObject({ code: 'ERR_STORE', retryable: true })
      expect(server.seen.length, `${status} ${type}`).toBe(3)
      noSecret(error)
    }
    // Throttled twice, then answered by moto: the call passes.
    const prefix = uniquePrefix()
    const flaky = await fake((_, i) => (i < 2 ? { status: 400, type: 'ProvisionedThroughputExceededException' } : undefined), moto.endpoint)
    const store = open(prefix, { endpoint: flaky.endpoint, retries: 2, backoffMs: 1 })
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect(flaky.seen.length).toBe(3)
    // A server that never answers: the deadline ends it.
    const silent = await fake(() => ({ status: 0, hang: true }))
    const started = Date.now()
    const timeout = await open('x/', { endpoint: silent.endpoint, retries: 0, timeoutMs: 300 }).getHead('c').catch((e: unknown) => e)
    expect(timeout).toMatchObject({ code: 'ERR_STORE', retryable: true })
    expect(String(timeout)).toMatch(/timeout/)
    expect(Date.now() - started).toBeLessThan(10_000)
    const refused = await open('x/', { endpoint: 'http://127.0.0.1:9/', retries: 0, timeoutMs: 2000 }).getHead('c').catch((e: unknown) => e)
    expect(refused).toMatchObject({ code: 'ERR_STORE', retryable: true })
  })

  it('a clock 10 minutes off: the first refusal (InvalidSignatureException, Signature expired) corrects the signing clock from its Date, once; later calls are signed right at once', async () => {
    const prefix = uniquePrefix()
    const SKEW = 10 * 60_000
    const amzTime = (v: unknown) => Date.parse(String(v).replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, '$1-$2-$3T$4:$5:$6Z'))
    // DynamoDB's own check, with its clock 10 minutes ahead of this host's.
    const ahead = await fake((s) => {
      const serverNow = Date.now() + SKEW
      if (Math.abs(amzTime(s.headers['x-amz-date']) - serverNow) <= 5 * 60_000) return undefined
      return { status: 400, type: 'InvalidSignatureException', headers: { date: new Date(serverNow).toUTCString() } }
    }, moto.endpoint)
    const store = open(prefix, { endpoint: ahead.endpoint })
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect(ahead.seen.length).toBe(2)
    expect((await store.getHead('c'))!.version).toBe('1')
    expect(ahead.seen.length).toBe(3)
    // A refusal whose Date is no further off than the clock already is: not sent again.
    const refusing = await fake(() => ({ status: 400, type: 'InvalidSignatureException', headers: { date: new Date().toUTCString() } }))
    expect(await open(prefix, { endpoint: refusing.endpoint }).getHead('c').catch((e: unknown) => e)).toMatchObject({ code: 'ERR_STORE', retryable: false })
    expect(refusing.seen.length).toBe(1)
  })

  it('a failed condition is false, never an error; access denied or a missing table is a non-retryable StoreError, sent once, with no secret; createDynamoDbTable is idempotent', async () => {
    const prefix = uniquePrefix()
    const store = open(prefix)
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 1 })).toBe(false)
    expect(await store.casHead('c', '2', { primary: 1, primaryCreatedAt: 1, leased: 1 })).toBe(false)
    const denied = await fake(() => ({ status: 400, type: 'AccessDeniedException' }))
    const error = await open(prefix, { endpoint: denied.endpoint }).getHead('c').catch((e: unknown) => e)
    expect(error).toMatchObject({ code: 'ERR_STORE', retryable: false })
    expect(denied.seen.length).toBe(1)
    expect(String(error)).toContain('AccessDeniedException')
    noSecret(error)
    const missing = await dynamoDbStore({ table: 'no-such-table', region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint }).getHead('c').catch((e: unknown) => e)
    expect(missing).toMatchObject({ code: 'ERR_STORE', retryable: false })
    expect(String(missing)).toContain('ResourceNotFoundException')
    // The table helper: idempotent, and a new table is usable at once.
    expect(await createDynamoDbTable({ table: moto.table, region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint })).toBe(false)
    expect(await createDynamoDbTable({ table: 'second-table', region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint })).toBe(true)
    expect(await dynamoDbStore({ table: 'second-table', region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint }).casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    // Neither the store nor its description shows a credential.
    expect(JSON.stringify(store)).not.toContain(secret)
    expect(String(store)).not.toContain(secret)
  })

  it('credentials refresh: a refreshingCredentials refused with ExpiredTokenException (400) or UnrecognizedClientException (403) is invalidated and the call sent once more with new ones; at most once', async () => {
    const prefix = uniquePrefix()
    // moto checks no token: the server in front of it refuses the expired one as DynamoDB does (HTTP 400).
    const gate = await fake((s) => (String(s.headers.authorization).includes('Credential=ASIAEXPIRED/') ? { status: 400, type: 'ExpiredTokenException' } : undefined), moto.endpoint)
    const issued: string[] = []
    const next = ['ASIAEXPIRED', 'ASIAFRESH']
    const credentials = refreshingCredentials<AwsCredentials>(async () => {
      const accessKeyId = next.shift() ?? 'ASIAFRESH'
      issued.push(accessKeyId)
      return { value: { accessKeyId, secretAccessKey: secret, sessionToken: `token-of-${accessKeyId}` }, expiresAt: Date.now() + 3_600_000 }
    })
    const store = open(prefix, { endpoint: gate.endpoint, credentials })
    expect(await store.casHead('c', undefined, { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect(issued).toEqual(['ASIAEXPIRED', 'ASIAFRESH'])
    expect(gate.seen.map((s) => /Credential=(\w+)\//.exec(String(s.headers.authorization))![1])).toEqual(['ASIAEXPIRED', 'ASIAFRESH'])
    // The refused write was not applied, the retried one was: the head is there once.
    expect((await store.getHead('c'))!.version).toBe('1')
    // A source that keeps giving refused credentials: one retry, then a non-retryable StoreError.
    const stale = refreshingCredentials<AwsCredentials>(async () => ({ value: { accessKeyId: 'ASIAEXPIRED', secretAccessKey: secret, sessionToken: 'still-expired' } }))
    const before = gate.seen.length
    const error = await open(prefix, { endpoint: gate.endpoint, credentials: stale }).getHead('c').catch((e: unknown) => e)
    expect(error).toMatchObject({ code: 'ERR_STORE', retryable: false })
    expect(String(error)).toContain('ExpiredTokenException')
    expect(String(error)).not.toContain('still-expired')
    noSecret(error)
    expect(gate.seen.length - before).toBe(2)
    // A 403 UnrecognizedClientException (an unknown access key) is refused credentials too.
    const gate403 = await fake((s) => (String(s.headers.authorization).includes('Credential=ASIAUNKNOWN/') ? { status: 403, type: 'UnrecognizedClientException' } : undefined), moto.endpoint)
    const keys = ['ASIAUNKNOWN', 'ASIAFRESH']
    const rotated = refreshingCredentials<AwsCredentials>(async () => ({ value: { accessKeyId: keys.shift() ?? 'ASIAFRESH', secretAccessKey: secret } }))
    expect(await open(prefix, { endpoint: gate403.endpoint, credentials: rotated }).getHead('c')).toMatchObject({ version: '1' })
    expect(gate403.seen.map((s) => /Credential=(\w+)\//.exec(String(s.headers.authorization))![1])).toEqual(['ASIAUNKNOWN', 'ASIAFRESH'])
    // A plain function (no invalidate) is not asked twice for one call.
    const plain = await open(prefix, { endpoint: gate.endpoint, credentials: async () => ({ accessKeyId: 'ASIAEXPIRED', secretAccessKey: secret }) }).getHead('c').catch((e: unknown) => e)
    expect(plain).toMatchObject({ code: 'ERR_STORE', retryable: false })
    expect(gate.seen.length - before).toBe(3)
  })
})

describe('paging and cost', () => {
  it('listKeks pages through LastEvaluatedKey past moto\'s 1 MB page', async () => {
    const prefix = uniquePrefix()
    let queries = 0
    const counting: typeof fetch = async (input, init) => {
      if (String(new Headers(init?.headers).get('x-amz-target')).endsWith('.Query')) queries++
      return fetch(input, init)
    }
    const store = open(prefix, { fetch: counting })
    // 60 records of 24 KiB: about 1.5 MB of items in one partition, more than one 1 MB page.
    const N = 60
    const big = (i: number) => Uint8Array.from({ length: 24 << 10 }, (_, k) => (i + k) & 0xff)
    for (let i = 1; i <= N; i++) expect(await store.putKekIfAbsent('big', { id: i, createdAt: i, rootKind: 'aes', wrapped: big(i), ...(i % 2 ? { root: 'r' } : {}) })).toBe(true)
    queries = 0
    const listed = await store.listKeks('big')
    expect(queries).toBeGreaterThanOrEqual(2)
    console.log(`listKeks: ${N} records of 24 KiB in ${queries} Query pages`)
    expect(listed.map((r) => r.id).sort((a, b) => a - b)).toEqual(Array.from({ length: N }, (_, i) => i + 1))
    for (const r of listed) expect(Buffer.from(r.wrapped).equals(Buffer.from(big(r.id)))).toBe(true)
  })

  it('measures the cost of a rotation, an unlock and a message in requests and ms', async () => {
    const byTarget = new Map<string, number>()
    let total = 0
    const reads: unknown[] = []
    const counting: typeof fetch = async (input, init) => {
      const target = String(new Headers(init?.headers).get('x-amz-target')).split('.').pop()!
      byTarget.set(target, (byTarget.get(target) ?? 0) + 1)
      total++
      if (target === 'GetItem' || target === 'Query') reads.push(JSON.parse(String(init?.body)).ConsistentRead)
      return fetch(input, init)
    }
    const reset = () => {
      byTarget.clear()
      total = 0
    }
    const shape = () => [...byTarget].map(([t, n]) => `${n} ${t}`).join(' + ')
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
    const prefix = uniquePrefix()
    const store = open(prefix, { fetch: counting })
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'cost' })
    await chain.encrypt('warm up')

    const rotations: number[] = []
    const rotationRequests: number[] = []
    let rotationShape = ''
    for (let i = 0; i < 5; i++) {
      reset()
      const t = performance.now()
      await chain.rotate()
      rotations.push(performance.now() - t)
      rotationRequests.push(total)
      rotationShape = shape()
    }
    // An unlock: KeyChain.open on the existing chain, then its first encryption (the primary KEK's record and a lease).
    const unlocks: number[] = []
    const unlockRequests: number[] = []
    const firsts: number[] = []
    const firstRequests: number[] = []
    let unlockShape = ''
    let firstShape = ''
    for (let i = 0; i < 5; i++) {
      reset()
      const t = performance.now()
      const again = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'cost' })
      unlocks.push(performance.now() - t)
      unlockRequests.push(total)
      unlockShape = shape()
      reset()
      const f = performance.now()
      await again.encrypt('first')
      firsts.push(performance.now() - f)
      firstRequests.push(total)
      firstShape = shape()
      again.close()
    }
    await chain.encrypt('warm up again')
    reset()
    const N = 2000
    const t = performance.now()
    for (let i = 0; i < N; i++) await chain.encrypt('a 1 KiB record'.padEnd(1024, '.'))
    const perMessageMs = (performance.now() - t) / N
    expect(total).toBe(0)
    chain.close()
    // Every read is strongly consistent.
    expect(reads.length).toBeGreaterThan(10)
    expect(reads.every((r) => r === true)).toBe(true)
    expect(Math.max(...rotationRequests)).toBeLessThanOrEqual(6)
    expect(Math.max(...unlockRequests)).toBeLessThanOrEqual(3)
    expect(Math.max(...firstRequests)).toBeLessThanOrEqual(3)
    console.log(
      `dynamodb on moto (this VM, 2 cores): rotation ${median(rotationRequests)} requests (${rotationShape}), median ${median(rotations).toFixed(1)} ms; ` +
        `unlock ${median(unlockRequests)} requests (${unlockShape}), median ${median(unlocks).toFixed(1)} ms; ` +
        `its first encryption ${median(firstRequests)} requests (${firstShape}), median ${median(firsts).toFixed(1)} ms; steady state: ${N} encryptions of 1 KiB, ${total} requests, ${(perMessageMs * 1000).toFixed(0)} µs each`,
    )
  })
})
