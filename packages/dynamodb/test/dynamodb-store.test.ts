import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { createHarness, describeStore, type TestResult } from '@kms-proxy/testkit'
import { join } from 'node:path'
import { bundle } from '../../indexeddb/test/serve.ts'
import { dynamoDbStore } from '../src/index.ts'
import { CREDENTIALS, REGION, rawCall, startMotoDynamoDb, type MotoDynamoDb } from './moto-dynamodb.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
let seq = 0
const uniquePrefix = () => `t${Date.now().toString(36)}-${++seq}/`

let moto: MotoDynamoDb
beforeAll(async () => {
  moto = await startMotoDynamoDb()
}, 120_000)
afterAll(async () => {
  await moto?.stop()
})

const open = (prefix: string, extra: Partial<Parameters<typeof dynamoDbStore>[0]> = {}) =>
  dynamoDbStore({ table: moto.table, region: REGION, credentials: CREDENTIALS, endpoint: moto.endpoint, prefix, ...extra })

describe('dynamoDbStore on moto', () => {
  describeStore(createHarness(it), {
    name: 'dynamodb',
    severalRoots: true,
    async open() {
      const prefix = uniquePrefix()
      return { store: open(prefix), another: () => open(prefix) }
    },
  })

  it('keeps the layout: pk = prefix + encoded chain, sk head / kek/<10 digits>/<root>, the version a counter; chain names cannot collide', async () => {
    const prefix = uniquePrefix()
    const store = open(prefix)
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'lay/out', watch: false })
    const e = await chain.encrypt('x')
    const id = ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
    const pk = `${prefix}lay%2Fout`
    const head = await rawCall(moto, 'GetItem', { TableName: moto.table, Key: { pk: { S: pk }, sk: { S: 'head' } }, ConsistentRead: true })
    expect(JSON.parse(head.Item.head.S)).toMatchObject({ primary: id })
    expect((await store.getHead('lay/out'))!.version).toBe(head.Item.v.N)
    const sk = `kek/${String(id).padStart(10, '0')}/default`
    const kek = await rawCall(moto, 'GetItem', { TableName: moto.table, Key: { pk: { S: pk }, sk: { S: sk } }, ConsistentRead: true })
    // The 'default' record has no root attribute.
    expect(Object.keys(kek.Item).sort()).toEqual(['createdAt', 'id', 'pk', 'rootKind', 'sk', 'wrapped'])
    // "a" + "b/c" and "a/b" + "c": prefix and chain never meet in one partition.
    const a = open('a')
    const ab = open('a/b')
    expect(await a.putKekIfAbsent('b/c', { id: 1, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([1]) })).toBe(true)
    expect(await ab.putKekIfAbsent('c', { id: 1, createdAt: 2, rootKind: 'aes', wrapped: new Uint8Array([2]) })).toBe(true)
    expect((await a.listKeks('b/c')).map((r) => r.createdAt)).toEqual([1])
    expect((await ab.listKeks('c')).map((r) => r.createdAt)).toEqual([2])
    // Bad arguments are TypeError / RangeError, and nothing is sent.
    await expect(store.getHead('')).rejects.toThrow(TypeError)
    await expect(store.getHead('\ud800')).rejects.toThrow(TypeError)
    await expect(store.putKekIfAbsent('c', { id: 1, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([1]), root: 'no/slash' })).rejects.toThrow(TypeError)
    await expect(store.deleteKekWrap!('c', 1, '')).rejects.toThrow(TypeError)
    await expect(store.getKek('c', 0)).rejects.toThrow(RangeError)
    await expect(store.casHead('c', undefined, { primary: -1 } as never)).rejects.toThrow(TypeError)
    expect(await store.casHead('c', 'not-a-version', { primary: 1, primaryCreatedAt: 1, leased: 0 })).toBe(false)
    chain.close()
  })

  it('compare-and-swap under contention: of 16 handles swapping from one version at once, exactly one wins, 20 rounds in a row; of 16 puts of one KEK id, exactly one', async () => {
    const prefix = uniquePrefix()
    const handles = Array.from({ length: 16 }, () => open(prefix))
    const head = (leased: number) => ({ primary: 1, primaryCreatedAt: 1, leased })
    expect(await handles[0]!.casHead('race', undefined, head(0))).toBe(true)
    const ROUNDS = 20
    const winners: number[] = []
    for (let round = 0; round < ROUNDS; round++) {
      const { version } = (await handles[0]!.getHead('race'))!
      const results = await Promise.all(handles.map((h, i) => h.casHead('race', version, head(round * 100 + i + 1))))
      winners.push(results.filter(Boolean).length)
    }
    expect(winners).toEqual(Array(ROUNDS).fill(1))
    expect((await handles[0]!.getHead('race'))!.version).toBe(String(ROUNDS + 1))
    const puts = await Promise.all(handles.map((h, i) => h.putKekIfAbsent('race', { id: 5, createdAt: i, rootKind: 'aes', wrapped: new Uint8Array([i + 1]) })))
    expect(puts.filter(Boolean).length).toBe(1)
    expect((await handles[0]!.getKek('race', 5))!.wrapped).toEqual(new Uint8Array([puts.indexOf(true) + 1]))
  })

  it('a malformed head or KEK record is a non-retryable ERR_STORE', async () => {
    const prefix = uniquePrefix()
    const pk = `${prefix}c`
    const put = (Item: object) => rawCall(moto, 'PutItem', { TableName: moto.table, Item })
    await put({ pk: { S: pk }, sk: { S: 'head' }, v: { N: '1' }, head: { S: '{"primary":"nope"}' } })
    await put({ pk: { S: `${prefix}d` }, sk: { S: 'head' }, v: { N: '1' }, head: { S: 'not json' } })
    // Wrapped bytes as a string, not a binary attribute (moto stores binary values canonically, so a non-canonical base64 cannot be planted).
    await put({ pk: { S: pk }, sk: { S: 'kek/0000000007/default' }, id: { N: '7' }, createdAt: { N: '1' }, rootKind: { S: 'aes' }, wrapped: { S: 'AQIDBA==' } })
    // A record copied to another id's key.
    await put({ pk: { S: pk }, sk: { S: 'kek/0000000008/default' }, id: { N: '9' }, createdAt: { N: '1' }, rootKind: { S: 'aes' }, wrapped: { B: 'AQIDBA==' } })
    // A 'default' record with a root attribute.
    await put({ pk: { S: `${prefix}e` }, sk: { S: 'kek/0000000001/default' }, id: { N: '1' }, createdAt: { N: '1' }, rootKind: { S: 'aes' }, wrapped: { B: 'AQIDBA==' }, root: { S: 'x' } })
    const store = open(prefix)
    for (const call of [() => store.getHead('c'), () => store.getHead('d'), () => store.getKek('c', 7), () => store.getKek('c', 8), () => store.listKeks('c'), () => store.listKeks('e')]) {
      const error = await call().catch((e: unknown) => e)
      expect(error).toBeInstanceOf(KmsProxyError)
      expect(error).toMatchObject({ code: 'ERR_STORE', retryable: false })
    }
  })
})

describe('dynamoDbStore in workerd (Miniflare), unchanged', () => {
  it('passes describeStore with several roots', async () => {
    const { Miniflare } = await import('miniflare')
    // Bundled from the sources (the browser tests' esbuild helper): fetch, crypto.subtle, no node: imports.
    const script = new TextDecoder().decode(await bundle(join(import.meta.dirname, 'portable', 'worker.ts')))
    const mf = new Miniflare({ modules: true, script, compatibilityDate: '2026-05-01' })
    try {
      const response = await mf.dispatchFetch(`http://localhost/?endpoint=${encodeURIComponent(moto.endpoint)}&table=${moto.table}`)
      const body = await response.text()
      if (!response.ok) throw new Error(`worker answered ${response.status}: ${body.slice(0, 2000)}`)
      const results = JSON.parse(body) as TestResult[]
      expect(results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)).toEqual([])
      expect(results.length).toBe(19) // describeStore's contract with several roots (watchHead: absent)
      console.log(`workerd: ${results.length} contract tests passed`)
    } finally {
      await mf.dispose()
    }
  }, 120_000)
})
