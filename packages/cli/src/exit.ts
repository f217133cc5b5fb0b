/**
 * Exit codes and the one place that turns an error into a message and a code. Expected errors
 * print one line (no stack); only a bug prints a stack, and then only with KMS_PROXY_DEBUG=1.
 */
import { ERROR_CODES, KmsProxyError, type ErrorCode } from '@kms-proxy/core'

/** The command's exit codes, by name: stable, for scripts to act on. */
export const EXIT = {
  /** Done. */
  OK: 0,
  /** A bug or an error nobody expected. */
  INTERNAL: 1,
  /** Bad command line: unknown command or option, missing argument. */
  USAGE: 2,
  /** No config file (run `kms-proxy init`), a config refused by the trust checks, its key file missing (restore it from a backup), or the chain it names is not in the store. */
  MISSING: 3,
  /** The root key refused: wrong passphrase, wrong KMS key, bad credentials (ERR_ROOT_KEY). */
  ROOT_KEY: 4,
  /** The input is not intact kms-proxy data, or the associated data differs (ERR_DECRYPT, ERR_FORMAT). */
  TAMPERED: 5,
  /** The root key did not answer: KMS, Vault or PKCS#11 bridge down (ERR_ROOT_KEY, retryable). */
  ROOT_KEY_UNREACHABLE: 6,
  /** The store failed: etcd down, lock held, unreadable store file (ERR_STORE). */
  STORE: 7,
  /** The data names a KEK this chain does not have (ERR_UNKNOWN_KEK): another chain's data. */
  UNKNOWN_KEK: 8,
  /** A file could not be read or written, or stdout or stderr was closed early (`| head`). */
  IO: 9,
  /** An optional package the command needs is not installed (k8s-plugin needs @kms-proxy/k8s). */
  NOT_INSTALLED: 10,
  /** The data's KEK, or the chain, is retired (ERR_RETIRED_KEK): `kms-proxy unretire` makes it decrypt again. */
  RETIRED: 11,
  /** The data's KEK, or the chain, was destroyed (ERR_DESTROYED_KEK): the data cannot be decrypted by anyone. */
  DESTROYED: 12,
} as const

/** One of the {@link EXIT} codes, 0 to 12. */
export type ExitCode = (typeof EXIT)[keyof typeof EXIT]

/** An error the CLI expects and explains in one line. */
export class CliError extends Error {
  /** The exit code the command ends with. */
  readonly exitCode: ExitCode
  /**
   * An error that ends the command with `exitCode` and one line on stderr.
   *
   * @param message - one line for stderr, without secrets.
   */
  constructor(exitCode: ExitCode, message: string) {
    super(message)
    this.name = 'CliError'
    this.exitCode = exitCode
  }
}

export const usage = (message: string): CliError => new CliError(EXIT.USAGE, message)

