/**
 * Credentials that outlive their tokens. The real `kms-proxy k8s-plugin` process (the built
 * packages installed as users install them) on an AWS KMS root whose credentials come from web
 * identity, against moto's STS and KMS behind a proxy that enforces what moto does not: each STS
 * answer's Expiration (a few seconds here), and only the newest service-account token. And a
 * Vault root whose token file is rewritten while the plugin runs, behind a gate that accepts only
 * the current token.
 */
import { createServer, type Server } from 'node:http'
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startCheckingFront, type CheckingFront } from '../../kms/test/fakes/checking-front.ts'
import { startFakeAzureKeyVault } from '../../kms/test/fakes/azure.ts'
import { startFakeGcpKms } from '../../kms/test/fakes/gcp.ts'
import { createLedger, startAzureIdentityFake, startContainerFake, startGcpMetadataFake, startImdsFake, type MetadataFake } from '../../kms/test/fakes/metadata.ts'
import { startFakeVault, type FakeVault } from '../../kms/test/fakes/vault.ts'
import { fileSecret } from '../src/secret-file.ts'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir, withoutNotes, type Result } from './helpers.js'
import { startMoto, type Moto } from './moto.ts'
import { installApp, startPlugin, type PluginApp, type RunningPlugin, type Sealed } from './plugin.js'
import { startStsExpiryProxy, type StsExpiryProxy } from './sts-expiry-proxy.ts'

const PASSPHRASE = 'credentials test passphrase'
let work: ReturnType<typeof tempDir>
let installed: PluginApp
let bundle: string
const running: RunningPlugin[] = []

beforeAll(async () => {
  work = tempDir('credentials')
  installed = installApp(work.dir)
  bundle = await bundleCli(work.dir)
}, 60_000)
afterAll(() => {
  for (const p of running) p.proc.kill('SIGKILL')
  work?.cleanup()
})

