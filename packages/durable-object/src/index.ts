/**
 * A KeyStore on a Cloudflare Durable Object: one object per chain holds the chain's head and its
 * wrapped KEKs, and every Worker instance, in every location, reaches that one object.
 *
 * - {@link KeyChainObject} is the Durable Object class: export it from the Worker and bind it
 *   (`[[durable_objects.bindings]] name = "KEYS", class_name = "KeyChainObject"`, with a migration
 *   `new_sqlite_classes = ["KeyChainObject"]`). It answers a small JSON protocol over `fetch`.
 * - {@link durableObjectStore} is the store that talks to it: each KeyStore call is one
 *   `stub.fetch` to the chain's object (`namespace.idFromName(prefix + chain)`).
 * - The object runs the requests of a chain one after another (a queue inside the object), so
 *   casHead is read, compare, write with nothing in between: a real compare-and-swap across every
 *   Worker instance, `atomic: true`. KEK records are put-if-absent per (id, root), never overwritten.
 *
 * No `cloudflare:workers` import and no `node:` import: the package loads anywhere and its types
 * need no `@cloudflare/workers-types` (the few shapes it uses are declared here).
 *
 * @example
 * ```ts
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { durableObjectStore } from '@kms-proxy/durable-object'
 * export { KeyChainObject } from '@kms-proxy/durable-object'   // bound as KEYS in wrangler.toml
 * export default { async fetch(request: Request, env: Env) {
 *   const chain = await KeyChain.open({ rootKey: aesRootKey(rootKeyBytes), store: durableObjectStore(env.KEYS) })
 *   return new Response(await chain.encryptText(await request.text())) } }
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/durable-object
 */
import { checkRootName as checkRoot, checkKekId as checkId, checkChainName as checkChain, DEFAULT_ROOT, StoreError, fromBase64, isRootName, parseChainHead, rootOf, toBase64, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'

// ------------------------------------------------------------------------------------ shapes

/**
 * The part of a Durable Object's `state.storage` that {@link KeyChainObject} uses.
 *
 * @example
 * ```ts
 * const storage: DurableObjectStorageLike = ctx.storage // workerd's DurableObjectStorage fits
 * ```
 */
export interface DurableObjectStorageLike {
  /** One value, `undefined` when absent. */
  get(key: string): Promise<unknown>
  /** Writes one value (structured clone). */
  put(key: string, value: unknown): Promise<void>
  /** Deletes one key; true when it was there. */
  delete(key: string): Promise<boolean>
  /** The entries under `prefix` in key order, at most `limit`, after `startAfter`. */
  list(options: { prefix: string; limit?: number; startAfter?: string }): Promise<Map<string, unknown>>
}

/**
 * The part of a Durable Object's `state` (`DurableObjectState`) that {@link KeyChainObject} uses.
 *
 * @example
 * ```ts
 * const object = new KeyChainObject(ctx satisfies DurableObjectStateLike, env)
 * ```
 */
export interface DurableObjectStateLike {
  /** The object's transactional storage. */
  readonly storage: DurableObjectStorageLike
}

/**
 * The part of a Durable Object stub that the store uses.
 *
 * @example
 * ```ts
 * const stub: DurableObjectStubLike = env.KEYS.get(env.KEYS.idFromName('kms-proxy:orders'))
 * ```
 */
export interface DurableObjectStubLike {
  /** Sends one request to the object. */
  fetch(url: string, init: { method: string; body: string; headers?: Record<string, string> }): Promise<Response>
}

/**
 * The part of a Durable Object namespace binding (`DurableObjectNamespace`, from `env`) that the
 * store uses; Miniflare's `getDurableObjectNamespace()` fits too.
 *
 * @example
 * ```ts
 * const store = durableObjectStore(env.KEYS satisfies DurableObjectNamespaceLike)
 * ```
 */
export interface DurableObjectNamespaceLike {
  /** The id of the object named `name` (the same name gives the same object, everywhere). */
  idFromName(name: string): unknown
  /** A stub for the object with that id. */
  get(id: never): DurableObjectStubLike
}

/**
 * Options of {@link durableObjectStore}.
 *
 * @example
 * ```ts
 * const options: DurableObjectStoreOptions = { prefix: 'billing:' }
 * ```
 */
export interface DurableObjectStoreOptions {
  /**
   * Prepended to the chain name to name its object, so that two apps can share one binding.
   *
   * @defaultValue `'kms-proxy:'`
   */
  prefix?: string
}

// ------------------------------------------------------------------------------------ protocol

/** A KEK record on the wire: `wrapped` in base64, `root` only when it is not `'default'`. */
interface WireRecord {
  id: number
  createdAt: number
  rootKind: string
  wrapped: string
  root?: string
}

/** One request to the object. `list` pages: `after` is the last key of the previous page. */
type Op =
  | { op: 'getHead' }
  | { op: 'casHead'; expected: string | null; head: ChainHead }
  | { op: 'putKek'; record: WireRecord }
  | { op: 'list'; id?: number; after?: string }
  | { op: 'deleteKek'; id: number; root: string }

/** What the object keeps under `head`: the head and the counter that versions it. */
interface StoredHead {
  head: ChainHead
  version: number
}

/** What the object keeps under `kek/<id>/<root>`; the root is in the key. */
interface StoredKek {
  createdAt: number
  rootKind: string
  wrapped: Uint8Array
}

/** Records per `list` answer: well under the object's response size, a few hundred bytes each. */
const PAGE = 256

const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)
/** Ids have a fixed width, so the records of id 12 are never under the prefix of id 123. */
const kekPrefix = (id: number) => `kek/${String(id).padStart(10, '0')}/`

