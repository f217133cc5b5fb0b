// describeStore against PostgreSQL, for any runtime: the driver instances it makes use
// fetch_types: false (see the README's "The driver instance").
import postgres from 'postgres'
import { createHarness, describeStore, type TestResult } from '../../../testkit/src/index.ts'
import { postgresStore } from '../../src/index.ts'

/** Runs the contract on tables named `<seed>_<n>` of the server at `url`. */
export async function contract(url: string, seed: string): Promise<TestResult[]> {
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
  return t.run()
}
