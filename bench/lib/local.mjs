// Launchers for the runtimes that run as a child process of the host: Node 20 (this Node), Node 22
// and 24 (e2e's copies), Deno and Bun, each running bench/runtimes/cli.mjs. A launcher is
//   start(name) -> { version, run(input) -> Result, stop(), peakRss({ mib }) }
// (bench-contract). Peak RSS is read from outside: /proc/<pid>/status VmHWM, polled while the
// child streams, which is the child's own high-water mark whatever the runtime (a child's
// getrusage maxRSS would carry the host's over exec).
import { spawn } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const out = join(root, '.tmp', 'bench')
const cli = join(root, 'bench', 'runtimes', 'cli.mjs')

/** Command and arguments per runtime. Deno and Bun: their binaries, not npm's wrappers, so the pid is the runtime's. */
const COMMANDS = {
  node20: () => ({ command: process.execPath, args: [] }),
  node22: () => ({ command: join(root, 'e2e', 'node_modules', 'node22', 'bin', 'node'), args: [] }),
  node24: () => ({ command: join(root, 'e2e', 'node_modules', 'node24', 'bin', 'node'), args: [] }),
  deno: () => ({
    command: join(root, 'node_modules', 'deno', 'deno'),
    // e2e's flags, and --expose-gc: a full GC between samples.
    args: ['run', '--quiet', '--allow-read', '--allow-env', '--v8-flags=--expose-gc'],
    env: { DENO_DIR: join(out, 'deno-dir'), NO_COLOR: '1', DENO_NO_UPDATE_CHECK: '1' },
  }),
  bun: () => ({ command: join(root, 'node_modules', 'bun', 'bin', 'bun.exe'), args: [] }),
}
export const LOCAL_RUNTIMES = Object.keys(COMMANDS)

const firstLines = (s) => s.trim().split('\n').slice(-6).join(' | ').slice(0, 1500)

/** Spawns the entry; resolves with { stdout, code, peakKiB } (peakKiB from /proc when asked). */
function runChild(name, cliArgs, { timeoutMs, onStderrLine, pollRss }) {
  const { command, args, env } = COMMANDS[name]()
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args, cli, ...cliArgs], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    let partial = ''
    let peakKiB = 0
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => {
      const text = partial + d
      const lines = text.split('\n')
      partial = lines.pop()
      for (const line of lines) {
        if (line.startsWith('progress ')) onStderrLine?.(line.slice(9))
        else stderr += line + '\n'
      }
    })
    const poll = pollRss
      ? setInterval(() => {
          try {
            const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))
            if (m) peakKiB = Math.max(peakKiB, Number(m[1]))
          } catch {
            // Gone already: the last reading stands.
          }
        }, 20)
      : undefined
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (error) => {
      clearTimeout(timer)
      clearInterval(poll)
      reject(error)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      clearInterval(poll)
      if (code !== 0 || signal) reject(new Error(`${name} exited ${signal ?? code}${signal === 'SIGKILL' ? ` (timeout ${timeoutMs / 1000} s?)` : ''}: ${firstLines(stderr + partial || stdout)}`))
      else resolve({ stdout, code, peakKiB })
    })
  })
}

function versionOf(name) {
  const { command } = COMMANDS[name]()
  return new Promise((resolve) => {
    const child = spawn(command, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] })
    let s = ''
    child.stdout.on('data', (d) => (s += d))
    child.on('close', () => resolve(`${name.replace(/\d+$/, '')} ${s.trim().split('\n')[0]}`.replace(/^(\w+) \1 /, '$1 ')))
    child.on('error', (error) => resolve(`not found (${error.code ?? error.message})`))
  })
}

/** Starts nothing yet: every run is its own process. */
export async function start(name, { progress } = {}) {
  if (!COMMANDS[name]) throw new Error(`unknown local runtime ${name}`)
  mkdirSync(out, { recursive: true })
  const version = await versionOf(name)
  if (version.startsWith('not found')) throw new Error(`${name}: ${version}`)
  return {
    version,
    async run(input) {
      // Per host process: two bench runs at once must not read each other's input.
      const inputFile = join(out, `input-${name}-${process.pid}.json`)
      writeFileSync(inputFile, JSON.stringify({ ...input, runtime: name, progress: Boolean(progress) }))
      try {
        const { stdout } = await runChild(name, ['suite', inputFile], { timeoutMs: input.quick ? 120_000 : 1_800_000, onStderrLine: progress })
        return JSON.parse(stdout)
      } finally {
        rmSync(inputFile, { force: true })
      }
    },
    /**
     * Peak RSS of a child that streams `mib` MiB encrypt → decrypt piped, per variant: the
     * runtime alone ('idle'), raw segmented AES-GCM, kms-proxy's streams. A new process each.
     */
    async peakRss({ mib }) {
      const result = { mib, how: 'VmHWM of /proc/<pid>/status, polled every 20 ms from the host' }
      for (const variant of ['idle', 'raw', 'stream']) {
        progress?.(`${name} peak RSS, ${variant}, ${mib} MiB`)
        const { stdout, peakKiB } = await runChild(name, ['rss', variant, String(mib)], { timeoutMs: 600_000, pollRss: true })
        const run = JSON.parse(stdout)
        result[variant] = { peakMiB: peakKiB / 1024, seconds: run.seconds, ok: run.ok }
      }
      return result
    },
    async stop() {},
  }
}
