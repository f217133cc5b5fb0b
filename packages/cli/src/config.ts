/**
 * The config file: which chain, which store, which root key. It holds no secret: passphrases,
 * tokens and credentials come from the environment (or a prompt) each time a command runs.
 */
import { constants } from 'node:fs'
import { access, open, stat } from 'node:fs/promises'
import { dirname, isAbsolute, join, relative, resolve } from 'node:path'
import process from 'node:process'
import { DEFAULT_ROOT, KeyChain, RootKeyError, StoreError, checkServerUrl, isKmsProxyError, isLoopbackHost, kekAad, type ChainHead, type KeyChainOptions, type KeyStore, type RootKey, type Versioned } from '@kms-proxy/core'
import { etcdStore } from '@kms-proxy/etcd'
import { fileStore } from '@kms-proxy/file'
import { awsKmsRootKey, azureKeyVaultRootKey, gcpKmsRootKey, vaultTransitRootKey } from '@kms-proxy/kms'
import { DEFAULT_ITERATIONS, passphraseRootKey } from '@kms-proxy/passphrase'
import { pkcs11BridgeRootKey } from '@kms-proxy/pkcs11'
import { awsCredentials, azureToken, credentialUrls, credentialsProblem, gcpToken, requiredToken, type AwsCredentialsConfig, type AzureCredentialsConfig, type GcpCredentialsConfig } from './credentials.js'
import { CliError, EXIT } from './exit.js'
import { passphraseWeakness, readSecret } from './prompt.js'
import { envSecret } from './secret-file.js'

/** The `format` every config file names; another value is refused. */
export const CONFIG_FORMAT = 'kms-proxy-cli/v1'
export const DEFAULT_CONFIG = 'kms-proxy.json'
export const DEFAULT_STORE_FILE = 'kms-proxy-keys.json'
/** The library's staleness bound (KeyChainOptions.maxStalenessMs), when the config sets none. */
export const DEFAULT_MAX_STALENESS_MS = 15_000
/** The library's grace period before a destroy (KeyChainOptions.destroyGraceMs), when the config sets none. */
export const DEFAULT_DESTROY_GRACE_MS = 7 * 86_400_000

/**
 * The config's store: a file store, an etcd store (its password from `KMS_PROXY_ETCD_PASSWORD`),
 * a DynamoDB table (AWS credentials as for an `aws-kms` root) or a PostgreSQL database (its URL
 * from `KMS_PROXY_POSTGRES_URL`).
 */
export type StoreConfig =
  | {
      /** `fileStore`. */
      type: 'file'
      /** The store file, relative to the config file's folder unless absolute. */
      path: string
    }
  | {
      /** `etcdStore`. */
      type: 'etcd'
      /** Client URLs of the cluster members. */
      endpoints: string[]
      /** Key prefix (the store's default: `'kms-proxy/'`). */
      prefix?: string
      /** etcd user; the password comes from the environment. */
      username?: string
    }
  | {
      /** `dynamoDbStore`. */
      type: 'dynamodb'
      /** The table (partition key `pk`, sort key `sk`, both strings). */
      table: string
      /** The table's AWS region. */
      region: string
      /** Another endpoint than `https://dynamodb.<region>.amazonaws.com` (a VPC endpoint, a local emulator). */
      endpoint?: string
      /** Key prefix, so that several apps share one table. */
      prefix?: string
      /** Where the AWS credentials come from, as for an `aws-kms` root; default: AWS's own order. */
      credentials?: AwsCredentialsConfig
    }
  | {
      /** `postgresStore`; the connection URL comes from `KMS_PROXY_POSTGRES_URL` (it may hold a password). */
      type: 'postgres'
      /** The tables' name prefix (the store's default: `kms_proxy`). */
      table?: string
    }

/** The config's root key; every secret comes from the environment ({@link SECRET_ENV}) or a prompt. */
export type RootKeyConfig =
  | {
      /** `passphraseRootKey`. */
      type: 'passphrase'
      /** The KDF for new KEKs (the root's default: PBKDF2). */
      kdf?: 'pbkdf2' | 'scrypt' | 'argon2id'
      /** PBKDF2 iterations; below 600,000 only with `KMS_PROXY_ALLOW_WEAK_KDF=1`. */
      iterations?: number
    }
  | {
      /** `awsKmsRootKey`. */
      type: 'aws-kms'
      /** Key id, ARN or alias. */
      keyId: string
      /** The key's region. */
      region: string
      /** Another KMS endpoint. */
      endpoint?: string
      /** Where the credentials come from (default: AWS's order, from the environment). */
      credentials?: AwsCredentialsConfig
    }
  | {
      /** `vaultTransitRootKey`. */
      type: 'vault'
      /** Vault's address. */
      address: string
      /** The transit key's name. */
      key: string
      /** Where transit is mounted (default `'transit'`). */
      mount?: string
      /** Vault Enterprise / HCP namespace. */
      namespace?: string
    }
  | {
      /** `gcpKmsRootKey`. */
      type: 'gcp'
      /** `projects/…/locations/…/keyRings/…/cryptoKeys/…`. */
      keyName: string
      /** Another Cloud KMS endpoint. */
      endpoint?: string
      /** Where the access token comes from (default: `GCP_ACCESS_TOKEN(_FILE)`, else the metadata server). */
      credentials?: GcpCredentialsConfig
    }
  | {
      /** `azureKeyVaultRootKey`. */
      type: 'azure'
      /** The vault's URL. */
      vaultUrl: string
      /** The RSA key's name. */
      keyName: string
      /** The key version for new KEKs (default: the current one). */
      keyVersion?: string
      /** Where the access token comes from (default: `AZURE_ACCESS_TOKEN(_FILE)`, else managed identity). */
      credentials?: AzureCredentialsConfig
    }
  | {
      /** `pkcs11BridgeRootKey`. */
      type: 'pkcs11'
      /** The bridge's URL. */
      url: string
    }

