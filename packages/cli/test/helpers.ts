/**
 * Runs the CLI as a user would: a child process per command. For Node the sources are bundled
 * once by esbuild (tsconfig paths map @kms-proxy/* to packages/*\/src, as vitest does), so every
 * run starts in ~0.1 s and tests the code in the tree; Bun and Deno run the built package
 * (packages/cli/bin/kms-proxy.js over dist/), as users of the published package would.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bundleChild } from '../../testkit/test/bundle.ts'

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url))
export const BIN = join(ROOT, 'packages/cli/bin/kms-proxy.js')
export const BUN = join(ROOT, 'node_modules/.bin/bun')
// The binary itself: npm's deno wrapper (a Node script) does not pass signals on.
export const DENO = join(ROOT, 'node_modules/deno/deno')

export const EXIT = { OK: 0, INTERNAL: 1, USAGE: 2, MISSING: 3, ROOT_KEY: 4, TAMPERED: 5, ROOT_KEY_UNREACHABLE: 6, STORE: 7, UNKNOWN_KEK: 8, IO: 9, NOT_INSTALLED: 10, RETIRED: 11, DESTROYED: 12 }

/**
 * Bundles the CLI's sources to one file in `dir`; returns its path. `sources` bundles another
 * copy of the sources instead (its folder, beside its own package.json).
 */
export async function bundleCli(dir: string, sources?: string): Promise<string> {
  const outfile = join(dir, 'kms-proxy.mjs')
  await bundleChild(
    sources
      ? { source: "import { runAndExit } from './src/index.ts'\nawait runAndExit(process.argv.slice(2))", resolveDir: sources }
      : { file: join(ROOT, 'packages/cli/test/entry.ts') },
    outfile,
  )
  return outfile
}

export interface Result {
  code: number | null
  stdout: Buffer
  stderr: string
}

export interface RunOptions {
  cwd: string
  env?: Record<string, string | undefined>
  input?: Uint8Array | string
  /** Run as this user (and group): the tests run as root. */
  uid?: number
}

/** Spawns `command args` with a clean environment (PATH and HOME, plus `env`). */
export function spawnCollect(command: string, args: string[], options: RunOptions): Promise<Result> {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', NO_COLOR: '1' }
  for (const [k, v] of Object.entries(options.env ?? {})) if (v !== undefined) env[k] = v
  return new Promise((resolve, reject) => {
    const ids = options.uid === undefined ? {} : { uid: options.uid, gid: options.uid }
    const child = spawn(command, args, { cwd: options.cwd, env, stdio: ['pipe', 'pipe', 'pipe'], ...ids })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (c: Buffer) => out.push(c))
    child.stderr.on('data', (c: Buffer) => err.push(c))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') }))
    child.stdin.on('error', () => {}) // a command that fails early closes its stdin
    child.stdin.end(options.input ?? '')
  })
}

export function tempDir(prefix: string): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), `kms-proxy-${prefix}-`))
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }) }
}

/** The built package is what Bun and Deno run; say how to make it when it is missing or stale. */
export function assertBuilt(): void {
  const cli = join(ROOT, 'packages/cli/dist/index.js')
  const core = join(ROOT, 'packages/core/dist/index.js')
  if (!existsSync(cli) || !existsSync(core) || !readFileSync(core, 'utf8').includes('encryptStream')) {
    throw new Error('the built packages are missing or stale: run `pnpm build` (or `PACKAGES=core,cli npx rollup -c`) first')
  }
  const src = join(ROOT, 'packages/cli/src')
  const newest = Math.max(...readdirSync(src).map((f) => statSync(join(src, f)).mtimeMs))
  if (statSync(cli).mtimeMs < newest) throw new Error('packages/cli/dist is older than its sources: run `PACKAGES=cli npx rollup -c` (or `pnpm build`)')
}

/**
 * A low PBKDF2 count keeps each command fast; the CLI stores it in the config (a public
 * parameter) and accepts it only with the environment's opt-in, WEAK_KDF_ENV.
 */
export const FAST_KDF = ['--iterations', '1000']
export const WEAK_KDF_ENV = { KMS_PROXY_ALLOW_WEAK_KDF: '1' }

/** stderr without the warning WEAK_KDF_ENV prints (trust.test.ts checks that it is printed). */
export const withoutWeakKdfWarning = (stderr: string): string => stderr.replace(/^kms-proxy: warning: KMS_PROXY_ALLOW_WEAK_KDF=1 accepts [^\n]*\n/gm, '')

/** stderr without that warning and without the line naming a config found in the working folder (both checked in trust.test.ts). */
export const withoutNotes = (stderr: string): string => withoutWeakKdfWarning(stderr).replace(/^kms-proxy: using [^\n]* found in the working folder \([^\n]*\n/gm, '')
