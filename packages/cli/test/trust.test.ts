/**
 * The config trust model, with real processes: the attacker controls a config file (a cloned
 * repository, an unpacked archive, a folder others can write), not the environment or the
 * command line.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutWeakKdfWarning, type Result } from './helpers.js'

const PASSPHRASE = 'trust model passphrase'
const NOBODY = 65_534
let bundle: string
let work: ReturnType<typeof tempDir>
let chainDir: string

/** The CLI with the tests' weak-KDF opt-in, its warning left out of stderr unless `raw`. */
async function kp(cwd: string, args: string[], env: Record<string, string | undefined> = {}, raw = false): Promise<Result> {
  const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd, env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, ...env } })
  return raw ? r : { ...r, stderr: withoutWeakKdfWarning(r.stderr) }
}

/** A folder holding `config` as kms-proxy.json (mode 0644), the way init leaves it. */
function folderWith(name: string, config: object): string {
  const dir = join(work.dir, name)
  mkdirSync(dir)
  writeFileSync(join(dir, 'kms-proxy.json'), JSON.stringify(config), { mode: 0o644 })
  return dir
}

let baseConfig: Record<string, unknown>

beforeAll(async () => {
  work = tempDir('trust')
  bundle = await bundleCli(work.dir)
  chainDir = join(work.dir, 'chain')
  mkdirSync(chainDir)
  const init = await kp(chainDir, ['init', ...FAST_KDF])
  expect(init.code, init.stderr).toBe(EXIT.OK)
  baseConfig = JSON.parse(readFileSync(join(chainDir, 'kms-proxy.json'), 'utf8'))
  // Every other config below names this chain's store by its absolute path.
  baseConfig.store = { type: 'file', path: join(chainDir, 'kms-proxy-keys.json') }
})
afterAll(() => work.cleanup())

describe('which config files are trusted', () => {
  it('a config writable by group or others, or in a folder anyone may replace it in, is refused: exit 3, the file and the reason', async () => {
    const dir = folderWith('writable', baseConfig)
    const file = join(dir, 'kms-proxy.json')
    const explicit = ['status', '--config', file]
    expect((await kp(dir, explicit)).code).toBe(EXIT.OK)
    for (const mode of [0o666, 0o664, 0o646]) {
      chmodSync(file, mode)
      const r = await kp(dir, explicit)
      expect(r.code, mode.toString(8)).toBe(EXIT.MISSING)
      expect(r.stderr).toBe(`kms-proxy status: config ${file}: writable by other users (mode ${mode.toString(8)}): chmod go-w it\n`)
    }
    chmodSync(file, 0o644)
    chmodSync(dir, 0o777)
    const folder = await kp(dir, explicit)
    expect(folder.code).toBe(EXIT.MISSING)
    expect(folder.stderr).toBe(`kms-proxy status: config ${file}: its folder ${dir} is writable by everyone without the sticky bit, so anyone may replace the file\n`)
    chmodSync(dir, 0o1777) // like /tmp: others may add files but not replace ours
    expect((await kp(dir, explicit)).code).toBe(EXIT.OK)
    chmodSync(dir, 0o755)
  })

  it('a config in a 0777 folder on a read-only mount (how Kubernetes mounts a ConfigMap) is accepted; the same folder writable is refused', async () => {
    const source = folderWith('configmap-source', baseConfig)
    const mount = join(work.dir, 'configmap')
    mkdirSync(mount)
    // A private mount namespace (unshare -m): the tmpfs goes away with the process.
    const inMount = (readOnly: boolean) =>
      spawnCollect('unshare', ['-m', 'sh', '-c', `mount -t tmpfs -o mode=0777 none "$1" && cp "$2" "$1/kms-proxy.json" && ${readOnly ? 'mount -o remount,ro "$1" && ' : ''}exec "$3" "$4" status --config "$1/kms-proxy.json"`, 'sh', mount, join(source, 'kms-proxy.json'), process.execPath, bundle], {
        cwd: work.dir,
        env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV },
      })
    const writable = await inMount(false)
    expect(writable.code, writable.stderr).toBe(EXIT.MISSING)
    expect(writable.stderr).toMatch(/its folder .*configmap is writable by everyone without the sticky bit/)
    const readOnly = await inMount(true)
    expect(readOnly.code, readOnly.stderr).toBe(EXIT.OK)
    expect(readOnly.stdout.toString()).toMatch(/^chain {8}default$/m)
  })

  it('a config owned by another user is refused (root running a config chowned to nobody)', async () => {
    const dir = folderWith('other-owner', baseConfig)
    const file = join(dir, 'kms-proxy.json')
    chownSync(file, NOBODY, NOBODY)
    const r = await kp(dir, ['status', '--config', file])
    expect(r.code).toBe(EXIT.MISSING)
    expect(r.stderr).toBe(`kms-proxy status: config ${file}: owned by uid ${NOBODY}, not by you (uid 0) or root\n`)
    expect(r.stdout.length).toBe(0)
  })

  it('a config found in the working folder is named on stderr, and may not reach the network until named explicitly', async () => {
    const local = await kp(chainDir, ['status'])
    expect(local.code, local.stderr).toBe(EXIT.OK)
    expect(local.stderr).toBe(`kms-proxy: using ${join(chainDir, 'kms-proxy.json')} found in the working folder (name a config with --config or KMS_PROXY_CONFIG)\n`)
    const named = await kp(chainDir, ['status', '--config', 'kms-proxy.json'])
    expect(named.stderr).toBe('')
    expect(named.stdout.toString()).toMatch(new RegExp(`^config {7}${join(chainDir, 'kms-proxy.json').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\n`)) // status names it too
    const viaEnv = await kp(work.dir, ['status'], { KMS_PROXY_CONFIG: join(chainDir, 'kms-proxy.json') })
    expect(viaEnv.stderr).toBe('')

    const remote = folderWith('implicit-vault', { ...baseConfig, rootKey: { type: 'vault', address: 'https://vault.example.invalid', key: 'k' } })
    const r = await kp(remote, ['status', '--check'], { VAULT_TOKEN: 'hvs.not-to-be-sent' })
    expect(r.code).toBe(EXIT.MISSING)
    expect(r.stderr).toMatch(/^kms-proxy status: config .*implicit-vault\/kms-proxy\.json was found in the working folder, and such a config may reach no network service \(it names a vault root key\): pass --config kms-proxy\.json or set KMS_PROXY_CONFIG to use it\n$/)
    expect(r.stderr).not.toContain('hvs.')
  })
})

