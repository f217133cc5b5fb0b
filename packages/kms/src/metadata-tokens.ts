/**
 * Access tokens from the metadata endpoints of Google Cloud (GCE, GKE Workload Identity, Cloud
 * Run) and Azure (managed identities on VMs, AKS, App Service, Container Apps), as refreshing
 * functions for `gcpKmsRootKey`'s and `azureKeyVaultRootKey`'s `accessToken`.
 */
import { RootKeyError } from '@kms-proxy/core'
import { refreshingCredentials, type RefreshingCredentials } from './credentials.js'
import { askSource, jsonOf, checkSourceOptions, expiryOf, sourceUrl, type CredentialSourceOptions } from './sources.js'

/** Options of {@link gcpMetadataToken}. */
export interface GcpMetadataTokenOptions extends CredentialSourceOptions {
  /**
   * The metadata server (`GCE_METADATA_HOST`, as a URL).
   *
   * @defaultValue `http://metadata.google.internal`
   */
  endpoint?: string
  /**
   * OAuth scopes to ask for.
   *
   * @defaultValue none: the service account's scopes (`cloud-platform` on GKE and Cloud Run)
   */
  scopes?: string[]
  /**
   * The service account, by email.
   *
   * @defaultValue `'default'`
   */
  serviceAccount?: string
}

/** Options of {@link azureManagedIdentityToken}. */
export interface AzureManagedIdentityTokenOptions extends CredentialSourceOptions {
  /**
   * The instance metadata service (IMDS) of VMs, scale sets and AKS nodes.
   *
   * @defaultValue `http://169.254.169.254`
   */
  endpoint?: string
  /**
   * App Service, Functions and Container Apps: `IDENTITY_ENDPOINT`. With `identityHeader`, the
   * token is asked there (api-version 2019-08-01) instead of IMDS.
   */
  identityEndpoint?: string
  /** `IDENTITY_HEADER`, sent as `X-IDENTITY-HEADER` to `identityEndpoint`. */
  identityHeader?: string
  /** Client id of a user-assigned identity. Default: the system-assigned identity. */
  clientId?: string
  /**
   * The resource the token is for.
   *
   * @defaultValue `'https://vault.azure.net'` (Key Vault)
   */
  resource?: string
}

const GCP_HOSTS = ['metadata.google.internal', '169.254.169.254']
const AZURE_HOSTS = ['169.254.169.254']

function bearer(what: string, out: Record<string, unknown>, expiresAt: number | undefined): { value: string; expiresAt: number } {
  const token = out.access_token
  if (typeof token !== 'string' || token === '' || /[\s\0]/.test(token)) throw new RootKeyError(`${what} answered without an access_token`)
  if (expiresAt === undefined || Number.isNaN(expiresAt)) throw new RootKeyError(`${what} answered without a valid expiry`)
  return { value: token, expiresAt }
}

/**
 * An OAuth access token for the instance's service account from the Google metadata server
 * (`/computeMetadata/v1/instance/service-accounts/default/token` with `Metadata-Flavor: Google`),
 * refreshed before it expires (about an hour; `expires_in`). On GKE with Workload Identity this
 * is the Kubernetes service account's Google identity. An answer without the
 * `Metadata-Flavor: Google` header is refused: it does not come from a metadata server.
 *
 * @throws TypeError - (at once) a bad option or endpoint.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from the returned function) `ERR_ROOT_KEY`, with
 *   no token in it: `retryable` when the server was unreachable or answered 429/5xx.
 * @example
 * ```ts
 * const rootKey = gcpKmsRootKey({ keyName: 'projects/p/locations/l/keyRings/r/cryptoKeys/k', accessToken: gcpMetadataToken() })
 * ```
 */
export function gcpMetadataToken(options: GcpMetadataTokenOptions = {}): RefreshingCredentials<string> {
  checkSourceOptions(options)
  const { scopes } = options
  const account = options.serviceAccount ?? 'default'
  if (scopes !== undefined && (!Array.isArray(scopes) || scopes.some((s) => typeof s !== 'string' || !/^[^\s,]+$/.test(s)))) throw new TypeError('scopes: expected an array of OAuth scope URLs')
  if (typeof account !== 'string' || !/^[\w.@-]{1,254}$/.test(account)) throw new TypeError('serviceAccount: expected a service account email, or default')
  const url = new URL(`/computeMetadata/v1/instance/service-accounts/${encodeURIComponent(account)}/token`, sourceUrl(options.endpoint ?? 'http://metadata.google.internal', 'endpoint', GCP_HOSTS, options))
  if (scopes?.length) url.searchParams.set('scopes', scopes.join(','))
  const what = 'Google metadata server token'
  const now = options.now ?? Date.now

  return refreshingCredentials(async () => {
    const startedAt = now()
    const answer = await askSource(what, url, async () => ({ method: 'GET', headers: { 'metadata-flavor': 'Google' } }), options, { code: (a) => (jsonOf(a).error as string | undefined) })
    if (answer.headers.get('metadata-flavor') !== 'Google') throw new RootKeyError(`${what}: the answer lacks Metadata-Flavor: Google (not a metadata server)`)
    const out = jsonOf(answer)
    const seconds = typeof out.expires_in === 'number' ? out.expires_in : Number(out.expires_in)
    return bearer(what, out, Number.isFinite(seconds) ? startedAt + seconds * 1000 : undefined)
  }, options)
}

