/**
 * Starts Debian's PostgreSQL (the newest under /usr/lib/postgresql/<version>/bin) as a private
 * cluster on a free loopback port in a temporary folder, and stops it again. initdb refuses to
 * run as root, so as root the folder is given to the `postgres` user and every server command
 * runs through `runuser -u postgres --`.
 *
 * The cluster trusts every local and loopback connection (a test cluster only), except the
 * role `kms_pw`, which must give its password over TCP (scram-sha-256): the tests that check
 * that no password reaches an error use it.
 */
import { execFile } from 'node:child_process'
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { freePort } from '../../testkit/test/free-port.ts'

const run = promisify(execFile)

function binDir(): string | undefined {
  const root = '/usr/lib/postgresql'
  if (!existsSync(root)) return undefined
  const versions = readdirSync(root)
    .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a))
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin')
}

const BIN = binDir()
const asRoot = process.getuid?.() === 0

/** Whether a PostgreSQL server can be started here (Debian's `postgresql` package installed). */
export const havePostgres = BIN !== undefined && (!asRoot || existsSync('/usr/sbin/runuser') || existsSync('/sbin/runuser'))

/** The password of the role `kms_pw`. */
export const PW_ROLE_PASSWORD = 'S3cret-pw-8d1e'

export interface PgServer {
  port: number
  /** `postgres://postgres@127.0.0.1:PORT/postgres` (trust). */
  url: string
  dir: string
  /** Stops the server with `-m fast` (clients are disconnected; the folder stays). */
  stopFast(): Promise<void>
  /** Starts it again on the same port and folder; resolves once it accepts connections. */
  start(): Promise<void>
  /** Stops it at once (immediate) and removes the folder. */
  stop(): Promise<void>
  /** The server's log so far (for failure messages). */
  log(): string
}

async function server(args: string[], timeoutMs = 60_000): Promise<string> {
  const cmd = asRoot ? 'runuser' : join(BIN!, args[0]!)
  const argv = asRoot ? ['-u', 'postgres', '--', join(BIN!, args[0]!), ...args.slice(1)] : args.slice(1)
  const { stdout } = await run(cmd, argv, { timeout: timeoutMs, maxBuffer: 1 << 20 })
  return stdout
}

export async function startPostgres(): Promise<PgServer> {
  if (!BIN) throw new Error('PostgreSQL is not installed (apt-get install postgresql)')
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir()
  const dir = mkdtempSync(join(base, 'kms-proxy-pg-'))
  const data = join(dir, 'data')
  if (asRoot) {
    const { stdout } = await run('id', ['-u', 'postgres'])
    const { stdout: gid } = await run('id', ['-g', 'postgres'])
    chownSync(dir, Number(stdout.trim()), Number(gid.trim()))
  }
  const port = await freePort()
  await server(['initdb', '-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '--no-instructions', '-E', 'UTF8', '--locale=C'])
  // The password role first: pg_hba.conf is read top down.
  const hba = join(data, 'pg_hba.conf')
  writeFileSync(hba, `host all kms_pw 127.0.0.1/32 scram-sha-256\n${readFileSync(hba, 'utf8')}`)
  const logFile = join(dir, 'server.log')
  const serverOptions = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=200`
  const start = () => server(['pg_ctl', '-D', data, '-o', serverOptions, '-l', logFile, '-w', '-t', '60', 'start'], 90_000)
  await start()
  const pg: PgServer = {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    dir,
    async stopFast() {
      await server(['pg_ctl', '-D', data, '-m', 'fast', '-w', '-t', '60', 'stop'], 90_000)
    },
    async start() {
      await start()
    },
    async stop() {
      await server(['pg_ctl', '-D', data, '-m', 'immediate', '-w', 'stop']).catch(() => {})
      rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
    },
    log: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-4000) : ''),
  }
  return pg
}
