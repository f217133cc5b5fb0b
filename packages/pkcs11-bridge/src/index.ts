/**
 * The PKCS#11 bridge: a small Node server that holds one logged-in session on an HSM token and
 * answers `pkcs11BridgeRootKey` (from `@kms-proxy/pkcs11`) over HTTP on loopback or a Unix socket.
 * Also `pkcs11RootKey`, the same root key in process, without HTTP.
 *
 * The wrapping key is an AES-256 secret key on the token (CKA_TOKEN, CKA_SENSITIVE true,
 * CKA_EXTRACTABLE false): it never leaves the HSM. A KEK is 16 random bytes from the token's
 * RNG (C_GenerateRandom), sealed with CKM_AES_GCM (random 12-byte IV, AAD = the chain's KEK
 * AAD, 128-bit tag): wrapped = 0x30 || iv || ciphertext || tag.
 *
 * What crosses the socket: the KEK bytes, in each /v1/generate and /v1/unwrap answer. That is
 * why the bridge listens only on loopback or a Unix socket (mode 0600) and every request needs
 * the bearer token, compared in constant time.
 *
 * PKCS#11 calls are synchronous here: one session serves one operation at a time, and on
 * SoftHSM2 each call takes well under a millisecond. The chain makes them rarely (once per
 * rotation, once per KEK per process).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createHash, timingSafeEqual } from 'node:crypto'
import { chmod } from 'node:fs/promises'
import * as graphene from 'graphene-pk11'
import { RootKeyError, type NewKek, type RootKey } from '@kms-proxy/core'
import { PKCS11_WRAP_TAG, checkWrapped, fromBase64, importKekBytes, toBase64 } from '@kms-proxy/pkcs11'

export interface Pkcs11KeyOptions {
  /** Path of the PKCS#11 module, such as /usr/lib/softhsm/libsofthsm2.so. */
  module: string
  /** The token's label (slot ids may change; labels do not). */
  tokenLabel: string
  /** The user PIN. Never appears in errors, `String()` or `JSON.stringify`. */
  pin: string
  /** CKA_LABEL of the AES-256 wrapping key on the token. */
  keyLabel: string
  /** Create the key (AES-256, token, sensitive, not extractable) when the token has none. Default false. */
  createKey?: boolean
}

export interface Pkcs11BridgeOptions extends Pkcs11KeyOptions {
  /** The bearer token clients must send. At least 16 characters. */
  token: string
  /** A loopback address: 127.0.0.1 (default), ::1 or localhost. */
  host?: string
  /** Default 0: any free port. */
  port?: number
  /** Listen on this Unix socket instead of TCP (made mode 0600). */
  socketPath?: string
}

export interface Pkcs11Bridge {
  /** http://127.0.0.1:PORT, or http://localhost for a Unix socket (use a fetch that can reach it). */
  url: string
  socketPath?: string
  close(): Promise<void>
}

const GCM_IV_BYTES = 12
const KEK_BYTES = 16
const MAX_BODY = 64 * 1024
const WHAT = 'the PKCS#11 token'

// ------------------------------------------------------------------------------- PKCS#11 side

/** The CKR_* name of a PKCS#11 error, if it is one. */
function ckr(error: unknown): string | undefined {
  return /CKR_[A-Z0-9_]+/.exec(String((error as Error | undefined)?.message ?? ''))?.[0]
}

/** Why a token operation failed, for the bridge's answer. */
const reasons = new WeakMap<Error, 'key_missing' | 'unwrap_failed' | 'unavailable'>()
function fail(reason: 'key_missing' | 'unwrap_failed' | 'unavailable', message: string, retryable = false): RootKeyError {
  const error = new RootKeyError(message, { retryable })
  reasons.set(error, reason)
  return error
}

/**
 * One loaded, initialized module per library path, shared; finalized when the last user closes.
 * `logins` keeps, per token label, a digest of the PIN this process logged in with: PKCS#11
 * login state belongs to the whole process, so a second C_Login answers
 * CKR_USER_ALREADY_LOGGED_IN without checking its PIN. A different PIN is then wrong (the first
 * one was accepted), and is refused as the token would have.
 */
