// The same encrypt/decrypt JSON API with Deno.serve, KEKs in Deno KV:
//   POST /encrypt {"text": "..."}      -> {"encrypted": "kp1...."}
//   POST /decrypt {"encrypted": "..."} -> {"text": "..."}
// Environment: ROOT_KEY (base64 of 32 random bytes), KV_PATH (optional: a file; default Deno's
// own KV location, or Deno Deploy's KV), PORT (default 8000; 0 picks a free port), HOST
// (default 127.0.0.1), CHAIN_NAME (default "default").
//   deno run --allow-env --allow-net --allow-read --allow-write main.mjs
import { KeyChain, KmsProxyError, aesRootKey, kekAad } from '@kms-proxy/core'
import { denoKvStore } from '@kms-proxy/kv'

/** A server that cannot do its job must not start: one line on stderr, exit status 1. */
function refuse(message) {
  console.error(`deno-kv example: ${message}`)
  Deno.exit(1)
}

const secret = Deno.env.get('ROOT_KEY')
if (!secret) refuse('set ROOT_KEY to base64 of 32 random bytes (ROOT_KEY=$(cat root.key))')
let bytes
try {
  bytes = Uint8Array.from(atob(secret), (c) => c.charCodeAt(0))
} catch {
  refuse('ROOT_KEY is not base64')
}
if (bytes.length !== 32) refuse(`ROOT_KEY must be base64 of 32 bytes, not ${bytes.length}`)
const rootKey = aesRootKey(bytes) // imported non-extractable; our copy is zeroed next
bytes.fill(0)

const kvPath = Deno.env.get('KV_PATH') || undefined
const where = kvPath ?? "Deno's default KV"
const name = Deno.env.get('CHAIN_NAME') ?? 'default'
let kv
try {
  kv = await Deno.openKv(kvPath)
} catch (error) {
  refuse(`cannot open ${where}: ${error?.message ?? error}`)
}
const store = denoKvStore(kv)

// Prove the root key before serving: one unwrap of the primary KEK. A key that cannot unwrap it
// would otherwise be found out by every request in turn. A new, empty store has nothing to prove.
try {
  const head = await store.getHead(name)
  const primary = head && (await store.getKek(name, head.value.primary))
  if (head && !primary) refuse(`${where} names KEK ${head.value.primary} as primary but holds no such record: restore the store from a backup`)
  if (primary) await rootKey.unwrapKek(primary.wrapped, kekAad(name, primary.id))
} catch (error) {
  if (error instanceof KmsProxyError && error.code === 'ERR_ROOT_KEY' && !error.retryable) {
    refuse(`ROOT_KEY cannot unwrap the primary KEK of chain "${name}" in ${where}: the store was made with another root key. Start with that key (restore root.key from a backup); a new key cannot read this data`)
  }
  refuse(`cannot check ROOT_KEY against ${where}: ${error?.code ?? error?.name}: ${error?.message}`)
}

// Deno KV has compare-and-swap: the usage limit holds across every process on this database.
const chain = await KeyChain.open({ rootKey, store, name })

const json = (status, body) => Response.json(body, { status })

/**
 * The client's own bad input is 4xx; a fault on this side (the root key, the store) is 5xx,
 * 503 when it may pass (a retryable error), so that clients and load balancers retry it.
 */
function failure(error, pathname) {
  if (!(error instanceof KmsProxyError)) {
    console.error(`${pathname}: unexpected ${error?.name ?? typeof error}`)
    return json(500, { error: 'ERR_INTERNAL' })
  }
  const body = { error: error.code, message: error.message }
  switch (error.code) {
    case 'ERR_DECRYPT':
    case 'ERR_FORMAT':
    case 'ERR_UNKNOWN_KEK':
      return json(400, body)
    case 'ERR_LIMIT':
      return json(413, body)
    default:
      console.error(`${pathname}: ${error.code}: ${error.message}`)
      return json(error.retryable ? 503 : 500, body)
  }
}

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
    return failure(error, pathname)
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
// SIGTERM (a service manager, kill) and SIGINT (Ctrl-C): finish the requests in flight, close the database.
for (const signal of ['SIGTERM', 'SIGINT']) {
  Deno.addSignalListener(signal, async () => {
    await server.shutdown()
    kv.close()
    Deno.exit(0)
  })
}
