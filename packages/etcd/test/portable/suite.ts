// The store contract as a plain function, bundled by esbuild for workerd and for Chromium.
import { createHarness, describeStore, type TestResult } from '@kms-proxy/testkit'
import { etcdStore } from '@kms-proxy/etcd'

export async function runSuite(url: string, tag: string): Promise<TestResult[]> {
  const t = createHarness()
  let n = 0
  describeStore(t, {
    name: `etcd in ${tag}`,
    severalRoots: true,
    watch: true,
    async open() {
      const prefix = `${tag}-${Date.now().toString(36)}-${++n}/`
      return { store: etcdStore({ endpoints: [url], prefix }), another: () => etcdStore({ endpoints: [url], prefix }) }
    },
  })
  return t.run()
}
