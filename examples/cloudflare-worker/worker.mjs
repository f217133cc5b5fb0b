// An encrypt/decrypt JSON API on Cloudflare Workers, KEKs in Workers KV:
//   POST /encrypt {"text": "..."}      -> {"encrypted": "kp1...."}
//   POST /decrypt {"encrypted": "..."} -> {"text": "..."}
// Errors: 400 {"error": "ERR_DECRYPT" | "ERR_FORMAT" | ... | "ERR_REQUEST"}.
// Bindings: KEYS (KV namespace), ROOT_KEY (secret: base64 of 32 random bytes).
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { workersKvStore } from '@kms-proxy/kv'

/** One chain per isolate: the root key unwraps each KEK once, then stays out of the hot path. */
let opened

function chainFor(env) {
  if (opened?.secret !== env.ROOT_KEY) {
    if (typeof env.ROOT_KEY !== 'string') throw new Error('the ROOT_KEY secret is not set')
    const bytes = Uint8Array.from(atob(env.ROOT_KEY), (c) => c.charCodeAt(0))
    if (bytes.length !== 32) throw new Error('ROOT_KEY must be base64 of 32 bytes')
    const rootKey = aesRootKey(bytes) // imported non-extractable; our copy is zeroed next
    bytes.fill(0)
    const chain = KeyChain.open({
      rootKey,
      store: workersKvStore(env.KEYS),
      name: env.CHAIN_NAME ?? 'default',
      // Workers KV has no compare-and-swap: isolates may share a usage lease, so keep a margin.
      maxWrapsPerKek: Number(env.MAX_WRAPS_PER_KEK ?? 2 ** 18),
    })
    opened = { secret: env.ROOT_KEY, chain }
    chain.catch(() => (opened = undefined))
  }
  return opened.chain
}

const json = (status, body) => Response.json(body, { status })

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url)
    if (request.method !== 'POST' || (pathname !== '/encrypt' && pathname !== '/decrypt')) {
      return json(404, { error: 'ERR_NOT_FOUND', routes: ['POST /encrypt', 'POST /decrypt'] })
    }
    let body
    try {
      body = await request.json()
    } catch {
      return json(400, { error: 'ERR_REQUEST', message: 'expected a JSON body' })
    }
    try {
      const chain = await chainFor(env)
      if (pathname === '/encrypt') {
        if (typeof body?.text !== 'string') return json(400, { error: 'ERR_REQUEST', message: 'expected {"text": string}' })
        return json(200, { encrypted: await chain.encryptText(body.text) })
      }
      if (typeof body?.encrypted !== 'string') return json(400, { error: 'ERR_REQUEST', message: 'expected {"encrypted": string}' })
      return json(200, { text: await chain.decryptText(body.encrypted) })
    } catch (error) {
      // Typed errors carry a stable code and a message without key bytes or plaintext.
      if (error instanceof KmsProxyError) return json(error.code === 'ERR_STORE' ? 503 : 400, { error: error.code, message: error.message })
      return json(500, { error: 'ERR_INTERNAL' })
    }
  },
}
