/**
 * What one node's kube-apiserver sees of the plugin, checked against its own rules
 * (staging/src/k8s.io/apiserver/pkg/server/options/encryptionconfig/config.go: Status polled every
 * minute while healthy and every 10 s while not, its verdict cached 20 s / 3 s for /healthz and
 * /readyz; a key_id that changes makes it call Encrypt at once and throw the answer away unless
 * Encrypt's key_id equals Status's). All over a real Unix socket (or an abstract one) with a
 * client built from the plugin's proto; root keys are real AES root keys that can be switched off.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { existsSync, lstatSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import { connect } from 'node:net'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { KeyChain, RootKeyError, StoreError, aesRootKey, memoryStore, type KeyChainOptions, type KeyStore, type RootKey } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { countingRootKey } from '@kms-proxy/testkit'
import { kmsPluginStatus, serveKmsPlugin, type KmsPlugin, type KmsPluginOptions } from '../src/index.ts'
import { codeOf, grpcError, kmsClient, seed, tempDir, type KmsClient } from './client.ts'

const ROOT_BYTES = crypto.getRandomValues(new Uint8Array(32))
const cleanups: (() => unknown)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** An AES root key that can be taken away: while `down`, every call fails as an unreachable KMS does. */
function switchableRoot(): RootKey & { down: boolean; calls: number } {
  const inner = aesRootKey(ROOT_BYTES)
  const root = {
    kind: inner.kind,
    down: false,
    calls: 0,
    async newKek(aad: Uint8Array) {
      root.calls++
      if (root.down) throw new RootKeyError('the KMS did not answer (connection refused)', { retryable: true })
      return inner.newKek(aad)
    },
    async unwrapKek(wrapped: Uint8Array, aad: Uint8Array) {
      root.calls++
      if (root.down) throw new RootKeyError('the KMS did not answer (connection refused)', { retryable: true })
      return inner.unwrapKek(wrapped, aad)
    },
  }
  return root
}

/** A store that can be taken away: while `down`, every call fails as an etcd without quorum does. */
function switchableStore(inner: KeyStore): KeyStore & { down: boolean } {
  const state = { down: false }
  const fail = () => Promise.reject(new StoreError('etcd did not answer (connection refused)', { retryable: true }))
  return new Proxy(inner as KeyStore & { down: boolean }, {
    get(target, name) {
      if (name === 'down') return state.down
      const value = Reflect.get(target, name)
      if (typeof value !== 'function' || name === 'watchHead') return value
      return (...args: unknown[]) => (state.down ? fail() : (value as (...a: unknown[]) => unknown).apply(target, args))
    },
    set(_, name, value) {
      if (name !== 'down') return false
      state.down = value === true
      return true
    },
  })
}

interface Node {
  plugin: KmsPlugin
  client: KmsClient
  chain: KeyChain
}

async function node(socket: string, chainOptions: KeyChainOptions, pluginOptions: Partial<KmsPluginOptions> = {}): Promise<Node> {
  const chain = await KeyChain.open({ name: 'cluster-a', ...chainOptions })
  const plugin = await serveKmsPlugin({ socket, chain, ...(chainOptions.rootKey ? { rootKey: chainOptions.rootKey } : {}), ...pluginOptions })
  cleanups.push(() => plugin.close())
  const client = kmsClient(plugin.socket.startsWith('@') ? `\0${plugin.socket.slice(1)}` : plugin.socket)
  cleanups.push(() => client.close())
  return { plugin, client, chain }
}

function dir() {
  const t = tempDir()
  cleanups.push(t.cleanup)
  return t
}