const IO_CODES = new Set(['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'EEXIST', 'ENOSPC', 'EROFS', 'EBUSY', 'EMFILE'])

/**
 * By class, or by code: a program that ends up with two copies of core (a bundler, a monorepo)
 * still gets the right exit code.
 */
function isKmsProxyError(error: unknown): error is KmsProxyError {
  if (error instanceof KmsProxyError) return true
  const code = (error as { code?: unknown } | null)?.code
  return error instanceof Error && typeof code === 'string' && Object.hasOwn(ERROR_CODES, code) && (error as { name?: string }).name === ERROR_CODES[code as ErrorCode]
}

/** A KEK id as the commands print it. */
const kekHex = (id: number) => `0x${id.toString(16).padStart(8, '0')}`

/**
 * Core names a retired or destroyed KEK by its decimal id and its own API; the commands print
 * ids in hex and name the command that undoes a retirement.
 */
function lifecycleMessage(code: 'ERR_RETIRED_KEK' | 'ERR_DESTROYED_KEK', message: string): { exitCode: ExitCode; message: string } {
  const id = /\bKEK (\d{1,10})\b/.exec(message)?.[1]
  const chain = /\bchain\b/.test(message) && id === undefined
  const what = chain ? 'the chain' : id !== undefined ? `KEK ${kekHex(Number(id))}` : 'the KEK'
  if (code === 'ERR_RETIRED_KEK') {
    const undo = chain ? 'kms-proxy unretire --chain' : id !== undefined ? `kms-proxy unretire ${kekHex(Number(id))}` : 'kms-proxy unretire'
    return { exitCode: EXIT.RETIRED, message: `${what} is retired: \`${undo}\` makes it ${chain ? 'usable' : 'decrypt'} again (\`kms-proxy status\` lists what is retired)` }
  }
  return { exitCode: EXIT.DESTROYED, message: `${what} was destroyed: ${chain ? 'its KEKs are' : 'its records are'} deleted for good, and nobody can decrypt data under ${chain ? 'it' : 'that KEK'}` }
}

/**
 * The exit code and the one-line message for any error a command throws.
 *
 * @example
 * ```ts
 * explain(new RootKeyError('wrong passphrase')) // { exitCode: 4, message: 'the root key refused: wrong passphrase' }
 * ```
 */
export function explain(error: unknown): {
  /** What the command exits with. */
  exitCode: ExitCode
  /** One line for stderr. */
  message: string
} {
  if (error instanceof CliError) return { exitCode: error.exitCode, message: error.message }
  if (isKmsProxyError(error)) {
    switch (error.code) {
      case 'ERR_DECRYPT':
        return { exitCode: EXIT.TAMPERED, message: 'decryption failed: the input was altered, is truncated, or the associated data (--aad) differs' }
      case 'ERR_FORMAT':
        return { exitCode: EXIT.TAMPERED, message: `the input is not intact kms-proxy data: ${error.message}` }
      case 'ERR_ROOT_KEY':
        return error.retryable
          ? { exitCode: EXIT.ROOT_KEY_UNREACHABLE, message: `the root key is unreachable: ${error.message}` }
          : { exitCode: EXIT.ROOT_KEY, message: `the root key refused: ${error.message}` }
      case 'ERR_UNKNOWN_KEK':
        return { exitCode: EXIT.UNKNOWN_KEK, message: `${error.message} (was it encrypted with another chain or store, or before the key file was replaced? then restore that key file from a backup)` }
      case 'ERR_STORE':
        return { exitCode: EXIT.STORE, message: `the store failed: ${error.message}` }
      case 'ERR_RETIRED_KEK':
      case 'ERR_DESTROYED_KEK':
        return lifecycleMessage(error.code, error.message)
      default:
        return { exitCode: EXIT.INTERNAL, message: `${error.code}: ${error.message}` }
    }
  }
  if (error instanceof TypeError && /^(ERR_PARSE_ARGS|ERR_INVALID_ARG)/.test((error as { code?: string }).code ?? '')) {
    return { exitCode: EXIT.USAGE, message: error.message }
  }
  const code = (error as { code?: unknown } | null)?.code
  if (code === 'EPIPE') return { exitCode: EXIT.IO, message: 'the output was closed before the end (broken pipe)' }
  if (typeof code === 'string' && IO_CODES.has(code)) {
    const path = (error as { path?: unknown }).path
    const where = typeof path === 'string' ? ` ${path}` : ''
    const what: Record<string, string> = { ENOENT: 'no such file or directory', EACCES: 'permission denied', EPERM: 'operation not permitted', EISDIR: 'is a directory', ENOTDIR: 'not a directory', ENOSPC: 'no space left on device', EROFS: 'read-only file system' }
    return { exitCode: EXIT.IO, message: `cannot access${where}: ${what[code] ?? code}` }
  }
  // Bad options (ours, or a package's TypeError about a config value) are usage errors; a
  // runtime's own coded TypeError (ERR_INVALID_STATE from a stream, ...) is not the user's doing.
  if ((error instanceof RangeError || error instanceof TypeError) && typeof code !== 'string') return { exitCode: EXIT.USAGE, message: error.message }
  return { exitCode: EXIT.INTERNAL, message: `unexpected error: ${(error as Error)?.message ?? String(error)} (set KMS_PROXY_DEBUG=1 for details)` }
}
