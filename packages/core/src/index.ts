export { KeyChain } from './key-chain.js'
export type { KeyChainOptions, EncryptOptions, EncryptStreamOptions, KeyChainStats, KekStats, PrimaryStatus } from './key-chain.js'
export {
  KmsProxyError,
  isKmsProxyError,
  DecryptError,
  FormatError,
  UnknownKekError,
  RootKeyError,
  StoreError,
  LimitError,
  ERROR_CODES,
} from './errors.js'
export type { ErrorCode, AnyKmsProxyError, KmsProxyErrorOptions, KmsProxyErrorClass } from './errors.js'
export { memoryStore, embeddedStore } from './store.js'
export type { KeyStore, KekRecord, ChainHead, Versioned } from './store.js'
export { ephemeralRootKey, aesRootKey, sealNewKek, openSealedKek, KEK_ALGORITHM, KEK_USAGES } from './root-key.js'
export type { RootKey, NewKek } from './root-key.js'
export {
  FORMAT_VERSION,
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
export type { Header, MessageParts, StreamHeader } from './format.js'
export { httpExchange, httpWithRetry, transientStatus, isLoopbackHost, checkServerUrl, HttpExchangeError } from './http.js'
export type { HttpAnswer, HttpExchangeOptions, HttpRetryOptions, HttpFailureReason } from './http.js'
