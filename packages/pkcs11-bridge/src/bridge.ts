/**
 * The bridge: HTTP on loopback or a Unix socket in front of one `TokenKey`.
 *
 * Everything an unauthenticated client can make the bridge spend is bounded: the headers must
 * arrive within `headersTimeoutMs` and the whole request within `requestTimeoutMs` (Node answers
 * 408 and closes), at most `maxConnections` are open, and no body byte is read before the
 * bearer token is checked (a wrong one is answered and the connection closed, so the body is
 * never drained). Answers carry fixed messages: the token label, the key's PKCS#11 state and
 * CKR_* codes go to the log, for the operator, and never to a caller.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { RootKeyError, fromBase64, toBase64 } from '@kms-proxy/core'
import { PKCS11_DATA_KEY_TAG } from '@kms-proxy/pkcs11'
import { callersFrom, parseKekAad, type Pkcs11BridgeToken } from './callers.js'
import { clearStaleSocket, listenOnSocket, type PlacedSocket } from './socket.js'
import { TokenKey, checkKeyOptions, checkWrapped, failureOf, type Pkcs11KeyOptions, type TokenFailure } from './token-key.js'

/** Options of {@link startPkcs11Bridge}. `token`, `tokens` or both. */
export interface Pkcs11BridgeOptions extends Pkcs11KeyOptions {
  /**
   * A bearer token that may use any chain and any associated data (logged as
   * `caller=default`). At least 16 characters.
   */
  token?: string
  /** Named bearer tokens, each optionally scoped to chain names. Names and tokens must differ. */
  tokens?: readonly Pkcs11BridgeToken[]
  /**
   * A loopback address: 127.0.0.1, ::1 or localhost.
   *
   * @defaultValue `'127.0.0.1'`
   */
  host?: string
  /**
   * The TCP port; 0 takes any free port (read it from the returned `url`).
   *
   * @defaultValue 0
   */
  port?: number
  /** Listen on this Unix socket instead of TCP. A stale socket from a killed bridge is replaced. */
  socketPath?: string
  /**
   * Mode of the Unix socket: 0o600, or 0o660 to let the group connect; never bits for others.
   *
   * @defaultValue 0o600
   */
  socketMode?: number
  /**
   * Open connections at most; one more is closed at once.
   *
   * @defaultValue 32
   */
  maxConnections?: number
  /**
   * The request's headers must arrive within this (ms).
   *
   * @defaultValue 5,000
   */
  headersTimeoutMs?: number
  /**
   * The whole request, body included, must arrive within this (ms).
   *
   * @defaultValue 10,000
   */
  requestTimeoutMs?: number
  /**
   * Largest request body; a larger one is refused (413) without being read.
   *
   * @defaultValue 16 KiB (16,384)
   */
  maxBodyBytes?: number
  /**
   * Receives one line per generate, datakey, unwrap and refusal:
   * `unwrap chain="payments" kek=0badf00d caller=payments-svc result=ok`. Never a token, the PIN
   * or key bytes.
   *
   * @defaultValue the line to stderr
   */
  log?: (line: string) => void
}

/** A running bridge. */
export interface Pkcs11Bridge {
  /** http://127.0.0.1:PORT, or http://localhost for a Unix socket (use a fetch that can reach it). */
  url: string
  /** The Unix socket's path, when it listens on one. */
  socketPath?: string
  /** Stops listening, drops open connections, removes the socket file, closes the session. */
  close(): Promise<void>
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost'])
const CHECK_INTERVAL_MS = 250

type Refusal = 'unauthorized' | 'forbidden' | 'not_found' | 'too_large' | 'bad_request'

/** Every answer but a success: a status and a fixed message. */
function answers(keyLabel: string, maxBody: number): Record<Refusal | TokenFailure, [number, string]> {
  return {
    unauthorized: [401, 'missing or wrong bearer token'],
    forbidden: [403, 'this token may not use this key chain'],
    not_found: [404, 'POST /v1/generate, /v1/datakey or /v1/unwrap'],
    too_large: [413, `the request body is over ${maxBody} bytes`],
    bad_request: [400, 'expected JSON with base64 fields aad (and wrapped for /v1/unwrap)'],
    // The key label is the bridge's own setting, needed to put the key back; not the token's.
    key_missing: [404, `no secret key labelled "${keyLabel}" on the token`],
    unwrap_failed: [422, 'the PKCS#11 key could not unwrap this KEK: wrong key, the wrapped KEK was altered, or the associated data differs'],
    unavailable: [503, 'the HSM is not available; the bridge log says why'],
  }
}

function send(res: ServerResponse, status: number, body: Record<string, string>, close = false): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
    // Closing is how an unread body is left unread: a kept-alive connection would drain it.
    ...(close ? { connection: 'close' } : {}),
  })
  res.end(text)
}

