/**
 * pkcs11BridgeRootKey against real bridges (`@kms-proxy/pkcs11-bridge`) on SoftHSM2, started in
 * a child process with the token's SOFTHSM2_CONF (see ../../pkcs11-bridge/test/hsm.ts for why a
 * child). Bridge A and B hold different keys on one token; bridge C's key is deleted mid-test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { KeyChain, KmsProxyError, memoryStore } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { pkcs11BridgeRootKey } from '../src/index.ts'
import { MODULE, PIN, TOKEN_LABEL, bearer, makeToken, readLine, spawnTs, type TestToken } from '../../pkcs11-bridge/test/hsm.ts'

const TOKEN = bearer()
let hsm: TestToken
let child: ChildProcess
let urls: string[] = []
const calls: string[] = []
const errors: unknown[] = []

/** Counts bridge calls by path, then forwards them. */
const countingFetch: typeof fetch = async (input, init) => {
  calls.push(String(input).split('/v1/')[1] ?? '?')
  return fetch(input, init)
}

beforeAll(async () => {
  hsm = makeToken()
  const base = { module: MODULE, tokenLabel: TOKEN_LABEL, pin: PIN, token: TOKEN, createKey: true }
  const bridges = [{ ...base, keyLabel: 'bridge-a' }, { ...base, keyLabel: 'bridge-b' }, { ...base, keyLabel: 'bridge-c' }]
  child = spawnTs('./serve.ts', { ...hsm.env, KMS_PROXY_TEST_BRIDGES: JSON.stringify(bridges) })
  urls = await readLine<string[]>(child, 'READY ')
}, 30_000)

afterAll(async () => {
  if (child && child.exitCode === null) {
    const exited = new Promise((r) => child.once('exit', r))
    child.stdin!.end()
    await exited
  }
  hsm?.cleanup()
  // The PIN and the bearer token never appear in any error these tests saw.
  for (const e of errors) {
    const shown = `${String(e)} ${JSON.stringify(e)} ${(e as Error).stack ?? ''}`
    expect(shown).not.toContain(TOKEN)
    expect(shown).not.toContain(PIN)
  }
})

const root = (i = 0, overrides = {}) => pkcs11BridgeRootKey({ url: urls[i]!, token: TOKEN, fetch: countingFetch, ...overrides })

async function rootKeyError(promise: Promise<unknown>, message: RegExp): Promise<KmsProxyError> {
  const error = await promise.then(() => undefined, (e: unknown) => e)
  errors.push(error)
  expect(error).toBeInstanceOf(KmsProxyError)
  expect((error as KmsProxyError).code).toBe('ERR_ROOT_KEY')
  expect((error as KmsProxyError).message).toMatch(message)
  return error as KmsProxyError
}

describeRootKey(createHarness(it), {
  name: 'pkcs11BridgeRootKey (SoftHSM2)',
  make: () => root(0),
  other: () => root(1),
  secrets: [TOKEN, PIN],
})

describe('the PKCS#11 bridge through a key chain', () => {
  it('one generate per rotation, one unwrap per KEK per process, none per message', async () => {
    calls.length = 0
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: root(), store, maxWrapsPerKek: 500, dekPoolSize: 0 })
    const encrypted = []
    for (let i = 0; i < 2000; i++) encrypted.push(await chain.encrypt(`record ${i}`))
    const keks = (await store.listKeks('default')).length
    expect(keks).toBe(4)
    expect(calls.filter((c) => c === 'generate').length).toBe(keks)
    expect(calls.filter((c) => c === 'unwrap').length).toBe(0)
    calls.length = 0
    const reader = await KeyChain.open({ rootKey: root(), store })
    await Promise.all(encrypted.map((e) => reader.decrypt(e)))
    expect(calls).toEqual(Array(keks).fill('unwrap'))
    console.log(`PKCS#11 bridge: 2,000 encryptions made ${keks} generate calls (maxWrapsPerKek 500); 2,000 decryptions in a new chain made ${keks} unwrap calls`)
  })

  it('measures ms per generate and per unwrap over HTTP (SoftHSM2)', async () => {
    const r = root(0, { fetch })
    const aad = new TextEncoder().encode('kms-proxy/kek/v1 timing')
    const n = 200
    const wrapped: Uint8Array[] = []
    for (let i = 0; i < 20; i++) wrapped.push((await r.newKek(aad)).wrapped) // warm up
    let started = performance.now()
    for (let i = 0; i < n; i++) wrapped[i % 20] = (await r.newKek(aad)).wrapped
    const generate = (performance.now() - started) / n
    started = performance.now()
    for (let i = 0; i < n; i++) await r.unwrapKek(wrapped[i % 20]!, aad)
    const unwrap = (performance.now() - started) / n
    console.log(`PKCS#11 bridge on loopback (SoftHSM2, sequential, n=${n}): ${generate.toFixed(3)} ms per generate, ${unwrap.toFixed(3)} ms per unwrap (HTTP + C_GenerateRandom + CKM_AES_GCM + importKey)`)
    expect(generate).toBeLessThan(100)
  })
})