/** One root of a config that names several (`roots`): its name in the chain, and the root key. */
export type NamedRootKeyConfig = RootKeyConfig & {
  /** The root's name in the chain: 1 to 64 letters, digits, `.`, `_`, `-`. */
  name: string
}

/**
 * A root change that `kms-proxy root` began and has not finished: written into the config
 * before the store changes, removed when the config names the result. Running the same command
 * again finishes it; another root command is refused meanwhile.
 */
export interface PendingRootChange {
  /** Which command. */
  op: 'change' | 'add' | 'remove'
  /** The root added (`change`, `add`) or removed (`remove`). */
  name: string
  /** The root a `change` replaces. */
  from?: string
  /** The root key added (`change`, `add`). */
  rootKey?: RootKeyConfig
}

/**
 * A `kms-proxy.json` as `kms-proxy init` writes it. It holds no secret. It names one root key
 * (`rootKey`, the chain's only root whatever its name in the chain) or several by name (`roots`,
 * as `kms-proxy root add` writes it): exactly one of the two.
 *
 * @example
 * ```json
 * { "format": "kms-proxy-cli/v1", "chain": "default",
 *   "store": { "type": "file", "path": "kms-proxy-keys.json" },
 *   "rootKey": { "type": "passphrase" } }
 * ```
 */
export interface CliConfig {
  /** Always {@link CONFIG_FORMAT}. */
  format: typeof CONFIG_FORMAT
  /** The chain name. */
  chain: string
  /** Where the wrapped KEKs and the head live. */
  store: StoreConfig
  /** What wraps the KEKs: the chain's only root. */
  rootKey?: RootKeyConfig
  /** The chain's roots by name, in the order an unlock tries them (instead of `rootKey`). */
  roots?: NamedRootKeyConfig[]
  /** A `kms-proxy root` command that has not finished: run it again. */
  rootChange?: PendingRootChange
  /** Rotation policy shared by every process on this chain. */
  maxWrapsPerKek?: number
  /** The primary KEK's age limit (ms); the library's default is 7 days. */
  maxKekAgeMs?: number
  /**
   * The longest a process on this chain goes without reading the chain head before it encrypts
   * or decrypts (ms; the library's default, 15 s): a rotation or a retirement made anywhere is
   * seen everywhere within it.
   */
  maxStalenessMs?: number
  /**
   * How long a KEK, or the chain, must have been retired before `kms-proxy destroy` deletes it
   * (ms; the library's default, 7 days). At least `maxStalenessMs`, so that every process has
   * seen the retirement first.
   */
  destroyGraceMs?: number
  /**
   * Hosts that may be reached over plain `http:` although they are not loopback (the explicit
   * opt-in); passed on to the store and root key.
   */
  plainHttpHosts?: string[]
}

/** Environment variables that carry secrets, by root key or store type. Documented in the README. */
export const SECRET_ENV = {
  /** The passphrase (else a prompt on the terminal); with several roots, the first passphrase root's. */
  passphrase: 'KMS_PROXY_PASSPHRASE',
  /** The passphrase of the root a `kms-proxy root change` or `root add` adds (else typed twice on the terminal). */
  newPassphrase: 'KMS_PROXY_NEW_PASSPHRASE',
  /** AWS access key id. */
  awsAccessKeyId: 'AWS_ACCESS_KEY_ID',
  /** AWS secret access key. */
  awsSecretAccessKey: 'AWS_SECRET_ACCESS_KEY',
  /** AWS session token, for temporary credentials. */
  awsSessionToken: 'AWS_SESSION_TOKEN',
  /** Vault token. */
  vaultToken: 'VAULT_TOKEN',
  /** Google OAuth 2.0 access token. */
  gcpAccessToken: 'GCP_ACCESS_TOKEN',
  /** Microsoft Entra access token. */
  azureAccessToken: 'AZURE_ACCESS_TOKEN',
  /** The PKCS#11 bridge's bearer token. */
  pkcs11Token: 'KMS_PROXY_PKCS11_TOKEN',
  /** The etcd user's password. */
  etcdPassword: 'KMS_PROXY_ETCD_PASSWORD',
  /** The PostgreSQL connection URL (`postgres://user:password@host:5432/db?sslmode=require`). */
  postgresUrl: 'KMS_PROXY_POSTGRES_URL',
} as const

/** The environment's opt-in to a KDF below the floor (for tests); a config file cannot set it. */
export const WEAK_KDF_ENV = 'KMS_PROXY_ALLOW_WEAK_KDF'

/** The config a command uses: `--config`, else `$KMS_PROXY_CONFIG`, else `./kms-proxy.json`. */
export function configPath(explicit: string | undefined): string {
  return resolveConfig(explicit).path
}

/** Which config, and whether the user named it (`--config`, `$KMS_PROXY_CONFIG`) or it was found in the working folder. */
export function resolveConfig(explicit: string | undefined): { path: string; implicit: boolean } {
  const named = explicit ?? process.env.KMS_PROXY_CONFIG
  return { path: resolve(named ?? DEFAULT_CONFIG), implicit: named === undefined }
}

