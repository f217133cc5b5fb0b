/**
 * AWS KMS as a root key over its JSON 1.1 protocol: GenerateDataKey (AES_128) for a new KEK,
 * Decrypt to unwrap one. The chain's KEK AAD goes in the encryption context, so KMS itself binds
 * each wrapped KEK to its chain name and id.
 */
import { RootKeyError, type NewKek, type RootKey } from '@kms-proxy/core'
import { fromBase64, importKek, postJson, toBase64, type RetryOptions } from './http.js'
import { signV4, type AwsCredentials } from './sigv4.js'

export interface AwsKmsRootKeyOptions extends RetryOptions {
  /** Key id, key ARN, alias name (alias/…) or alias ARN. */
  keyId: string
  region: string
  /** Static credentials, or a function called before each request (for expiring ones). */
  credentials: AwsCredentials | (() => Promise<AwsCredentials>)
  /** Default https://kms.{region}.amazonaws.com. */
  endpoint?: string
}

const TAG = 0x20

function context(aad: Uint8Array): Record<string, string> {
  return { 'kms-proxy:kek': toBase64(aad) }
}

export function awsKmsRootKey(options: AwsKmsRootKeyOptions): RootKey {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { keyId, region } = options
  if (typeof keyId !== 'string' || keyId === '') throw new TypeError('keyId: expected a key id, ARN or alias')
  if (typeof region !== 'string' || !/^[a-z0-9-]+$/.test(region)) throw new TypeError('region: expected an AWS region such as eu-central-1')
  if (typeof options.credentials !== 'function' && (typeof options.credentials?.accessKeyId !== 'string' || typeof options.credentials?.secretAccessKey !== 'string')) {
    throw new TypeError('credentials: expected { accessKeyId, secretAccessKey, sessionToken? } or a function returning them')
  }
  const endpoint = new URL(options.endpoint ?? `https://kms.${region}.amazonaws.com`)
  const credentials = typeof options.credentials === 'function' ? options.credentials : async () => options.credentials as AwsCredentials

  async function call(action: string, payload: Record<string, unknown>): Promise<Record<string, string>> {
    const body = JSON.stringify(payload)
    const headers = async () =>
      signV4({
        method: 'POST',
        url: endpoint,
        headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${action}` },
        body,
        region,
        service: 'kms',
        credentials: await credentials(),
      })
    return (await postJson(`AWS KMS ${action}`, endpoint.href, body, headers, options, (status, error) => {
      const named = (error as { __type?: unknown } | undefined)?.__type
      const type = typeof named === 'string' ? named.split('#').pop()! : `HTTP ${status}`
      return type === 'InvalidCiphertextException' ? `${type} (wrong key, or a KEK moved to another chain or id)` : type
    })) as Record<string, string>
  }

  return {
    kind: 'aws-kms',
    async newKek(aad): Promise<NewKek> {
      const out = await call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_128', EncryptionContext: context(aad) })
      const blob = fromBase64(out.CiphertextBlob!)
      const wrapped = new Uint8Array(1 + blob.length)
      wrapped[0] = TAG
      wrapped.set(blob, 1)
      return { kek: await importKek('AWS KMS', fromBase64(out.Plaintext!)), wrapped }
    },
    async unwrapKek(wrapped, aad) {
      if (!(wrapped instanceof Uint8Array) || wrapped[0] !== TAG || wrapped.length < 2) {
        throw new RootKeyError('this KEK was not wrapped by an AWS KMS root key')
      }
      const out = await call('Decrypt', { KeyId: keyId, CiphertextBlob: toBase64(wrapped.subarray(1)), EncryptionContext: context(aad) })
      return importKek('AWS KMS', fromBase64(out.Plaintext!))
    },
    toString: () => '[RootKey aws-kms]',
    toJSON: () => ({ kind: 'aws-kms', keyId, region, endpoint: endpoint.origin }),
  } as RootKey
}
