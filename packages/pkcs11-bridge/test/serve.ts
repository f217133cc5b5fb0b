/**
 * Child process for tests: starts the bridges described in KMS_PROXY_TEST_BRIDGES (a JSON list
 * of startPkcs11Bridge options), prints `READY [urls]`, and on the stdin line `destroy LABEL`
 * deletes that key from the token behind the bridges' backs (to test a key gone missing). Closes
 * everything when stdin ends.
 */
import * as graphene from 'graphene-pk11'
import { createInterface } from 'node:readline'
import { startPkcs11Bridge, type Pkcs11Bridge, type Pkcs11BridgeOptions } from '../src/index.ts'

const configs = JSON.parse(process.env.KMS_PROXY_TEST_BRIDGES!) as Pkcs11BridgeOptions[]
const bridges: Pkcs11Bridge[] = []
for (const c of configs) bridges.push(await startPkcs11Bridge(c))
process.stdout.write(`READY ${JSON.stringify(bridges.map((b) => b.url))}\n`)

function destroy(label: string): number {
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
    const found = session.find({ class: graphene.ObjectClass.SECRET_KEY, label })
    for (let k = 0; k < found.length; k++) found.items(k).destroy()
    session.close()
    return found.length
  }
  return 0
}

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  const [command, arg] = line.split(' ')
  if (command === 'destroy') process.stdout.write(`DESTROYED ${destroy(arg!)}\n`)
})
lines.on('close', async () => {
  for (const b of bridges) await b.close()
  process.exit(0)
})
