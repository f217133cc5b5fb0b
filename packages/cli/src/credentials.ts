/**
 * Cloud credentials that refresh on their own, for the KMS root keys of a process that runs for
 * days (the Kubernetes plugin): STS credentials last hours, Google and Azure access tokens about
 * one. Each source is a function the root calls before each request; it returns the cached
 * credential until shortly before it expires and fetches a new one then.
 */
import process from 'node:process'
import { readFile } from 'node:fs/promises'
import { isKmsProxyError } from '@kms-proxy/core'
import {
  awsContainerCredentials,
  awsInstanceCredentials,
  awsWebIdentityCredentials,
  azureManagedIdentityToken,
  gcpMetadataToken,
  type AwsCredentials,
} from '@kms-proxy/kms'
import { usage } from './exit.js'
import { envFileSecret, envSecret, type FileSecret } from './secret-file.js'

/**
 * Where an `aws-kms` root's credentials come from. Without it, AWS's own order: static keys in
 * the environment, then web identity, then the container endpoint, then EC2 instance metadata.
 */
export type AwsCredentialsConfig =
  | {
      /** `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (never refreshed). */
      source: 'env'
    }
  | {
      /** `AssumeRoleWithWebIdentity` with a token read from a file at each refresh (Kubernetes service accounts, EKS IRSA). */
      source: 'web-identity'
      /** The role (else `AWS_ROLE_ARN`). */
      roleArn?: string
      /** The session name (else `AWS_ROLE_SESSION_NAME`, else one the provider makes). */
      roleSessionName?: string
      /** The token file (else `AWS_WEB_IDENTITY_TOKEN_FILE`); Kubernetes rewrites it as the token rotates. */
      tokenFile?: string
      /** The STS endpoint (else `AWS_ENDPOINT_URL_STS`, else the regional endpoint of `stsRegion`). */
      stsEndpoint?: string
      /** STS's region (else the key's region). */
      stsRegion?: string
      /** The credentials' lifetime asked for, in seconds (STS: 900 to 43,200; default 3,600). */
      durationSeconds?: number
    }
  | {
      /** The ECS / EKS Pod Identity endpoint: `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`, with `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`. */
      source: 'container'
    }
  | {
      /** EC2 instance metadata (IMDSv2). */
      source: 'instance'
      /** The metadata endpoint (else `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else `http://169.254.169.254`). */
      endpoint?: string
    }

/** Where a `gcp` root's access token comes from. Without it: `GCP_ACCESS_TOKEN(_FILE)`, else the metadata server. */
export type GcpCredentialsConfig =
  | {
      /** `GCP_ACCESS_TOKEN`, or the file `GCP_ACCESS_TOKEN_FILE` names (re-read when it changes). */
      source: 'env'
    }
  | {
      /** The Compute Engine / GKE metadata server's token of the attached service account. */
      source: 'metadata'
      /** The metadata server (else `http://$GCE_METADATA_HOST`, else `http://metadata.google.internal`). */
      endpoint?: string
      /** OAuth scopes asked for (default: the provider's, cloud-platform). */
      scopes?: string[]
    }

/** Where an `azure` root's access token comes from. Without it: `AZURE_ACCESS_TOKEN(_FILE)`, else managed identity. */
export type AzureCredentialsConfig =
  | {
      /** `AZURE_ACCESS_TOKEN`, or the file `AZURE_ACCESS_TOKEN_FILE` names (re-read when it changes). */
      source: 'env'
    }
  | {
      /** The managed identity endpoint (Azure Instance Metadata Service). */
      source: 'managed-identity'
      /** The endpoint (default: the provider's, IMDS). */
      endpoint?: string
      /** A user-assigned identity's client id (else `AZURE_CLIENT_ID`, else the system-assigned identity). */
      clientId?: string
    }

