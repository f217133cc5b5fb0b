/** What every KMS test does through a key chain: count the KMS calls, and move a KEK to another chain. */
import { KeyChain, memoryStore, type RootKey } from '@kms-proxy/core'

/**
 * 2,000 encryptions with maxWrapsPerKek 500 (so 4 KEKs), then 2,000 decryptions in a new chain on
 * the same store. `calls` is the KMS's call log; it is cleared before each phase and a copy of
 * each phase's calls is returned.
 */
export async function countCallsThroughChain(root: () => RootKey, calls: string[]) {
  calls.length = 0
  const store = memoryStore()
  const chain = await KeyChain.open({ rootKey: root(), store, maxWrapsPerKek: 500, dekPoolSize: 0 })
  const encrypted = []
  for (let i = 0; i < 2000; i++) encrypted.push(await chain.encrypt(`record ${i}`))
  const keks = (await store.listKeks('default')).length
  const encryptCalls = calls.splice(0)
  const reader = await KeyChain.open({ rootKey: root(), store })
  await Promise.all(encrypted.map((e) => reader.decrypt(e)))
  const used = new Set(encrypted.map((e) => new DataView(e.buffer, e.byteOffset).getUint32(1))).size
  return { keks, used, encryptCalls, decryptCalls: calls.splice(0) }
}

/** Copies chain a's KEK records to chain b and has b decrypt a's data: the error it gives. */
export async function decryptWithKekMovedToAnotherChain(root: () => RootKey): Promise<any> {
  const store = memoryStore()
  const a = await KeyChain.open({ rootKey: root(), store, name: 'a' })
  const encrypted = await a.encrypt('x')
  for (const r of await store.listKeks('a')) await store.putKekIfAbsent('b', r)
  const b = await KeyChain.open({ rootKey: root(), store, name: 'b' })
  return b.decrypt(encrypted).then(() => undefined, (e: unknown) => e)
}

/** `promise`, or a rejection after `ms`: turns a hang into a test failure instead of a stuck run. */
export function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms (hung)`)), ms)
  })
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer))
}