describe('clear, typed errors from the client', () => {
  it('a bad bearer token: "the PKCS#11 bridge refused the token", not retryable, token not shown', async () => {
    const wrong = bearer()
    const error = await rootKeyError(pkcs11BridgeRootKey({ url: urls[0]!, token: wrong }).newKek(new Uint8Array(4)), /the PKCS#11 bridge refused the token/)
    expect(error.retryable).toBe(false)
    expect(`${String(error)} ${JSON.stringify(error)} ${error.stack}`).not.toContain(wrong)
    const { wrapped } = await root(0).newKek(new Uint8Array(4))
    await rootKeyError(pkcs11BridgeRootKey({ url: urls[0]!, token: wrong }).unwrapKek(wrapped, new Uint8Array(4)), /refused the token/)
  })

  it('the bridge down: "did not answer", retryable, after the retries', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port
        s.close(() => resolve(p))
      })
    })
    let attempts = 0
    const counting: typeof fetch = (input, init) => (attempts++, fetch(input, init))
    const error = await rootKeyError(
      pkcs11BridgeRootKey({ url: `http://127.0.0.1:${port}`, token: TOKEN, retries: 2, backoffMs: 1, fetch: counting }).newKek(new Uint8Array(4)),
      /the PKCS#11 bridge did not answer at http:\/\/127\.0\.0\.1:\d+ \(TypeError\): is it running\?/,
    )
    expect(error.retryable).toBe(true)
    expect(attempts).toBe(3)
  })

  it('unwrap failures (wrong associated data, altered bytes, another key) say so', async () => {
    const aad = new Uint8Array([1, 2, 3])
    const { wrapped } = await root(0).newKek(aad)
    const message = /could not unwrap this KEK: wrong key, the wrapped KEK was altered, or the associated data differs/
    await rootKeyError(root(0).unwrapKek(wrapped, new Uint8Array([1, 2, 4])), message)
    const altered = wrapped.slice()
    altered[20]! ^= 1
    await rootKeyError(root(0).unwrapKek(altered, aad), message)
    await rootKeyError(root(1).unwrapKek(wrapped, aad), message)
    await rootKeyError(root(0).unwrapKek(wrapped.subarray(0, 30), aad), /wrong length/)
    await rootKeyError(root(0).unwrapKek(Uint8Array.of(0x20, ...wrapped.subarray(1)), aad), /not wrapped by a PKCS#11 root key/)
  })

  it('a key deleted from the token: "missing on the token", not retryable', async () => {
    const aad = new Uint8Array([9])
    const { wrapped } = await root(2).newKek(aad)
    const done = readLine<number>(child, 'DESTROYED ')
    child.stdin!.write('destroy bridge-c\n')
    expect(await done).toBe(1)
    const error = await rootKeyError(root(2).unwrapKek(wrapped, aad), /the PKCS#11 bridge reports that its key is missing on the token: .*no secret key labelled "bridge-c"/)
    expect(error.retryable).toBe(false)
    await rootKeyError(root(2).newKek(aad), /key is missing on the token/)
  })

  it('String() and JSON.stringify() of the root key show no token', () => {
    const r = root(0)
    expect(String(r)).toBe('[RootKey pkcs11-bridge]')
    expect(JSON.stringify(r)).not.toContain(TOKEN)
    expect(JSON.parse(JSON.stringify(r)).kind).toBe('pkcs11-bridge')
  })
})
