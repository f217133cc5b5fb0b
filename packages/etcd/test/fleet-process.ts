/**
 * One process of the fleet test (etcd-fleet.test.ts), which bundles it from the sources with
 * esbuild and runs it with node. Usage: fleet-process.mjs <endpoints, comma-separated> <prefix>
 *
 * Opens two chains on one etcd store with every endpoint: `push` (watch on, maxStalenessMs 60 s,
 * so that only the push can show it a rotation within a test) and `poll` (watch off,
 * maxStalenessMs 1.5 s). Each encrypts in its own loop, one record every 20 ms, and prints a
 * JSON line `{"type":"kek","chain","id","at"}` whenever the KEK id in an encryption's header
 * differs from the one before (`at`: when the encryption finished, ms since the epoch). A
 * failed encryption (a member down, an election) prints `{"type":"error","chain","code"}`,
 * once per code in a row, and the loop goes on.
 *
 * Reads commands on stdin: `rotate <chain>` rotates it (a retryable failure is tried again for
 * up to 15 s) and prints `{"type":"rotated","chain","id","calledAt","doneAt"}`; `exit` closes both chains and exits.
 * Prints `{"type":"ready"}` once both chains have encrypted.
 */
import { createInterface } from 'node:readline'
import { KeyChain, KmsProxyError, aesRootKey, decodeHeader } from '@kms-proxy/core'
import { etcdStore } from '../src/index.ts'

const [endpoints, prefix] = process.argv.slice(2) as [string, string]
const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 17 + 9) & 0xff)
const say = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const store = etcdStore({ endpoints: endpoints.split(','), prefix, timeoutMs: 2000 })
const chains = {
  push: await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'push', maxStalenessMs: 60_000 }),
  poll: await KeyChain.open({ rootKey: aesRootKey(ROOT), store, name: 'poll', watch: false, maxStalenessMs: 1500 }),
}
let running = true
const first = new Set<string>()

async function loop(name: keyof typeof chains): Promise<void> {
  const chain = chains[name]
  let last: number | undefined
  let lastError: string | undefined
  while (running) {
    try {
      const id = decodeHeader(await chain.encrypt('fleet')).kekId
      const at = Date.now()
      lastError = undefined
      if (id !== last) say({ type: 'kek', chain: name, id, at })
      last = id
      if (!first.has(name) && first.add(name).size === 2) say({ type: 'ready' })
    } catch (error) {
      const code = error instanceof KmsProxyError ? error.code : 'unexpected'
      if (code !== lastError) say({ type: 'error', chain: name, code, message: code === 'unexpected' ? String(error) : undefined })
      lastError = code
    }
    await sleep(20)
  }
}

const loops = Promise.all([loop('push'), loop('poll')])

async function exit(): Promise<void> {
  running = false
  await loops
  chains.push.close()
  chains.poll.close()
  process.exit(0)
}

/** As an application would: a retryable failure (no leader yet after a member died) is tried again, for up to 15 s. */
async function rotate(name: keyof typeof chains): Promise<void> {
  const calledAt = Date.now()
  for (;;) {
    try {
      const { id } = await chains[name].rotate()
      say({ type: 'rotated', chain: name, id, calledAt, doneAt: Date.now() })
      return
    } catch (error) {
      const retry = error instanceof KmsProxyError && error.retryable && Date.now() - calledAt < 15_000
      say({ type: 'error', chain: name, code: error instanceof KmsProxyError ? error.code : 'unexpected', message: retry ? undefined : String(error) })
      if (!retry) return
      await sleep(100)
    }
  }
}

createInterface({ input: process.stdin })
  .on('line', (line) => {
    const [command, name] = line.trim().split(' ')
    if (command === 'exit') void exit()
    if (command === 'rotate' && (name === 'push' || name === 'poll')) {
      void rotate(name)
    }
  })
  .on('close', () => void exit())
