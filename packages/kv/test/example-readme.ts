/**
 * Runs an example's README as a reader would: the example's files are copied into a temporary
 * folder laid out like this repository (its `packages/` and `node_modules/` linked), so that the
 * README's commands run there as written, from the repository root, and whatever they write
 * (keys, databases, `.dev.vars`, `.wrangler/`) lands in the temporary folder and never over a
 * reader's own files in the checkout. The one change a test makes to a command is the port.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { join } from 'node:path'
import { readmeBlocks, readmeCommands } from '../../testkit/test/readme-blocks.ts'
import { freePort } from '../../testkit/test/free-port.ts'
export { freePort }

export const repoRoot = join(import.meta.dirname, '..', '..', '..')

/** Whether something accepts connections on 127.0.0.1:port. */
export function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => (socket.destroy(), resolve(true)))
    socket.once('error', () => resolve(false))
  })
}

/** Throws unless `packages/<name>/dist` is at least as new as its sources (the examples run the built files). */
export function requireBuilt(...names: string[]): void {
  for (const name of names) {
    const dist = join(repoRoot, 'packages', name, 'dist', 'index.js')
    if (!existsSync(dist) || statSync(dist).mtimeMs < statSync(join(repoRoot, 'packages', name, 'src', 'index.ts')).mtimeMs) {
      throw new Error(`packages/${name}/dist is missing or older than src: run pnpm build first`)
    }
  }
}

/**
 * A temporary "repository root" holding a copy of `examples/<name>` (its tracked files only) with
 * `packages/` and `node_modules/` linked to the real ones, and the example's own `node_modules/`
 * linked when it has one.
 */
export function tempCheckout(base: string, name: string, files: string[]): string {
  const root = join(base, `checkout-${name}-${Date.now()}`)
  const example = join(root, 'examples', name)
  mkdirSync(example, { recursive: true })
  for (const file of files) cpSync(join(repoRoot, 'examples', name, file), join(example, file))
  symlinkSync(join(repoRoot, 'packages'), join(root, 'packages'))
  symlinkSync(join(repoRoot, 'node_modules'), join(root, 'node_modules'))
  if (existsSync(join(repoRoot, 'examples', name, 'node_modules'))) {
    symlinkSync(join(repoRoot, 'examples', name, 'node_modules'), join(example, 'node_modules'))
  }
  return root
}

/**
 * The `sh` blocks of a README, each as its commands (split by {@link readmeCommands}: `\`
 * continuations joined, comment lines dropped) and its first line, by which the README names a
 * block's role (`# Deploy …`). readmeCommands reads a whole file, so each block is written to a
 * file of its own first.
 */
export function shBlocks(readme: string, scratch: string): Array<{ title: string; commands: string[] }> {
  return readmeBlocks(readme, 'sh').map((block, i) => {
    const file = join(scratch, `block-${i}.md`)
    writeFileSync(file, '```sh\n' + block.text + '```\n')
    const commands = readmeCommands(file)
    rmSync(file)
    return { title: block.text.split('\n')[0]!, commands }
  })
}

/** The README's plain (language-less) blocks: what it shows a command printing. */
export function shownOutputs(readme: string): string[] {
  return readmeBlocks(readme, '').map((b) => b.text.trimEnd())
}

/** Whether `line` is what a shown line says, `…` standing for any text. */
export function matchesShown(shown: string, line: string): boolean {
  const pattern = shown
    .split('…')
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('.+')
  return new RegExp(`^${pattern}$`).test(line)
}

/** Runs a script in bash; resolves with its exit status and output (bounded by `timeoutMs`). */
export function runBash(script: string, cwd: string, env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', script], { cwd, env, detached: true })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const timer = setTimeout(() => killGroup(child), timeoutMs)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

/** A README command left running in the background of a bash script, as a reader's terminal would run it. */
export interface Background {
  /** The bash that ran the block (its process group holds everything the block started). */
  shell: ChildProcess
  /** The pid of the process the last command started (bash's `$!`). */
  pid: number
  stdout: () => string
  stderr: () => string
  /** Resolves with the shell's exit status once it ends. */
  exited: Promise<number | null>
}

/**
 * Runs every command of a block but the last in one bash (`set -e`), then the last in the
 * background, and waits until its output matches `ready` (or the shell ends, or `timeoutMs`).
 */
export async function startBlock(commands: string[], cwd: string, env: NodeJS.ProcessEnv, ready: RegExp, timeoutMs: number): Promise<Background> {
  const script = ['set -e', ...commands.slice(0, -1), `${commands.at(-1)} &`, 'echo "pid=$!" >&3', 'wait $!'].join('\n')
  const shell = spawn('bash', ['-c', script], { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let pid = 0
  shell.stdout!.on('data', (d) => (stdout += d))
  shell.stderr!.on('data', (d) => (stderr += d))
  ;(shell.stdio[3] as NodeJS.ReadableStream).on('data', (d) => (pid = Number(/pid=(\d+)/.exec(String(d))?.[1] ?? pid)))
  const exited = new Promise<number | null>((resolve) => shell.once('exit', (code) => resolve(code)))
  const deadline = Date.now() + timeoutMs
  let ended = false
  void exited.then(() => (ended = true))
  while (!ready.test(stdout + stderr) && !ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
  return { shell, pid, stdout: () => stdout, stderr: () => stderr, exited }
}

/** Whether any process is left in the group of `child` (it was spawned `detached`, so it leads one). */
export function groupAlive(child: ChildProcess): boolean {
  try {
    process.kill(-child.pid!, 0)
    return true
  } catch {
    return false
  }
}

/**
 * Waits (at most `ms`) until no process is left in the group of `child`, as a reader would wait
 * for a stopped server to let go of its port; true once the group is empty.
 */
export async function groupGone(child: ChildProcess, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (groupAlive(child) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
  return !groupAlive(child)
}

/** What is still running in the group of `child` (`ps` lines), for a failure message. */
export function leftInGroup(child: ChildProcess): string {
  try {
    return execFileSync('ps', ['-o', 'pid=,args=', '-g', String(child.pid)], { encoding: 'utf8' }).trim()
  } catch {
    return '(nothing)'
  }
}

/** SIGKILLs the whole process group of a `detached` child: the clean-up of last resort. */
export function killGroup(child: ChildProcess): void {
  try {
    process.kill(-child.pid!, 'SIGKILL')
  } catch {
    // already gone
  }
}

/** The text of a file of the real checkout. */
export const readRepoFile = (path: string): string => readFileSync(join(repoRoot, path), 'utf8')
