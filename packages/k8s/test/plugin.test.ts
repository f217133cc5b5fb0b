/**
 * The plugin over a real Unix socket, driven by a gRPC client built from the same proto the way
 * kube-apiserver drives it: Status polls, Encrypt of a 32-byte DEK seed, Decrypt with the key_id
 * and annotations Encrypt returned. Root keys are real (AES in WebCrypto), stores are the file
 * store and core's stores; root-key calls are counted with the testkit's countingRootKey.
 */
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest'
import { lstat, stat, writeFile } from 'node:fs/promises'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { DecryptError, KeyChain, RootKeyError, aesRootKey, decodeHeader, embeddedStore, memoryStore, type KeyChainOptions, type RootKey } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { countingRootKey } from '@kms-proxy/testkit'
import { KEK_ANNOTATION, serveKmsPlugin, type KmsPlugin, type KmsPluginRequestEvent } from '../src/index.ts'
import { SEED_ASSOCIATED_DATA } from '../src/envelope.ts'
import { readLine, spawnTs } from '../../pkcs11-bridge/test/hsm.ts'
import { codeOf, grpcError, hex, kmsClient, seed, tempDir, type KmsClient } from './client.ts'

const ROOT_BYTES = crypto.getRandomValues(new Uint8Array(32))
const SECRETS = [hex(ROOT_BYTES)]
const cleanups: (() => unknown)[] = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

interface Setup {
  plugin: KmsPlugin
  client: KmsClient
  chain: KeyChain
  root: ReturnType<typeof countingRootKey>
  socket: string
  dir: string
  events: KmsPluginRequestEvent[]
}

async function setup(
  chainOptions: KeyChainOptions = {},
  pluginOptions: Partial<Parameters<typeof serveKmsPlugin>[0]> & { withRoot?: boolean } = {},
): Promise<Setup> {
  const t = tempDir()
  cleanups.push(t.cleanup)
  const root = countingRootKey(aesRootKey(ROOT_BYTES))
  const chain = await KeyChain.open({ rootKey: root, store: fileStore(join(t.dir, 'keys.json')), name: 'cluster-a', ...chainOptions })
  const events: KmsPluginRequestEvent[] = []
  const { withRoot = true, ...rest } = pluginOptions
  const plugin = await serveKmsPlugin({ socket: t.socket, chain, ...(withRoot ? { rootKey: root } : {}), onRequest: (e) => events.push(e), ...rest })
  cleanups.push(() => plugin.close())
  const client = kmsClient(t.socket)
  cleanups.push(() => client.close())
  return { plugin, client, chain, root, socket: t.socket, dir: t.dir, events }
}

const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

