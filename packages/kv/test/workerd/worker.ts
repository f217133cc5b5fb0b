// Test worker for workerd (bundled by esbuild, run by Miniflare with a KV binding KEYS):
// GET / runs describeStore and the Workers KV behaviour tests and answers with the results.
import { createHarness, describeStore } from '@kms-proxy/testkit'
import { workersKvStore, type WorkersKvNamespace } from '../../src/index.ts'
import { describeWorkersKvBehaviour, describeWorkersKvRoots, measurements } from './kv-behaviour.ts'
import { describeRootsChain, type RootsChainMeasured } from '../roots-chain.ts'

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
    describeWorkersKvRoots(t, env.KEYS, unique)
    let roots: RootsChainMeasured | undefined
    describeRootsChain(
      t,
      'workersKvStore',
      async () => {
        const prefix = `roots-chain-${unique()}`
        const keys = async () => (await env.KEYS.list({ prefix })).keys.map((k) => k.name)
        return { store: workersKvStore(env.KEYS, { prefix }), another: () => workersKvStore(env.KEYS, { prefix }), keys }
      },
      (m) => (roots = m),
    )
    const results = await t.run()
    return Response.json({ results, measurements, roots, prefixes: n })
  },
}