const bad = (path: string, what: string) => new CliError(EXIT.MISSING, `config ${path}: ${what}`)

/** A folder on a read-only mount (a Kubernetes ConfigMap volume is 0777 but mounted read-only): nobody can replace its files. */
const readOnly = (folder: string): Promise<boolean> => access(folder, constants.W_OK).then(() => false, (error: { code?: string }) => error.code === 'EROFS')

/**
 * A config decides where the environment's credentials go and which keys protect the data, so
 * only a file the invoking user (or root) controls is read: owned by them, not writable by
 * group or others, in a folder others cannot replace it in. Checked on the open file, so a
 * swap after the check reads as the swapped file's owner. Skipped where the platform has no
 * POSIX owners (Windows).
 */
async function readTrusted(path: string): Promise<string> {
  let handle
  try {
    handle = await open(path, 'r')
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code === 'ENOENT') throw new CliError(EXIT.MISSING, `no config at ${path}: run \`kms-proxy init\` first, or pass --config PATH (or set KMS_PROXY_CONFIG)`)
    throw new CliError(EXIT.MISSING, `cannot read the config ${path} (${code ?? 'error'})`)
  }
  try {
    const me = typeof process.geteuid === 'function' ? process.geteuid() : undefined
    if (me !== undefined) {
      const s = await handle.stat()
      if (s.uid !== me && s.uid !== 0) throw bad(path, `owned by uid ${s.uid}, not by you (uid ${me}) or root`)
      if ((s.mode & 0o022) !== 0) throw bad(path, `writable by other users (mode ${(s.mode & 0o777).toString(8)}): chmod go-w it`)
      const folder = dirname(path)
      const d = await stat(folder)
      if ((d.mode & 0o002) !== 0 && (d.mode & 0o1000) === 0 && !(await readOnly(folder))) {
        throw bad(path, `its folder ${folder} is writable by everyone without the sticky bit, so anyone may replace the file`)
      }
    }
    return await handle.readFile('utf8')
  } catch (error) {
    if (error instanceof CliError) throw error
    throw new CliError(EXIT.MISSING, `cannot read the config ${path} (${(error as { code?: string }).code ?? 'error'})`)
  } finally {
    await handle.close()
  }
}

/** Every URL of a config that receives a request, named as in the file. */
function serverUrls(c: CliConfig): Array<[field: string, url: string]> {
  const urls: Array<[string, string]> = c.store.type === 'etcd' ? c.store.endpoints.map((e, i) => [`store.endpoints[${i}]`, e]) : []
  if (c.store.type === 'dynamodb') {
    if (c.store.endpoint !== undefined) urls.push(['store.endpoint', c.store.endpoint])
    for (const [name, url] of credentialUrls(c.store.credentials)) urls.push([`store.credentials.${name}`, url])
  }
  const pending = c.rootChange?.rootKey ? [{ field: 'rootChange.rootKey', root: c.rootChange.rootKey }] : []
  for (const { field, root: r } of [...configRoots(c), ...pending]) {
    if ((r.type === 'aws-kms' || r.type === 'gcp') && r.endpoint !== undefined) urls.push([`${field}.endpoint`, r.endpoint])
    if ('credentials' in r) for (const [name, url] of credentialUrls(r.credentials)) urls.push([`${field}.${name}`, url])
    if (r.type === 'vault') urls.push([`${field}.address`, r.address])
    if (r.type === 'azure') urls.push([`${field}.vaultUrl`, r.vaultUrl])
    if (r.type === 'pkcs11') urls.push([`${field}.url`, r.url])
  }
  return urls
}

/** One root of a config: its name (none for `rootKey`: the chain's only root), its config, its field in the file. */
export interface ConfiguredRoot {
  name: string | undefined
  root: RootKeyConfig
  field: string
}

/** The config's roots: `rootKey` alone, or each of `roots`. */
export function configRoots(c: CliConfig): ConfiguredRoot[] {
  if (c.roots) return c.roots.map(({ name, ...root }, i) => ({ name, root: root as RootKeyConfig, field: `roots[${i}]` }))
  return [{ name: undefined, root: c.rootKey!, field: 'rootKey' }]
}

/**
 * The transport rule of @kms-proxy/core (https:, or plain http: to loopback or to a host in
 * `plainHttpHosts`) applied to every URL before anything is sent, so a refused config fails at
 * once with the config's field named. Returns the problem, or undefined.
 */
export function urlProblem(c: CliConfig): string | undefined {
  for (const [field, url] of serverUrls(c)) {
    try {
      checkServerUrl(url, field, c.plainHttpHosts)
    } catch (error) {
      return (error as Error).message
    }
  }
  return undefined
}

/** The lowest PBKDF2 count below DEFAULT_ITERATIONS among a config's roots, if any. */
function weakestKdf(c: CliConfig): number | undefined {
  const weak = configRoots(c)
    .map(({ root }) => weakKdf(root))
    .filter((n) => n !== undefined)
  return weak.length > 0 ? Math.min(...weak) : undefined
}

/** PBKDF2 iterations below DEFAULT_ITERATIONS, unless the environment opts in (then a warning). */
export function weakKdf(r: RootKeyConfig): number | undefined {
  if (r.type !== 'passphrase' || (r.kdf ?? 'pbkdf2') !== 'pbkdf2') return undefined
  const iterations = r.iterations ?? DEFAULT_ITERATIONS
  return iterations < DEFAULT_ITERATIONS ? iterations : undefined
}

