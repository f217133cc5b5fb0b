/**
 * The KMS v2 plugin server: gRPC on a Unix socket, backed by a kms-proxy key chain.
 *
 * kube-apiserver makes a 32-byte DEK seed at start and whenever Status reports a new key_id, and
 * asks Encrypt to protect it; Decrypt runs on a cache miss (start, or data under another seed).
 * So Encrypt and Decrypt are rare and the chain makes them cost no root-key call in steady
 * state; Status is polled (about once a minute, every 10 s while unhealthy) and asks the root
 * key at most once per `healthCacheMs`.
 */
import * as grpc from '@grpc/grpc-js'
import { connect } from 'node:net'
import { chmod, link, lstat, mkdtemp, rm, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { KeyChain, KmsProxyError, decodeHeader, kekAad, type KeyChainStats, type RootKey } from '@kms-proxy/core'
import {
  KMS_API_VERSION,
  MAX_PLAINTEXT_BYTES,
  SEED_ASSOCIATED_DATA,
  annotationsProblem,
  ciphertextProblem,
  joinEncryptedData,
  keyIdFor,
  keyIdProblem,
  parseKeyId,
  splitEncryptedData,
} from './envelope.js'
import { loadKmsService } from './proto.js'

export interface KmsPluginOptions {
  /** Unix socket path (`/run/kms/kms-proxy.sock` or `unix:///run/kms/kms-proxy.sock`). */
  socket: string
  /** The key chain that protects the seeds. Its root key is whatever it was opened with. */
  chain: KeyChain
  /** How long a health verdict is reused by Status. Default 10,000 ms. */
  healthCacheMs?: number
  /**
   * The chain's root key, for the health probe: Status then reports "ok" only while a real call
   * to it succeeds (`newKek` with an AAD no KEK record can have; the KEK made is dropped). Without
   * it (and without `healthCheck`) health follows the chain's last root-key call
   * (`stats().rootKeyAvailable`), which only changes when the chain itself calls the root.
   */
  rootKey?: RootKey
  /** A probe of your own instead of the root-key call: resolves when healthy. */
  healthCheck?: () => Promise<void>
  /** A health probe (key chain and root key together) that has not answered within this long counts as failed. Default 2,500 ms. */
  healthTimeoutMs?: number
  /** Mode of the socket file. Default 0o600 (kube-apiserver runs as root). */
  socketMode?: number
  /** Largest gRPC request accepted; larger ones fail with RESOURCE_EXHAUSTED. Default 64 KiB. */
  maxRequestBytes?: number
  /** Called once per request, after the answer: for logs and metrics. Carries no secret. */
  onRequest?: (event: KmsPluginRequestEvent) => void
}

export interface KmsPluginRequestEvent {
  method: 'Status' | 'Encrypt' | 'Decrypt'
  /** kube-apiserver's request id (Encrypt, Decrypt), truncated to 128 characters. */
  uid?: string
  /** gRPC status code name: OK, INVALID_ARGUMENT, ... */
  code: string
  /** kms-proxy error code when one caused the failure (ERR_DECRYPT, ERR_ROOT_KEY, ...). */
  error?: string
  keyId?: string
  ms: number
}

export interface KmsPluginStats {
  requests: { Status: number; Encrypt: number; Decrypt: number }
  /** Failed requests by gRPC code name. */
  failures: Record<string, number>
  health: {
    ok: boolean
    /** What Status reports as healthz ("ok" or the reason). */
    healthz: string
    /** When the last probe finished (ms since the epoch), 0 before the first. */
    checkedAt: number
    /** Probes run: each costs one root-key call when `rootKey` or `healthCheck` is given. */
    probes: number
  }
  /** key_id of the current primary KEK ("" before the chain has one). */
  keyId: string
  chain: KeyChainStats
}

export interface KmsPlugin {
  /** The socket path the server listens on. */
  readonly socket: string
  stats(): KmsPluginStats
  /** Runs a health probe now, ignoring the cache; resolves to the healthz string. */
  checkHealth(): Promise<string>
  /** Stops accepting calls, lets running calls finish (at most 5 s), removes the socket file. */
  close(): Promise<void>
}

const { status: Code } = grpc
const codeName = (code: grpc.status): string => grpc.status[code] ?? String(code)

/** A gRPC error to send: code and a message with no secret in it. */
class Refusal extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly errorCode?: string,
  ) {
    super(message)
  }
}

