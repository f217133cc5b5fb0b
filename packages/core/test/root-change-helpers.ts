/**
 * The checks root-change-crash and root-change-concurrent make of a store's state after a root
 * change died part way, finished, or ran beside other processes.
 */
import { expect } from 'vitest'
import { KeyChain, kekAad, rootOf, type KeyStore, type RootKey } from '../src/index.ts'
import { kekIdOf, text } from './helpers.ts'
import { CHAIN, NEW, OLD, OPS, type Op } from './root-change-shared.ts'

export interface Message {
  data: Uint8Array
  text: string
}

/** A chain of `keks` KEKs with one message under each (and, for `remove`, both roots). */
export async function chainWithKeks(store: KeyStore, keks: number, op: Op): Promise<Message[]> {
  const chain = await KeyChain.open({ rootKey: OLD(), store, name: CHAIN, dekPoolSize: 0 })
  const messages: Message[] = []
  for (let i = 0; i < keks; i++) {
    if (i > 0) await chain.rotate()
    messages.push({ data: await chain.encrypt(`message ${i}`), text: `message ${i}` })
  }
  if (op === 'remove') await chain.addRoot('recovery', NEW())
  expect(new Set(messages.map((m) => kekIdOf(m.data))).size).toBe(keks)
  return messages
}

const byName = (op: Op): Record<string, RootKey> => ({ [OPS[op].oldName]: OLD(), [OPS[op].newName]: NEW() })

/** Every record, grouped by KEK id, each checked to unwrap under the root it names. */
export async function checkedRecords(store: KeyStore, op: Op): Promise<Map<number, string[]>> {
  const roots = byName(op)
  const groups = new Map<number, string[]>()
  for (const r of await store.listKeks(CHAIN)) {
    const name = rootOf(r)
    const root = roots[name]
    expect(root, `a record under an unknown root "${name}"`).toBeDefined()
    // Throws ERR_ROOT_KEY if the wrap is not the named root's.
    await root!.unwrapKek(r.wrapped, kekAad(CHAIN, r.id))
    groups.set(r.id, [...(groups.get(r.id) ?? []), name].sort())
  }
  return groups
}

/**
 * After a change died part way: every KEK keeps a record that unwraps under the old root or the
 * new one (checked record by record with the root keys themselves), and a chain holding both
 * roots decrypts every message.
 */
export async function expectReadable(store: KeyStore, op: Op, messages: Message[]): Promise<void> {
  const groups = await checkedRecords(store, op)
  for (const m of messages) expect(groups.get(kekIdOf(m.data))?.length ?? 0, 'a KEK lost every record').toBeGreaterThan(0)
  const head = (await store.getHead(CHAIN))!.value
  expect(groups.has(head.primary)).toBe(true)
  const both = await KeyChain.open({ roots: byName(op), store, name: CHAIN })
  for (const m of messages) expect(text(await both.decrypt(m.data))).toBe(m.text)
}

/**
 * After a change finished: the head lists the roots it should, every KEK has exactly the
 * records it should, and a chain holding only the new root decrypts every message.
 */
export async function expectFinished(store: KeyStore, op: Op, messages: Message[]): Promise<void> {
  const { oldName, newName } = OPS[op]
  const expected = op === 'add' ? [oldName, newName].sort() : [newName]
  const head = (await store.getHead(CHAIN))!.value
  expect(head.roots?.map((r) => `${r.name}:${r.state}`).sort()).toEqual(expected.map((n) => `${n}:active`))
  const groups = await checkedRecords(store, op)
  for (const m of messages) expect(groups.get(kekIdOf(m.data))).toEqual(expected)
  for (const [, names] of groups) expect(names).toEqual(expected)
  const newOnly = await KeyChain.open({ roots: { [newName]: NEW() }, store, name: CHAIN })
  for (const m of messages) expect(text(await newOnly.decrypt(m.data))).toBe(m.text)
}
