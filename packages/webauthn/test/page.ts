/**
 * The page side of webauthn.test.ts: bundled with esbuild, served on http://localhost, driven by
 * playwright-core in Chromium with a CDP virtual authenticator. Every step is a function on
 * globalThis.kp that returns plain JSON to the test; ceremonies are counted by wrapping
 * navigator.credentials.get / create.
 */
import { KeyChain, KmsProxyError, aesRootKey, kekAad, memoryStore, type RootKey } from '@kms-proxy/core'
import { createHarness, describeRootKey } from '@kms-proxy/testkit'
import { NO_PRF_MESSAGE, registerPrfCredential, registerPrfRootKey, webauthnRootKey, type PrfCredential } from '@kms-proxy/webauthn'

const counts = { get: 0, create: 0 }
const container = navigator.credentials
const realGet = container.get.bind(container)
const realCreate = container.create.bind(container)
let lastAssertion: PublicKeyCredential | null = null
container.get = async (options?: CredentialRequestOptions) => {
  counts.get++
  const c = await realGet(options)
  lastAssertion = c as PublicKeyCredential | null
  return c
}
let lastCreated: PublicKeyCredential | null = null
container.create = async (options?: CredentialCreationOptions) => {
  counts.create++
  const c = await realCreate(options)
  lastCreated = c as PublicKeyCredential | null
  return c
}

const DATA = 'kms-proxy-test/data'
const CRED = 'kms-proxy-test/credential'

function errorInfo(e: unknown) {
  const err = e as KmsProxyError
  return {
    isKmsProxyError: e instanceof KmsProxyError,
    code: err?.code,
    name: err?.name,
    message: err?.message,
    retryable: err?.retryable,
    json: JSON.stringify(e),
  }
}

async function expectError(fn: () => Promise<unknown>) {
  try {
    await fn()
  } catch (e) {
    return errorInfo(e)
  }
  return { resolved: true }
}

const BLOCK = new Uint8Array(16).fill(0x5a)
const IV = new Uint8Array(12)

/** KEKs as the chain hands them to wrapKek: made under another root, unwrapped extractable; each sealed a known block. */
async function existingKeks(n: number) {
  const source = aesRootKey(crypto.getRandomValues(new Uint8Array(32)))
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const { kek, wrapped } = await source.newKek(kekAad('c', i + 1))
      const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: IV }, kek, BLOCK))
      return { sealed, handle: await source.unwrapKek(wrapped, kekAad('c', i + 1), { extractable: true }) }
    }),
  )
}

/** Whether `kek` opens the block its original sealed (a KEK's usages: encrypt, wrapKey, unwrapKey). */
async function sameKek(kek: CryptoKey, sealed: Uint8Array<ArrayBuffer>): Promise<boolean> {
  try {
    const block = await crypto.subtle.unwrapKey('raw', sealed, kek, { name: 'AES-GCM', iv: IV }, 'AES-GCM', true, ['encrypt'])
    const bytes = new Uint8Array(await crypto.subtle.exportKey('raw', block))
    return bytes.every((b, i) => b === BLOCK[i])
  } catch {
    return false
  }
}

function wrapOf(root: RootKey) {
  if (typeof root.wrapKek !== 'function') throw new Error('this root has no wrapKek')
  return root.wrapKek.bind(root)
}

