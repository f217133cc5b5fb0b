/** The commands. Each takes its own arguments and returns an exit code; errors go to explain(). */
import { lstat, open, readdir, readFile, stat, unlink } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import process from 'node:process'
import { parseArgs } from 'node:util'
import { DEFAULT_ROOT, FORMAT_VERSION, KeyChain, LimitError, kekAad, type ChainHead, type ChainRoot, type KekRecord, type KeyStore, type RootChangeReport, type RootKey } from '@kms-proxy/core'
import { DEFAULT_ITERATIONS } from '@kms-proxy/passphrase'
import {
  CONFIG_FORMAT,
  DEFAULT_DESTROY_GRACE_MS,
  DEFAULT_MAX_STALENESS_MS,
  DEFAULT_STORE_FILE,
  chainOptions,
  configRoots,
  credentialSources,
  namedPassphraseEnv,
  openRoots,
  SECRET_ENV,
  validRootName,
  WEAK_KDF_ENV,
  chainHead,
  headOf,
  loadConfig,
  networkPart,
  openConfigured,
  openRootKey,
  openStore,
  resolveConfig,
  storeFileExists,
  storeFilePath,
  unlockPrimary,
  urlProblem,
  weakKdf,
  weakKdfAllowed,
  type CliConfig,
  type NamedRootKeyConfig,
  type OpenOptions,
  type PendingRootChange,
  type RootKeyConfig,
  type StoreConfig,
} from './config.js'
import { CliError, EXIT, explain, usage } from './exit.js'
import { scanTemps, type Leftover } from './leftovers.js'
import { confirmTyped } from './prompt.js'
import { isTempName, openInput, refuseExisting, openOutputFile, peek, progressBar, readAll, stdoutOutput, wantsProgress, writeWhole, type Output, type OutputOptions } from './io.js'

type Spec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>

export interface Command {
  summary: string
  help: string
  options: Spec
  positionals?: boolean
  run(values: Record<string, string | boolean | string[] | undefined>, positionals: string[]): Promise<number>
}

const CONFIG_OPTION = { config: { type: 'string', short: 'c' } } as const
const CONFIG_HELP = `  -c, --config PATH   config file (default $KMS_PROXY_CONFIG, else ./kms-proxy.json, which
                      is then named on stderr and may reach no network service)`

/**
 * The config the command line or the environment names, its store and the chain's head, with no
 * root key (status, retire, destroy): EXIT.MISSING when the key file or the chain is missing.
 */
async function namedStore(v: Record<string, unknown>) {
  const { path: file, implicit } = resolveConfig(str(v.config))
  const config = await loadConfig(file, { implicit })
  const storeFile = storeFilePath(config, file)
  if (storeFile) await storeFileExists(storeFile, file, config.chain)
  const store = await openStore(config, file)
  return { file, config, storeFile, store, head: await chainHead(store, config.chain) }
}

/** The chain of the config the command line or the environment names (else ./kms-proxy.json, implicitly). */
function openNamed(v: Record<string, unknown>, options: OpenOptions = {}) {
  const { path, implicit } = resolveConfig(str(v.config))
  return openConfigured(path, { ...options, implicit })
}

const out = (line: string) => process.stdout.write(`${line}\n`)
const note = (line: string) => process.stderr.write(`${line}\n`)
const kekId = (id: number) => `0x${id.toString(16).padStart(8, '0')}`
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined)

function positiveInt(name: string, v: unknown): number | undefined {
  if (v === undefined) return undefined
  const n = Number(v)
  if (!Number.isSafeInteger(n) || n <= 0) throw usage(`--${name}: expected a positive integer`)
  return n
}

function required(name: string, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0) throw usage(`--${name} is required`)
  return v
}

// ------------------------------------------------------------------------------ init

const ROOT_TYPES = ['passphrase', 'aws-kms', 'vault', 'gcp', 'azure', 'pkcs11'] as const

/** The options that describe a root key: init's, and root change's and root add's. */
const ROOT_OPTIONS = {
  root: { type: 'string' },
  kdf: { type: 'string' },
  iterations: { type: 'string' },
  'aws-key-id': { type: 'string' },
  'aws-region': { type: 'string' },
  endpoint: { type: 'string' },
  'vault-address': { type: 'string' },
  'vault-key': { type: 'string' },
  'vault-mount': { type: 'string' },
  'vault-namespace': { type: 'string' },
  'gcp-key-name': { type: 'string' },
  'azure-vault-url': { type: 'string' },
  'azure-key-name': { type: 'string' },
  'azure-key-version': { type: 'string' },
  'pkcs11-url': { type: 'string' },
} as const
const ROOT_HELP = `      --kdf pbkdf2|scrypt|argon2id   passphrase KDF (default pbkdf2)
      --iterations N          PBKDF2 iterations (default and least 600000; lower only with
                              KMS_PROXY_ALLOW_WEAK_KDF=1 in the environment, for tests)
      --aws-key-id ID --aws-region R [--endpoint URL]       credentials, in AWS's order: $AWS_ACCESS_KEY_ID
                              and $AWS_SECRET_ACCESS_KEY; web identity ($AWS_WEB_IDENTITY_TOKEN_FILE,
                              $AWS_ROLE_ARN); the container endpoint; EC2 instance metadata
      --vault-address URL --vault-key K [--vault-mount M] [--vault-namespace N]   token: $VAULT_TOKEN
                              or $VAULT_TOKEN_FILE (read again when it changes)
      --gcp-key-name projects/.../cryptoKeys/K [--endpoint URL]   token: $GCP_ACCESS_TOKEN(_FILE),
                              else the metadata server
      --azure-vault-url URL --azure-key-name K [--azure-key-version V]   token: $AZURE_ACCESS_TOKEN(_FILE),
                              else managed identity
      --pkcs11-url URL        kms-proxy PKCS#11 bridge; token: $KMS_PROXY_PKCS11_TOKEN(_FILE)`

function rootKeyConfig(v: Record<string, unknown>): RootKeyConfig {
  const type = str(v.root) ?? 'passphrase'
  switch (type) {
    case 'passphrase': {
      const kdf = str(v.kdf) ?? 'pbkdf2'
      if (kdf !== 'pbkdf2' && kdf !== 'scrypt' && kdf !== 'argon2id') throw usage('--kdf: expected pbkdf2, scrypt or argon2id')
      const iterations = positiveInt('iterations', v.iterations)
      if (iterations !== undefined && kdf !== 'pbkdf2') throw usage('--iterations applies to --kdf pbkdf2 only')
      const config: RootKeyConfig = { type, kdf, ...(iterations ? { iterations } : {}) }
      const weak = weakKdf(config)
      if (weak !== undefined && !weakKdfAllowed(weak)) {
        throw usage(`--iterations ${weak} is below ${DEFAULT_ITERATIONS.toLocaleString('en-US')} (the passphrase package's default); set ${WEAK_KDF_ENV}=1 to allow it (tests only)`)
      }
      return config
    }
    case 'aws-kms':
      return { type, keyId: required('aws-key-id', v['aws-key-id']), region: required('aws-region', v['aws-region']), ...(str(v.endpoint) ? { endpoint: str(v.endpoint)! } : {}) }
    case 'vault':
      return {
        type,
        address: required('vault-address', v['vault-address']),
        key: required('vault-key', v['vault-key']),
        ...(str(v['vault-mount']) ? { mount: str(v['vault-mount'])! } : {}),
        ...(str(v['vault-namespace']) ? { namespace: str(v['vault-namespace'])! } : {}),
      }
    case 'gcp':
      return { type, keyName: required('gcp-key-name', v['gcp-key-name']), ...(str(v.endpoint) ? { endpoint: str(v.endpoint)! } : {}) }
    case 'azure':
      return {
        type,
        vaultUrl: required('azure-vault-url', v['azure-vault-url']),
        keyName: required('azure-key-name', v['azure-key-name']),
        ...(str(v['azure-key-version']) ? { keyVersion: str(v['azure-key-version'])! } : {}),
      }
    case 'pkcs11':
      return { type, url: required('pkcs11-url', v['pkcs11-url']) }
    default:
      throw usage(`--root: expected one of ${ROOT_TYPES.join(', ')}`)
  }
}

