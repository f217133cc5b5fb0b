/**
 * A root key from a WebAuthn credential with the PRF extension (CTAP2 hmac-secret): the
 * authenticator computes a 32-byte secret from the credential and a salt; HKDF-SHA-256 turns it
 * into a non-extractable AES-256-GCM wrapping key that wraps the chain's KEKs. Browsers only.
 *
 * One authenticator ceremony (navigator.credentials.get) per unlock: the wrapping key is cached
 * for the life of the root key object (the page), and the key chain caches the KEKs it unwrapped,
 * so encrypting and decrypting make no ceremony.
 *
 * Public parameters: the credential id and the salt. Neither is secret; both are needed to unlock
 * (keep them next to the data, or in localStorage). `toJSON()` returns exactly them.
 *
 * Wrapped KEK (newKek and wrapKek alike): 0x40 || iv (12) || AES-GCM(wrapping key, iv, KEK, aad) (16 + 16 tag)  = 45 bytes.
 * Wrapping key: HKDF-SHA-256(ikm = PRF output (32), salt = the salt, info = "kms-proxy/webauthn-prf/v1").
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { registerPrfCredential, webauthnRootKey } from '@kms-proxy/webauthn'
 * const params = await registerPrfCredential({ rpName: 'Notes', userName: 'alice' }) // once; keep it (public)
 * const chain = await KeyChain.open({ rootKey: webauthnRootKey(params) })            // every page load
 * const text = await chain.encryptText('notes')  // first use: one authenticator prompt; then none
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/webauthn
 */
import { RootKeyError, fromBase64Url, openSealedKek, sealKek, sealNewKek, toBase64Url, type RootKey, type UnwrapKekOptions } from '@kms-proxy/core'

/** The `kind` of this root key, kept in KEK records. */
export const KIND = 'webauthn-prf'
/** The HKDF `info` that turns the PRF output into the wrapping key. */
export const HKDF_INFO = 'kms-proxy/webauthn-prf/v1'
/** First byte of every KEK this root wraps. */
export const WEBAUTHN_WRAP_TAG = 0x40
/** Length of a PRF salt made by {@link registerPrfCredential}. */
export const SALT_BYTES = 32
const MIN_SALT_BYTES = 16
const MAX_SALT_BYTES = 64
const PRF_BYTES = 32
const DEFAULT_TIMEOUT_MS = 120_000
const WRAP_USAGES: KeyUsage[] = ['wrapKey', 'unwrapKey']
/** tag (1) + iv (12) + KEK (16, or 32 for a 256-bit KEK as openSealedKek accepts) + GCM tag (16) */
const WRAPPED_BYTES_128 = 1 + 12 + 16 + 16
const WRAPPED_BYTES_256 = 1 + 12 + 32 + 16

/** The `RootKeyError` message when the authenticator has no PRF extension: offer another root (a passphrase). */
export const NO_PRF_MESSAGE = 'this authenticator does not support the WebAuthn PRF extension'
/** The `RootKeyError` message (`retryable`) when the user cancelled, or the ceremony timed out or was not allowed. */
export const CANCELLED_MESSAGE = 'the WebAuthn ceremony was cancelled, timed out or was not allowed; try again'

/** Options of {@link registerPrfCredential} and {@link registerPrfRootKey}. */
export interface RegisterPrfCredentialOptions {
  /**
   * Relying party id (a registrable domain of the page's origin).
   *
   * @defaultValue the page's host
   */
  rpId?: string
  /** The relying party's name, shown by the authenticator. */
  rpName: string
  /** The account's name, shown by the authenticator. */
  userName: string
  /**
   * User handle, 1 to 64 bytes.
   *
   * @defaultValue 16 random bytes (a new account entry on the authenticator)
   */
  userId?: Uint8Array
  /**
   * PRF salt (16 to 64 bytes, or base64url). Public.
   *
   * @defaultValue 32 random bytes
   */
  salt?: Uint8Array | string
  /**
   * Ceremony timeout in ms.
   *
   * @defaultValue 120,000
   */
  timeout?: number
}

/** The public parameters of a PRF credential: keep them (not secret) to unlock later. */
export interface PrfCredential {
  /** base64url (no padding) */
  credentialId: string
  /** base64url (no padding) */
  salt: string
}

