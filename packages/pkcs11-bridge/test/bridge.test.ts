/**
 * The bridge as a server, seen from outside: real bridge processes (serve.ts) on real SoftHSM2
 * tokens, real clients over TCP and Unix sockets. The Unix socket (mode under umask 0, a stale
 * socket from a killed bridge, a live one, two bridges starting at once), two tokens with one
 * label, the limits an unauthenticated client meets (header, request and body timeouts, body
 * size, connection cap), answers that name no token label and no PKCS#11 error, and tokens
 * scoped to chain names with one log line per unwrap.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { lstat, stat } from 'node:fs/promises'
import { request } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KeyChain, KmsProxyError, kekAad, memoryStore } from '@kms-proxy/core'
import { pkcs11BridgeRootKey } from '../../pkcs11/src/index.ts'
import { startPkcs11Bridge } from '../src/index.ts'
import { MODULE, PIN, SO_PIN, TOKEN_LABEL, bearer, makeToken, spawnTs, type TestToken } from './hsm.ts'
import { watchModes } from './socket-watch.ts'

const ADMIN = bearer()
const PAYMENTS = bearer()
const ORDERS = bearer()
const TOKENS = [ADMIN, PAYMENTS, ORDERS]
const base = { module: MODULE, tokenLabel: TOKEN_LABEL, pin: PIN, createKey: true }

const tokens: TestToken[] = []
const children: ChildProcess[] = []
const dirs: string[] = []
afterAll(async () => {
  for (const c of children) {
    if (c.exitCode !== null || c.signalCode !== null) continue
    const exited = new Promise((r) => c.once('exit', r))
    c.stdin!.end()
    const timer = setTimeout(() => c.kill('SIGKILL'), 5_000)
    await exited
    clearTimeout(timer)
  }
  for (const t of tokens) t.cleanup()
  for (const d of dirs) rmSync(d, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
})

function token(label?: string): TestToken {
  const t = makeToken(label)
  tokens.push(t)
  return t
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'kms-proxy-bridge-'))
  dirs.push(d)
  return d
}

interface Bridge {
  child: ChildProcess
  /** Every stdout line so far. */
  out: string[]
  /** `{ urls }` once READY, `{ failures }` on FAILED. */
  started: Promise<{ urls?: string[]; failures?: ({ code?: string; name?: string; message: string } | null)[] }>
  /** The bridges' log lines so far. */
  logs(): string[]
  /** Resolves with the JSON after the next line starting with `prefix`. */
  next<T>(prefix: string): Promise<T>
}

/**
 * The bridge's log lines once `done` holds for them, or as they are after 10 s: a line crosses
 * the child's stdout pipe and may arrive after the answer it belongs to (a loaded machine showed it).
 */
async function logsWhen(bridge: Bridge, done: (logs: string[]) => boolean): Promise<string[]> {
  const deadline = Date.now() + 10_000
  while (!done(bridge.logs()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25))
  return bridge.logs()
}

/** Starts serve.ts with these bridge options and extra environment. */
function bridgeProcess(hsm: TestToken, configs: object[], env: Record<string, string> = {}): Bridge {
  const child = spawnTs('./serve.ts', { ...hsm.env, ...env, KMS_PROXY_TEST_BRIDGES: JSON.stringify(configs) })
  children.push(child)
  const out: string[] = []
  let err = ''
  let partial = ''
  const waiters: { prefix: string; from: number; resolve: (v: unknown) => void }[] = []
  const check = () => {
    for (const w of [...waiters]) {
      const i = out.findIndex((line, n) => n >= w.from && line.startsWith(w.prefix))
      if (i >= 0) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve(JSON.parse(out[i]!.slice(w.prefix.length)))
      }
    }
  }
  child.stderr!.on('data', (d) => (err += d))
  child.stdout!.on('data', (d) => {
    partial += d
    const parts = partial.split('\n')
    partial = parts.pop()!
    out.push(...parts)
    check()
  })
  const next = <T>(prefix: string) =>
    new Promise<T>((resolve, reject) => {
      waiters.push({ prefix, from: out.length, resolve: resolve as (v: unknown) => void })
      const timer = setTimeout(() => reject(new Error(`no ${prefix} line within 30 s; stderr: ${err}`)), 30_000)
      child.once('exit', (code) => setTimeout(() => reject(new Error(`bridge exited (${code}) before ${prefix}; stderr: ${err}`)), 50))
      check()
      void timer
    })
  const started = new Promise<Awaited<Bridge['started']>>((resolve, reject) => {
    child.stdout!.on('data', () => {
      const ready = out.find((l) => l.startsWith('READY '))
      const failed = out.find((l) => l.startsWith('FAILED '))
      if (ready) resolve({ urls: JSON.parse(ready.slice(6)) as string[] })
      if (failed) resolve({ failures: JSON.parse(failed.slice(7)) })
    })
    child.once('exit', (code) => setTimeout(() => reject(new Error(`bridge exited (${code}) before READY or FAILED; stderr: ${err}`)), 50))
  })
  const logs = () => out.filter((l) => l.startsWith('LOG ')).map((l) => JSON.parse(l.slice(4)) as string)
  return { child, out, started, logs, next }
}

