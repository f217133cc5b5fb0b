/**
 * Secrets kept in files (`VAULT_TOKEN_FILE`, `GCP_ACCESS_TOKEN_FILE`, …): a Vault Agent sink, a
 * Kubernetes Secret volume or a sidecar rewrites the file when the token rotates, so a process
 * that runs for days reads it again whenever it changed, not once at start.
 */
import { readFile, stat } from 'node:fs/promises'
import process from 'node:process'
import { RootKeyError } from '@kms-proxy/core'
import { usage } from './exit.js'

/** A secret read from a file: the current content, re-read when the file changed; `invalidate` forces a re-read. */
export interface FileSecret {
  (): Promise<string>
  /** Re-read at the next call even if the file looks unchanged (a KMS refused the token; the roots call it). */
  invalidate(stale?: string): void
}

/** Tries before giving up on a file that changes while it is read. */
const READ_TRIES = 3

/**
 * The file's identity and version: a Kubernetes Secret volume swaps a symbolic link to a new
 * folder (a new inode), an editor or agent rewrites in place (new mtime, ctime or size); `stat`
 * follows the link, so either shows.
 */
async function signature(path: string): Promise<string> {
  const s = await stat(path, { bigint: true })
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`
}

/** Trailing line breaks are dropped (`echo "$TOKEN" > file`); nothing else is changed. */
const content = (text: string) => text.replace(/[\r\n]+$/, '')

/**
 * The secret in `path`, as a function the KMS roots call before each request. Each call costs one
 * `stat`; the file is read again only when its inode, size, mtime or ctime changed, or after
 * `invalidate` (a root whose token was refused calls it, then retries once). A root-key call is
 * rare (an unlock or a rotation), so a stat per call costs nothing that matters.
 *
 * @param variable - the environment variable that named the file, for messages (never the content).
 * @throws {@link RootKeyError} - (from the returned function) `ERR_ROOT_KEY`, retryable: the file
 *   cannot be read (it may be between two versions); not retryable: the file is empty.
 */
export function fileSecret(path: string, variable: string): FileSecret {
  let cached: { signature: string; value: string } | undefined
  const read = async (): Promise<string> => {
    for (let attempt = 1; ; attempt++) {
      let before: string
      let text: string
      try {
        before = await signature(path)
        if (cached?.signature === before) return cached.value
        text = await readFile(path, 'utf8')
        // Written while read: read the new version rather than half of it.
        if ((await signature(path)) !== before && attempt < READ_TRIES) continue
      } catch (error) {
        throw new RootKeyError(`${variable}: cannot read ${path} (${(error as { code?: string }).code ?? 'error'})`, { retryable: true })
      }
      const value = content(text)
      if (value.length === 0) throw new RootKeyError(`${variable}: ${path} is empty`)
      cached = { signature: before, value }
      return value
    }
  }
  const invalidate = (stale?: string) => {
    if (stale === undefined || cached?.value === stale) cached = undefined
  }
  return Object.assign(read, { invalidate, toString: () => `[${variable}]`, toJSON: () => `[${variable}]` })
}

/**
 * A secret from the environment: `NAME` itself, or the file `NAME_FILE` names (re-read when it
 * changes, {@link fileSecret}). The file is read once here, so a missing or empty one fails the
 * command at once (exit 2) rather than at its first root-key call.
 *
 * @returns undefined when neither is set.
 * @throws {@link CliError} - EXIT.USAGE: both are set, or the file cannot be read or is empty.
 */
export async function envSecret(name: string): Promise<string | FileSecret | undefined> {
  const value = process.env[name]
  const file = process.env[`${name}_FILE`]
  if (value !== undefined && file !== undefined) throw usage(`both ${name} and ${name}_FILE are set: set one`)
  if (file === undefined) return value === '' ? undefined : value
  return envFileSecret(`${name}_FILE`)
}

/**
 * The secret in the file the variable `variable` names ({@link fileSecret}), read once here so that
 * a missing or empty file fails at once (exit 2).
 *
 * @throws {@link CliError} - EXIT.USAGE: the variable is empty, or the file cannot be read or is empty.
 */
export async function envFileSecret(variable: string): Promise<FileSecret> {
  const file = process.env[variable]
  if (!file) throw usage(`${variable} is not set, or empty: it names the file that holds the secret`)
  const secret = fileSecret(file, variable)
  try {
    await secret()
  } catch (error) {
    throw usage((error as Error).message)
  }
  return secret
}

/** The content of `NAME_FILE` read once (a passphrase: it does not expire), or undefined when unset. */
export async function envSecretOnce(name: string): Promise<string | undefined> {
  const secret = await envSecret(name)
  return typeof secret === 'function' ? secret() : secret
}