/** True when the environment accepts a weak KDF; prints the warning that says so. */
export function weakKdfAllowed(iterations: number): boolean {
  if (process.env[WEAK_KDF_ENV] !== '1') return false
  process.stderr.write(`kms-proxy: warning: ${WEAK_KDF_ENV}=1 accepts PBKDF2 with ${iterations} iterations (below ${DEFAULT_ITERATIONS.toLocaleString('en-US')})\n`)
  return true
}

/** The part of a config that reaches a network service (a config found implicitly may have none), or undefined. */
export function networkPart(c: CliConfig): string | undefined {
  if (c.store.type !== 'file') return `${c.store.type === 'etcd' ? 'an' : 'a'} ${c.store.type} store`
  const remote = [...configRoots(c).map((r) => r.root), ...(c.rootChange?.rootKey ? [c.rootChange.rootKey] : [])].find((r) => r.type !== 'passphrase')
  return remote ? `a ${remote.type} root key` : undefined
}

/** Options of {@link loadConfig}. */
export interface LoadOptions {
  /** Found in the working folder rather than named: then local only (file store, passphrase root), and named on stderr. */
  implicit?: boolean
}

function str(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0
}

/** A root's name in a chain, as core accepts it. */
export function validRootName(v: unknown): v is string {
  return typeof v === 'string' && /^[A-Za-z0-9._-]{1,64}$/.test(v)
}

function validRootKey(r: unknown): r is RootKeyConfig {
  if (!r || typeof r !== 'object') return false
  const k = r as RootKeyConfig
  return Boolean(
    (k.type === 'passphrase' && (k.kdf === undefined || ['pbkdf2', 'scrypt', 'argon2id'].includes(k.kdf)) && (k.iterations === undefined || (Number.isSafeInteger(k.iterations) && k.iterations > 0))) ||
      (k.type === 'aws-kms' && str(k.keyId) && str(k.region)) ||
      (k.type === 'vault' && str(k.address) && str(k.key)) ||
      (k.type === 'gcp' && str(k.keyName)) ||
      (k.type === 'azure' && str(k.vaultUrl) && str(k.keyName)) ||
      (k.type === 'pkcs11' && str(k.url)),
  )
}

/**
 * Reads and checks a config file: a file the user controls (readTrusted), well-formed, every
 * URL by the transport rule, the KDF at or above the library's default, and, when found
 * implicitly, one that reaches no network service. Any refusal is EXIT.MISSING (3), one line.
 *
 * @throws {@link CliError} - exit code 3 (`EXIT.MISSING`): no such file, a file others may
 *   change, not a config, a bad field, plain http to a host not listed, a weak KDF.
 */
export async function loadConfig(path: string, options: LoadOptions = {}): Promise<CliConfig> {
  const text = await readTrusted(path)
  let c: Partial<CliConfig>
  try {
    c = JSON.parse(text)
  } catch {
    throw bad(path, 'not valid JSON')
  }
  if (!c || typeof c !== 'object' || c.format !== CONFIG_FORMAT) throw bad(path, `not a kms-proxy config (expected "format": "${CONFIG_FORMAT}")`)
  if (!str(c.chain)) throw bad(path, '"chain" must be a non-empty string')
  const s = c.store as StoreConfig | undefined
  if (!s || !validStore(s)) {
    throw bad(path, '"store" must be { "type": "file", "path" }, { "type": "etcd", "endpoints": [...] }, { "type": "dynamodb", "table", "region" } or { "type": "postgres" }')
  }
  if (s.type === 'dynamodb') {
    const problem = credentialsProblem('aws-kms', s.credentials)
    if (problem) throw bad(path, `"store.credentials" ${problem}`)
  }
  if ((c.rootKey === undefined) === (c.roots === undefined)) throw bad(path, 'give "rootKey" (the chain\'s only root) or "roots" (several, by name), not both')
  if (c.rootKey !== undefined && !validRootKey(c.rootKey)) throw bad(path, '"rootKey" must name a type (passphrase, aws-kms, vault, gcp, azure, pkcs11) and its fields')
  if (c.roots !== undefined) {
    const names = new Set<string>()
    if (!Array.isArray(c.roots) || c.roots.length === 0) throw bad(path, '"roots" must be a list of { "name", "type", ... }')
    for (const [i, r] of c.roots.entries()) {
      if (!validRootKey(r)) throw bad(path, `"roots[${i}]" must name a type (passphrase, aws-kms, vault, gcp, azure, pkcs11) and its fields`)
      if (!validRootName(r.name) || names.has(r.name)) throw bad(path, `"roots[${i}].name" must be 1 to 64 letters, digits, ".", "_" or "-", and unique`)
      names.add(r.name)
    }
  }
  const p = c.rootChange
  if (
    p !== undefined &&
    !(
      p &&
      typeof p === 'object' &&
      ['change', 'add', 'remove'].includes(p.op) &&
      validRootName(p.name) &&
      (p.from === undefined || validRootName(p.from)) &&
      (p.op === 'remove' ? p.rootKey === undefined : validRootKey(p.rootKey)) &&
      (p.op === 'change') === (p.from !== undefined)
    )
  ) {
    throw bad(path, '"rootChange" is not one kms-proxy root wrote')
  }
  const pending = c.rootChange?.rootKey ? [{ field: 'rootChange.rootKey', root: c.rootChange.rootKey }] : []
  for (const { field, root } of [...configRoots(c as CliConfig), ...pending]) {
    const problem = credentialsProblem(root.type, (root as { credentials?: unknown }).credentials)
    if (problem) throw bad(path, `"${field}.credentials" ${problem}`)
  }
  if (c.maxWrapsPerKek !== undefined && !(Number.isSafeInteger(c.maxWrapsPerKek) && c.maxWrapsPerKek >= 1 && c.maxWrapsPerKek <= 2 ** 32)) {
    throw bad(path, '"maxWrapsPerKek" must be an integer from 1 to 2^32')
  }
  if (c.maxKekAgeMs !== undefined && !(typeof c.maxKekAgeMs === 'number' && c.maxKekAgeMs > 0)) throw bad(path, '"maxKekAgeMs" must be a positive number')
  if (c.maxStalenessMs !== undefined && !(Number.isSafeInteger(c.maxStalenessMs) && c.maxStalenessMs >= 0)) throw bad(path, '"maxStalenessMs" must be a whole number of milliseconds, 0 or more')
  if (c.destroyGraceMs !== undefined && !(Number.isSafeInteger(c.destroyGraceMs) && c.destroyGraceMs >= (c.maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS))) {
    throw bad(path, `"destroyGraceMs" must be a whole number of milliseconds, at least "maxStalenessMs" (${(c.maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS).toLocaleString('en-US')}), so that every process sees a retirement before a destroy`)
  }
  if (c.plainHttpHosts !== undefined && !(Array.isArray(c.plainHttpHosts) && c.plainHttpHosts.every(str))) throw bad(path, '"plainHttpHosts" must be a list of host names')
  const config = c as CliConfig
  const network = networkPart(config)
  if (options.implicit && network) {
    throw new CliError(
      EXIT.MISSING,
      `config ${path} was found in the working folder, and such a config may reach no network service (it names ${network}): pass --config ${relative(process.cwd(), path)} or set KMS_PROXY_CONFIG to use it`,
    )
  }
  const url = urlProblem(config)
  if (url) throw bad(path, url)
  const weak = weakestKdf(config)
  if (weak !== undefined && !weakKdfAllowed(weak)) {
    throw bad(path, `PBKDF2 with ${weak} iterations is below ${DEFAULT_ITERATIONS.toLocaleString('en-US')} (the passphrase package's default): raise "iterations" (existing KEKs stay readable) or set ${WEAK_KDF_ENV}=1`)
  }
  if (options.implicit) process.stderr.write(`kms-proxy: using ${path} found in the working folder (name a config with --config or KMS_PROXY_CONFIG)\n`)
  return config
}

