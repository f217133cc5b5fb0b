/**
 * A KeyStore on etcd v3 through its HTTP/JSON gateway (`/v3/kv/range`, `/v3/kv/txn`,
 * `/v3/kv/deleterange`, `/v3/watch`, `/v3/auth/authenticate`), with `fetch` only: it runs on Node, Deno, Bun, workerd and browsers.
 *
 * - The chain head lives at `${prefix}${chain}/head`; its version is the key's `mod_revision`, and
 *   casHead is one transaction: compare `mod_revision == expected` (or `create_revision == 0`
 *   when there is no head yet), then put. etcd is linearizable, so this is a real
 *   compare-and-swap across every process: `atomic: true`.
 * - KEK records live at `${prefix}${chain}/kek/${id as 8 hex digits}` (the 'default' root's, where
 *   every record lived before chains had several roots) and `…/kek/${id}/root/${root name}` (any
 *   other root's), each written by one transaction `create_revision == 0` then put:
 *   put-if-absent per (id, root), never overwritten. One range over `…/kek/${id}` reads every
 *   root's record of an id (ids have a fixed width, so id 12 never reaches id 123's keys);
 *   deleteKekWrap deletes one key.
 * - Several endpoints: a network error, a timeout (covering the whole answer, body included) or a
 *   5xx moves to the next one, and the one that answered is remembered. A retried write can only
 *   fail safe (a swap that had in fact applied reads as lost, and the chain counts that lease as
 *   used; a KEK write reads as "id taken", and the chain picks another id, leaving one unused
 *   record).
 * - Username and password: one `authenticate` call, the token cached and renewed once when etcd
 *   refuses it (invalid or expired, or a JWT issued before an auth change: "revision of auth store
 *   is old"). The password may be a function, asked at each login, so that it can rotate.
 *   Neither the password nor the token ever appears in an error message.
 * - Plain http only to loopback or to hosts named in `plainHttpHosts`: over it, anyone on the path
 *   reads the password and token, or answers `succeeded: true` to every write.
 * - watchHead: one `/v3/watch` stream per store instance over every key under the prefix, its
 *   head events handed to the chains watching them; reopened on the next endpoint after a drop.
 *
 * No `node:` imports: only fetch, TextEncoder/TextDecoder, btoa/atob.
 *
 * @example
 * ```ts
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { etcdStore } from '@kms-proxy/etcd'
 * const store = etcdStore({ endpoints: ['https://etcd-1:2379', 'https://etcd-2:2379', 'https://etcd-3:2379'], username: 'kms', password })
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store, name: 'orders' })
 * const encrypted = await chain.encrypt('hello') // any process on the same store and root key decrypts it
 * chain.close() // stops following etcd's watch, so the process can exit
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/etcd
 */