interface Answer {
  status: number
  text: string
}

/** One POST on its own connection (no pooling, so connection counts are exact). */
function post(target: { url?: string; socketPath?: string }, path: string, bearerToken: string | undefined, body: unknown): Promise<Answer> {
  const text = typeof body === 'string' ? body : JSON.stringify(body)
  const where = target.url ? { host: new URL(target.url).hostname, port: Number(new URL(target.url).port) } : { socketPath: target.socketPath }
  return new Promise((resolve, reject) => {
    const req = request(
      { ...where, path, method: 'POST', agent: false, headers: { 'content-type': 'application/json', ...(bearerToken ? { authorization: `Bearer ${bearerToken}` } : {}) } },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }))
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end(text)
  })
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64')

/**
 * A raw client: connects, sends `head`, then `drip` every `everyMs` until the server closes the
 * connection or `giveUpMs` passes. Resolves with what the server sent and when it closed.
 */
function trickle(url: string, head: string, drip: string, everyMs: number, giveUpMs: number): Promise<{ closedAfterMs: number | undefined; received: string }> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const started = performance.now()
    const socket = connect(Number(port), hostname)
    let received = ''
    let timer: ReturnType<typeof setInterval> | undefined
    const giveUp = setTimeout(() => {
      clearInterval(timer)
      socket.destroy()
      resolve({ closedAfterMs: undefined, received })
    }, giveUpMs)
    socket.on('connect', () => {
      socket.write(head)
      timer = setInterval(() => socket.write(drip), everyMs)
    })
    socket.on('data', (d) => (received += d))
    socket.on('error', () => {})
    socket.on('close', () => {
      clearInterval(timer)
      clearTimeout(giveUp)
      resolve({ closedAfterMs: performance.now() - started, received })
    })
  })
}

/**
 * Sends `headers` and `bodyPrefix`, then writes up to `total` body bytes as fast as the server
 * takes them. Resolves with how many bytes the server took, whether it closed the connection
 * (rather than just stopping reading), and what it answered, if the answer arrived before the
 * reset that closing a socket with unread bytes causes.
 */
function flood(url: string, headers: string, total: number, bodyPrefix = ''): Promise<{ written: number; closed: boolean; received: string }> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname)
    let received = ''
    let written = 0
    let closed = false
    let done = false
    socket.on('data', (d) => (received += d))
    socket.on('error', () => {})
    socket.on('close', () => {
      if (!done) closed = true
      resolve({ written, closed, received })
    })
    socket.on('connect', async () => {
      socket.write(`POST /v1/unwrap HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/json\r\n${headers}\r\n${bodyPrefix}`)
      const chunk = Buffer.alloc(64 * 1024, 0x61)
      const deadline = performance.now() + 20_000
      while (written < total && !closed && performance.now() < deadline) {
        const ok = socket.write(chunk)
        written += chunk.length
        if (!ok) await new Promise((r) => { socket.once('drain', r); socket.once('close', r); setTimeout(r, 2_000) })
      }
      if (!closed) await new Promise((r) => { socket.once('close', r); setTimeout(r, 5_000) })
      done = true
      socket.destroy()
    })
  })
}

