// The store contract as a plain function, bundled by esbuild for workerd.
import { createHarness, describeStore, type TestResult } from '@kms-proxy/testkit'
import { dynamoDbStore } from '@kms-proxy/dynamodb'

export async function runSuite(endpoint: string, table: string, tag: string): Promise<TestResult[]> {
  const t = createHarness()
  let n = 0
  const open = (prefix: string) => dynamoDbStore({ table, region: 'eu-central-1', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'not-checked-by-moto' }, endpoint, prefix })
  describeStore(t, {
    name: `dynamodb in ${tag}`,
    severalRoots: true,
    async open() {
      const prefix = `${tag}-${Date.now().toString(36)}-${++n}/`
      return { store: open(prefix), another: () => open(prefix) }
    },
  })
  return t.run()
}