describe('health: a plugin that can still encrypt and decrypt is healthy', () => {
  it('the root key goes away: Status stays "ok" with the same key_id while the primary KEK is loaded, the outage shows as degraded; it comes back: degraded clears', async () => {
    const root = switchableRoot()
    const t = dir()
    const a = await node(t.socket, { rootKey: root, store: fileStore(join(t.dir, 'keys.json')) }, { healthCacheMs: 0 })
    const up = await a.client.status()
    expect(up.healthz).toBe('ok')
    const s1 = seed()
    const e1 = await a.client.encrypt(s1)
    expect(e1.key_id).toBe(up.key_id)

    root.down = true
    expect(await a.plugin.checkHealth()).toBe('ok') // a root-key probe runs and fails ...
    const health = a.plugin.stats().health
    expect(health.rootKey.ok).toBe(false)
    expect(health.degraded).toMatch(/^root key: ERR_ROOT_KEY: the KMS did not answer/)
    const down = await a.client.status() // ... yet kube-apiserver keeps this node in its load balancer
    expect(down).toMatchObject({ healthz: 'ok', key_id: up.key_id })
    expect(Buffer.compare(await a.client.decrypt({ ciphertext: e1.ciphertext, key_id: e1.key_id }), Buffer.from(s1))).toBe(0)
    expect((await a.client.encrypt(seed())).key_id).toBe(up.key_id)

    root.down = false
    expect(await a.plugin.checkHealth()).toBe('ok')
    expect(a.plugin.stats().health.degraded).toBeUndefined()
    expect(a.plugin.stats().health.rootKey.ok).toBe(true)
  })

  it('the primary KEK past its age with the root key down: unhealthy (Encrypt cannot serve), same key_id; root back: rotated at the next Status', async () => {
    const root = switchableRoot()
    const t = dir()
    const a = await node(t.socket, { rootKey: root, store: fileStore(join(t.dir, 'keys.json')), maxKekAgeMs: 1_200 }, { healthCacheMs: 3_600_000 })
    const k1 = (await a.client.status()).key_id
    root.down = true
    await new Promise((r) => setTimeout(r, 1_300))
    const expired = await a.client.status()
    expect(expired.key_id).toBe(k1)
    expect(expired.healthz).toMatch(/^unhealthy: .*ERR_ROOT_KEY: the KMS did not answer/)
    expect(codeOf(await grpcError(a.client.encrypt(seed())))).toBe('UNAVAILABLE')
    root.down = false
    const back = await a.client.status()
    expect(back.healthz).toBe('ok')
    expect(back.key_id).not.toBe(k1)
    expect((await a.client.encrypt(seed())).key_id).toBe(back.key_id)
  })

  it('another process rotates while this plugin\'s root key is down: Encrypt goes on under the KEK it holds and Status keeps its key_id (healthy, degraded says why), Decrypt goes on; root back: the new key_id at the next Status, and Encrypt agrees', async () => {
    const root = switchableRoot()
    const t = dir()
    const store = memoryStore()
    const a = await node(t.socket, { rootKey: root, store }, { healthCacheMs: 3_600_000 })
    const k1 = (await a.client.status()).key_id
    const s1 = seed()
    const e1 = await a.client.encrypt(s1)
    const other = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store, name: 'cluster-a' })
    root.down = true
    const k2 = `cluster-a/${(await other.rotate()).id.toString(16).padStart(8, '0')}`

    const down = await a.client.status()
    expect(down.key_id).toBe(k1) // a new key_id now would start kube-apiserver's 3-minute countdown to refusing writes
    expect(down.healthz).toBe('ok') // the chain encrypts under the KEK it holds, within its lease
    expect(a.plugin.stats().health.primary?.keyId).toBe(k2)
    expect(a.plugin.stats().health.degraded).toContain(`key_id ${k1} kept: the store's primary ${k2} cannot be loaded yet`)
    expect((await a.client.encrypt(seed())).key_id).toBe(k1)
    expect(Buffer.compare(await a.client.decrypt({ ciphertext: e1.ciphertext, key_id: e1.key_id }), Buffer.from(s1))).toBe(0)

    root.down = false
    expect(await a.client.status()).toMatchObject({ healthz: 'ok', key_id: k2 })
    expect((await a.client.encrypt(seed())).key_id).toBe(k2)
    expect(a.plugin.stats().health.degraded).toBeUndefined()
  })

  it('the store goes away: Status stays "ok" (degraded) while the chain may still encrypt without reading its head (maxStalenessMs), then unhealthy with the same key_id while Encrypt answers UNAVAILABLE; store back: ok', async () => {
    const BOUND = 2_500
    const store = switchableStore(memoryStore())
    const t = dir()
    const a = await node(t.socket, { rootKey: aesRootKey(ROOT_BYTES), store, maxStalenessMs: BOUND }, { healthCacheMs: 3_600_000 })
    const k1 = (await a.client.status()).key_id
    store.down = true
    expect(await a.client.status()).toMatchObject({ healthz: 'ok', key_id: k1 })
    expect(a.plugin.stats().health.degraded).toMatch(/^store: ERR_STORE: etcd did not answer/)
    expect((await a.client.encrypt(seed())).key_id).toBe(k1)

    await new Promise((r) => setTimeout(r, BOUND + 100))
    const past = await a.client.status()
    expect(past.key_id).toBe(k1)
    expect(past.healthz).toMatch(/^unhealthy: cannot serve Encrypt: ERR_STORE: etcd did not answer/)
    expect(codeOf(await grpcError(a.client.encrypt(seed())))).toBe('UNAVAILABLE')

    store.down = false
    expect(await a.client.status()).toMatchObject({ healthz: 'ok', key_id: k1 })
    expect((await a.client.encrypt(seed())).key_id).toBe(k1)
  })

  it('a day of kube-apiserver polls (one Status a minute, fake clock) costs 24 root-key calls for health, one per healthCacheMs (1 h by default)', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() })
    cleanups.push(() => vi.useRealTimers())
    const root = countingRootKey(aesRootKey(ROOT_BYTES))
    const t = dir()
    const a = await node(t.socket, { rootKey: root, store: memoryStore(), maxKekAgeMs: 30 * 24 * 3600_000 })
    expect((await a.client.status()).healthz).toBe('ok')
    await a.plugin.checkHealth() // the first probe is started in the background: let it finish
    const before = root.wraps + root.unwraps
    for (let minute = 0; minute < 24 * 60; minute++) {
      vi.setSystemTime(Date.now() + 60_000)
      expect((await a.client.status()).healthz).toBe('ok')
    }
    await a.plugin.checkHealth()
    const perDay = root.wraps + root.unwraps - before - 1 // the forced probe just above
    console.log(`k8s: 1,440 Status polls (one a minute for a day): ${perDay} root-key calls for health`)
    expect(perDay).toBeGreaterThanOrEqual(23)
    expect(perDay).toBeLessThanOrEqual(25)
  }, 120_000) // 1,440 calls over the socket: 5 s on an idle machine, over 30 s at a load average of 20
})