import { checkRootName as checkRoot, checkKekId as checkId, checkChainName as checkChain, DEFAULT_ROOT, HttpExchangeError, StoreError, checkServerUrl, fromBase64, httpExchange, isRootName, parseChainHead, rootOf, toBase64, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'

/** Options of {@link etcdStore}. */
export interface EtcdStoreOptions {
  /**
   * Client URLs of the cluster members, e.g. `['https://etcd-1:2379', 'https://etcd-2:2379']`.
   * `http:` only to a loopback host (`localhost`, 127.0.0.0/8, `::1`) or a host in `plainHttpHosts`.
   */
  endpoints: string[]
  /**
   * Hosts that may be reached over plain `http:` although they are not loopback: the explicit
   * opt-in for a network where nobody else can read or answer the traffic. Over plain http the
   * password, the token and every record cross in the clear, and anyone on the path can answer
   * `{"succeeded":true}` to a write that never happened. Host names only, no port.
   *
   * @defaultValue none: plain http only to loopback
   */
  plainHttpHosts?: string[]
  /**
   * etcd user (auth enabled); `password` is then required.
   *
   * @defaultValue none: no authentication
   */
  username?: string
  /**
   * The etcd user's password, or a function that returns it (called at each login: the first, and
   * each time etcd refuses the token), so that a password rotated in a secret store is picked up
   * without a restart. A function with an `invalidate(stale)` method (`refreshingCredentials` of
   * @kms-proxy/kms, a re-read file) is told when etcd refused the password it gave, and asked once
   * more. Never appears in an error.
   */
  password?: string | (() => Promise<string>)
  /**
   * Key prefix for every key this store writes.
   *
   * @defaultValue `'kms-proxy/'`
   */
  prefix?: string
  /**
   * The fetch to use.
   *
   * @defaultValue the global `fetch`
   */
  fetch?: typeof fetch
  /**
   * Deadline in milliseconds for each request to one endpoint, covering the whole answer (headers
   * and body, even with a `fetch` that ignores its abort signal); past it the store moves to the
   * next endpoint.
   *
   * @defaultValue 5,000
   */
  timeoutMs?: number
}

/** The store {@link etcdStore} returns: a `KeyStore` with compare-and-swap that never embeds KEKs. */
export interface EtcdStore extends KeyStore {
  /** Always true: etcd's transactions are a real compare-and-swap. */
  readonly atomic: true
  /** Always false: data names its KEK by id; the wrapped KEK lives in etcd. */
  readonly embedsKeks: false
  /**
   * Calls `onChange` soon after the chain's head changes in any process (etcd's watch). One
   * watch stream per store instance serves every chain watched through it: opened at the first
   * watcher, closed when the last one stops, opened again on the next endpoint after a drop
   * (capped, jittered backoff), and every watcher is called once after each reconnection. An
   * open stream is an open fetch, which keeps a Node process alive: stop every watch (a
   * `KeyChain` does with `chain.close()`). The returned function stops this watch; idempotent.
   *
   * @throws TypeError - `chain` is not a non-empty string, or `onChange` not a function.
   * @example
   * ```ts
   * const stop = store.watchHead('orders', () => console.log('the head of orders changed'))
   * stop()
   * ```
   */
  watchHead(chain: string, onChange: () => void): () => void
}

// ------------------------------------------------------------------------------------ bytes

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** A base64 field etcd answered, or one of our records: anything but canonical base64 is ERR_STORE. */
function bytesOf(text: string, what: string): Uint8Array {
  try {
    return fromBase64(text)
  } catch {
    throw new StoreError(`etcd store: ${what} is not base64`)
  }
}

const b64 = (text: string) => toBase64(encoder.encode(text))

/** The smallest key greater than every key starting with `prefix` (etcd's range_end for a prefix). */
function prefixEnd(prefix: string): string {
  const bytes = encoder.encode(prefix)
  for (let i = bytes.length - 1; i >= 0; i--) {
    if (bytes[i]! < 0xff) {
      const end = bytes.slice(0, i + 1)
      end[i]!++
      return toBase64(end)
    }
  }
  return toBase64(new Uint8Array([0])) // all keys
}

// ------------------------------------------------------------------------------------ validation

const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)
const isRevision = (v: unknown): v is string => typeof v === 'string' && /^[1-9][0-9]{0,18}$/.test(v)

/** A head as read, checked and copied by core's one parser: every field kept, none invented. */
function checkHead(v: unknown): ChainHead {
  const head = parseChainHead(v)
  if (!head) throw new StoreError('etcd store: the chain head is malformed')
  return head
}

const hex8 = (id: number) => id.toString(16).padStart(8, '0')

// ------------------------------------------------------------------------------------ timers

/** The longest first wait before a dropped watch is opened again; doubled per round of failures, with jitter. */
const WATCH_RETRY_MIN_MS = 250
/** Longest wait between two attempts to open the watch: well under a chain's default maxStalenessMs (15 s). */
const WATCH_RETRY_MAX_MS = 4000

