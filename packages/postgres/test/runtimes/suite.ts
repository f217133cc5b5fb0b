// describeStore against PostgreSQL from another runtime (Deno, Bun): bundled by the test, run
// with the server's URL and a table-name seed as arguments; prints the results as one JSON line.
import postgres from 'postgres'
import { createHarness, describeStore } from '../../../testkit/src/index.ts'
import { postgresStore } from '../../src/index.ts'

const args = (globalThis as { Deno?: { args: string[] } }).Deno?.args ?? (globalThis as unknown as { process: { argv: string[] } }).process.argv.slice(2)
const [url, seed] = args as [string, string]
const t = createHarness()
let n = 0
describeStore(t, {
  name: 'postgres',
  severalRoots: true,
  async open() {
    const table = `${seed}_${++n}`
    const [a, b] = [postgres(url, { max: 2, fetch_types: false, onnotice: () => {} }), postgres(url, { max: 2, fetch_types: false, onnotice: () => {} })]
    return {
      store: postgresStore(a, { table }),
      another: () => postgresStore(b, { table }),
      close: async () => void (await Promise.all([a.end({ timeout: 1 }), b.end({ timeout: 1 })])),
    }
  },
})
const results = await t.run()
console.log(JSON.stringify(results))