describe('key_id: Status and the Encrypt that follows it agree', () => {
  /** kube-apiserver's sequence: Status, then Encrypt when the key_id changed (here: always, to count every chance of a mismatch). */
  async function drive(a: Node, rounds: number, between: (i: number) => Promise<unknown>) {
    let mismatches = 0
    const keyIds = new Set<string>()
    for (let i = 0; i < rounds; i++) {
      const { key_id } = await a.client.status()
      const encrypted = await a.client.encrypt(seed())
      if (encrypted.key_id !== key_id) mismatches++
      keyIds.add(encrypted.key_id)
      await between(i)
    }
    return { mismatches, keyIds: keyIds.size }
  }

  it('across rotations by age (maxKekAgeMs 1,200), by rotate() and by another process on the same store: 0 mismatches', async () => {
    const t = dir()
    const store = join(t.dir, 'keys.json')
    const a = await node(t.socket, { rootKey: aesRootKey(ROOT_BYTES), store: fileStore(store), maxKekAgeMs: 1_200 })
    const other = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: fileStore(store), name: 'cluster-a', maxKekAgeMs: 1_200 })
    const counted = await drive(a, 200, async (i) => {
      if (i % 90 === 25) await a.chain.rotate()
      if (i % 70 === 40) await other.rotate()
      await new Promise((r) => setTimeout(r, 15))
    })
    console.log(`k8s: 200 Status+Encrypt rounds, age 1,200 ms and forced rotations: ${counted.keyIds} key_ids, ${counted.mismatches} mismatches`)
    expect(counted.mismatches).toBe(0)
    expect(counted.keyIds).toBeGreaterThanOrEqual(4) // 2 by rotate(), the rest by age (about 1 a second)
  }, 30_000)

  it('across rotations by usage (maxWrapsPerKek 32, no DEK pool): 0 mismatches', async () => {
    const t = dir()
    const a = await node(t.socket, { rootKey: aesRootKey(ROOT_BYTES), store: fileStore(join(t.dir, 'keys.json')), maxWrapsPerKek: 32, dekPoolSize: 0 })
    const counted = await drive(a, 150, async () => {})
    console.log(`k8s: 150 Status+Encrypt rounds, maxWrapsPerKek 32: ${counted.keyIds} key_ids, ${counted.mismatches} mismatches`)
    expect(counted.mismatches).toBe(0)
    expect(counted.keyIds).toBeGreaterThanOrEqual(5)
    for (const kek of a.chain.stats().keks) expect(kek.wraps).toBeLessThanOrEqual(32)
  })
})

