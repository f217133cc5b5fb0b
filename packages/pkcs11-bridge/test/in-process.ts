/**
 * Child process for tests (needs SOFTHSM2_CONF in its real environment, see hsm.ts): runs the
 * PKCS#11 tests that touch the token from this process on the testkit's own harness, then prints
 * `RESULTS [..]` for pkcs11.test.ts to report one vitest test per result.
 */
import * as graphene from 'graphene-pk11'
import { request } from 'node:http'
import { readFile, stat, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KeyChain, KmsProxyError, memoryStore } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { pkcs11BridgeRootKey } from '../../pkcs11/src/index.ts'
import { pkcs11RootKey, startPkcs11Bridge } from '../src/index.ts'
import { MODULE, PIN, TOKEN_LABEL, bearer } from './hsm.ts'

const t = createHarness()
const base = { module: MODULE, tokenLabel: TOKEN_LABEL, pin: PIN }
const notes: string[] = []
const TOKEN = bearer()

/** Asserts an ERR_ROOT_KEY whose message matches, and that no secret shows anywhere in it. */
function typed(message: RegExp, secrets: string[] = [PIN, TOKEN]) {
  return (e: unknown) => {
    t.ok(e instanceof KmsProxyError && e.code === 'ERR_ROOT_KEY', `expected ERR_ROOT_KEY, got ${String(e)}`)
    t.ok(message.test((e as Error).message), `message ${JSON.stringify((e as Error).message)} does not match ${message}`)
    const shown = `${String(e)} ${JSON.stringify(e)} ${(e as Error).stack ?? ''} ${String((e as Error).cause ?? '')}`
    for (const s of secrets) t.ok(!shown.includes(s), 'a secret appears in the error')
  }
}

