/**
 * One base class, one subclass per stable code, generated from a single table.
 *
 * Messages never contain key bytes, plaintext, passphrases or which layer of a decryption failed
 * (no oracle). A `DecryptError` carries no `cause`.
 */

/**
 * Every stable error code, and the name of the class that carries it.
 *
 * @example
 * ```ts
 * try {
 *   await chain.decrypt(data)
 * } catch (e) {
 *   if (!isKmsProxyError(e)) throw e
 *   switch (e.code) {
 *     case 'ERR_DECRYPT': return reject('altered or wrong associated data')
 *     case 'ERR_ROOT_KEY': if (e.retryable) return retryLater(); throw e
 *     default: throw e
 *   }
 * }
 * ```
 */
export const ERROR_CODES = {
  /** {@link DecryptError}: authentication failed; nothing more is said. */
  ERR_DECRYPT: 'DecryptError',
  /** {@link FormatError}: malformed or truncated data, an unknown version or flag, a bad text form. */
  ERR_FORMAT: 'FormatError',
  /** {@link UnknownKekError}: the data names a KEK neither cached, embedded nor in the store. */
  ERR_UNKNOWN_KEK: 'UnknownKekError',
  /** {@link RootKeyError}: a wrong, failed or unreachable root key. */
  ERR_ROOT_KEY: 'RootKeyError',
  /** {@link StoreError}: the store failed or answered something unusable. */
  ERR_STORE: 'StoreError',
  /** {@link LimitError}: a limit of the format or of AES-GCM. */
  ERR_LIMIT: 'LimitError',
  /** {@link RetiredKekError}: the data's KEK, or the whole chain, is retired (reversible: `unretireKek`). */
  ERR_RETIRED_KEK: 'RetiredKekError',
  /** {@link DestroyedKekError}: the data's KEK, or the whole chain, was destroyed: the data is gone for good. */
  ERR_DESTROYED_KEK: 'DestroyedKekError',
} as const

/**
 * One of the stable codes: `'ERR_DECRYPT' | 'ERR_FORMAT' | 'ERR_UNKNOWN_KEK' | 'ERR_ROOT_KEY' |
 * 'ERR_STORE' | 'ERR_LIMIT' | 'ERR_RETIRED_KEK' | 'ERR_DESTROYED_KEK'`.
 */
export type ErrorCode = keyof typeof ERROR_CODES

/** Options of an error's constructor, for adapters that throw the library's errors. */
export interface KmsProxyErrorOptions {
  /** The underlying failure, kept as `cause` (never give a `DecryptError` one). */
  cause?: unknown
  /** True when the same call may succeed later (a KMS that answered 503, a store that timed out). */
  retryable?: boolean
}

/**
 * The brand every error of every copy of this package carries. An adapter may resolve its own
 * copy of `@kms-proxy/core` (two versions in one install are common), and `instanceof` across
 * copies compares two different classes: errors are recognised by this registered symbol
 * instead, so that a KMS 503 thrown by an adapter's copy stays a retryable `RootKeyError`.
 */
const BRAND = Symbol.for('@kms-proxy/core/error')

/** Our own generated classes, whose `instanceof` also accepts errors of other copies. */
const ownClasses = new WeakSet<object>()

/**
 * True for an error of any copy of `@kms-proxy/core`: a `KmsProxyError` with a known `code`.
 * Prefer it (or `instanceof`, which does the same for this package's classes) to comparing
 * constructors.
 */
export function isKmsProxyError(value: unknown): value is AnyKmsProxyError {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as Record<symbol, unknown>)[BRAND] === true &&
    Object.prototype.hasOwnProperty.call(ERROR_CODES, (value as { code?: unknown }).code as string)
  )
}

/** Base class of every error this library throws; `code` is stable, `retryable` says whether to try again. */
export class KmsProxyError extends Error {
  /** The stable code: switch on it. */
  readonly code: ErrorCode
  /**
   * True when the same call may succeed later (a KMS that answered 503, a store that timed out).
   *
   * @defaultValue false
   */
  readonly retryable: boolean

  /**
   * For adapters: throw a subclass instead (`new RootKeyError('…', { retryable: true })`).
   *
   * @param message - what failed, without key bytes, plaintext, passphrases or tokens.
   */
  constructor(code: ErrorCode, message: string, options: KmsProxyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.retryable = options.retryable ?? false
    this.name = ERROR_CODES[code] ?? 'KmsProxyError'
    Object.defineProperty(this, BRAND, { value: true })
  }