/** Sends `head` (and nothing more); resolves with the answer once the server closes, or undefined if it does not within 8 s. */
function headOnly(url: string, head: string): Promise<string | undefined> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname, () => socket.write(head))
    let received = ''
    let waited = false
    const timer = setTimeout(() => {
      waited = true
      socket.destroy()
    }, 8_000)
    socket.on('data', (d) => (received += d))
    socket.on('error', () => {})
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(waited ? undefined : received)
    })
  })
}

// ------------------------------------------------------------------------------- the main bridges

let main: Bridge
let urls: string[] = []
const SCOPED = { payments: { name: 'payments-svc', token: PAYMENTS, chains: ['payments'] }, orders: { name: 'orders-svc', token: ORDERS, chains: ['orders/*'] } }
// Started as soon as the bridge with default limits is up, checked at the end (they take 5-10 s).
let defaultHeaders: ReturnType<typeof trickle>
let defaultBody: ReturnType<typeof trickle>
// Two tokens labelled kms-proxy (the second with user PIN 0000), started alongside the main bridges.
let twins: Bridge

beforeAll(async () => {
  const pair = token()
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', TOKEN_LABEL, '--so-pin', SO_PIN, '--pin', '0000'], { env: pair.env, stdio: 'ignore' })
  twins = bridgeProcess(pair, [{ ...base, keyLabel: 'k', token: ADMIN }])
  const hsm = token()
  main = bridgeProcess(hsm, [
    // 0: scopes and the log
    { ...base, keyLabel: 'main', token: ADMIN, tokens: [SCOPED.payments, SCOPED.orders] },
    // 1: short timeouts
    { ...base, keyLabel: 'main', token: ADMIN, headersTimeoutMs: 1_000, requestTimeoutMs: 2_000 },
    // 2: a small connection cap
    { ...base, keyLabel: 'main', token: ADMIN, maxConnections: 4, headersTimeoutMs: 1_500 },
    // 3: the defaults
    { ...base, keyLabel: 'main', token: ADMIN },
  ])
  const started = await main.started
  if (!started.urls) throw new Error(`the bridges did not start: ${JSON.stringify(started.failures)}`)
  urls = started.urls
  defaultHeaders = trickle(urls[3]!, 'POST /v1/generate HTTP/1.1\r\nhost: bridge\r\n', 'x-slow: 1\r\n', 200, 20_000)
  const head = `POST /v1/generate HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer ${ADMIN}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n`
  defaultBody = trickle(urls[3]!, head, ' ', 200, 20_000)
}, 40_000)

