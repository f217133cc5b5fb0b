/**
 * `kms-proxy k8s-plugin` as kube-apiserver meets it: @kms-proxy/k8s installed next to the CLI, as
 * `npm install @kms-proxy/cli @kms-proxy/k8s` would lay them out (the built packages copied into
 * one node_modules, so both load the same core; their third-party dependencies linked), the
 * plugin a child process, and a gRPC client built from the plugin's own proto on its socket.
 */
import { cpSync, existsSync, mkdirSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs'
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { expect } from 'vitest'
import { EXIT, ROOT, assertBuilt } from './helpers.js'

/** An app folder with the built packages installed; `bin` is the installed CLI. */
export interface PluginApp {
  app: string
  bin: string
}

/** Installs the built packages into `dir/app` (run `pnpm build` first). */
export function installApp(dir: string): PluginApp {
  assertBuilt()
  const app = join(dir, 'app')
  const modules = join(app, 'node_modules')
  for (const name of ['cli', 'core', 'file', 'passphrase', 'etcd', 'kms', 'pkcs11', 'k8s']) {
    const from = join(ROOT, 'packages', name)
    if (!existsSync(join(from, 'dist/index.js'))) throw new Error(`packages/${name} is not built: run pnpm build`)
    const to = join(modules, '@kms-proxy', name)
    mkdirSync(to, { recursive: true })
    for (const part of ['package.json', 'dist', 'bin', 'proto']) if (existsSync(join(from, part))) cpSync(join(from, part), join(to, part), { recursive: true })
  }
  for (const dep of ['@grpc/grpc-js', '@grpc/proto-loader']) {
    mkdirSync(join(modules, '@grpc'), { recursive: true })
    symlinkSync(realpathSync(join(ROOT, 'packages/k8s/node_modules', dep)), join(modules, dep))
  }
  writeFileSync(join(app, 'package.json'), '{ "private": true, "type": "module" }')
  return { app, bin: join(app, 'node_modules/@kms-proxy/cli/bin/kms-proxy.js') }
}

/** What Encrypt returns. */
export interface Sealed {
  ciphertext: Buffer
  key_id: string
  annotations: Record<string, Buffer>
}

/** A running plugin process and a client on its socket. */
export interface RunningPlugin {
  proc: ChildProcess
  /** Everything the plugin wrote to stderr so far. */
  stderr(): string
  call<T>(method: string, request: object): Promise<T>
  /** Encrypt then Decrypt of 32 random bytes: returns what Encrypt returned, after checking the round trip. */
  roundTrip(): Promise<Sealed>
  decrypt(sealed: Sealed): Promise<Buffer>
  /** SIGTERM; expects exit 0. */
  stop(): Promise<void>
}

/**
 * Starts `kms-proxy k8s-plugin --socket SOCKET [args]` in `app` with a clean environment (PATH and
 * `env`), waits for its "serving" line (up to `waitMs`), and connects a client.
 */
export async function startPlugin(app: PluginApp, socket: string, env: Record<string, string>, args: string[] = [], waitMs = 20_000): Promise<RunningPlugin> {
  const proc = spawn(process.execPath, [app.bin, 'k8s-plugin', '--socket', socket, ...args], { cwd: app.app, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  proc.stderr!.on('data', (c: Buffer) => (stderr += c))
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)))
  for (const started = Date.now(); !stderr.includes('serving') && proc.exitCode === null && Date.now() - started < waitMs; ) await new Promise((r) => setTimeout(r, 25))
  if (!stderr.includes('serving')) {
    proc.kill('SIGKILL')
    throw new Error(`the plugin did not start: ${stderr}`)
  }
  const grpc = await import(pathToFileURL(join(app.app, 'node_modules/@grpc/grpc-js/build/src/index.js')).href)
  const { loadKmsService } = await import(pathToFileURL(join(app.app, 'node_modules/@kms-proxy/k8s/dist/index.js')).href)
  const Service = loadKmsService()
  const client = new Service(`unix:${socket}`, grpc.credentials.createInsecure())
  const call = <T>(method: string, request: object): Promise<T> =>
    new Promise((resolve, reject) => client[method](request, { deadline: Date.now() + 15_000 }, (e: Error | null, r: T) => (e ? reject(e) : resolve(r))))
  const decrypt = async (s: Sealed) => Buffer.from((await call<{ plaintext: Buffer }>('Decrypt', { ciphertext: s.ciphertext, key_id: s.key_id, annotations: s.annotations ?? {}, uid: 'u' })).plaintext)
  return {
    proc,
    stderr: () => stderr,
    call,
    decrypt,
    async roundTrip() {
      const seed = crypto.getRandomValues(new Uint8Array(32))
      const sealed = await call<Sealed>('Encrypt', { plaintext: seed, uid: 'u' })
      expect(Buffer.compare(await decrypt(sealed), Buffer.from(seed))).toBe(0)
      return sealed
    },
    async stop() {
      client.close()
      proc.kill('SIGTERM')
      expect(await exited).toBe(EXIT.OK)
    },
  }
}