function storeConfig(v: Record<string, unknown>, configFile: string): StoreConfig {
  const type = str(v.store) ?? 'file'
  if (type === 'file') {
    // Kept relative to the config's folder, so that the two can move together.
    const path = relative(dirname(configFile), resolve(str(v['store-path']) ?? DEFAULT_STORE_FILE))
    return { type, path }
  }
  if (type === 'etcd') {
    const endpoints = required('etcd-endpoints', v['etcd-endpoints']).split(',').map((e) => e.trim()).filter(Boolean)
    for (const e of endpoints) if (!/^https?:\/\//.test(e)) throw usage(`--etcd-endpoints: ${e} is not an http(s) URL`)
    return { type, endpoints, ...(str(v['etcd-prefix']) ? { prefix: str(v['etcd-prefix'])! } : {}), ...(str(v['etcd-username']) ? { username: str(v['etcd-username'])! } : {}) }
  }
  if (type === 'dynamodb') {
    const endpoint = str(v['dynamodb-endpoint'])
    if (endpoint !== undefined && !/^https?:\/\//.test(endpoint)) throw usage(`--dynamodb-endpoint: ${endpoint} is not an http(s) URL`)
    return {
      type,
      table: required('dynamodb-table', v['dynamodb-table']),
      region: required('dynamodb-region', v['dynamodb-region']),
      ...(endpoint ? { endpoint } : {}),
      ...(str(v['dynamodb-prefix']) ? { prefix: str(v['dynamodb-prefix'])! } : {}),
    }
  }
  if (type === 'postgres') return { type, ...(str(v['postgres-table']) ? { table: str(v['postgres-table'])! } : {}) }
  throw usage('--store: expected file, etcd, dynamodb or postgres')
}

/** A store that is not a file, in one line: etcd's endpoints, a DynamoDB table, PostgreSQL's tables (never its URL). */
function storeName(config: CliConfig): string {
  const s = config.store
  if (s.type === 'etcd') return `etcd ${s.endpoints.join(',')}`
  if (s.type === 'dynamodb') return `dynamodb ${s.table} (${s.region}${s.endpoint ? `, ${s.endpoint}` : ''})`
  if (s.type === 'postgres') return `postgres ${s.table ?? 'kms_proxy'}_heads, ${s.table ?? 'kms_proxy'}_keks`
  return s.path
}

/** Where a store keeps the chain, for messages (never a secret: no URL, no credentials). */
function storeWhere(config: CliConfig): string {
  const s = config.store
  switch (s.type) {
    case 'file':
      return s.path
    case 'etcd':
      return `the etcd keys under ${s.prefix ?? 'kms-proxy/'}${config.chain}/`
    case 'dynamodb':
      return `the items of chain "${config.chain}" in the DynamoDB table ${s.table}${s.prefix ? ` (prefix ${s.prefix})` : ''}`
    case 'postgres':
      return `the rows of chain "${config.chain}" in the PostgreSQL tables ${s.table ?? 'kms_proxy'}_heads and ${s.table ?? 'kms_proxy'}_keks`
  }
}

/**
 * What must be backed up. The store holds the only copies of the chain's wrapped KEKs: lost, it
 * takes every file encrypted under the chain with it, and a new `init` cannot bring them back
 * (it makes new KEKs). The root key is needed too, but it is not the CLI's to copy.
 */
function backupNote(config: CliConfig, configFile: string): string {
  const s = config.store
  const what = s.type === 'file' ? storeFilePath(config, configFile)! : storeWhere(config)
  const root = configRoots(config)
    .map(({ root: r }) => (r.type === 'passphrase' ? 'the passphrase' : `the ${r.type} key`))
    .join(' or ')
  return `back up ${what}: it holds the chain's wrapped KEKs, and nothing encrypted under chain "${config.chain}" can be decrypted without it (and ${root}); \`kms-proxy init\` cannot recreate it`
}

const init: Command = {
  summary: 'create a key chain and write the config',
  help: `Usage: kms-proxy init [options]

Creates the key chain (its first KEK, one root-key wrap) and writes a config that names the
chain, the store and the root key. The config holds no secret. If the chain already exists in
the store, init checks that the root key unlocks it and writes the config.

${CONFIG_HELP}
      --chain NAME            chain name (default "default")
      --store TYPE            where the wrapped KEKs live: file (default), etcd, dynamodb, postgres
      --store-path PATH       file store (default ./${DEFAULT_STORE_FILE}; a folder gets that name inside it)
      --etcd-endpoints URLS   comma-separated etcd client URLs
      --etcd-prefix P         key prefix in etcd (default kms-proxy/)
      --etcd-username U       etcd user; the password comes from $KMS_PROXY_ETCD_PASSWORD
      --dynamodb-table T      DynamoDB table (partition key pk, sort key sk: strings)
      --dynamodb-region R     its AWS region; credentials as for --root aws-kms
      --dynamodb-endpoint URL another endpoint (a VPC endpoint, a local emulator)
      --dynamodb-prefix P     key prefix in the table, so that apps share it
      --dynamodb-create-table create the table if it is missing (on-demand capacity)
      --postgres-table T      table name prefix (default kms_proxy); the database's URL comes
                              from $KMS_PROXY_POSTGRES_URL
      --root TYPE             passphrase (default), aws-kms, vault, gcp, azure, pkcs11
${ROOT_HELP}
      --max-wraps-per-kek N   rotation after N DEKs (default 2^21)
      --max-kek-age-days D    rotation after D days (default 7)
      --max-staleness-seconds S   every process reads the chain head at least every S seconds before
                              it encrypts or decrypts, so a rotation or retirement anywhere is
                              seen within S (default 15)
      --destroy-grace-days D  destroy only D days after a retirement (default 7; at least the
                              staleness bound)
      --plain-http-host HOST  allow plain http: to HOST (not loopback); repeatable; kept in the config
      --force                 overwrite an existing config

The passphrase comes from $KMS_PROXY_PASSPHRASE, or is typed twice on a terminal (not echoed;
asked again when the two differ). One under 12 characters, or with under 5 different ones, is
warned about. init ends by naming what to back up: the key file holds the chain's only copies
of its wrapped KEKs, and nothing encrypted under the chain can be decrypted without it.`,
  options: {
    ...CONFIG_OPTION,
    chain: { type: 'string' },
    store: { type: 'string' },
    'store-path': { type: 'string' },
    'etcd-endpoints': { type: 'string' },
    'etcd-prefix': { type: 'string' },
    'etcd-username': { type: 'string' },
    'dynamodb-table': { type: 'string' },
    'dynamodb-region': { type: 'string' },
    'dynamodb-endpoint': { type: 'string' },
    'dynamodb-prefix': { type: 'string' },
    'dynamodb-create-table': { type: 'boolean' },
    'postgres-table': { type: 'string' },
    ...ROOT_OPTIONS,
    'max-wraps-per-kek': { type: 'string' },
    'max-kek-age-days': { type: 'string' },
    'max-staleness-seconds': { type: 'string' },
    'destroy-grace-days': { type: 'string' },
    'plain-http-host': { type: 'string', multiple: true },
    force: { type: 'boolean' },
  },
  async run(v) {
    const { path: file, implicit } = resolveConfig(str(v.config))
    if (!v.force && (await stat(file).then(() => true, () => false))) throw usage(`${file} exists: pass --force to overwrite it`)
    const chainName = str(v.chain) ?? 'default'
    if (chainName.length > 255) throw usage('--chain: at most 255 characters')
    const maxWrapsPerKek = positiveInt('max-wraps-per-kek', v['max-wraps-per-kek'])
    const days = v['max-kek-age-days'] === undefined ? undefined : Number(v['max-kek-age-days'])
    if (days !== undefined && !(days > 0)) throw usage('--max-kek-age-days: expected a positive number')
    const staleness = v['max-staleness-seconds'] === undefined ? undefined : Number(v['max-staleness-seconds'])
    if (staleness !== undefined && !(staleness >= 0 && Number.isFinite(staleness))) throw usage('--max-staleness-seconds: expected a number, 0 or more')
    const grace = v['destroy-grace-days'] === undefined ? undefined : Number(v['destroy-grace-days'])
    const maxStalenessMs = staleness === undefined ? undefined : Math.round(staleness * 1000)
    const destroyGraceMs = grace === undefined ? undefined : Math.round(grace * 86_400_000)
    if (grace !== undefined && !(Number.isFinite(grace) && destroyGraceMs! >= (maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS))) {
      throw usage(`--destroy-grace-days: expected a number of days, at least the staleness bound (${age(maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS)}), so that every process sees a retirement before a destroy`)
    }
    const config: CliConfig = {
      format: CONFIG_FORMAT,
      chain: chainName,
      store: storeConfig(v, file),
      rootKey: rootKeyConfig(v),
      ...(maxWrapsPerKek ? { maxWrapsPerKek } : {}),
      ...(days ? { maxKekAgeMs: Math.round(days * 86_400_000) } : {}),
      ...(maxStalenessMs !== undefined ? { maxStalenessMs } : {}),
      ...(destroyGraceMs !== undefined ? { destroyGraceMs } : {}),
      ...(Array.isArray(v['plain-http-host']) ? { plainHttpHosts: v['plain-http-host'] } : {}),
    }
    const url = urlProblem(config)
    if (url) throw usage(url.replace('in plainHttpHosts', 'with --plain-http-host'))
    // A folder given as the store path gets the default file name inside it.
    const storeFile = storeFilePath(config, file)
    if (storeFile && config.store.type === 'file' && (await stat(storeFile).then((s) => s.isDirectory(), () => false))) {
      config.store = { type: 'file', path: join(config.store.path, DEFAULT_STORE_FILE) }
    }
    if (v['dynamodb-create-table'] && config.store.type !== 'dynamodb') throw usage('--dynamodb-create-table: only with --store dynamodb')
    const store = await openStore(config, file, { createTable: v['dynamodb-create-table'] === true })
    const existing = await headOf(store, config.chain)
    const rootKey = await openRootKey(config.rootKey!, { confirm: !existing })
    let message: string
    if (existing) {
      // One root-key unwrap of the primary proves the root key before the config is written;
      // nothing in the store changes (an encryption would spend a use, or rotate an overdue primary).
      await checkRootKey(rootKey, config, store, existing.value)
      message = `chain "${config.chain}" already exists; the root key unlocks its primary KEK ${kekId(existing.value.primary)}`
    } else {
      const { id } = await (await KeyChain.open(chainOptions(config, { rootKey }, store))).rotate()
      message = `created chain "${config.chain}" with KEK ${kekId(id)}`
    }
    await writeWhole(file, new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`), { mode: 0o644, replace: true }) // --force was checked above
    const where = config.store.type === 'file' ? `file store ${storeFilePath(config, file)}` : storeName(config)
    out(`${message} (${config.rootKey!.type} root key, ${where})`)
    out(`config written to ${file}`)
    out(backupNote(config, file))
    if (implicit && networkPart(config)) {
      out(`it reaches the network, so commands use it only when named: --config ${relative(process.cwd(), file)} or KMS_PROXY_CONFIG`)
    }
    return EXIT.OK
  },
}

// ------------------------------------------------------------------------------ encrypt / decrypt

const MAX_MESSAGE_BYTES = 256 * 1024 * 1024
const IO_HELP = `  -i, --input PATH    input file (default: stdin; "-" is stdin)
  -o, --output PATH   output file, written under a temporary name and renamed when complete
                      (default: stdout)
      --aad TEXT      associated data: authenticated, not stored; decrypt needs the same text
      --force         overwrite an existing output file (without it, an existing file is
                      refused, exit 2, and kept as it is)
  -q, --quiet         no progress bar`
const IO_OPTIONS = {
  ...CONFIG_OPTION,
  input: { type: 'string', short: 'i' },
  output: { type: 'string', short: 'o' },
  aad: { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
  force: { type: 'boolean' },
} as const

/**
 * Copies `source` into the output and commits it only if every step succeeded. A loop rather
 * than pipeTo: when the output fails (EPIPE, ENOSPC), pipeTo cancels the source and may reject
 * with the cancel's error instead of the output's, which then gets the wrong exit code.
 */
async function deliver(source: ReadableStream<Uint8Array>, outputPath: string | undefined, force: boolean): Promise<void> {
  const output: Output = outputPath === undefined || outputPath === '-' ? stdoutOutput() : await openOutputFile(outputPath, { replace: force })
  try {
    const writer = output.writable.getWriter()
    for await (const chunk of source as unknown as AsyncIterable<Uint8Array>) await writer.write(chunk)
    await writer.close()
    await output.commit()
  } catch (error) {
    await output.discard()
    throw error
  }
}

function single(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes)
      controller.close()
    },
  })
}

function withProgress(stream: ReadableStream<Uint8Array>, size: number | undefined, quiet: boolean, label: string): ReadableStream<Uint8Array> {
  return wantsProgress(size, quiet) ? stream.pipeThrough(progressBar(size, label)) : stream
}

const encrypt: Command = {
  summary: 'encrypt a file or stdin',
  help: `Usage: kms-proxy encrypt [-i IN] [-o OUT] [--aad TEXT]

Encrypts in constant memory as a stream: one DEK (wrapped by the primary KEK), 64 KiB segments.
A progress bar is drawn on stderr when it is a terminal and the input is over 8 MiB.

${CONFIG_HELP}
${IO_HELP}
      --message       one single message instead of a stream (input held in memory, up to 256 MiB)
      --segment-size N   stream segment size in bytes (default 65536)`,
  options: { ...IO_OPTIONS, message: { type: 'boolean' }, 'segment-size': { type: 'string' } },
  async run(v) {
    const segmentSize = positiveInt('segment-size', v['segment-size'])
    if (segmentSize !== undefined && v.message) throw usage('--segment-size applies to streams, not --message')
    const output = str(v.output)
    if ((output === undefined || output === '-') && process.stdout.isTTY) {
      throw usage('refusing to write encrypted bytes to a terminal: pass -o FILE or redirect stdout')
    }
    await refuseExisting(output, v.force === true)
    const { chain } = await openNamed(v)
    const input = await openInput(str(v.input))
    const aad = str(v.aad)
    const plain = withProgress(input.stream, input.size, v.quiet === true, 'encrypt')
    if (v.message) {
      const encrypted = await chain.encrypt(await readAll(plain, MAX_MESSAGE_BYTES), aad === undefined ? undefined : { associatedData: aad })
      await deliver(single(encrypted), output, v.force === true)
    } else {
      const transform = chain.encryptStream({ ...(aad === undefined ? {} : { associatedData: aad }), ...(segmentSize ? { segmentSize } : {}) })
      await deliver(plain.pipeThrough(transform), output, v.force === true)
    }
    return EXIT.OK
  },
}

const FLAG_STREAM = 0x02

const decrypt: Command = {
  summary: 'decrypt a file or stdin',
  help: `Usage: kms-proxy decrypt [-i IN] [-o OUT] [--aad TEXT]

Decrypts what encrypt wrote (a stream or a single message). Each segment is released only after
it authenticated. With -o the file appears only if the whole input authenticated; to stdout (or
a FIFO or device given to -o), a failure part way leaves the segments already written (and
exits non-zero).

${CONFIG_HELP}
${IO_HELP}`,
  options: IO_OPTIONS,
  async run(v) {
    const output = str(v.output)
    await refuseExisting(output, v.force === true)
    const { chain } = await openNamed(v)
    const input = await openInput(str(v.input))
    const aad = str(v.aad)
    const options = aad === undefined ? undefined : { associatedData: aad }
    const encrypted = withProgress(input.stream, input.size, v.quiet === true, 'decrypt')
    const { head, stream } = await peek(encrypted, 6)
    if (head.length === 0) throw new CliError(EXIT.TAMPERED, `${input.name} is empty: not kms-proxy data`)
    // Everything kms-proxy writes starts with its format version: anything else (text, a PDF, a
    // file that was never encrypted) is named as what it is, not as a format version it is not.
    if (head[0] !== FORMAT_VERSION) throw new CliError(EXIT.TAMPERED, `${input.name} is not kms-proxy data`)
    if (head.length >= 6 && (head[5]! & FLAG_STREAM) !== 0) {
      await deliver(stream.pipeThrough(chain.decryptStream(options)), output, v.force === true)
    } else {
      const plaintext = await chain.decrypt(await readAll(stream, MAX_MESSAGE_BYTES + 1024), options)
      await deliver(single(plaintext), output, v.force === true)
    }
    return EXIT.OK
  },
}

// ------------------------------------------------------------------------------ rotate / status

const rotate: Command = {
  summary: 'make a new primary KEK',
  help: `Usage: kms-proxy rotate [--json]

Makes a new primary KEK now (one root-key wrap). Older KEKs stay for decryption; run
\`kms-proxy rewrap DIR\` to move files to the new KEK.

${CONFIG_HELP}
      --json              print {"primary": id, "createdAt": ms} as JSON`,
  options: { ...CONFIG_OPTION, json: { type: 'boolean' } },
  async run(v) {
    // The new KEK is wrapped under every root of the chain: each one's secret is needed.
    const { chain } = await openNamed(v, { allRoots: true })
    const { id, createdAt } = await chain.rotate()
    if (v.json) out(JSON.stringify({ primary: id, primaryHex: kekId(id), createdAt }))
    else out(`new primary KEK ${kekId(id)} (${new Date(createdAt).toISOString()})`)
    return EXIT.OK
  },
}

function age(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.round(s / 60)} min`
  if (s < 172800) return `${Math.round(s / 3600)} h`
  return `${Math.round(s / 86400)} d`
}

/** Proves `root` on the chain's primary KEK (unlockPrimary): one unwrap, nothing written. */
async function checkRootKey(root: RootKey, config: CliConfig, store: KeyStore, head: ChainHead, name?: string): Promise<true> {
  if (!(await unlockPrimary(root, store, config.chain, head, name))) {
    const which = name === undefined ? "the config's" : `root "${name}" of the config`
    throw new CliError(EXIT.ROOT_KEY, `the primary KEK has no wrap under ${which} (${root.kind}): this root key cannot unlock it`)
  }
  return true
}

/** Proves every root of the config at hand (checkRootKey, one unwrap each); returns how many. */
async function checkRoots(config: CliConfig, store: KeyStore, head: ChainHead): Promise<number> {
  if (!config.roots) {
    await checkRootKey(await openRootKey(config.rootKey!, config.plainHttpHosts ? { plainHttpHosts: config.plainHttpHosts } : {}), config, store, head)
    return 1
  }
  const roots = await openRoots(config)
  for (const [name, root] of roots) await checkRootKey(root, config, store, head, name)
  return roots.size
}

/** A config's roots in a line: `passphrase (pbkdf2)`, or `main: aws-kms, recovery: passphrase (pbkdf2)`. */
function describeRoots(config: CliConfig): string {
  const one = (r: RootKeyConfig) => `${r.type}${r.type === 'passphrase' ? ` (${r.kdf ?? 'pbkdf2'})` : ''}`
  return configRoots(config)
    .map(({ name, root }) => (name === undefined ? one(root) : `${name}: ${one(root)}`))
    .join(', ')
}

/** Records of the store, one per KEK (a KEK of a chain of several roots has one record per root). */
function byKek(records: readonly KekRecord[]): Array<KekRecord & { roots: string[] }> {
  const keks = new Map<number, KekRecord & { roots: string[] }>()
  for (const r of records) {
    const k = keks.get(r.id)
    if (k) k.roots.push(r.root ?? DEFAULT_ROOT)
    else keks.set(r.id, { ...r, roots: [r.root ?? DEFAULT_ROOT] })
  }
  return [...keks.values()].sort((a, b) => a.createdAt - b.createdAt)
}

const DEFAULT_MAX_WRAPS = 2 ** 21
const DEFAULT_MAX_AGE_MS = 7 * 86_400_000

const status: Command = {
  summary: 'show the config and chain: KEKs, usage, root-key calls, leftovers',
  help: `Usage: kms-proxy status [--check] [--json]

Reads the chain from the store: its KEKs, which is primary, how many of the primary's uses are
reserved, and when it rotates; it writes nothing. Needs no secret and makes no root-key call,
unless --check.
Also lists the temporary files a killed command left in the working folder and the config's
folder (they may hold plaintext; \`kms-proxy clean\` removes them).

${CONFIG_HELP}
      --check             also unlock the primary KEK (one root-key unwrap) to prove the root key;
                          changes nothing in the store (no use spent, never a rotation)
      --plugin SOCKET     also ask the Kubernetes plugin on SOCKET for its Status, as kube-apiserver
                          does (needs @kms-proxy/k8s)
      --json              machine-readable output`,
  options: { ...CONFIG_OPTION, check: { type: 'boolean' }, plugin: { type: 'string' }, json: { type: 'boolean' } },
  async run(v) {
    const { file, config, storeFile, store, head } = await namedStore(v)
    // A check unwraps the primary KEK and writes nothing: no use, no lease, no rotation of an
    // overdue primary, no KEK (what an encryption would do).
    const checked = v.check ? await checkRoots(config, store, head.value) : undefined
    const keks = byKek(await store.listKeks(config.chain))
    const maxWraps = config.maxWrapsPerKek ?? DEFAULT_MAX_WRAPS
    const maxAge = config.maxKekAgeMs ?? DEFAULT_MAX_AGE_MS
    const maxStalenessMs = config.maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS
    const destroyGraceMs = config.destroyGraceMs ?? DEFAULT_DESTROY_GRACE_MS
    const h = head.value
    const retired = new Map((h.retired ?? []).map((r) => [r.id, r]))
    // A destroyed KEK has no record left: the head still names it, with its times.
    const destroyedOnly = [...retired.values()].filter((r) => r.destroyedAt !== undefined && !keks.some((k) => k.id === r.id))
    const lifeOf = (id: number) => {
      const r = retired.get(id)
      if (!r) return { state: 'active' as const }
      return r.destroyedAt !== undefined
        ? { state: 'destroyed' as const, retiredAt: r.retiredAt, destroyedAt: r.destroyedAt }
        : { state: 'retired' as const, retiredAt: r.retiredAt, destroyableAt: r.retiredAt + destroyGraceMs }
    }
    const folders = [...new Set([process.cwd(), dirname(file)])]
    const leftovers: Leftover[] = []
    // A folder this user cannot list has nothing status could report or clean could remove.
    for (const folder of folders) leftovers.push(...(await scanTemps(folder, false).catch(() => ({ leftovers: [] }))).leftovers)
    const report = {
      config: file,
      chain: config.chain,
      store: config.store.type === 'file' ? { type: 'file', path: storeFile } : config.store.type === 'etcd' ? { type: 'etcd', endpoints: config.store.endpoints } : config.store,
      ...(config.roots ? { roots: config.roots.map((r) => ({ name: r.name, type: r.type })) } : { rootKey: { type: config.rootKey!.type } }),
      ...(config.rootChange ? { rootChange: config.rootChange } : {}),
      policy: { maxWrapsPerKek: maxWraps, maxKekAgeMs: maxAge, maxStalenessMs, destroyGraceMs },
      ...(h.chainRetiredAt === undefined ? {} : { chainRetiredAt: h.chainRetiredAt, ...(h.chainDestroyedAt === undefined ? { chainDestroyableAt: h.chainRetiredAt + destroyGraceMs } : { chainDestroyedAt: h.chainDestroyedAt }) }),
      primary: { id: h.primary, createdAt: h.primaryCreatedAt, usesReserved: h.leased, rotatesAt: h.primaryCreatedAt + maxAge },
      keks: [
        ...keks.map((k) => ({ id: k.id, createdAt: k.createdAt, rootKind: k.rootKind, roots: k.roots, primary: k.id === h.primary, ...lifeOf(k.id) })),
        ...destroyedOnly.map((r) => ({ id: r.id, primary: false, ...lifeOf(r.id) })),
      ],
      rootKeyCalls: { wraps: 0, unwraps: checked ?? 0 },
      ...(checked === undefined ? {} : { rootKeyAvailable: true }),
      ...(str(v.plugin) ? { plugin: await pluginStatus(str(v.plugin)!, `${config.chain}/${h.primary.toString(16).padStart(8, '0')}`) } : {}),
      leftovers,
    }
    if (v.json) {
      out(JSON.stringify(report, null, 2))
      return EXIT.OK
    }
    const now = Date.now()
    const where = config.store.type === 'file' ? `file ${storeFile}` : storeName(config)
    out(`config       ${file}`)
    out(`chain        ${config.chain}`)
    out(`store        ${where}`)
    out(`${config.roots ? 'roots       ' : 'root key    '} ${describeRoots(config)}`)
    if (config.rootChange) out(`             unfinished: ${describeChange(config.rootChange)}: run the same \`kms-proxy root ${config.rootChange.op}\` again to finish`)
    out(`primary KEK  ${kekId(h.primary)}, ${age(now - h.primaryCreatedAt)} old, rotates in ${age(h.primaryCreatedAt + maxAge - now)} or after ${plural(maxWraps, 'use')}`)
    if (h.primaryCreatedAt + maxAge <= now) out(`             past its age by ${age(now - h.primaryCreatedAt - maxAge)}: the next plugin Status or encryption rotates it (one root-key call)`)
    out(`usage        ${h.leased.toLocaleString('en-US')} of ${plural(maxWraps, 'use')} reserved (${((100 * h.leased) / maxWraps).toFixed(h.leased * 1000 < maxWraps ? 3 : 1)}%)`)
    out(`staleness    a rotation or retirement anywhere is seen here within ${age(maxStalenessMs)}; destroy waits ${age(destroyGraceMs)} after a retirement`)
    if (h.chainDestroyedAt !== undefined) out(`chain state  destroyed ${new Date(h.chainDestroyedAt).toISOString()}: its KEKs are deleted; nothing under it can be decrypted`)
    else if (h.chainRetiredAt !== undefined) {
      out(`chain state  retired ${new Date(h.chainRetiredAt).toISOString()}: no encryption or decryption; \`kms-proxy unretire --chain\` undoes it, \`kms-proxy destroy --chain\` deletes it for good from ${new Date(h.chainRetiredAt + destroyGraceMs).toISOString()}`)
    }
    const life = (id: number) => {
      const l = lifeOf(id)
      if (l.state === 'retired') return `  retired ${new Date(l.retiredAt).toISOString()} (destroyable from ${new Date(l.destroyableAt).toISOString()})`
      return l.state === 'destroyed' ? `  destroyed ${new Date(l.destroyedAt).toISOString()}` : ''
    }
    const retiredCount = [...retired.values()].filter((r) => r.destroyedAt === undefined).length
    out(`KEKs         ${keks.length}${retiredCount > 0 ? ` (${retiredCount} retired)` : ''}${destroyedOnly.length > 0 ? `; ${destroyedOnly.length} destroyed, no record left` : ''}`)
    for (const k of keks) out(`  ${kekId(k.id)}  ${new Date(k.createdAt).toISOString()}  ${h.roots ? k.roots.join(', ') : k.rootKind}${k.id === h.primary ? '  primary' : ''}${life(k.id)}`)
    for (const r of destroyedOnly) out(`  ${kekId(r.id)}  ${life(r.id).trim()}`)
    out(`root-key calls by this command: ${plural(report.rootKeyCalls.wraps, 'wrap')}, ${plural(report.rootKeyCalls.unwraps, 'unwrap')}${checked ? ' (root key ok)' : ''}`)
    if (report.plugin) {
      const p = report.plugin
      const about = 'error' in p ? `not answering (${p.error})` : `${p.healthz}, key_id ${p.keyId} (${p.isPrimary ? "the store's primary" : "not the store's primary: the plugin adopts it when its own KEK expires"})`
      out(`plugin       ${p.socket}: ${about}`)
    }
    if (leftovers.length > 0) {
      const where = [...new Set(leftovers.map((l) => dirname(l.path)))].join(' ')
      out(`leftovers    ${plural(leftovers.length, 'temporary file')} left by a killed command (may hold plaintext); remove with: kms-proxy clean ${where}`)
      for (const l of leftovers) out(`  ${l.path}  ${l.bytes.toLocaleString('en-US')} bytes, ${age(now - l.modifiedAt)} old`)
    }
    return EXIT.OK
  },
}

/** The plugin's Status as kube-apiserver sees it, against the store's primary key_id. */
async function pluginStatus(socket: string, primaryKeyId: string) {
  const k8s = await k8sModule('kmsPluginStatus')
  try {
    const s = await k8s.kmsPluginStatus(socket)
    return { socket, version: s.version, healthz: s.healthz, keyId: s.key_id, isPrimary: s.key_id === primaryKeyId }
  } catch (error) {
    return { socket, error: String((error as { details?: string }).details || (error as Error).message) }
  }
}

/** `1 file`, `2 files`, `2,097,152 uses`: every count the commands print goes through here. */
const plural = (n: number, what: string) => `${n.toLocaleString('en-US')} ${what}${n === 1 ? '' : 's'}`

// ------------------------------------------------------------------------------ clean

const clean: Command = {
  summary: 'remove temporary files left by a killed command',
  help: `Usage: kms-proxy clean [DIR...]

Removes, under each DIR (default: the working folder; recursive, symbolic links not followed),
the temporary files (.NAME.PID-RANDOM.kms-proxy-tmp) that a command killed with SIGKILL, a
crash or a power cut left behind; a decrypt's may hold plaintext. A file whose writer (PID) is
still running is left alone. Needs no config.`,
  options: {},
  positionals: true,
  async run(_v, positionals) {
    let removed = 0
    let inUse = 0
    let firstFailure: unknown
    for (const dir of positionals.length > 0 ? positionals : ['.']) {
      const scan = await scanTemps(dir, true)
      inUse += scan.inUse.length
      for (const { path } of scan.leftovers) {
        try {
          await unlink(path)
          removed++
          out(`removed ${path}`)
        } catch (error) {
          firstFailure ??= error
          note(`kms-proxy clean: ${explain(error).message}`)
        }
      }
    }
    out(`removed ${plural(removed, 'leftover temporary file')}${inUse > 0 ? `; ${inUse} in use by a running command (left alone)` : ''}`)
    return firstFailure === undefined ? EXIT.OK : explain(firstFailure).exitCode
  },
}

// ------------------------------------------------------------------------------ rewrap

/** Longest stream header: fixed 6, embedded KEK 2 + 65,535, iv1 12, wrapped DEK 32, tail 11. */
const MAX_STREAM_HEADER = 6 + 2 + 65_535 + 12 + 32 + 11

async function* walk(dir: string): AsyncGenerator<string> {
  const entries = await readdir(dir, { withFileTypes: true })
  entries.sort((a, b) => (a.name < b.name ? -1 : 1))
  for (const e of entries) {
    const path = join(dir, e.name)
    if (e.isDirectory()) yield* walk(path)
    else if (e.isFile() && !isTempName(e.name)) yield path
  }
}

async function readHead(path: string, n: number): Promise<Uint8Array> {
  const handle = await open(path, 'r')
  try {
    const buffer = new Uint8Array(n)
    let at = 0
    while (at < n) {
      const { bytesRead } = await handle.read(buffer, at, n - at, at)
      if (bytesRead === 0) break
      at += bytesRead
    }
    return buffer.subarray(0, at)
  } finally {
    await handle.close()
  }
}

/** Writes header || bytes of `path` from `from` to its end, as a new file renamed over `path`. */
async function replaceHeader(path: string, header: Uint8Array, from: number, keep: OutputOptions, beforeRename: () => Promise<void>): Promise<void> {
  const output = await openOutputFile(path, keep)
  try {
    const writer = output.writable.getWriter()
    await writer.write(header)
    const handle = await open(path, 'r')
    try {
      const buffer = new Uint8Array(1 << 20)
      let position = from
      for (;;) {
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, position)
        if (bytesRead === 0) break
        await writer.write(buffer.slice(0, bytesRead))
        position += bytesRead
      }
    } finally {
      await handle.close()
    }
    await writer.close()
    await output.commit(beforeRename)
  } catch (error) {
    await output.discard()
    throw error
  }
}

const rewrap: Command = {
  summary: 'move every encrypted file in a folder to the primary KEK',
  help: `Usage: kms-proxy rewrap DIR [--json]

For every kms-proxy file under DIR (recursively), re-wraps its DEK under the current primary
KEK: a single message through chain.rewrap, a stream by replacing its header only (segments
untouched, copied as they are). Each file is replaced atomically (temporary file, rename).
Files that do not start like kms-proxy data are skipped. Costs at most one root-key unwrap per
old KEK and no re-encryption.

${CONFIG_HELP}
      --json              print counts as JSON`,
  options: { ...CONFIG_OPTION, json: { type: 'boolean' } },
  positionals: true,
  async run(v, positionals) {
    if (positionals.length !== 1) throw usage('rewrap takes exactly one folder: kms-proxy rewrap DIR')
    const dir = positionals[0]!
    const s = await stat(dir)
    if (!s.isDirectory()) throw usage(`${dir} is not a folder`)
    const files: string[] = []
    for await (const f of walk(dir)) files.push(f)
    const { chain, config, store } = await openNamed(v, { leaseSize: Math.max(1, Math.min(65_536, files.length)) })
    const { leftovers } = await scanTemps(dir, true)
    if (leftovers.length > 0) note(`kms-proxy rewrap: ${plural(leftovers.length, 'leftover temporary file')} under ${dir} from a killed command: kms-proxy clean ${dir}`)
    // Files already under the primary are left as they are (no root-key call, no write).
    const primaryAtStart = (await store.getHead(config.chain))?.value.primary
    const counts = { rewrapped: 0, messages: 0, streams: 0, current: 0, skipped: 0, failed: 0 }
    // Per old KEK: files and bytes moved off it, and files left under it (failed), so that
    // "retire after rewrap" is a checked step.
    const perKek = new Map<number, { files: number; bytes: number; left: number }>()
    const tally = (id: number) => perKek.get(id) ?? perKek.set(id, { files: 0, bytes: 0, left: 0 }).get(id)!
    let firstFailure: unknown
    for (const file of files) {
      let from: number | undefined
      try {
        const info = await lstat(file)
        // Another writer may replace or change the file meanwhile (an encrypt -o to the same
        // name): then its new bytes win, and this file is reported, not overwritten.
        const unchanged = async () => {
          const now = await lstat(file)
          if (now.ino !== info.ino || now.size !== info.size || now.mtimeMs !== info.mtimeMs) {
            throw new CliError(EXIT.IO, 'it changed while being rewrapped; left as it is (run rewrap again)')
          }
        }
        // The new copy gets the file's mode, owner and group (ACLs and extended attributes are not copied).
        const keep: OutputOptions = { mode: info.mode & 0o777, owner: { uid: info.uid, gid: info.gid }, replace: true }
        const head = await readHead(file, Math.min(info.size, MAX_STREAM_HEADER))
        if (head.length < 6 || head[0] !== FORMAT_VERSION) {
          counts.skipped++
          continue
        }
        from = new DataView(head.buffer, head.byteOffset).getUint32(1)
        if (from === primaryAtStart) {
          counts.current++
          continue
        }
        if ((head[5]! & FLAG_STREAM) !== 0) {
          const { header, replaces } = await chain.rewrapStreamHeader(head)
          if (replaces === header.length && header.every((b, i) => b === head[i])) {
            counts.current++
            continue
          }
          await replaceHeader(file, header, replaces, keep, unchanged)
          counts.streams++
        } else {
          const data = new Uint8Array(await readFile(file))
          const moved = await chain.rewrap(data)
          if (moved.length === data.length && moved.every((b, i) => b === data[i])) {
            counts.current++
            continue
          }
          await writeWhole(file, moved, { ...keep, beforeRename: unchanged })
          counts.messages++
        }
        counts.rewrapped++
        const t = tally(from)
        t.files++
        t.bytes += info.size
      } catch (error) {
        if (from !== undefined) tally(from).left++
        counts.failed++
        firstFailure ??= error
        note(`kms-proxy rewrap: ${file}: ${explain(error).message}`)
      }
    }
    const stats = chain.stats()
    const primary = stats.keks.find((k) => k.primary)?.id
    // What moved off each KEK, as the chain counted it (stats().keks[].rewrapped), with the bytes of those files.
    const byKek = [...perKek.entries()]
      .map(([id, t]) => ({ id, idHex: kekId(id), moved: stats.keks.find((k) => k.id === id)?.rewrapped ?? 0, bytes: t.bytes, left: t.left }))
      .sort((a, b) => a.id - b.id)
    if (v.json) out(JSON.stringify({ ...counts, primary, byKek, rootKeyUnwraps: stats.rootKeyUnwraps, rootKeyWraps: stats.rootKeyWraps }))
    else {
      out(`rewrapped ${plural(counts.rewrapped, 'file')} (${plural(counts.messages, 'message')}, ${plural(counts.streams, 'stream')})${primary ? ` to KEK ${kekId(primary)}` : ''}; ${counts.current} already current, ${counts.skipped} skipped (not kms-proxy data), ${counts.failed} failed`)
      for (const k of byKek) {
        const left = k.left > 0 ? `${plural(k.left, 'file')} still under it (failed)` : `no file under ${dir} still under it`
        out(`  from KEK ${k.idHex}: ${plural(k.moved, 'file')} moved (${plural(k.bytes, 'byte')}); ${left}`)
      }
      out(`root-key calls: ${plural(stats.rootKeyUnwraps, 'unwrap')}, ${plural(stats.rootKeyWraps, 'wrap')}`)
    }
    if (firstFailure !== undefined) {
      return explain(firstFailure).exitCode
    }
    return EXIT.OK
  },
}

// ------------------------------------------------------------------------------ retire / unretire / destroy

/** A KEK id as the commands print it (`0x1f2e3d4c`), or in decimal. */
function kekIdArgument(command: string, positionals: string[], wholeChain: boolean): number | undefined {
  if (wholeChain) {
    if (positionals.length > 0) throw usage(`${command} --chain takes no KEK id`)
    return undefined
  }
  if (positionals.length !== 1) throw usage(`${command} takes one KEK id, as \`kms-proxy status\` lists it (0x1f2e3d4c), or --chain for the whole chain`)
  const text = positionals[0]!
  const id = /^0x[0-9a-f]{1,8}$/i.test(text) ? Number.parseInt(text.slice(2), 16) : /^[0-9]{1,10}$/.test(text) ? Number(text) : Number.NaN
  if (!Number.isInteger(id) || id < 1 || id > 0xffffffff) throw usage(`${text} is not a KEK id: give it as \`kms-proxy status\` lists it (0x and 8 hex digits)`)
  return id
}

const refuseRootCall = () => Promise.reject(new Error('this command makes no root-key call'))
/** The root key of a command that only edits the chain head: it is never called. */
const NO_ROOT_KEY: RootKey = { kind: 'none', newKek: refuseRootCall, unwrapKek: refuseRootCall }

/**
 * The chain for a command that edits its head only (retire, unretire, destroy): no root-key
 * secret is needed and no root-key call is made, since whoever may write the store can change
 * the head anyway; the config and the store decide which chain.
 */
async function openHeadOnly(v: Record<string, unknown>) {
  const { config, store, head } = await namedStore(v)
  const chain = await KeyChain.open(chainOptions(config, { rootKey: NO_ROOT_KEY }, store))
  const policy = { maxStalenessMs: config.maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS, destroyGraceMs: config.destroyGraceMs ?? DEFAULT_DESTROY_GRACE_MS }
  return { chain, config, store, head: head.value, policy }
}

/** Core's refusals of a lifecycle step (the primary, not retired, within the grace period) are the user's to fix: exit 2. */
async function refusalIsUsage<T>(work: Promise<T>): Promise<T> {
  try {
    return await work
  } catch (error) {
    if (error instanceof LimitError) throw usage(error.message)
    throw error
  }
}

const iso = (ms: number) => new Date(ms).toISOString()

const LIFECYCLE_HELP = `${CONFIG_HELP}
      --chain             the whole chain instead of one KEK
      --json              print what was done as JSON

Needs no root-key secret and makes no root-key call: it edits the chain head in the store (one
compare-and-swap). Every process on the chain sees it within the chain's staleness bound
("maxStalenessMs" in the config, default 15 s).`

const retire: Command = {
  summary: 'stop a KEK (or the whole chain) from decrypting; reversible',
  help: `Usage: kms-proxy retire KEK_ID | --chain [--json]

Retires a KEK: data under it no longer decrypts (exit 11), here at once and in every process on
the chain within its staleness bound. The primary cannot be retired: rotate first. Reversible
with \`kms-proxy unretire\`; after the grace period ("destroyGraceMs", default 7 days) \`kms-proxy
destroy\` can delete it for good. The way to check that nothing still needs a KEK: rewrap all
data (\`kms-proxy rewrap DIR\` says how many files it moved off each KEK), retire the KEK, and
watch for exit 11 during the grace period. With --chain, the whole chain stops encrypting and
decrypting (a tenant that left).

${LIFECYCLE_HELP}`,
  options: { ...CONFIG_OPTION, chain: { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: true,
  async run(v, positionals) {
    const id = kekIdArgument('retire', positionals, v.chain === true)
    const { chain, config, head, policy } = await openHeadOnly(v)
    if (id === undefined) {
      const retiredAt = await chain.retireChain()
      const destroyableAt = retiredAt + policy.destroyGraceMs
      if (v.json) out(JSON.stringify({ chain: config.chain, retiredAt, destroyableAt, ...policy }))
      else {
        out(`retired chain "${config.chain}" (${iso(retiredAt)}): it no longer encrypts or decrypts (exit 11), here now and in every process on it within ${age(policy.maxStalenessMs)}`)
        out(`undo         kms-proxy unretire --chain`)
        out(`destroy      kms-proxy destroy --chain, from ${iso(destroyableAt)} (the grace period, ${age(policy.destroyGraceMs)}, after the retirement)`)
      }
      return EXIT.OK
    }
    if (id === head.primary) throw usage(`KEK ${kekId(id)} is the primary KEK: \`kms-proxy rotate\` first, then retire it`)
    const retired = await refusalIsUsage(chain.retireKek(id))
    const destroyableAt = retired.retiredAt + policy.destroyGraceMs
    if (v.json) out(JSON.stringify({ kek: id, kekHex: kekId(id), retiredAt: retired.retiredAt, ...(retired.destroyedAt === undefined ? { destroyableAt } : { destroyedAt: retired.destroyedAt }), ...policy }))
    else if (retired.destroyedAt !== undefined) out(`KEK ${kekId(id)} was destroyed (${iso(retired.destroyedAt)})`)
    else {
      out(`retired KEK ${kekId(id)} of chain "${config.chain}" (${iso(retired.retiredAt)}): data under it no longer decrypts (exit 11), here now and in every process on the chain within ${age(policy.maxStalenessMs)}`)
      out(`undo         kms-proxy unretire ${kekId(id)}`)
      out(`destroy      kms-proxy destroy ${kekId(id)}, from ${iso(destroyableAt)} (the grace period, ${age(policy.destroyGraceMs)}, after the retirement)`)
    }
    return EXIT.OK
  },
}

const unretire: Command = {
  summary: 'make a retired KEK (or chain) decrypt again',
  help: `Usage: kms-proxy unretire KEK_ID | --chain [--json]

Undoes \`kms-proxy retire\`: the KEK decrypts again (with --chain, the chain encrypts and decrypts
again), here at once and elsewhere within the staleness bound. A destroyed KEK or chain cannot
come back (exit 12). A KEK that is not retired is left as it is.

${LIFECYCLE_HELP}`,
  options: { ...CONFIG_OPTION, chain: { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: true,
  async run(v, positionals) {
    const id = kekIdArgument('unretire', positionals, v.chain === true)
    const { chain, config, head } = await openHeadOnly(v)
    const was = id === undefined ? head.chainRetiredAt !== undefined : (head.retired ?? []).some((r) => r.id === id)
    await (id === undefined ? chain.unretireChain() : chain.unretireKek(id))
    const what = id === undefined ? `chain "${config.chain}"` : `KEK ${kekId(id)}`
    if (v.json) out(JSON.stringify({ ...(id === undefined ? { chain: config.chain } : { kek: id, kekHex: kekId(id) }), wasRetired: was }))
    else out(was ? `${what} is no longer retired: it ${id === undefined ? 'encrypts and decrypts' : 'decrypts'} again` : `${what} was not retired; nothing changed`)
    return EXIT.OK
  },
}

const destroy: Command = {
  summary: 'delete a retired KEK (or a retired chain) for good: crypto-shredding',
  help: `Usage: kms-proxy destroy KEK_ID | --chain [--yes] [--json]

Deletes every record of a retired KEK from the store, for good: data under it can no longer be
decrypted by anyone (exit 12). Refused for the primary, for a KEK that is not retired, and for
one retired for less than the grace period ("destroyGraceMs" in the config, default 7 days).
With --chain, every KEK of a retired chain (one chain per tenant: the tenant's data is gone);
the head stays as a tombstone, without keys.

On a terminal it asks you to type the KEK id (or the chain's name) to go on; elsewhere it needs
--yes, and without it changes nothing (exit 2). Run again after a crash, it finishes.

${CONFIG_HELP}
      --chain             the whole chain instead of one KEK
      --yes               do not ask (scripts)
      --json              print what was deleted as JSON

Needs no root-key secret and makes no root-key call.`,
  options: { ...CONFIG_OPTION, chain: { type: 'boolean' }, yes: { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: true,
  async run(v, positionals) {
    const id = kekIdArgument('destroy', positionals, v.chain === true)
    const { chain, config, head, policy } = await openHeadOnly(v)
    const now = Date.now()
    // The refusals core makes again under compare-and-swap, said first in the CLI's words and
    // before anything is asked.
    const retiredAt = id === undefined ? head.chainRetiredAt : (head.retired ?? []).find((r) => r.id === id)?.retiredAt
    const what = id === undefined ? `chain "${config.chain}"` : `KEK ${kekId(id)}`
    const retireCommand = `kms-proxy retire ${id === undefined ? '--chain' : kekId(id)}`
    if (id !== undefined && id === head.primary) throw usage(`${what} is the primary KEK: it cannot be destroyed (\`kms-proxy rotate\`, then retire it first)`)
    if (retiredAt === undefined) throw usage(`${what} is not retired: \`${retireCommand}\` first; it can be destroyed ${age(policy.destroyGraceMs)} after that`)
    if (now - retiredAt < policy.destroyGraceMs) {
      throw usage(`${what} was retired ${age(now - retiredAt)} ago: it can be destroyed after the grace period (${age(policy.destroyGraceMs)}), from ${iso(retiredAt + policy.destroyGraceMs)}`)
    }
    const finished = id === undefined ? head.chainDestroyedAt !== undefined : (head.retired ?? []).some((r) => r.id === id && r.destroyedAt !== undefined)
    if (!v.yes && !finished) {
      const token = id === undefined ? config.chain : kekId(id)
      if (!process.stdin.isTTY) throw usage(`destroying ${what} cannot be undone: pass --yes, or run on a terminal to confirm`)
      note(`kms-proxy destroy: ${what} (retired ${iso(retiredAt)}) will be deleted from the store for good; data under it can never be decrypted again`)
      if (!(await confirmTyped(`Type ${token} to destroy it`, token))) throw usage(`not confirmed: ${what} was not destroyed`)
    }
    const report = await refusalIsUsage(id === undefined ? chain.destroyChain() : chain.destroyKek(id))
    if (v.json) out(JSON.stringify({ ...(id === undefined ? { chain: config.chain } : { kek: id, kekHex: kekId(id) }), keks: report.keks, deleted: report.deleted }))
    else {
      out(`destroyed ${what}${id === undefined ? ` (${plural(report.keks.length, 'KEK')})` : ''}: ${plural(report.deleted, 'KEK record')} deleted from the store; data under ${id === undefined ? 'it' : 'that KEK'} can no longer be decrypted by anyone (exit 12)`)
    }
    return EXIT.OK
  },
}

// ------------------------------------------------------------------------------ k8s-plugin

interface KmsPluginHealthLine {
  healthz: string
  degraded?: string
}

interface KmsPluginModule {
  serveKmsPlugin(options: {
    socket: string
    chain: KeyChain
    rootKey?: RootKey
    roots?: Record<string, RootKey>
    socketMode?: number
    socketGroup?: number | string
    allowAbstractSocket?: boolean
    onHealthChange?: (health: KmsPluginHealthLine) => void
  }): Promise<{ socket: string; close(): Promise<void> }>
  kmsPluginStatus(socket: string, timeoutMs?: number): Promise<{ version: string; healthz: string; key_id: string }>
}

/** @kms-proxy/k8s, an optional package: a clear exit when it is missing or too old for `needs`. */
async function k8sModule(needs: keyof KmsPluginModule): Promise<KmsPluginModule> {
  const specifier = '@kms-proxy/k8s' // a variable, so no bundler or type checker requires it
  let plugin: KmsPluginModule
  try {
    plugin = (await import(specifier)) as KmsPluginModule
  } catch (error) {
    const code = (error as { code?: string }).code
    const message = String((error as Error)?.message ?? '')
    if (code === 'ERR_MODULE_NOT_FOUND' || /Cannot find (package|module)|not found/i.test(message)) {
      throw new CliError(EXIT.NOT_INSTALLED, 'k8s-plugin needs the package @kms-proxy/k8s, which is not installed: npm install @kms-proxy/k8s')
    }
    throw error
  }
  if (typeof plugin[needs] !== 'function') throw new CliError(EXIT.NOT_INSTALLED, `@kms-proxy/k8s is installed but has no ${needs}: update it`)
  return plugin
}

/** `--socket-mode 0660` (octal, as chmod takes it). */
function socketMode(v: unknown): number | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'string' || !/^0?[0-7]{3}$/.test(v)) throw usage('--socket-mode: expected an octal mode such as 0660')
  return Number.parseInt(v, 8)
}

const k8sPlugin: Command = {
  summary: 'serve the Kubernetes KMS v2 plugin on a Unix socket',
  help: `Usage: kms-proxy k8s-plugin --socket PATH [--config FILE]

Serves the Kubernetes KMS v2 gRPC API (Status, Encrypt, Decrypt) on a Unix socket, backed by
the chain of the config. Needs the optional package @kms-proxy/k8s. Stops on SIGINT or SIGTERM.
Status is "ok" while the KEK the next Encrypt uses is loaded, within its age and with uses left;
a root key or store that cannot be reached meanwhile is logged here as "degraded".

${CONFIG_HELP}
      --socket PATH       Unix socket to listen on (e.g. /var/run/kmsplugin/socket.sock), or
                          unix:///@name for a Linux abstract socket (needs --allow-abstract-socket)
      --socket-mode MODE  mode of the socket file, octal (default 0600: kube-apiserver as root)
      --socket-group GRP  group of the socket file, by name or gid (with --socket-mode 0660, for
                          a kube-apiserver that runs as a non-root user in that group)
      --allow-abstract-socket
                          serve an abstract socket: it has no file permissions, so any process in
                          the network namespace can call Decrypt`,
  options: {
    ...CONFIG_OPTION,
    socket: { type: 'string' },
    'socket-mode': { type: 'string' },
    'socket-group': { type: 'string' },
    'allow-abstract-socket': { type: 'boolean' },
  },
  async run(v) {
    const socket = required('socket', v.socket)
    const mode = socketMode(v['socket-mode'])
    const group = str(v['socket-group'])
    if (group !== undefined && group.length === 0) throw usage('--socket-group: expected a group name or gid')
    const plugin = await k8sModule('serveKmsPlugin')
    // With the root keys, the plugin probes each (once an hour) and logs when one cannot be
    // reached, not just when the chain's own last root call failed.
    const { chain, rootKey, roots } = await openNamed(v, { service: true })
    const server = await plugin.serveKmsPlugin({
      socket,
      chain,
      ...(roots ? { roots: Object.fromEntries(roots) } : { rootKey }),
      ...(mode === undefined ? {} : { socketMode: mode }),
      ...(group === undefined ? {} : { socketGroup: group }),
      ...(v['allow-abstract-socket'] ? { allowAbstractSocket: true } : {}),
      onHealthChange: (h) => note(`kms-proxy k8s-plugin: ${h.healthz}${h.degraded ? ` (degraded: ${h.degraded})` : ''}`),
    })
    // Where each root's credentials come from, and that they refresh: never a secret.
    for (const [name, root] of roots ?? new Map([[undefined, rootKey]])) {
      const from = credentialSources.get(root)
      if (from) note(`kms-proxy k8s-plugin: ${name === undefined ? '' : `root "${name}": `}${from}`)
    }
    note(`kms-proxy k8s-plugin: serving chain "${chain.name}" on ${server.socket ?? socket}`)
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve)
      process.once('SIGTERM', resolve)
    })
    await server.close()
    return EXIT.OK
  },
}

// ------------------------------------------------------------------------------ root

/** An unfinished root command in words: `root change to "default-2" (aws-kms)`. */
function describeChange(p: PendingRootChange): string {
  if (p.op === 'remove') return `root remove of "${p.name}"`
  return `root ${p.op} ${p.op === 'change' ? `of "${p.from}" to` : 'of'} "${p.name}" (${p.rootKey!.type})`
}

/** The default name of the root that replaces `from` (core's rule): 'default' → 'default-2' → 'default-3'. */
function nextRootName(from: string): string {
  const m = /^(.*)-(\d{1,6})$/.exec(from)
  const next = m ? `${m[1]}-${Number(m[2]) + 1}` : `${from}-2`
  if (!validRootName(next)) throw usage('--name: give the new root a name (the one derived from --from is too long)')
  return next
}

/** The head's roots; a head from before chains had several roots has one, 'default'. */
async function headRoots(store: KeyStore, chain: string, head: ChainHead): Promise<ChainRoot[]> {
  if (head.roots) return [...head.roots]
  const primary = await store.getKek(chain, head.primary)
  return [{ name: DEFAULT_ROOT, kind: primary?.rootKind ?? 'unknown', state: 'active' }]
}

/**
 * The name in the chain of a `rootKey` config's root: the chain's one root that no unfinished
 * command is adding (a `change` names it).
 */
function singleName(roots: readonly ChainRoot[], pending: PendingRootChange | undefined): string {
  if (pending?.op === 'change') return pending.from!
  const live = roots.filter((r) => r.state !== 'removing' && !(pending && pending.op === 'add' && r.name === pending.name))
  if (live.length !== 1) throw new CliError(EXIT.MISSING, `the chain has ${live.length} roots (${live.map((r) => r.name).join(', ')}) and the config names one: list them under "roots"`)
  return live[0]!.name
}

/** The config with `section` as its roots (rootKey or roots) and no unfinished change; fields keep their order. */
function withRoots(config: CliConfig, section: { rootKey: RootKeyConfig } | { roots: NamedRootKeyConfig[] }): CliConfig {
  const { format, chain, store, rootKey: _k, roots: _r, rootChange: _c, ...rest } = config
  return { format, chain, store, ...section, ...rest }
}

/**
 * Replaces the config by `next` whole or not at all (temporary file, fsync, rename), with its
 * mode and owner, and only if it still reads `expected`: two root commands at once cannot undo
 * each other's config.
 */
async function replaceConfig(file: string, expected: string, next: CliConfig): Promise<string> {
  const info = await stat(file)
  const text = `${JSON.stringify(next, null, 2)}\n`
  await writeWhole(file, new TextEncoder().encode(text), {
    mode: info.mode & 0o777,
    owner: { uid: info.uid, gid: info.gid },
    replace: true,
    beforeRename: async () => {
      if ((await readFile(file, 'utf8')) !== expected) throw new CliError(EXIT.IO, `the config ${file} changed while the root command ran: left as it is; run the command again`)
    },
  })
  return text
}

/** True when the secrets of root `r` are in the environment (no prompt, no call: building a root key calls nothing). */
async function atHand(r: RootKeyConfig, passphraseEnvs: string[], config: CliConfig): Promise<boolean> {
  if (r.type === 'passphrase') return passphraseEnvs.some((e) => process.env[e] !== undefined || process.env[`${e}_FILE`] !== undefined)
  return openRootKey(r, config.plainHttpHosts ? { plainHttpHosts: config.plainHttpHosts } : {}).then(
    () => true,
    () => false,
  )
}

const sum = (a: RootChangeReport, b: RootChangeReport | undefined): Omit<RootChangeReport, 'name'> => ({
  keks: Math.max(a.keks, b?.keks ?? 0),
  wrapped: a.wrapped + (b?.wrapped ?? 0),
  deleted: a.deleted + (b?.deleted ?? 0),
  rootKeyUnwraps: a.rootKeyUnwraps + (b?.rootKeyUnwraps ?? 0),
  rootKeyWraps: a.rootKeyWraps + (b?.rootKeyWraps ?? 0),
})

/** Core's refusal to remove a chain's last root is the user's to fix: a usage error. */
async function lastRootIsUsage<T>(work: Promise<T>): Promise<T> {
  try {
    return await work
  } catch (error) {
    if (error instanceof LimitError || (error as { code?: string })?.code === 'ERR_LIMIT') throw usage((error as Error).message)
    throw error
  }
}

const ROOT_SUBCOMMANDS = ['change', 'add', 'remove', 'list'] as const

const root: Command = {
  summary: "change, add, remove or list the chain's root keys",
  help: `Usage: kms-proxy root change --root TYPE [options] [--from NAME] [--name NAME]
       kms-proxy root add NAME --root TYPE [options]
       kms-proxy root remove NAME
       kms-proxy root list

A chain has one root key or several; any one of them unlocks it, and every new KEK is wrapped
under each. No data byte changes: files name their KEK by id, and the store keeps its wraps.

  change   replaces a root (default: the only one) by a new one: every KEK is wrapped under
           the new root (one unwrap and one wrap per KEK), then the old root's wraps are deleted.
           A new passphrase, a passphrase to a KMS key, one KMS key to another, an HSM to a KMS.
  add      adds a root named NAME (a recovery passphrase, a KMS key in a second region): every
           KEK is wrapped under it too. The config then lists its roots under "roots".
  remove   removes the root NAME and deletes its wraps; needs none of its secrets (a lost root
           can go), refuses the chain's last root.
  list     the chain's roots: name, kind, state (adding, active, removing), and held (its
           secrets are in the environment).

The config is rewritten when the store change has landed (temporary file, rename; its mode
kept). Before the store changes, the config records the command under "rootChange": a command
that was killed or failed finishes when run again, and another root command is refused until it
has (\`root remove\` of the root it was adding gives it up instead).

Secrets: the new root's as for init (a new passphrase from $${SECRET_ENV.newPassphrase}, else
typed twice on a terminal); with several roots, root NAME's passphrase from
$${SECRET_ENV.passphrase}_NAME (NAME upper-cased, other characters as _), and the first
passphrase root's from $${SECRET_ENV.passphrase} too.

${CONFIG_HELP}
      --root TYPE             the new root: passphrase, aws-kms, vault, gcp, azure, pkcs11
${ROOT_HELP}
      --from NAME             change: the root to replace (needed when the chain has several)
      --name NAME             change: the new root's name (default: NAME-2, NAME-3, ...)
      --json                  print what was done as JSON`,
  options: { ...CONFIG_OPTION, ...ROOT_OPTIONS, from: { type: 'string' }, name: { type: 'string' }, json: { type: 'boolean' } },
  positionals: true,
  async run(v, positionals) {
    const [sub, ...args] = positionals
    if (!ROOT_SUBCOMMANDS.includes(sub as (typeof ROOT_SUBCOMMANDS)[number])) throw usage(`expected ${ROOT_SUBCOMMANDS.map((c) => `root ${c}`).join(', ')}`)
    const named = sub === 'add' || sub === 'remove'
    if (args.length !== (named ? 1 : 0)) throw usage(named ? `root ${sub} takes one root name: kms-proxy root ${sub} NAME` : `root ${sub} takes no argument`)
    const given = Object.keys(ROOT_OPTIONS).filter((o) => v[o] !== undefined)
    if ((sub === 'remove' || sub === 'list') && given.length > 0) throw usage(`--${given[0]} applies to root change and root add`)
    if (sub !== 'change' && (v.from !== undefined || v.name !== undefined)) throw usage('--from and --name apply to root change')
    if (named && !validRootName(args[0])) throw usage('a root name is 1 to 64 letters, digits, ".", "_" or "-"')
    if ((sub === 'change' || sub === 'add') && v.root === undefined) throw usage(`--root is required: the new root's type (${ROOT_TYPES.join(', ')})`)

    const { path: file, implicit } = resolveConfig(str(v.config))
    const config = await loadConfig(file, { implicit })
    const original = await readFile(file, 'utf8')
    const storeFile = storeFilePath(config, file)
    if (storeFile) await storeFileExists(storeFile, file, config.chain)
    const store = await openStore(config, file)
    const head = (await chainHead(store, config.chain)).value
    const roots = await headRoots(store, config.chain, head)
    const pending = config.rootChange
    const single = config.roots ? undefined : singleName(roots, pending)
    const names = config.roots ? config.roots.map((r) => r.name) : [single!]

    if (sub === 'list') return listRoots(v, config, roots, single)

    // ---- what this command asks for, or the unfinished one it repeats
    let wanted: PendingRootChange
    let newConfig: RootKeyConfig | undefined
    if (sub === 'remove') {
      const name = args[0]!
      if (!names.includes(name) && !roots.some((r) => r.name === name)) throw usage(`the chain has no root named "${name}" (it has ${names.join(', ')})`)
      if (names.every((n) => n === name)) throw usage(`"${name}" is the chain's last root: a chain keeps at least one (root add another first, or root change it)`)
      wanted = { op: 'remove', name }
    } else {
      newConfig = rootKeyConfig(v)
      if (sub === 'add') wanted = { op: 'add', name: args[0]!, rootKey: newConfig }
      else {
        const from = str(v.from) ?? pending?.from ?? (names.length === 1 ? names[0]! : undefined)
        if (from === undefined) throw usage(`the chain has several roots (${names.join(', ')}): --from NAME says which to replace`)
        if (!validRootName(from)) throw usage('--from: a root name is 1 to 64 letters, digits, ".", "_" or "-"')
        const name = str(v.name) ?? pending?.name ?? nextRootName(from)
        if (!validRootName(name)) throw usage('--name: a root name is 1 to 64 letters, digits, ".", "_" or "-"')
        wanted = { op: 'change', from, name, rootKey: newConfig }
      }
    }
    // `root remove` of the root an unfinished add or change was adding gives that command up.
    const abandons = pending !== undefined && pending.op !== 'remove' && wanted.op === 'remove' && wanted.name === pending.name
    const resumed = pending !== undefined && !abandons
    if (pending && !abandons && JSON.stringify(pending) !== JSON.stringify(wanted)) {
      throw usage(`the config has an unfinished ${describeChange(pending)}: run that command again to finish it first`)
    }
    if (!resumed && wanted.op !== 'remove') {
      if (wanted.op === 'change' && !names.includes(wanted.from!)) throw usage(`the config has no root named "${wanted.from}" (it has ${names.join(', ')})`)
      if (wanted.name === wanted.from) throw usage('--name: the new root needs a name of its own')
      if (names.includes(wanted.name) || roots.some((r) => r.name === wanted.name)) throw usage(`the chain already has a root named "${wanted.name}"`)
    }

    // ---- every secret before anything is written: a missing one changes nothing
    const held = config.roots
      ? await openRoots(config, wanted.op === 'remove' ? { except: wanted.name } : {})
      : new Map([[single!, await openRootKey(config.rootKey!, config.plainHttpHosts ? { plainHttpHosts: config.plainHttpHosts } : {})]])
    const newRoot = newConfig
      ? await openRootKey(newConfig, {
          confirm: true,
          passphrase: { env: SECRET_ENV.newPassphrase, label: 'New passphrase' },
          command: `root ${sub}`,
          ...(config.plainHttpHosts ? { plainHttpHosts: config.plainHttpHosts } : {}),
        })
      : undefined
    let extraUnwraps = 0
    if (resumed && newRoot) {
      // A rerun must bring the root the first run began with: KEKs half wrapped under one
      // passphrase and half under another would leave no single secret that opens them all.
      const earlier = (await store.listKeks(config.chain)).find((r) => (r.root ?? DEFAULT_ROOT) === wanted.name)
      if (earlier) {
        extraUnwraps++
        await newRoot.unwrapKek(earlier.wrapped, kekAad(config.chain, earlier.id)).catch((error: unknown) => {
          if ((error as { retryable?: boolean })?.retryable) throw error
          throw new CliError(EXIT.ROOT_KEY, `the new root does not open the wraps the unfinished command already wrote under "${wanted.name}": give the same ${newConfig!.type === 'passphrase' ? 'passphrase' : 'key and credentials'} as then`)
        })
      }
    }

    // ---- the config it leaves
    const namedNew = (name: string): NamedRootKeyConfig => ({ name, ...newConfig! })
    const current: NamedRootKeyConfig[] = config.roots ?? [{ name: single!, ...config.rootKey! }]
    const next =
      wanted.op === 'change'
        ? config.roots
          ? withRoots(config, { roots: current.map((r) => (r.name === wanted.from ? namedNew(wanted.name) : r)) })
          : withRoots(config, { rootKey: newConfig! })
        : wanted.op === 'add'
          ? withRoots(config, { roots: [...current, namedNew(wanted.name)] })
          : withRoots(config, config.roots ? { roots: current.filter((r) => r.name !== wanted.name) } : { rootKey: config.rootKey! })

    // ---- record the command, change the store, then write the result
    const recorded = pending ? original : await replaceConfig(file, original, { ...config, rootChange: wanted })
    // A rerun holds the new root too: the old one may have no wraps left to open anything with.
    if (resumed && newRoot) held.set(wanted.name, newRoot)
    const chain = await KeyChain.open(chainOptions(config, { roots: held }, store))
    let report: Omit<RootChangeReport, 'name'>
    if (wanted.op === 'remove') report = await lastRootIsUsage(chain.removeRoot(wanted.name))
    else {
      const added = await chain.addRoot(wanted.name, newRoot!)
      report = sum(added, wanted.op === 'change' ? await lastRootIsUsage(chain.removeRoot(wanted.from!)) : undefined)
    }
    report = { ...report, rootKeyUnwraps: report.rootKeyUnwraps + extraUnwraps }
    await replaceConfig(file, recorded, next)

    if (v.json) {
      out(JSON.stringify({ op: wanted.op, ...(wanted.from ? { from: wanted.from } : {}), name: wanted.name, resumed, ...(abandons ? { abandoned: pending } : {}), ...report, dataBytesWritten: 0, config: file }))
      return EXIT.OK
    }
    const kind = newConfig ? ` (${newConfig.type})` : ''
    if (resumed) out(`finished an unfinished ${describeChange(wanted)}`)
    if (abandons) out(`gave up the unfinished ${describeChange(pending!)}`)
    if (wanted.op === 'change') {
      const old = current.find((r) => r.name === wanted.from)
      out(`changed root "${wanted.from}"${old ? ` (${old.type})` : ''} of chain "${config.chain}" to "${wanted.name}"${kind}`)
      out(`KEKs         ${report.wrapped.toLocaleString('en-US')} re-wrapped under "${wanted.name}"; ${plural(report.deleted, 'wrap')} under "${wanted.from}" deleted`)
    } else if (wanted.op === 'add') {
      out(`added root "${wanted.name}"${kind} to chain "${config.chain}"`)
      out(`KEKs         ${report.wrapped.toLocaleString('en-US')} wrapped under "${wanted.name}"; ${plural(report.deleted, 'wrap')} deleted`)
    } else {
      out(`removed root "${wanted.name}" from chain "${config.chain}"`)
      out(`KEKs         ${report.wrapped.toLocaleString('en-US')} re-wrapped; ${plural(report.deleted, 'wrap')} under "${wanted.name}" deleted`)
    }
    out(`root calls   ${plural(report.rootKeyUnwraps, 'unwrap')}, ${plural(report.rootKeyWraps, 'wrap')}`)
    out(`data         0 bytes written: files encrypted under the chain name their KEK by id and the store holds its wraps, so no file needs \`kms-proxy rewrap\``)
    const where = next.roots ? `roots ${describeRoots(next)}` : `the ${next.rootKey!.type} root`
    out(`config       ${file} now names ${where}`)
    if (newConfig?.type === 'passphrase' && next.rootKey) out(`             the new passphrase is now the one in ${SECRET_ENV.passphrase}`)
    return EXIT.OK
  },
}

/** `root list`: the head's roots, each with the config's type and whether its secrets are at hand. */
async function listRoots(v: Record<string, unknown>, config: CliConfig, roots: ChainRoot[], single: string | undefined): Promise<number> {
  const pending = config.rootChange
  const firstPassphrase = configRoots(config).find((r) => r.root.type === 'passphrase')?.name
  const rows = []
  for (const r of roots) {
    const own = config.roots ? config.roots.find((c) => c.name === r.name) : r.name === single ? config.rootKey : undefined
    const added = !own && pending?.rootKey && pending.name === r.name ? pending.rootKey : undefined
    const envs = own
      ? config.roots
        ? [namedPassphraseEnv(r.name), ...(r.name === firstPassphrase ? [SECRET_ENV.passphrase] : [])]
        : [SECRET_ENV.passphrase]
      : [SECRET_ENV.newPassphrase]
    const source = own ?? added
    const held = source ? await atHand(source, envs, config) : false
    rows.push({ name: r.name, kind: r.kind, state: r.state, held, ...(source ? { type: source.type } : {}) })
  }
  if (v.json) {
    out(JSON.stringify({ roots: rows, ...(pending ? { rootChange: pending } : {}) }))
    return EXIT.OK
  }
  const table = [['NAME', 'KIND', 'STATE', 'HELD'], ...rows.map((r) => [r.name, r.kind, r.state, r.held ? 'held' : 'no'])]
  const widths = [0, 1, 2].map((i) => Math.max(...table.map((row) => row[i]!.length)))
  for (const row of table) out(row.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell)).join('  '))
  if (pending) out(`unfinished: ${describeChange(pending)}: run the same \`kms-proxy root ${pending.op}\` again to finish`)
  return EXIT.OK
}

export const COMMANDS: Record<string, Command> = {
  init,
  encrypt,
  decrypt,
  rotate,
  status,
  rewrap,
  retire,
  unretire,
  destroy,
  root,
  clean,
  'k8s-plugin': k8sPlugin,
}

export function parse(command: Command, args: string[]): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options: command.options, allowPositionals: command.positionals === true, strict: true })
    return { values: values as Record<string, string | boolean | string[] | undefined>, positionals }
  } catch (error) {
    throw usage((error as Error).message)
  }
}
