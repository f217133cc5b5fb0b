/**
 * A rotation made anywhere reaches every plugin (invariant 10), on real parts: etcd 3.4 as the
 * shared store, each plugin its own process serving gRPC on its own Unix socket, the rotation
 * made through one plugin or by a third process, the plugins driven over their sockets the way
 * kube-apiserver drives them (Status, then Encrypt). Prints the measured switch times.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { KeyChain, aesRootKey, decodeHeader } from '@kms-proxy/core'
import { etcdStore } from '../../etcd/src/index.ts'
import { startEtcd, type EtcdCluster } from '../../etcd/test/etcd-process.ts'
import { readLine, spawnTs } from '../../pkcs11-bridge/test/hsm.ts'
import type { KmsPluginHealth } from '../src/index.ts'
import { hex, kmsClient, seed, tempDir, type EncryptResponse, type KmsClient } from './client.ts'

const ROOT_BYTES = crypto.getRandomValues(new Uint8Array(32))
const children: ReturnType<typeof spawnTs>[] = []
const cleanups: (() => unknown)[] = []
let etcd: EtcdCluster
const BOUND = 2_000
const prefixOf = () => `k8s-fleet-${hex(crypto.getRandomValues(new Uint8Array(4)))}/`
const prefixes = { small: prefixOf(), defaults: prefixOf() }
/** The four plugin processes, started at once (a start costs seconds on a loaded machine). */
let plugins: Promise<PluginProcess[]>

beforeAll(async () => {
  etcd = await startEtcd()
  plugins = Promise.all([
    // a follows the store's push (a polling watch on a ref'd timer, as an open etcd watch holds
    // its process); b has only the bound.
    startPlugin(prefixes.small, { KMS_PROXY_K8S_STALENESS: String(BOUND), KMS_PROXY_K8S_POLL_WATCH: '500' }),
    startPlugin(prefixes.small, { KMS_PROXY_K8S_STALENESS: String(BOUND), KMS_PROXY_K8S_WATCH: 'off' }),
    // c and d: the defaults.
    startPlugin(prefixes.defaults, {}),
    startPlugin(prefixes.defaults, {}),
  ])
  plugins.catch(() => {}) // awaited by the tests
}, 60_000)
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
  for (const c of cleanups.splice(0).reverse()) await c()
  await etcd?.stop()
})

interface PluginProcess {
  client: KmsClient
  keyId: string
  /** chain.rotate() inside the plugin's process: the new key_id, and when rotate() resolved there. */
  rotate(): Promise<{ keyId: string; at: number }>
  health(): Promise<KmsPluginHealth>
  /** Ends stdin (the plugin closes) and resolves with the ms until the process exited by itself. */
  stop(): Promise<number>
}

async function startPlugin(prefix: string, env: Record<string, string>): Promise<PluginProcess> {
  const t = tempDir()
  cleanups.push(t.cleanup)
  const child = spawnTs(new URL('./plugin-process.ts', import.meta.url).href, {
    ...process.env,
    KMS_PROXY_K8S_SOCKET: t.socket,
    KMS_PROXY_K8S_ETCD: JSON.stringify(etcd.urls),
    KMS_PROXY_K8S_PREFIX: prefix,
    KMS_PROXY_K8S_ROOT: hex(ROOT_BYTES),
    ...env,
  })
  children.push(child)
  await readLine(child, 'READY ', 60_000)
  const client = kmsClient(t.socket, 10_000)
  cleanups.push(() => client.close())
  // On a loaded machine the first KEK may take longer than a Status's budget: ask until ok.
  let ready = await client.status()
  for (let i = 0; i < 20 && ready.healthz !== 'ok'; i++) ready = await new Promise((r) => setTimeout(r, 500)).then(() => client.status())
  expect(ready.healthz).toBe('ok')
  const ask = <T>(command: string, answer: string) => {
    const line = readLine<T>(child, answer)
    child.stdin!.write(`${command}\n`)
    return line
  }
  return {
    client,
    keyId: ready.key_id,
    rotate: () => ask('rotate', 'ROTATED '),
    health: () => ask('health', 'HEALTH '),
    async stop() {
      const exited = new Promise<number>((resolve) => child.once('exit', () => resolve(performance.now())))
      const closed = readLine(child, 'CLOSED ', 20_000)
      const started = performance.now()
      child.stdin!.end()
      await closed
      const at = await Promise.race([exited, new Promise<number>((r) => setTimeout(() => r(Infinity), 10_000))])
      return at - started
    },
  }
}