/** What {@link registerPrfRootKey} returns. */
export interface RegisteredPrfRootKey {
  /** The public parameters to keep (as registerPrfCredential returns them). */
  credential: PrfCredential
  /** The root key for them; already unlocked when the browser evaluated the PRF at creation. */
  rootKey: WebAuthnRootKey
}

/** Options of {@link webauthnRootKey}. */
export interface WebAuthnRootKeyOptions {
  /** base64url of the credential's raw id, or its bytes. Public. */
  credentialId: string | Uint8Array
  /** base64url of the PRF salt, or its bytes (16 to 64). Public. */
  salt: string | Uint8Array
  /**
   * Relying party id used at registration.
   *
   * @defaultValue the page's host
   */
  rpId?: string
  /**
   * Ceremony timeout in ms.
   *
   * @defaultValue 120,000
   */
  timeout?: number
}

export interface WebAuthnRootKey extends RootKey {
  readonly kind: typeof KIND
  /**
   * Runs the authenticator ceremony now (call it from a click handler: some browsers require a
   * user gesture) instead of at the first encryption or decryption. Resolves once the wrapping key
   * is ready; a second call after success does nothing. A cancelled ceremony may be retried.
   */
  unlock(): Promise<void>
  /** Whether the wrapping key is ready (a ceremony succeeded). */
  readonly unlocked: boolean
  /** The public parameters, nothing else. */
  toJSON(): PrfCredential
}

function bytesParam(name: string, value: unknown, min: number, max: number): Uint8Array<ArrayBuffer> {
  let bytes: Uint8Array<ArrayBuffer>
  if (typeof value === 'string') {
    try {
      bytes = fromBase64Url(value)
    } catch {
      throw new TypeError(`${name}: expected base64url text or a Uint8Array`)
    }
  } else if (value instanceof Uint8Array) bytes = new Uint8Array(value)
  else throw new TypeError(`${name}: expected base64url text or a Uint8Array`)
  if (bytes.length < min || bytes.length > max) throw new RangeError(`${name}: expected ${min} to ${max} bytes`)
  return bytes
}

function timeoutParam(value: unknown): number {
  if (value === undefined) return DEFAULT_TIMEOUT_MS
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) throw new RangeError('timeout: expected a positive number of ms')
  return value
}

// ------------------------------------------------------------------------------ ceremonies

interface PrfExtensionOutput {
  enabled?: boolean
  results?: { first?: BufferSource; second?: BufferSource }
}

function credentialsApi(): CredentialsContainer {
  const nav = (globalThis as { navigator?: Navigator }).navigator
  if (!nav?.credentials || typeof (globalThis as { PublicKeyCredential?: unknown }).PublicKeyCredential === 'undefined') {
    throw new RootKeyError('WebAuthn is not available here (a browser page in a secure context is needed)')
  }
  return nav.credentials
}

/** Maps a DOMException from create/get to a RootKeyError; never includes key material. */
function ceremonyError(error: unknown, what: string): RootKeyError {
  if (error instanceof RootKeyError) return error
  const name = (error as { name?: string } | undefined)?.name
  if (name === 'NotAllowedError' || name === 'AbortError') {
    return new RootKeyError(CANCELLED_MESSAGE, { cause: error, retryable: true })
  }
  if (name === 'SecurityError') {
    return new RootKeyError(`WebAuthn ${what}: the relying party id does not match this page's origin`, { cause: error })
  }
  if (name === 'InvalidStateError') {
    return new RootKeyError(`WebAuthn ${what}: the authenticator refused (credential already registered?)`, { cause: error })
  }
  if (name === 'NotSupportedError') return new RootKeyError(NO_PRF_MESSAGE, { cause: error })
  return new RootKeyError(`WebAuthn ${what} failed${name ? ` (${name})` : ''}`, { cause: error })
}

function prfOutputOf(credential: Credential | null): PrfExtensionOutput | undefined {
  const c = credential as PublicKeyCredential | null
  if (!c || typeof c.getClientExtensionResults !== 'function') return undefined
  return (c.getClientExtensionResults() as { prf?: PrfExtensionOutput }).prf
}

function viewOf(source: BufferSource): Uint8Array<ArrayBuffer> {
  return source instanceof ArrayBuffer
    ? new Uint8Array(source)
    : new Uint8Array(source.buffer as ArrayBuffer, source.byteOffset, source.byteLength)
}