describe('as kube-apiserver drives it', () => {
  it('Status, Encrypt of a 32-byte seed, Decrypt with key_id and annotations', async () => {
    const { client, events } = await setup()
    const status = await client.status()
    expect(status.version).toBe('v2')
    expect(status.healthz).toBe('ok')
    expect(status.key_id).toMatch(/^cluster-a\/[0-9a-f]{8}$/)

    const dekSeed = seed()
    const uid = crypto.randomUUID()
    const encrypted = await client.encrypt(dekSeed, uid)
    expect(encrypted.ciphertext.length).toBe(32 + 78) // header, wrapped DEK, IVs, tag: 110 bytes, far under 1 KiB
    expect(encrypted.key_id).toBe(status.key_id)
    expect(encrypted.annotations).toEqual({}) // file store: the KEK is in the store, nothing to carry
    expect(decodeHeader(encrypted.ciphertext).kekId.toString(16).padStart(8, '0')).toBe(encrypted.key_id.split('/')[1])
    expect(same(encrypted.ciphertext.subarray(50), dekSeed)).toBe(false)

    const plaintext = await client.decrypt({ ciphertext: encrypted.ciphertext, key_id: encrypted.key_id, annotations: encrypted.annotations })
    expect(same(plaintext, dekSeed)).toBe(true)

    expect(events.map((e) => `${e.method} ${e.code}`)).toEqual(['Status OK', 'Encrypt OK', 'Decrypt OK'])
    expect(events[1]).toMatchObject({ uid, keyId: encrypted.key_id })
    expect(JSON.stringify(events)).not.toContain(hex(dekSeed))
  })

  it('the seed is bound to the plugin: plain chain.decrypt without its associated data fails', async () => {
    const { client, chain } = await setup()
    const encrypted = await client.encrypt(seed())
    await expect(chain.decrypt(encrypted.ciphertext)).rejects.toBeInstanceOf(DecryptError)
    expect((await chain.decrypt(encrypted.ciphertext, { associatedData: SEED_ASSOCIATED_DATA })).length).toBe(32)
  })

  it('embedded store: the root-wrapped KEK travels in the kek.kms-proxy.dev annotation; another process decrypts with the root key alone', async () => {
    const { client } = await setup({ store: embeddedStore() })
    const dekSeed = seed()
    const encrypted = await client.encrypt(dekSeed)
    expect(Object.keys(encrypted.annotations)).toEqual([KEK_ANNOTATION])
    const wrappedKek = encrypted.annotations[KEK_ANNOTATION]!
    expect(wrappedKek.length).toBeGreaterThan(16)
    expect(encrypted.ciphertext.length).toBe(110) // the KEK moved out: same size as without it
    expect(encrypted.ciphertext[5]! & 1).toBe(1) // flags: "KEK embedded" stays set, so Decrypt puts it back
    expect(same(await client.decrypt({ ciphertext: encrypted.ciphertext, key_id: encrypted.key_id, annotations: encrypted.annotations }), dekSeed)).toBe(true)

    // A second plugin with a fresh chain (another process's view): one root unwrap, then cached.
    const other = await setup({ store: embeddedStore() })
    for (let i = 0; i < 3; i++) {
      const back = await other.client.decrypt({ ciphertext: encrypted.ciphertext, key_id: encrypted.key_id, annotations: encrypted.annotations })
      expect(same(back, dekSeed)).toBe(true)
    }
    expect(other.root.unwraps).toBe(1)

    // Without the annotation, or with another KEK's: refused, never a crash.
    expect(codeOf(await grpcError(client.decrypt({ ciphertext: encrypted.ciphertext, key_id: encrypted.key_id })))).toBe('INVALID_ARGUMENT')
    const { chain } = other
    await chain.rotate()
    const later = await other.client.encrypt(seed())
    const swapped = await grpcError(other.client.decrypt({ ciphertext: encrypted.ciphertext, key_id: encrypted.key_id, annotations: later.annotations }))
    expect(codeOf(swapped)).toBe('FAILED_PRECONDITION') // the root key refuses a KEK bound to another id
    expect(swapped.details).toMatch(/^ERR_ROOT_KEY: /)
  })
})

describe('rotation', () => {
  it('key_id changes in Status and Encrypt exactly when chain.rotate() makes a new primary; old data still decrypts', async () => {
    const { client, chain } = await setup()
    const first = await client.encrypt(seed())
    const k1 = (await client.status()).key_id
    expect(first.key_id).toBe(k1)
    for (let i = 0; i < 5; i++) expect((await client.encrypt(seed())).key_id).toBe(k1)
    expect((await client.status()).key_id).toBe(k1)

    await chain.rotate()
    const k2 = (await client.status()).key_id
    expect(k2).not.toBe(k1)
    const second = await client.encrypt(seed())
    expect(second.key_id).toBe(k2)

    expect((await client.decrypt({ ciphertext: first.ciphertext, key_id: first.key_id })).length).toBe(32)
    expect((await client.decrypt({ ciphertext: second.ciphertext, key_id: second.key_id })).length).toBe(32)
    // The key_id must name the KEK in the data.
    const mismatch = await grpcError(client.decrypt({ ciphertext: first.ciphertext, key_id: k2 }))
    expect(codeOf(mismatch)).toBe('INVALID_ARGUMENT')
    expect(mismatch.details).toBe('key_id does not match the ciphertext')
  })

  it('rotation by usage (maxWrapsPerKek 8, DEK pool on): Encrypt and Status agree on key_id after every call, and it moves only when the chain rotates', async () => {
    const { client, chain } = await setup({ maxWrapsPerKek: 8 }, { healthCacheMs: 3_600_000 })
    await client.status() // the one probe of this test
    let last = ''
    let changes = 0
    for (let i = 0; i < 60; i++) {
      const before = chain.stats().rotations
      const { key_id } = await client.encrypt(seed())
      const rotated = chain.stats().rotations > before
      expect((await client.status()).key_id, `call ${i}`).toBe(key_id)
      if (last !== '' && key_id !== last) changes++
      if (last !== '') expect(key_id !== last, `call ${i}: key_id changed ${key_id !== last}, rotated ${rotated}`).toBe(rotated)
      last = key_id
    }
    expect(changes).toBeGreaterThanOrEqual(60 / 8 - 1)
  })

  it('a rotation due by age happens at the next Status probe, so key_id moves without any Encrypt call', async () => {
    const { client, chain } = await setup({ maxKekAgeMs: 1_500 }, { healthCacheMs: 0 })
    const k1 = (await client.status()).key_id
    expect((await client.status()).key_id).toBe(k1)
    await new Promise((r) => setTimeout(r, 1_600))
    const k2 = (await client.status()).key_id
    expect(k2).not.toBe(k1)
    expect(chain.stats().rotations).toBe(2)
    expect((await client.encrypt(seed())).key_id).toBe(k2)
  })
})

