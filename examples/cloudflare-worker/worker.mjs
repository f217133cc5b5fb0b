// An encrypt/decrypt JSON API on Cloudflare Workers, KEKs in a Durable Object (or Workers KV):
//   POST /encrypt {"text": "..."}      -> {"encrypted": "kp1...."}
//   POST /decrypt {"encrypted": "..."} -> {"text": "..."}
// The client's bad input is 400; the worker's configuration 500 ERR_CONFIG (details in its log);
// the root key or the store failing 503 when it may pass, else 500.
// Bindings: KEYS, chosen by STORE:
//   "durable-object" (default)  KEYS: the KeyChainObject class this module exports (wrangler.toml)
//   "kv"                        KEYS: a KV namespace (wrangler.kv.toml)
// The root key, chosen by ROOT_KEY_TYPE:
//   "aes" (default)  ROOT_KEY (secret: base64 of 32 random bytes)
//   "aws-kms"        AWS_KMS_KEY_ID, AWS_REGION, AWS_KMS_ENDPOINT (optional) as vars;
//                    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (optional) as secrets
// Optional: CHAIN_NAME, MAX_WRAPS_PER_KEK (default 2^21 on a Durable Object, 2^18 on KV),
// MAX_KEK_AGE_MS (default 7 days), BACKUP_TOKEN (secret) to turn on
//   GET  /backup   (Authorization: Bearer BACKUP_TOKEN) -> the chain's head and wrapped KEKs as JSON
//   POST /restore  (the same header, that JSON)          -> into a store that has no such chain
import { KeyChain, KmsProxyError, aesRootKey, fromBase64, kekAad, parseChainHead, toBase64 } from '@kms-proxy/core'
import { durableObjectStore } from '@kms-proxy/durable-object'
import { awsKmsRootKey } from '@kms-proxy/kms'
import { workersKvStore } from '@kms-proxy/kv'

// The Durable Object class of the KEYS binding: the runtime finds it among this module's exports.
export { KeyChainObject } from '@kms-proxy/durable-object'

/** Something the operator must fix in the worker's bindings; its message names bindings, never values. */
class ConfigError extends Error {}

const CONFIG = ['STORE', 'BACKUP_TOKEN', 'ROOT_KEY_TYPE', 'ROOT_KEY', 'AWS_KMS_KEY_ID', 'AWS_REGION', 'AWS_KMS_ENDPOINT', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'CHAIN_NAME', 'MAX_WRAPS_PER_KEK', 'MAX_KEK_AGE_MS']

