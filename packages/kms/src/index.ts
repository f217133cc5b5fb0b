/**
 * Remote KMSs as root keys, through `fetch` and `crypto.subtle` only, on every runtime: AWS KMS,
 * Google Cloud KMS, HashiCorp Vault Transit and Azure Key Vault. No vendor SDK is bundled. A
 * rotation costs one or two KMS calls, an unlock one per KEK, a message none.
 *
 * @example
 * ```ts
 * import { KeyChain } from '@kms-proxy/core'
 * import { awsKmsRootKey } from '@kms-proxy/kms'
 * const rootKey = awsKmsRootKey({ keyId: 'alias/app', region: 'eu-central-1', credentials })
 * const chain = await KeyChain.open({ rootKey, store })   // one GenerateDataKey per rotation
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/kms
 */
export { awsKmsRootKey } from './aws.js'
export type { AwsKmsRootKeyOptions } from './aws.js'
export type { AwsCredentials, SignInput } from './sigv4.js'
export { signV4 } from './sigv4.js'
export type { RetryOptions } from './http.js'
export { gcpKmsRootKey } from './gcp.js'
export type { GcpKmsRootKeyOptions } from './gcp.js'
export { vaultTransitRootKey } from './vault.js'
export type { VaultTransitRootKeyOptions } from './vault.js'
export { azureKeyVaultRootKey } from './azure.js'
export type { AzureKeyVaultRootKeyOptions } from './azure.js'
export { refreshingCredentials } from './credentials.js'
export type { ExpiringCredential, RefreshingCredentials, RefreshingCredentialsOptions } from './credentials.js'
export type { CredentialSourceOptions } from './sources.js'
export { awsWebIdentityCredentials, awsContainerCredentials, awsInstanceCredentials } from './aws-credentials.js'
export type { AwsWebIdentityCredentialsOptions, AwsContainerCredentialsOptions, AwsInstanceCredentialsOptions } from './aws-credentials.js'
export { gcpMetadataToken, azureManagedIdentityToken } from './metadata-tokens.js'
export type { GcpMetadataTokenOptions, AzureManagedIdentityTokenOptions } from './metadata-tokens.js'