describe('abstract sockets (unix:///@name)', () => {
  const name = `kms-proxy-test-${process.pid}-${crypto.randomUUID().slice(0, 8)}`

  it('served in the abstract namespace with allowAbstractSocket: no file, a client connects to the name, a second server is refused', async () => {
    const a = await node(`unix:///@${name}`, { store: memoryStore() }, { allowAbstractSocket: true })
    expect(a.plugin.socket).toBe(`@${name}`)
    expect(existsSync(`/@${name}`)).toBe(false)
    expect((await a.client.status()).healthz).toBe('ok')
    // As Go dials "@name": a leading NUL on Linux.
    await new Promise<void>((resolve, reject) => {
      const raw = connect(`\0${name}`)
      raw.once('connect', () => (raw.destroy(), resolve()))
      raw.once('error', reject)
    })
    await expect(serveKmsPlugin({ socket: `unix:///@${name}`, chain: a.chain, allowAbstractSocket: true })).rejects.toThrow(/abstract socket @.* is in use/)
    // The operators' one-call client reads it by the endpoint kube-apiserver is given.
    expect(await kmsPluginStatus(`unix:///@${name}`)).toEqual({ version: 'v2', healthz: 'ok', key_id: (await a.client.status()).key_id })
  })

  it('refused at start without the opt-in, with an error that says why', async () => {
    const chain = await KeyChain.open({ store: memoryStore() })
    const refused = serveKmsPlugin({ socket: `unix:///@${name}-x`, chain })
    await expect(refused).rejects.toBeInstanceOf(TypeError)
    await expect(refused).rejects.toThrow(/abstract socket.*no file permissions.*allowAbstractSocket/)
    expect(existsSync(`/@${name}-x`)).toBe(false)
  })
})