/** A request the object refuses: a client of another version, or not this store. */
class BadRequest extends Error {}

/**
 * The Durable Object class that keeps one chain: export it from the Worker and bind it. It answers
 * POST requests with a JSON body (the protocol of {@link durableObjectStore}; nothing else should
 * call it) and runs them one at a time, so each compare-and-swap reads and writes with no other
 * request in between, whatever the requests await.
 *
 * Bind it in wrangler.toml:
 * ```
 * [[durable_objects.bindings]]
 * name = "KEYS"
 * class_name = "KeyChainObject"
 *
 * [[migrations]]
 * tag = "v1"
 * new_sqlite_classes = ["KeyChainObject"]
 * ```
 *
 * @example
 * ```ts
 * // worker.ts: the class must be exported by the Worker's main module
 * export { KeyChainObject } from '@kms-proxy/durable-object'
 * ```
 */
export class KeyChainObject {
  readonly #storage: DurableObjectStorageLike
  #queue: Promise<unknown> = Promise.resolve()

  /**
   * Called by the runtime.
   *
   * @example
   * ```ts
   * new KeyChainObject(ctx, env) // workerd does this; tests may pass `{ storage }`
   * ```
   * @param state - the object's state (`ctx`); only `state.storage` is used.
   * @param _env - the Worker's bindings (unused).
   */
  constructor(state: DurableObjectStateLike, _env?: unknown) {
    this.#storage = state.storage
  }

  /**
   * Answers one request of the store's protocol: 200 `{"ok": result}`, 400 for a request it
   * cannot read, 500 `{"error": message}` when its storage failed.
   *
   * @example
   * ```ts
   * await env.KEYS.get(id).fetch('https://key-chain-object/', { method: 'POST', body: '{"op":"getHead"}' }) // what the store sends
   * ```
   */
  async fetch(request: Request): Promise<Response> {
    let op: Op
    try {
      op = (await request.json()) as Op
    } catch {
      return Response.json({ error: 'expected a JSON body' }, { status: 400 })
    }
    const run = this.#queue.then(() => this.#handle(op))
    this.#queue = run.catch(() => {})
    try {
      return Response.json({ ok: await run })
    } catch (error) {
      if (error instanceof BadRequest) return Response.json({ error: error.message }, { status: 400 })
      // Storage errors are the runtime's; their message names no key or value of ours.
      return Response.json({ error: `storage failed: ${error instanceof Error ? error.message : typeof error}` }, { status: 500 })
    }
  }