const kp = {
  counts: () => ({ ...counts }),

  async register(options: { userName: string }) {
    const before = { ...counts }
    const started = performance.now()
    const cred = await registerPrfCredential({ rpName: 'kms-proxy test', userName: options.userName })
    return { cred, ms: performance.now() - started, creates: counts.create - before.create, gets: counts.get - before.get }
  },

  async registerError(options: { userName: string }) {
    return expectError(() => registerPrfCredential({ rpName: 'kms-proxy test', userName: options.userName }))
  },

  async registerRootKeyError(options: { userName: string }) {
    return expectError(() => registerPrfRootKey({ rpName: 'kms-proxy test', userName: options.userName }))
  },

  /**
   * registerPrfRootKey: ceremonies it takes, whether the root is unlocked, and whether a fresh
   * webauthnRootKey of the returned parameters (a real get) decrypts what the first root encrypted.
   */
  async registerRootKey(options: { userName: string }) {
    const before = { ...counts }
    const started = performance.now()
    const { credential, rootKey } = await registerPrfRootKey({ rpName: 'kms-proxy test', userName: options.userName })
    const ms = performance.now() - started
    const afterRegister = { ...counts }
    const unlockedAtOnce = rootKey.unlocked
    // the browser's buffer of the create-time PRF output, after the root derived its key from it
    const createOutput = new Uint8Array((lastCreated!.getClientExtensionResults() as { prf?: { results?: { first?: ArrayBuffer } } }).prf!.results!.first!)
    const chain = await KeyChain.open({ rootKey })
    const encrypted = await chain.encryptText('made under the key from create()')
    const afterEncrypt = { ...counts }
    const fresh = webauthnRootKey(credential)
    const decrypted = await (await KeyChain.open({ rootKey: fresh })).decryptText(encrypted)
    return {
      credential,
      json: JSON.stringify(rootKey),
      ms,
      unlockedAtOnce,
      register: { creates: afterRegister.create - before.create, gets: afterRegister.get - before.get },
      encryptGets: afterEncrypt.get - afterRegister.get,
      freshGets: counts.get - afterEncrypt.get,
      decrypted,
      wraps: chain.stats().rootKeyWraps,
      createOutput: { length: createOutput.length, allZero: createOutput.every((b) => b === 0) },
    }
  },

  /** A credential made without asking for PRF (to test unlock on an authenticator that has none). */
  async createPlainCredential(): Promise<PrfCredential> {
    const c = (await navigator.credentials.create({
      publicKey: {
        rp: { name: 'kms-proxy test' },
        user: { id: crypto.getRandomValues(new Uint8Array(16)), name: 'plain', displayName: 'plain' },
        challenge: crypto.getRandomValues(new Uint8Array(32)),
        pubKeyCredParams: [{ type: 'public-key', alg: -7 }],
        authenticatorSelection: { residentKey: 'preferred', userVerification: 'required' },
      },
    })) as PublicKeyCredential
    const id = new Uint8Array(c.rawId)
    let s = ''
    for (const b of id) s += String.fromCharCode(b)
    return { credentialId: btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''), salt: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }
  },

  async unlockError(cred: PrfCredential) {
    return expectError(() => webauthnRootKey(cred).unlock())
  },

  /** Unlock, encrypt n messages with the embedded store, keep them as kp1. text in localStorage. */
  async encryptAndStore(options: { cred: PrfCredential; n: number }) {
    const root = webauthnRootKey(options.cred)
    localStorage.setItem(CRED, JSON.stringify(root))
    const chain = await KeyChain.open({ rootKey: root })
    const before = { ...counts }
    const t0 = performance.now()
    await root.unlock()
    const unlockMs = performance.now() - t0
    const afterUnlock = counts.get
    const texts: string[] = []
    const t1 = performance.now()
    for (let i = 0; i < options.n; i++) texts.push(await chain.encryptText(`message ${i}: ${'é'.repeat(i % 7)}`))
    // read back on the same chain too
    for (const [i, t] of texts.entries()) if ((await chain.decryptText(t)) !== `message ${i}: ${'é'.repeat(i % 7)}`) throw new Error('round trip')
    const messagesMs = performance.now() - t1
    localStorage.setItem(DATA, JSON.stringify(texts))
    return {
      unlockMs,
      messagesMs,
      ceremoniesForUnlock: afterUnlock - before.get,
      ceremoniesForMessages: counts.get - afterUnlock,
      stats: chain.stats(),
      storedJson: localStorage.getItem(CRED),
      sample: texts[0],
    }
  },

  /** As a fresh page would: parameters and data from localStorage, a new root, a new chain. */
  async reopenAndDecrypt() {
    const cred = JSON.parse(localStorage.getItem(CRED)!) as PrfCredential
    const texts = JSON.parse(localStorage.getItem(DATA)!) as string[]
    const root = webauthnRootKey(cred)
    const chain = await KeyChain.open({ rootKey: root })
    const before = counts.get
    const t0 = performance.now()
    const first = await chain.decryptText(texts[0]!) // the unlock happens here, inside the chain
    const firstMs = performance.now() - t0
    const afterFirst = counts.get
    const out = [first]
    for (const t of texts.slice(1)) out.push(await chain.decryptText(t))
    for (let i = 0; i < 20; i++) out.push(await chain.decryptText(await chain.encryptText(`more ${i}`)))
    return {
      firstMs,
      ceremoniesForUnlock: afterFirst - before,
      ceremoniesForMessages: counts.get - afterFirst,
      ok: out.slice(0, texts.length).every((p, i) => p === `message ${i}: ${'é'.repeat(i % 7)}`),
      n: out.length,
      unlocked: root.unlocked,
    }
  },

  /** n unlocks of fresh root objects: ms for each (ceremony + HKDF + first KEK), and ceremonies used. */
  async timeUnlocks(options: { cred: PrfCredential; n: number }) {
    const ms: number[] = []
    const before = counts.get
    for (let i = 0; i < options.n; i++) {
      const root = webauthnRootKey(options.cred)
      const t0 = performance.now()
      await root.unlock()
      await root.newKek(new Uint8Array(8))
      ms.push(performance.now() - t0)
    }
    return { ms, ceremonies: counts.get - before }
  },

  /** After an unlock: what the browser's PRF result buffer holds now (the root zeroes what it was given). */
  async prfBufferAfterUnlock(cred: PrfCredential) {
    await webauthnRootKey(cred).unlock()
    const prf = (lastAssertion!.getClientExtensionResults() as { prf?: { results?: { first?: ArrayBuffer } } }).prf
    const first = new Uint8Array(prf!.results!.first!)
    // Control: the same results read twice are the same buffer, and a raw ceremony's output is not zero.
    const again = (lastAssertion!.getClientExtensionResults() as { prf?: { results?: { first?: ArrayBuffer } } }).prf
    const raw = (await navigator.credentials.get({
      publicKey: {
        challenge: crypto.getRandomValues(new Uint8Array(32)),
        allowCredentials: [{ type: 'public-key', id: Uint8Array.from(atob(cred.credentialId.replace(/-/g, '+').replace(/_/g, '/')), (ch) => ch.charCodeAt(0)) }],
        userVerification: 'required',
        extensions: { prf: { eval: { first: Uint8Array.from(atob(cred.salt.replace(/-/g, '+').replace(/_/g, '/')), (ch) => ch.charCodeAt(0)) } } } as AuthenticationExtensionsClientInputs,
      },
    })) as PublicKeyCredential
    const rawFirst = new Uint8Array((raw.getClientExtensionResults() as { prf?: { results?: { first?: ArrayBuffer } } }).prf!.results!.first!)
    return {
      length: first.length,
      allZero: first.every((b) => b === 0),
      sameBuffer: again!.results!.first === prf!.results!.first,
      rawLength: rawFirst.length,
      rawAllZero: rawFirst.every((b) => b === 0),
    }
  },

  async decryptWith(cred: PrfCredential) {
    const texts = JSON.parse(localStorage.getItem(DATA)!) as string[]
    const chain = await KeyChain.open({ rootKey: webauthnRootKey(cred) })
    const before = counts.get
    const error = await expectError(() => chain.decryptText(texts[0]!))
    return { error, ceremonies: counts.get - before }
  },

  /** One root object: the first unlock fails (the test turned user presence off), the retry works. */
  async cancelThenRetry(options: { cred: PrfCredential; timeout: number }) {
    const root = webauthnRootKey({ ...options.cred, timeout: options.timeout })
    const error = await expectError(() => root.unlock())
    ;(globalThis as { cancelled?: boolean }).cancelled = true
    // wait for the test to turn verification back on
    while ((globalThis as { resume?: boolean }).resume !== true) await new Promise((r) => setTimeout(r, 20))
    const chain = await KeyChain.open({ rootKey: root })
    const texts = JSON.parse(localStorage.getItem(DATA)!) as string[]
    return { error, retried: await chain.decryptText(texts[0]!) }
  },

  /**
   * wrapKek as addRoot uses it: n KEKs made under another root, unwrapped extractable, wrapped
   * under this credential; then a fresh root of the same credential unwraps every one.
   * Ceremonies are counted for each half; every KEK is checked to open what its original sealed.
   */
  async wrapMany(options: { cred: PrfCredential; n: number }) {
    const keks = await existingKeks(options.n)
    const root = webauthnRootKey(options.cred)
    let before = counts.get
    let t0 = performance.now()
    // all at once, as a chain that wraps in parallel would: the first use's ceremony is shared
    const wrapped = await Promise.all(keks.map((k, i) => wrapOf(root)(k.handle, kekAad('c', i + 1))))
    const wrapMs = performance.now() - t0
    const wrapGets = counts.get - before
    // and one by one afterwards on the same root: no ceremony at all
    before = counts.get
    for (const [i, k] of keks.slice(0, 50).entries()) await wrapOf(root)(k.handle, kekAad('c', i + 1))
    const laterWrapGets = counts.get - before

    const fresh = webauthnRootKey(options.cred)
    before = counts.get
    t0 = performance.now()
    const opened = await Promise.all(wrapped.map((w, i) => fresh.unwrapKek(w, kekAad('c', i + 1))))
    const unwrapMs = performance.now() - t0
    const unwrapGets = counts.get - before
    let opens = 0
    for (const [i, k] of opened.entries()) if (await sameKek(k, keks[i]!.sealed)) opens++
    const asked = await fresh.unwrapKek(wrapped[0]!, kekAad('c', 1), { extractable: true })
    return {
      wrapGets,
      laterWrapGets,
      unwrapGets,
      wrapMs,
      unwrapMs,
      opens,
      lengths: [...new Set(wrapped.map((w) => w.length))],
      tags: [...new Set(wrapped.map((w) => w[0]))],
      extractable: { byDefault: opened.some((k) => k.extractable), whenAsked: asked.extractable, opensWhenAsked: await sameKek(asked, keks[0]!.sealed) },
      kind: root.kind,
    }
  },

  /** Two credentials as two roots of one KEK: each reads its own wrap only; ceremonies counted. */
  async twoPasskeys(options: { a: PrfCredential; b: PrfCredential }) {
    const { handle, sealed } = (await existingKeks(1))[0]!
    const aad = kekAad('c', 1)
    const [a, b] = [webauthnRootKey(options.a), webauthnRootKey(options.b)]
    let before = counts.get
    const [wa, wb] = [await wrapOf(a)(handle, aad), await wrapOf(b)(handle, aad)]
    const wrapGets = counts.get - before
    before = counts.get
    const own = [await sameKek(await a.unwrapKek(wa, aad), sealed), await sameKek(await b.unwrapKek(wb, aad), sealed)]
    const ownGets = counts.get - before
    before = counts.get
    const crossed = [await expectError(() => b.unwrapKek(wa, aad)), await expectError(() => a.unwrapKek(wb, aad))]
    const crossedUnlockedGets = counts.get - before
    before = counts.get
    const crossedFresh = await expectError(() => webauthnRootKey(options.b).unwrapKek(wa, aad))
    const crossedFreshGets = counts.get - before
    return { kinds: [a.kind, b.kind], wrapGets, own, ownGets, crossed, crossedUnlockedGets, crossedFresh, crossedFreshGets }
  },

  /** wrapKek given what it cannot wrap: TypeError, and no ceremony for it. */
  async wrapRefusals(cred: PrfCredential) {
    const root = webauthnRootKey(cred)
    const fixed = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 128 }, false, ['encrypt', 'wrapKey', 'unwrapKey'])
    const hmac = await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-256' }, true, ['sign'])
    const before = counts.get
    const errors = []
    for (const bad of [fixed, hmac, new Uint8Array(16), undefined]) {
      try {
        await wrapOf(root)(bad as CryptoKey, kekAad('c', 1))
        errors.push('resolved')
      } catch (e) {
        errors.push((e as Error).name)
      }
    }
    return { errors, gets: counts.get - before, unlocked: root.unlocked }
  },

  /**
   * A chain of n KEKs under an AES root gains two passkeys (addRoot), then a third made by
   * registerPrfRootKey ("add another device"); each passkey alone then opens the chain.
   * Ceremonies are counted at every step.
   */
  async addPasskeys(options: { a: PrfCredential; b: PrfCredential; n: number }) {
    const store = memoryStore()
    const chain = await KeyChain.open({ rootKey: aesRootKey(crypto.getRandomValues(new Uint8Array(32))), store })
    const messages: Array<{ text: string; encrypted: string }> = []
    for (let i = 0; i < options.n; i++) {
      await chain.rotate()
      if (i % 100 === 0 || i === options.n - 1) messages.push({ text: `m${i}`, encrypted: await chain.encryptText(`m${i}`) })
    }
    const gets: Record<string, number> = {}
    const ms: Record<string, number> = {}
    const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const before = counts.get
      const t0 = performance.now()
      const out = await fn()
      ms[name] = performance.now() - t0
      gets[name] = counts.get - before
      return out
    }
    const added = await step('addFirst', () => chain.addRoot('passkey', webauthnRootKey(options.a)))
    const second = await step('addSecond', () => chain.addRoot('passkey-2', webauthnRootKey(options.b)))
    const creates = counts.create
    const { credential, rootKey } = await registerPrfRootKey({ rpName: 'kms-proxy test', userName: 'frank' })
    const third = await step('addRegistered', () => chain.addRoot('passkey-3', rootKey))
    const registerCreates = counts.create - creates
    await step('rotateUnderAll', () => chain.rotate())
    messages.push({ text: 'after', encrypted: await chain.encryptText('after') })
    const roots = (await chain.listRoots()).map((r) => `${r.name}:${r.kind}:${r.state}`)
    const opens: Record<string, boolean> = {}
    for (const [name, cred] of [['passkey', options.a], ['passkey-2', options.b], ['passkey-3', credential]] as const) {
      const alone = await KeyChain.open({ roots: { [name]: webauthnRootKey(cred) }, store })
      const out = await step(`open:${name}`, async () => Promise.all(messages.map((m) => alone.decryptText(m.encrypted))))
      opens[name] = out.every((t, i) => t === messages[i]!.text)
    }
    // both passkeys held, as a page that offers either: how many prompts the chain asks for
    const both = await KeyChain.open({ roots: { passkey: webauthnRootKey(options.a), 'passkey-2': webauthnRootKey(options.b) }, store })
    const bothOut = await step('open:both', async () => Promise.all(messages.map((m) => both.decryptText(m.encrypted))))
    opens.both = bothOut.every((t, i) => t === messages[i]!.text)
    const reports = [added, second, third].map((r) => ({ keks: r.keks, wrapped: r.wrapped, rootKeyWraps: r.rootKeyWraps }))
    return { reports, gets, ms, registerCreates, roots, opens }
  },

  async contract(options: { cred: PrfCredential; other: PrfCredential }) {
    const t = createHarness()
    describeRootKey(t, { name: 'webauthn-prf', make: () => webauthnRootKey(options.cred), other: () => webauthnRootKey(options.other), wrapKek: true })
    // Extra checks of this root, in the same harness.
    t.test('webauthn-prf: toJSON and String() show only the public parameters', () => {
      const root = webauthnRootKey(options.cred)
      t.equal(JSON.stringify(root), JSON.stringify({ credentialId: options.cred.credentialId, salt: options.cred.salt }))
      t.equal(String(root), '[RootKey webauthn-prf]')
    })
    t.test('webauthn-prf: a KEK from another kind of root, or of the wrong length, is refused without a ceremony', async () => {
      const before = counts.get
      await t.rejects(webauthnRootKey(options.cred).unwrapKek(new Uint8Array(45).fill(1), new Uint8Array(4)), (e) =>
        t.ok(e instanceof KmsProxyError && e.code === 'ERR_ROOT_KEY', String(e)),
      )
      const short = new Uint8Array(44).fill(1)
      short[0] = 0x40
      await t.rejects(webauthnRootKey(options.cred).unwrapKek(short, new Uint8Array(4)), (e) =>
        t.ok(e instanceof KmsProxyError && e.code === 'ERR_ROOT_KEY', String(e)),
      )
      t.equal(counts.get, before, 'ceremonies:')
    })
    t.test('webauthn-prf: a wrapped KEK is 0x40 || iv (12) || AES-GCM(KEK) (32): 45 bytes', async () => {
      const { wrapped } = await webauthnRootKey(options.cred).newKek(new Uint8Array(4))
      t.equal(wrapped.length, 45, 'length:')
      t.equal(wrapped[0], 0x40, 'tag:')
    })
    t.test('webauthn-prf: concurrent first uses share one ceremony', async () => {
      const root = webauthnRootKey(options.cred)
      const before = counts.get
      const made = await Promise.all([root.newKek(new Uint8Array(4)), root.newKek(new Uint8Array(5)), root.unlock()])
      t.equal(made.length, 3)
      t.equal(counts.get - before, 1, 'ceremonies:')
    })
    const before = counts.get
    const results = await t.run()
    return { results, ceremonies: counts.get - before }
  },

  NO_PRF_MESSAGE,
}

;(globalThis as unknown as { kp: typeof kp }).kp = kp
;(globalThis as { kpReady?: boolean }).kpReady = true
