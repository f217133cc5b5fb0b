/**
 * The parts of a bridge token check that need no HSM: reading the chain name and KEK id out of
 * a KEK-wrap AAD (only an AAD exactly as core's kekAad makes it names a chain), and chain scopes.
 */
import { describe, expect, it } from 'vitest'
import { kekAad } from '@kms-proxy/core'
import { callersFrom, parseKekAad } from '../src/callers.ts'

const T1 = 'a'.repeat(32)
const T2 = 'b'.repeat(32)

describe('parseKekAad', () => {
  it('reads back every chain name and KEK id that kekAad wrote', () => {
    const names = ['default', 'payments', 'orders/eu', 'é日本\u{1F511}', 'x'.repeat(255), '\u{1F511}'.repeat(127), 'a "quoted"\nname', '*']
    for (const chain of names) {
      for (const kekId of [0, 1, 0x0badf00d, 0xffffffff]) expect(parseKekAad(kekAad(chain, kekId))).toEqual({ chain, kekId })
    }
  })

  it('names no chain for anything else: other AAD, an empty or too long name, altered label, bad UTF-8', () => {
    const good = kekAad('payments', 7)
    const altered = good.slice()
    altered[3]! ^= 1
    const badUtf8 = Uint8Array.of(...kekAad('p', 7).subarray(0, -1), 0xc3, 0x28)
    const overlong = Uint8Array.of(...kekAad('p', 7).subarray(0, -1), 0xc0, 0xaf) // '/' as two bytes
    const cases = [new Uint8Array(0), Uint8Array.of(1, 2, 3), good.subarray(0, 21), kekAad('', 7), altered, badUtf8, overlong, kekAad('x'.repeat(256), 7), new TextEncoder().encode('kms-proxy/kek/v2\0\0\0\0\x07payments')]
    for (const aad of cases) expect(parseKekAad(aad)).toBeUndefined()
    // A view into a larger buffer reads the same.
    const padded = new Uint8Array(good.length + 8)
    padded.set(good, 5)
    expect(parseKekAad(padded.subarray(5, 5 + good.length))).toEqual({ chain: 'payments', kekId: 7 })
  })
})

describe('callersFrom', () => {
  it('finds a caller by its exact header; scopes match exact names and prefixes ending in *', () => {
    const callerOf = callersFrom(T1, [{ name: 'orders-svc', token: T2, chains: ['orders/*', 'billing', 'audit'] }], 'test')
    expect(callerOf(`Bearer ${T1}`)).toEqual({ name: 'default', allows: undefined })
    const orders = callerOf(`Bearer ${T2}`)!
    expect(orders.name).toBe('orders-svc')
    expect(['orders/eu', 'orders/', 'billing', 'audit'].map(orders.allows!)).toEqual([true, true, true, true])
    expect(['orders', 'billing/x', 'ordersX', 'Billing', 'audits'].map(orders.allows!)).toEqual([false, false, false, false, false])
    for (const wrong of [undefined, '', T2, `Bearer ${T2} `, `bearer ${T2}`, `Bearer ${T2.slice(1)}`]) expect(callerOf(wrong)).toBeUndefined()
    const all = callersFrom(undefined, [{ name: 'all', token: T1, chains: ['*'] }], 'test')(`Bearer ${T1}`)!
    expect(['x', 'payments', 'orders/eu'].every(all.allows!)).toBe(true)
  })
})