interface Answer {
  method: 'Status' | 'Encrypt'
  keyId: string
  /** Ms after the rotation resolved (Date.now() is one clock for every process on this machine). */
  ms: number
}

/**
 * Calls `methods` on `p` in turn every 50 ms until every one has answered `to` five times (at
 * most `limitMs`): every answer, when each method first answered `to`, and the Encrypt
 * responses (each checked: its key_id names the KEK in its ciphertext's header).
 */
async function follow(p: PluginProcess, methods: Answer['method'][], to: string, rotatedAt: number, limitMs: number) {
  const answers: Answer[] = []
  const sealed: (EncryptResponse & { seed: Uint8Array })[] = []
  const deadline = performance.now() + limitMs
  for (let round = 0; round < 2_000 && performance.now() < deadline; round++) {
    for (const method of methods) {
      let keyId: string
      if (method === 'Status') keyId = (await p.client.status()).key_id
      else {
        const s = seed()
        const r = await p.client.encrypt(s)
        expect(r.key_id.split('/')[1]).toBe(decodeHeader(r.ciphertext).kekId.toString(16).padStart(8, '0'))
        sealed.push({ ...r, seed: s })
        keyId = r.key_id
      }
      answers.push({ method, keyId, ms: Date.now() - rotatedAt })
    }
    if (methods.every((m) => answers.filter((a) => a.method === m && a.keyId === to).length >= 5)) break
    await new Promise((r) => setTimeout(r, 50))
  }
  const firstMs = (m: Answer['method']) => answers.find((a) => a.method === m && a.keyId === to)?.ms ?? Infinity
  const switched = answers.findIndex((a) => a.keyId === to)
  return { answers, sealed, statusMs: firstMs('Status'), encryptMs: firstMs('Encrypt'), afterSwitch: switched < 0 ? [] : answers.slice(switched) }
}

const ms = (n: number) => `${Math.round(n)} ms`
const same = (a: Uint8Array, b: Uint8Array) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

async function decryptsEverywhere(plugins: PluginProcess[], sealed: (EncryptResponse & { seed: Uint8Array })[]) {
  for (const p of plugins) {
    for (const s of sealed) {
      const plain = await p.client.decrypt({ ciphertext: s.ciphertext, key_id: s.key_id, annotations: s.annotations })
      expect(same(plain, s.seed)).toBe(true)
    }
  }
}

