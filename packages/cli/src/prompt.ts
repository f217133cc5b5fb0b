/** Secrets from the environment, or typed on a terminal without echo. */
import process from 'node:process'
import { CliError, EXIT } from './exit.js'

/**
 * Reads one line per label from the terminal in raw mode, echoing nothing. Raw mode is set before
 * the first prompt is shown and kept until the last line is read, so nothing typed ahead is ever
 * echoed by the terminal. Ctrl-C and Ctrl-D abort.
 */
function readHidden(labels: string[]): Promise<string[]> {
  const stdin = process.stdin
  const lines: string[] = []
  stdin.setRawMode(true)
  process.stderr.write(`${labels[0]}: `)
  return new Promise((resolve, reject) => {
    let typed = ''
    const finish = (error?: CliError) => {
      stdin.off('data', onData)
      stdin.setRawMode(false)
      stdin.pause()
      if (error) {
        process.stderr.write('\n')
        reject(error)
      } else resolve(lines)
    }
    const onData = (chunk: Buffer | string) => {
      for (const ch of typeof chunk === 'string' ? chunk : chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') {
          lines.push(typed)
          typed = ''
          process.stderr.write('\n')
          if (lines.length === labels.length) return finish()
          process.stderr.write(`${labels[lines.length]}: `)
        } else if (ch === '\u0003' || (ch === '\u0004' && typed === '')) return finish(new CliError(EXIT.USAGE, 'cancelled'))
        else if (ch === '\u007f' || ch === '\b') typed = typed.slice(0, -1)
        else if (ch >= ' ') typed += ch
      }
    }
    stdin.on('data', onData)
    stdin.resume()
  })
}

/**
 * The secret in `envName`, else typed on the terminal (twice when `confirm`). Off a terminal
 * with the variable unset, a usage error that names the variable.
 */
export async function readSecret(envName: string, label: string, confirm: boolean): Promise<string> {
  const fromEnv = process.env[envName]
  if (fromEnv) return fromEnv
  if (!process.stdin.isTTY || typeof process.stdin.setRawMode !== 'function') {
    throw new CliError(EXIT.USAGE, `${label.toLowerCase()} needed: set ${envName}, or run on a terminal to type it`)
  }
  const [first, again] = await readHidden(confirm ? [label, `${label} (again)`] : [label])
  if (!first) throw new CliError(EXIT.USAGE, `${label.toLowerCase()}: must not be empty`)
  if (confirm && again !== first) throw new CliError(EXIT.USAGE, `the two ${label.toLowerCase()}s differ`)
  return first
}
