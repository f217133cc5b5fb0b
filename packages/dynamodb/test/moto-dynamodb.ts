/**
 * moto_server (the open-source AWS emulator) serving DynamoDB, started by a test on a free
 * loopback port in its own temporary folder, with the store's table made by createDynamoDbTable.
 */
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createDynamoDbTable } from '../src/index.ts'
import { freePort } from '../../testkit/test/free-port.ts'

/** Fake credentials: moto routes by the signature's scope but checks no signature. */
export const CREDENTIALS = Object.freeze({ accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' })
export const REGION = 'eu-central-1'

/** moto_server's main() (moto 5.2.1) with threaded=False: the same application, one request at a time. */
const SERIAL_MOTO = `
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
app.debug = True
run_simple('127.0.0.1', int(sys.argv[1]), app, threaded=False)
`

/**
 * The Python that runs moto_server (its script's interpreter, through pyenv's shim when there is
 * one), else `python3`: the first that can import moto. Not simply `python3` from PATH: the test
 * command puts the chosen Node's folder (often /usr/bin, with the system's python3) first.
 */
function motoPython(): string[] {
  const candidates: string[][] = []
  const shimmed = spawnSync('pyenv', ['which', 'moto_server'], { encoding: 'utf8' })
  const found = spawnSync('sh', ['-c', 'command -v moto_server'], { encoding: 'utf8' })
  for (const script of [shimmed.status === 0 ? shimmed.stdout.trim() : '', found.status === 0 ? found.stdout.trim() : '']) {
    if (!script) continue
    const first = readFileSync(script, 'utf8').split('\n', 1)[0] ?? ''
    if (first.startsWith('#!') && !/\b(ba)?sh\b/.test(first)) candidates.push(first.slice(2).trim().split(/\s+/))
  }
  candidates.push(['python3'])
  for (const [command, ...args] of candidates) {
    if (spawnSync(command!, [...args, '-c', 'import moto, werkzeug'], { stdio: 'ignore' }).status === 0) return [command!, ...args]
  }
  return ['python3']
}

export interface MotoDynamoDb {
  /** `http://127.0.0.1:PORT/` */
  endpoint: string
  /** A table with the store's schema, made at start. */
  table: string
  /** Makes another table with the store's schema. */
  createTable(name: string): Promise<void>
  stop(): Promise<void>
}

export async function startMotoDynamoDb(table = 'kms-proxy'): Promise<MotoDynamoDb> {
  const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-moto-'))
  const port = await freePort()
  // moto_server's own entry point serves each request on its own thread, and moto's DynamoDB
  // checks a ConditionExpression and writes the item without a lock: under load two conditional
  // PutItems from one version both succeed (seen here: more than one winner of 16 in a round, a KEK 14 uses
  // over its limit across 8 processes), which DynamoDB never allows. The same application served
  // one request at a time is as atomic per item as DynamoDB.
  const [python, ...pythonArgs] = motoPython()
  const child = spawn(python!, [...pythonArgs, '-c', SERIAL_MOTO, String(port)], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MOTO_PORT: String(port) } })
  const stderr: string[] = []
  child.stderr!.on('data', (d: Buffer) => stderr.length < 20 && stderr.push(d.toString()))
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const endpoint = `http://127.0.0.1:${port}/`
  // moto (Python) takes 2 s to start on an idle machine and more than 40 s on a loaded one.
  const deadline = Date.now() + 100_000
  for (;;) {
    try {
      await fetch(`${endpoint}moto-api/`)
      break
    } catch {
      if (Date.now() > deadline || child.exitCode !== null) {
        child.kill('SIGKILL')
        rmSync(dir, { recursive: true, force: true })
        throw new Error(`moto did not start: ${stderr.join('').slice(-1000)}`)
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  const createTable = async (name: string) => {
    await createDynamoDbTable({ table: name, region: REGION, credentials: CREDENTIALS, endpoint })
  }
  await createTable(table)
  return {
    endpoint,
    table,
    createTable,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exited
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** One DynamoDB call signed by nobody (moto does not check): for tests that plant or inspect items. */
export async function rawCall(moto: MotoDynamoDb, action: string, payload: object): Promise<any> {
  const response = await fetch(moto.endpoint, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-amz-json-1.0',
      'x-amz-target': `DynamoDB_20120810.${action}`,
      authorization: `AWS4-HMAC-SHA256 Credential=${CREDENTIALS.accessKeyId}/20260101/${REGION}/dynamodb/aws4_request, SignedHeaders=host, Signature=0`,
    },
    body: JSON.stringify(payload),
  })
  const json = await response.json()
  if (!response.ok) throw new Error(`${action}: ${JSON.stringify(json)}`)
  return json
}
