/**
 * The config file: which chain, which store, which root key. It holds no secret: passphrases,
 * tokens and credentials come from the environment (or a prompt) each time a command runs.
 */
import { readFile, stat } from 'node:fs/promises'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import process from 'node:process'
import { KeyChain, kekAad, type KeyChainOptions, type KeyStore, type RootKey } from '@kms-proxy/core'
import { etcdStore } from '@kms-proxy/etcd'
import { fileStore } from '@kms-proxy/file'
import { awsKmsRootKey, azureKeyVaultRootKey, gcpKmsRootKey, vaultTransitRootKey } from '@kms-proxy/kms'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { pkcs11BridgeRootKey } from '@kms-proxy/pkcs11'
import { CliError, EXIT } from './exit.js'
import { readSecret } from './prompt.js'

export const CONFIG_FORMAT = 'kms-proxy-cli/v1'
export const DEFAULT_CONFIG = 'kms-proxy.json'
export const DEFAULT_STORE_FILE = 'kms-proxy-keys.json'

export type StoreConfig =
  | { type: 'file'; path: string }
  | { type: 'etcd'; endpoints: string[]; prefix?: string; username?: string }

export type RootKeyConfig =
  | { type: 'passphrase'; kdf?: 'pbkdf2' | 'scrypt' | 'argon2id'; iterations?: number }
  | { type: 'aws-kms'; keyId: string; region: string; endpoint?: string }
  | { type: 'vault'; address: string; key: string; mount?: string; namespace?: string }
  | { type: 'gcp'; keyName: string; endpoint?: string }
  | { type: 'azure'; vaultUrl: string; keyName: string; keyVersion?: string }
  | { type: 'pkcs11'; url: string }

export interface CliConfig {
  format: typeof CONFIG_FORMAT
  chain: string
  store: StoreConfig
  rootKey: RootKeyConfig
  /** Rotation policy shared by every process on this chain. */
  maxWrapsPerKek?: number
  maxKekAgeMs?: number
}

/** Environment variables that carry secrets, by root key or store type. Documented in the README. */
export const SECRET_ENV = {
  passphrase: 'KMS_PROXY_PASSPHRASE',
  awsAccessKeyId: 'AWS_ACCESS_KEY_ID',
  awsSecretAccessKey: 'AWS_SECRET_ACCESS_KEY',
  awsSessionToken: 'AWS_SESSION_TOKEN',
  vaultToken: 'VAULT_TOKEN',
  gcpAccessToken: 'GCP_ACCESS_TOKEN',
  azureAccessToken: 'AZURE_ACCESS_TOKEN',
  pkcs11Token: 'KMS_PROXY_PKCS11_TOKEN',
  etcdPassword: 'KMS_PROXY_ETCD_PASSWORD',
} as const

export function configPath(explicit: string | undefined): string {
  return resolve(explicit ?? process.env.KMS_PROXY_CONFIG ?? DEFAULT_CONFIG)
}

const bad = (path: string, what: string) => new CliError(EXIT.MISSING, `config ${path}: ${what}`)

function str(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0
}

/** Reads and checks a config file. A missing or unreadable file is EXIT.MISSING. */
export async function loadConfig(path: string): Promise<CliConfig> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code === 'ENOENT') throw new CliError(EXIT.MISSING, `no config at ${path}: run \`kms-proxy init\` first, or pass --config PATH (or set KMS_PROXY_CONFIG)`)
    throw new CliError(EXIT.MISSING, `cannot read the config ${path} (${code ?? 'error'})`)
  }
  let c: Partial<CliConfig>
  try {
    c = JSON.parse(text)
  } catch {
    throw bad(path, 'not valid JSON')
  }
  if (!c || typeof c !== 'object' || c.format !== CONFIG_FORMAT) throw bad(path, `not a kms-proxy config (expected "format": "${CONFIG_FORMAT}")`)
  if (!str(c.chain)) throw bad(path, '"chain" must be a non-empty string')
  const s = c.store as StoreConfig | undefined
  if (!s || (s.type === 'file' ? !str(s.path) : s.type === 'etcd' ? !Array.isArray(s.endpoints) || s.endpoints.length === 0 || !s.endpoints.every(str) : true)) {
    throw bad(path, '"store" must be { "type": "file", "path" } or { "type": "etcd", "endpoints": [...] }')
  }
  const r = c.rootKey as RootKeyConfig | undefined
  const ok =
    r &&
    ((r.type === 'passphrase') ||
      (r.type === 'aws-kms' && str(r.keyId) && str(r.region)) ||
      (r.type === 'vault' && str(r.address) && str(r.key)) ||
      (r.type === 'gcp' && str(r.keyName)) ||
      (r.type === 'azure' && str(r.vaultUrl) && str(r.keyName)) ||
      (r.type === 'pkcs11' && str(r.url)))
  if (!ok) throw bad(path, '"rootKey" must name a type (passphrase, aws-kms, vault, gcp, azure, pkcs11) and its fields')
  if (c.maxWrapsPerKek !== undefined && !(Number.isSafeInteger(c.maxWrapsPerKek) && c.maxWrapsPerKek >= 1 && c.maxWrapsPerKek <= 2 ** 32)) {
    throw bad(path, '"maxWrapsPerKek" must be an integer from 1 to 2^32')
  }
  if (c.maxKekAgeMs !== undefined && !(typeof c.maxKekAgeMs === 'number' && c.maxKekAgeMs > 0)) throw bad(path, '"maxKekAgeMs" must be a positive number')
  return c as CliConfig
}