/** Lets a Node process exit while only this timer is left (a no-op where timers are numbers). */
function unref(timer: unknown): void {
  ;(timer as { unref?: () => void } | undefined)?.unref?.()
}

/**
 * The wait after `rounds` rounds of failures (0: after a stream that was open dropped): half to
 * all of WATCH_RETRY_MIN_MS doubled per round, capped; the jitter comes from
 * crypto.getRandomValues (no Math.random in this code base).
 */
function backoff(rounds: number): number {
  const delay = Math.min(WATCH_RETRY_MAX_MS, WATCH_RETRY_MIN_MS * 2 ** rounds)
  const [r] = crypto.getRandomValues(new Uint32Array(1))
  return delay / 2 + (delay / 2) * (r! / 2 ** 32)
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve()
    const done = () => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    unref(timer)
    signal.addEventListener('abort', done)
  })
}

// ------------------------------------------------------------------------------------ gateway

interface Kv {
  key?: string
  value?: string
  create_revision?: string
  mod_revision?: string
}

/**
 * An answer etcd refused: a typed ERR_STORE, retryable only for "too many requests" (429) and a
 * request timeout (408); permission denied or a bad request stay refused.
 */
class EtcdHttpError extends StoreError {
  constructor(
    message: string,
    readonly status: number,
    readonly auth: boolean,
  ) {
    super(message, { retryable: status === 429 || status === 408 })
  }
}

/** Something that should make us try the next endpoint (no complete answer, or a 5xx). */
class EndpointDown extends Error {}

/**
 * The largest answer read from etcd. A KEK record takes under 1.5 KiB of a listKeks answer (base64
 * twice over, even with a 512-byte wrapped KEK), so a chain's KEKs fit by the tens of thousands.
 */
const MAX_ANSWER_BYTES = 64 << 20

/** etcd refuses the token: invalid or expired, or a JWT issued before the last auth change. */
const REFUSED_TOKEN = /invalid auth token|user name is empty|auth token is not provided|revision of auth store is old/i

/**
 * A KeyStore on etcd v3's HTTP/JSON gateway. `atomic: true`: the head changes only by
 * compare-and-swap, so many processes on many machines share one chain and its usage limit.
 *
 * @throws TypeError - no endpoints, a malformed endpoint or plain http to a host that is neither
 *   loopback nor in `plainHttpHosts`, a username without a password (or the reverse), no `fetch`.
 * @throws RangeError - `timeoutMs` not a positive number.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`: `retryable` when no
 *   endpoint answered; not retryable when etcd refused (permission denied, a failed login) or a
 *   record is malformed.
 * @example
 * ```ts
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { etcdStore } from '@kms-proxy/etcd'
 *
 * const store = etcdStore({ endpoints: ['https://etcd-1:2379', 'https://etcd-2:2379', 'https://etcd-3:2379'], username: 'kms', password })
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store, name: 'orders' })
 * ```
 */