const modules = new Map<string, { module: graphene.Module; users: number; logins: Map<string, Buffer> }>()

function acquireModule(path: string): graphene.Module {
  const known = modules.get(path)
  if (known) {
    known.users++
    return known.module
  }
  let module: graphene.Module
  try {
    module = graphene.Module.load(path)
    module.initialize()
  } catch (error) {
    throw new RootKeyError(`could not load the PKCS#11 module ${path} (${ckr(error) ?? (error as Error).message})`)
  }
  modules.set(path, { module, users: 1, logins: new Map() })
  return module
}

function releaseModule(path: string): void {
  const known = modules.get(path)
  if (!known || --known.users > 0) return
  modules.delete(path)
  try {
    known.module.finalize()
  } catch {
    // Already finalized: nothing to release.
  }
}

const SESSION_LOST = new Set(['CKR_SESSION_HANDLE_INVALID', 'CKR_SESSION_CLOSED', 'CKR_DEVICE_REMOVED', 'CKR_TOKEN_NOT_PRESENT', 'CKR_USER_NOT_LOGGED_IN', 'CKR_CRYPTOKI_NOT_INITIALIZED'])
const KEY_LOST = new Set(['CKR_KEY_HANDLE_INVALID', 'CKR_OBJECT_HANDLE_INVALID'])

/**
 * A logged-in session and the wrapping key's handle. Reopens the session once when the token
 * says it lost it, and looks the key up again when its handle went stale.
 */
class TokenKey {
  #options: Pkcs11KeyOptions
  #module: graphene.Module | undefined
  #session: graphene.Session | undefined
  #key: graphene.SecretKey | undefined

  constructor(options: Pkcs11KeyOptions) {
    this.#options = options
    this.#open()
  }