/** A relative store path is relative to the config file's folder, so the pair can move together. */
export function storeFilePath(config: CliConfig, configFile: string): string | undefined {
  if (config.store.type !== 'file') return undefined
  return isAbsolute(config.store.path) ? config.store.path : join(dirname(configFile), config.store.path)
}

export function openStore(config: CliConfig, configFile: string): KeyStore {
  const s = config.store
  if (s.type === 'file') return fileStore(storeFilePath(config, configFile)!)
  const password = process.env[SECRET_ENV.etcdPassword]
  if (s.username && !password) throw new CliError(EXIT.USAGE, `the etcd store has a username: set ${SECRET_ENV.etcdPassword}`)
  return etcdStore({ endpoints: s.endpoints, ...(s.prefix ? { prefix: s.prefix } : {}), ...(s.username ? { username: s.username, password } : {}) })
}

function env(name: string, forWhat: string): string {
  const v = process.env[name]
  if (!v) throw new CliError(EXIT.USAGE, `${forWhat}: set ${name} in the environment`)
  return v
}

export interface RootKeyContext {
  /** Prompt twice (a new chain's passphrase). */
  confirm?: boolean
  /** The chain the root key is for: a passphrase is then proved before it makes a KEK. */
  store?: KeyStore
  chain?: string
}

/**
 * A passphrase root makes a KEK under any passphrase, right or wrong. A typo would then make the
 * chain's next primary KEK (at `rotate`, or at the first encryption once the primary is past its
 * age), and everything encrypted under it would open only with the typo. So before its first new
 * KEK this wrapper unwraps the chain's primary KEK (one root-key call, the KDF result cached);
 * a wrong passphrase fails there with ERR_ROOT_KEY and nothing is written.
 */
function provedBeforeNewKek(root: RootKey, store: KeyStore, chain: string): RootKey {
  let proof: Promise<void> | undefined
  const prove = async () => {
    const head = await store.getHead(chain)
    const primary = head && (await store.getKek(chain, head.value.primary))
    if (primary && primary.rootKind === root.kind) await root.unwrapKek(primary.wrapped, kekAad(chain, primary.id))
  }
  return {
    kind: root.kind,
    async newKek(aad) {
      await (proof ??= prove().catch((error: unknown) => {
        proof = undefined
        throw error
      }))
      return root.newKek(aad)
    },
    unwrapKek: (wrapped, aad) => root.unwrapKek(wrapped, aad),
    toString: () => String(root),
    toJSON: () => (root as { toJSON?: () => unknown }).toJSON?.() ?? { kind: root.kind },
  } as RootKey
}