describe('plain http and KDF cost', () => {
  let server: Server
  let requests: string[]
  let port: number
  beforeAll(async () => {
    requests = []
    server = createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`)
      res.writeHead(503).end()
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    port = (server.address() as { port: number }).port
  })
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())))

  it('a credential is never sent over plain http to a host outside loopback: refused before any request, unless plainHttpHosts names the host', async () => {
    // 0.0.0.0 reaches this machine's 127.0.0.1 listener on Linux, but is not a loopback name:
    // a request that slipped through the check would be counted.
    const away = `http://0.0.0.0:${port}`
    const cases: Array<[string, object, Record<string, string>, string]> = [
      ['etcd', { store: { type: 'etcd', endpoints: [away], username: 'root' } }, { KMS_PROXY_ETCD_PASSWORD: 'etcd-secret-pw' }, 'store.endpoints[0]'],
      ['etcd-invalid', { store: { type: 'etcd', endpoints: ['https://etcd.example.invalid:2379', 'http://example.invalid:2379'], username: 'root' } }, { KMS_PROXY_ETCD_PASSWORD: 'etcd-secret-pw' }, 'store.endpoints[1]'],
      ['vault', { rootKey: { type: 'vault', address: away, key: 'k' } }, { VAULT_TOKEN: 'hvs.secret' }, 'rootKey.address'],
      ['azure', { rootKey: { type: 'azure', vaultUrl: away, keyName: 'k' } }, { AZURE_ACCESS_TOKEN: 'azure-secret' }, 'rootKey.vaultUrl'],
      ['gcp', { rootKey: { type: 'gcp', keyName: 'projects/p/locations/l/keyRings/r/cryptoKeys/k', endpoint: away } }, { GCP_ACCESS_TOKEN: 'gcp-secret' }, 'rootKey.endpoint'],
      ['aws', { rootKey: { type: 'aws-kms', keyId: 'k', region: 'us-east-1', endpoint: away } }, { AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'aws-secret' }, 'rootKey.endpoint'],
      ['bridge', { rootKey: { type: 'pkcs11', url: away } }, { KMS_PROXY_PKCS11_TOKEN: 'bridge-secret' }, 'rootKey.url'],
    ]
    for (const [name, change, env, field] of cases) {
      const dir = folderWith(`http-${name}`, { ...baseConfig, ...change })
      const r = await kp(dir, ['status', '--check', '--config', 'kms-proxy.json'], env)
      expect(r.code, `${name}: ${r.stderr}`).toBe(EXIT.MISSING)
      expect(r.stderr, name).toMatch(new RegExp(`^kms-proxy status: config .*http-${name}/kms-proxy\\.json: ${field.replace(/[[\]]/g, '\\$&')}: plain http to [^ ]+ would expose credentials and keys on the network; use https:, or name the host in plainHttpHosts\\n$`))
      for (const secret of Object.values(env)) expect(r.stderr).not.toContain(secret)
    }
    const initDir = join(work.dir, 'http-init')
    mkdirSync(initDir)
    const initArgs = ['init', '--store', 'etcd', '--etcd-endpoints', away, '--etcd-username', 'root', ...FAST_KDF]
    const init = await kp(initDir, initArgs, { KMS_PROXY_ETCD_PASSWORD: 'etcd-secret-pw' })
    expect(init.code).toBe(EXIT.USAGE)
    expect(init.stderr).toMatch(/^kms-proxy init: store\.endpoints\[0\]: plain http to 0\.0\.0\.0 would expose credentials and keys on the network; use https:, or name the host with --plain-http-host\n/)
    expect(requests).toEqual([])
    const initOptIn = await kp(initDir, [...initArgs, '--plain-http-host', '0.0.0.0'], { KMS_PROXY_ETCD_PASSWORD: 'etcd-secret-pw' })
    expect(initOptIn.code, initOptIn.stderr).toBe(EXIT.STORE) // it reached the (fake) server
    expect(requests.splice(0)).toContain('POST /v3/auth/authenticate')
    expect(existsSync(join(initDir, 'kms-proxy.json'))).toBe(false)
    // The explicit opt-in: the host named in plainHttpHosts is contacted (and answers 503 here).
    const optIn = folderWith('http-opt-in', { ...baseConfig, store: { type: 'etcd', endpoints: [away], username: 'root' }, plainHttpHosts: ['0.0.0.0'] })
    const r = await kp(optIn, ['status', '--config', 'kms-proxy.json'], { KMS_PROXY_ETCD_PASSWORD: 'etcd-secret-pw' })
    expect(r.code, r.stderr).toBe(EXIT.STORE)
    expect(requests.length).toBeGreaterThan(0)
    expect(requests[0]).toBe('POST /v3/auth/authenticate')
  })

  it('PBKDF2 below the library default (600,000) is refused, in init and in any config, unless KMS_PROXY_ALLOW_WEAK_KDF=1 (which warns)', async () => {
    const strong = { KMS_PROXY_ALLOW_WEAK_KDF: undefined }
    const weakInit = join(work.dir, 'weak-init')
    mkdirSync(weakInit)
    const init = await kp(weakInit, ['init', '--iterations', '1000'], strong)
    expect(init.code).toBe(EXIT.USAGE)
    expect(init.stderr).toMatch(/^kms-proxy init: --iterations 1000 is below 600,000 \(the passphrase package's default\); set KMS_PROXY_ALLOW_WEAK_KDF=1 to allow it \(tests only\)\n/)
    const refused = await kp(chainDir, ['status', '--config', 'kms-proxy.json'], strong)
    expect(refused.code).toBe(EXIT.MISSING)
    expect(refused.stderr).toBe(`kms-proxy status: config ${join(chainDir, 'kms-proxy.json')}: PBKDF2 with 1000 iterations is below 600,000 (the passphrase package's default): raise "iterations" (existing KEKs stay readable) or set KMS_PROXY_ALLOW_WEAK_KDF=1\n`)
    const allowed = await kp(chainDir, ['status', '--config', 'kms-proxy.json'], {}, true)
    expect(allowed.code).toBe(EXIT.OK)
    expect(allowed.stderr).toBe('kms-proxy: warning: KMS_PROXY_ALLOW_WEAK_KDF=1 accepts PBKDF2 with 1000 iterations (below 600,000)\n')
  })
})