function rootKeyFrom(env) {
  const type = env.ROOT_KEY_TYPE ?? 'aes'
  if (type === 'aes') {
    if (typeof env.ROOT_KEY !== 'string' || env.ROOT_KEY === '') throw new ConfigError('the ROOT_KEY secret is not set (wrangler secret put ROOT_KEY; locally, in .dev.vars)')
    let bytes
    try {
      bytes = Uint8Array.from(atob(env.ROOT_KEY), (c) => c.charCodeAt(0))
    } catch {
      throw new ConfigError('ROOT_KEY is not base64')
    }
    if (bytes.length !== 32) throw new ConfigError('ROOT_KEY must be base64 of 32 bytes')
    const rootKey = aesRootKey(bytes) // imported non-extractable; our copy is zeroed next
    bytes.fill(0)
    return rootKey
  }
  if (type === 'aws-kms') {
    const missing = ['AWS_KMS_KEY_ID', 'AWS_REGION', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'].filter((name) => !env[name])
    if (missing.length > 0) throw new ConfigError(`ROOT_KEY_TYPE is aws-kms but ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not set`)
    const credentials = { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY }
    if (env.AWS_SESSION_TOKEN) credentials.sessionToken = env.AWS_SESSION_TOKEN
    try {
      // One GenerateDataKey per new KEK and one Decrypt per KEK per isolate; no KMS call per message.
      return awsKmsRootKey({ keyId: env.AWS_KMS_KEY_ID, region: env.AWS_REGION, credentials, ...(env.AWS_KMS_ENDPOINT ? { endpoint: env.AWS_KMS_ENDPOINT } : {}) })
    } catch (error) {
      throw new ConfigError(`AWS KMS options: ${error.message}`)
    }
  }
  throw new ConfigError(`ROOT_KEY_TYPE must be "aes" or "aws-kms"`)
}

function numberFrom(env, name, fallback) {
  if (env[name] === undefined || env[name] === '') return fallback
  const value = Number(env[name])
  if (!Number.isInteger(value) || value < 1) throw new ConfigError(`${name} must be a positive integer`)
  return value
}

/** The store of the KEYS binding: a Durable Object namespace (the default) or a KV namespace. */
function storeFrom(env) {
  const type = env.STORE ?? 'durable-object'
  if (type === 'durable-object') {
    if (typeof env.KEYS?.idFromName !== 'function') throw new ConfigError('the KEYS Durable Object namespace is not bound ([[durable_objects.bindings]] in wrangler.toml)')
    return durableObjectStore(env.KEYS)
  }
  if (type === 'kv') {
    if (typeof env.KEYS?.get !== 'function' || typeof env.KEYS?.list !== 'function') throw new ConfigError('the KEYS KV namespace is not bound ([[kv_namespaces]] in wrangler.kv.toml)')
    return workersKvStore(env.KEYS)
  }
  throw new ConfigError('STORE must be "durable-object" or "kv"')
}

async function openChain(env) {
  const rootKey = rootKeyFrom(env)
  const store = storeFrom(env)
  const name = env.CHAIN_NAME || 'default'
  // Prove the root key once per isolate before serving: one unwrap of the primary KEK (a new,
  // empty namespace has nothing to prove). A key that cannot is the operator's to fix.
  const head = await store.getHead(name)
  const primary = head && (await store.getKek(name, head.value.primary))
  if (primary) {
    try {
      await rootKey.unwrapKek(primary.wrapped, kekAad(name, primary.id))
    } catch (error) {
      if (error instanceof KmsProxyError && error.code === 'ERR_ROOT_KEY' && !error.retryable) {
        throw new ConfigError(`the root key cannot unwrap the primary KEK of chain "${name}" in KEYS: the store was filled under another root key; bind the one it was made with`)
      }
      throw error
    }
  }
  try {
    return await KeyChain.open({
      rootKey,
      store,
      name,
      // A Durable Object counts every isolate's uses (compare-and-swap): the library's default.
      // Workers KV has none: isolates count uses each on their own, so keep a margin there.
      maxWrapsPerKek: numberFrom(env, 'MAX_WRAPS_PER_KEK', store.atomic ? undefined : 2 ** 18),
      maxKekAgeMs: numberFrom(env, 'MAX_KEK_AGE_MS', 7 * 24 * 3600 * 1000),
    })
  } catch (error) {
    if (error instanceof RangeError || error instanceof TypeError) throw new ConfigError(error.message)
    throw error
  }
}

/** One chain per isolate: the root key unwraps each KEK once, then stays out of the hot path. */
let opened

function chainFor(env) {
  const config = CONFIG.map((name) => env[name] ?? '').join('\n')
  if (opened?.config !== config) {
    const chain = openChain(env)
    opened = { config, chain }
    chain.catch(() => {
      if (opened?.chain === chain) opened = undefined
    })
  }
  return opened.chain
}

const json = (status, body) => Response.json(body, { status })

function failure(error, pathname) {
  if (error instanceof ConfigError) {
    console.error(`kms-proxy worker misconfigured: ${error.message}`)
    return json(500, { error: 'ERR_CONFIG', message: 'the worker is misconfigured: see its log' })
  }
  if (!(error instanceof KmsProxyError)) {
    console.error(`${pathname}: unexpected ${error?.name ?? typeof error}`)
    return json(500, { error: 'ERR_INTERNAL' })
  }
  // Typed errors carry a stable code and a message without key bytes or plaintext.
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

// ---------------------------------------------------------------------------------- backup

const BACKUP_FORMAT = 'kms-proxy-chain-backup/v1'

/** Whether the request carries the BACKUP_TOKEN, compared in constant time. */
function authorized(request, env) {
  const given = new TextEncoder().encode(request.headers.get('authorization') ?? '')
  const wanted = new TextEncoder().encode(`Bearer ${env.BACKUP_TOKEN}`)
  let diff = given.length ^ wanted.length
  for (let i = 0; i < wanted.length; i++) diff |= (given[i] ?? 0) ^ wanted[i]
  return diff === 0
}

/**
 * The chain's head and every wrapped KEK record: what the store holds and nothing else (no key:
 * the records open only with the root key, which is never in a backup). Read through the
 * KeyStore interface, so it is the same for the Durable Object and for KV.
 */
async function backup(env) {
  const store = storeFrom(env)
  const chain = env.CHAIN_NAME || 'default'
  const head = await store.getHead(chain)
  const records = await store.listKeks(chain)
  const keks = records.map((r) => ({ id: r.id, createdAt: r.createdAt, rootKind: r.rootKind, wrapped: toBase64(r.wrapped), ...(r.root === undefined ? {} : { root: r.root }) }))
  return { format: BACKUP_FORMAT, chain, head: head?.value ?? null, keks }
}

/** Writes a backup into a store that has no head for the chain: every record, then the head. */
async function restore(env, body) {
  const store = storeFrom(env)
  const chain = env.CHAIN_NAME || 'default'
  const head = parseChainHead(body?.head)
  if (body?.format !== BACKUP_FORMAT || body.chain !== chain || !head || !Array.isArray(body.keks)) {
    return json(400, { error: 'ERR_REQUEST', message: `expected a ${BACKUP_FORMAT} backup of chain "${chain}"` })
  }
  let records
  try {
    records = body.keks.map((k) => ({ id: k.id, createdAt: k.createdAt, rootKind: k.rootKind, wrapped: fromBase64(k.wrapped), ...(k.root === undefined ? {} : { root: k.root }) }))
  } catch {
    return json(400, { error: 'ERR_REQUEST', message: 'a KEK record of the backup is malformed' })
  }
  if (!records.some((r) => r.id === head.primary)) return json(400, { error: 'ERR_REQUEST', message: 'the backup lacks its primary KEK' })
  if (await store.getHead(chain)) return json(409, { error: 'ERR_EXISTS', message: `chain "${chain}" is already in this store: restore into an empty one` })
  // Records first: a head never names a KEK the store lacks. A record already there is kept.
  for (const record of records) await store.putKekIfAbsent(chain, record)
  if (!(await store.casHead(chain, undefined, head))) return json(409, { error: 'ERR_EXISTS', message: `chain "${chain}" appeared in this store meanwhile` })
  return json(200, { restored: records.length })
}

async function backupRoute(request, env, pathname) {
  if (env.BACKUP_TOKEN.length < 32) return failure(new ConfigError('BACKUP_TOKEN must be at least 32 characters (openssl rand -base64 32)'), pathname)
  if (!authorized(request, env)) return json(401, { error: 'ERR_UNAUTHORIZED', message: 'expected Authorization: Bearer <BACKUP_TOKEN>' })
  try {
    if (pathname === '/backup') return json(200, await backup(env))
    let body
    try {
      body = await request.json()
    } catch {
      return json(400, { error: 'ERR_REQUEST', message: 'expected a JSON body' })
    }
    return await restore(env, body)
  } catch (error) {
    if (error instanceof TypeError && !(error instanceof ConfigError)) return json(400, { error: 'ERR_REQUEST', message: error.message })
    return failure(error, pathname)
  }
}

export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url)
    const backups = typeof env.BACKUP_TOKEN === 'string' && env.BACKUP_TOKEN !== ''
    if (backups && ((request.method === 'GET' && pathname === '/backup') || (request.method === 'POST' && pathname === '/restore'))) {
      return backupRoute(request, env, pathname)
    }
    if (request.method !== 'POST' || (pathname !== '/encrypt' && pathname !== '/decrypt')) {
      return json(404, { error: 'ERR_NOT_FOUND', routes: ['POST /encrypt', 'POST /decrypt', ...(backups ? ['GET /backup', 'POST /restore'] : [])] })
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
      return failure(error, pathname)
    }
  },
}
