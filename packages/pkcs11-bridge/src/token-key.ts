/**
 * The token side: one logged-in session on the HSM token and the AES-256 wrapping key on it
 * (`TokenKey`), and `pkcs11RootKey`, the root key in process on top of it. The bridge serves the
 * same `TokenKey` over HTTP (bridge.ts).
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import * as graphene from 'graphene-pk11'
import { RootKeyError, importKekBytes, type NewKek, type RootKey } from '@kms-proxy/core'
import { PKCS11_DATA_KEY_TAG, PKCS11_WRAPPED_LENGTH, PKCS11_WRAP_TAG, pkcs11Wrapping } from '@kms-proxy/pkcs11'

/** Throws unless `wrapped` is a KEK (0x30, 45 bytes) or a data key (0x32, 61 bytes) sealed by a PKCS#11 key. */
export function checkWrapped(wrapped: unknown): asserts wrapped is Uint8Array {
  if (!(wrapped instanceof Uint8Array) || (wrapped[0] !== PKCS11_WRAP_TAG && wrapped[0] !== PKCS11_DATA_KEY_TAG)) {
    throw new RootKeyError('this KEK was not wrapped by a PKCS#11 root key')
  }
  const length = wrapped[0] === PKCS11_WRAP_TAG ? PKCS11_WRAPPED_LENGTH : 1 + GCM_IV_BYTES + DATA_KEY_BYTES + 16
  if (wrapped.length !== length) throw new RootKeyError('wrapped KEK has the wrong length')
}

/** Options of {@link pkcs11RootKey}, and the token part of the bridge's options. */
export interface Pkcs11KeyOptions {
  /** Path of the PKCS#11 module, such as /usr/lib/softhsm/libsofthsm2.so. */
  module: string
  /** The token's label (slot ids may change; labels do not). Two tokens with this label are refused. */
  tokenLabel: string
  /** The user PIN. Never appears in errors, `String()` or `JSON.stringify`. */
  pin: string
  /** CKA_LABEL of the AES-256 wrapping key on the token. */
  keyLabel: string
  /**
   * Create the key (AES-256, token, sensitive, not extractable) when the token has none.
   *
   * @defaultValue false
   */
  createKey?: boolean
}

const GCM_IV_BYTES = 12
const KEK_BYTES = 16
/** A data key (wrapKek's envelope): AES-256, as the token's own key. */
const DATA_KEY_BYTES = 32
const WHAT = 'the PKCS#11 token'

// ------------------------------------------------------------------------------- PKCS#11 side

/** The CKR_* name of a PKCS#11 error, if it is one. */
function ckr(error: unknown): string | undefined {
  return /CKR_[A-Z0-9_]+/.exec(String((error as Error | undefined)?.message ?? ''))?.[0]
}

/** Why a token operation failed, for the bridge's answer. */
export type TokenFailure = 'key_missing' | 'unwrap_failed' | 'unavailable'
const reasons = new WeakMap<Error, TokenFailure>()

/** What the bridge answers for a failure of the token (anything not marked is `unavailable`). */
export function failureOf(error: unknown): TokenFailure {
  return (error instanceof Error ? reasons.get(error) : undefined) ?? 'unavailable'
}