  async #handle(op: Op): Promise<unknown> {
    const s = this.#storage
    switch (op?.op) {
      case 'getHead': {
        const stored = (await s.get('head')) as StoredHead | undefined
        return stored === undefined ? null : { head: stored.head, version: String(stored.version) }
      }
      case 'casHead': {
        const head = parseChainHead(op.head)
        if (!head || (op.expected !== null && typeof op.expected !== 'string')) throw new BadRequest('casHead: expected a head and a version')
        const stored = (await s.get('head')) as StoredHead | undefined
        const current = stored === undefined ? null : String(stored.version)
        if (current !== op.expected) return false
        await s.put('head', { head, version: (stored === undefined ? 0 : Number(stored.version)) + 1 } satisfies StoredHead)
        return true
      }
      case 'putKek': {
        const r = op.record
        const root = r?.root ?? DEFAULT_ROOT
        if (!r || !isU32(r.id) || !isTime(r.createdAt) || typeof r.rootKind !== 'string' || typeof r.wrapped !== 'string' || !isRootName(root)) {
          throw new BadRequest('putKek: expected a KEK record')
        }
        const key = `${kekPrefix(r.id)}${root}`
        if ((await s.get(key)) !== undefined) return false
        await s.put(key, { createdAt: r.createdAt, rootKind: r.rootKind, wrapped: fromBase64(r.wrapped) } satisfies StoredKek)
        return true
      }
      case 'list': {
        if ((op.id !== undefined && !isU32(op.id)) || (op.after !== undefined && typeof op.after !== 'string')) throw new BadRequest('list: expected an id or a key')
        const prefix = op.id === undefined ? 'kek/' : kekPrefix(op.id)
        const page = await s.list({ prefix, limit: PAGE, ...(op.after === undefined ? {} : { startAfter: op.after }) })
        const records: unknown[] = []
        let last: string | undefined
        for (const [key, value] of page) {
          last = key
          records.push(toWire(key, value as Partial<StoredKek> | null))
        }
        return { records, ...(page.size === PAGE ? { next: last } : {}) }
      }
      case 'deleteKek': {
        if (!isU32(op.id) || !isRootName(op.root)) throw new BadRequest('deleteKek: expected an id and a root')
        await s.delete(`${kekPrefix(op.id)}${op.root}`)
        return null
      }
      default:
        throw new BadRequest('unknown operation')
    }
  }
}

/** A stored record as sent: fields as they are, for the store to check (a corrupt one is its ERR_STORE). */
function toWire(key: string, v: Partial<StoredKek> | null): Partial<Record<keyof WireRecord, unknown>> {
  const [, id, root] = key.split('/')
  return {
    id: Number(id),
    createdAt: v?.createdAt,
    rootKind: v?.rootKind,
    wrapped: v?.wrapped instanceof Uint8Array ? toBase64(v.wrapped) : null,
    ...(root === DEFAULT_ROOT ? {} : { root }),
  }
}

// ------------------------------------------------------------------------------------ store

/** A head checked and copied by core's parseChainHead (read, or about to be written); a corrupt one is ERR_STORE. */
function checkHead(v: unknown, where: string): ChainHead {
  const head = parseChainHead(v)
  if (!head) throw new StoreError(`${where}: the chain head is malformed`)
  return head
}

/** A record from the object, checked field by field; a `'default'` record has no `root`. */
function fromWire(w: Partial<Record<keyof WireRecord, unknown>> | null, where: string): KekRecord {
  const id = w?.id
  const root = w?.root ?? DEFAULT_ROOT
  let wrapped: Uint8Array | undefined
  try {
    wrapped = typeof w?.wrapped === 'string' ? fromBase64(w.wrapped) : undefined
  } catch {
    wrapped = undefined
  }
  if (!isU32(id) || !isTime(w?.createdAt) || typeof w?.rootKind !== 'string' || !wrapped || wrapped.length === 0 || !isRootName(root) || w?.root === DEFAULT_ROOT) {
    throw new StoreError(`${where}: the KEK record ${isU32(id) ? id : '?'} is malformed`)
  }
  return Object.freeze({ id, createdAt: w.createdAt as number, rootKind: w.rootKind, wrapped, ...(root === DEFAULT_ROOT ? {} : { root }) })
}

/**
 * A KeyStore on Durable Objects of the class {@link KeyChainObject}: one object per chain, named
 * `prefix + encodeURIComponent(chain)`, reached by one `stub.fetch` per call. `atomic: true`: the
 * object runs a chain's requests one at a time, so `casHead` succeeds for exactly one of the
 * writers that read a version, from any Worker instance in any location, and the usage limit
 * (`maxWrapsPerKek`) holds across all of them. Reads are strongly consistent (every call reaches
 * the one object). No `watchHead`: a chain reads the head every `maxStalenessMs`.
 *
 * Failures: a `stub.fetch` that rejects (the object is being reset or moved, overloaded, the
 * network) or a 5xx answer is a retryable `StoreError`; a 4xx answer, or a record or head that is
 * malformed, a non-retryable one. A swap that was applied but whose answer was lost reads as
 * lost: the chain counts that lease as used, so the limit still holds.
 *
 * @param namespace - the Durable Object namespace binding of {@link KeyChainObject} (`env.KEYS`).
 * @throws TypeError - `namespace` is not a Durable Object namespace, or `prefix` is not a string.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`.
 * @example
 * ```ts
 * const store = durableObjectStore(env.KEYS, { prefix: 'billing:' })
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootKeyBytes), store, name: 'invoices' })
 * ```
 */
