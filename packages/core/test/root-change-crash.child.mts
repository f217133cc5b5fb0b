/**
 * Child process for root-change-crash.test.ts. Reads one JSON job on stdin, then either:
 * - `crash`: runs a change with the store's writes counted, and right after the `crashAt`-th
 *   write returns kills itself with SIGKILL: no cleanup, no finally, no flushed buffer. A run
 *   that ends with fewer writes (`crashAt` 0: any run) prints `{"event":"completed","writes":n}`;
 * - `resume`: runs the change again (runAgain) on each store killed children left part way,
 *   one fresh chain each, nothing counted; prints `{"event":"resumed","index":i}` after each, or
 *   `{"event":"error","at":i,…}`.
 */
import { createInterface } from 'node:readline'
import { countingWrites, openFor, openStore, OPS, runAgain, type Op, type StoreSpec } from './root-change-shared.ts'

interface Job {
  resume?: { store: StoreSpec; op: Op }[]
  crash?: { store: StoreSpec; op: Op; crashAt: number }
}

const say = (line: object) => new Promise<void>((resolve) => process.stdout.write(`${JSON.stringify(line)}\n`, () => resolve()))

const [line] = await createInterface({ input: process.stdin })[Symbol.asyncIterator]().next().then((r) => [r.value as string])
const job = JSON.parse(line!) as Job
const failure = (error: unknown, at: number | 'crash') => {
  const e = error as { code?: string; message?: string }
  return say({ event: 'error', at, code: e.code, message: String(e.message) })
}
// Every copy is tried, so that a failure names every stop the change cannot come back from.
let failed = false
for (const [index, { store, op }] of (job.resume ?? []).entries()) {
  try {
    const report = await runAgain(op, openStore(store))
    await say({ event: 'resumed', index, report })
  } catch (error) {
    failed = true
    await failure(error, index)
  }
}
try {
  if (job.crash) {
    const { store, op, crashAt } = job.crash
    let writes = 0
    const counted = countingWrites(openStore(store), (n) => {
      writes = n
      if (n === crashAt) process.kill(process.pid, 'SIGKILL')
    })
    const report = await OPS[op].run(await openFor(op, counted))
    await say({ event: 'completed', report, writes })
  }
} catch (error) {
  failed = true
  await failure(error, 'crash')
}
process.exit(failed ? 1 : 0)