/**
 * Creates a discoverable credential with the PRF extension and returns its public parameters.
 * Asks the authenticator to evaluate the PRF at creation where it can (the output is discarded
 * and zeroed: the root key asks again at unlock). Throws RootKeyError with NO_PRF_MESSAGE when
 * the authenticator has no PRF.
 *
 * @throws TypeError - a missing `rpName` or `userName`, a malformed salt or user id.
 * @throws RangeError - a salt or user id of the wrong length, a timeout that is not positive.
 * @throws {@link @kms-proxy/core!RootKeyError} - `ERR_ROOT_KEY`: no PRF ({@link NO_PRF_MESSAGE}),
 *   or the ceremony was cancelled, timed out or not allowed ({@link CANCELLED_MESSAGE}, `retryable`).
 * @example
 * ```ts
 * const params = await registerPrfCredential({ rpName: 'Notes', userName: 'alice' }) // once
 * localStorage.setItem('credential', JSON.stringify(params))                        // public: keep it
 * ```
 */
export async function registerPrfCredential(options: RegisterPrfCredentialOptions): Promise<PrfCredential> {
  return (await createPrfCredential(options, false)).credential
}

/**
 * registerPrfCredential and webauthnRootKey in one user prompt where the browser allows it: when
 * the authenticator evaluated the PRF at creation (the same PRF, with user verification, that a
 * later `get` evaluates), the wrapping key is derived from that output at once and the returned
 * root is unlocked; otherwise it unlocks at its first use with one ceremony, like webauthnRootKey.
 * Same errors as registerPrfCredential.
 *
 * @example
 * ```ts
 * const { credential, rootKey } = await registerPrfRootKey({ rpName: 'Notes', userName: 'alice' }) // one prompt
 * localStorage.setItem('credential', JSON.stringify(credential))
 * const chain = await KeyChain.open({ rootKey, store: indexedDbStore({ name: 'notes' }) })
 * ```
 */
export async function registerPrfRootKey(options: RegisterPrfCredentialOptions): Promise<RegisteredPrfRootKey> {
  const { credential, wrappingKey } = await createPrfCredential(options, true)
  const rootKey = makeRootKey({ ...credential, rpId: options.rpId, timeout: options.timeout }, wrappingKey)
  return { credential, rootKey }
}

async function createPrfCredential(
  options: RegisterPrfCredentialOptions,
  keepKey: boolean,
): Promise<{ credential: PrfCredential; wrappingKey?: CryptoKey }> {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { rpId, rpName, userName } = options
  if (typeof rpName !== 'string' || rpName === '') throw new TypeError('rpName: expected a non-empty string')
  if (typeof userName !== 'string' || userName === '') throw new TypeError('userName: expected a non-empty string')
  if (rpId !== undefined && (typeof rpId !== 'string' || rpId === '')) throw new TypeError('rpId: expected a non-empty string')
  const userId = options.userId === undefined ? crypto.getRandomValues(new Uint8Array(16)) : bytesParam('userId', options.userId, 1, 64)
  const salt = options.salt === undefined ? crypto.getRandomValues(new Uint8Array(SALT_BYTES)) : bytesParam('salt', options.salt, MIN_SALT_BYTES, MAX_SALT_BYTES)
  const timeout = timeoutParam(options.timeout)
  const credentials = credentialsApi()

  let credential: Credential | null
  try {
    credential = await credentials.create({
      publicKey: {
        rp: rpId === undefined ? { name: rpName } : { id: rpId, name: rpName },
        user: { id: userId, name: userName, displayName: userName },
        // Registration is not verified by a server here: the challenge only has to be fresh.
        challenge: crypto.getRandomValues(new Uint8Array(32)),
        pubKeyCredParams: [
          { type: 'public-key', alg: -7 }, // ES256
          { type: 'public-key', alg: -8 }, // EdDSA
          { type: 'public-key', alg: -257 }, // RS256
        ],
        authenticatorSelection: { residentKey: 'preferred', userVerification: 'required' },
        timeout,
        extensions: { prf: { eval: { first: salt } } } as AuthenticationExtensionsClientInputs,
      },
    })
  } catch (error) {
    throw ceremonyError(error, 'registration')
  }
  if (!credential) throw new RootKeyError('WebAuthn registration returned no credential')
  const prf = prfOutputOf(credential)
  const first = prf?.results?.first ? viewOf(prf.results.first) : undefined
  if (prf?.results?.second) viewOf(prf.results.second).fill(0)
  // enabled is the authenticator's answer at creation; some browsers only return results.
  if (!prf || (prf.enabled !== true && !first)) {
    first?.fill(0)
    throw new RootKeyError(NO_PRF_MESSAGE)
  }
  const found = { credentialId: toBase64Url(new Uint8Array((credential as PublicKeyCredential).rawId)), salt: toBase64Url(salt) }
  if (!first) return { credential: found }
  if (!keepKey) {
    first.fill(0)
    return { credential: found }
  }
  return { credential: found, wrappingKey: await wrappingKeyFrom(first, salt) }
}