export function durableObjectStore(namespace: DurableObjectNamespaceLike, options: DurableObjectStoreOptions = {}): KeyStore {
  if (!namespace || typeof namespace.idFromName !== 'function' || typeof namespace.get !== 'function') {
    throw new TypeError('durableObjectStore: expected a Durable Object namespace binding')
  }
  const prefix = options.prefix ?? 'kms-proxy:'
  if (typeof prefix !== 'string') throw new TypeError('durableObjectStore: prefix must be a string')
  // Ids are kept; stubs are not: workerd refuses a stub made while serving one request from
  // the handler of another ("Cannot perform I/O on behalf of a different request"), and a Worker
  // keeps its chain, so this store, across requests. A stub is cheap to make.
  const ids = new Map<string, unknown>()
  // encodeURIComponent leaves no ':' in the chain part, so "a" + "b:c" never names "a:b" + "c".
  const stubOf = (chain: string) => {
    let id = ids.get(chain)
    if (id === undefined) ids.set(chain, (id = namespace.idFromName(`${prefix}${encodeURIComponent(chain)}`)))
    return namespace.get(id as never)
  }

  async function call<T>(chain: string, op: Op): Promise<T> {
    let response: Response
    try {
      response = await stubOf(chain).fetch('https://key-chain-object/', { method: 'POST', body: JSON.stringify(op), headers: { 'content-type': 'application/json' } })
    } catch (error) {
      // The runtime's message (reset, overloaded, network) names no secret of ours.
      throw new StoreError(`durableObjectStore: ${op.op}: the object did not answer (${error instanceof Error ? error.message : typeof error})`, { retryable: true })
    }
    let body: { ok?: T; error?: unknown } | undefined
    try {
      body = (await response.json()) as { ok?: T; error?: unknown }
    } catch {
      body = undefined
    }
    if (!response.ok || !body || !('ok' in body)) {
      const why = typeof body?.error === 'string' ? body.error.slice(0, 200) : 'no answer it could read'
      throw new StoreError(`durableObjectStore: ${op.op}: the object answered ${response.status}: ${why}`, { retryable: response.status >= 500 })
    }
    return body.ok as T
  }

  /** Every record under one id (or all), through every page. */
  async function list(chain: string, id?: number): Promise<KekRecord[]> {
    const out: KekRecord[] = []
    let after: string | undefined
    for (;;) {
      const page = await call<{ records?: unknown; next?: unknown } | null>(chain, { op: 'list', ...(id === undefined ? {} : { id }), ...(after === undefined ? {} : { after }) })
      if (!page || !Array.isArray(page.records)) throw new StoreError('durableObjectStore: list: the object answered something unusable')
      for (const r of page.records) out.push(fromWire(r, 'durableObjectStore'))
      if (typeof page.next !== 'string') return out
      after = page.next
    }
  }

  return {
    atomic: true,
    embedsKeks: false,
    async getHead(chain) {
      checkChain(chain)
      const got = await call<{ head?: unknown; version?: unknown } | null>(chain, { op: 'getHead' })
      if (got === null) return undefined
      if (typeof got?.version !== 'string') throw new StoreError('durableObjectStore: the chain head is malformed')
      return Object.freeze({ value: checkHead(got.head, 'durableObjectStore'), version: got.version }) as Versioned<ChainHead>
    },
    async casHead(chain, expected, next) {
      checkChain(chain)
      if (expected !== undefined && typeof expected !== 'string') throw new TypeError('expected: a version string or undefined')
      const head = checkHead(next, 'casHead')
      return (await call<boolean>(chain, { op: 'casHead', expected: expected ?? null, head })) === true
    },
    async getKek(chain, id) {
      checkChain(chain)
      checkId(id)
      const wraps = await list(chain, id)
      return wraps.find((r) => r.root === undefined) ?? wraps[0]
    },
    async putKekIfAbsent(chain, record) {
      checkChain(chain)
      checkId(record?.id)
      const root = checkRoot(rootOf(record))
      if (!isTime(record.createdAt) || typeof record.rootKind !== 'string' || !(record.wrapped instanceof Uint8Array) || record.wrapped.length === 0) {
        throw new TypeError('record: expected createdAt, rootKind and non-empty wrapped bytes')
      }
      const wire: WireRecord = { id: record.id, createdAt: record.createdAt, rootKind: record.rootKind, wrapped: toBase64(record.wrapped), ...(root === DEFAULT_ROOT ? {} : { root }) }
      return (await call<boolean>(chain, { op: 'putKek', record: wire })) === true
    },
    async listKeks(chain) {
      checkChain(chain)
      return list(chain)
    },
    async getKekWraps(chain, id) {
      checkChain(chain)
      checkId(id)
      return list(chain, id)
    },
    async deleteKekWrap(chain, id, root) {
      checkChain(chain)
      checkId(id)
      await call(chain, { op: 'deleteKek', id, root: checkRoot(root) })
    },
  }
}