// First, before anything logs in: the wrong PIN reaches C_Login and the token answers CKR_PIN_INCORRECT.
t.test('pkcs11RootKey: wrong token label, wrong PIN, missing key are ERR_ROOT_KEY at first use, PIN not shown', async () => {
  const aad = new Uint8Array(4)
  await t.rejects(pkcs11RootKey({ ...base, tokenLabel: 'no-such-token', keyLabel: 'k' }).newKek(aad), typed(/^no PKCS#11 token labelled "no-such-token" \(tokens present: "kms-proxy"\)$/))
  await t.rejects(pkcs11RootKey({ ...base, pin: '0000', keyLabel: 'k' }).newKek(aad), typed(/^the PKCS#11 token "kms-proxy" refused the PIN \(CKR_PIN_INCORRECT\)$/, [PIN, '0000']))
  await t.rejects(pkcs11RootKey({ ...base, keyLabel: 'never-made' }).unwrapKek(new Uint8Array(45).fill(0x30), aad), typed(/^the PKCS#11 token "kms-proxy" has no secret key labelled "never-made"/))
  // A failed open is not cached: the same root key works once the key exists.
  const late = pkcs11RootKey({ ...base, keyLabel: 'made-late' })
  await t.rejects(late.newKek(aad), typed(/no secret key labelled "made-late"/))
  const maker = pkcs11RootKey({ ...base, keyLabel: 'made-late', createKey: true })
  await maker.newKek(aad) // opens lazily: the key is created here
  maker.close()
  await late.newKek(aad)
  late.close()
})

// The first make() creates the key; every later one finds it.
describeRootKey(t, {
  name: 'pkcs11RootKey (SoftHSM2, in process)',
  make: () => pkcs11RootKey({ ...base, keyLabel: 'in-process-a', createKey: true }),
  other: () => pkcs11RootKey({ ...base, keyLabel: 'in-process-b', createKey: true }),
  secrets: [PIN],
  wrapKek: true,
})

// Now this process is logged in: C_Login answers CKR_USER_ALREADY_LOGGED_IN and the PIN check is ours.
t.test('startPkcs11Bridge: wrong token label, wrong PIN, missing key reject at start with ERR_ROOT_KEY, PIN not shown', async () => {
  const options = { ...base, keyLabel: 'in-process-a', token: TOKEN }
  await t.rejects(startPkcs11Bridge({ ...options, tokenLabel: 'nope' }), typed(/^no PKCS#11 token labelled "nope"/))
  await t.rejects(startPkcs11Bridge({ ...options, pin: '9999' }), typed(/refused the PIN \(CKR_PIN_INCORRECT\)/, [PIN, '9999', TOKEN]))
  await t.rejects(startPkcs11Bridge({ ...options, keyLabel: 'absent' }), typed(/has no secret key labelled "absent"/))
  await t.rejects(() => startPkcs11Bridge({ ...options, host: '0.0.0.0' }), (e) => t.ok(e instanceof TypeError && /loopback/.test((e as Error).message)))
  await t.rejects(() => startPkcs11Bridge({ ...options, token: 'short' }), (e) => t.ok(e instanceof TypeError))
})

t.test('the key on the token is AES-256, sensitive and not extractable; reading CKA_VALUE fails', async () => {
  const maker = pkcs11RootKey({ ...base, keyLabel: 'attributes', createKey: true })
  await maker.newKek(new Uint8Array(1)) // opens lazily: the key is created here
  maker.close()
  const module = graphene.Module.load(MODULE)
  module.initialize()
  const slots = module.getSlots(true)
  let checked = 0
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i)
    if (slot.getToken().label.trim() !== TOKEN_LABEL) continue
    const session = slot.open(graphene.SessionFlag.SERIAL_SESSION)
    try {
      session.login(PIN)
    } catch {
      // Already logged in in this process.
    }
    const found = session.find({ class: graphene.ObjectClass.SECRET_KEY, label: 'attributes' })
    t.equal(found.length, 1, 'keys labelled "attributes":')
    const key = found.items(0)
    const a = key.getAttribute({ extractable: null, sensitive: null, token: null, keyType: null, valueLen: null, neverExtractable: null, alwaysSensitive: null })
    t.equal(a.extractable, false, 'CKA_EXTRACTABLE:')
    t.equal(a.sensitive, true, 'CKA_SENSITIVE:')
    t.equal(a.token, true, 'CKA_TOKEN:')
    t.equal(a.keyType, graphene.KeyType.AES, 'CKA_KEY_TYPE:')
    t.equal(a.valueLen, 32, 'CKA_VALUE_LEN:')
    t.equal(a.neverExtractable, true, 'CKA_NEVER_EXTRACTABLE:')
    t.equal(a.alwaysSensitive, true, 'CKA_ALWAYS_SENSITIVE:')
    const error = await t.rejects(async () => key.getAttribute({ value: null }), undefined, 'reading CKA_VALUE')
    t.ok(/CKR_ATTRIBUTE_SENSITIVE/.test(String(error)), `expected CKR_ATTRIBUTE_SENSITIVE, got ${String(error)}`)
    // Nor can it be made extractable afterwards.
    await t.rejects(async () => key.setAttribute({ extractable: true }), undefined, 'setting CKA_EXTRACTABLE')
    session.close()
    checked++
  }
  t.equal(checked, 1, 'tokens checked:')
})

/** fetch over a Unix socket with node:http (Node 20's fetch has no socketPath; undici's Agent is not a dependency here). */
function unixFetch(socketPath: string): typeof fetch {
  return (async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = new URL(String(input))
    const headers: Record<string, string> = {}
    new Headers(init?.headers).forEach((value, name) => (headers[name] = value))
    return new Promise<Response>((resolve, reject) => {
      const req = request({ socketPath, path: url.pathname, method: init?.method ?? 'GET', headers }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 500 })))
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end(init?.body as string | undefined)
    })
  }) as typeof fetch
}

t.test('the bridge over a Unix socket (mode 0600): pkcs11BridgeRootKey with a node:http fetch; KEKs interoperate with pkcs11RootKey', async () => {
  const socketPath = join(tmpdir(), `kms-proxy-bridge-${process.pid}.sock`)
  const bridge = await startPkcs11Bridge({ ...base, keyLabel: 'in-process-a', token: TOKEN, socketPath, createKey: true })
  try {
    t.equal(bridge.url, 'http://localhost')
    t.equal((await stat(socketPath)).mode & 0o777, 0o600, 'socket mode:')
    const root = pkcs11BridgeRootKey({ url: bridge.url, token: TOKEN, fetch: unixFetch(socketPath) })
    const store = memoryStore()
    const encrypted = await (await KeyChain.open({ rootKey: root, store })).encrypt('over a Unix socket')
    const reader = await KeyChain.open({ rootKey: root, store })
    t.equal(new TextDecoder().decode(await reader.decrypt(encrypted)), 'over a Unix socket')
    // Same key, same format: a KEK wrapped through the bridge unwraps in process, and back.
    const aad = new Uint8Array([7, 7])
    const local = pkcs11RootKey({ ...base, keyLabel: 'in-process-a' })
    const viaBridge = await root.newKek(aad)
    await local.unwrapKek(viaBridge.wrapped, aad)
    await root.unwrapKek((await local.newKek(aad)).wrapped, aad)
    // wrapKek's envelope too, both ways, and extractable only when asked.
    const kek = await local.unwrapKek(viaBridge.wrapped, aad, { extractable: true })
    t.equal(kek.extractable, true, 'extractable when asked:')
    t.equal((await local.unwrapKek(await root.wrapKek!(kek, aad), aad)).extractable, false, 'the bridge\'s envelope, unwrapped in process, extractable:')
    t.equal((await root.unwrapKek(await local.wrapKek!(kek, aad), aad, { extractable: true })).extractable, true, 'the in-process envelope, unwrapped through the bridge when asked, extractable:')
    await t.rejects(pkcs11BridgeRootKey({ url: bridge.url, token: bearer(), fetch: unixFetch(socketPath) }).newKek(aad), typed(/the PKCS#11 bridge refused the token/))
  } finally {
    await bridge.close()
  }
  await t.rejects(stat(socketPath), undefined, 'the socket file is removed at close')
  // close() removes only the socket it linked: a file put at the path meanwhile stays.
  const again = await startPkcs11Bridge({ ...base, keyLabel: 'in-process-a', token: TOKEN, socketPath })
  await unlink(socketPath)
  await writeFile(socketPath, 'someone else')
  await again.close()
  t.equal(await readFile(socketPath, 'utf8'), 'someone else', 'the file at the path after close:')
  await unlink(socketPath)
})

t.test('measures ms per generate and unwrap in process (SoftHSM2)', async () => {
  const root = pkcs11RootKey({ ...base, keyLabel: 'in-process-a' })
  const aad = new TextEncoder().encode('kms-proxy/kek/v1 timing')
  const n = 500
  const wrapped: Uint8Array[] = []
  for (let i = 0; i < 20; i++) wrapped.push((await root.newKek(aad)).wrapped)
  let started = performance.now()
  for (let i = 0; i < n; i++) wrapped[i % 20] = (await root.newKek(aad)).wrapped
  const generate = (performance.now() - started) / n
  started = performance.now()
  for (let i = 0; i < n; i++) await root.unwrapKek(wrapped[i % 20]!, aad)
  const unwrap = (performance.now() - started) / n
  notes.push(`pkcs11RootKey in process (SoftHSM2, sequential, n=${n}): ${generate.toFixed(3)} ms per newKek, ${unwrap.toFixed(3)} ms per unwrapKek (C_GenerateRandom + CKM_AES_GCM + importKey)`)
  root.close()
})

const results = await t.run()
process.stdout.write(`RESULTS ${JSON.stringify({ results, notes })}\n`)
process.exit(0)
