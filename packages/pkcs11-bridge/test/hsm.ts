/**
 * Test harness for SoftHSM2: a throwaway token in a temporary directory, and child processes
 * that use it. The PKCS#11 parts run in child processes because vitest runs each test file in a
 * worker thread, and a worker's process.env is a JS copy: SOFTHSM2_CONF set there never reaches
 * libsofthsm2's getenv(). A child process gets it in its real environment.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'

export const MODULE = '/usr/lib/softhsm/libsofthsm2.so'
export const TOKEN_LABEL = 'kms-proxy'
export const SO_PIN = '1234'
export const PIN = '5678'
export const WORKSPACE = fileURLToPath(new URL('../../../', import.meta.url))

export interface TestToken {
  dir: string
  env: NodeJS.ProcessEnv
  cleanup(): void
}

/** A fresh SoftHSM2 token labelled `label` (user PIN 5678) in its own temporary directory. */
export function makeToken(label = TOKEN_LABEL): TestToken {
  const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-softhsm-'))
  const tokens = join(dir, 'tokens')
  execFileSync('mkdir', ['-p', tokens])
  const conf = join(dir, 'softhsm2.conf')
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`)
  const env = { ...process.env, SOFTHSM2_CONF: conf }
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', SO_PIN, '--pin', PIN], { env, stdio: 'ignore' })
  return { dir, env, cleanup: () => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }) }
}

export const bearer = () => randomBytes(24).toString('hex')

/** Starts `node --import tsx <script>` from the workspace root with the token's environment. */
export function spawnTs(script: string, env: NodeJS.ProcessEnv): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL(script, import.meta.url))], {
    cwd: WORKSPACE,
    env,
    stdio: ['pipe', 'pipe', 'pipe'],
  })
}

/** Reads the child's stdout until a line starting with `prefix`; returns the JSON after it. */
export function readLine<T>(child: ChildProcess, prefix: string, timeoutMs = 30_000): Promise<T> {
  return new Promise((resolve, reject) => {
    let out = ''
    let err = ''
    const timer = setTimeout(() => reject(new Error(`no ${prefix} line from the child within ${timeoutMs} ms; stderr: ${err}`)), timeoutMs)
    child.stderr!.on('data', (d) => (err += d))
    child.stdout!.on('data', (d) => {
      out += d
      for (const line of out.split('\n')) {
        if (line.startsWith(prefix)) {
          clearTimeout(timer)
          resolve(JSON.parse(line.slice(prefix.length)) as T)
        }
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`the child exited (${code}) before ${prefix}; stderr: ${err}`))
    })
  })
}