describe('the wire', () => {
  /** A client that reads Status's raw protobuf bytes, as Go's decoder would see them. */
  function rawStatus(socket: string): Promise<Buffer> {
    const Raw = grpc.makeGenericClientConstructor(
      {
        Status: {
          path: '/v2.KeyManagementService/Status',
          requestStream: false,
          responseStream: false,
          requestSerialize: () => Buffer.alloc(0),
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      'Raw',
    )
    const client = new Raw(`unix:${socket}`, grpc.credentials.createInsecure())
    return new Promise<Buffer>((resolve, reject) =>
      (client as unknown as { Status: Function }).Status({}, { deadline: Date.now() + 5_000 }, (e: Error | null, b: Buffer) => (client.close(), e ? reject(e) : resolve(b))),
    )
  }
  /** The string fields of a message (field number -> bytes); proto3 strings must be valid UTF-8. */
  function fields(b: Buffer): Map<number, Buffer> {
    const out = new Map<number, Buffer>()
    for (let i = 0; i < b.length; ) {
      const tag = b[i++]!
      let len = 0
      for (let shift = 0; ; shift += 7) {
        const byte = b[i++]!
        len |= (byte & 0x7f) << shift
        if (byte < 0x80) break
      }
      out.set(tag >> 3, b.subarray(i, i + len))
      i += len
    }
    return out
  }
  const strictUtf8 = new TextDecoder('utf-8', { fatal: true })

  it('Status strings are valid UTF-8 even when a failure message is not well-formed; a non-ASCII chain name gives a valid key_id', async () => {
    const inner = aesRootKey(ROOT_BYTES)
    const t = dir()
    const store = join(t.dir, 'keys.json')
    const name = 'clúster-ä-集群'
    const maker = await KeyChain.open({ rootKey: inner, store: fileStore(store), name })
    await maker.encrypt('first KEK')
    // A root key whose error message carries a lone surrogate (a KMS key name from a config, say).
    const broken: RootKey = { kind: inner.kind, newKek: inner.newKek, unwrapKek: async () => { throw new RootKeyError('key \ud800 is disabled') } }
    const a = await node(t.socket, { rootKey: broken, store: fileStore(store), name })
    const status = fields(await rawStatus(t.socket))
    const healthz = strictUtf8.decode(status.get(2)!)
    expect(healthz).toMatch(/^unhealthy: .*ERR_ROOT_KEY: key \ufffd is disabled/)
    expect(strictUtf8.decode(status.get(3)!)).toMatch(/^clúster-ä-集群\/[0-9a-f]{8}$/)
    expect(a.plugin.stats().health.ok).toBe(false)
  })

  it('Decrypt: the seed the handler produced is zeroed once the answer is serialized, even if grpc-js serializes later than today', async () => {
    const t = dir()
    const a = await node(t.socket, { rootKey: aesRootKey(ROOT_BYTES), store: fileStore(join(t.dir, 'keys.json')) })
    const produced: Uint8Array[] = []
    const decrypt = a.chain.decrypt.bind(a.chain)
    a.chain.decrypt = async (...args: Parameters<KeyChain['decrypt']>) => {
      const plaintext = await decrypt(...args)
      produced.push(plaintext)
      return plaintext
    }
    // A grpc-js whose unary answer is serialized a tick after the handler's callback.
    const require = createRequire(import.meta.url)
    const { BaseServerInterceptingCall } = require('@grpc/grpc-js/build/src/server-interceptors.js') as { BaseServerInterceptingCall: { prototype: { sendMessage: Function } } }
    const original = BaseServerInterceptingCall.prototype.sendMessage
    for (const deferred of [false, true]) {
      BaseServerInterceptingCall.prototype.sendMessage = deferred
        ? function (this: unknown, ...args: unknown[]) {
            setImmediate(() => original.apply(this, args))
          }
        : original
      try {
        const s = seed()
        const e = await a.client.encrypt(s)
        const back = await a.client.decrypt({ ciphertext: e.ciphertext, key_id: e.key_id })
        expect(Buffer.compare(back, Buffer.from(s)), `deferred ${deferred}`).toBe(0)
        expect(produced.at(-1)!.length).toBe(32)
        expect(produced.at(-1)!.every((b) => b === 0), `deferred ${deferred}`).toBe(true)
      } finally {
        BaseServerInterceptingCall.prototype.sendMessage = original
      }
    }
  })
})

describe('the socket file: mode and group for an apiserver that runs as another user', () => {
  it('socketMode 0o660 and socketGroup by name or number', async () => {
    const t = dir()
    const a = await node(t.socket, { store: memoryStore() }, { socketMode: 0o660, socketGroup: 'nogroup' })
    expect(statSync(t.socket).mode & 0o777).toBe(0o660)
    expect(lstatSync(t.socket).gid).toBe(65534)
    expect((await a.client.status()).healthz).toBe('ok')
    const other = join(t.dir, 'b.sock')
    const b = await serveKmsPlugin({ socket: other, chain: a.chain, socketGroup: 65534 })
    cleanups.push(() => b.close())
    expect(lstatSync(other).gid).toBe(65534)
    expect(statSync(other).mode & 0o777).toBe(0o600)
    await expect(serveKmsPlugin({ socket: join(t.dir, 'c.sock'), chain: a.chain, socketGroup: 'no-such-group-here' })).rejects.toThrow(/no group named "no-such-group-here"/)
    expect(existsSync(join(t.dir, 'c.sock'))).toBe(false)
  })
})

describe('version', () => {
  it('serves v2.KeyManagementService (Kubernetes 1.29+); the v2beta1 service of 1.27 and 1.28 is UNIMPLEMENTED', async () => {
    const t = dir()
    const a = await node(t.socket, { store: memoryStore() })
    expect((await a.client.status()).version).toBe('v2')
    const Beta = grpc.makeGenericClientConstructor(
      { Status: { path: '/v2beta1.KeyManagementService/Status', requestStream: false, responseStream: false, requestSerialize: () => Buffer.alloc(0), requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
      'Beta',
    )
    const beta = new Beta(`unix:${t.socket}`, grpc.credentials.createInsecure())
    cleanups.push(() => beta.close())
    const error = await grpcError(new Promise((resolve, reject) => (beta as unknown as { Status: Function }).Status({}, (e: Error | null, r: unknown) => (e ? reject(e) : resolve(r)))))
    expect(codeOf(error)).toBe('UNIMPLEMENTED')
  })
})