describe('several control-plane nodes on one store', () => {
  it('two plugins sharing a file store report the same key_id, and after an age rotation by one the other adopts its KEK', async () => {
    // A 5 s age: b must read the store within 5 s of a's rotation to adopt its KEK (with 1.5 s, a
    // loaded 2-core machine missed that window about one run in three, and b made its own).
    const AGE = 5_000
    const a = await setup({ maxKekAgeMs: AGE }, { healthCacheMs: 0 })
    const rootB = countingRootKey(aesRootKey(ROOT_BYTES))
    const chainB = await KeyChain.open({ rootKey: rootB, store: fileStore(join(a.dir, 'keys.json')), name: 'cluster-a', maxKekAgeMs: AGE })
    const socketB = join(a.dir, 'node-b.sock')
    const pluginB = await serveKmsPlugin({ socket: socketB, chain: chainB, rootKey: rootB, healthCacheMs: 0 })
    cleanups.push(() => pluginB.close())
    const b = kmsClient(socketB)
    cleanups.push(() => b.close())

    const k1 = (await a.client.status()).key_id
    expect((await b.status()).key_id).toBe(k1)
    const fromA = await a.client.encrypt(seed())
    expect((await b.decrypt({ ciphertext: fromA.ciphertext, key_id: fromA.key_id })).length).toBe(32)

    await new Promise((r) => setTimeout(r, AGE + 100))
    const k2 = (await a.client.status()).key_id // a's probe rotates: the head's primary was too old
    expect(k2).not.toBe(k1)
    expect((await b.status()).key_id).toBe(k2) // b's probe finds a's new KEK in the store and adopts it
    expect(chainB.stats().rotations).toBe(0)
    const fromB = await b.encrypt(seed())
    expect(fromB.key_id).toBe(k2)
    expect((await a.client.decrypt({ ciphertext: fromB.ciphertext, key_id: fromB.key_id })).length).toBe(32)
  })
})

