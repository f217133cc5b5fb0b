/** Secrets from the environment, or typed on a terminal without echo. */
import process from 'node:process'
import { CliError, EXIT } from './exit.js'
import { envSecretOnce } from './secret-file.js'

/** A new passphrase shorter than this many characters is warned about (not refused). */
export const MIN_PASSPHRASE_CHARS = 12
/** A new passphrase with fewer different characters than this is warned about (`aaaa…`, `abab…`, `1212…`). */
export const MIN_PASSPHRASE_DISTINCT = 5
/** Typing a new passphrase: how many times an empty one or two that differ are asked again. */
const ATTEMPTS = 3

/**
 * One dialog on the terminal in raw mode, echoing nothing. Raw mode is set before the first
 * prompt is shown and kept until `close`, so nothing typed ahead (even between two prompts) is
 * ever echoed by the terminal. Ctrl-C, and Ctrl-D on an empty line, abort.
 */
function hiddenDialog(): { ask(label: string): Promise<string>; close(): void } {
  const stdin = process.stdin
  const lines: string[] = []
  let waiting: { resolve(line: string): void; reject(error: CliError): void } | undefined
  let aborted: CliError | undefined
  let typed = ''
  const onData = (chunk: Buffer | string) => {
    for (const ch of typeof chunk === 'string' ? chunk : chunk.toString('utf8')) {
      if (ch === '\r' || ch === '\n') {
        process.stderr.write('\n')
        lines.push(typed)
        typed = ''
      } else if (ch === '\u0003' || (ch === '\u0004' && typed === '')) {
        aborted = new CliError(EXIT.USAGE, 'cancelled')
        process.stderr.write('\n')
        break
      } else if (ch === '\u007f' || ch === '\b') typed = typed.slice(0, -1)
      else if (ch >= ' ') typed += ch
    }
    deliver()
  }
  const deliver = () => {
    if (!waiting) return
    const w = waiting
    if (aborted) {
      waiting = undefined
      w.reject(aborted)
    } else if (lines.length > 0) {
      waiting = undefined
      w.resolve(lines.shift()!)
    }
  }
  stdin.setRawMode(true)
  stdin.on('data', onData)
  stdin.resume()
  return {
    ask(label) {
      process.stderr.write(`${label}: `)
      return new Promise((resolve, reject) => {
        waiting = { resolve, reject }
        deliver()
      })
    },
    close() {
      stdin.off('data', onData)
      stdin.setRawMode(false)
      stdin.pause()
    },
  }
}

/**
 * What makes a new passphrase weak, or undefined. The rule (documented in the README): fewer
 * than {@link MIN_PASSPHRASE_CHARS} characters, or fewer than {@link MIN_PASSPHRASE_DISTINCT}
 * different ones. Anyone with a copy of the key file can test guesses offline, each costing one
 * KDF run; a short or repetitive passphrase is among the first guessed.
 */
export function passphraseWeakness(passphrase: string): string | undefined {
  const chars = [...passphrase]
  const s = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`
  if (chars.length < MIN_PASSPHRASE_CHARS) return `is ${s(chars.length, 'character')} long`
  const distinct = new Set(chars).size
  if (distinct < MIN_PASSPHRASE_DISTINCT) return `has only ${s(distinct, 'different character')}`
  return undefined
}

/**
 * The secret in `envName`, or in the file `${envName}_FILE` names (read once: a passphrase does
 * not expire), else typed on the terminal. A new secret (`confirm`) is typed twice, and asked
 * again when empty or when the two differ (up to three times). Off a terminal with the variable
 * unset, a usage error that names the variable; set but empty, its own usage error.
 */
export async function readSecret(envName: string, label: string, confirm: boolean): Promise<string> {
  const what = label.toLowerCase()
  const fromEnv = process.env[envName]
  if (process.env[`${envName}_FILE`] !== undefined) return (await envSecretOnce(envName))!
  if (fromEnv === '') throw new CliError(EXIT.USAGE, `${envName} is set but empty: a ${what} must not be empty`)
  if (fromEnv !== undefined) return fromEnv
  if (!process.stdin.isTTY || typeof process.stdin.setRawMode !== 'function') {
    throw new CliError(EXIT.USAGE, `${what} needed: set ${envName} (or ${envName}_FILE), or run on a terminal to type it`)
  }
  const dialog = hiddenDialog()
  try {
    for (let attempt = 1; ; attempt++) {
      const first = await dialog.ask(label)
      const again = first && confirm ? await dialog.ask(`${label} (again)`) : first
      if (first && again === first) return first
      const problem = first ? `the two ${what}s differ` : `the ${what} must not be empty`
      if (!confirm || attempt === ATTEMPTS) {
        throw new CliError(EXIT.USAGE, !first ? `the ${what} must not be empty` : `the two ${what}s differed ${ATTEMPTS} times; nothing was written`)
      }
      process.stderr.write(`${problem}; type it again\n`)
    }
  } finally {
    dialog.close()
  }
}

/**
 * Asks on the terminal for `expected` to be typed (echoed: it is no secret), before an
 * irreversible step. True only when the line typed is exactly `expected`.
 */
export async function confirmTyped(question: string, expected: string): Promise<boolean> {
  const { createInterface } = await import('node:readline')
  // The terminal's own line editing and echo (cooked mode): the prompt goes out as written.
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: false })
  try {
    const answer = await new Promise<string | undefined>((resolve) => {
      rl.once('close', () => resolve(undefined)) // Ctrl-D
      rl.question(`${question}: `, resolve)
    })
    return answer?.trim() === expected
  } finally {
    rl.close()
  }
}
