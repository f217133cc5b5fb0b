// What an application does with the packages it installed from the registry, by name only.
// app.mjs runs it on Node, Deno and Bun; browser.mjs is bundled by esbuild for the browser and
// the bundle runs it too. Resolves to [{ name, ok, detail }].
import { KeyChain, KmsProxyError, RootKeyError, aesRootKey, isKmsProxyError, memoryStore } from '@kms-proxy/core'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { awsKmsRootKey } from '@kms-proxy/kms'
import { etcdStore } from '@kms-proxy/etcd'
import { denoKvStore, workersKvStore } from '@kms-proxy/kv'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { webauthnRootKey } from '@kms-proxy/webauthn'
import { pkcs11BridgeRootKey } from '@kms-proxy/pkcs11'
import { createHarness, describeRootKey, describeStore } from '@kms-proxy/testkit'

const ROOT = new Uint8Array(32).fill(7)

/** `kmsUrl` answers HTTP 503 to every request, as a KMS does while it is overloaded. */
export async function run({ kmsUrl }) {
  const results = []
  const check = async (name, fn) => {
    try {
      results.push({ name, ok: true, detail: String((await fn()) ?? '') })
    } catch (error) {
      results.push({ name, ok: false, detail: String(error?.message ?? error) })
    }
  }

  await check('a key chain round-trips under a passphrase root key', async () => {
    const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase: 'correct horse', iterations: 1_000 }), store: memoryStore() })
    const encrypted = await chain.encrypt('hello', { associatedData: 'user/1' })
    const plaintext = new TextDecoder().decode(await chain.decrypt(encrypted, { associatedData: 'user/1' }))
    if (plaintext !== 'hello') throw new Error(`decrypted "${plaintext}"`)
    return `${encrypted.length} bytes`
  })

  await check("a KMS answering 503 gives a retryable ERR_ROOT_KEY that the app's core recognises", async () => {
    const rootKey = awsKmsRootKey({
      keyId: 'alias/app',
      region: 'eu-central-1',
      credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'not-a-secret' },
      endpoint: kmsUrl,
      retries: 0,
    })
    let caught
    try {
      const chain = await KeyChain.open({ rootKey, store: memoryStore() })
      await chain.encrypt('hello')
    } catch (error) {
      caught = error
    }
    if (caught === undefined) throw new Error('no error')
    const seen = { instanceofRootKeyError: caught instanceof RootKeyError, instanceofKmsProxyError: caught instanceof KmsProxyError, isKmsProxyError: isKmsProxyError(caught), code: caught.code, retryable: caught.retryable }
    if (!seen.instanceofRootKeyError || !seen.instanceofKmsProxyError || !seen.isKmsProxyError || seen.code !== 'ERR_ROOT_KEY' || seen.retryable !== true) {
      throw new Error(`got ${JSON.stringify(seen)}: ${caught}`)
    }
    return 'retryable ERR_ROOT_KEY'
  })

  await check("testkit's describeStore and describeRootKey pass on core's memory store and AES root key", async () => {
    const t = createHarness()
    describeStore(t, {
      name: 'memoryStore',
      severalRoots: true,
      watch: true,
      open: async () => {
        const store = memoryStore()
        return { store, another: () => store }
      },
    })
    describeRootKey(t, { name: 'aesRootKey', wrapKek: true, make: () => aesRootKey(ROOT), other: () => aesRootKey(new Uint8Array(32).fill(9)) })
    const outcome = await t.run()
    const failed = outcome.filter((r) => !r.ok)
    if (outcome.length === 0) throw new Error('no test ran')
    if (failed.length > 0) throw new Error(`${failed.length} of ${outcome.length} failed: ${failed.map((r) => `${r.name}: ${r.error}`).join('; ').slice(0, 600)}`)
    return `${outcome.length} contract tests`
  })

  await check('every store and root key factory is exported by name', async () => {
    const factories = { etcdStore, denoKvStore, workersKvStore, indexedDbStore, webauthnRootKey, pkcs11BridgeRootKey }
    const missing = Object.entries(factories).filter(([, f]) => typeof f !== 'function').map(([n]) => n)
    if (missing.length > 0) throw new Error(`not functions: ${missing.join(', ')}`)
    return Object.keys(factories).join(', ')
  })
  return results
}