describe('root-key calls against Encrypt calls', () => {
  it('1,000 Encrypt calls cost 1 root-key call (default policy); decrypting them all in a restarted chain costs 1 unwrap', async () => {
    const { client, root, dir, plugin } = await setup({}, { withRoot: false })
    const seeds: { ciphertext: Buffer; key_id: string; seed: Uint8Array }[] = []
    for (let i = 0; i < 1000; i++) {
      const s = seed()
      seeds.push({ ...(await client.encrypt(s)), seed: s })
    }
    expect(root.wraps).toBe(1)
    expect(root.unwraps).toBe(0)
    expect(plugin.stats().requests.Encrypt).toBe(1000)
    console.log(`k8s: 1000 Encrypt calls, default policy: ${root.wraps} root wrap(s), ${root.unwraps} unwrap(s)`)

    // Restart: a new chain on the same file store and a new plugin on a new socket.
    const root2 = countingRootKey(aesRootKey(ROOT_BYTES))
    const chain2 = await KeyChain.open({ rootKey: root2, store: fileStore(join(dir, 'keys.json')), name: 'cluster-a' })
    const socket2 = join(dir, 'second.sock')
    const plugin2 = await serveKmsPlugin({ socket: socket2, chain: chain2 })
    cleanups.push(() => plugin2.close())
    const client2 = kmsClient(socket2)
    cleanups.push(() => client2.close())
    for (const s of seeds) expect(same(await client2.decrypt({ ciphertext: s.ciphertext, key_id: s.key_id }), s.seed)).toBe(true)
    expect(root2.unwraps).toBe(1)
    expect(root2.wraps).toBe(0)
  })

  it('with maxWrapsPerKek 100, 1,000 Encrypt calls cost one wrap per rotation and no more', async () => {
    // leaseSize 10: one file-store write (two fsyncs) per 10 encryptions. The default for a limit
    // of 100 is 1, a write per Encrypt: 30 to 60 s for this test on a loaded machine.
    const { client, root, chain } = await setup({ maxWrapsPerKek: 100, leaseSize: 10 }, { withRoot: false })
    const keyIds = new Set<string>()
    for (let i = 0; i < 1000; i++) keyIds.add((await client.encrypt(seed())).key_id)
    // The DEK pool refills ahead in the background: after the 1,000th Encrypt it may have started
    // the next rotation (its root wrap done, its head write not yet). Every wrap is a rotation once
    // the chain is idle.
    await vi.waitFor(() => expect(root.wraps).toBe(chain.stats().rotations), { timeout: 5_000 })
    const { rotations } = chain.stats()
    expect(root.unwraps).toBe(0)
    // Each KEK wraps at most 100 DEKs (uses are reserved ahead by the DEK pool, so a few more KEKs than 1000/100).
    expect(rotations).toBeGreaterThanOrEqual(10)
    expect(rotations).toBeLessThanOrEqual(12)
    expect(keyIds.size).toBeLessThanOrEqual(rotations)
    for (const kek of chain.stats().keks) expect(kek.wraps).toBeLessThanOrEqual(100)
    console.log(`k8s: 1000 Encrypt calls, maxWrapsPerKek 100: ${root.wraps} root wraps, ${keyIds.size} key_ids seen by kube-apiserver`)
  })

  it('Status asks the root key at most once per healthCacheMs (here: 40 polls, 1 call) and never waits for it; checkHealth() probes now', async () => {
    const cached = await setup({}, { healthCacheMs: 60_000 })
    for (let i = 0; i < 40; i++) expect((await cached.client.status()).healthz).toBe('ok')
    await cached.plugin.checkHealth()
    expect(cached.plugin.stats().health.probes).toBe(2) // the first Status's, and checkHealth's
    expect(cached.root.wraps).toBe(1 + 2) // the chain's first KEK + the probes
    expect(cached.root.unwraps).toBe(0)

    const uncached = await setup({}, { healthCacheMs: 0 })
    for (let i = 0; i < 5; i++) await uncached.plugin.checkHealth()
    expect(uncached.plugin.stats().health.probes).toBe(5)
    expect(uncached.root.wraps).toBe(1 + 5)
  })
})