  #open(): void {
    const { tokenLabel, pin } = this.#options
    const module = acquireModule(this.#options.module)
    this.#module = module
    try {
      const slots = module.getSlots(true)
      const labels: string[] = []
      let slot: graphene.Slot | undefined
      for (let i = 0; i < slots.length; i++) {
        const candidate = slots.items(i)
        const label = candidate.getToken().label.trim()
        labels.push(label)
        if (label === tokenLabel) slot = candidate
      }
      if (!slot) {
        const present = labels.filter((l) => l !== '').map((l) => `"${l}"`).join(', ') || 'none'
        throw new RootKeyError(`no PKCS#11 token labelled "${tokenLabel}" (tokens present: ${present})`)
      }
      let session: graphene.Session
      try {
        session = slot.open(graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION)
      } catch (error) {
        throw new RootKeyError(`could not open a session on ${WHAT} "${tokenLabel}" (${ckr(error) ?? 'error'})`, { retryable: true })
      }
      this.#session = session
      const logins = modules.get(this.#options.module)!.logins
      const pinDigest = createHash('sha256').update(pin, 'utf8').digest()
      const refused = () => new RootKeyError(`${WHAT} "${tokenLabel}" refused the PIN (CKR_PIN_INCORRECT)`)
      try {
        session.login(pin, graphene.UserType.USER)
        logins.set(tokenLabel, pinDigest)
      } catch (error) {
        const code = ckr(error)
        if (code === 'CKR_USER_ALREADY_LOGGED_IN') {
          const known = logins.get(tokenLabel)
          if (known && !timingSafeEqual(known, pinDigest)) throw refused()
        } else {
          // No cause: keep the native error (and anything it might carry) out of the chain.
          if (code === 'CKR_PIN_INCORRECT') throw refused()
          if (code === 'CKR_PIN_LOCKED') throw new RootKeyError(`the PIN of ${WHAT} "${tokenLabel}" is locked (CKR_PIN_LOCKED)`)
          throw new RootKeyError(`could not log in to ${WHAT} "${tokenLabel}" (${code ?? 'error'})`)
        }
      }
      this.#key = this.#findKey(this.#options.createKey === true)
    } catch (error) {
      this.close()
      throw error
    }
  }

  #findKey(create: boolean): graphene.SecretKey {
    const { tokenLabel, keyLabel } = this.#options
    const session = this.#session!
    const found = session.find({ class: graphene.ObjectClass.SECRET_KEY, label: keyLabel })
    if (found.length > 1) throw new RootKeyError(`${WHAT} "${tokenLabel}" holds ${found.length} secret keys labelled "${keyLabel}"; expected one`)
    let key: graphene.SecretKey
    if (found.length === 0) {
      if (!create) throw fail('key_missing', `${WHAT} "${tokenLabel}" has no secret key labelled "${keyLabel}" (pass createKey: true to create one)`)
      try {
        key = session.generateKey(graphene.KeyGenMechanism.AES, {
          class: graphene.ObjectClass.SECRET_KEY,
          keyType: graphene.KeyType.AES,
          label: keyLabel,
          valueLen: 32,
          token: true,
          private: true,
          sensitive: true,
          extractable: false,
          encrypt: true,
          decrypt: true,
        })
      } catch (error) {
        throw new RootKeyError(`could not create the key "${keyLabel}" on ${WHAT} "${tokenLabel}" (${ckr(error) ?? 'error'})`)
      }
    } else {
      key = found.items(0).toType<graphene.SecretKey>()
    }
    const attributes = key.getAttribute({ keyType: null, sensitive: null, extractable: null, valueLen: null })
    if (attributes.keyType !== graphene.KeyType.AES || attributes.valueLen !== 32) {
      throw new RootKeyError(`the key "${keyLabel}" on ${WHAT} "${tokenLabel}" is not an AES-256 key`)
    }
    if (attributes.sensitive !== true || attributes.extractable !== false) {
      throw new RootKeyError(`the key "${keyLabel}" on ${WHAT} "${tokenLabel}" is extractable or not sensitive; refusing it`)
    }
    return key
  }

  /** Runs `fn` with the key; on a lost session reopens once, on a stale handle looks the key up again. */
  #withKey<T>(what: string, fn: (session: graphene.Session, key: graphene.SecretKey) => T): T {
    for (let attempt = 0; ; attempt++) {
      try {
        if (!this.#session) this.#open()
        return fn(this.#session!, this.#key!)
      } catch (error) {
        if (error instanceof RootKeyError) throw error
        const code = ckr(error)
        if (attempt === 0 && code && KEY_LOST.has(code)) {
          this.#key = this.#findKey(false)
          continue
        }
        if (attempt === 0 && code && SESSION_LOST.has(code)) {
          this.close()
          continue
        }
        throw fail('unavailable', `${WHAT} failed to ${what} (${code ?? 'error'})`, code !== undefined && SESSION_LOST.has(code))
      }
    }
  }

  /** A fresh KEK from the token's RNG and its wrapped form. The caller zeroes `kek`. */
  generate(aad: Uint8Array): { kek: Buffer; wrapped: Uint8Array<ArrayBuffer> } {
    return this.#withKey('generate a KEK', (session, key) => {
      const kek = session.generateRandom(KEK_BYTES)
      try {
        const iv = session.generateRandom(GCM_IV_BYTES)
        const params = new graphene.AesGcmParams(iv, Buffer.from(aad), 128)
        const sealed = session.createCipher({ name: 'AES_GCM', params }, key).once(kek, Buffer.alloc(KEK_BYTES + 16))
        const wrapped = new Uint8Array(1 + GCM_IV_BYTES + sealed.length)
        wrapped[0] = PKCS11_WRAP_TAG
        wrapped.set(iv, 1)
        wrapped.set(sealed, 1 + GCM_IV_BYTES)
        return { kek, wrapped }
      } catch (error) {
        kek.fill(0)
        throw error
      }
    })
  }

  /** The KEK inside `wrapped`. The caller zeroes it. */
  unwrap(wrapped: Uint8Array, aad: Uint8Array): Buffer {
    checkWrapped(wrapped)
    return this.#withKey('unwrap a KEK', (session, key) => {
      const iv = Buffer.from(wrapped.subarray(1, 1 + GCM_IV_BYTES))
      const params = new graphene.AesGcmParams(iv, Buffer.from(aad), 128)
      const out = Buffer.alloc(KEK_BYTES + 16)
      try {
        const kek = session.createDecipher({ name: 'AES_GCM', params }, key).once(Buffer.from(wrapped.subarray(1 + GCM_IV_BYTES)), out)
        if (kek.length !== KEK_BYTES) throw new Error('CKR_ENCRYPTED_DATA_LEN_RANGE')
        return Buffer.from(kek) // a copy the caller zeroes; the work buffer is zeroed below
      } catch (error) {
        const code = ckr(error)
        if (code && (KEY_LOST.has(code) || SESSION_LOST.has(code))) throw error
        throw fail('unwrap_failed', 'the PKCS#11 key could not unwrap this KEK: wrong key, the wrapped KEK was altered, or the associated data differs')
      } finally {
        out.fill(0)
      }
    })
  }

  close(): void {
    const session = this.#session
    this.#session = undefined
    this.#key = undefined
    if (session) {
      try {
        session.close()
      } catch {
        // The token may be gone already.
      }
    }
    if (this.#module) {
      this.#module = undefined
      releaseModule(this.#options.module)
    }
  }
}

