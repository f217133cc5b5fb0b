/**
 * Child process for root-change-concurrent.test.ts: one process that keeps encrypting and
 * decrypting (Writer) on a shared store while another changes the chain's root. First stdin
 * line: the job (JSON); then `{"mark":n}` (answered `{"event":"marked"}` after n more
 * encryptions) and `{"stop":true}` (answered `{"event":"done","result":…}`, then it exits).
 * Prints `{"event":"ready"}` after its first 3 encryptions.
 */
import { createInterface } from 'node:readline'
import { KeyChain, fromBase64 } from '../src/index.ts'
import { CHAIN, NEW, OLD, Writer, openStore, type StoreSpec } from './root-change-shared.ts'

interface Job {
  store: StoreSpec
  name: string
  /** `both`: the old and the new root, as a migration deploys them; `old`: only the old one, as `rootKey`. */
  roots: 'both' | 'old'
  maxWrapsPerKek: number
  leaseSize: number
  pauseMs: number
  before: { data: string; text: string }[]
}

const say = (line: object) => new Promise<void>((resolve) => process.stdout.write(`${JSON.stringify(line)}\n`, () => resolve()))

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
const job = JSON.parse((await lines.next()).value as string) as Job
const chain = await KeyChain.open({
  store: openStore(job.store),
  name: CHAIN,
  maxWrapsPerKek: job.maxWrapsPerKek,
  leaseSize: job.leaseSize,
  ...(job.roots === 'both' ? { roots: { default: OLD(), 'default-2': NEW() } } : { rootKey: OLD() }),
})
const writer = new Writer(chain, job.name, job.before.map((m) => ({ data: fromBase64(m.data), text: m.text })), job.pauseMs)
const running = writer.run()
void writer.mark(3).then(() => say({ event: 'ready' }))
for (;;) {
  const { value, done } = await lines.next()
  if (done) break
  const command = JSON.parse(value as string) as { mark?: number; stop?: boolean }
  if (command.mark !== undefined) void writer.mark(command.mark).then(() => say({ event: 'marked' }))
  if (command.stop) break
}
writer.stop()
await say({ event: 'done', result: await running })
process.exit(0)
