// A Worker that keeps one chain for its isolate's life, as a real Worker keeps it in a global
// between requests. Two copies of it (two isolates) share one KV namespace in the staleness
// test. GET /encrypt: the KEK id a fresh encryption used; POST /rotate: the new primary's id.
// The chain polls the head (Workers KV has no push): `maxStalenessMs` comes from ?stale= on the
// first request.
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { workersKvStore, type WorkersKvNamespace } from '../../src/index.ts'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 7 + 1) & 0xff)
const kekIdOf = (e: Uint8Array) => ((e[1]! << 24) | (e[2]! << 16) | (e[3]! << 8) | e[4]!) >>> 0
let chain: KeyChain | undefined

export default {
  async fetch(request: Request, env: { KEYS: WorkersKvNamespace }): Promise<Response> {
    const url = new URL(request.url)
    chain ??= await KeyChain.open({
      rootKey: aesRootKey(ROOT),
      store: workersKvStore(env.KEYS, { prefix: 'staleness:' }),
      maxStalenessMs: Number(url.searchParams.get('stale') ?? '15000'),
      dekPoolSize: 0,
    })
    if (url.pathname === '/rotate') await chain.rotate()
    const kek = kekIdOf(await chain.encrypt('x'))
    return Response.json({ kek, watching: typeof workersKvStore(env.KEYS).watchHead === 'function' })
  },
}