/** PRF output -> HKDF-SHA-256 -> non-extractable AES-256-GCM wrapping key. Zeroes `output`, also on failure. */
async function wrappingKeyFrom(output: Uint8Array<ArrayBuffer>, salt: Uint8Array<ArrayBuffer>): Promise<CryptoKey> {
  try {
    if (output.length !== PRF_BYTES) throw new RootKeyError(`the WebAuthn PRF output has ${output.length} bytes, expected ${PRF_BYTES}`)
    const ikm = await crypto.subtle.importKey('raw', output, 'HKDF', false, ['deriveKey'])
    output.fill(0)
    return await crypto.subtle.deriveKey(
      { name: 'HKDF', hash: 'SHA-256', salt, info: new TextEncoder().encode(HKDF_INFO) },
      ikm,
      { name: 'AES-GCM', length: 256 },
      false,
      WRAP_USAGES,
    )
  } catch (error) {
    if (error instanceof RootKeyError) throw error
    throw new RootKeyError('could not derive the wrapping key from the WebAuthn PRF output', { cause: error })
  } finally {
    output.fill(0)
  }
}

/**
 * A root key held by a WebAuthn authenticator. The first newKek / wrapKek / unwrapKek (or
 * unlock()) runs one navigator.credentials.get with the PRF extension; the derived wrapping key
 * is cached for the page's life, so adding this root to a chain of 1,000 KEKs (`addRoot`, which
 * calls wrapKek once per KEK) is one ceremony. A failed or cancelled ceremony is not cached: the
 * next call asks again.
 *
 * @throws TypeError - a missing or malformed `credentialId` or `salt`; (from `wrapKek`) a KEK
 *   that is not an extractable AES-GCM `CryptoKey`, before any ceremony.
 * @throws RangeError - a salt of the wrong length, a timeout that is not positive.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from `unlock`, `newKek`, `unwrapKek`)
 *   `ERR_ROOT_KEY`: no PRF, a cancelled ceremony (`retryable`), or a KEK this credential and salt
 *   did not wrap.
 * @example
 * ```ts
 * const params = JSON.parse(localStorage.getItem('credential')!)
 * const rootKey = webauthnRootKey(params)
 * unlockButton.onclick = () => rootKey.unlock()    // one authenticator prompt per page load
 * const chain = await KeyChain.open({ rootKey, store: indexedDbStore({ name: 'notes' }) })
 * ```
 */
export function webauthnRootKey(options: WebAuthnRootKeyOptions): WebAuthnRootKey {
  return makeRootKey(options)
}

/**
 * What wrapKek can wrap: an extractable AES-GCM KEK, as the chain hands it over (unwrapKek with
 * `{ extractable: true }` on another root). Anything else is the caller's mistake (TypeError).
 */
function checkWrappable(kek: unknown): asserts kek is CryptoKey {
  if (!(kek instanceof CryptoKey)) throw new TypeError('kek: expected a CryptoKey')
  if ((kek.algorithm as { name?: string }).name !== 'AES-GCM') throw new TypeError('kek: expected an AES-GCM key')
  if (!kek.extractable) throw new TypeError('kek: expected an extractable key (unwrapKek with { extractable: true })')
}

