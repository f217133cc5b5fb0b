// The same encrypt/decrypt JSON API with Deno.serve, KEKs in Deno KV:
//   POST /encrypt {"text": "..."}      -> {"encrypted": "kp1...."}
//   POST /decrypt {"encrypted": "..."} -> {"text": "..."}
// Environment: ROOT_KEY (base64 of 32 random bytes), KV_PATH (optional: a file; default Deno's
// own KV location, or Deno Deploy's KV), PORT (default 8000; 0 picks a free port).
//   deno run --unstable-kv --allow-env --allow-net --allow-read --allow-write main.mjs
import { KeyChain, KmsProxyError, aesRootKey } from '@kms-proxy/core'
import { denoKvStore } from '@kms-proxy/kv'

const secret = Deno.env.get('ROOT_KEY')
if (!secret) throw new Error('set ROOT_KEY to base64 of 32 random bytes')
const bytes = Uint8Array.from(atob(secret), (c) => c.charCodeAt(0))
if (bytes.length !== 32) throw new Error('ROOT_KEY must be base64 of 32 bytes')
const rootKey = aesRootKey(bytes) // imported non-extractable; our copy is zeroed next
bytes.fill(0)

const kv = await Deno.openKv(Deno.env.get('KV_PATH') || undefined)
// Deno KV has compare-and-swap: the usage limit holds across every process on this database.
const chain = await KeyChain.open({ rootKey, store: denoKvStore(kv), name: Deno.env.get('CHAIN_NAME') ?? 'default' })

const json = (status, body) => Response.json(body, { status })

async function handle(request) {
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
    if (pathname === '/encrypt') {
      if (typeof body?.text !== 'string') return json(400, { error: 'ERR_REQUEST', message: 'expected {"text": string}' })
      return json(200, { encrypted: await chain.encryptText(body.text) })
    }
    if (typeof body?.encrypted !== 'string') return json(400, { error: 'ERR_REQUEST', message: 'expected {"encrypted": string}' })
    return json(200, { text: await chain.decryptText(body.encrypted) })
  } catch (error) {
    if (error instanceof KmsProxyError) return json(error.code === 'ERR_STORE' ? 503 : 400, { error: error.code, message: error.message })
    return json(500, { error: 'ERR_INTERNAL' })
  }
}

const server = Deno.serve(
  {
    hostname: Deno.env.get('HOST') ?? '127.0.0.1',
    port: Number(Deno.env.get('PORT') ?? 8000),
    onListen: ({ hostname, port }) => console.log(`listening on http://${hostname}:${port}/`),
  },
  handle,
)
Deno.addSignalListener('SIGTERM', async () => {
  await server.shutdown()
  kv.close()
  Deno.exit(0)
})