describe('a rotation anywhere reaches every plugin on one etcd', () => {
  it('maxStalenessMs 2 s: rotated through one plugin, the other\'s Status and Encrypt switch together and never go back; rotated by a third process, both plugins\' Encrypt alone switch within the bound; data crosses; the plugins exit when closed', async () => {
    const MARGIN = 2_500 // a loaded 2-core machine: process scheduling, not the plugin
    const prefix = prefixes.small
    const [a, b] = (await plugins) as [PluginProcess, PluginProcess]
    const k1 = a.keyId
    expect(b.keyId).toBe(k1)
    const sealed: (EncryptResponse & { seed: Uint8Array })[] = []
    for (const p of [a, b]) {
      const s = seed()
      sealed.push({ ...(await p.client.encrypt(s)), seed: s })
    }
    expect(sealed.map((s) => s.key_id)).toEqual([k1, k1])

    // 1. Through a, b polled as kube-apiserver polls (Status, then Encrypt).
    const first = await a.rotate()
    const k2 = first.keyId
    expect(k2).not.toBe(k1)
    const viaA = await follow(b, ['Status', 'Encrypt'], k2, first.at, BOUND + MARGIN + 5_000)
    console.log(`k8s fleet: rotated through plugin a; plugin b's Status says the new key_id after ${ms(viaA.statusMs)}, its Encrypt after ${ms(viaA.encryptMs)} (maxStalenessMs ${BOUND}, ${viaA.answers.length} answers)`)
    expect(viaA.statusMs).toBeLessThanOrEqual(BOUND + MARGIN)
    expect(viaA.encryptMs).toBeLessThanOrEqual(BOUND + MARGIN)
    expect(new Set(viaA.answers.map((x) => x.keyId))).toEqual(new Set(viaA.answers[0]!.keyId === k1 ? [k1, k2] : [k2]))
    // Once either call says k2, neither goes back to k1: kube-apiserver never sees Status and
    // Encrypt disagree after the switch.
    expect(viaA.afterSwitch.filter((x) => x.keyId !== k2)).toEqual([])
    sealed.push(...viaA.sealed)

    // 2. By a third process (this one), as `kms-proxy rotate` would; both plugins polled with
    // Encrypt alone, so nothing but the chain's own bound (b) or the store's push (a) moves them.
    const third = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: etcdStore({ endpoints: etcd.urls, prefix }), name: 'cluster-a', watch: false })
    cleanups.push(() => third.close())
    const rotated = await third.rotate()
    const at = Date.now()
    const k3 = `cluster-a/${rotated.id.toString(16).padStart(8, '0')}`
    expect([k1, k2]).not.toContain(k3)
    const [onA, onB] = await Promise.all([a, b].map((p) => follow(p, ['Encrypt'], k3, at, BOUND + MARGIN + 5_000)))
    console.log(`k8s fleet: rotated by a third process; Encrypt alone says the new key_id after ${ms(onA!.encryptMs)} on plugin a (store push, polled every 500 ms) and ${ms(onB!.encryptMs)} on plugin b (maxStalenessMs ${BOUND})`)
    for (const f of [onA!, onB!]) {
      expect(f.encryptMs).toBeLessThanOrEqual(BOUND + MARGIN)
      expect(f.afterSwitch.filter((x) => x.keyId !== k3)).toEqual([])
      sealed.push(...f.sealed)
    }
    for (const p of [a, b]) expect((await p.client.status()).key_id).toBe(k3)

    // Health says when the head was last read: after the third process's rotation, since b saw it.
    const health = await b.health()
    expect(health.headCheckedAt).toBeGreaterThan(at - 1_000)
    expect(health.headCheckedAt).toBeLessThanOrEqual(Date.now())

    // Every seed sealed by either plugin, under k1, k2 and k3, decrypts in both.
    expect(new Set(sealed.map((s) => s.key_id))).toEqual(new Set([k1, k2, k3]))
    await decryptsEverywhere([a, b], sealed)

    // Closed, each process ends by itself: the plugin closed its chain, so a's watch stopped.
    const [exitA, exitB] = await Promise.all([a.stop(), b.stop()])
    console.log(`k8s fleet: after close, plugin a (watching) exited in ${ms(exitA!)}, plugin b in ${ms(exitB!)}`)
    expect(exitA).toBeLessThan(10_000)
    expect(exitB).toBeLessThan(10_000)
  }, 90_000)

  it('default settings (maxStalenessMs 15 s, the store\'s own watch if it has one): Status says the new key_id at the first call after a rotation by a third process, Encrypt alone within 15 s; the plugins exit when closed', async () => {
    const DEFAULT_BOUND = 15_000
    const MARGIN = 2_500
    const prefix = prefixes.defaults
    const [c, d] = (await plugins).slice(2) as [PluginProcess, PluginProcess]
    expect(d.keyId).toBe(c.keyId)
    const third = await KeyChain.open({ rootKey: aesRootKey(ROOT_BYTES), store: etcdStore({ endpoints: etcd.urls, prefix }), name: 'cluster-a', watch: false })
    cleanups.push(() => third.close())
    const watches = typeof etcdStore({ endpoints: etcd.urls }).watchHead === 'function'
    const rotated = await third.rotate()
    const at = Date.now()
    const k2 = `cluster-a/${rotated.id.toString(16).padStart(8, '0')}`
    expect(k2).not.toBe(c.keyId)
    // c polled with Status alone, as kube-apiserver polls; d with Encrypt alone, which only the
    // chain's own bound (or the store's push) moves.
    const [onC, onD] = await Promise.all([
      follow(c, ['Status'], k2, at, MARGIN + 5_000),
      follow(d, ['Encrypt'], k2, at, DEFAULT_BOUND + MARGIN + 5_000),
    ])
    console.log(
      `k8s fleet, default settings (${watches ? 'the etcd store watches' : 'the etcd store has no watch: the 15 s bound alone'}): after a rotation by a third process, Status said the new key_id after ${ms(onC!.statusMs)} (its first call), Encrypt alone after ${ms(onD!.encryptMs)}`,
    )
    expect(onC!.statusMs).toBeLessThanOrEqual(MARGIN)
    expect(onD!.encryptMs).toBeLessThanOrEqual(DEFAULT_BOUND + MARGIN)
    for (const f of [onC!, onD!]) expect(f.afterSwitch.filter((x) => x.keyId !== k2)).toEqual([])
    expect((await d.client.status()).key_id).toBe(k2)
    expect((await c.client.encrypt(seed())).key_id).toBe(k2)
    await decryptsEverywhere([c], onD!.sealed)

    const [exitC, exitD] = await Promise.all([c.stop(), d.stop()])
    expect(exitC).toBeLessThan(10_000)
    expect(exitD).toBeLessThan(10_000)
  }, 90_000)
})
