// One Worker of the rotation test: several copies of it (several Workers, one isolate each) bind
// the one KeyChainObject class of the tests worker as KEYS, open the same chain and encrypt at
// once with a small maxWrapsPerKek. POST /run {prefix, chain, count, maxWraps, leaseSize}
// answers the encrypted data (hex) with what it said, and the chain's counters. The chain is kept
// in a global between requests, as a real Worker keeps it: the second request uses the store
// made during the first.
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { durableObjectStore, type DurableObjectNamespaceLike } from '../../src/index.ts'
import { ROOT } from './root.ts'

const chains = new Map<string, Promise<KeyChain>>()
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')

export default {
  async fetch(request: Request, env: { KEYS: DurableObjectNamespaceLike; NAME: string }): Promise<Response> {
    const { prefix, chain: name, count, maxWraps, leaseSize } = (await request.json()) as { prefix: string; chain: string; count: number; maxWraps: number; leaseSize: number }
    if (!chains.has(prefix)) chains.set(prefix, KeyChain.open({ rootKey: aesRootKey(ROOT), store: durableObjectStore(env.KEYS, { prefix }), name, maxWrapsPerKek: maxWraps, leaseSize, dekPoolSize: 0, watch: false }))
    const chain = await chains.get(prefix)!
    const out: Array<[string, string]> = []
    const started = Date.now()
    // 8 in flight at a time, as a Worker serving several requests at once.
    for (let i = 0; i < count; i += 8) {
      const texts = Array.from({ length: Math.min(8, count - i) }, (_, k) => `${env.NAME}:${request.headers.get('x-round')}:${i + k}`)
      const made = await Promise.all(texts.map((text) => chain.encrypt(text)))
      made.forEach((e, k) => out.push([hex(e), texts[k]!]))
    }
    const s = chain.stats()
    return Response.json({ encrypted: out, ms: Date.now() - started, rotations: s.rotations, rootCalls: s.rootKeyWraps + s.rootKeyUnwraps })
  },
}