/** The body, 'too_large' past `max` (reading stops there), or undefined if the client went away. */
function readBody(req: IncomingMessage, max: number): Promise<Buffer | 'too_large' | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let size = 0
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (size <= max) return void chunks.push(chunk)
      req.off('data', onData)
      req.pause()
      resolve('too_large')
    }
    req.on('data', onData)
    req.once('end', () => resolve(Buffer.concat(chunks)))
    req.once('error', () => resolve(undefined))
    req.once('close', () => resolve(undefined)) // after 'end' this changes nothing
  })
}

function integer(who: string, name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) throw new RangeError(`${who}: ${name} must be an integer from ${min} to ${max}`)
  return value
}

const hex8 = (n: number) => n.toString(16).padStart(8, '0')

/**
 * Starts the bridge: checks the options (TypeError / RangeError), replaces a stale socket, opens
 * the token (wrong label, two tokens with the label, wrong PIN or missing key reject here, as
 * ERR_ROOT_KEY), then listens on loopback or a Unix socket.
 *
 * @throws TypeError - a missing or malformed option: no token, a token under 16 characters,
 *   duplicate token names or tokens, a host that is not loopback.
 * @throws RangeError - a number out of range (port, socket mode with bits for others, limits).
 * @throws {@link @kms-proxy/core!RootKeyError} - `ERR_ROOT_KEY`: the module would not load, no
 *   token or two tokens with the label, a wrong PIN, or no key with `keyLabel` (and `createKey`
 *   off).
 * @example
 * ```ts
 * import { startPkcs11Bridge } from '@kms-proxy/pkcs11-bridge'
 * const bridge = await startPkcs11Bridge({
 *   module: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 'kms-proxy', pin: process.env.HSM_PIN!, keyLabel: 'kms-proxy-root',
 *   tokens: [{ name: 'payments-svc', token: process.env.PAYMENTS_TOKEN!, chains: ['payments'] }],
 *   socketPath: '/run/kms-proxy/bridge.sock',
 * })
 * process.on('SIGTERM', () => bridge.close())
 * ```
 */