describe('health', () => {
  it('a failing root-key probe leaves healthz "ok" while the primary KEK is loaded, shows as degraded with a message that shows no secret; key_id stays set', async () => {
    let failWith: Error | undefined
    const changes: string[] = []
    const { client, plugin } = await setup({}, { healthCacheMs: 0, healthCheck: async () => { if (failWith) throw failWith }, onHealthChange: (h) => changes.push(`${h.healthz} | ${h.degraded ?? '-'}`) })
    const ok = await client.status()
    expect(ok.healthz).toBe('ok')
    failWith = new RootKeyError('the KMS answered 503', { retryable: true })
    expect(await plugin.checkHealth()).toBe('ok')
    expect(plugin.stats().health.degraded).toBe('root key: ERR_ROOT_KEY: the KMS answered 503')
    const down = await client.status()
    expect(down).toEqual({ version: 'v2', healthz: 'ok', key_id: ok.key_id })
    failWith = new Error(`connect failed with token ${SECRETS[0]}`)
    await plugin.checkHealth()
    expect(plugin.stats().health.degraded).toBe('root key: internal error')
    failWith = undefined
    expect(await plugin.checkHealth()).toBe('ok')
    expect(plugin.stats().health.degraded).toBeUndefined()
    expect((await client.encrypt(seed())).key_id).toBe(ok.key_id)
    expect(changes).toEqual(['ok | -', 'ok | root key: ERR_ROOT_KEY: the KMS answered 503', 'ok | root key: internal error', 'ok | -'])
    expect(JSON.stringify(plugin.stats())).not.toContain(SECRETS[0])
  })

  it('a root-key probe that hangs counts as failed after healthTimeoutMs', async () => {
    const { client, plugin } = await setup({}, { healthCacheMs: 0, healthTimeoutMs: 300, healthCheck: () => new Promise(() => {}) })
    await client.encrypt(seed()) // the first KEK, outside any health budget
    expect(await plugin.checkHealth()).toBe('ok')
    expect(plugin.stats().health.degraded).toBe('root key: the health check did not answer within 300 ms')
    expect((await client.status()).healthz).toBe('ok')
  })

  it('healthTimeoutMs bounds a Status evaluation: a root key too slow to make the first KEK gives unhealthy, then ok once it has', async () => {
    const t = tempDir()
    cleanups.push(t.cleanup)
    const inner = aesRootKey(ROOT_BYTES)
    const slow: RootKey = { kind: inner.kind, newKek: async (aad) => (await new Promise((r) => setTimeout(r, 300)), inner.newKek(aad)), unwrapKek: (w, aad) => inner.unwrapKek(w, aad) }
    const chain = await KeyChain.open({ rootKey: slow, store: memoryStore() })
    const plugin = await serveKmsPlugin({ socket: t.socket, chain, rootKey: slow, healthTimeoutMs: 120 })
    cleanups.push(() => plugin.close())
    expect(await plugin.checkHealth()).toBe('unhealthy: cannot serve Encrypt: the key chain did not answer within 120 ms')
    expect(plugin.stats().health.degraded).toBe('root key: the root key did not answer within 120 ms')
    await new Promise((r) => setTimeout(r, 400)) // the first KEK lands meanwhile
    expect(await plugin.checkHealth()).toBe('ok')
  })

  it('without rootKey or healthCheck, health follows the chain: ok once it has made its primary KEK', async () => {
    const { client, root, plugin } = await setup({}, { withRoot: false, healthCacheMs: 0 })
    for (let i = 0; i < 5; i++) expect((await client.status()).healthz).toBe('ok')
    expect(root.wraps).toBe(1) // the first KEK, made by the first Status; no other root call
    expect(plugin.stats().health.probes).toBe(0)
  })
})