/**
 * A Microsoft Entra access token of the managed identity, for Key Vault by default: from IMDS
 * (`/metadata/identity/oauth2/token?api-version=2018-02-01` with `Metadata: true`) on VMs, scale
 * sets and AKS, or, with `identityEndpoint` and `identityHeader`, from App Service, Functions and
 * Container Apps (api-version 2019-08-01 with `X-IDENTITY-HEADER`). Refreshed before it expires
 * (`expires_on`). IMDS's 404 (identity not yet assigned) and 410 (updating) are retried, as
 * Microsoft asks, with 429 and 5xx.
 *
 * @throws TypeError - (at once) a bad option or endpoint, or only one of `identityEndpoint` and `identityHeader`.
 * @throws {@link @kms-proxy/core!RootKeyError} - (from the returned function) `ERR_ROOT_KEY`, with
 *   no token in it: the endpoint's error code (`invalid_request`, `identity_not_found`, …),
 *   `retryable` when it was unreachable or answered 404, 410, 429 or 5xx.
 * @example
 * ```ts
 * const accessToken = process.env.IDENTITY_ENDPOINT
 *   ? azureManagedIdentityToken({ identityEndpoint: process.env.IDENTITY_ENDPOINT, identityHeader: process.env.IDENTITY_HEADER })
 *   : azureManagedIdentityToken({ clientId: process.env.AZURE_CLIENT_ID })
 * const rootKey = azureKeyVaultRootKey({ vaultUrl: 'https://my-vault.vault.azure.net', keyName: 'app', accessToken })
 * ```
 */
export function azureManagedIdentityToken(options: AzureManagedIdentityTokenOptions = {}): RefreshingCredentials<string> {
  checkSourceOptions(options)
  const { clientId, identityEndpoint, identityHeader } = options
  const resource = options.resource ?? 'https://vault.azure.net'
  if (clientId !== undefined && (typeof clientId !== 'string' || !/^[\w-]{1,64}$/.test(clientId))) throw new TypeError('clientId: expected the client id of a user-assigned identity')
  if (typeof resource !== 'string' || resource === '') throw new TypeError('resource: expected a resource URI such as https://vault.azure.net')
  if ((identityEndpoint === undefined) !== (identityHeader === undefined)) throw new TypeError('identityEndpoint and identityHeader: expected both (App Service, Container Apps) or neither (IMDS)')
  if (identityHeader !== undefined && (typeof identityHeader !== 'string' || identityHeader === '' || /[\r\n\0]/.test(identityHeader))) throw new TypeError('identityHeader: expected the IDENTITY_HEADER value')
  const appService = identityEndpoint !== undefined
  const url = appService
    ? sourceUrl(identityEndpoint, 'identityEndpoint', AZURE_HOSTS, options)
    : new URL('/metadata/identity/oauth2/token', sourceUrl(options.endpoint ?? 'http://169.254.169.254', 'endpoint', AZURE_HOSTS, options))
  url.searchParams.set('api-version', appService ? '2019-08-01' : '2018-02-01')
  url.searchParams.set('resource', resource)
  if (clientId !== undefined) url.searchParams.set('client_id', clientId)
  const headers: Record<string, string> = appService ? { 'x-identity-header': identityHeader! } : { metadata: 'true' }
  const what = appService ? 'Azure managed identity endpoint token' : 'Azure IMDS managed identity token'
  const now = options.now ?? Date.now

  return refreshingCredentials(async () => {
    const startedAt = now()
    const answer = await askSource(what, url, async () => ({ method: 'GET', headers }), options, {
      code: (a) => {
        const e = jsonOf(a).error
        return typeof e === 'string' ? e : ((e as { code?: string } | undefined)?.code)
      },
      transient: (a) => !appService && (a.status === 404 || a.status === 410),
    })
    const out = jsonOf(answer)
    const inSeconds = Number(out.expires_in)
    return bearer(what, out, expiryOf(out.expires_on) ?? (Number.isFinite(inSeconds) ? startedAt + inSeconds * 1000 : undefined))
  }, options)
}