describe('the Unix socket', () => {
  const dir = tempDir()
  const socketPath = join(dir, 'bridge.sock')
  const hsm = token()
  const config = { ...base, keyLabel: 'unix', token: ADMIN, socketPath }
  let first: Bridge

  it('is never reachable at its path with a wider mode than 0600, even under umask 0', async () => {
    // Three bridges in one process, one socket each, made one after the other: three windows to catch.
    const paths = [socketPath, join(dir, 'b.sock'), join(dir, 'c.sock')]
    const watch = await watchModes(paths)
    let seen: number[][]
    try {
      first = bridgeProcess(hsm, paths.map((p) => ({ ...config, socketPath: p })), { KMS_PROXY_TEST_UMASK: '0' })
      expect((await first.started).urls).toEqual(['http://localhost', 'http://localhost', 'http://localhost'])
      await new Promise((r) => setTimeout(r, 200)) // let the watcher see the final modes
    } finally {
      seen = watch.stop()
    }
    expect(seen.map((modes) => modes.map((m) => m.toString(8)))).toEqual([['600'], ['600'], ['600']])
    for (const p of paths) expect((await stat(p)).mode & 0o777).toBe(0o600)
    expect(readdirSync(dir).sort()).toEqual(['b.sock', 'bridge.sock', 'c.sock']) // no staging folder left behind
  })

  it('a socket left by a killed bridge is replaced at restart; a live socket, a file that is not a socket and a path taken at the same moment are refused', async () => {
    const killed = new Promise((r) => first.child.once('exit', r))
    first.child.kill('SIGKILL')
    await killed
    expect((await lstat(socketPath)).isSocket()).toBe(true) // left behind

    const second = bridgeProcess(hsm, [config])
    expect((await second.started).urls).toEqual(['http://localhost'])
    const made = await post({ socketPath }, '/v1/generate', ADMIN, { aad: b64(kekAad('unix', 1)) })
    expect(made.status).toBe(200)

    // While it runs: its socket is live; a plain file is not a socket; two bridges race for a fresh path.
    const file = join(dir, 'not-a-socket')
    writeFileSync(file, 'keep me')
    const fresh = join(dir, 'fresh.sock')
    const others = bridgeProcess(hsm, [config, { ...config, socketPath: file }, { ...config, socketPath: fresh }, { ...config, socketPath: fresh }], { KMS_PROXY_TEST_PARALLEL: '1' })
    const { failures } = await others.started
    expect(failures).toBeDefined()
    expect(failures![0]).toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/bridge\.sock is in use by a running server/) })
    expect(failures![1]).toMatchObject({ code: 'ERR_ROOT_KEY', message: expect.stringMatching(/not-a-socket exists and is not a socket; not removing it/) })
    const race = failures!.slice(2)
    expect(race.filter((f) => f === null).length).toBe(1) // exactly one of the two got the path
    expect(race.find((f) => f !== null)!.message).toMatch(/fresh\.sock (was created by someone else while this bridge started|is in use by a running server)/)
    expect(existsSync(file)).toBe(true)
    // The live bridge still serves on its socket.
    expect((await post({ socketPath }, '/v1/unwrap', ADMIN, { aad: b64(kekAad('unix', 1)), wrapped: JSON.parse(made.text).wrapped })).status).toBe(200)

    const exited = new Promise((r) => second.child.once('exit', r))
    second.child.stdin!.end()
    await exited
    expect(existsSync(socketPath)).toBe(false) // removed at close
    expect(readdirSync(dir).sort()).toEqual(['b.sock', 'c.sock', 'not-a-socket']) // the racing bridges cleaned up too (b and c: left by the killed bridge)
  })
})