describe('malformed requests get gRPC codes, never a crash, and no secret in any message', () => {
  it('Encrypt', async () => {
    const { client, plugin } = await setup()
    expect(codeOf(await grpcError(client.encrypt(new Uint8Array(0))))).toBe('INVALID_ARGUMENT')
    const big = await grpcError(client.encrypt(new Uint8Array(947)))
    expect(codeOf(big)).toBe('INVALID_ARGUMENT')
    expect(big.details).toBe('plaintext is 947 bytes; at most 946 fit the 1024-byte ciphertext limit')
    const largest = await client.encrypt(new Uint8Array(946).fill(7))
    expect(largest.ciphertext.length).toBe(1024)
    expect((await client.decrypt({ ciphertext: largest.ciphertext, key_id: largest.key_id })).every((b) => b === 7)).toBe(true)
    // Over the 64 KiB request limit: gRPC refuses it before our code runs.
    expect(codeOf(await grpcError(client.encrypt(new Uint8Array(100 * 1024))))).toBe('RESOURCE_EXHAUSTED')
    expect(plugin.stats().failures).toEqual({ INVALID_ARGUMENT: 2 })
  })

  it('Decrypt', async () => {
    const { client, plugin } = await setup()
    const dekSeed = seed()
    const good = await client.encrypt(dekSeed)
    const { ciphertext, key_id } = good
    const cases: [string, Parameters<KmsClient['decrypt']>[0], string, RegExp?][] = [
      ['empty ciphertext', { ciphertext: new Uint8Array(0), key_id }, 'INVALID_ARGUMENT', /^ciphertext is empty$/],
      ['ciphertext over 1 KiB', { ciphertext: new Uint8Array(1025), key_id }, 'INVALID_ARGUMENT', /1025 bytes; at most 1024/],
      ['empty key_id', { ciphertext, key_id: '' }, 'INVALID_ARGUMENT', /^key_id is empty$/],
      ['key_id over 1 KiB', { ciphertext, key_id: 'k'.repeat(1025) }, 'INVALID_ARGUMENT', /1025 bytes/],
      ['annotation key not a domain name', { ciphertext, key_id, annotations: { kek: new Uint8Array(1) } }, 'INVALID_ARGUMENT', /fully qualified/],
      ['annotations over 32 KiB', { ciphertext, key_id, annotations: { 'a.example.com': new Uint8Array(32 * 1024) } }, 'INVALID_ARGUMENT', /at most 32768/],
      ['key_id of another chain', { ciphertext, key_id: 'cluster-b/00000001' }, 'NOT_FOUND', /unknown key_id/],
      ['key_id that is not ours', { ciphertext, key_id: 'arn:aws:kms:eu-west-1:1:key/x' }, 'NOT_FOUND', /unknown key_id/],
      ['unexpected KEK annotation', { ciphertext, key_id, annotations: { [KEK_ANNOTATION]: new Uint8Array(45) } }, 'INVALID_ARGUMENT', /without an embedded KEK/],
      ['garbage after a valid header', { ciphertext: Buffer.concat([ciphertext.subarray(0, 6), crypto.getRandomValues(new Uint8Array(104))]), key_id }, 'INVALID_ARGUMENT', /^ERR_DECRYPT: decryption failed$/],
      ['one flipped bit', { ciphertext: Buffer.from(ciphertext.map((b, i) => (i === 60 ? b ^ 1 : b))), key_id }, 'INVALID_ARGUMENT', /^ERR_DECRYPT: decryption failed$/],
      ['truncated', { ciphertext: ciphertext.subarray(0, 100), key_id }, 'INVALID_ARGUMENT', /^ERR_(DECRYPT|FORMAT)/],
      ['5 bytes', { ciphertext: ciphertext.subarray(0, 5), key_id }, 'INVALID_ARGUMENT', /truncated/],
      ['wrong version byte', { ciphertext: Buffer.from(ciphertext.map((b, i) => (i === 0 ? 9 : b))), key_id }, 'INVALID_ARGUMENT', /^ERR_FORMAT: unsupported format version 9$/],
      ['random bytes', { ciphertext: crypto.getRandomValues(new Uint8Array(110)), key_id }, 'INVALID_ARGUMENT'],
    ]
    // A KEK id the chain has never made, with key_id and header agreeing.
    const unknown = Buffer.from(ciphertext)
    unknown.writeUInt32BE(0x0badf00d, 1)
    cases.push(['unknown KEK id', { ciphertext: unknown, key_id: 'cluster-a/0badf00d' }, 'NOT_FOUND', /^ERR_UNKNOWN_KEK: /])

    for (const [name, request, code, details] of cases) {
      const error = await grpcError(client.decrypt(request))
      expect(codeOf(error), name).toBe(code)
      if (details) expect(error.details, name).toMatch(details)
      for (const s of [...SECRETS, hex(dekSeed)]) expect(error.details.toLowerCase(), name).not.toContain(s)
    }
    // Still serving, and the good request still works.
    expect((await client.status()).healthz).toBe('ok')
    expect(same(await client.decrypt({ ciphertext, key_id }), dekSeed)).toBe(true)
    const failures = plugin.stats().failures
    expect((failures.INVALID_ARGUMENT ?? 0) + (failures.NOT_FOUND ?? 0)).toBe(cases.length)
    expect(failures.NOT_FOUND).toBe(3)
  })
})