/** Writes `text` to `path` as an agent does: a new file renamed over the old one. */
function replaceFile(path: string, text: string): void {
  writeFileSync(`${path}.new`, text)
  renameSync(`${path}.new`, path)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('a secret in a file', () => {
  it('is read again when the file changes: rewritten in place, replaced by rename, or swapped as a Kubernetes Secret volume swaps its ..data link', async () => {
    const dir = join(work.dir, 'secret-file')
    mkdirSync(dir)
    const path = join(dir, 'token')
    writeFileSync(path, 'first\n')
    const secret = fileSecret(path, 'VAULT_TOKEN_FILE')
    expect(await secret()).toBe('first') // the trailing line break dropped
    expect(await secret()).toBe('first')
    writeFileSync(path, 'second-token')
    expect(await secret()).toBe('second-token')
    replaceFile(path, 'third')
    expect(await secret()).toBe('third')

    // A Secret volume: token -> ..data/token, ..data -> ..2026_v1; an update makes ..2026_v2 and
    // renames a new ..data link over the old one.
    const volume = join(dir, 'volume')
    mkdirSync(join(volume, '..v1'), { recursive: true })
    writeFileSync(join(volume, '..v1/token'), 'volume-one')
    symlinkSync('..v1', join(volume, '..data'))
    symlinkSync('..data/token', join(volume, 'token'))
    const mounted = fileSecret(join(volume, 'token'), 'GCP_ACCESS_TOKEN_FILE')
    expect(await mounted()).toBe('volume-one')
    mkdirSync(join(volume, '..v2'))
    writeFileSync(join(volume, '..v2/token'), 'volume-two') // same length as before
    symlinkSync('..v2', join(volume, '..data_tmp'))
    renameSync(join(volume, '..data_tmp'), join(volume, '..data'))
    rmSync(join(volume, '..v1'), { recursive: true })
    expect(await mounted()).toBe('volume-two')

    // A missing file is a retryable root-key error naming the variable, never a content; an empty one is not retryable.
    rmSync(path)
    await expect(secret()).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', retryable: true, message: expect.stringContaining('VAULT_TOKEN_FILE: cannot read') })
    writeFileSync(path, '\n')
    await expect(secret()).rejects.toMatchObject({ code: 'ERR_ROOT_KEY', retryable: false })
    expect(String(secret)).toBe('[VAULT_TOKEN_FILE]')
  })
})

/**
 * A gate in front of the fake Vault: it accepts only the current token (a rotated one is revoked)
 * and relays with the fake's own; every request is recorded with the token it carried.
 */
async function startVaultGate(upstream: string, upstreamToken: string, first: string) {
  let accepted = first
  const seen: Array<{ token: string; path: string; status: number }> = []
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const token = String(req.headers['x-vault-token'] ?? '')
    if (token !== accepted) {
      seen.push({ token, path: req.url ?? '', status: 403 })
      res.writeHead(403, { 'content-type': 'application/json' }).end(JSON.stringify({ errors: ['permission denied'] }))
      return
    }
    // Recorded in the order requests arrive, not the order they are answered.
    const entry = { token, path: req.url ?? '', status: 0 }
    seen.push(entry)
    const answer = await fetch(new URL(req.url ?? '/', upstream), { method: req.method ?? 'POST', headers: { 'content-type': 'application/json', 'x-vault-token': upstreamToken }, body: new Uint8Array(Buffer.concat(chunks)) })
    entry.status = answer.status
    res.writeHead(answer.status, { 'content-type': 'application/json' }).end(Buffer.from(await answer.arrayBuffer()))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    seen,
    accept: (token: string) => void (accepted = token),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

describe('k8s-plugin on a Vault root with VAULT_TOKEN_FILE', () => {
  let vault: FakeVault
  beforeAll(async () => {
    vault = await startFakeVault({ token: 'hvs.upstream', keys: ['kp'] })
  })
  afterAll(() => vault?.close())

  it('reads the token file again when it changes: after the token rotates, the next rotation uses the new token, and the revoked one is never sent', async () => {
    const T1 = 'hvs.first-token-of-the-plugin'
    const T2 = 'hvs.second-token-after-rotation'
    const gate = await startVaultGate(vault.url, 'hvs.upstream', T1)
    try {
      const dir = join(installed.app, 'vault-file')
      mkdirSync(dir)
      const tokenFile = join(dir, 'vault-token')
      writeFileSync(tokenFile, `${T1}\n`, { mode: 0o600 })
      const config = join(dir, 'kms-proxy.json')
      const env = { KMS_PROXY_CONFIG: config, VAULT_TOKEN_FILE: tokenFile }
      const init = await spawnCollect(process.execPath, [installed.bin, 'init', '--chain', 'vt', '--store-path', join(dir, 'keys.json'), '--root', 'vault', '--vault-address', gate.url, '--vault-key', 'kp', '--max-wraps-per-kek', '4'], { cwd: dir, env })
      expect(init.code, init.stderr).toBe(EXIT.OK)

      const plugin = await startPlugin(installed, join(dir, 'p.sock'), env)
      running.push(plugin)
      expect(plugin.stderr()).toContain('Vault token from VAULT_TOKEN_FILE (re-read when it changes)')
      const sealed: Sealed[] = []
      for (let i = 0; i < 3; i++) sealed.push(await plugin.roundTrip())
      const before = sealed.at(-1)!.key_id

      // The DEK pool refills in the background (rotations: Vault calls); a request it sent with
      // the old token before the token changes is not what this test is about, so let it finish.
      for (let seen = -1, i = 0; i < 80 && gate.seen.length !== seen; i++) {
        seen = gate.seen.length
        await sleep(500)
      }
      // The token rotates: the agent writes the new one, Vault revokes the old one.
      replaceFile(tokenFile, `${T2}\n`)
      gate.accept(T2)
      const switched = gate.seen.length
      let rotated = false
      for (let i = 0; i < 40 && !(rotated && gate.seen.slice(switched).some((s) => s.token === T2 && s.status === 200)); i++) {
        const s = await plugin.roundTrip()
        sealed.push(s)
        rotated ||= s.key_id !== before
      }
      expect(rotated, 'the plugin rotated after the token changed').toBe(true)
      const after = gate.seen.slice(switched)
      expect(after.filter((s) => s.token === T2 && s.status === 200).length).toBeGreaterThan(0)
      expect(after.filter((s) => s.token !== T2), 'requests with the revoked token').toEqual([])
      for (const s of sealed) await plugin.decrypt(s)
      await plugin.stop()
      for (const secret of [T1, T2]) expect(plugin.stderr()).not.toContain(secret)
    } finally {
      await gate.close()
    }
  }, 60_000)
})

describe('k8s-plugin on AWS KMS with web identity (moto STS and KMS behind an expiry-checking proxy)', () => {
  const REGION = 'eu-central-1'
  const ROLE = 'arn:aws:iam::123456789012:role/kms-proxy-plugin'
  const LIFETIME_MS = 4_000
  let moto: Moto
  let proxy: StsExpiryProxy
  let keyId: string

  beforeAll(async () => {
    moto = await startMoto({ accessKeyId: 'AKIACREDENTIALSTEST0', secretAccessKey: 'credentials-test-secret' }, REGION, 60_000)
    keyId = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
    proxy = await startStsExpiryProxy(moto.endpoint, { lifetimeMs: LIFETIME_MS, token: 'sa-token-0' })
  }, 90_000)
  afterAll(async () => {
    await proxy?.close()
    moto?.close()
  })

  it('two plugins keep working across three credential expiries: each refreshes before its credentials expire (nothing refused), re-reads the rotated token file, rotates and unlocks a KEK cold after each expiry', async () => {
    const dir = join(installed.app, 'web-identity')
    mkdirSync(dir)
    const tokenFile = join(dir, 'token')
    writeFileSync(tokenFile, 'sa-token-0\n')
    const store = join(dir, 'keys.json')
    // Plugin A takes its source from the environment (AWS's order: no static keys, so web
    // identity); plugin B, on the same chain, from its config's "credentials".
    const configA = join(dir, 'a.json')
    const envA = { KMS_PROXY_CONFIG: configA, AWS_WEB_IDENTITY_TOKEN_FILE: tokenFile, AWS_ROLE_ARN: ROLE, AWS_ROLE_SESSION_NAME: 'plugin-a', AWS_ENDPOINT_URL_STS: proxy.endpoint }
    const init = await spawnCollect(process.execPath, [installed.bin, 'init', '--chain', 'aws', '--store-path', store, '--root', 'aws-kms', '--aws-key-id', keyId, '--aws-region', REGION, '--endpoint', proxy.endpoint, '--max-wraps-per-kek', '4'], { cwd: dir, env: { ...envA, AWS_ROLE_SESSION_NAME: 'init' } })
    expect(init.code, init.stderr).toBe(EXIT.OK)
    const config = JSON.parse(readFileSync(configA, 'utf8'))
    const configB = join(dir, 'b.json')
    writeFileSync(configB, JSON.stringify({ ...config, rootKey: { ...config.rootKey, credentials: { source: 'web-identity', roleArn: ROLE, tokenFile, roleSessionName: 'plugin-b', stsEndpoint: proxy.endpoint } } }), { mode: 0o644 })

    const a = await startPlugin(installed, join(dir, 'a.sock'), envA)
    running.push(a)
    const b = await startPlugin(installed, join(dir, 'b.sock'), { KMS_PROXY_CONFIG: configB })
    running.push(b)
    expect(a.stderr()).toContain(`AWS credentials from web identity (AssumeRoleWithWebIdentity as ${ROLE}, token read from ${tokenFile} at each refresh)`)
    const sealed: Sealed[] = [await a.roundTrip(), await b.roundTrip()]
    const issuedTo = (session: string) => proxy.issued.filter((i) => i.session === session)
    const stsCallsAtStart = { a: issuedTo('plugin-a').length, b: issuedTo('plugin-b').length }
    /** A successful KMS call of `session` at or after `t`, signed with credentials issued at or after `t`. */
    const freshCall = (session: string, action: string, t: number) =>
      proxy.exchanges.some((e) => e.service === 'kms' && e.session === session && e.action === action && e.at >= t && e.status === 200 && proxy.issued.find((i) => i.accessKeyId === e.accessKeyId)!.issuedAt >= t)

    for (let round = 1; round <= 3; round++) {
      // Kubernetes rotates the projected token; STS now accepts only the new one.
      replaceFile(tokenFile, `sa-token-${round}\n`)
      proxy.setToken(`sa-token-${round}`)
      // Wait until every credential either plugin holds has expired.
      const expired = Math.max(...proxy.issued.map((i) => i.expiresAt)) + 100
      await sleep(Math.max(0, expired - Date.now()))
      const t = Date.now()
      const keyIdBefore = sealed.at(-2)!.key_id
      let done = false
      for (let i = 0; i < 60 && !done; i++) {
        const s = await a.roundTrip() // encrypts; A's DEK pool rotates every 4 uses (GenerateDataKey)
        sealed.push(s)
        expect(Buffer.compare(await b.decrypt(s), await a.decrypt(s))).toBe(0) // B unlocks A's new KEKs cold (KMS Decrypt)
        sealed.push(await b.roundTrip())
        done = s.key_id !== keyIdBefore && freshCall('plugin-a', 'GenerateDataKey', t) && freshCall('plugin-b', 'Decrypt', t) && freshCall('plugin-b', 'GenerateDataKey', t)
      }
      expect(done, `round ${round}: both plugins rotated and B unlocked a KEK cold, with credentials issued after the expiry`).toBe(true)
      for (const session of ['plugin-a', 'plugin-b']) expect(issuedTo(session).at(-1)!.token, `${session} sent the rotated token`).toBe(`sa-token-${round}`)
    }

    const refused = proxy.exchanges.filter((e) => e.refused && (e.session === 'plugin-a' || e.session === 'plugin-b'))
    expect(refused, 'requests the proxy refused (expired credentials or a stale token)').toEqual([])
    expect(issuedTo('plugin-a').length - stsCallsAtStart.a).toBeGreaterThanOrEqual(3)
    expect(issuedTo('plugin-b').length - stsCallsAtStart.b).toBeGreaterThanOrEqual(3)
    // Everything either plugin sealed, across every expiry, still decrypts in both.
    for (const s of sealed) for (const p of [a, b]) await p.decrypt(s)
    await a.stop()
    await b.stop()
    for (const p of [a, b]) for (const i of proxy.issued) expect(p.stderr()).not.toContain(i.accessKeyId)
  }, 120_000)

  it('each source is picked as the environment or the config says, in AWS\'s order, and gets the KEK wrapped with the credentials it issued (the kms package\'s metadata servers and checking fronts)', async () => {
    const ledger = createLedger()
    const closers: Array<() => Promise<void>> = []
    try {
      const imds = await startImdsFake({ ledger, lifetimeMs: 60_000 })
      const containerToken = 'pod-identity-token'
      const container = await startContainerFake({ ledger, lifetimeMs: 60_000, authorization: () => containerToken })
      const gcpMetadata = await startGcpMetadataFake({ ledger, lifetimeMs: 60_000 })
      const azureIdentity = await startAzureIdentityFake({ ledger, lifetimeMs: 60_000, identityHeader: 'app-service-header' })
      const gcpKeyName = 'projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k'
      const gcpKms = await startFakeGcpKms({ token: 'ya29.server-side', keys: [gcpKeyName] })
      const azureKv = await startFakeAzureKeyVault({ token: 'eyJ.server-side', keys: ['app'] })
      const awsFront: CheckingFront = await startCheckingFront('aws', moto.endpoint, ledger)
      const gcpFront = await startCheckingFront('gcp', gcpKms.url, ledger, 'ya29.server-side')
      const azureFront = await startCheckingFront('azure', azureKv.url, ledger, 'eyJ.server-side')
      for (const x of [imds, container, gcpMetadata, azureIdentity, gcpKms, azureKv, awsFront, gcpFront, azureFront]) closers.push(() => x.close())
      const dir = join(work.dir, 'sources')
      mkdirSync(dir)
      writeFileSync(join(dir, 'container-token'), `${containerToken}\n`)
      const aws = ['--root', 'aws-kms', '--aws-key-id', keyId, '--aws-region', REGION]
      let n = 0
      const init = async (args: string[], extra: Record<string, string>) => {
        const config = join(dir, `c${++n}.json`)
        const r = await spawnCollect(process.execPath, [bundle, 'init', '--config', config, '--store-path', join(dir, `k${n}.json`), ...args], { cwd: dir, env: extra })
        return { ...r, config }
      }
      const okInit = async (args: string[], extra: Record<string, string>) => {
        const r = await init(args, extra)
        expect(r.code, r.stderr).toBe(EXIT.OK)
        return r.config
      }
      const verdicts = (front: CheckingFront, from: number) => front.checked.slice(from).map((c) => c.verdict)

      // 4. EC2 instance metadata, last in AWS's order, when nothing else is set.
      let from = awsFront.checked.length
      await okInit([...aws, '--endpoint', awsFront.url], { AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url })
      expect(imds.served).toBeGreaterThan(0)
      expect(verdicts(awsFront, from)).toEqual(expect.arrayContaining(['ok']))
      expect(verdicts(awsFront, from).every((v) => v === 'ok')).toBe(true)
      // 3. The container endpoint before it, with its authorization token from a file.
      const containerEnv = { AWS_CONTAINER_CREDENTIALS_FULL_URI: `${container.url}/v2/credentials/kms-proxy-task`, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: join(dir, 'container-token') }
      const imdsServed = imds.served
      from = awsFront.checked.length
      await okInit([...aws, '--endpoint', awsFront.url], { ...containerEnv, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url })
      expect(container.served).toBeGreaterThan(0)
      expect(imds.served).toBe(imdsServed)
      expect(verdicts(awsFront, from).every((v) => v === 'ok')).toBe(true)
      // 2. Web identity before the container endpoint; 1. static keys before everything (moto takes any).
      const containerServed = container.served
      const tokenFile = join(dir, 'sa-token')
      writeFileSync(tokenFile, 'sa-token-x')
      proxy.setToken('sa-token-x')
      const stsBefore = proxy.issued.length
      await okInit([...aws, '--endpoint', proxy.endpoint], { ...containerEnv, AWS_WEB_IDENTITY_TOKEN_FILE: tokenFile, AWS_ROLE_ARN: ROLE, AWS_ENDPOINT_URL_STS: proxy.endpoint })
      expect(proxy.issued.length).toBeGreaterThan(stsBefore)
      const stsAfter = proxy.issued.length
      await okInit([...aws, '--endpoint', moto.endpoint], { ...containerEnv, AWS_WEB_IDENTITY_TOKEN_FILE: tokenFile, AWS_ROLE_ARN: ROLE, AWS_ACCESS_KEY_ID: 'AKIASTATICKEYS000000', AWS_SECRET_ACCESS_KEY: 'static-secret' })
      expect(proxy.issued.length).toBe(stsAfter)
      expect(container.served).toBe(containerServed)
      // A config that names its source: EC2 instance metadata although the container endpoint is set.
      const pinned = await okInit([...aws, '--endpoint', awsFront.url], { AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url })
      const c = JSON.parse(readFileSync(pinned, 'utf8'))
      writeFileSync(pinned, JSON.stringify({ ...c, rootKey: { ...c.rootKey, credentials: { source: 'instance', endpoint: imds.url } } }))
      const served = imds.served
      const check = await spawnCollect(process.execPath, [bundle, 'status', '--check', '--config', pinned], { cwd: dir, env: containerEnv })
      expect(check.code, check.stderr).toBe(EXIT.OK)
      expect(imds.served).toBeGreaterThan(served)
      expect(container.served).toBe(containerServed)

      // Nothing set: instance metadata is asked briefly and the usage error names what to set.
      const none = await init(aws, { AWS_EC2_METADATA_SERVICE_ENDPOINT: 'http://127.0.0.1:9' })
      expect(none.code).toBe(EXIT.USAGE)
      expect(none.stderr).toContain('AWS KMS: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, or AWS_CONTAINER_CREDENTIALS_FULL_URI; EC2 instance metadata, tried last, gave none')
      const disabled = await init(aws, { AWS_EC2_METADATA_DISABLED: 'true' })
      expect(disabled.code).toBe(EXIT.USAGE)
      expect(disabled.stderr).toContain('(EC2 instance metadata is disabled by AWS_EC2_METADATA_DISABLED)')

      // Google's metadata server, and Azure's managed identity (App Service's endpoint).
      from = gcpFront.checked.length
      await okInit(['--root', 'gcp', '--gcp-key-name', gcpKeyName, '--endpoint', gcpFront.url], { GCE_METADATA_HOST: new URL(gcpMetadata.url).host })
      expect(gcpMetadata.served).toBeGreaterThan(0)
      expect(verdicts(gcpFront, from).length).toBeGreaterThan(0)
      expect(verdicts(gcpFront, from).every((v) => v === 'ok')).toBe(true)
      from = azureFront.checked.length
      await okInit(['--root', 'azure', '--azure-vault-url', azureFront.url, '--azure-key-name', 'app'], { IDENTITY_ENDPOINT: `${azureIdentity.url}/msi/token`, IDENTITY_HEADER: 'app-service-header' })
      expect(azureIdentity.served).toBeGreaterThan(0)
      expect(verdicts(azureFront, from).length).toBeGreaterThan(0)
      expect(verdicts(azureFront, from).every((v) => v === 'ok')).toBe(true)
    } finally {
      for (const close of closers.reverse()) await close()
    }
  }, 120_000)
})

describe('credential sources in the config and the environment', () => {
  async function kp(cwd: string, args: string[], env: Record<string, string | undefined>): Promise<Result> {
    const r = await spawnCollect(process.execPath, [bundle, ...args], { cwd, env: { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV, ...env } })
    return { ...r, stderr: withoutNotes(r.stderr) }
  }
  const base = { format: 'kms-proxy-cli/v1', chain: 'c', store: { type: 'file', path: 'keys.json' } }
  const folder = (name: string, config: object) => {
    const dir = join(work.dir, name)
    mkdirSync(dir)
    writeFileSync(join(dir, 'kms-proxy.json'), JSON.stringify({ ...base, ...config }), { mode: 0o644 })
    writeFileSync(join(dir, 'keys.json'), '{}')
    return dir
  }

  it('a credentials field that names no source, a field its source does not take, or a root that takes none is refused (exit 3, the field named)', async () => {
    const aws = { type: 'aws-kms', keyId: 'k', region: 'eu-central-1' }
    const cases: Array<[string, object, RegExp]> = [
      ['no-source', { rootKey: { ...aws, credentials: {} } }, /"rootKey\.credentials" "source" must be one of env, web-identity, container, instance/],
      ['bad-field', { rootKey: { ...aws, credentials: { source: 'instance', roleArn: 'x' } } }, /"rootKey\.credentials" has a field that source "instance" does not take/],
      ['vault', { rootKey: { type: 'vault', address: 'https://v', key: 'k', credentials: { source: 'env' } } }, /"rootKey\.credentials" is not taken by a vault root key/],
      ['gcp-scopes', { roots: [{ name: 'g', type: 'gcp', keyName: 'projects/p/locations/l/keyRings/r/cryptoKeys/k', credentials: { source: 'metadata', scopes: [] } }] }, /"roots\[0\]\.credentials" has a field/],
      ['sts-http', { rootKey: { ...aws, credentials: { source: 'web-identity', stsEndpoint: 'http://sts.example.invalid' } } }, /rootKey\.credentials\.stsEndpoint: plain http to sts\.example\.invalid would expose credentials/],
    ]
    for (const [name, config, message] of cases) {
      const dir = folder(`cred-${name}`, config)
      const r = await kp(dir, ['status', '--config', 'kms-proxy.json'], {})
      expect(r.code, `${name}: ${r.stderr}`).toBe(EXIT.MISSING)
      expect(r.stderr, name).toMatch(message)
    }
  })

  it('a secret and its _FILE both set is refused; a _FILE that cannot be read fails before any request (exit 2)', async () => {
    const dir = join(work.dir, 'cred-both')
    mkdirSync(dir)
    const init = ['init', '--root', 'vault', '--vault-address', 'http://127.0.0.1:9', '--vault-key', 'k']
    const both = await kp(dir, init, { VAULT_TOKEN: 'hvs.a', VAULT_TOKEN_FILE: join(dir, 'nothing') })
    expect(both.code).toBe(EXIT.USAGE)
    expect(both.stderr).toMatch(/both VAULT_TOKEN and VAULT_TOKEN_FILE are set: set one/)
    const missing = await kp(dir, init, { VAULT_TOKEN_FILE: join(dir, 'nothing') })
    expect(missing.code).toBe(EXIT.USAGE)
    expect(missing.stderr).toMatch(/VAULT_TOKEN_FILE: cannot read .*nothing \(ENOENT\)/)
    writeFileSync(join(dir, 'empty'), '\n')
    const empty = await kp(dir, init, { VAULT_TOKEN_FILE: join(dir, 'empty') })
    expect(empty.code).toBe(EXIT.USAGE)
    expect(empty.stderr).toMatch(/VAULT_TOKEN_FILE: .*empty is empty/)
    const none = await kp(dir, init, {})
    expect(none.code).toBe(EXIT.USAGE)
    expect(none.stderr).toMatch(/Vault: set VAULT_TOKEN \(or VAULT_TOKEN_FILE\) in the environment/)
    expect(existsSync(join(dir, 'kms-proxy.json'))).toBe(false)
  })

  it('KMS_PROXY_PASSPHRASE_FILE gives the passphrase (read once: a passphrase does not expire)', async () => {
    const dir = join(work.dir, 'passphrase-file')
    mkdirSync(dir)
    writeFileSync(join(dir, 'pass'), `${PASSPHRASE}\n`, { mode: 0o600 })
    const env = { KMS_PROXY_PASSPHRASE: undefined, KMS_PROXY_PASSPHRASE_FILE: join(dir, 'pass'), KMS_PROXY_CONFIG: join(dir, 'kms-proxy.json') }
    const init = await kp(dir, ['init', ...FAST_KDF], env)
    expect(init.code, init.stderr).toBe(EXIT.OK)
    const enc = await spawnCollect(process.execPath, [bundle, 'encrypt', '--message'], { cwd: dir, env: { ...WEAK_KDF_ENV, ...env, KMS_PROXY_PASSPHRASE: undefined }, input: 'file passphrase' })
    expect(enc.code, enc.stderr).toBe(EXIT.OK)
    // The same passphrase typed into the variable decrypts it: the file's line break is not part of it.
    const dec = await spawnCollect(process.execPath, [bundle, 'decrypt'], { cwd: dir, env: { ...WEAK_KDF_ENV, KMS_PROXY_CONFIG: env.KMS_PROXY_CONFIG, KMS_PROXY_PASSPHRASE: PASSPHRASE }, input: enc.stdout })
    expect(dec.code, dec.stderr).toBe(EXIT.OK)
    expect(dec.stdout.toString()).toBe('file passphrase')
  })
})