/** A store config's fields, by type (credentials are checked with the roots'). */
function validStore(s: StoreConfig): boolean {
  const optional = (v: unknown) => v === undefined || str(v)
  switch (s.type) {
    case 'file':
      return str(s.path)
    case 'etcd':
      return Array.isArray(s.endpoints) && s.endpoints.length > 0 && s.endpoints.every(str) && optional(s.prefix) && optional(s.username)
    case 'dynamodb':
      return str(s.table) && str(s.region) && optional(s.endpoint) && optional(s.prefix)
    case 'postgres':
      return optional(s.table)
    default:
      return false
  }
}

/** A relative store path is relative to the config file's folder, so the pair can move together. */
export function storeFilePath(config: CliConfig, configFile: string): string | undefined {
  if (config.store.type !== 'file') return undefined
  return isAbsolute(config.store.path) ? config.store.path : join(dirname(configFile), config.store.path)
}

/** The config's plain-http opt-in, in the adapters' option name (spread, so an adapter without the option ignores it). */
const plainHttp = (hosts: string[] | undefined): { plainHttpHosts?: string[] } => (hosts ? { plainHttpHosts: hosts } : {})

/**
 * What is wrong with a PostgreSQL URL, or undefined. The transport rule of every other store:
 * without TLS (`sslmode=require`, `verify-ca`, `verify-full`) only to loopback or a host in
 * `plainHttpHosts`, since anyone on the path could read the records or answer in the server's
 * place. Never repeats the URL (it may hold a password).
 */
export function postgresUrlProblem(url: string, plainHosts: string[] | undefined): string | undefined {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return 'not a URL (expected postgres://user:password@host:5432/database)'
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') return 'expected a postgres:// or postgresql:// URL'
  const tls = ['require', 'verify-ca', 'verify-full'].includes(parsed.searchParams.get('sslmode') ?? '')
  const host = parsed.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  if (tls || isLoopbackHost(host) || plainHosts?.some((h) => h.toLowerCase() === host)) return undefined
  return `a connection to ${host} without TLS would expose the records and let anyone on the path answer: add ?sslmode=verify-full (or require), or name the host in plainHttpHosts`
}

/**
 * The config's store. A DynamoDB store's credentials come from their source (asked once now when
 * it is the default order's last, instance metadata), and `createTable` makes its table if it is
 * missing; a PostgreSQL store connects at its first query (and creates its tables if they are
 * missing), and the process's exit closes the connection.
 */