export function etcdStore(options: EtcdStoreOptions): EtcdStore {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const { endpoints, username, password } = options
  if (!Array.isArray(endpoints) || endpoints.length === 0) throw new TypeError('endpoints: expected a non-empty array of URLs')
  const bases = endpoints.map((e, i) => {
    const url = checkServerUrl(String(e), `endpoints[${i}]`, options.plainHttpHosts)
    return url.origin + url.pathname.replace(/\/+$/, '')
  })
  if (username !== undefined && (typeof username !== 'string' || username.length === 0)) throw new TypeError('username: expected a non-empty string')
  if (password !== undefined && typeof password !== 'string' && typeof password !== 'function') throw new TypeError('password: expected a string or a function that returns one')
  if ((username === undefined) !== (password === undefined)) throw new TypeError('username and password: give both or neither')
  const prefix = options.prefix ?? 'kms-proxy/'
  if (typeof prefix !== 'string') throw new TypeError('prefix: expected a string')
  const doFetch = options.fetch ?? globalThis.fetch
  if (typeof doFetch !== 'function') throw new TypeError('fetch: expected a function (no global fetch here)')
  const timeoutMs = options.timeoutMs ?? 5000
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new RangeError('timeoutMs: expected a positive number')

  let current = 0
  let token: string | undefined
  let authenticating: Promise<string> | undefined

  /** One POST to one endpoint: parsed JSON, EtcdHttpError for an answer etcd refused, EndpointDown otherwise. */
  async function post(base: string, path: string, body: unknown, auth: string | undefined): Promise<Record<string, unknown>> {
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (auth !== undefined) headers.authorization = auth
    let response
    try {
      response = await httpExchange(`${base}${path}`, { method: 'POST', headers, body: JSON.stringify(body) }, { timeoutMs, fetch: doFetch, maxBodyBytes: MAX_ANSWER_BYTES })
    } catch (error) {
      if (error instanceof HttpExchangeError) throw new EndpointDown(`${base}: ${error.message}`)
      throw error
    }
    const json = response.json() as Record<string, unknown> | null | undefined
    if (response.ok && json && typeof json === 'object') return json
    const message = typeof json?.message === 'string' ? json.message : typeof json?.error === 'string' ? json.error : `HTTP ${response.status}`
    if (response.status >= 500 && !/permission denied|authentication failed|auth token|user name/i.test(message)) {
      throw new EndpointDown(`${base}: HTTP ${response.status}: ${message.slice(0, 200)}`)
    }
    const isAuth = response.status === 401 || REFUSED_TOKEN.test(message)
    throw new EtcdHttpError(`etcd ${path} failed: HTTP ${response.status}: ${message.slice(0, 200)}`, response.status, isAuth)
  }

  /** Tries each endpoint in turn, starting from the last one that answered. */
  async function call(path: string, body: unknown, auth: string | undefined): Promise<Record<string, unknown>> {
    const down: string[] = []
    for (let k = 0; k < bases.length; k++) {
      const i = (current + k) % bases.length
      try {
        const result = await post(bases[i]!, path, body, auth)
        current = i
        return result
      } catch (error) {
        if (error instanceof EtcdHttpError) {
          current = i
          throw error
        }
        if (!(error instanceof EndpointDown)) throw error
        down.push(error.message)
      }
    }
    throw new StoreError(`etcd ${path}: no endpoint answered (${down.join('; ')})`, { retryable: true })
  }

  /** The password for one login: the option's, or what its function gives now. */
  async function currentPassword(): Promise<string> {
    if (typeof password !== 'function') return password!
    let value: unknown
    try {
      value = await password()
    } catch (error) {
      throw new StoreError('etcd: the password function failed', { cause: error, retryable: true })
    }
    if (typeof value !== 'string') throw new StoreError('etcd: the password function returned no string')
    return value
  }

  function authenticate(): Promise<string> {
    authenticating ??= (async () => {
      try {
        let used = await currentPassword()
        let r: Record<string, unknown>
        try {
          r = await call('/v3/auth/authenticate', { name: username, password: used }, undefined)
        } catch (error) {
          // A password from a source that can refresh, refused: the source may hold a stale one.
          const invalidate = (password as { invalidate?: unknown } | undefined)?.invalidate
          if (!(error instanceof EtcdHttpError) || typeof password !== 'function' || typeof invalidate !== 'function') throw error
          invalidate.call(password, used)
          used = await currentPassword()
          r = await call('/v3/auth/authenticate', { name: username, password: used }, undefined)
        }
        if (typeof r.token !== 'string' || r.token.length === 0) throw new StoreError('etcd /v3/auth/authenticate returned no token')
        token = r.token
        return r.token
      } catch (error) {
        if (error instanceof EtcdHttpError) throw new StoreError(`etcd authentication as ${JSON.stringify(username)} failed: HTTP ${error.status} (wrong username or password?)`)
        throw error
      } finally {
        authenticating = undefined
      }
    })()
    return authenticating
  }

  /**
   * A gateway call with the auth token, renewed once if etcd refuses it. A request refused for its
   * token was not applied (etcd checks the token before it applies a write), so the retry is safe.
   */
  async function request(path: string, body: unknown): Promise<Record<string, unknown>> {
    if (username === undefined) return call(path, body, undefined)
    const used = token ?? (await authenticate())
    try {
      return await call(path, body, used)
    } catch (error) {
      if (!(error instanceof EtcdHttpError && error.auth)) throw error
      if (token === used) token = undefined
      return call(path, body, token ?? (await authenticate()))
    }
  }

  const chainPrefix = (chain: string) => `${prefix}${encodeURIComponent(checkChain(chain))}/`
  const headKey = (chain: string) => `${chainPrefix(chain)}head`
  const kekPrefix = (chain: string) => `${chainPrefix(chain)}kek/`
  /** The 'default' root's key is the one every record had before several roots: old data reads as it did. */
  const kekKey = (chain: string, id: number, root: string) => `${kekPrefix(chain)}${hex8(id)}${root === DEFAULT_ROOT ? '' : `/root/${root}`}`

  async function range(key: string, rangeEnd?: string): Promise<Kv[]> {
    const body: Record<string, string> = { key: b64(key) }
    if (rangeEnd !== undefined) body.range_end = rangeEnd
    const r = await request('/v3/kv/range', body)
    const kvs = r.kvs ?? []
    if (!Array.isArray(kvs)) throw new StoreError('etcd /v3/kv/range: malformed answer')
    return kvs as Kv[]
  }

  async function txn(compare: Record<string, string>, key: string, value: string): Promise<boolean> {
    const r = await request('/v3/kv/txn', {
      compare: [{ result: 'EQUAL', key: b64(key), ...compare }],
      success: [{ request_put: { key: b64(key), value: b64(value) } }],
    })
    // A failed transaction has no `succeeded` field at all (proto3 JSON leaves defaults out).
    return r.succeeded === true
  }

  const valueOf = (kv: Kv) => decoder.decode(bytesOf(kv.value ?? '', 'a value etcd answered'))

  function parseRecord(kv: Kv, id: number, root: string): KekRecord {
    let r: { id?: unknown; root?: unknown; createdAt?: unknown; rootKind?: unknown; wrapped?: unknown }
    try {
      r = JSON.parse(valueOf(kv))
    } catch {
      throw new StoreError(`etcd store: the KEK record ${hex8(id)} is not JSON`)
    }
    // The value names its id and root as its key does: a record copied to another key is refused.
    const named = root === DEFAULT_ROOT ? r?.root === undefined : r?.root === root
    if (r?.id !== id || !named || !isTime(r.createdAt) || typeof r.rootKind !== 'string' || typeof r.wrapped !== 'string') {
      throw new StoreError(`etcd store: the KEK record ${hex8(id)} is malformed`)
    }
    const wrapped = bytesOf(r.wrapped, `the KEK record ${hex8(id)}`)
    if (wrapped.length === 0) throw new StoreError(`etcd store: the KEK record ${hex8(id)} is malformed`)
    return Object.freeze({ id, createdAt: r.createdAt, rootKind: r.rootKind, wrapped, ...(root === DEFAULT_ROOT ? {} : { root }) })
  }

  /**
   * The records among `kvs` (keys under `kekPrefix(chain)`). Keys of another shape are no
   * record of any version and are left alone; a `root/default` key is refused, as it would
   * stand for the record at the key without a root.
   */
  function recordsOf(chain: string, kvs: Kv[]): KekRecord[] {
    const p = kekPrefix(chain)
    const out: KekRecord[] = []
    for (const kv of kvs) {
      const name = decoder.decode(bytesOf(kv.key ?? '', 'a key etcd answered')).slice(p.length)
      const m = /^([0-9a-f]{8})(?:\/root\/([A-Za-z0-9._-]{1,64}))?$/.exec(name)
      if (!m) continue
      const id = parseInt(m[1]!, 16)
      if (m[2] === DEFAULT_ROOT) throw new StoreError(`etcd store: the KEK record ${hex8(id)} is malformed`)
      out.push(parseRecord(kv, id, m[2] ?? DEFAULT_ROOT))
    }
    return out
  }

  /** Every root's record of `id`: one range over its keys, `…/kek/<id>` and `…/kek/<id>/root/…`. */
  async function wrapsOf(chain: string, id: number): Promise<KekRecord[]> {
    const key = kekKey(chain, checkId(id), DEFAULT_ROOT)
    // [key, key + '0'): the key itself and every key under `key/` ('0' follows '/'), no other id's.
    return recordsOf(chain, await range(key, b64(`${key}0`)))
  }

  // ------------------------------------------------------------------------------ watch

  /** Listeners by head key. One watch stream serves them all; it runs while there is one. */
  const listeners = new Map<string, Set<() => void>>()
  let subscribers = 0
  let watching: AbortController | undefined

  /** Calls the listeners of one head key, or of every key; a listener that throws is ignored. */
  function notify(key?: string): void {
    const sets = key === undefined ? [...listeners.values()] : [listeners.get(key)]
    for (const set of sets) {
      for (const listener of [...(set ?? [])]) {
        try {
          listener()
        } catch {
          // A hint's consumer failing is its own business; the stream goes on for the others.
        }
      }
    }
  }

  // Every key under the prefix: head keys cannot be told apart by a range (each sits under its
  // chain's name, between that chain's KEK records' keys), so KEK writes (a rotation, a root
  // change) come along too and are dropped by key. They are as rare as head writes.
  const watchKey = prefix === '' ? toBase64(new Uint8Array([0])) : b64(prefix)
  const watchEnd = prefix === '' ? toBase64(new Uint8Array([0])) : prefixEnd(prefix)

  /**
   * One watch stream from `base` until it ends, fails or `signal` aborts. `created` is called when
   * etcd confirms the watch: from then on no head change is missed while the stream lasts.
   */
  async function watchOnce(base: string, signal: AbortSignal, created: () => void): Promise<void> {
    const controller = new AbortController()
    const abort = () => controller.abort()
    signal.addEventListener('abort', abort)
    // Until etcd confirms the watch, `timeoutMs` applies as to any request; after that the
    // stream is idle as long as the heads are, and may stay open for days.
    const deadline = setTimeout(abort, timeoutMs)
    unref(deadline)
    const ended = new Promise<never>((_, reject) => {
      const fail = () => reject(new EndpointDown(`${base}: watch stopped`))
      if (controller.signal.aborted) fail()
      else controller.signal.addEventListener('abort', fail)
    })
    ended.catch(() => {})
    let reader: ReadableStreamDefaultReader<Uint8Array> | undefined
    let used: string | undefined
    try {
      // No other header: etcd's CORS allows only these, and browsers ask first. (So no
      // "require leader" metadata: a member cut off from the others keeps the stream open and
      // silent, and the chains' maxStalenessMs covers that.)
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if (username !== undefined) headers.authorization = used = token ?? (await authenticate())
      const body = JSON.stringify({ create_request: { key: watchKey, range_end: watchEnd } })
      const pending = doFetch(`${base}/v3/watch`, { method: 'POST', headers, body, signal: controller.signal })
      // A fetch that ignores its signal: the race leaves it, and its late answer is closed.
      pending.then(
        (r) => {
          if (controller.signal.aborted) r.body?.cancel().catch(() => {})
        },
        () => {},
      )
      const response = await Promise.race([pending, ended])
      if (!response.ok || !response.body) {
        await response.body?.cancel().catch(() => {})
        if (response.status === 401) forget(used)
        throw new EndpointDown(`${base}: watch: HTTP ${response.status}`)
      }
      reader = response.body.getReader()
      // Cancelling the reader ends a pending read (no race per read: a stream open for days
      // would pile up one reaction per message on a promise that never settles).
      const stopReading = () => void reader?.cancel().catch(() => {})
      if (controller.signal.aborted) stopReading()
      else controller.signal.addEventListener('abort', stopReading)
      const text = new TextDecoder('utf-8', { fatal: true })
      let buffered = ''
      for (;;) {
        const { done, value } = await reader.read()
        if (controller.signal.aborted) throw new EndpointDown(`${base}: watch stopped`)
        if (done) return
        buffered += text.decode(value, { stream: true })
        if (buffered.length > MAX_ANSWER_BYTES) throw new EndpointDown(`${base}: watch: a message over ${MAX_ANSWER_BYTES} bytes`)
        let newline: number
        while ((newline = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, newline).trim()
          buffered = buffered.slice(newline + 1)
          if (line) watchMessage(base, line, deadline, used, created)
        }
      }
    } finally {
      clearTimeout(deadline)
      signal.removeEventListener('abort', abort)
      controller.abort()
      reader?.cancel().catch(() => {})
    }
  }

  /** A token etcd refused is not sent again: the next attempt logs in (unless a newer token came meanwhile). */
  function forget(used: string | undefined): void {
    if (used !== undefined && token === used) token = undefined
  }

  /**
   * One line of the stream: the watch created or cancelled, an error, or events. etcd refuses a
   * token (expired, or a JWT older than an auth change) by a watch both created and cancelled,
   * with the reason; a permission denied comes the same way and keeps the token, so that it
   * costs no login per attempt.
   */
  function watchMessage(base: string, line: string, deadline: ReturnType<typeof setTimeout>, used: string | undefined, created: () => void): void {
    let message: { result?: { created?: boolean; canceled?: boolean; cancel_reason?: unknown; events?: Array<{ kv?: Kv }> }; error?: { message?: unknown } }
    try {
      message = JSON.parse(line)
    } catch {
      throw new EndpointDown(`${base}: watch: an answer that is not JSON`)
    }
    if (message.error) {
      const reason = typeof message.error.message === 'string' ? message.error.message : 'an error'
      if (REFUSED_TOKEN.test(reason)) forget(used)
      throw new EndpointDown(`${base}: watch: ${reason.slice(0, 200)}`)
    }
    const result = message.result
    if (result?.canceled) {
      const reason = typeof result.cancel_reason === 'string' ? result.cancel_reason : 'no reason given'
      if (REFUSED_TOKEN.test(reason)) forget(used)
      throw new EndpointDown(`${base}: watch cancelled: ${reason.slice(0, 200)}`)
    }
    if (result?.created) {
      clearTimeout(deadline)
      created()
    }
    for (const event of result?.events ?? []) {
      let key: string
      try {
        key = decoder.decode(bytesOf(event.kv?.key ?? '', 'a key etcd answered'))
      } catch {
        continue
      }
      if (listeners.has(key)) notify(key)
    }
  }

  /**
   * The one watch stream of this store, for as long as `signal` allows. An endpoint that cannot
   * open it is left for the next one at once, as a request would be; once every endpoint has
   * failed in turn, and after a stream that was open drops (a member down, a proxy's idle
   * timeout, a refused token), the next attempt waits: from WATCH_RETRY_MIN_MS, doubling per
   * round of failures up to WATCH_RETRY_MAX_MS, with jitter so that the processes that lost the
   * same member do not come back in step. Every listener is called once each time a stream is
   * confirmed, since a change made while there was none would otherwise be missed.
   */
  async function watchLoop(signal: AbortSignal): Promise<void> {
    let index = current
    let failedInRound = 0
    let rounds = 0
    while (!signal.aborted) {
      let confirmed = false
      try {
        await watchOnce(bases[index]!, signal, () => {
          confirmed = true
          notify()
        })
      } catch {
        // Any failure is a drop: the next endpoint, after the backoff if one is due.
      }
      if (signal.aborted) return
      index = (index + 1) % bases.length
      if (confirmed) {
        failedInRound = 0
        rounds = 0
        await sleep(backoff(0), signal)
      } else if (++failedInRound >= bases.length) {
        failedInRound = 0
        await sleep(backoff(++rounds), signal)
      }
    }
  }

  const store: EtcdStore = {
    atomic: true,
    embedsKeks: false,

    async getHead(chain): Promise<Versioned<ChainHead> | undefined> {
      const [kv] = await range(headKey(chain))
      if (!kv) return undefined
      if (!isRevision(kv.mod_revision)) throw new StoreError('etcd store: the chain head has no mod_revision')
      let value: unknown
      try {
        value = JSON.parse(valueOf(kv))
      } catch {
        throw new StoreError('etcd store: the chain head is not JSON')
      }
      return Object.freeze({ value: checkHead(value), version: kv.mod_revision })
    },

    async casHead(chain, expected, next) {
      const key = headKey(chain)
      // Core's copy of the head: every field it knows, so a new head field needs no change here.
      const head = parseChainHead(next)
      if (!head) throw new TypeError('next: expected a chain head (primary, primaryCreatedAt, leased, and its optional fields well-formed)')
      const value = JSON.stringify(head)
      if (expected === undefined) return txn({ target: 'CREATE', create_revision: '0' }, key, value)
      if (typeof expected !== 'string') throw new TypeError('expected: a version string or undefined')
      if (!isRevision(expected)) return false // not a version this store handed out: it cannot match
      return txn({ target: 'MOD', mod_revision: expected }, key, value)
    },

    async getKek(chain, id) {
      const wraps = await wrapsOf(chain, id)
      // 'default' when there is one, else the first root by name, so that every reader picks the same.
      return wraps.find((r) => r.root === undefined) ?? wraps.sort((a, b) => (rootOf(a) < rootOf(b) ? -1 : 1))[0]
    },

    async putKekIfAbsent(chain, record) {
      const id = checkId(record?.id)
      const root = checkRoot(rootOf(record))
      if (!isTime(record.createdAt) || typeof record.rootKind !== 'string' || !(record.wrapped instanceof Uint8Array) || record.wrapped.length === 0) {
        throw new TypeError('record: expected a KekRecord')
      }
      // The 'default' record is written as before, without a root field.
      const value = JSON.stringify({ id, ...(root === DEFAULT_ROOT ? {} : { root }), createdAt: record.createdAt, rootKind: record.rootKind, wrapped: toBase64(record.wrapped) })
      return txn({ target: 'CREATE', create_revision: '0' }, kekKey(chain, id, root), value)
    },

    async listKeks(chain) {
      const p = kekPrefix(chain)
      return recordsOf(chain, await range(p, prefixEnd(p)))
    },

    getKekWraps: wrapsOf,

    watchHead(chain, onChange) {
      const key = headKey(chain)
      if (typeof onChange !== 'function') throw new TypeError('onChange: expected a function')
      let set = listeners.get(key)
      if (!set) listeners.set(key, (set = new Set()))
      const own = () => onChange() // a distinct entry per call, so one watcher's stop leaves the others
      set.add(own)
      if (++subscribers === 1) {
        watching = new AbortController()
        void watchLoop(watching.signal).catch(() => {})
      }
      let stopped = false
      return () => {
        if (stopped) return
        stopped = true
        set.delete(own)
        if (set.size === 0 && listeners.get(key) === set) listeners.delete(key)
        if (--subscribers === 0) {
          watching?.abort()
          watching = undefined
        }
      }
    },

    async deleteKekWrap(chain, id, root) {
      // One key, no range_end: never another root's record.
      await request('/v3/kv/deleterange', { key: b64(kekKey(chain, checkId(id), checkRoot(root))) })
    },
  }
  return Object.freeze(store)
}
