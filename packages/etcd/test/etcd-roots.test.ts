/**
 * Several roots per chain on a real etcd: where each root's record lives (the 'default' root's
 * at the key every record had before), the range of one id's records, one key deleted at a time,
 * races between handles, and what is refused when read.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { KekRecord } from '@kms-proxy/core'
import { etcdStore } from '../src/index.ts'
import { b64, gateway, haveEtcd, startEtcd, unb64, type EtcdCluster } from './etcd-process.ts'

let seq = 0
const uniquePrefix = () => `roots${Date.now().toString(36)}-${++seq}/`
const rec = (id: number, root: string | undefined, byte: number): KekRecord => ({ id, createdAt: 1000 + id, rootKind: 'aes', wrapped: Uint8Array.of(byte, id & 0xff), ...(root ? { root } : {}) })

describe.skipIf(!haveEtcd)('etcdStore with several roots per chain', () => {
  let etcd: EtcdCluster
  let url: string
  beforeAll(async () => {
    etcd = await startEtcd()
    url = etcd.urls[0]!
  }, 30_000)
  afterAll(async () => {
    await etcd?.stop()
  })
  const keysUnder = async (prefix: string) => {
    const r = await gateway(url, '/v3/kv/range', { key: b64(prefix), range_end: b64(prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)) })
    return (r.kvs ?? []).map((kv: { key: string; value: string; mod_revision: string; create_revision: string }) => ({
      key: unb64(kv.key).toString().slice(prefix.length), value: JSON.parse(unb64(kv.value).toString()), created: kv.create_revision, modified: kv.mod_revision,
    }))
  }

  it('the default record stays at <prefix><chain>/kek/<id>, without root; other roots at <id>/root/<name>, created once', async () => {
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: [url], prefix })
    expect(await store.putKekIfAbsent('c', rec(12, undefined, 1))).toBe(true)
    expect(await store.putKekIfAbsent('c', rec(12, 'recovery', 2))).toBe(true)
    expect(await store.putKekIfAbsent('c', rec(12, 'recovery', 3))).toBe(false)
    const keys = await keysUnder(`${prefix}c/kek/`)
    expect(keys.map((k: { key: string }) => k.key)).toEqual(['0000000c', '0000000c/root/recovery'])
    expect(keys[0].value).toEqual({ id: 12, createdAt: 1012, rootKind: 'aes', wrapped: 'AQw=' })
    expect(keys[1].value).toEqual({ id: 12, root: 'recovery', createdAt: 1012, rootKind: 'aes', wrapped: 'Agw=' })
    for (const k of keys) expect(k.modified).toBe(k.created)
  })

  it('getKekWraps reads only its id\'s keys: neighbours, foreign keys and other chains are left out', async () => {
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: [url], prefix })
    for (const [id, root] of [[12, undefined], [12, 'a'], [1, 'a'], [0x12, 'a'], [0xc0, 'a'], [0x123, undefined]] as const) await store.putKekIfAbsent('c', rec(id, root, 9))
    await store.putKekIfAbsent('c/kek/0000000c', rec(12, 'b', 9))
    // Keys no version of this store writes, under the same id: not records, so not read.
    for (const key of ['0000000c-old', '0000000c/rootx', '0000000c/root/', '0000000c/other/a']) {
      await gateway(url, '/v3/kv/put', { key: b64(`${prefix}c/kek/${key}`), value: b64('not a record') })
    }
    expect((await store.getKekWraps!('c', 12)).map((r) => r.root ?? 'default').sort()).toEqual(['a', 'default'])
    expect((await store.listKeks('c')).map((r) => `${r.id}/${r.root ?? 'default'}`).sort()).toEqual(['1/a', '12/a', '12/default', '18/a', '192/a', '291/default'])
  })

  it('deleteKekWrap deletes that one key: the default record\'s leaves the other roots\' keys, and the reverse', async () => {
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: [url], prefix })
    for (const root of [undefined, 'a', 'b']) await store.putKekIfAbsent('c', rec(12, root, 1))
    await store.deleteKekWrap!('c', 12, 'default')
    expect((await keysUnder(`${prefix}c/kek/`)).map((k: { key: string }) => k.key)).toEqual(['0000000c/root/a', '0000000c/root/b'])
    await store.putKekIfAbsent('c', rec(12, undefined, 2))
    await store.deleteKekWrap!('c', 12, 'a')
    expect((await keysUnder(`${prefix}c/kek/`)).map((k: { key: string }) => k.key)).toEqual(['0000000c', '0000000c/root/b'])
  })

  it('two handles putting the same 25 (id, root) pairs at once: one winner per pair, whose bytes are kept; under two roots: both kept', async () => {
    const prefix = uniquePrefix()
    // 50 writes in flight on a loaded machine: a request past the default 5 s would fail the call.
    const [s1, s2] = [etcdStore({ endpoints: [url], prefix, timeoutMs: 30_000 }), etcdStore({ endpoints: [url], prefix, timeoutMs: 30_000 })]
    const ids = Array.from({ length: 25 }, (_, i) => i + 1)
    const race = (root: [string, string]) => Promise.all([
      Promise.all(ids.map((id) => s1.putKekIfAbsent('c', rec(id, root[0], 1)))),
      Promise.all([...ids].reverse().map((id) => s2.putKekIfAbsent('c', rec(id, root[1], 2)))),
    ])
    const [one, two] = await race(['r', 'r'])
    for (const [i, id] of ids.entries()) {
      const won = [one[i], two[ids.length - 1 - i]]
      expect(won.filter(Boolean), `id ${id}`).toHaveLength(1)
      const kept = await s1.getKekWraps!('c', id)
      expect(kept.map((r) => [r.root, r.wrapped[0]]), `id ${id}`).toEqual([['r', won[0] ? 1 : 2]])
    }
    const [a, b] = await race(['a', 'b'])
    expect([...a, ...b].every(Boolean)).toBe(true)
    for (const id of ids) expect((await s2.getKekWraps!('c', id)).map((r) => r.root).sort(), `id ${id}`).toEqual(['a', 'b', 'r'])
  }, 120_000)

  it('a head keeps its roots; a malformed head or root record read is ERR_STORE, not retryable', async () => {
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: [url], prefix })
    const roots = [{ name: 'default', kind: 'aes', state: 'active' }, { name: 'b', kind: 'aws-kms', state: 'adding' }] as const
    expect(await store.casHead('h', undefined, { primary: 1, primaryCreatedAt: 2, leased: 3, roots })).toBe(true)
    const [raw] = await keysUnder(`${prefix}h/`)
    expect(raw.value).toEqual({ primary: 1, primaryCreatedAt: 2, leased: 3, roots })
    const good = { primary: 1, primaryCreatedAt: 1, leased: 0 }
    const heads = [
      { ...good, roots: 'default' }, { ...good, roots: [{ name: 'a/b', kind: 'aes', state: 'active' }] },
      { ...good, roots: [{ name: 'a', kind: 'aes', state: 'gone' }] }, { ...good, roots: [{ name: 'a', state: 'active' }] }, { ...good, roots: [null] },
    ]
    for (const [i, head] of heads.entries()) {
      await gateway(url, '/v3/kv/put', { key: b64(`${prefix}bad${i}/head`), value: b64(JSON.stringify(head)) })
      await expect(store.getHead(`bad${i}`), JSON.stringify(head)).rejects.toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: false })
    }
    const record = { id: 12, createdAt: 1, rootKind: 'aes', wrapped: 'AQ==' }
    const records: [string, unknown][] = [
      ['0000000c/root/a', { ...record, root: 'b' }], ['0000000c/root/a', record], ['0000000c/root/a', { ...record, id: 13 }],
      ['0000000c/root/default', { ...record, root: 'default' }], ['0000000c/root/a', { ...record, root: 'a', createdAt: 'x' }], ['0000000c', { ...record, root: 'a' }],
    ]
    for (const [i, [key, value]] of records.entries()) {
      await gateway(url, '/v3/kv/put', { key: b64(`${prefix}r${i}/kek/${key}`), value: b64(JSON.stringify(value)) })
      for (const read of [() => store.getKekWraps!(`r${i}`, 12), () => store.listKeks(`r${i}`), () => store.getKek(`r${i}`, 12)]) {
        await expect(read(), `${key}: ${JSON.stringify(value)}`).rejects.toMatchObject({ name: 'StoreError', code: 'ERR_STORE', retryable: false })
      }
    }
  })

  it('a root name outside [A-Za-z0-9._-]{1,64} is refused before anything is sent', async () => {
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: [url], prefix })
    for (const root of ['', 'a/b', 'x'.repeat(65), 'ä', 7 as unknown as string]) {
      await expect(store.putKekIfAbsent('c', { ...rec(1, undefined, 1), root }), String(root)).rejects.toThrow(TypeError)
      await expect(store.deleteKekWrap!('c', 1, root), String(root)).rejects.toThrow(TypeError)
    }
    expect(await keysUnder(prefix)).toEqual([])
  })
})