/** How a kms-proxy failure is reported to kube-apiserver. */
export function grpcCodeFor(error: unknown): grpc.status {
  if (error instanceof Refusal) return error.code
  if (error instanceof KmsProxyError) {
    switch (error.code) {
      case 'ERR_FORMAT':
      case 'ERR_DECRYPT':
        return Code.INVALID_ARGUMENT
      case 'ERR_UNKNOWN_KEK':
        return Code.NOT_FOUND
      case 'ERR_ROOT_KEY':
        return error.retryable ? Code.UNAVAILABLE : Code.FAILED_PRECONDITION
      case 'ERR_STORE':
        return Code.UNAVAILABLE
      case 'ERR_LIMIT':
        return Code.FAILED_PRECONDITION
    }
  }
  if (error instanceof TypeError || error instanceof RangeError) return Code.INVALID_ARGUMENT
  return Code.INTERNAL
}

/** The message sent with a failure: kms-proxy messages are secret-free by contract; others are not shown. */
function messageFor(error: unknown): string {
  if (error instanceof Refusal) return error.message
  if (error instanceof KmsProxyError) return `${error.code}: ${error.message}`
  return 'internal error'
}

function socketPath(socket: unknown): string {
  if (typeof socket !== 'string' || socket.length === 0) throw new TypeError('socket: expected a Unix socket path')
  const path = socket.startsWith('unix://') ? socket.slice('unix://'.length) : socket
  if (!path.startsWith('/')) throw new TypeError('socket: expected an absolute path (or unix:///absolute/path)')
  return path
}

/** Removes a socket file left by a plugin that died; refuses a live socket or a file that is not a socket. */
async function clearStaleSocket(path: string): Promise<void> {
  let info
  try {
    info = await lstat(path)
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return
    throw error
  }
  if (!info.isSocket()) throw new Error(`socket: ${path} exists and is not a socket; not removing it`)
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path)
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
  if (live) throw new Error(`socket: ${path} is in use by a running server`)
  await unlink(path)
}

