/** moto_server (the open-source AWS emulator) started on a free loopback port, with a KMS caller. */
import { spawn } from 'node:child_process'
import { createServer } from 'node:http'
import { signV4, type AwsCredentials } from '../../src/sigv4.ts'
import { freePort } from '../../../testkit/test/free-port.ts'

export interface Moto {
  endpoint: string
  /** Calls a KMS action on moto, signed with our signer. */
  kms(action: string, payload: object): Promise<any>
  close(): void
  /** Settles once the moto process has exited. */
  exited: Promise<void>
}

export async function startMoto(credentials: AwsCredentials, region = 'eu-central-1'): Promise<Moto> {
  const port = await freePort()
  const child = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' })
  const endpoint = `http://127.0.0.1:${port}/`
  // moto (Python) takes 2 s to start on an idle machine, 12 s at a load average of 25, and more
  // than 40 s at 34 with four test files starting one each: wait up to 100 s.
  const deadline = Date.now() + 100_000
  for (;;) {
    try {
      await fetch(endpoint)
      break
    } catch {
      if (Date.now() > deadline) {
        child.kill()
        throw new Error('moto_server did not start')
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  async function kms(action: string, payload: object): Promise<any> {
    const body = JSON.stringify(payload)
    const url = new URL(endpoint)
    const headers = await signV4({ method: 'POST', url, headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${action}` }, body, region, service: 'kms', credentials })
    const response = await fetch(endpoint, { method: 'POST', headers, body })
    return response.json()
  }
  const exited = new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())))
  return { endpoint, kms, close: () => void child.kill(), exited }
}
