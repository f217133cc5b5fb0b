// Type-checked by tsc in the consumer project (strict, skipLibCheck false, no @types/node): every
// package that runs outside Node must compile against DOM and ES2022 alone.
import { KeyChain, RootKeyError, isKmsProxyError, memoryStore, type KeyStore, type RootKey } from '@kms-proxy/core'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { awsKmsRootKey } from '@kms-proxy/kms'
import { etcdStore } from '@kms-proxy/etcd'
import { denoKvStore, workersKvStore, type WorkersKvNamespace } from '@kms-proxy/kv'
import { KeyChainObject, durableObjectStore, type DurableObjectNamespaceLike } from '@kms-proxy/durable-object'
import { createDynamoDbTable, dynamoDbStore } from '@kms-proxy/dynamodb'
import { indexedDbStore } from '@kms-proxy/indexeddb'
import { webauthnRootKey } from '@kms-proxy/webauthn'
import { pkcs11BridgeRootKey } from '@kms-proxy/pkcs11'
import { createHarness, describeStore, type StoreUnderTest } from '@kms-proxy/testkit'

export async function roundTrip(passphrase: string): Promise<string> {
  const rootKey: RootKey = passphraseRootKey({ passphrase })
  const store: KeyStore = memoryStore()
  const chain: KeyChain = await KeyChain.open({ rootKey, store })
  const encrypted: Uint8Array = await chain.encrypt('hello')
  return new TextDecoder().decode(await chain.decrypt(encrypted))
}

export function retryable(error: unknown): boolean {
  return (error instanceof RootKeyError || isKmsProxyError(error)) && error.retryable === true
}

export const factories = [awsKmsRootKey, etcdStore, denoKvStore, workersKvStore, indexedDbStore, webauthnRootKey, pkcs11BridgeRootKey, dynamoDbStore, createDynamoDbTable, durableObjectStore] as const

/** What a Worker exports and binds: the Durable Object class, and the store on its namespace. */
export const durableObjectClass: typeof KeyChainObject = KeyChainObject
export function durableObject(namespace: DurableObjectNamespaceLike): KeyStore {
  return durableObjectStore(namespace, { prefix: 'app:' })
}

export function kv(namespace: WorkersKvNamespace): KeyStore {
  return workersKvStore(namespace)
}

export async function contract(): Promise<number> {
  const t = createHarness()
  describeStore(t, {
    name: 'memory',
    severalRoots: true,
    watch: true,
    open: async (): Promise<StoreUnderTest> => {
      const store = memoryStore()
      return { store, another: () => store }
    },
  })
  return (await t.run()).length
}
