import { describe, expect, it, vi } from 'vitest'
import { KeyChain, RootKeyError, aesRootKey, memoryStore, type RootKey } from '../src/index.ts'
import { ROOT_BYTES, counting, kekIdOf } from './helpers.ts'

describe('primaryStatus(): the head\'s primary, without the root key', () => {
  it('is undefined before the first KEK, then names the KEK the data is under, with the uses left across processes', async () => {
    const store = memoryStore()
    const rootKey = counting()
    const chain = await KeyChain.open({ rootKey, store, maxWrapsPerKek: 100, leaseSize: 10, dekPoolSize: 0 })
    expect(await chain.primaryStatus()).toBeUndefined()
    const encrypted = await chain.encrypt('x')
    const mine = await chain.primaryStatus()
    expect(mine).toMatchObject({ id: kekIdOf(encrypted), loaded: true, usesLeft: 99 })
    // Another process leases a block: 10 fewer unleased uses; this one's own lease still counts.
    const other = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, maxWrapsPerKek: 100, leaseSize: 10, dekPoolSize: 0 })
    await other.encrypt('y')
    expect((await chain.primaryStatus())!.usesLeft).toBe(89)
    expect(await other.primaryStatus()).toMatchObject({ id: mine!.id, usesLeft: 89, loaded: true })
  })

  it('answers from the store while the root key is unreachable, in a process that never loaded the KEK', async () => {
    const store = memoryStore()
    const writer = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store })
    const id = kekIdOf(await writer.encrypt('x'))
    let calls = 0
    const down: RootKey = {
      kind: 'kms',
      newKek: () => (calls++, Promise.reject(new RootKeyError('KMS: 503', { retryable: true }))),
      unwrapKek: () => (calls++, Promise.reject(new RootKeyError('KMS: 503', { retryable: true }))),
    }
    const restarted = await KeyChain.open({ rootKey: down, store })
    expect(await restarted.primaryStatus()).toMatchObject({ id, loaded: false })
    expect(calls).toBe(0)
  })

  it('counts down the age limit, to 0 once due', async () => {
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: memoryStore(), maxKekAgeMs: 60_000 })
    await chain.encrypt('x')
    const now = Date.now()
    const clock = vi.spyOn(Date, 'now')
    try {
      clock.mockReturnValue(now + 30_000)
      const half = (await chain.primaryStatus())!.ageLeftMs
      expect(half).toBeGreaterThan(25_000)
      expect(half).toBeLessThanOrEqual(30_000)
      clock.mockReturnValue(now + 61_000)
      expect((await chain.primaryStatus())!.ageLeftMs).toBe(0)
    } finally {
      clock.mockRestore()
    }
  })
})
