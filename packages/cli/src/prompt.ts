/** Secrets from the environment, or typed on a terminal without echo. */
import process from 'node:process'
import { CliError, EXIT } from './exit.js'

/** Reads one line from the terminal in raw mode, echoing nothing. Ctrl-C and Ctrl-D abort. */
function readHidden(label: string): Promise<string> {
  const stdin = process.stdin
  process.stderr.write(`${label}: `)
  return new Promise((resolve, reject) => {
    let typed = ''
    const finish = (error?: CliError) => {
      stdin.off('data', onData)
      stdin.setRawMode(false)
      stdin.pause()
      process.stderr.write('\n')
      if (error) reject(error)
      else resolve(typed)
    }
    const onData = (chunk: Buffer | string) => {
      for (const ch of typeof chunk === 'string' ? chunk : chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return finish()
        if (ch === '\u0003' || (ch === '\u0004' && typed === '')) return finish(new CliError(EXIT.USAGE, 'cancelled'))
        if (ch === '\u007f' || ch === '\b') typed = typed.slice(0, -1)
        else if (ch >= ' ') typed += ch
      }
    }
    stdin.setRawMode(true)
    stdin.resume()
    stdin.on('data', onData)
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
  const first = await readHidden(label)
  if (first.length === 0) throw new CliError(EXIT.USAGE, `${label.toLowerCase()}: must not be empty`)
  if (confirm && (await readHidden(`${label} (again)`)) !== first) throw new CliError(EXIT.USAGE, `the two ${label.toLowerCase()}s differ`)
  return first
}