/** `promise`, or a failure once `deadline` (a performance.now() time) passes; `budgetMs` is for the message. */
function withTimeout<T>(promise: Promise<T>, deadline: number, budgetMs: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((_, reject) => {
    const refuse = () => reject(new Refusal(Code.DEADLINE_EXCEEDED, `${what} did not answer within ${budgetMs} ms`))
    timer = setTimeout(refuse, Math.max(0, deadline - performance.now()))
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function integer(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  if (!Number.isInteger(value) || value < min || value > max) throw new RangeError(`${name}: expected an integer from ${min} to ${max}`)
  return value
}

const PROBE_PLAINTEXT = new Uint8Array(0)
const PROBE_ASSOCIATED_DATA = 'kms-proxy.dev/k8s/v2 health probe'
const MAX_STALE_RETRIES = 1100

/**
 * Starts the KMS v2 plugin on `socket`. Resolves once kube-apiserver can connect. A stale socket
 * file from a plugin that died is removed; a live one is an error.
 */
export async function serveKmsPlugin(options: KmsPluginOptions): Promise<KmsPlugin> {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const path = socketPath(options.socket)
  const chain = options.chain
  if (!(chain instanceof KeyChain)) throw new TypeError('chain: expected a KeyChain (KeyChain.open)')
  // A chain name is at most 255 UTF-16 units, so at most 765 UTF-8 bytes: every key_id fits 1 KiB.
  const healthCacheMs = integer('healthCacheMs', options.healthCacheMs, 10_000, 0, 24 * 3600 * 1000)
  const healthTimeoutMs = integer('healthTimeoutMs', options.healthTimeoutMs, 2_500, 1, 60_000)
  const socketMode = integer('socketMode', options.socketMode, 0o600, 0, 0o777)
  const maxRequestBytes = integer('maxRequestBytes', options.maxRequestBytes, 64 * 1024, 1024, 4 * 1024 * 1024)
  const { rootKey, healthCheck, onRequest } = options
  if (rootKey !== undefined && (typeof rootKey !== 'object' || typeof rootKey.newKek !== 'function')) {
    throw new TypeError('rootKey: expected a RootKey')
  }
  if (healthCheck !== undefined && typeof healthCheck !== 'function') throw new TypeError('healthCheck: expected a function')
  if (onRequest !== undefined && typeof onRequest !== 'function') throw new TypeError('onRequest: expected a function')

  const requests = { Status: 0, Encrypt: 0, Decrypt: 0 }
  const failures: Record<string, number> = {}
  const health = { ok: false, healthz: 'not checked yet', checkedAt: 0, probes: 0 }
  let probing: Promise<void> | undefined

  const primaryKeyId = (): string => {
    const primary = chain.stats().keks.find((k) => k.primary)
    return primary ? keyIdFor(chain.name, primary.id) : ''
  }

  /**
   * One probe: an encryption of nothing (no root call in steady state; it makes the first KEK,
   * and carries out a rotation that is due by age or usage, so Status's key_id moves on time),
   * then one call to the root key.
   */
  async function probe(): Promise<void> {
    health.probes++
    // One budget for the whole probe, so that Status answers within healthTimeoutMs.
    const deadline = performance.now() + healthTimeoutMs
    try {
      await withTimeout(chain.encrypt(PROBE_PLAINTEXT, { associatedData: PROBE_ASSOCIATED_DATA }), deadline, healthTimeoutMs, 'the key chain')
      if (healthCheck) await withTimeout(healthCheck(), deadline, healthTimeoutMs, 'the health check')
      else if (rootKey) await withTimeout(rootKey.newKek(kekAad(chain.name, 0)), deadline, healthTimeoutMs, 'the root key')
      else if (!chain.stats().rootKeyAvailable) throw new Refusal(Code.UNAVAILABLE, `root key unavailable (${chain.stats().rootKeyLastError ?? 'no detail'})`)
      health.ok = true
      health.healthz = 'ok'
    } catch (error) {
      health.ok = false
      health.healthz = `unhealthy: ${messageFor(error)}`
    } finally {
      health.checkedAt = Date.now()
    }
  }

  function checkHealth(force: boolean): Promise<void> {
    if (!force && health.checkedAt !== 0 && Date.now() - health.checkedAt < healthCacheMs) return Promise.resolve()
    return (probing ??= probe().finally(() => (probing = undefined)))
  }

  async function encrypt(request: { plaintext: Buffer; uid: string }) {
    const plaintext = request.plaintext
    if (plaintext.length === 0) throw new Refusal(Code.INVALID_ARGUMENT, 'plaintext is empty')
    if (plaintext.length > MAX_PLAINTEXT_BYTES) {
      throw new Refusal(Code.INVALID_ARGUMENT, `plaintext is ${plaintext.length} bytes; at most ${MAX_PLAINTEXT_BYTES} fit the 1024-byte ciphertext limit`)
    }
    try {
      // After a rotation for usage the chain may still hold DEKs prepared under the previous KEK;
      // encrypt again until the data is under the current primary, so that the key_id returned
      // here is the one Status reports (bounded: the pool holds at most 1024).
      for (let attempt = 0; ; attempt++) {
        const data = await chain.encrypt(plaintext, { associatedData: SEED_ASSOCIATED_DATA })
        const header = decodeHeader(data)
        const primary = chain.stats().keks.find((k) => k.primary)?.id
        if (primary !== undefined && header.kekId !== primary && attempt < MAX_STALE_RETRIES) continue
        const { ciphertext, annotations } = splitEncryptedData(data, header.headerLength, header.embeddedKek)
        const keyId = keyIdFor(chain.name, header.kekId)
        const problem = ciphertextProblem(ciphertext) ?? annotationsProblem(annotations)
        if (problem) throw new Refusal(Code.FAILED_PRECONDITION, `this root key's output does not fit KMS v2: ${problem}`)
        return { ciphertext, key_id: keyId, annotations }
      }
    } finally {
      plaintext.fill(0) // the seed is kube-apiserver's DEK source: no copy lingers here
    }
  }

  async function decrypt(request: { ciphertext: Buffer; uid: string; key_id: string; annotations: Record<string, Buffer> }) {
    const annotations = request.annotations ?? {}
    const problem = ciphertextProblem(request.ciphertext) ?? keyIdProblem(request.key_id) ?? annotationsProblem(annotations)
    if (problem) throw new Refusal(Code.INVALID_ARGUMENT, problem)
    const kekId = parseKeyId(request.key_id, chain.name)
    if (kekId === undefined) throw new Refusal(Code.NOT_FOUND, 'unknown key_id: not a KEK of this key chain')
    const joined = joinEncryptedData(request.ciphertext, annotations)
    if (!joined.ok) throw new Refusal(Code.INVALID_ARGUMENT, joined.problem)
    if (joined.kekId !== kekId) throw new Refusal(Code.INVALID_ARGUMENT, 'key_id does not match the ciphertext')
    const plaintext = await chain.decrypt(joined.data, { associatedData: SEED_ASSOCIATED_DATA })
    return { plaintext: Buffer.from(plaintext.buffer, plaintext.byteOffset, plaintext.length) }
  }

  async function status() {
    await checkHealth(false)
    return { version: KMS_API_VERSION, healthz: health.healthz, key_id: primaryKeyId() }
  }

  type Handler = (request: never) => Promise<object>
  function unary(method: 'Status' | 'Encrypt' | 'Decrypt', handler: Handler): grpc.handleUnaryCall<unknown, unknown> {
    return (call, callback) => {
      const started = performance.now()
      requests[method]++
      const request = call.request as { uid?: string }
      const uid = typeof request?.uid === 'string' && request.uid.length > 0 ? request.uid.slice(0, 128) : undefined
      const report = (code: grpc.status, extra: Partial<KmsPluginRequestEvent>) => {
        if (code !== Code.OK) failures[codeName(code)] = (failures[codeName(code)] ?? 0) + 1
        try {
          onRequest?.({ method, ...(uid ? { uid } : {}), code: codeName(code), ms: performance.now() - started, ...extra })
        } catch {
          // A logging hook must not break the answer.
        }
      }
      handler(call.request as never).then(
        (response) => {
          report(Code.OK, 'key_id' in response ? { keyId: String(response.key_id) } : {})
          callback(null, response)
          // grpc-js has serialized the answer by now (synchronously, into its own buffer): the
          // seed kube-apiserver asked for does not stay in this process's memory.
          if (method === 'Decrypt') (response as { plaintext: Buffer }).plaintext.fill(0)
        },
        (error: unknown) => {
          const code = grpcCodeFor(error)
          const errorCode = error instanceof KmsProxyError ? error.code : undefined
          report(code, errorCode ? { error: errorCode } : {})
          callback({ code, details: messageFor(error) })
        },
      )
    }
  }

  await clearStaleSocket(path)
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxRequestBytes,
    'grpc.max_send_message_length': 64 * 1024,
  })
  server.addService(loadKmsService().service, {
    Status: unary('Status', status as Handler),
    Encrypt: unary('Encrypt', encrypt as Handler),
    Decrypt: unary('Decrypt', decrypt as Handler),
  })
  // The socket is made with the process umask's mode (0777 under umask 0): bound in place, it
  // would take calls from any local user until a chmod. So it is bound in a private (0700)
  // folder next to `path`, given its mode, and only then linked into place (a link, unlike a
  // rename, fails if another plugin took the path meanwhile, as a bind in place would).
  const staging = await mkdtemp(join(dirname(path), '.kms-proxy-'))
  try {
    const bound = join(staging, 's')
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix:${bound}`, grpc.ServerCredentials.createInsecure(), (error) => (error ? reject(error) : resolve()))
    })
    await chmod(bound, socketMode)
    await link(bound, path).catch((error: { code?: string }) => {
      throw error.code === 'EEXIST' ? new Error(`socket: ${path} was created by someone else while this server started`) : error
    })
  } catch (error) {
    server.forceShutdown()
    throw error
  } finally {
    await rm(staging, { recursive: true, force: true })
  }

  let closed: Promise<void> | undefined
  return {
    socket: path,
    stats: () => ({
      requests: { ...requests },
      failures: { ...failures },
      health: { ...health },
      keyId: primaryKeyId(),
      chain: chain.stats(),
    }),
    async checkHealth() {
      await checkHealth(true)
      return health.healthz
    },
    close() {
      return (closed ??= (async () => {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown()
            resolve()
          }, 5_000)
          server.tryShutdown(() => {
            clearTimeout(timer)
            resolve()
          })
        })
        await unlink(path).catch(() => {})
      })())
    },
  }
}
