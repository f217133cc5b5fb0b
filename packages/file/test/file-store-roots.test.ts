/**
 * Several roots per chain in the file store: where each root's record lives in the file (the
 * 'default' root's where every record lived before), what an older file reads as, what a
 * corrupt one is, and real processes putting and deleting wraps of one KEK at once.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { KekRecord } from '@kms-proxy/core'
import { fileStore } from '../src/index.ts'
import { bundleChild } from '../../testkit/test/bundle.ts'

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-file-roots-'))
const child = join(dir, 'put-wraps.mjs')
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))
beforeAll(async () => {
  // One process: on "go", puts a record of each id under one root, and prints what each put answered.
  await bundleChild({
    resolveDir: import.meta.dirname,
    source: `
      import { createInterface } from 'node:readline'
      import { fileStore } from '../src/index.ts'
      const [path, root, seed, ...ids] = process.argv.slice(2)
      const store = fileStore(path)
      process.stdout.write('ready\\n')
      createInterface({ input: process.stdin }).once('line', async () => {
        // All at once, so that this process's puts compete for the lock with the other's
        // instead of queueing behind each other.
        const won = await Promise.all(ids.map(Number).map((id) =>
          store.putKekIfAbsent('c', { id, createdAt: id, rootKind: 'k' + seed, wrapped: Uint8Array.of(Number(seed), id & 0xff), root })))
        process.stdout.write(JSON.stringify(won) + '\\n')
        process.exit(0)
      })
    `,
  }, child)
})

const file = (path: string) => JSON.parse(readFileSync(path, 'utf8'))
const rec = (id: number, root: string | undefined, byte: number): KekRecord => ({ id, createdAt: id, rootKind: 'aes', wrapped: Uint8Array.of(byte, id), ...(root ? { root } : {}) })

/** Starts one child per [root, seed, ids], lets them go at once, and returns what each put answered. */
async function racePuts(path: string, runs: [string, number, number[]][], meanwhile: () => Promise<void> = async () => {}): Promise<boolean[][]> {
  const children = runs.map(([root, seed, ids]) => {
    const p = spawn(process.execPath, [child, path, root, String(seed), ...ids.map(String)])
    let err = ''
    p.stderr.on('data', (d) => (err += d))
    const lines = createInterface({ input: p.stdout })[Symbol.asyncIterator]()
    const next = async () => {
      const { value, done } = await lines.next()
      if (done) throw new Error(`child for ${root} ended: ${err.slice(0, 500)}`)
      return value as string
    }
    return { p, next }
  })
  for (const c of children) expect(await c.next()).toBe('ready')
  for (const c of children) c.p.stdin.write('go\n')
  const [answers] = await Promise.all([Promise.all(children.map(async (c) => JSON.parse(await c.next()) as boolean[])), meanwhile()])
  return answers
}

it('two processes put wraps of the same ids under two roots at once while a third deletes the default wraps: every put is kept, every delete holds', async () => {
  const path = join(dir, 'two-roots.json')
  const ids = Array.from({ length: 25 }, (_, i) => i + 1)
  const store = fileStore(path)
  for (const id of ids) await store.putKekIfAbsent('c', rec(id, undefined, 0))
  const answers = await racePuts(path, [['a', 1, ids], ['b', 2, [...ids].reverse()]], async () => {
    for (const id of ids) await store.deleteKekWrap!('c', id, 'default')
  })
  expect(answers.flat().every((won) => won)).toBe(true)
  for (const id of ids) {
    const wraps = await fileStore(path).getKekWraps!('c', id)
    expect(wraps.map((w) => `${w.root}:${w.rootKind}:${[...w.wrapped]}`).sort(), `id ${id}`).toEqual([`a:k1:1,${id}`, `b:k2:2,${id}`])
  }
  expect((await fileStore(path).listKeks('c')).length).toBe(50)
}, 60_000)

it('two processes put wraps of the same ids under one root at once: each id has one winner, and its bytes are the ones kept', async () => {
  const path = join(dir, 'one-root.json')
  const ids = Array.from({ length: 25 }, (_, i) => i + 101)
  const answers = await racePuts(path, [['r', 1, ids], ['r', 2, [...ids].reverse()]])
  const wins = [0, 0]
  for (const [i, id] of ids.entries()) {
    const first = answers[0]![i]!
    const second = answers[1]![ids.length - 1 - i]!
    expect(first !== second, `id ${id}: exactly one put wins`).toBe(true)
    const winner = first ? 1 : 2
    wins[winner - 1]!++
    const wraps = await fileStore(path).getKekWraps!('c', id)
    expect(wraps.map((w) => [w.root, w.rootKind, [...w.wrapped]]), `id ${id}`).toEqual([['r', `k${winner}`, [winner, id & 0xff]]])
  }
  console.log(`file store, two processes putting 25 ids under one root: ${wins[0]} and ${wins[1]} wins`)
}, 60_000)

