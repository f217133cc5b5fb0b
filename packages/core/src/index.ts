/**
 * Envelope encryption with a key chain on `crypto.subtle`: data under a fresh DEK per message,
 * DEKs wrapped by the chain's primary KEK, KEKs wrapped by a root key that is asked once per
 * unlock and once per rotation. Also the format v1 codec, the memory and embedded stores, the
 * ephemeral and AES root keys, the typed errors, and the HTTP exchange the network adapters share.
 * Zero runtime dependencies; the same code on browsers, Node, Deno, Bun and Workers.
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 *
 * const keyChain = await KeyChain.open()                       // ephemeral root key, KEK embedded in the data
 * const encryptedData = await keyChain.encrypt('plaintext')    // Uint8Array: header, wrapped DEK, ciphertext
 * const plaintext = await keyChain.decrypt(encryptedData)      // Uint8Array of the UTF-8 bytes
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/core
 */
export { KeyChain } from './key-chain.js'
export type {
  KeyChainOptions,
  EncryptOptions,
  EncryptStreamOptions,
  KeyChainStats,
  KekStats,
  PrimaryStatus,
  RootChangeReport,
  RootInfo,
  RootStats,
} from './key-chain.js'
export {
  KmsProxyError,
  isKmsProxyError,
  DecryptError,
  FormatError,
  UnknownKekError,
  RootKeyError,
  StoreError,
  LimitError,
  RetiredKekError,
  DestroyedKekError,
  ERROR_CODES,
} from './errors.js'
export type { ErrorCode, AnyKmsProxyError, KmsProxyErrorOptions, KmsProxyErrorClass } from './errors.js'
export { memoryStore, embeddedStore, DEFAULT_ROOT, rootOf, parseChainHead, isRootName, checkChainName, checkKekId, checkRootName } from './store.js'
export type { KeyStore, KekRecord, ChainHead, ChainRoot, ChainRootState, RetiredKek, Versioned } from './store.js'
export { ephemeralRootKey, aesRootKey, sealNewKek, sealKek, openSealedKek, importKekBytes, KEK_ALGORITHM } from './root-key.js'
export type { RootKey, NewKek, UnwrapKekOptions } from './root-key.js'
export {
  FORMAT_VERSION,
  FORMAT_VERSION_ROOTS,
  MAX_EMBEDDED_ROOTS,
  OVERHEAD_BYTES,
  TEXT_PREFIX,
  MAX_EMBEDDED_KEK_BYTES,
  MAX_PLAINTEXT_BYTES,
  DEFAULT_SEGMENT_SIZE,
  MIN_SEGMENT_SIZE,
  MAX_SEGMENT_SIZE,
  decodeHeader,
  decodeMessage,
  decodeStreamHeader,
  streamHeaderLength,
  isStream,
  kekAad,
} from './format.js'
export type { Header, MessageParts, StreamHeader, EmbeddedKek } from './format.js'
export { toBase64, fromBase64, toBase64Url, fromBase64Url, toHex } from './encoding.js'
export { httpExchange, httpWithRetry, transientStatus, isLoopbackHost, checkServerUrl, HttpExchangeError } from './http.js'
export type { HttpAnswer, HttpExchangeOptions, HttpRetryOptions, HttpFailureReason } from './http.js'
