/**
 * moto_server (the open-source AWS emulator) on a free loopback port, for the CLI's AWS KMS
 * root: like the kms package's fake, but it waits as long as a loaded machine needs and stops
 * the server when it never answers (a server left running would outlive the test).
 */
import { spawn } from 'node:child_process'
import { signV4, type AwsCredentials } from '../../kms/src/sigv4.ts'
import { freePort } from '../../testkit/test/free-port.ts'

export interface Moto {
  endpoint: string
  /** Calls a KMS action on moto, signed. */
  kms(action: string, payload: object): Promise<any>
  close(): void
}

export async function startMoto(credentials: AwsCredentials, region: string, waitMs: number): Promise<Moto> {
  const port = await freePort()
  const child = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' })
  const endpoint = `http://127.0.0.1:${port}/`
  for (const started = Date.now(); ; ) {
    try {
      await fetch(endpoint)
      break
    } catch {
      if (Date.now() - started > waitMs || child.exitCode !== null) {
        child.kill()
        throw new Error(`moto_server did not answer within ${waitMs} ms`)
      }
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  async function kms(action: string, payload: object): Promise<any> {
    const body = JSON.stringify(payload)
    const headers = await signV4({ method: 'POST', url: new URL(endpoint), headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${action}` }, body, region, service: 'kms', credentials })
    return (await fetch(endpoint, { method: 'POST', headers, body })).json()
  }
  return { endpoint, kms, close: () => void child.kill() }
}