/** Environment variables of the credential sources, as AWS, Google and Azure name them. Documented in the README. */
export const CREDENTIAL_ENV = {
  /** The file holding the web identity (service account) token, read again at each refresh. */
  awsWebIdentityTokenFile: 'AWS_WEB_IDENTITY_TOKEN_FILE',
  /** The role web identity assumes. */
  awsRoleArn: 'AWS_ROLE_ARN',
  /** The session name of that role. */
  awsRoleSessionName: 'AWS_ROLE_SESSION_NAME',
  /** Another STS endpoint (a VPC endpoint). */
  awsStsEndpoint: 'AWS_ENDPOINT_URL_STS',
  /** The container credentials endpoint, whole (EKS Pod Identity). */
  awsContainerFullUri: 'AWS_CONTAINER_CREDENTIALS_FULL_URI',
  /** The container credentials endpoint's path on 169.254.170.2 (ECS task roles). */
  awsContainerRelativeUri: 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
  /** The container endpoint's authorization token; `…_FILE` names a file holding it. */
  awsContainerToken: 'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  /** Another EC2 instance metadata endpoint. */
  awsMetadataEndpoint: 'AWS_EC2_METADATA_SERVICE_ENDPOINT',
  /** `true`: EC2 instance metadata is not tried. */
  awsMetadataDisabled: 'AWS_EC2_METADATA_DISABLED',
  /** Another Google metadata server, as host[:port]. */
  gcpMetadataHost: 'GCE_METADATA_HOST',
  /** A user-assigned managed identity's client id. */
  azureClientId: 'AZURE_CLIENT_ID',
  /** App Service's (and Container Apps') identity endpoint. */
  azureIdentityEndpoint: 'IDENTITY_ENDPOINT',
  /** The header App Service's identity endpoint expects. */
  azureIdentityHeader: 'IDENTITY_HEADER',
} as const

/** A credential function as the roots take it. */
type Source<T> = () => Promise<T>

/** A credential source and, for messages and the plugin's log, what it is (never a secret). */
export interface Credentials<T> {
  get: T | Source<T>
  /** `web identity (role …)`, `the environment`, `VAULT_TOKEN_FILE (re-read when it changes)`. */
  from: string
}

/** Options the CLI passes to every provider. */
interface Transport {
  plainHttpHosts?: string[]
}

const env = (name: string): string | undefined => (process.env[name] === '' ? undefined : process.env[name])

/**
 * A metadata source reached only because nothing else was configured (the clouds' own default
 * order ends with it): asked once now, briefly, so a machine off that cloud gets a usage error
 * naming what to set, not a root-key error at its first call.
 */
async function probed<T>(source: Source<T>, missing: string): Promise<Source<T>> {
  try {
    await source()
  } catch (error) {
    const why = isKmsProxyError(error) ? error.message : 'error'
    throw usage(`${missing} (${why})`)
  }
  return source
}

/** A probe's transport: the clouds' SDKs give a metadata server 1 s and one try in their default chains. */
const PROBE = { timeoutMs: 1_000, retries: 1 }

/** AWS credentials (an `aws-kms` root's, a `dynamodb` store's): `config`'s source, else AWS's default order. `who` starts usage messages. */
export async function awsCredentials(config: AwsCredentialsConfig | undefined, region: string, transport: Transport, who = 'AWS KMS'): Promise<Credentials<AwsCredentials>> {
  const source = config?.source ?? awsDefaultSource(who)
  switch (source) {
    case 'env': {
      const accessKeyId = env('AWS_ACCESS_KEY_ID')
      const secretAccessKey = env('AWS_SECRET_ACCESS_KEY')
      if (!accessKeyId || !secretAccessKey) throw usage(`${who}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment`)
      const sessionToken = env('AWS_SESSION_TOKEN')
      return { get: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) }, from: 'the environment (static keys)' }
    }
    case 'web-identity': {
      const c = config?.source === 'web-identity' ? config : undefined
      const roleArn = c?.roleArn ?? env(CREDENTIAL_ENV.awsRoleArn)
      const tokenFile = c?.tokenFile ?? env(CREDENTIAL_ENV.awsWebIdentityTokenFile)
      if (!roleArn || !tokenFile) throw usage(`AWS web identity: set ${CREDENTIAL_ENV.awsWebIdentityTokenFile} and ${CREDENTIAL_ENV.awsRoleArn} (or "tokenFile" and "roleArn" in the config's credentials)`)
      const roleSessionName = c?.roleSessionName ?? env(CREDENTIAL_ENV.awsRoleSessionName)
      const endpoint = c?.stsEndpoint ?? env(CREDENTIAL_ENV.awsStsEndpoint)
      return {
        // Read at every refresh: Kubernetes replaces the projected token before it expires.
        get: awsWebIdentityCredentials({
          roleArn,
          webIdentityToken: () => readFile(tokenFile, 'utf8'),
          region: c?.stsRegion ?? region,
          ...(roleSessionName ? { roleSessionName } : {}),
          ...(c?.durationSeconds ? { durationSeconds: c.durationSeconds } : {}),
          ...(endpoint ? { endpoint } : {}),
          ...transport,
        }),
        from: `web identity (AssumeRoleWithWebIdentity as ${roleArn}, token read from ${tokenFile} at each refresh)`,
      }
    }
    case 'container': {
      const full = env(CREDENTIAL_ENV.awsContainerFullUri)
      const relative = env(CREDENTIAL_ENV.awsContainerRelativeUri)
      if (!full && !relative) throw usage(`AWS container credentials: set ${CREDENTIAL_ENV.awsContainerFullUri} or ${CREDENTIAL_ENV.awsContainerRelativeUri}`)
      return {
        // The relative URI wins when both are set, as in AWS's SDKs (the provider's rule).
        get: awsContainerCredentials({ ...(relative ? { relativeUri: relative } : {}), ...(full ? { fullUri: full } : {}), ...(await containerToken()), ...transport }),
        from: `the container credentials endpoint (${relative ? CREDENTIAL_ENV.awsContainerRelativeUri : CREDENTIAL_ENV.awsContainerFullUri})`,
      }
    }
    case 'instance': {
      const endpoint = (config?.source === 'instance' ? config.endpoint : undefined) ?? env(CREDENTIAL_ENV.awsMetadataEndpoint)
      const options = { ...(endpoint ? { endpoint } : {}), ...transport }
      if (config) return { get: awsInstanceCredentials(options), from: 'EC2 instance metadata (IMDSv2)' }
      const get = await probed(
        awsInstanceCredentials({ ...options, ...PROBE }),
        `${who}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ${CREDENTIAL_ENV.awsWebIdentityTokenFile} and ${CREDENTIAL_ENV.awsRoleArn}, or ${CREDENTIAL_ENV.awsContainerFullUri}; EC2 instance metadata, tried last, gave none`,
      )
      return { get, from: 'EC2 instance metadata (IMDSv2)' }
    }
  }
}