describe('the socket', () => {
  it('is mode 0600, refuses a second server and a non-socket file, is removed at close; bad options are TypeError / RangeError', async () => {
    const { plugin, socket, dir, chain } = await setup()
    expect((await stat(socket)).mode & 0o777).toBe(0o600)
    await expect(serveKmsPlugin({ socket, chain })).rejects.toThrow(/in use by a running server/)
    const file = join(dir, 'not-a-socket')
    await writeFile(file, 'keep me')
    await expect(serveKmsPlugin({ socket: file, chain })).rejects.toThrow(/is not a socket/)
    expect(existsSync(file)).toBe(true)
    await expect(serveKmsPlugin({ socket: 'relative.sock', chain })).rejects.toBeInstanceOf(TypeError)
    await expect(serveKmsPlugin({ socket: join(dir, 'x.sock'), chain: {} as KeyChain })).rejects.toBeInstanceOf(TypeError)
    await expect(serveKmsPlugin({ socket: join(dir, 'x.sock'), chain, healthCacheMs: -1 })).rejects.toBeInstanceOf(RangeError)
    await plugin.close()
    await expect(lstat(socket)).rejects.toThrow(/ENOENT/)
  })

  it('is never reachable at its path with a wider mode, even under umask 0 (no window before the chmod)', async () => {
    for (let round = 0; round < 2; round++) {
      const t = tempDir()
      cleanups.push(t.cleanup)
      const child = spawnTs(new URL('./socket-umask.ts', import.meta.url).href, { ...process.env, KMS_PROXY_K8S_SOCKET: t.socket })
      expect(await readLine<number[]>(child, 'MODES ')).toEqual([0o600])
      expect(readdirSync(t.dir)).toEqual([]) // no staging folder left behind
    }
  })

  it('accepts unix:///path, as in the EncryptionConfiguration endpoint', async () => {
    const t = tempDir()
    cleanups.push(t.cleanup)
    const chain = await KeyChain.open({ store: memoryStore() })
    const plugin = await serveKmsPlugin({ socket: `unix://${t.socket}`, chain })
    cleanups.push(() => plugin.close())
    expect(plugin.socket).toBe(t.socket)
    const client = kmsClient(t.socket)
    cleanups.push(() => client.close())
    expect((await client.status()).version).toBe('v2')
  })
})

describe('restart', () => {
  const children: ReturnType<typeof spawnTs>[] = []
  afterAll(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
  })

  it('a new plugin process on the same socket and file store decrypts what the old one encrypted, with the same key_id; a stale socket from a killed plugin is replaced', async () => {
    const t = tempDir()
    cleanups.push(t.cleanup)
    const env = {
      ...process.env,
      KMS_PROXY_K8S_SOCKET: t.socket,
      KMS_PROXY_K8S_STORE: join(t.dir, 'keys.json'),
      KMS_PROXY_K8S_ROOT: hex(ROOT_BYTES),
    }
    const start = async () => {
      const child = spawnTs(new URL('./plugin-process.ts', import.meta.url).href, env)
      children.push(child)
      return { child, ready: await readLine<{ keyId: string; pid: number }>(child, 'READY ') }
    }

    const first = await start()
    let client = kmsClient(t.socket)
    expect((await client.status()).key_id).toBe(first.ready.keyId)
    const saved = []
    for (let i = 0; i < 3; i++) {
      const s = seed()
      saved.push({ ...(await client.encrypt(s)), seed: s })
    }
    client.close()
    const exited = new Promise((r) => first.child.once('exit', r))
    first.child.stdin!.end()
    await exited
    expect(existsSync(t.socket)).toBe(false)

    const second = await start()
    expect(second.ready.pid).not.toBe(first.ready.pid)
    expect(second.ready.keyId).toBe(first.ready.keyId) // the head is in the file store: no new KEK, no new seed needed
    client = kmsClient(t.socket)
    for (const s of saved) expect(same(await client.decrypt({ ciphertext: s.ciphertext, key_id: s.key_id, annotations: s.annotations }), s.seed)).toBe(true)
    client.close()

    // Killed without closing: the socket file stays behind, and the next start replaces it.
    const killed = new Promise((r) => second.child.once('exit', r))
    second.child.kill('SIGKILL')
    await killed
    expect((await lstat(t.socket)).isSocket()).toBe(true)
    const third = await start()
    client = kmsClient(t.socket)
    for (const s of saved) expect(same(await client.decrypt({ ciphertext: s.ciphertext, key_id: s.key_id }), s.seed)).toBe(true)
    expect((await client.status()).healthz).toBe('ok')
    client.close()
    third.child.stdin!.end()
  })
})