export async function openStore(config: CliConfig, configFile: string, options: { createTable?: boolean } = {}): Promise<KeyStore> {
  const s = config.store
  if (s.type === 'file') return fileStore(storeFilePath(config, configFile)!)
  if (s.type === 'dynamodb') {
    const optIn = plainHttp(config.plainHttpHosts)
    const credentials = await awsCredentials(s.credentials, s.region, optIn, 'DynamoDB')
    // Loaded when a config names it, as the PostgreSQL store and driver below: a command on a file store loads neither.
    const { createDynamoDbTable, dynamoDbStore } = await import('@kms-proxy/dynamodb')
    const connection = { table: s.table, region: s.region, credentials: credentials.get, ...(s.endpoint ? { endpoint: s.endpoint } : {}), ...optIn }
    // `init --dynamodb-create-table`: made if missing (on-demand capacity), then waited for until ACTIVE.
    if (options.createTable) await createDynamoDbTable(connection)
    return dynamoDbStore({ ...connection, ...(s.prefix ? { prefix: s.prefix } : {}) })
  }
  if (s.type === 'postgres') {
    const secret = await envSecret(SECRET_ENV.postgresUrl)
    const url = typeof secret === 'function' ? await secret() : secret
    if (!url) throw new CliError(EXIT.USAGE, `the postgres store: set ${SECRET_ENV.postgresUrl} (or ${SECRET_ENV.postgresUrl}_FILE) to the database's URL`)
    const problem = postgresUrlProblem(url, config.plainHttpHosts)
    if (problem) throw new CliError(EXIT.USAGE, `${SECRET_ENV.postgresUrl}: ${problem}`)
    // Nothing the server says in passing (a notice) belongs on the CLI's stdout, which carries data.
    const [{ postgresStore }, { default: postgres }] = await Promise.all([import('@kms-proxy/postgres'), import('postgres')])
    // No array-type lookup on each new connection: the store needs none, and the driver leaves
    // a reset of that lookup (a server going down) unhandled, which would end a long-running plugin.
    const sql = postgres(url, { onnotice: () => {}, max: 2, fetch_types: false })
    return postgresStore(sql, s.table ? { table: s.table } : {})
  }
  // From the file, re-read at each login when it changed: the password can rotate under a running plugin.
  const password = await envSecret(SECRET_ENV.etcdPassword)
  if (s.username && !password) throw new CliError(EXIT.USAGE, `the etcd store has a username: set ${SECRET_ENV.etcdPassword} (or ${SECRET_ENV.etcdPassword}_FILE)`)
  return etcdStore({ endpoints: s.endpoints, ...(s.prefix ? { prefix: s.prefix } : {}), ...(s.username ? { username: s.username, password } : {}), ...plainHttp(config.plainHttpHosts) })
}

/** A secret in the environment, directly or as `NAME_FILE`. */
const inEnv = (name: string) => process.env[name] !== undefined || process.env[`${name}_FILE`] !== undefined

/** Where each root key's credentials come from, for the plugin's log (never a secret). */
export const credentialSources = new WeakMap<RootKey, string>()

export interface RootKeyContext {
  /** A new chain's passphrase (`init`): typed twice on a terminal, and a weak one warned about. */
  confirm?: boolean
  /** The config's plainHttpHosts, passed on to a remote root key. */
  plainHttpHosts?: string[]
  /** Where a passphrase comes from (default {@link SECRET_ENV}.passphrase), and its prompt. */
  passphrase?: { env: string; label: string }
  /** The command that warns about a weak new passphrase (default `init`). */
  command?: string
}

/** `KMS_PROXY_PASSPHRASE_<NAME>`: the passphrase of the root named `name` in a config of several roots. */
export function namedPassphraseEnv(name: string): string {
  return `${SECRET_ENV.passphrase}_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`
}

/**
 * Where the passphrase of root `name` comes from: `KMS_PROXY_PASSPHRASE_<NAME>`, or for the
 * config's first passphrase root (the one a single-root config had) `KMS_PROXY_PASSPHRASE` too,
 * so that adding a root keeps the environment that worked before.
 */
function passphraseSource(config: CliConfig, name: string): { env: string; label: string } {
  const own = namedPassphraseEnv(name)
  const first = configRoots(config).find((r) => r.root.type === 'passphrase')?.name === name
  const env = !inEnv(own) && first && inEnv(SECRET_ENV.passphrase) ? SECRET_ENV.passphrase : own
  return { env, label: `Passphrase of root "${name}"` }
}

/** Options of {@link openRoots}. */
export interface OpenRootsOptions {
  /** Every root (a rotation wraps under each): a missing secret fails. Else those whose secrets are at hand, at least one. */
  all?: boolean
  /** Leave this root out (`root remove`: a lost root can go). */
  except?: string
  /** Never prompt: a passphrase root whose passphrase is not in the environment is left out. */
  noPrompt?: boolean
}

/**
 * The root keys of a config of several roots, by name. Unlocking needs any one root, so by
 * default a root whose secret is not in the environment is left out (a passphrase is asked on
 * the terminal only when no other root is at hand); `all` opens every one.
 *
 * @throws {@link CliError} - EXIT.USAGE: a secret missing (`all`), or no root at hand.
 */
export async function openRoots(config: CliConfig, options: OpenRootsOptions = {}): Promise<Map<string, RootKey>> {
  const held = new Map<string, RootKey>()
  const deferred: Array<{ name: string; root: RootKeyConfig; source: { env: string; label: string } }> = []
  const missing: string[] = []
  const context = (name: string) => ({ ...plainHttp(config.plainHttpHosts), passphrase: passphraseSource(config, name) })
  for (const { name, root } of configRoots(config)) {
    if (name === undefined || name === options.except) continue
    if (root.type === 'passphrase' && !inEnv(context(name).passphrase.env)) {
      deferred.push({ name, root, source: context(name).passphrase })
      continue
    }
    try {
      held.set(name, await openRootKey(root, context(name)))
    } catch (error) {
      if (options.all || !(error instanceof CliError) || error.exitCode !== EXIT.USAGE) throw error
      missing.push(`root "${name}": ${error.message}`)
    }
  }
  if (options.all) {
    for (const d of deferred) held.set(d.name, await openRootKey(d.root, context(d.name)))
    return held
  }
  if (held.size > 0 || options.noPrompt) return held
  const ask = deferred[0]
  if (ask && process.stdin.isTTY) {
    held.set(ask.name, await openRootKey(ask.root, context(ask.name)))
    return held
  }
  const reasons = [...deferred.map((d) => `root "${d.name}": set ${d.source.env}`), ...missing]
  throw new CliError(EXIT.USAGE, `no root of the chain is at hand (any one unlocks it): ${reasons.join('; ')}`)
}