/**
 * The container endpoint's authorization token: `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (EKS Pod
 * Identity rotates it; re-read when it changes) over `AWS_CONTAINER_AUTHORIZATION_TOKEN`, as AWS's SDKs.
 */
async function containerToken(): Promise<{ authorizationToken?: string | FileSecret }> {
  const name = CREDENTIAL_ENV.awsContainerToken
  if (env(`${name}_FILE`)) return { authorizationToken: await envFileSecret(`${name}_FILE`) }
  const token = env(name)
  return token ? { authorizationToken: token } : {}
}

/** AWS's default order (its SDKs' credential chain), from what the environment sets. */
function awsDefaultSource(who: string): AwsCredentialsConfig['source'] {
  if (env('AWS_ACCESS_KEY_ID') || env('AWS_SECRET_ACCESS_KEY')) return 'env'
  if (env(CREDENTIAL_ENV.awsWebIdentityTokenFile)) return 'web-identity'
  if (env(CREDENTIAL_ENV.awsContainerFullUri) || env(CREDENTIAL_ENV.awsContainerRelativeUri)) return 'container'
  if (env(CREDENTIAL_ENV.awsMetadataDisabled)?.toLowerCase() === 'true') {
    throw usage(`${who}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ${CREDENTIAL_ENV.awsWebIdentityTokenFile} and ${CREDENTIAL_ENV.awsRoleArn}, or ${CREDENTIAL_ENV.awsContainerFullUri} (EC2 instance metadata is disabled by ${CREDENTIAL_ENV.awsMetadataDisabled})`)
  }
  return 'instance'
}

/** A token from `NAME` or `NAME_FILE`, for the sources whose default is the environment. */
async function tokenFromEnv(name: string): Promise<Credentials<string> | undefined> {
  const token = await envSecret(name)
  if (token === undefined) return undefined
  return typeof token === 'string' ? { get: token, from: `${name}` } : { get: token, from: `${name}_FILE (re-read when it changes)` }
}

/** A token the environment must hold (`NAME` or `NAME_FILE`): Vault, the PKCS#11 bridge. */
export async function requiredToken(name: string, who: string): Promise<Credentials<string>> {
  const token = await tokenFromEnv(name)
  if (!token) throw usage(`${who}: set ${name} (or ${name}_FILE) in the environment`)
  return token
}

/** The `gcp` root's access token: `config`'s source, else `GCP_ACCESS_TOKEN(_FILE)`, else the metadata server. */
export async function gcpToken(config: GcpCredentialsConfig | undefined, transport: Transport): Promise<Credentials<string>> {
  if (config?.source === 'env') return requiredToken('GCP_ACCESS_TOKEN', 'Google Cloud KMS')
  if (!config) {
    const token = await tokenFromEnv('GCP_ACCESS_TOKEN')
    if (token) return token
  }
  const host = env(CREDENTIAL_ENV.gcpMetadataHost)
  const endpoint = config?.endpoint ?? (host ? `http://${host}` : undefined)
  const options = { ...(endpoint ? { endpoint } : {}), ...(config?.scopes ? { scopes: config.scopes } : {}), ...transport }
  const from = 'the metadata server (service account token)'
  if (config) return { get: gcpMetadataToken(options), from }
  return { get: await probed(gcpMetadataToken({ ...options, ...PROBE }), 'Google Cloud KMS: no access token: set GCP_ACCESS_TOKEN (or GCP_ACCESS_TOKEN_FILE); the metadata server, tried last, gave none'), from }
}