function checkKeyOptions(options: Pkcs11KeyOptions, who: string): void {
  if (typeof options !== 'object' || options === null) throw new TypeError(`${who}: expected an options object`)
  for (const field of ['module', 'tokenLabel', 'pin', 'keyLabel'] as const) {
    if (typeof options[field] !== 'string' || options[field] === '') throw new TypeError(`${who}: ${field} must be a non-empty string`)
  }
}

// ------------------------------------------------------------------------------- in process

/**
 * The PKCS#11 root key in this Node process, without the bridge. Opens the token at first use
 * (wrong token label, PIN or missing key surface there, as ERR_ROOT_KEY). `close()` ends the
 * session. The module reads its configuration (SOFTHSM2_CONF) from the process's real
 * environment: setting process.env in a worker thread does not reach it.
 */
export function pkcs11RootKey(options: Pkcs11KeyOptions): RootKey & { close(): void } {
  checkKeyOptions(options, 'pkcs11RootKey')
  const settings = { ...options }
  let token: TokenKey | undefined
  const open = () => (token ??= new TokenKey(settings))
  const bytesOf = (b: Buffer): Uint8Array<ArrayBuffer> => {
    const copy = new Uint8Array(b)
    b.fill(0)
    return copy
  }
  const what = 'the PKCS#11 key'
  return {
    kind: 'pkcs11',
    async newKek(aad): Promise<NewKek> {
      const { kek, wrapped } = open().generate(aad)
      return { kek: await importKekBytes(bytesOf(kek), what), wrapped }
    },
    async unwrapKek(wrapped, aad) {
      return importKekBytes(bytesOf(open().unwrap(wrapped, aad)), what)
    },
    close() {
      token?.close()
      token = undefined
    },
    toString: () => '[RootKey pkcs11]',
    toJSON: () => ({ kind: 'pkcs11', tokenLabel: settings.tokenLabel, keyLabel: settings.keyLabel }),
  } as RootKey & { close(): void }
}

// ------------------------------------------------------------------------------- the bridge

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost'])

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest()
}