/**
 * Unwraps the primary KEK that `head` names through the root key: one root-key call, and
 * nothing written (no use spent, no lease, never a rotation or a new KEK), so proving a root
 * key changes nothing in the store. A primary made by another kind of root key (a chain whose
 * root changed) is not sent to this one: it returns false, having made no call.
 *
 * @throws {@link RootKeyError} - `ERR_ROOT_KEY`: refused (a wrong passphrase), or unreachable (`retryable`).
 * @throws {@link StoreError} - `ERR_STORE`: the store failed, or the head names a KEK it does not have.
 */
export async function unlockPrimary(root: RootKey, store: KeyStore, chain: string, head: ChainHead, name?: string): Promise<boolean> {
  let record
  try {
    // A named root unwraps its own record of the KEK; the chain's only root, whichever there is.
    record =
      name !== undefined && typeof store.getKekWraps === 'function'
        ? ((await store.getKekWraps(chain, head.primary)).find((r) => (r.root ?? DEFAULT_ROOT) === name) ?? (await store.getKek(chain, head.primary)))
        : await store.getKek(chain, head.primary)
  } catch (error) {
    throw isKmsProxyError(error) ? error : new StoreError('the store failed to read a KEK', { cause: error, retryable: true })
  }
  if (!record) throw new StoreError('the chain head names a KEK that the store does not have')
  if (record.rootKind !== root.kind || (name !== undefined && (record.root ?? DEFAULT_ROOT) !== name)) return false
  try {
    await root.unwrapKek(record.wrapped, kekAad(chain, record.id))
  } catch (error) {
    throw isKmsProxyError(error) ? error : new RootKeyError('the root key failed to unwrap a KEK', { cause: error })
  }
  return true
}

/** Builds the root key; secrets come from the environment or, for a passphrase, a prompt on a TTY. */
export async function openRootKey(r: RootKeyConfig, context: RootKeyContext = {}): Promise<RootKey> {
  const optIn = plainHttp(context.plainHttpHosts)
  switch (r.type) {
    case 'passphrase': {
      const source = context.passphrase ?? { env: SECRET_ENV.passphrase, label: 'Passphrase' }
      const passphrase = await readSecret(source.env, source.label, context.confirm ?? false)
      const weak = context.confirm ? passphraseWeakness(passphrase) : undefined
      if (weak) {
        process.stderr.write(`kms-proxy ${context.command ?? 'init'}: warning: this passphrase ${weak}: 12 or more (not a well-known phrase) are advised, since anyone with a copy of the key file can guess at it offline\n`)
      }
      const root = passphraseRootKey({ passphrase, kdf: r.kdf ?? 'pbkdf2', ...(r.iterations ? { iterations: r.iterations } : {}) })
      // A wrong passphrase cannot make a KEK: the key chain proves its root before it wraps one.
      return root
    }
    case 'aws-kms': {
      const credentials = await awsCredentials(r.credentials, r.region, optIn)
      return sourced(awsKmsRootKey({ keyId: r.keyId, region: r.region, credentials: credentials.get, ...(r.endpoint ? { endpoint: r.endpoint } : {}), ...optIn }), `AWS credentials from ${credentials.from}`)
    }
    case 'vault': {
      const token = await requiredToken(SECRET_ENV.vaultToken, 'Vault')
      const root = vaultTransitRootKey({ address: r.address, key: r.key, token: token.get, ...(r.mount ? { mount: r.mount } : {}), ...(r.namespace ? { namespace: r.namespace } : {}), ...optIn })
      return sourced(root, `Vault token from ${token.from}`)
    }
    case 'gcp': {
      const token = await gcpToken(r.credentials, optIn)
      return sourced(gcpKmsRootKey({ keyName: r.keyName, accessToken: token.get, ...(r.endpoint ? { endpoint: r.endpoint } : {}), ...optIn }), `Google access token from ${token.from}`)
    }
    case 'azure': {
      const token = await azureToken(r.credentials, optIn)
      return sourced(azureKeyVaultRootKey({ vaultUrl: r.vaultUrl, keyName: r.keyName, accessToken: token.get, ...(r.keyVersion ? { keyVersion: r.keyVersion } : {}), ...optIn }), `Azure access token from ${token.from}`)
    }
    case 'pkcs11': {
      const token = await requiredToken(SECRET_ENV.pkcs11Token, 'the PKCS#11 bridge')
      return sourced(pkcs11BridgeRootKey({ url: r.url, token: token.get, ...optIn }), `PKCS#11 bridge token from ${token.from}`)
    }
  }
}

function sourced(root: RootKey, from: string): RootKey {
  credentialSources.set(root, from)
  return root
}

export interface OpenOptions extends LoadOptions {
  /** Uses of the primary KEK to reserve per store write (a command: what it needs). Default 1. */
  leaseSize?: number
  /** A long-running service (the k8s plugin): the chain's own defaults for the DEK pool and leases. */
  service?: boolean
  /** Every root of a config of several roots (a rotation wraps under each), not just those at hand. */
  allRoots?: boolean
}

