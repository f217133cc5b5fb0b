/**
 * The public API of every package, name by name. A new export is a promise to support it: this
 * list makes adding one a deliberate change reviewed here, and keeps internals (base64 helpers,
 * the KMS v2 envelope checks) from leaking into the API again; the SigV4 signer is public since a
 * second package (the DynamoDB store) signs AWS requests with it. Base64 and hex
 * exist once, in core, with one strictness.
 */
import { describe, expect, it } from 'vitest'

const PUBLIC_API: Record<string, string[]> = {
  core: [
    'DEFAULT_ROOT', 'DEFAULT_SEGMENT_SIZE', 'DecryptError', 'ERROR_CODES', 'FORMAT_VERSION', 'FORMAT_VERSION_ROOTS',
    'FormatError', 'HttpExchangeError', 'MAX_EMBEDDED_ROOTS', 'rootOf', 'sealKek',
    'KEK_ALGORITHM', 'KeyChain', 'KmsProxyError', 'LimitError', 'MAX_EMBEDDED_KEK_BYTES', 'MAX_PLAINTEXT_BYTES',
    'MAX_SEGMENT_SIZE', 'MIN_SEGMENT_SIZE', 'OVERHEAD_BYTES', 'RootKeyError', 'StoreError', 'TEXT_PREFIX',
    'UnknownKekError', 'aesRootKey', 'checkServerUrl', 'decodeHeader', 'decodeMessage', 'decodeStreamHeader',
    'embeddedStore', 'ephemeralRootKey', 'fromBase64', 'fromBase64Url', 'httpExchange', 'httpWithRetry',
    'importKekBytes', 'isKmsProxyError', 'isLoopbackHost', 'isStream', 'kekAad', 'memoryStore', 'openSealedKek',
    'sealNewKek', 'streamHeaderLength', 'toBase64', 'toBase64Url', 'toHex', 'transientStatus',
    'RetiredKekError', 'DestroyedKekError', 'parseChainHead', 'isRootName',
    // For store authors: the argument checks every store of this project makes first.
    'checkChainName', 'checkKekId', 'checkRootName',
  ],
  passphrase: [
    'DEFAULT_ARGON2ID', 'DEFAULT_ITERATIONS', 'DEFAULT_MAX_COST_FACTOR', 'DEFAULT_SCRYPT', 'MAX_ITERATIONS',
    'MAX_KDF_MEMORY_BYTES', 'MIN_ITERATIONS', 'SALT_BYTES', 'passphraseRootKey',
  ],
  testkit: ['AssertionError', 'countingRootKey', 'createHarness', 'describeRootKey', 'describeStore'],
  file: ['fileStore'],
  etcd: ['etcdStore'],
  kv: ['denoKvStore', 'workersKvStore'],
  indexeddb: ['indexedDbStore'],
  'durable-object': ['KeyChainObject', 'durableObjectStore'],
  dynamodb: ['createDynamoDbTable', 'dynamoDbStore'],
  postgres: ['postgresSchema', 'postgresStore'],
  kms: [
    'awsKmsRootKey', 'azureKeyVaultRootKey', 'gcpKmsRootKey', 'vaultTransitRootKey', 'refreshingCredentials',
    'awsWebIdentityCredentials', 'awsContainerCredentials', 'awsInstanceCredentials', 'gcpMetadataToken', 'azureManagedIdentityToken',
    // AWS's request signer, shared with @kms-proxy/dynamodb (the one other package that talks to
    // AWS) instead of a second copy there; checked against AWS's own signer in both packages' tests.
    'signV4',
  ],
  webauthn: [
    'CANCELLED_MESSAGE', 'HKDF_INFO', 'KIND', 'NO_PRF_MESSAGE', 'SALT_BYTES', 'WEBAUTHN_WRAP_TAG',
    'registerPrfCredential', 'registerPrfRootKey', 'webauthnRootKey',
  ],
  pkcs11: ['PKCS11_DATA_KEY_TAG', 'PKCS11_ENVELOPE_LENGTH', 'PKCS11_WRAPPED_LENGTH', 'PKCS11_WRAP_TAG', 'pkcs11BridgeRootKey', 'pkcs11Wrapping'],
  'pkcs11-bridge': ['pkcs11RootKey', 'startPkcs11Bridge'],
  k8s: [
    'KEK_ANNOTATION', 'KMS_API_VERSION', 'MAX_ANNOTATIONS_BYTES', 'MAX_CIPHERTEXT_BYTES', 'MAX_KEY_ID_BYTES',
    'MAX_PLAINTEXT_BYTES', 'kmsPluginStatus', 'loadKmsService', 'serveKmsPlugin',
  ],
  cli: [
    'CONFIG_FORMAT', 'CREDENTIAL_ENV', 'CliError', 'EXIT', 'SECRET_ENV', 'VERSION', 'configPath', 'explain', 'loadConfig', 'main',
    'openChainFromConfig', 'runAndExit',
  ],
}

describe('public API', () => {
  for (const [name, expected] of Object.entries(PUBLIC_API)) {
    it(`@kms-proxy/${name} exports exactly its reviewed names`, async () => {
      const module = (await import(`@kms-proxy/${name}`)) as Record<string, unknown>
      expect(Object.keys(module).sort()).toEqual([...expected].sort())
    })
  }

  it('no package but core exports base64, hex or signing helpers (but kms its AWS signer, reviewed above)', async () => {
    const helper = /base64|hex|sign|sigv4|encode|decode/i
    const reviewed: Record<string, string[]> = { kms: ['signV4'] }
    for (const name of Object.keys(PUBLIC_API).filter((n) => n !== 'core')) {
      const module = (await import(`@kms-proxy/${name}`)) as Record<string, unknown>
      expect(Object.keys(module).filter((k) => helper.test(k)), name).toEqual(reviewed[name] ?? [])
    }
  })

  it('KEK_ALGORITHM cannot be changed by a caller', async () => {
    const { KEK_ALGORITHM } = await import('@kms-proxy/core')
    expect(Object.isFrozen(KEK_ALGORITHM)).toBe(true)
    expect(() => Object.assign(KEK_ALGORITHM as { length: number }, { length: 256 })).toThrow(TypeError)
    expect(KEK_ALGORITHM.length).toBe(128)
  })
})
