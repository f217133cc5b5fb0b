/**
 * The `kms-proxy` command and the helpers it shares: `main(args)` runs a command and resolves to
 * its exit code; `openChainFromConfig(path)` opens the chain a `kms-proxy init` config describes.
 *
 * @example
 * ```ts
 * import { openChainFromConfig } from '@kms-proxy/cli'
 * const chain = await openChainFromConfig('/etc/kms-proxy/kms-proxy.json') // secrets from the environment
 * const encrypted = await chain.encrypt(record)
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/cli
 */
import process from 'node:process'
import { COMMANDS, parse } from './commands.js'
import { EXIT, explain } from './exit.js'
import { endOnFailedOutput, errorLine, guardOutput, outputFailure } from './io.js'
import { version } from '../package.json'

export { openChainFromConfig, loadConfig, configPath, CONFIG_FORMAT, SECRET_ENV } from './config.js'
export type { CliConfig, StoreConfig, RootKeyConfig, NamedRootKeyConfig, PendingRootChange, LoadOptions } from './config.js'
export { CREDENTIAL_ENV } from './credentials.js'
export type { AwsCredentialsConfig, GcpCredentialsConfig, AzureCredentialsConfig } from './credentials.js'
export { EXIT, CliError, explain } from './exit.js'
export type { ExitCode } from './exit.js'

/** This package's version, from its package.json (inlined by the build: a release prints its own). */
export const VERSION: string = version

function overview(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length))
  return `Usage: kms-proxy <command> [options]

Envelope encryption with a key chain: a root key (passphrase, KMS, HSM) asked once per unlock
and rotation, not once per file.

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`)
  .join('\n')}

Run \`kms-proxy <command> --help\` for its options. Exit codes: 0 ok, 1 internal error, 2 usage,
3 config missing or refused, or chain missing, 4 root key refused (wrong passphrase), 5 tampered
or not kms-proxy data, 6 root key unreachable, 7 store failed, 8 unknown KEK, 9 file error,
10 package missing, 11 KEK or chain retired, 12 KEK or chain destroyed.`
}

/**
 * Runs one command line (without the program name) and resolves to the exit code. Never throws;
 * a stdout or stderr that fails (a reader gone: `| head`) ends the process at once with exit 9.
 */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args
  const known = name !== undefined && Object.hasOwn(COMMANDS, name)
  guardOutput(known ? `kms-proxy ${name}` : 'kms-proxy')
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    const text = overview()
    if (name === undefined) {
      process.stderr.write(`${text}\n`)
      return EXIT.USAGE
    }
    process.stdout.write(`${text}\n`)
    return EXIT.OK
  }
  if (name === '--version' || name === '-V') {
    process.stdout.write(`kms-proxy ${VERSION}\n`)
    return EXIT.OK
  }
  const command = known ? COMMANDS[name] : undefined
  if (!command) {
    errorLine(`kms-proxy: unknown command "${name}". Commands: ${Object.keys(COMMANDS).join(', ')}. See kms-proxy --help`)
    return EXIT.USAGE
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${command.help}\n`)
    return EXIT.OK
  }
  try {
    const { values, positionals } = parse(command, rest)
    return await command.run(values, positionals)
  } catch (error) {
    const failed = outputFailure()
    if (failed) endOnFailedOutput(`kms-proxy ${name}`, failed.stream, failed.error)
    const { exitCode, message } = explain(error)
    errorLine(`kms-proxy ${name}: ${message}`)
    if (exitCode === EXIT.USAGE && !/^(cancelled|the two|(the )?passphrase|KMS_PROXY_PASSPHRASE)/.test(message)) process.stderr.write(`See kms-proxy ${name} --help\n`)
    if (exitCode === EXIT.INTERNAL && process.env.KMS_PROXY_DEBUG === '1') process.stderr.write(`${(error as Error)?.stack ?? ''}\n`)
    return exitCode
  }
}

/**
 * The bin's whole body: runs `main`, then exits with its code once stdout has drained (an exit
 * code set while streams are still open would be lost on some runtimes, and a k8s-plugin that
 * stopped must not wait for idle handles). A write to stdout or stderr that failed (a reader
 * that went away: EPIPE) ends in exit 9 with one line, whenever it happened.
 */
export async function runAndExit(args: string[]): Promise<void> {
  const code = await main(args)
  const failed = outputFailure()
  if (failed) endOnFailedOutput(`kms-proxy${args[0] !== undefined && Object.hasOwn(COMMANDS, args[0]) ? ` ${args[0]}` : ''}`, failed.stream, failed.error)
  process.exitCode = code
  if (process.stdout.writableLength > 0 && !process.stdout.destroyed) process.stdout.once('drain', () => process.exit(code))
  else process.exit(code)
}