/** Builds the root key; secrets come from the environment or, for a passphrase, a prompt on a TTY. */
export async function openRootKey(r: RootKeyConfig, context: RootKeyContext = {}): Promise<RootKey> {
  switch (r.type) {
    case 'passphrase': {
      const passphrase = await readSecret(SECRET_ENV.passphrase, 'Passphrase', context.confirm ?? false)
      const root = passphraseRootKey({ passphrase, kdf: r.kdf ?? 'pbkdf2', ...(r.iterations ? { iterations: r.iterations } : {}) })
      return context.store && context.chain !== undefined ? provedBeforeNewKek(root, context.store, context.chain) : root
    }
    case 'aws-kms': {
      const accessKeyId = env(SECRET_ENV.awsAccessKeyId, 'AWS KMS')
      const secretAccessKey = env(SECRET_ENV.awsSecretAccessKey, 'AWS KMS')
      const sessionToken = process.env[SECRET_ENV.awsSessionToken]
      return awsKmsRootKey({
        keyId: r.keyId,
        region: r.region,
        credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) },
        ...(r.endpoint ? { endpoint: r.endpoint } : {}),
      })
    }
    case 'vault':
      return vaultTransitRootKey({
        address: r.address,
        key: r.key,
        token: env(SECRET_ENV.vaultToken, 'Vault'),
        ...(r.mount ? { mount: r.mount } : {}),
        ...(r.namespace ? { namespace: r.namespace } : {}),
      })
    case 'gcp':
      return gcpKmsRootKey({ keyName: r.keyName, accessToken: env(SECRET_ENV.gcpAccessToken, 'Google Cloud KMS'), ...(r.endpoint ? { endpoint: r.endpoint } : {}) })
    case 'azure':
      return azureKeyVaultRootKey({
        vaultUrl: r.vaultUrl,
        keyName: r.keyName,
        accessToken: env(SECRET_ENV.azureAccessToken, 'Azure Key Vault'),
        ...(r.keyVersion ? { keyVersion: r.keyVersion } : {}),
      })
    case 'pkcs11':
      return pkcs11BridgeRootKey({ url: r.url, token: env(SECRET_ENV.pkcs11Token, 'the PKCS#11 bridge') })
  }
}

export interface OpenOptions {
  /** Uses of the primary KEK to reserve per store write (a command: what it needs). Default 1. */
  leaseSize?: number
  /** A long-running service (the k8s plugin): the chain's own defaults for the DEK pool and leases. */
  service?: boolean
}

/** Chain options: a command runs once, so no DEK pool and leases of what it needs. */
export function chainOptions(config: CliConfig, rootKey: RootKey, store: KeyStore, options: OpenOptions = {}): KeyChainOptions {
  return {
    name: config.chain,
    rootKey,
    store,
    // A command makes one DEK per file; uses reserved and not used count as spent, so reserve
    // only what the command needs and prepare nothing ahead.
    ...(options.service ? {} : { dekPoolSize: 0, leaseSize: options.leaseSize ?? 1 }),
    ...(config.maxWrapsPerKek ? { maxWrapsPerKek: config.maxWrapsPerKek } : {}),
    ...(config.maxKekAgeMs ? { maxKekAgeMs: config.maxKekAgeMs } : {}),
  }
}

export interface OpenedChain {
  chain: KeyChain
  /** The chain's root key, for callers that probe it (the Kubernetes plugin's health check). */
  rootKey: RootKey
  config: CliConfig
  store: KeyStore
}

/** Opens the chain a config describes and checks that `init` made it (EXIT.MISSING if not). */
export async function openConfigured(path: string, options: OpenOptions = {}): Promise<OpenedChain> {
  const config = await loadConfig(path)
  const storeFile = storeFilePath(config, path)
  if (storeFile) {
    const exists = await stat(storeFile).then(() => true, () => false)
    if (!exists) throw new CliError(EXIT.MISSING, `the store file ${storeFile} named by ${path} does not exist: run \`kms-proxy init\``)
  }
  const store = openStore(config, path)
  const head = await store.getHead(config.chain).catch((error: unknown) => {
    throw new CliError(EXIT.STORE, `the store failed: ${(error as Error)?.message ?? 'error'}`)
  })
  if (!head) throw new CliError(EXIT.MISSING, `chain "${config.chain}" is not in the store: run \`kms-proxy init\``)
  const rootKey = await openRootKey(config.rootKey, { store, chain: config.chain })
  const chain = await KeyChain.open(chainOptions(config, rootKey, store, options))
  return { chain, rootKey, config, store }
}

/**
 * Opens the KeyChain that a `kms-proxy init` config describes, with the secrets from the
 * environment (or a passphrase prompt on a TTY). For programs that share the CLI's chain, such
 * as the Kubernetes KMS plugin.
 */
export async function openChainFromConfig(path: string = configPath(undefined)): Promise<KeyChain> {
  return (await openConfigured(resolve(path), { service: true })).chain
}
