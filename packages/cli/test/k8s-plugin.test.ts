/**
 * `kms-proxy k8s-plugin` with @kms-proxy/k8s installed next to the CLI, as `npm install
 * @kms-proxy/cli @kms-proxy/k8s` would lay them out: the built packages copied into one
 * node_modules (so both load the same core), their third-party dependencies linked. A gRPC
 * client built from the plugin's own proto calls Status, Encrypt and Decrypt on the socket.
 */
import { chmodSync, statSync } from 'node:fs'
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { EXIT, FAST_KDF, WEAK_KDF_ENV, spawnCollect, tempDir } from './helpers.js'
import { installApp, startPlugin, type PluginApp, type RunningPlugin, type Sealed } from './plugin.js'

const PASSPHRASE = 'kube secrets'
let work: ReturnType<typeof tempDir>
let installed: PluginApp
let app: string
let child: ChildProcess | undefined

beforeAll(() => {
  work = tempDir('k8s')
  installed = installApp(work.dir)
  app = installed.app
})
afterAll(() => {
  child?.kill('SIGKILL')
  work?.cleanup()
})

const bin = () => installed.bin

it('serves the config\'s chain over the KMS v2 gRPC API on a Unix socket, and stops on SIGTERM', async () => {
  const env = { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV }
  const init = await spawnCollect(process.execPath, [bin(), 'init', '--chain', 'kube', ...FAST_KDF], { cwd: app, env })
  expect(init.code, init.stderr).toBe(EXIT.OK)

  const socket = join(work.dir, 'kms.sock')
  const proc = spawn(process.execPath, [bin(), 'k8s-plugin', '--socket', socket], { cwd: app, env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  child = proc
  let stderr = ''
  proc.stderr!.on('data', (c: Buffer) => (stderr += c))
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)))
  for (let i = 0; i < 200 && !stderr.includes('serving'); i++) await new Promise((r) => setTimeout(r, 25))
  expect(stderr).toMatch(new RegExp(`serving chain "kube" on ${socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`))

  // A client from the installed plugin's proto, with the installed grpc-js.
  const grpc = await import(pathToFileURL(join(app, 'node_modules/@grpc/grpc-js/build/src/index.js')).href)
  const { loadKmsService } = await import(pathToFileURL(join(app, 'node_modules/@kms-proxy/k8s/dist/index.js')).href)
  const Service = loadKmsService()
  const client = new Service(`unix:${socket}`, grpc.credentials.createInsecure())
  const call = <T>(method: string, request: object): Promise<T> =>
    new Promise((resolve, reject) => client[method](request, { deadline: Date.now() + 5000 }, (e: Error | null, r: T) => (e ? reject(e) : resolve(r))))
  try {
    const status = await call<{ version: string; healthz: string; key_id: string }>('Status', {})
    expect(status.version).toBe('v2')
    expect(status.healthz).toBe('ok')
    const seed = crypto.getRandomValues(new Uint8Array(32))
    const encrypted = await call<{ ciphertext: Buffer; key_id: string; annotations: Record<string, Buffer> }>('Encrypt', { plaintext: seed, uid: 'u1' })
    expect(encrypted.key_id.length).toBeGreaterThan(0)
    expect(Buffer.from(encrypted.ciphertext).includes(Buffer.from(seed))).toBe(false)
    const decrypted = await call<{ plaintext: Buffer }>('Decrypt', { ciphertext: encrypted.ciphertext, key_id: encrypted.key_id, annotations: encrypted.annotations ?? {}, uid: 'u2' })
    expect(Buffer.compare(decrypted.plaintext, Buffer.from(seed))).toBe(0)
  } finally {
    client.close()
  }
  proc.kill('SIGTERM')
  expect(await exited).toBe(EXIT.OK)
  expect(stderr).not.toContain(PASSPHRASE)
})

