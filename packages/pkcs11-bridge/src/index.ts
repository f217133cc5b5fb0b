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
 * why the bridge listens only on loopback or a Unix socket (mode 0600), every request needs a
 * bearer token, compared in constant time, and a token can be scoped to chain names.
 *
 * PKCS#11 calls are synchronous here: one session serves one operation at a time, and on
 * SoftHSM2 each call takes well under a millisecond. The chain makes them rarely (once per
 * rotation, once per KEK per process).
 *
 * @example
 * ```ts
 * import { startPkcs11Bridge } from '@kms-proxy/pkcs11-bridge'
 * const bridge = await startPkcs11Bridge({
 *   module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 'kms-proxy', pin: process.env.HSM_PIN!, keyLabel: 'kms-proxy-root',
 *   tokens: [{ name: 'payments-svc', token: process.env.PAYMENTS_TOKEN!, chains: ['payments'] }], socketPath: '/run/kms-proxy/bridge.sock' })
 * // clients: pkcs11BridgeRootKey({ url: bridge.url, token }) from @kms-proxy/pkcs11
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/pkcs11-bridge
 */
export { pkcs11RootKey, type Pkcs11KeyOptions } from './token-key.js'
export { startPkcs11Bridge, type Pkcs11Bridge, type Pkcs11BridgeOptions } from './bridge.js'
export type { Pkcs11BridgeToken } from './callers.js'
