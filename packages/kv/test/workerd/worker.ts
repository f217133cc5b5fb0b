// Test worker for workerd (bundled by esbuild, run by Miniflare with a KV binding KEYS):
// GET / runs describeStore and the Workers KV behaviour tests and answers with the results.
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { workersKvStore, type WorkersKvNamespace } from '../../src/index.ts'
import { describeWorkersKvBehaviour, describeWorkersKvRoots, measurements } from './kv-behaviour.ts'
import { describeSeveralRoots } from '../several-roots.ts'

let n = 0
const unique = () => `t${Date.now().toString(36)}-${n++}:`

export default {
  async fetch(_request: Request, env: { KEYS: WorkersKvNamespace }): Promise<Response> {
    const t = createHarness()
    describeStore(t, {
      name: 'workersKvStore',
      atomic: false,
      severalRoots: true,
      async open() {
        const prefix = unique()
        return { store: workersKvStore(env.KEYS, { prefix }), another: () => workersKvStore(env.KEYS, { prefix }) }
      },
    })
    describeWorkersKvBehaviour(t, env.KEYS, unique)
    describeSeveralRoots(t, 'workersKvStore', async () => {
      const prefix = unique()
      return { store: workersKvStore(env.KEYS, { prefix }), another: () => workersKvStore(env.KEYS, { prefix }) }
    })
    describeWorkersKvRoots(t, env.KEYS, unique)
    const results = await t.run()
    return Response.json({ results, measurements, prefixes: n })
  },
}
