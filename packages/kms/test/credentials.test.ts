/**
 * refreshingCredentials on its own: when it fetches, that concurrent callers share one fetch,
 * that failures are not cached, invalidate, and what its errors say. The providers and the roots
 * that use it are tested against real servers in providers.test.ts.
 */
import { describe, expect, it } from 'vitest'
import { KmsProxyError, RootKeyError } from '@kms-proxy/core'
import { refreshingCredentials } from '../src/index.ts'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const T0 = Date.parse('2026-11-30T12:00:00Z')

/** A source counting its fetches, answering `v1`, `v2`, … with the lifetime asked. */
function counter(lifetimeMs: number | undefined, now: () => number, delayMs = 0) {
  const source = { fetches: 0, fail: false }
  const fetch = async () => {
    source.fetches++
    if (delayMs) await sleep(delayMs)
    if (source.fail) throw new Error('the source is down (token ya29.secret-in-message)')
    return { value: `v${source.fetches}`, ...(lifetimeMs !== undefined ? { expiresAt: now() + lifetimeMs } : {}) }
  }
  return { source, fetch }
}

describe('refreshingCredentials', () => {
  it('keeps a one-hour credential until 5 minutes are left, then fetches a new one', async () => {
    let t = T0
    const now = () => t
    const { source, fetch } = counter(3_600_000, now)
    const get = refreshingCredentials(fetch, { now })
    expect(await get()).toBe('v1')
    t += 55 * 60_000 - 1 // 5 min + 1 ms left
    expect(await get()).toBe('v1')
    t += 2
    expect(await get()).toBe('v2')
    expect(source.fetches).toBe(2)
  })

  it('refreshes a short-lived credential when half its lifetime is left, and takes refreshBeforeMs', async () => {
    let t = T0
    const now = () => t
    const { source, fetch } = counter(2_000, now)
    const get = refreshingCredentials(fetch, { now })
    expect(await get()).toBe('v1')
    t += 999
    expect(await get()).toBe('v1')
    t += 2
    expect(await get()).toBe('v2')
    const custom = counter(3_600_000, now)
    const early = refreshingCredentials(custom.fetch, { now, refreshBeforeMs: 30 * 60_000 })
    await early()
    t += 30 * 60_000 + 1
    await early()
    expect([source.fetches, custom.source.fetches]).toEqual([2, 2])
  })

  it('keeps a credential without expiresAt until invalidated', async () => {
    let t = T0
    const now = () => t
    const { source, fetch } = counter(undefined, now)
    const get = refreshingCredentials(fetch, { now })
    await get()
    t += 365 * 86_400_000
    expect(await get()).toBe('v1')
    get.invalidate()
    expect(await get()).toBe('v2')
    expect(source.fetches).toBe(2)
  })

  it('concurrent callers share one fetch', async () => {
    const { source, fetch } = counter(60_000, Date.now, 200)
    const get = refreshingCredentials(fetch)
    const values = await Promise.all(Array.from({ length: 50 }, () => get()))
    expect(new Set(values)).toEqual(new Set(['v1']))
    expect(source.fetches).toBe(1)
  })

  it('does not cache a failure: the next call fetches again', async () => {
    const { source, fetch } = counter(60_000, Date.now)
    const get = refreshingCredentials(fetch)
    source.fail = true
    await expect(get()).rejects.toBeInstanceOf(RootKeyError)
    await expect(get()).rejects.toBeInstanceOf(RootKeyError)
    source.fail = false
    expect(await get()).toBe('v3')
    expect(source.fetches).toBe(3)
  })

  it('a refresh that fails while the credential still works returns it; after it expires, the error', async () => {
    let t = T0
    const now = () => t
    const { source, fetch } = counter(2_000, now)
    const get = refreshingCredentials(fetch, { now })
    await get()
    source.fail = true
    t += 1_500 // in the refresh window, still valid
    expect(await get()).toBe('v1')
    t += 600 // expired
    const error = (await get().catch((e: unknown) => e)) as KmsProxyError
    expect([error.code, error.retryable]).toEqual(['ERR_ROOT_KEY', true])
    expect(source.fetches).toBe(3)
  })

  it('invalidate(stale) drops only that value; a fetch begun before invalidate does not refill the cache', async () => {
    const { source, fetch } = counter(60_000, Date.now)
    const get = refreshingCredentials(fetch)
    const first = await get()
    get.invalidate(first)
    const second = await get()
    get.invalidate(first) // a late caller refused with the old one: the new one stays
    expect(await get()).toBe(second)
    expect(source.fetches).toBe(2)

    const slow = counter(60_000, Date.now, 300)
    const getSlow = refreshingCredentials(slow.fetch)
    const begun = getSlow()
    await sleep(50)
    getSlow.invalidate()
    expect(await begun).toBe('v1')
    expect(await getSlow()).toBe('v2')
    expect(slow.source.fetches).toBe(2)
  })

  it('errors: a foreign error is a retryable ERR_ROOT_KEY naming only its class; a KmsProxyError passes as it is; no value is ERR_ROOT_KEY', async () => {
    const { source, fetch } = counter(60_000, Date.now)
    source.fail = true
    const error = (await refreshingCredentials(fetch)().catch((e: unknown) => e)) as KmsProxyError
    expect(error).toBeInstanceOf(RootKeyError)
    expect(error.retryable).toBe(true)
    expect(error.message).toBe('credentials: the source failed (Error)')
    expect(JSON.stringify(error)).not.toContain('secret')
    const own = new RootKeyError('refused', { retryable: false })
    await expect(refreshingCredentials(async () => { throw own })()).rejects.toBe(own)
    for (const bad of [{ value: '' }, { value: undefined }, null, { value: 'x', expiresAt: 'soon' }]) {
      const e = (await refreshingCredentials(async () => bad as never)().catch((x: unknown) => x)) as KmsProxyError
      expect(e.code).toBe('ERR_ROOT_KEY')
    }
    const get = refreshingCredentials(async () => ({ value: 'ya29.do-not-print' }))
    await get()
    expect(`${String(get)} ${JSON.stringify({ get })}`).not.toContain('do-not-print')
  })

  it('bad arguments are TypeError or RangeError', () => {
    expect(() => refreshingCredentials('x' as never)).toThrow(TypeError)
    expect(() => refreshingCredentials(async () => ({ value: 1 }), { refreshBeforeMs: -1 })).toThrow(RangeError)
    expect(() => refreshingCredentials(async () => ({ value: 1 }), { now: 5 as never })).toThrow(TypeError)
  })
})
