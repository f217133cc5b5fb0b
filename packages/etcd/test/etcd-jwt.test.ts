/**
 * etcdStore against etcd with JWT auth tokens (`--auth-token jwt,…`). A JWT carries the auth
 * store's revision when it was issued, so any later auth change (a user added, a role granted or
 * revoked) makes etcd refuse it with "revision of auth store is old" until it expires; the store
 * must log in again. A second server with a 2 s TTL checks expiry.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { etcdStore } from '../src/index.ts'
import { enableAuth, haveEtcd, startEtcd, type EtcdCluster } from './etcd-process.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 11 + 3) & 0xff)
const PASSWORD = 'root-Jw7!never-shown'
const APP_PASSWORD = 'app-Jw9#never-shown'
const TTL_S = 2
let seq = 0
const uniquePrefix = () => `app/jwt-${Date.now().toString(36)}-${++seq}/`

/** A fetch that counts logins and keeps etcd's error messages (never the tokens). */
function observed() {
  const seen = { logins: 0, errors: [] as string[] }
  const f: typeof fetch = async (input, init) => {
    if (String(input).endsWith('/v3/auth/authenticate')) seen.logins++
    const response = await fetch(input, init)
    if (!response.ok) seen.errors.push(String(((await response.clone().json()) as { message?: string }).message))
    return response
  }
  return { seen, fetch: f }
}

describe.skipIf(!haveEtcd)('etcdStore with JWT auth tokens', () => {
  let dir: string
  let etcd: EtcdCluster
  let shortLived: EtcdCluster
  let asRoot: Awaited<ReturnType<typeof enableAuth>>

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kms-proxy-etcd-jwt-'))
    const { publicKey, privateKey } = generateKeyPairSync('rsa', {
      modulusLength: 2048,
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    })
    writeFileSync(join(dir, 'pub.pem'), publicKey)
    writeFileSync(join(dir, 'priv.pem'), privateKey, { mode: 0o600 })
    const jwt = (ttl: string) => ['--auth-token', `jwt,pub-key=${join(dir, 'pub.pem')},priv-key=${join(dir, 'priv.pem')},sign-method=RS256,ttl=${ttl}`]
    ;[etcd, shortLived] = await Promise.all([startEtcd({ args: jwt('10m') }), startEtcd({ args: jwt(`${TTL_S}s`) })])
    ;[asRoot] = await Promise.all([enableAuth(etcd.urls[0]!, { root: PASSWORD, app: APP_PASSWORD }), enableAuth(shortLived.urls[0]!, { root: PASSWORD, app: APP_PASSWORD })])
  }, 40_000)

  afterAll(async () => {
    await Promise.all([etcd?.stop(), shortLived?.stop()])
    if (dir) rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
  })

  it('a user added after login: etcd says "revision of auth store is old"; the store logs in again once and the write lands', async () => {
    const { seen, fetch } = observed()
    const store = etcdStore({ endpoints: etcd.urls, prefix: uniquePrefix(), username: 'app', password: APP_PASSWORD, fetch })
    expect(await store.getHead('c')).toBe(undefined)
    expect(seen.logins).toBe(1)
    await asRoot('/v3/auth/user/add', { name: `someone-${++seq}`, password: 'x' })
    // A put-if-absent that answers true: the refused attempt wrote nothing.
    expect(await store.casHead('c', undefined, { primary: 7, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect(seen.errors).toEqual(['etcdserver: revision of auth store is old'])
    expect(seen.logins).toBe(2)
    expect((await store.getHead('c'))!.value.primary).toBe(7)
    expect(seen.logins).toBe(2)
  })

  it("changes to the user's own roles: a chain keeps working; a revoked permission fails as ERR_STORE (no login loop), and works again once granted", async () => {
    const { seen, fetch } = observed()
    const prefix = uniquePrefix()
    const store = etcdStore({ endpoints: etcd.urls, prefix, username: 'app', password: APP_PASSWORD, fetch })
    const chain = await KeyChain.open({ rootKey: aesRootKey(ROOT), store, maxWrapsPerKek: 4, leaseSize: 2, dekPoolSize: 0 })
    const encrypted = [await chain.encrypt('before')]
    const n = ++seq
    await asRoot('/v3/auth/role/add', { name: `extra-${n}` })
    await asRoot('/v3/auth/user/grant', { user: 'app', role: `extra-${n}` })
    // Each lease of 2 is a head write; a KEK of 4 uses rotates: the store is asked again and again.
    for (let i = 0; i < 6; i++) encrypted.push(await chain.encrypt(`after ${i}`))
    expect(seen.errors).toEqual(['etcdserver: revision of auth store is old'])
    expect(seen.logins).toBe(2)
    chain.close()

    await asRoot('/v3/auth/user/revoke', { name: 'app', role: 'kms' })
    const reader = etcdStore({ endpoints: etcd.urls, prefix, username: 'app', password: APP_PASSWORD, fetch })
    const error = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: reader }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect((error as KmsProxyError).code).toBe('ERR_STORE')
    expect((error as KmsProxyError).message).toMatch(/permission denied/)
    expect((error as KmsProxyError).retryable).toBe(false)
    await asRoot('/v3/auth/user/grant', { user: 'app', role: 'kms' })
    const fresh = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: reader })
    for (const [i, e] of encrypted.entries()) expect(new TextDecoder().decode(await fresh.decrypt(e))).toBe(i === 0 ? 'before' : `after ${i - 1}`)
    fresh.close()
    // One login each for the chain's store and the reader, one more each after an auth change.
    expect(seen.logins).toBe(4)
    expect(seen.errors).toEqual(['etcdserver: revision of auth store is old', 'etcdserver: permission denied', 'etcdserver: revision of auth store is old'])
  })

  it(`a token past its TTL (${TTL_S} s): etcd says "invalid auth token"; the store logs in again`, async () => {
    const { seen, fetch } = observed()
    const store = etcdStore({ endpoints: shortLived.urls, prefix: uniquePrefix(), username: 'app', password: APP_PASSWORD, fetch })
    expect(await store.casHead('c', undefined, { primary: 3, primaryCreatedAt: 1, leased: 0 })).toBe(true)
    expect(seen.logins).toBe(1)
    await new Promise((r) => setTimeout(r, TTL_S * 1000 + 1200))
    expect((await store.getHead('c'))!.value.primary).toBe(3)
    expect(seen.errors).toEqual(['etcdserver: invalid auth token'])
    expect(seen.logins).toBe(2)
  })
})