it('socket mode and group from the command line; status --plugin shows what kube-apiserver sees; health changes are logged; an abstract socket needs --allow-abstract-socket', async () => {
  const env = { KMS_PROXY_PASSPHRASE: PASSPHRASE, ...WEAK_KDF_ENV }
  const init = await spawnCollect(process.execPath, [bin(), 'init', '--chain', 'kube2', '--store-path', join(work.dir, 'kube2-keys.json'), '--config', join(app, 'kube2.json'), ...FAST_KDF], { cwd: app, env })
  expect(init.code, init.stderr).toBe(EXIT.OK)
  const config = ['--config', join(app, 'kube2.json')]

  // Refused before anything is served: an abstract socket without the opt-in, a bad mode.
  const abstract = await spawnCollect(process.execPath, [bin(), 'k8s-plugin', ...config, '--socket', `unix:///@kms-proxy-cli-${process.pid}`], { cwd: app, env })
  expect(abstract.code).toBe(EXIT.USAGE)
  expect(abstract.stderr).toMatch(/abstract socket, which has no file permissions.*--allow-abstract-socket/)
  const badMode = await spawnCollect(process.execPath, [bin(), 'k8s-plugin', ...config, '--socket', join(work.dir, 'x.sock'), '--socket-mode', '0999'], { cwd: app, env })
  expect(badMode.code).toBe(EXIT.USAGE)

  const socket = join(work.dir, 'group.sock')
  const proc = spawn(process.execPath, [bin(), 'k8s-plugin', ...config, '--socket', socket, '--socket-mode', '0660', '--socket-group', 'nogroup'], { cwd: app, env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  child = proc
  let stderr = ''
  proc.stderr!.on('data', (c: Buffer) => (stderr += c))
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)))
  for (let i = 0; i < 200 && !stderr.includes('serving'); i++) await new Promise((r) => setTimeout(r, 25))
  expect(statSync(socket).mode & 0o777).toBe(0o660)
  expect(statSync(socket).gid).toBe(65534)
  // A process of another user in that group (as a kube-apiserver run as non-root) can connect.
  chmodSync(work.dir, 0o711)
  const connectAs = `require('node:net').connect(${JSON.stringify(socket)}).on('connect', () => process.exit(0)).on('error', (e) => (console.error(e.code), process.exit(1)))`
  const asNobody = await spawnCollect(process.execPath, ['-e', connectAs], { cwd: '/', uid: 65534 })
  expect(asNobody.code, asNobody.stderr).toBe(0)

  const text = await spawnCollect(process.execPath, [bin(), 'status', ...config, '--plugin', socket], { cwd: app, env })
  expect(text.code, text.stderr).toBe(EXIT.OK)
  expect(text.stdout.toString()).toMatch(new RegExp(`plugin {7}${socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: ok, key_id kube2/[0-9a-f]{8} \\(the store's primary\\)`))
  const json = JSON.parse((await spawnCollect(process.execPath, [bin(), 'status', ...config, '--plugin', socket, '--json'], { cwd: app, env })).stdout.toString())
  expect(json.plugin).toMatchObject({ socket, version: 'v2', healthz: 'ok', isPrimary: true })
  expect(stderr).toContain('kms-proxy k8s-plugin: ok') // the first evaluation's health, logged
  proc.kill('SIGTERM')
  expect(await exited).toBe(EXIT.OK)

  const gone = await spawnCollect(process.execPath, [bin(), 'status', ...config, '--plugin', socket], { cwd: app, env })
  expect(gone.stdout.toString()).toMatch(/plugin {7}.*: not answering/)
}, 60_000)

it('keeps serving Encrypt and Decrypt while another process changes the chain\'s root, and restarts on the new root', async () => {
  const config = join(app, 'kube3.json')
  const env = { KMS_PROXY_PASSPHRASE: PASSPHRASE, KMS_PROXY_CONFIG: config, ...WEAK_KDF_ENV }
  const init = await spawnCollect(process.execPath, [bin(), 'init', '--chain', 'kube3', '--store-path', join(work.dir, 'kube3-keys.json'), ...FAST_KDF], { cwd: app, env })
  expect(init.code, init.stderr).toBe(EXIT.OK)
  for (let i = 0; i < 5; i++) expect((await spawnCollect(process.execPath, [bin(), 'rotate'], { cwd: app, env })).code).toBe(EXIT.OK)

  async function plugin(name: string, passphrase: string): Promise<RunningPlugin> {
    const p = await startPlugin(installed, join(work.dir, `${name}.sock`), { ...env, KMS_PROXY_PASSPHRASE: passphrase })
    child = p.proc
    expect(p.stderr()).toContain('serving chain "kube3"')
    return {
      ...p,
      async stop() {
        await p.stop()
        for (const secret of [PASSPHRASE, NEW_PASSPHRASE]) expect(p.stderr()).not.toContain(secret)
      },
    }
  }
  const NEW_PASSPHRASE = 'the new kube passphrase'
  const roundTrip = async (p: RunningPlugin, sealed: Sealed[]) => void sealed.push(await p.roundTrip())

  const first = await plugin('kube3-a', PASSPHRASE)
  const sealed: Sealed[] = []
  await roundTrip(first, sealed)
  // The change runs in another process; the plugin's calls go on meanwhile, none failing.
  const change = spawnCollect(process.execPath, [bin(), 'root', 'change', '--root', 'passphrase', ...FAST_KDF], { cwd: app, env: { ...env, KMS_PROXY_NEW_PASSPHRASE: NEW_PASSPHRASE } })
  let during = 0
  let finished = false
  void change.then(() => (finished = true))
  while (!finished) {
    await roundTrip(first, sealed)
    during++
  }
  const changed = await change
  expect(changed.code, changed.stderr).toBe(EXIT.OK)
  expect(changed.stdout.toString()).toContain('KEKs         6 re-wrapped under "default-2"')
  expect(during).toBeGreaterThan(0)
  await roundTrip(first, sealed)
  await first.stop()

  // Restarted with the new passphrase (the config now names it), it decrypts all it sealed.
  const second = await plugin('kube3-b', NEW_PASSPHRASE)
  for (const s of sealed) await second.decrypt(s)
  await roundTrip(second, sealed)
  await second.stop()
}, 120_000)
