/**
 * Running an example's README as written: its commands through bash, each printing what the
 * README's next `text` block shows. A value the README cuts short with `…` (`kp1.AcNFAQgA…`,
 * `v…`, or a lone `…` in a table cell) differs on every run and is matched by its shape.
 */
import { spawn } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { expect } from 'vitest'
import { readmeBlocks, readmeCommands } from '../../testkit/test/readme-blocks.ts'

/** Runs one command through bash in `cwd`; returns stdout and stderr as one text, in order. */
export async function runCommand(command: string, cwd: string, timeoutMs = 120_000): Promise<string> {
  const scratch = mkdtempSync(join(tmpdir(), 'kms-proxy-readme-'))
  const outFile = join(scratch, 'output')
  const fd = openSync(outFile, 'w')
  try {
    // detached: its own process group, so that a timeout kills bash and everything it started.
    const child = spawn('bash', ['-c', command], { cwd, detached: true, stdio: ['ignore', fd, fd], env: { PATH: process.env.PATH, HOME: process.env.HOME } })
    await new Promise<void>((done, fail) => {
      const timer = setTimeout(() => {
        process.kill(-child.pid!, 'SIGKILL')
        fail(new Error(`timed out after ${timeoutMs} ms: ${command}`))
      }, timeoutMs)
      child.on('error', fail)
      child.on('close', () => {
        clearTimeout(timer)
        done()
      })
    })
    return readFileSync(outFile, 'utf8')
  } finally {
    closeSync(fd)
    rmSync(scratch, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
  }
}

/**
 * A line of a README's output as a pattern: a word cut short with `…` (or a lone `…`) stands for
 * any run of letters, digits, `_`, `-`, `.` and `,` (and the `…` itself, where the program prints
 * one); what comes before the word (`kp1.`) is kept.
 */
export function linePattern(line: string): RegExp {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  return new RegExp(`^${line.split(/[\w-]*…/).map(escape).join('[\\w.,-]+…?')}$`)
}

/** Checks that `printed` is `expected` line for line (see linePattern). */
export function expectOutput(printed: string, expected: string, what: string): void {
  const lines = printed.trimEnd().split('\n')
  const shown = expected.trimEnd().split('\n')
  expect(lines, `${what}\nprinted:\n${printed}`).toHaveLength(shown.length)
  lines.forEach((line, i) => expect(line, `${what}, line ${i + 1}`).toMatch(linePattern(shown[i]!)))
}

/** One README command and the output block shown after it (`cd` commands show none). */
export interface ReadmeStep {
  command: string
  /** The folder it runs in, after the README's `cd`s from `start`. */
  cwd: string
  output?: string
}

/**
 * The README's commands (readmeCommands) paired in order with its `text` blocks: every command but
 * a `cd` has one. Fails when the counts differ, so an output block cannot go missing unnoticed.
 */
export function readmeSteps(readmePath: string, start: string): ReadmeStep[] {
  const outputs = readmeBlocks(readmePath, 'text').map((block) => block.text)
  const steps: ReadmeStep[] = []
  let cwd = start
  let shown = 0
  for (const command of readmeCommands(readmePath)) {
    if (command.startsWith('cd ')) {
      cwd = resolve(cwd, command.slice(3))
      steps.push({ command, cwd })
    } else {
      steps.push({ command, cwd, output: outputs[shown++] })
    }
  }
  expect(shown, 'one output block per command').toBe(outputs.length)
  expect(steps.every((step) => step.command.startsWith('cd ') || step.output !== undefined), 'a command without its output block').toBe(true)
  return steps
}