export async function startPkcs11Bridge(options: Pkcs11BridgeOptions): Promise<Pkcs11Bridge> {
  const who = 'startPkcs11Bridge'
  checkKeyOptions(options, who)
  const callerOf = callersFrom(options.token, options.tokens, who)
  const host = options.host ?? '127.0.0.1'
  const socketPath = options.socketPath
  if (socketPath !== undefined && (typeof socketPath !== 'string' || socketPath === '')) throw new TypeError(`${who}: socketPath must be a non-empty string`)
  if (socketPath === undefined && !LOOPBACK.has(host)) {
    throw new TypeError(`${who}: host must be a loopback address (127.0.0.1, ::1, localhost): KEK bytes cross this socket`)
  }
  const socketMode = options.socketMode ?? 0o600
  if (socketMode !== 0o600 && socketMode !== 0o660) throw new RangeError(`${who}: socketMode must be 0o600 or 0o660`)
  const maxConnections = integer(who, 'maxConnections', options.maxConnections, 32, 1, 10_000)
  const headersTimeoutMs = integer(who, 'headersTimeoutMs', options.headersTimeoutMs, 5_000, 100, 60_000)
  const requestTimeoutMs = integer(who, 'requestTimeoutMs', options.requestTimeoutMs, 10_000, headersTimeoutMs, 300_000)
  const maxBodyBytes = integer(who, 'maxBodyBytes', options.maxBodyBytes, 16 * 1024, 1024, 1024 * 1024)
  if (options.log !== undefined && typeof options.log !== 'function') throw new TypeError(`${who}: log must be a function`)
  const sink = options.log ?? ((line: string) => void process.stderr.write(`${line}\n`))
  const log = (line: string) => {
    try {
      sink(line)
    } catch {
      // A failing log must not fail the answer.
    }
  }
  const answer = answers(options.keyLabel, maxBodyBytes)
  const refuse = (res: ServerResponse, why: Refusal | TokenFailure, close = false) => {
    const [status, message] = answer[why]
    send(res, status, { error: why, message }, close)
  }

  if (socketPath !== undefined) await clearStaleSocket(socketPath)
  const tokenKey = new TokenKey({ module: options.module, tokenLabel: options.tokenLabel, pin: options.pin, keyLabel: options.keyLabel, createKey: options.createKey })

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const caller = callerOf(typeof req.headers.authorization === 'string' ? req.headers.authorization : undefined)
    if (!caller) {
      log('request result=unauthorized')
      return refuse(res, 'unauthorized', true)
    }
    const path = (req.url ?? '').split('?')[0]
    const verb = path === '/v1/generate' ? 'generate' : path === '/v1/datakey' ? 'datakey' : path === '/v1/unwrap' ? 'unwrap' : undefined
    if (req.method !== 'POST' || verb === undefined) return refuse(res, 'not_found', true)
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > maxBodyBytes) return refuse(res, 'too_large', true)
    const body = await readBody(req, maxBodyBytes)
    if (body === undefined) return // gone, or cut off by a timeout (Node answered 408)
    if (body === 'too_large') return refuse(res, 'too_large', true)
    let aad: Uint8Array
    let wrapped: Uint8Array | undefined
    try {
      const json = JSON.parse(body.toString('utf8')) as Record<string, unknown>
      // fromBase64 refuses a non-string too
      aad = fromBase64(json.aad as string)
      if (verb === 'unwrap') wrapped = fromBase64(json.wrapped as string)
    } catch {
      return refuse(res, 'bad_request')
    }
    const named = parseKekAad(aad)
    const entry = `${verb} ${named ? `chain=${JSON.stringify(named.chain)} kek=${hex8(named.kekId)}` : 'chain=- kek=-'} caller=${caller.name}`
    if (caller.allows && !(named && caller.allows(named.chain))) {
      log(`${entry} result=forbidden`)
      return refuse(res, 'forbidden')
    }
    if (wrapped) {
      try {
        checkWrapped(wrapped)
      } catch (error) {
        log(`${entry} result=bad_request`)
        return send(res, 400, { error: 'bad_request', message: (error as Error).message })
      }
    }
    let secret: Buffer | undefined
    try {
      let result: Record<string, string>
      if (wrapped) {
        secret = tokenKey.unwrap(wrapped, aad)
        // A sealed data key (wrapKek's envelope, tag 0x32) answers as `key`, a sealed KEK as `kek`.
        result = { [wrapped[0] === PKCS11_DATA_KEY_TAG ? 'key' : 'kek']: toBase64(secret) }
      } else if (verb === 'datakey') {
        const made = tokenKey.generateDataKey(aad)
        secret = made.key
        result = { key: toBase64(secret), wrapped: toBase64(made.wrapped) }
      } else {
        const made = tokenKey.generate(aad)
        secret = made.kek
        result = { kek: toBase64(secret), wrapped: toBase64(made.wrapped) }
      }
      log(`${entry} result=ok`)
      send(res, 200, result)
    } catch (error) {
      const failure = failureOf(error)
      // The detail (token label, CKR_* code) is for the operator; RootKeyError messages hold no secret.
      const detail = failure === 'unwrap_failed' ? '' : ` detail=${JSON.stringify(error instanceof RootKeyError ? error.message : 'internal error')}`
      log(`${entry} result=${failure}${detail}`)
      refuse(res, failure)
    } finally {
      secret?.fill(0) // the base64 string in the answer cannot be zeroed; it is dropped with the response
    }
  }

  const server = createServer({ headersTimeout: headersTimeoutMs, requestTimeout: requestTimeoutMs, connectionsCheckingInterval: CHECK_INTERVAL_MS, maxHeaderSize: 8 * 1024 }, (req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) refuse(res, 'unavailable', true)
      else res.destroy()
    })
  })
  server.maxConnections = maxConnections
  server.keepAliveTimeout = 5_000

  let placed: PlacedSocket | undefined
  try {
    if (socketPath !== undefined) {
      placed = await listenOnSocket(server, socketPath, socketMode)
    } else {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(options.port ?? 0, host, () => {
          server.off('error', reject)
          resolve()
        })
      })
    }
  } catch (error) {
    tokenKey.close()
    server.close()
    if (error instanceof RootKeyError) throw error
    throw new RootKeyError(`the PKCS#11 bridge could not listen (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let url = 'http://localhost'
  if (socketPath === undefined) {
    const address = server.address() as { address: string; port: number }
    url = `http://${address.address.includes(':') ? `[${address.address}]` : address.address}:${address.port}`
  }
  let closed: Promise<void> | undefined
  return {
    url,
    ...(socketPath !== undefined ? { socketPath } : {}),
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      })
        .then(() => placed?.remove())
        .finally(() => tokenKey.close())),
  }
}