  /**
   * `instanceof` that holds across copies of the package: an error of another copy is an
   * instance of `KmsProxyError`, and of the subclass with its code. Classes users derive keep
   * the ordinary prototype check.
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true
    if (!ownClasses.has(this) || !isKmsProxyError(value)) return false
    const code = (this as unknown as { code?: ErrorCode }).code
    return code === undefined || value.code === code
  }

  /** What `JSON.stringify` sees: the code and message, never a cause chain. */
  toJSON(): {
    /** The class name, such as `'RootKeyError'`. */
    name: string
    /** The stable code. */
    code: ErrorCode
    /** The message. */
    message: string
    /** Whether the same call may succeed later. */
    retryable: boolean
  } {
    return { name: this.name, code: this.code, message: this.message, retryable: this.retryable }
  }
}

ownClasses.add(KmsProxyError)

/** The shape of each generated subclass: declared, not inferred, so the public types stay plain. */
export interface KmsProxyErrorClass<C extends ErrorCode> {
  /** Makes an error with this class's code. */
  new (message: string, options?: KmsProxyErrorOptions): KmsProxyError & {
    /** This class's code. */
    readonly code: C
  }
  /** Instances are `KmsProxyError`s with this class's code. */
  readonly prototype: KmsProxyError & {
    /** This class's code. */
    readonly code: C
  }
  /** The code every instance carries. */
  readonly code: C
}

function defineError<C extends ErrorCode>(code: C): KmsProxyErrorClass<C> {
  const Class = class extends KmsProxyError {
    constructor(message: string, options?: KmsProxyErrorOptions) {
      super(code, message, options)
    }
  }
  Object.defineProperty(Class, 'name', { value: ERROR_CODES[code] })
  Object.defineProperty(Class, 'code', { value: code })
  ownClasses.add(Class)
  return Class as unknown as KmsProxyErrorClass<C>
}

/** Authentication failed. Says nothing about why: wrong key, wrong associated data or altered bytes. */
export const DecryptError: KmsProxyErrorClass<'ERR_DECRYPT'> = defineError('ERR_DECRYPT')
export type DecryptError = InstanceType<typeof DecryptError>
/** Malformed encrypted data, unsupported version or flags. */
export const FormatError: KmsProxyErrorClass<'ERR_FORMAT'> = defineError('ERR_FORMAT')
export type FormatError = InstanceType<typeof FormatError>
/** The encrypted data names a KEK that is neither cached, embedded nor in the store. */
export const UnknownKekError: KmsProxyErrorClass<'ERR_UNKNOWN_KEK'> = defineError('ERR_UNKNOWN_KEK')
export type UnknownKekError = InstanceType<typeof UnknownKekError>
/** The root key is wrong, failed or is unavailable. */
export const RootKeyError: KmsProxyErrorClass<'ERR_ROOT_KEY'> = defineError('ERR_ROOT_KEY')
export type RootKeyError = InstanceType<typeof RootKeyError>
/** The store failed or returned something unusable. */
export const StoreError: KmsProxyErrorClass<'ERR_STORE'> = defineError('ERR_STORE')
export type StoreError = InstanceType<typeof StoreError>
/** A size or count limit of the format or of AES-GCM would be exceeded. */
export const LimitError: KmsProxyErrorClass<'ERR_LIMIT'> = defineError('ERR_LIMIT')
export type LimitError = InstanceType<typeof LimitError>
/**
 * The data's KEK is retired (or the whole chain is): it no longer decrypts, and a retired chain
 * no longer encrypts. Reversible with `unretireKek` / `unretireChain`.
 */
export const RetiredKekError: KmsProxyErrorClass<'ERR_RETIRED_KEK'> = defineError('ERR_RETIRED_KEK')
export type RetiredKekError = InstanceType<typeof RetiredKekError>
/** The data's KEK (or the whole chain) was destroyed: its records are deleted and the data cannot be decrypted by anyone. */
export const DestroyedKekError: KmsProxyErrorClass<'ERR_DESTROYED_KEK'> = defineError('ERR_DESTROYED_KEK')
export type DestroyedKekError = InstanceType<typeof DestroyedKekError>

/** Every error class of the library: narrow it by `code`. */
export type AnyKmsProxyError =
  | DecryptError
  | FormatError
  | UnknownKekError
  | RootKeyError
  | StoreError
  | LimitError
  | RetiredKekError
  | DestroyedKekError
