/**
 * One base class, one subclass per stable code, generated from a single table.
 *
 * Messages never contain key bytes, plaintext, passphrases or which layer of a decryption failed
 * (no oracle). A `DecryptError` carries no `cause`.
 */

export const ERROR_CODES = {
  ERR_DECRYPT: 'DecryptError',
  ERR_FORMAT: 'FormatError',
  ERR_UNKNOWN_KEK: 'UnknownKekError',
  ERR_ROOT_KEY: 'RootKeyError',
  ERR_STORE: 'StoreError',
  ERR_LIMIT: 'LimitError',
} as const

export type ErrorCode = keyof typeof ERROR_CODES

export interface KmsProxyErrorOptions {
  cause?: unknown
  /** True when the same call may succeed later (a KMS that answered 503, a store that timed out). */
  retryable?: boolean
}

export class KmsProxyError extends Error {
  readonly code: ErrorCode
  readonly retryable: boolean

  constructor(code: ErrorCode, message: string, options: KmsProxyErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.code = code
    this.retryable = options.retryable ?? false
    this.name = ERROR_CODES[code] ?? 'KmsProxyError'
  }

  /** What `JSON.stringify` sees: the code and message, never a cause chain. */
  toJSON(): { name: string; code: ErrorCode; message: string; retryable: boolean } {
    return { name: this.name, code: this.code, message: this.message, retryable: this.retryable }
  }
}

function defineError<C extends ErrorCode>(code: C) {
  const Class = class extends KmsProxyError {
    declare readonly code: C
    constructor(message: string, options?: KmsProxyErrorOptions) {
      super(code, message, options)
    }
  }
  Object.defineProperty(Class, 'name', { value: ERROR_CODES[code] })
  return Class
}

/** Authentication failed. Says nothing about why: wrong key, wrong associated data or altered bytes. */
export const DecryptError = defineError('ERR_DECRYPT')
export type DecryptError = InstanceType<typeof DecryptError>
/** Malformed encrypted data, unsupported version or flags. */
export const FormatError = defineError('ERR_FORMAT')
export type FormatError = InstanceType<typeof FormatError>
/** The encrypted data names a KEK that is neither cached, embedded nor in the store. */
export const UnknownKekError = defineError('ERR_UNKNOWN_KEK')
export type UnknownKekError = InstanceType<typeof UnknownKekError>
/** The root key is wrong, failed or is unavailable. */
export const RootKeyError = defineError('ERR_ROOT_KEY')
export type RootKeyError = InstanceType<typeof RootKeyError>
/** The store failed or returned something unusable. */
export const StoreError = defineError('ERR_STORE')
export type StoreError = InstanceType<typeof StoreError>
/** A size or count limit of the format or of AES-GCM would be exceeded. */
export const LimitError = defineError('ERR_LIMIT')
export type LimitError = InstanceType<typeof LimitError>

export type AnyKmsProxyError =
  | DecryptError
  | FormatError
  | UnknownKekError
  | RootKeyError
  | StoreError
  | LimitError