/** The root keys a chain is opened with: the config's only root, or several by name. */
export type ChainRoots = { rootKey: RootKey } | { roots: Map<string, RootKey> }

/** Chain options: a command runs once, so no DEK pool and leases of what it needs. */
export function chainOptions(config: CliConfig, keys: ChainRoots, store: KeyStore, options: OpenOptions = {}): KeyChainOptions {
  return {
    name: config.chain,
    ...('rootKey' in keys ? { rootKey: keys.rootKey } : { roots: Object.fromEntries(keys.roots) }),
    store,
    // A command makes one DEK per file; uses reserved and not used count as spent, so reserve
    // only what the command needs and prepare nothing ahead.
    // A command ends in seconds: it reads the head when it opens, and needs no watch of it.
    ...(options.service ? {} : { dekPoolSize: 0, leaseSize: options.leaseSize ?? 1, watch: false }),
    ...(config.maxWrapsPerKek ? { maxWrapsPerKek: config.maxWrapsPerKek } : {}),
    ...(config.maxKekAgeMs ? { maxKekAgeMs: config.maxKekAgeMs } : {}),
    ...(config.maxStalenessMs !== undefined ? { maxStalenessMs: config.maxStalenessMs } : {}),
    ...(config.destroyGraceMs !== undefined ? { destroyGraceMs: config.destroyGraceMs } : {}),
  }
}

export interface OpenedChain {
  chain: KeyChain
  /** The chain's root key (the first held, with several), for callers that probe it (the Kubernetes plugin's health check). */
  rootKey: RootKey
  /** The roots held, by name, for a config of several roots. */
  roots?: Map<string, RootKey>
  config: CliConfig
  store: KeyStore
}

/** The chain's head, if any; EXIT.STORE if the store fails, whatever it throws (an unreachable etcd throws a plain Error). */
export function headOf(store: KeyStore, chain: string): Promise<Versioned<ChainHead> | undefined> {
  return store.getHead(chain).catch((error: unknown) => {
    throw new CliError(EXIT.STORE, `the store failed: ${(error as Error)?.message ?? 'error'}`)
  })
}

/** The chain's head (headOf); EXIT.MISSING if `init` never made the chain. */
export async function chainHead(store: KeyStore, chain: string): Promise<Versioned<ChainHead>> {
  const head = await headOf(store, chain)
  if (!head) {
    throw new CliError(
      EXIT.MISSING,
      `chain "${chain}" is not in the store: \`kms-proxy init\` makes it; if data was encrypted under it, restore the store from a backup instead (a new chain cannot read that data)`,
    )
  }
  return head
}

/**
 * A config whose key file is gone: the chain's wrapped KEKs went with it, so everything
 * encrypted under the chain is unreadable until the file is restored. `kms-proxy init` would
 * make a new chain, with new KEKs, that can never read those files: the message says so.
 */
export async function storeFileExists(storeFile: string, configFile: string, chain: string): Promise<void> {
  if (await stat(storeFile).then(() => true, () => false)) return
  throw new CliError(
    EXIT.MISSING,
    `the key file ${storeFile} named by ${configFile} is missing: restore it from a backup. What chain "${chain}" encrypted cannot be decrypted without it (\`kms-proxy init\` would make a new chain, which cannot read it either)`,
  )
}

/** Opens the chain a config describes and checks that `init` made it (EXIT.MISSING if not). */
export async function openConfigured(path: string, options: OpenOptions = {}): Promise<OpenedChain> {
  const config = await loadConfig(path, { implicit: options.implicit ?? false })
  const storeFile = storeFilePath(config, path)
  if (storeFile) await storeFileExists(storeFile, path, config.chain)
  const store = await openStore(config, path)
  await chainHead(store, config.chain)
  if (config.roots) {
    const roots = await openRoots(config, { all: options.allRoots ?? false })
    const chain = await KeyChain.open(chainOptions(config, { roots }, store, options))
    return { chain, rootKey: [...roots.values()][0]!, roots, config, store }
  }
  const rootKey = await openRootKey(config.rootKey!, plainHttp(config.plainHttpHosts))
  const chain = await KeyChain.open(chainOptions(config, { rootKey }, store, options))
  return { chain, rootKey, config, store }
}

/**
 * Opens the KeyChain that a `kms-proxy init` config describes, with the secrets from the
 * environment (or a passphrase prompt on a TTY). For programs that share the CLI's chain, such
 * as the Kubernetes KMS plugin. The config passes the same checks as the command's (loadConfig);
 * without `path`, `$KMS_PROXY_CONFIG`, else `./kms-proxy.json` found implicitly (local only).
 *
 * @throws {@link CliError} - a config missing or refused (exit code 3), or the chain not in the
 *   store (run `kms-proxy init`).
 * @throws {@link @kms-proxy/core!RootKeyError} - `ERR_ROOT_KEY`: the root key refused (a wrong
 *   passphrase) or was unreachable; {@link @kms-proxy/core!StoreError} `ERR_STORE`: the store failed.
 * @example
 * ```ts
 * const chain = await openChainFromConfig()      // $KMS_PROXY_CONFIG, else ./kms-proxy.json
 * const plaintext = await chain.decrypt(encryptedData)
 * ```
 */
export async function openChainFromConfig(path?: string): Promise<KeyChain> {
  const which = path === undefined ? resolveConfig(undefined) : { path: resolve(path), implicit: false }
  return (await openConfigured(which.path, { service: true, implicit: which.implicit })).chain
}