/** The `azure` root's access token: `config`'s source, else `AZURE_ACCESS_TOKEN(_FILE)`, else managed identity. */
export async function azureToken(config: AzureCredentialsConfig | undefined, transport: Transport): Promise<Credentials<string>> {
  if (config?.source === 'env') return requiredToken('AZURE_ACCESS_TOKEN', 'Azure Key Vault')
  if (!config) {
    const token = await tokenFromEnv('AZURE_ACCESS_TOKEN')
    if (token) return token
  }
  const clientId = config?.clientId ?? env(CREDENTIAL_ENV.azureClientId)
  // App Service, Functions and Container Apps set both; elsewhere the instance metadata service.
  const identityEndpoint = env(CREDENTIAL_ENV.azureIdentityEndpoint)
  const identityHeader = env(CREDENTIAL_ENV.azureIdentityHeader)
  const appService = identityEndpoint && identityHeader && !config?.endpoint ? { identityEndpoint, identityHeader } : {}
  const options = { ...(config?.endpoint ? { endpoint: config.endpoint } : {}), ...appService, ...(clientId ? { clientId } : {}), ...transport }
  const from = `managed identity${clientId ? ` (client id ${clientId})` : ''}`
  if (config) return { get: azureManagedIdentityToken(options), from }
  return { get: await probed(azureManagedIdentityToken({ ...options, ...PROBE }), 'Azure Key Vault: no access token: set AZURE_ACCESS_TOKEN (or AZURE_ACCESS_TOKEN_FILE); managed identity, tried last, gave none'), from }
}

/** Checks a root's `credentials` field; returns the problem, or undefined. */
export function credentialsProblem(type: string, c: unknown): string | undefined {
  if (c === undefined) return undefined
  if (!c || typeof c !== 'object') return 'must be an object with a "source"'
  const o = c as Record<string, unknown>
  const strings = (...names: string[]) => names.every((n) => o[n] === undefined || (typeof o[n] === 'string' && o[n] !== ''))
  const only = (...names: string[]) => Object.keys(o).every((k) => k === 'source' || names.includes(k))
  const sources: Record<string, Record<string, () => boolean>> = {
    'aws-kms': {
      env: () => only(),
      'web-identity': () =>
        only('roleArn', 'roleSessionName', 'tokenFile', 'stsEndpoint', 'stsRegion', 'durationSeconds') &&
        strings('roleArn', 'roleSessionName', 'tokenFile', 'stsEndpoint', 'stsRegion') &&
        (o.durationSeconds === undefined || (Number.isSafeInteger(o.durationSeconds) && (o.durationSeconds as number) > 0)),
      container: () => only(),
      instance: () => only('endpoint') && strings('endpoint'),
    },
    gcp: { env: () => only(), metadata: () => only('endpoint', 'scopes') && strings('endpoint') && (o.scopes === undefined || (Array.isArray(o.scopes) && o.scopes.length > 0 && o.scopes.every((s) => typeof s === 'string' && s !== ''))) },
    azure: { env: () => only(), 'managed-identity': () => only('endpoint', 'clientId') && strings('endpoint', 'clientId') },
  }
  const known = sources[type]
  if (!known) return `is not taken by a ${type} root key (its secret comes from the environment)`
  const check = typeof o.source === 'string' && Object.hasOwn(known, o.source) ? known[o.source] : undefined
  if (!check) return `"source" must be one of ${Object.keys(known).join(', ')}`
  return check() ? undefined : `has a field that source "${String(o.source)}" does not take, or a bad value`
}

/**
 * The URLs of a root's `credentials` field that the CLI checks by the transport rule, before
 * anything is sent: STS's. A metadata endpoint is checked by its provider, which also allows its
 * own link-local host over plain http (169.254.169.254 is not loopback, and has no https).
 */
export function credentialUrls(c: unknown): Array<[string, string]> {
  const o = (c ?? {}) as Record<string, unknown>
  const urls: Array<[string, string]> = []
  if (typeof o.stsEndpoint === 'string') urls.push(['credentials.stsEndpoint', o.stsEndpoint])
  return urls
}