it('the default record stays where every record was (format v1, no root field); other roots and a head with roots make the file v2, which older versions refuse instead of dropping them', async () => {
  const path = join(dir, 'layout.json')
  const store = fileStore(path)
  await store.putKekIfAbsent('c', rec(7, undefined, 1))
  await store.casHead('c', undefined, { primary: 7, primaryCreatedAt: 7, leased: 0 })
  const v1 = file(path)
  expect(v1.format).toBe('kms-proxy-file-store/v1')
  expect(v1.chains.c.keks['7']).toEqual({ createdAt: 7, rootKind: 'aes', wrapped: 'AQc=' })
  expect(Object.keys(v1.chains.c).sort()).toEqual(['head', 'keks'])

  await store.putKekIfAbsent('c', rec(7, 'recovery', 2))
  const v2 = file(path)
  expect(v2.format).toBe('kms-proxy-file-store/v2')
  expect(v2.chains.c.keks['7']).toEqual(v1.chains.c.keks['7'])
  expect(v2.chains.c.wraps['7'].recovery).toEqual({ createdAt: 7, rootKind: 'aes', wrapped: 'Agc=' })

  await store.deleteKekWrap!('c', 7, 'recovery')
  expect(file(path)).toEqual(v1)
  const head = (await store.getHead('c'))!
  await store.casHead('c', head.version, { ...head.value, roots: [{ name: 'default', kind: 'aes', state: 'active' }] })
  expect(file(path).format).toBe('kms-proxy-file-store/v2')
  expect(file(path).chains.c.head.value.roots).toEqual([{ name: 'default', kind: 'aes', state: 'active' }])
})

it('a file written before several roots reads as it did: its records are the default root\'s, and other roots can be added to it', async () => {
  const path = join(dir, 'old.json')
  const old = { format: 'kms-proxy-file-store/v1', chains: { c: { head: { value: { primary: 5, primaryCreatedAt: 9, leased: 3 }, version: '4' }, keks: { 5: { createdAt: 9, rootKind: 'aes', wrapped: 'AQIDBA==' } } } } }
  writeFileSync(path, JSON.stringify(old))
  const store = fileStore(path)
  expect(await store.getHead('c')).toEqual({ value: { primary: 5, primaryCreatedAt: 9, leased: 3 }, version: '4' })
  for (const r of [await store.getKek('c', 5), ...(await store.getKekWraps!('c', 5)), ...(await store.listKeks('c'))]) {
    expect(r).toEqual({ id: 5, createdAt: 9, rootKind: 'aes', wrapped: Uint8Array.of(1, 2, 3, 4) })
  }
  expect(await store.putKekIfAbsent('c', rec(5, 'default', 9))).toBe(false)
  expect(await store.putKekIfAbsent('c', rec(5, 'recovery', 9))).toBe(true)
  expect(file(path).chains.c.keks).toEqual(old.chains.c.keks)
})

it('a corrupt head or root record is ERR_STORE, never read leniently', async () => {
  const path = join(dir, 'corrupt.json')
  // v1: what today's files say; a head is checked whatever the format line.
  const head = (value: unknown) => ({ format: 'kms-proxy-file-store/v1', chains: { c: { head: { value, version: '1' }, keks: {} } } })
  const good = { primary: 1, primaryCreatedAt: 1, leased: 0 }
  for (const value of [
    { ...good, leased: 'many' }, { ...good, primary: -1 }, { primaryCreatedAt: 1, leased: 0 },
    { ...good, roots: 'default' }, { ...good, roots: [{ name: 'a/b', kind: 'aes', state: 'active' }] },
    { ...good, roots: [{ name: 'a', kind: 'aes', state: 'gone' }] }, { ...good, roots: [{ name: 'a', state: 'active' }] },
  ]) {
    writeFileSync(path, JSON.stringify(head(value)))
    await expect(fileStore(path).getHead('c'), JSON.stringify(value)).rejects.toMatchObject({ name: 'StoreError', code: 'ERR_STORE' })
  }
  const wraps = (w: unknown) => ({ format: 'kms-proxy-file-store/v2', chains: { c: { keks: {}, wraps: { 5: w } } } })
  for (const w of [{ r: { createdAt: 'x', rootKind: 'aes', wrapped: 'AQ==' } }, { r: { createdAt: 1, rootKind: 'aes', wrapped: 'AQ=' } }, { 'a/b': { createdAt: 1, rootKind: 'aes', wrapped: 'AQ==' } }, { default: { createdAt: 1, rootKind: 'aes', wrapped: 'AQ==' } }, 'x']) {
    writeFileSync(path, JSON.stringify(wraps(w)))
    await expect(fileStore(path).getKekWraps!('c', 5), JSON.stringify(w)).rejects.toMatchObject({ code: 'ERR_STORE' })
    await expect(fileStore(path).listKeks('c'), JSON.stringify(w)).rejects.toMatchObject({ code: 'ERR_STORE' })
  }
  writeFileSync(path, JSON.stringify({ format: 'kms-proxy-file-store/v4', chains: {} }))
  await expect(fileStore(path).getHead('c')).rejects.toThrow(/not a kms-proxy file store/)
})

it('a root name outside [A-Za-z0-9._-]{1,64} is refused before anything is written', async () => {
  const path = join(dir, 'names.json')
  const store = fileStore(path)
  for (const root of ['', 'a/b', 'x'.repeat(65), 'ä', 7 as unknown as string]) {
    await expect(store.putKekIfAbsent('c', { ...rec(1, undefined, 1), root }), String(root)).rejects.toThrow(TypeError)
    await expect(store.deleteKekWrap!('c', 1, root), String(root)).rejects.toThrow(TypeError)
  }
  expect(await store.listKeks('c')).toEqual([])
})