function send(res: ServerResponse, status: number, body: Record<string, string>): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown> | undefined> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY) return undefined
    chunks.push(chunk)
  }
  try {
    const value = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown
    return typeof value === 'object' && value !== null ? (value as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

/**
 * Starts the bridge: opens the token (wrong label, PIN or missing key reject here, as
 * ERR_ROOT_KEY), then listens on loopback or a Unix socket.
 */
export async function startPkcs11Bridge(options: Pkcs11BridgeOptions): Promise<Pkcs11Bridge> {
  checkKeyOptions(options, 'startPkcs11Bridge')
  if (typeof options.token !== 'string' || options.token.length < 16) throw new TypeError('startPkcs11Bridge: token must be a string of at least 16 characters')
  const host = options.host ?? '127.0.0.1'
  if (options.socketPath === undefined && !LOOPBACK.has(host)) {
    throw new TypeError(`startPkcs11Bridge: host must be a loopback address (127.0.0.1, ::1, localhost): KEK bytes cross this socket`)
  }
  const expected = digest(`Bearer ${options.token}`)
  const tokenKey = new TokenKey({ module: options.module, tokenLabel: options.tokenLabel, pin: options.pin, keyLabel: options.keyLabel, createKey: options.createKey })

  const server = createServer(async (req, res) => {
    try {
      // Constant time: compare digests of equal length, whatever the header's length.
      const given = digest(typeof req.headers.authorization === 'string' ? req.headers.authorization : '')
      if (!timingSafeEqual(given, expected)) {
        req.resume()
        return send(res, 401, { error: 'unauthorized', message: 'missing or wrong bearer token' })
      }
      const path = (req.url ?? '').split('?')[0]
      if (req.method !== 'POST' || (path !== '/v1/generate' && path !== '/v1/unwrap')) {
        req.resume()
        return send(res, 404, { error: 'not_found', message: 'POST /v1/generate or /v1/unwrap' })
      }
      const body = await readJson(req)
      let aad: Uint8Array
      let wrapped: Uint8Array | undefined
      try {
        if (!body) throw new TypeError()
        aad = fromBase64(body.aad)
        if (path === '/v1/unwrap') wrapped = fromBase64(body.wrapped)
      } catch {
        return send(res, 400, { error: 'bad_request', message: 'expected JSON with base64 fields aad (and wrapped for /v1/unwrap)' })
      }
      let kek: Buffer
      let answer: Record<string, string>
      if (wrapped) {
        kek = tokenKey.unwrap(wrapped, aad)
        answer = { kek: kek.toString('base64') }
      } else {
        const made = tokenKey.generate(aad)
        kek = made.kek
        answer = { kek: kek.toString('base64'), wrapped: toBase64(made.wrapped) }
      }
      kek.fill(0) // the base64 string in `answer` cannot be zeroed; it is dropped with the response
      send(res, 200, answer)
    } catch (error) {
      const reason = error instanceof Error ? reasons.get(error) : undefined
      const message = error instanceof RootKeyError ? error.message : 'internal error'
      if (reason === 'unwrap_failed') return send(res, 422, { error: 'unwrap_failed', message })
      if (reason === 'key_missing') return send(res, 404, { error: 'key_missing', message })
      if (error instanceof RootKeyError && !error.retryable && reason !== 'unavailable') return send(res, 400, { error: 'bad_request', message })
      send(res, 503, { error: 'unavailable', message })
    }
  })
  server.keepAliveTimeout = 5_000
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      if (options.socketPath !== undefined) server.listen(options.socketPath, resolve)
      else server.listen(options.port ?? 0, host, resolve)
    })
    if (options.socketPath !== undefined) await chmod(options.socketPath, 0o600)
  } catch (error) {
    tokenKey.close()
    server.close()
    throw new RootKeyError(`the PKCS#11 bridge could not listen (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let url = 'http://localhost'
  if (options.socketPath === undefined) {
    const address = server.address() as { address: string; port: number }
    url = `http://${address.address.includes(':') ? `[${address.address}]` : address.address}:${address.port}`
  }
  let closed: Promise<void> | undefined
  return {
    url,
    ...(options.socketPath !== undefined ? { socketPath: options.socketPath } : {}),
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }).finally(() => tokenKey.close())),
  }
}