function fail(reason: TokenFailure, message: string, retryable = false): RootKeyError {
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
export class TokenKey {
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
      const matching: graphene.Slot[] = []
      for (let i = 0; i < slots.length; i++) {
        const candidate = slots.items(i)
        const label = candidate.getToken().label.trim()
        labels.push(label)
        if (label === tokenLabel) matching.push(candidate)
      }
      if (matching.length === 0) {
        const present = labels.filter((l) => l !== '').map((l) => `"${l}"`).join(', ') || 'none'
        throw new RootKeyError(`no PKCS#11 token labelled "${tokenLabel}" (tokens present: ${present})`)
      }
      // Two tokens with one label: whichever slot came last would get the PIN (and count a
      // failed login against it). Neither is chosen: the operator relabels or removes one.
      if (matching.length > 1) {
        const serials = matching.map((s) => s.getToken().serialNumber.trim()).join(', ')
        throw new RootKeyError(`${matching.length} PKCS#11 tokens are labelled "${tokenLabel}" (serial numbers ${serials}): refusing to choose one to give the PIN to; relabel or remove all but one`)
      }
      const slot = matching[0]!
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

  /** A fresh KEK from the token's RNG and its wrapped form (0x30). The caller zeroes `kek`. */
  generate(aad: Uint8Array): { kek: Buffer; wrapped: Uint8Array<ArrayBuffer> } {
    const { secret, wrapped } = this.#generate(PKCS11_WRAP_TAG, KEK_BYTES, aad, 'generate a KEK')
    return { kek: secret, wrapped }
  }

  /** A fresh 32-byte data key from the token's RNG and its sealed form (0x32), for wrapKek. The caller zeroes `key`. */
  generateDataKey(aad: Uint8Array): { key: Buffer; wrapped: Uint8Array<ArrayBuffer> } {
    const { secret, wrapped } = this.#generate(PKCS11_DATA_KEY_TAG, DATA_KEY_BYTES, aad, 'generate a data key')
    return { key: secret, wrapped }
  }

  /**
   * The GCM AAD the token binds: the chain's AAD for a KEK (0x30, as ever), the tag and the AAD for
   * a data key, so that a sealed data key is never taken for a sealed KEK (its length differs too).
   */
  static #gcmAad(tag: number, aad: Uint8Array): Buffer {
    return tag === PKCS11_WRAP_TAG ? Buffer.from(aad) : Buffer.concat([Buffer.from([tag]), aad])
  }

  #generate(tag: number, length: number, aad: Uint8Array, what: string): { secret: Buffer; wrapped: Uint8Array<ArrayBuffer> } {
    return this.#withKey(what, (session, key) => {
      const secret = session.generateRandom(length)
      try {
        const iv = session.generateRandom(GCM_IV_BYTES)
        const params = new graphene.AesGcmParams(iv, TokenKey.#gcmAad(tag, aad), 128)
        const sealed = session.createCipher({ name: 'AES_GCM', params }, key).once(secret, Buffer.alloc(length + 16))
        const wrapped = new Uint8Array(1 + GCM_IV_BYTES + sealed.length)
        wrapped[0] = tag
        wrapped.set(iv, 1)
        wrapped.set(sealed, 1 + GCM_IV_BYTES)
        return { secret, wrapped }
      } catch (error) {
        secret.fill(0)
        throw error
      }
    })
  }

  /** The KEK (0x30) or data key (0x32) inside `wrapped`. The caller zeroes it. */
  unwrap(wrapped: Uint8Array, aad: Uint8Array): Buffer {
    checkWrapped(wrapped)
    const length = wrapped[0] === PKCS11_WRAP_TAG ? KEK_BYTES : DATA_KEY_BYTES
    return this.#withKey('unwrap a KEK', (session, key) => {
      const iv = Buffer.from(wrapped.subarray(1, 1 + GCM_IV_BYTES))
      const params = new graphene.AesGcmParams(iv, TokenKey.#gcmAad(wrapped[0]!, aad), 128)
      const out = Buffer.alloc(length + 16)
      try {
        const secret = session.createDecipher({ name: 'AES_GCM', params }, key).once(Buffer.from(wrapped.subarray(1 + GCM_IV_BYTES)), out)
        if (secret.length !== length) throw new Error('CKR_ENCRYPTED_DATA_LEN_RANGE')
        return Buffer.from(secret) // a copy the caller zeroes; the work buffer is zeroed below
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

/** TypeError unless the token options are there and non-empty; `who` names the caller in the message. */
export function checkKeyOptions(options: Pkcs11KeyOptions, who: string): void {
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
 *
 * @throws TypeError - a missing option (`module`, `tokenLabel`, `pin`, `keyLabel`).
 * @throws {@link @kms-proxy/core!RootKeyError} - (at first use) `ERR_ROOT_KEY`: a wrong token
 *   label, PIN or key label, or a token that fails; `retryable` when the token is unavailable.
 * @example
 * ```ts
 * const rootKey = pkcs11RootKey({ module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 'kms-proxy', pin, keyLabel: 'kms-proxy-root' })
 * const chain = await KeyChain.open({ rootKey, store: fileStore('./keys.json') })
 * // at shutdown: rootKey.close()
 * ```
 */
export function pkcs11RootKey(options: Pkcs11KeyOptions): RootKey & {
  /** Ends the session (and finalizes the module when no other root key uses it). */
  close(): void
} {
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
    ...pkcs11Wrapping({
      who: what,
      async dataKey(aad) {
        const { key, wrapped } = open().generateDataKey(aad)
        return { key: bytesOf(key), wrapped }
      },
      unwrap: async (wrapped, aad) => bytesOf(open().unwrap(wrapped, aad)),
    }),
    close() {
      token?.close()
      token = undefined
    },
    toString: () => '[RootKey pkcs11]',
    toJSON: () => ({ kind: 'pkcs11', tokenLabel: settings.tokenLabel, keyLabel: settings.keyLabel }),
  } as RootKey & { close(): void }
}