describe('two tokens with the same label', () => {
  it('the bridge refuses to start and says so, instead of giving the PIN to the last slot', async () => {
    const { failures, urls: started } = await twins.started
    expect(started).toBeUndefined()
    expect(failures![0]!.code).toBe('ERR_ROOT_KEY')
    expect(failures![0]!.message).toMatch(/^2 PKCS#11 tokens are labelled "kms-proxy" \(serial numbers [0-9a-f]+, [0-9a-f]+\): refusing to choose one/)
    expect(failures![0]!.message).not.toContain(PIN)
  })
})

describe('limits that hold before authentication', () => {
  it('headers sent slowly are cut off by headersTimeoutMs (1 s here), with 408', async () => {
    const { closedAfterMs, received } = await trickle(urls[1]!, 'POST /v1/generate HTTP/1.1\r\nhost: bridge\r\n', 'x-slow: 1\r\n', 100, 8_000)
    console.log(`headers trickled every 100 ms: cut off after ${closedAfterMs?.toFixed(0)} ms (headersTimeoutMs 1000)`)
    expect(closedAfterMs).toBeDefined()
    expect(received).toMatch(/^HTTP\/1\.1 408 /)
  })

  it('a body sent slowly is cut off by requestTimeoutMs (2 s here), even with the right token', async () => {
    const head = `POST /v1/unwrap HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer ${ADMIN}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n`
    const { closedAfterMs, received } = await trickle(urls[1]!, head, ' ', 100, 8_000)
    console.log(`body trickled every 100 ms: cut off after ${closedAfterMs?.toFixed(0)} ms (requestTimeoutMs 2000)`)
    expect(closedAfterMs).toBeDefined()
    expect(received).toMatch(/^HTTP\/1\.1 408 /)
  })

  it('a huge body is refused without being read: wrong token (401), declared too large (413), chunked past the limit (413)', async () => {
    const total = 64 * 1024 * 1024
    const wrongToken = `authorization: Bearer ${bearer()}\r\ncontent-length: ${total}\r\n`
    const declared = `authorization: Bearer ${ADMIN}\r\ncontent-length: ${total}\r\n`
    const chunked = `authorization: Bearer ${ADMIN}\r\ntransfer-encoding: chunked\r\n`
    const chunkHead = `${total.toString(16)}\r\n`
    // The answer comes without waiting for the body, and the connection is closed.
    const head = (h: string) => `POST /v1/unwrap HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/json\r\n${h}\r\n`
    expect(await headOnly(urls[3]!, head(wrongToken))).toMatch(/^HTTP\/1\.1 401 [^]*"error":"unauthorized"/)
    expect(await headOnly(urls[3]!, head(declared))).toMatch(/^HTTP\/1\.1 413 [^]*"error":"too_large"/)
    expect(await headOnly(urls[3]!, `${head(chunked)}${chunkHead}${'a'.repeat(20_000)}`)).toMatch(/^HTTP\/1\.1 413 [^]*"error":"too_large"/)
    expect(await headOnly(urls[3]!, head(`x-pad: ${'p'.repeat(9 * 1024)}\r\n${declared}`))).toMatch(/^HTTP\/1\.1 431 /) // headers over 8 KiB
    // Sent anyway, as fast as the bridge takes it: it stops taking and closes.
    const floods = [await flood(urls[3]!, wrongToken, total), await flood(urls[3]!, declared, total), await flood(urls[3]!, chunked, total, chunkHead)]
    console.log(`64 MiB bodies: the bridge took ${floods.map((f) => (f.written / 2 ** 20).toFixed(1)).join(', ')} MiB (wrong token, declared too large, chunked) before closing`)
    for (const f of floods) {
      expect(f.closed).toBe(true)
      // What the kernel's socket buffers hold on loopback is a few MiB; the rest was never read.
      expect(f.written).toBeLessThan(total / 2)
    }
  })

  it('at most maxConnections connections (4 here, 32 by default): one more is closed at once; a request works again when they go', async () => {
    for (const [url, cap] of [[urls[2]!, 4], [urls[0]!, 32]] as const) {
      const { hostname, port } = new URL(url)
      const idle = await Promise.all(
        Array.from({ length: cap }, () => new Promise<ReturnType<typeof connect>>((resolve) => {
          const s = connect(Number(port), hostname, () => resolve(s))
          s.on('error', () => {})
        })),
      )
      await new Promise((r) => setTimeout(r, 100))
      const refused = await post({ url }, '/v1/generate', ADMIN, { aad: b64(kekAad('cap', 1)) }).then(
        (a) => `answered ${a.status}`,
        (e: NodeJS.ErrnoException) => e.code ?? e.message,
      )
      expect(refused, `connection ${cap + 1}`).toMatch(/ECONNRESET|socket hang up/)
      for (const s of idle) s.destroy()
      let status = 0
      for (let i = 0; i < 40 && status !== 200; i++) {
        await new Promise((r) => setTimeout(r, 50))
        status = await post({ url }, '/v1/generate', ADMIN, { aad: b64(kekAad('cap', 1)) }).then((a) => a.status, () => 0)
      }
      expect(status).toBe(200)
    }
  })
})

describe('answers', () => {
  const LABEL = 'label-7c1e9a'
  let bridge: Bridge
  let url: string

  beforeAll(async () => {
    const hsm = token(LABEL)
    bridge = bridgeProcess(hsm, [{ ...base, tokenLabel: LABEL, keyLabel: 'answers', token: ADMIN }])
    const started = await bridge.started
    if (!started.urls) throw new Error(`the bridge did not start: ${JSON.stringify(started.failures)}`)
    url = started.urls[0]!
  }, 40_000)

  it('name no token label and no PKCS#11 error (CKR_*), whatever failed; the log keeps the detail', async () => {
    const aad = b64(kekAad('answers', 3))
    const answers: Answer[] = []
    const made = await post({ url }, '/v1/generate', ADMIN, { aad })
    expect(made.status).toBe(200)
    const { wrapped } = JSON.parse(made.text) as { wrapped: string }
    answers.push(await post({ url }, '/v1/unwrap', bearer(), { aad, wrapped }))
    answers.push(await post({ url }, '/v1/unwrap', ADMIN, 'not json'))
    answers.push(await post({ url }, '/v1/nothing', ADMIN, {}))
    answers.push(await post({ url }, '/v1/unwrap', ADMIN, { aad: b64(kekAad('answers', 4)), wrapped }))
    // The key deleted behind the bridge's back: key_missing.
    const destroyed = bridge.next<number>('DESTROYED ')
    bridge.child.stdin!.write('destroy answers\n')
    expect(await destroyed).toBe(1)
    const missing = await post({ url }, '/v1/unwrap', ADMIN, { aad, wrapped })
    expect(missing.status).toBe(404)
    expect(JSON.parse(missing.text).error).toBe('key_missing')
    answers.push(missing)
    // The token initialized again (user PIN unset): the bridge can no longer log in.
    const reinit = bridge.next<string>('REINIT ')
    bridge.child.stdin!.write(`reinit ${LABEL}\n`)
    expect(await reinit).toBe('ok')
    const gone = await post({ url }, '/v1/generate', ADMIN, { aad })
    expect(gone.status).toBe(503)
    expect(JSON.parse(gone.text).error).toBe('unavailable')
    answers.push(gone)

    expect(answers.map((a) => a.status)).toEqual([401, 400, 404, 422, 404, 503])
    for (const a of answers) {
      expect(a.text).not.toContain(LABEL)
      expect(a.text).not.toMatch(/CKR_/)
      expect(a.text).not.toContain(PIN)
      expect(a.text).not.toContain(ADMIN)
    }
    // The operator still learns why, from the log.
    const why = (l: string) => l.includes(LABEL) && /CKR_USER_PIN_NOT_INITIALIZED/.test(l)
    expect((await logsWhen(bridge, (logs) => logs.some(why))).some(why)).toBe(true)
  })
})

describe('tokens scoped to chain names', () => {
  it('a scoped token generates and unwraps KEKs of its own chains only; the unscoped token any', async () => {
    const target = { url: urls[0]! }
    const call = async (who: string, path: string, body: object) => post(target, path, who, body)
    const payments = b64(kekAad('payments', 7))
    const made = await call(PAYMENTS, '/v1/generate', { aad: payments })
    expect(made.status).toBe(200)
    const { wrapped } = JSON.parse(made.text) as { wrapped: string }
    expect((await call(PAYMENTS, '/v1/unwrap', { aad: payments, wrapped })).status).toBe(200)
    // The orders service holds a payments KEK record: it cannot unwrap it, nor make one.
    const forbidden = await call(ORDERS, '/v1/unwrap', { aad: payments, wrapped })
    expect(forbidden.status).toBe(403)
    expect(JSON.parse(forbidden.text).error).toBe('forbidden')
    expect((await call(ORDERS, '/v1/generate', { aad: payments })).status).toBe(403)
    // 'orders/*' is a prefix: orders/eu is in, orders and ordersX are not.
    expect((await call(ORDERS, '/v1/generate', { aad: b64(kekAad('orders/eu', 1)) })).status).toBe(200)
    expect((await call(ORDERS, '/v1/generate', { aad: b64(kekAad('orders', 1)) })).status).toBe(403)
    expect((await call(ORDERS, '/v1/generate', { aad: b64(kekAad('ordersX', 1)) })).status).toBe(403)
    expect((await call(PAYMENTS, '/v1/generate', { aad: b64(kekAad('payments-2', 1)) })).status).toBe(403)
    // Associated data that is not a KEK-wrap AAD names no chain: refused to a scoped token.
    expect((await call(PAYMENTS, '/v1/generate', { aad: b64(new Uint8Array([1, 2, 3])) })).status).toBe(403)
    const truncated = kekAad('payments', 7).subarray(0, 20)
    expect((await call(PAYMENTS, '/v1/generate', { aad: b64(truncated) })).status).toBe(403)
    // The unscoped token (`token`) may use any chain and any associated data.
    expect((await call(ADMIN, '/v1/unwrap', { aad: payments, wrapped })).status).toBe(200)
    expect((await call(ADMIN, '/v1/generate', { aad: b64(new Uint8Array([1, 2, 3])) })).status).toBe(200)
  })

  it('through key chains: the orders token cannot read the payments chain (ERR_ROOT_KEY, not retryable)', async () => {
    const root = (t: string) => pkcs11BridgeRootKey({ url: urls[0]!, token: t, retries: 0 })
    const store = memoryStore()
    const encrypted = await (await KeyChain.open({ name: 'payments', rootKey: root(PAYMENTS), store })).encrypt('card 4111')
    const reader = await KeyChain.open({ name: 'payments', rootKey: root(PAYMENTS), store })
    expect(new TextDecoder().decode(await reader.decrypt(encrypted))).toBe('card 4111')
    const thief = await KeyChain.open({ name: 'payments', rootKey: root(ORDERS), store })
    const error = await thief.decrypt(encrypted).then(() => undefined, (e: unknown) => e)
    expect(error).toBeInstanceOf(KmsProxyError)
    expect((error as KmsProxyError).code).toBe('ERR_ROOT_KEY')
    expect((error as KmsProxyError).retryable).toBe(false)
    expect((error as KmsProxyError).message).toMatch(/refused this token for this key chain \(HTTP 403\)/)
    expect(`${String(error)} ${(error as Error).stack}`).not.toContain(ORDERS)
  })

  it('each generate and unwrap is logged with chain, KEK id and caller name; no token, PIN or KEK bytes in the log', async () => {
    const aad = b64(kekAad('payments', 0x0badf00d))
    const made = await post({ url: urls[0]! }, '/v1/generate', PAYMENTS, { aad })
    const { wrapped, kek } = JSON.parse(made.text) as { wrapped: string; kek: string }
    await post({ url: urls[0]! }, '/v1/unwrap', PAYMENTS, { aad, wrapped })
    await post({ url: urls[0]! }, '/v1/unwrap', ORDERS, { aad, wrapped })
    await post({ url: urls[0]! }, '/v1/unwrap', ADMIN, { aad, wrapped })
    await post({ url: urls[0]! }, '/v1/unwrap', PAYMENTS, { aad: b64(kekAad('payments', 0x0badf00e)), wrapped })
    expect((await post({ url: urls[0]! }, '/v1/unwrap', bearer(), { aad, wrapped })).status).toBe(401)
    // A chain name that tries to forge a second log line stays inside one, quoted.
    const forged = 'x" kek=0 caller=admin result=ok\nunwrap chain="payments'
    expect((await post({ url: urls[0]! }, '/v1/generate', ADMIN, { aad: b64(kekAad(forged, 1)) })).status).toBe(200)
    // Associated data that is not a KEK-wrap AAD (the unscoped token may use it) names no chain.
    expect((await post({ url: urls[0]! }, '/v1/generate', ADMIN, { aad: b64(Uint8Array.of(9, 9)) })).status).toBe(200)
    const expected = [
      'generate chain="payments" kek=0badf00d caller=payments-svc result=ok',
      'unwrap chain="payments" kek=0badf00d caller=payments-svc result=ok',
      'unwrap chain="payments" kek=0badf00d caller=orders-svc result=forbidden',
      'unwrap chain="payments" kek=0badf00d caller=default result=ok',
      'unwrap chain="payments" kek=0badf00e caller=payments-svc result=unwrap_failed',
    ]
    expected.push(`generate chain=${JSON.stringify(forged)} kek=00000001 caller=default result=ok`, 'generate chain=- kek=- caller=default result=ok', 'request result=unauthorized')
    const logs = await logsWhen(main, (l) => expected.every((line) => l.includes(line)))
    for (const line of expected) expect(logs).toContain(line)
    for (const line of logs) expect(line).not.toMatch(/[\n\r]/)
    const all = logs.join('\n')
    for (const s of [...TOKENS, PIN, kek]) expect(all).not.toContain(s)
  })

  it('/v1/datakey (the envelope of wrapKek): scoped like generate, logged, and its sealed data key unwraps as `key` only under its AAD, never as a KEK', async () => {
    const target = { url: urls[0]! }
    const aad = b64(kekAad('payments', 0x0da7a6e1))
    const made = await post(target, '/v1/datakey', PAYMENTS, { aad })
    expect(made.status).toBe(200)
    const { key, wrapped } = JSON.parse(made.text) as { key: string; wrapped: string }
    expect([Buffer.from(key, 'base64').length, Buffer.from(wrapped, 'base64').length, Buffer.from(wrapped, 'base64')[0]]).toEqual([32, 61, 0x32])
    expect((await post(target, '/v1/datakey', ORDERS, { aad })).status).toBe(403)
    const opened = await post(target, '/v1/unwrap', PAYMENTS, { aad, wrapped })
    expect([opened.status, JSON.parse(opened.text)]).toEqual([200, { key }])
    expect((await post(target, '/v1/unwrap', PAYMENTS, { aad: b64(kekAad('payments', 0x0da7a6e2)), wrapped })).status).toBe(422)
    // Relabelled as a sealed KEK (0x30): refused by its length before the token is asked.
    const relabelled = Buffer.from(wrapped, 'base64')
    relabelled[0] = 0x30
    expect((await post(target, '/v1/unwrap', PAYMENTS, { aad, wrapped: relabelled.toString('base64') })).status).toBe(400)
    const expected = ['datakey chain="payments" kek=0da7a6e1 caller=payments-svc result=ok', 'datakey chain="payments" kek=0da7a6e1 caller=orders-svc result=forbidden', 'unwrap chain="payments" kek=0da7a6e1 caller=payments-svc result=ok']
    const logs = await logsWhen(main, (l) => expected.every((line) => l.includes(line)))
    for (const line of expected) expect(logs).toContain(line)
    expect(logs.join('\n')).not.toContain(key)
  })

  it('bad token options are TypeError before the token is opened; a token is never shown', async () => {
    // A module that does not exist: a case that passed the checks would fail loudly, not open a token.
    const ok = { module: '/nonexistent/libpkcs11.so', tokenLabel: 'never-opened', pin: PIN, keyLabel: 'k' }
    const cases: object[] = [
      {}, // neither token nor tokens
      { tokens: [] },
      { tokens: [{ name: 'a', token: PAYMENTS, chains: ['payments'] }, { name: 'b', token: PAYMENTS, chains: ['orders'] }] }, // one token twice
      { tokens: [{ name: 'a', token: PAYMENTS }, { name: 'a', token: ORDERS }] }, // one name twice
      { token: PAYMENTS, tokens: [{ name: 'a', token: PAYMENTS }] },
      { tokens: [{ name: 'has space', token: PAYMENTS }] },
      { tokens: [{ name: 'a', token: 'short' }] },
      { tokens: [{ name: 'a', token: PAYMENTS, chains: [] }] },
      { tokens: [{ name: 'a', token: PAYMENTS, chains: ['or*ders'] }] },
      { tokens: [{ name: 'a', token: PAYMENTS, chains: [''] }] },
      { token: ADMIN, maxConnections: 0 },
      { token: ADMIN, headersTimeoutMs: 100_000, requestTimeoutMs: 10_000 },
      { token: ADMIN, maxBodyBytes: 10 },
      { token: ADMIN, socketPath: join(tmpdir(), 'x.sock'), socketMode: 0o666 },
    ]
    for (const c of cases) {
      const error = await startPkcs11Bridge({ ...ok, ...c } as never).then(() => undefined, (e: unknown) => e)
      expect(error, JSON.stringify(Object.keys(c))).toBeInstanceOf(Error)
      expect(['TypeError', 'RangeError'], JSON.stringify(c).replace(/[0-9a-f]{48}/g, 'T')).toContain((error as Error).name)
      for (const s of TOKENS) expect(`${String(error)} ${(error as Error).stack}`).not.toContain(s)
    }
  })
})

describe('default limits', () => {
  it('headersTimeoutMs 5 s and requestTimeoutMs 10 s by default', async () => {
    const [headers, body] = await Promise.all([defaultHeaders, defaultBody])
    console.log(`defaults: trickled headers cut off after ${headers.closedAfterMs?.toFixed(0)} ms, a trickled body after ${body.closedAfterMs?.toFixed(0)} ms`)
    expect(headers.received).toMatch(/^HTTP\/1\.1 408 /)
    expect(body.received).toMatch(/^HTTP\/1\.1 408 /)
    // Cut off by their own timeout, not the other's: the body's request had complete headers.
    expect(headers.closedAfterMs!).toBeLessThan(body.closedAfterMs!)
  })
})
