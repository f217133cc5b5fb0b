/**
 * Child process for tests: starts the bridges described in KMS_PROXY_TEST_BRIDGES (a JSON list
 * of startPkcs11Bridge options), prints `READY [urls]`, and on the stdin line `destroy LABEL`
 * deletes that key from the token behind the bridges' backs (to test a key gone missing); on
 * `reinit LABEL` closes every session of the token and initializes it again (the user PIN is
 * then unset, so the bridge can no longer log in). Closes everything when stdin ends.
 *
 * Each log line of the bridges is printed as `LOG "<line>"`. KMS_PROXY_TEST_UMASK (octal) is set
 * as the process umask first. With KMS_PROXY_TEST_PARALLEL=1 the bridges start at the same
 * moment. If any fails to start, prints `FAILED [{code, name, message} | null per bridge]`
 * instead of READY, closes the others and exits 1.
 */
import * as graphene from 'graphene-pk11'
import { createInterface } from 'node:readline'
import { startPkcs11Bridge, type Pkcs11Bridge, type Pkcs11BridgeOptions } from '../src/index.ts'
import { SO_PIN } from './hsm.ts'

const configs = JSON.parse(process.env.KMS_PROXY_TEST_BRIDGES!) as Pkcs11BridgeOptions[]
if (process.env.KMS_PROXY_TEST_UMASK !== undefined) process.umask(parseInt(process.env.KMS_PROXY_TEST_UMASK, 8))
const log = (line: string) => process.stdout.write(`LOG ${JSON.stringify(line)}\n`)
const start = (c: Pkcs11BridgeOptions) => startPkcs11Bridge({ log, ...c })

let settled: PromiseSettledResult<Pkcs11Bridge>[]
if (process.env.KMS_PROXY_TEST_PARALLEL === '1') {
  settled = await Promise.allSettled(configs.map(start))
} else {
  settled = []
  for (const c of configs) {
    const result = await start(c).then(
      (value) => ({ status: 'fulfilled', value }) as const,
      (reason: unknown) => ({ status: 'rejected', reason }) as const,
    )
    settled.push(result)
    if (result.status === 'rejected') break
  }
}
const bridges = settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
if (bridges.length < configs.length) {
  const failures = settled.map((r) => {
    if (r.status === 'fulfilled') return null
    const e = r.reason as { code?: string; name?: string; message?: string }
    return { code: e.code, name: e.name, message: e.message }
  })
  process.stdout.write(`FAILED ${JSON.stringify(failures)}\n`)
  for (const b of bridges) await b.close()
  process.exit(1)
}
process.stdout.write(`READY ${JSON.stringify(bridges.map((b) => b.url))}\n`)

/** The token's slot and a session on it (logged in, or already logged in through the bridges). */
function openToken(): { slot: graphene.Slot; session: graphene.Session } | undefined {
  const { module: path, tokenLabel, pin } = configs[0]!
  const module = graphene.Module.load(path)
  module.initialize() // already initialized by the bridge: graphene ignores that
  const slots = module.getSlots(true)
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i)
    if (slot.getToken().label.trim() !== tokenLabel) continue
    const session = slot.open(graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION)
    try {
      session.login(pin)
    } catch {
      // Already logged in through the bridge's session.
    }
    return { slot, session }
  }
  return undefined
}

function destroy(label: string): number {
  const opened = openToken()
  if (!opened) return 0
  const found = opened.session.find({ class: graphene.ObjectClass.SECRET_KEY, label })
  for (let k = 0; k < found.length; k++) found.items(k).destroy()
  opened.session.close()
  return found.length
}

function reinit(label: string): string {
  const opened = openToken()
  if (!opened) return 'no token'
  opened.slot.closeAll()
  // graphene's Slot.initToken reads a return value that pkcs11js's C_InitToken does not give.
  opened.slot.lib.C_InitToken(opened.slot.handle, SO_PIN, label)
  return 'ok'
}

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  const [command, arg] = line.split(' ')
  if (command === 'destroy') process.stdout.write(`DESTROYED ${destroy(arg!)}\n`)
  if (command === 'reinit') process.stdout.write(`REINIT ${JSON.stringify(reinit(arg!))}\n`)
})
lines.on('close', async () => {
  for (const b of bridges) await b.close()
  process.exit(0)
})
