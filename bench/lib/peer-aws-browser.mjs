// The AWS Encryption SDK for the browser (@aws-crypto/client-browser) as a peer of the suite, for
// the web runtimes (Chromium, and workerd where it runs): the configuration of the Node peer on
// the SDK's Web Crypto classes. A raw AES-128-GCM wrapping key behind the SDK's caching
// materials manager, so that a warm encrypt or decrypt reuses its data key as kms-proxy's DEK
// cache does; the SDK's recommended suite without signatures (kms-proxy does not sign either);
// the caller's associated data in the encryption context, the SDK's place for it.
//
// The SDK (4.2.2) wants Node's Buffer as a global when it loads (its caching materials manager
// calls Buffer.alloc): as the SDK's own browser examples do, the npm `buffer` polyfill is put on
// globalThis first where the runtime has none. kms-proxy and jose never touch it. Loaded with a
// dynamic import, so that a runtime on which the SDK still fails at load time gives the suite a
// note instead of taking the bundle down.
import { Buffer } from 'buffer'

/** The package name the suite prints with the peer's results. */
export const awsName = '@aws-crypto/client-browser'

/**
 * Loads the SDK. Resolves to `{ awsName, aws }` (the factory for `env.peers.aws`) where it loads,
 * or `{ awsName, awsNote }` (why it is not measured) where it does not.
 */
export async function loadAwsPeer(runtime) {
  let sdk
  try {
    globalThis.Buffer ??= Buffer
    sdk = await import('@aws-crypto/client-browser')
  } catch (error) {
    const message = String(error?.message ?? error).split('\n')[0]
    const why = `it fails to load (${message})`
    return { awsName, awsNote: `${awsName}: not measured on ${runtime}: ${why}` }
  }
  return { awsName, aws: (associatedData) => awsBrowserPeer(sdk, associatedData) }
}

/** The peer: `(sdk, associatedData) => Promise<{ encrypt, decrypt }>`. */
async function awsBrowserPeer(aws, associatedData) {
  const {
    buildClient,
    CommitmentPolicy,
    RawAesKeyringWebCrypto,
    RawAesWrappingSuiteIdentifier,
    WebCryptoCachingMaterialsManager,
    getLocalCryptographicMaterialsCache,
    AlgorithmSuiteIdentifier,
  } = aws
  const { encrypt, decrypt } = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
  const wrappingSuite = RawAesWrappingSuiteIdentifier.AES128_GCM_IV12_TAG16_NO_PADDING
  const masterKey = await RawAesKeyringWebCrypto.importCryptoKey(crypto.getRandomValues(new Uint8Array(16)), wrappingSuite)
  const keyring = new RawAesKeyringWebCrypto({ keyNamespace: 'bench', keyName: 'aes-128', masterKey, wrappingSuite })
  const cmm = new WebCryptoCachingMaterialsManager({
    backingMaterials: keyring,
    cache: getLocalCryptographicMaterialsCache(1000),
    maxAge: 10 * 60 * 1000,
    maxMessagesEncrypted: 2 ** 32,
    maxBytesEncrypted: Number.MAX_SAFE_INTEGER,
  })
  const suiteId = AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY
  const encryptionContext = { ad: new TextDecoder().decode(associatedData) }
  return {
    encrypt: async (plaintext) => (await encrypt(cmm, plaintext, { suiteId, encryptionContext })).result,
    async decrypt(data) {
      const { plaintext, messageHeader } = await decrypt(cmm, data)
      // The SDK returns the context it found; it is the caller's job to check it is the one expected.
      if (messageHeader.encryptionContext.ad !== encryptionContext.ad) throw new Error('AWS Encryption SDK: unexpected encryption context')
      return plaintext
    },
  }
}