/** `ready`: a wrapping key already derived (registerPrfRootKey), so the root starts unlocked. */
function makeRootKey(options: WebAuthnRootKeyOptions, ready?: CryptoKey): WebAuthnRootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const credentialId = bytesParam('credentialId', options.credentialId, 1, 1023)
  const salt = bytesParam('salt', options.salt, MIN_SALT_BYTES, MAX_SALT_BYTES)
  const { rpId } = options
  if (rpId !== undefined && (typeof rpId !== 'string' || rpId === '')) throw new TypeError('rpId: expected a non-empty string')
  const timeout = timeoutParam(options.timeout)
  const publicParams: PrfCredential = { credentialId: toBase64Url(credentialId), salt: toBase64Url(salt) }
  const tag = new Uint8Array([WEBAUTHN_WRAP_TAG])

  let key: Promise<CryptoKey> | undefined = ready === undefined ? undefined : Promise.resolve(ready)
  let unlocked = ready !== undefined

  async function ceremony(): Promise<CryptoKey> {
    const credentials = credentialsApi()
    let assertion: Credential | null
    try {
      assertion = await credentials.get({
        publicKey: {
          challenge: crypto.getRandomValues(new Uint8Array(32)),
          ...(rpId === undefined ? {} : { rpId }),
          allowCredentials: [{ type: 'public-key', id: credentialId }],
          // The PRF (hmac-secret) has one secret with user verification and another without:
          // always ask for it, as at registration, so the output is stable.
          userVerification: 'required',
          timeout,
          extensions: { prf: { eval: { first: salt } } } as AuthenticationExtensionsClientInputs,
        },
      })
    } catch (error) {
      throw ceremonyError(error, 'unlock')
    }
    if (!assertion) throw new RootKeyError('WebAuthn unlock returned no credential', { retryable: true })
    const prf = prfOutputOf(assertion)
    const first = prf?.results?.first
    if (!first) throw new RootKeyError(NO_PRF_MESSAGE)
    const output = viewOf(first)
    const rawId = new Uint8Array((assertion as PublicKeyCredential).rawId)
    if (rawId.length !== credentialId.length || rawId.some((b, i) => b !== credentialId[i])) {
      output.fill(0)
      throw new RootKeyError('WebAuthn unlock answered with another credential')
    }
    return wrappingKeyFrom(output, salt)
  }

  function wrappingKey(): Promise<CryptoKey> {
    if (!key) {
      const pending = ceremony()
      key = pending
      pending.then(
        () => (unlocked = true),
        () => {
          if (key === pending) key = undefined // not cached: a cancelled ceremony may be retried
        },
      )
    }
    return key
  }

  const root = {
    kind: KIND,
    get unlocked() {
      return unlocked
    },
    async unlock() {
      await wrappingKey()
    },
    async newKek(aad: Uint8Array) {
      return sealNewKek(await wrappingKey(), aad, tag)
    },
    async wrapKek(kek: CryptoKey, aad: Uint8Array) {
      // Checked before any ceremony: a KEK that cannot be wrapped must not prompt the user.
      checkWrappable(kek)
      // The cached wrapping key: adding this root to a chain of 1,000 KEKs is one ceremony.
      return sealKek(await wrappingKey(), kek, aad, tag)
    },
    async unwrapKek(wrapped: Uint8Array, aad: Uint8Array, unwrapOptions?: UnwrapKekOptions) {
      // Checked before any ceremony: a KEK from another kind of root must not prompt the user.
      if (!(wrapped instanceof Uint8Array) || wrapped[0] !== WEBAUTHN_WRAP_TAG) {
        throw new RootKeyError(`this KEK was not wrapped by a "${KIND}" root key`)
      }
      if (wrapped.length !== WRAPPED_BYTES_128 && wrapped.length !== WRAPPED_BYTES_256) {
        throw new RootKeyError('wrapped KEK has the wrong length')
      }
      const k = await wrappingKey()
      try {
        // extractable only when the chain re-wraps this KEK under another root (addRoot,
        // changeRoot): subtle.wrapKey refuses anything else. The bytes stay inside WebCrypto,
        // and the chain drops this handle once the other root has wrapped it.
        return await openSealedKek(k, wrapped.subarray(1), aad, unwrapOptions?.extractable === true)
      } catch {
        throw new RootKeyError('this WebAuthn credential cannot unwrap this KEK: another credential or salt, or the wrapped KEK was altered')
      }
    },
    toString: () => `[RootKey ${KIND}]`,
    toJSON: (): PrfCredential => ({ ...publicParams }),
  }
  return root as WebAuthnRootKey
}
