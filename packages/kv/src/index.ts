/**
 * KeyStores over the edge key-value stores: Cloudflare Workers KV and Deno KV.
 *
 * - `denoKvStore(kv)`: Deno KV has real compare-and-swap (`kv.atomic().check(...)`), so the head
 *   changes by CAS on its versionstamp and KEK records are put-if-absent: `atomic: true`, every
 *   invariant holds across processes.
 *   It has `watchHead`: a chain on it sees a rotation made in another process within about
 *   `watchPollMs` (1 s), one made in this process at once.
 * - `workersKvStore(namespace)`: Workers KV has no compare-and-swap and is eventually consistent
 *   (up to about 60 s between locations): `atomic: false`. Nothing is lost (every KEK is stored
 *   under its own id before use), but usage counting is best effort; see the README. It has no
 *   push, so no `watchHead`: a chain on it reads the head every `maxStalenessMs`.
 *
 * No `node:` imports and no reference to the `Deno` global: both stores take the binding or the
 * `Deno.Kv` handle as an argument and run on workerd, Deno, Node and browsers alike.
 *
 * @example
 * ```ts
 * import { KeyChain, aesRootKey } from '@kms-proxy/core'
 * import { denoKvStore, workersKvStore } from '@kms-proxy/kv'
 * const chain = await KeyChain.open({ rootKey: aesRootKey(rootKeyBytes), store: denoKvStore(await Deno.openKv()) })
 * // On Cloudflare Workers, with a KV binding KEYS:  store: workersKvStore(env.KEYS)
 * const encrypted = await chain.encryptText('hello') // chain.decryptText(encrypted) -> 'hello'
 * ```
 *
 * @packageDocumentation
 * @module @kms-proxy/kv
 */
import { checkRootName as checkRoot, checkKekId as checkId, checkChainName as checkChain, DEFAULT_ROOT, StoreError, fromBase64, isRootName, parseChainHead, rootOf, toBase64, toHex, type ChainHead, type KekRecord, type KeyStore, type Versioned } from '@kms-proxy/core'
import { denoHeadWatch, type WatchKey } from './internal/deno-watch.js'

// ------------------------------------------------------------------------------------ shared

function randomToken(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(16)))
}

/** A record's wrapped KEK: anything but canonical padded base64 is a malformed record, ERR_STORE. */
function wrappedOf(text: string, id: number, where: string): Uint8Array {
  try {
    return fromBase64(text)
  } catch {
    throw new StoreError(`${where}: the KEK record ${id} is malformed`)
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  let d = 0
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!
  return d === 0
}

const isU32 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff
const isTime = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v)

/** A stored value as JSON, or undefined: malformed data is the store's typed error, not a SyntaxError. */
function parseJson(raw: string): unknown {
  try {
    return JSON.parse(raw)
  } catch {
    return undefined
  }
}

/**
 * A head checked and copied by core's `parseChainHead` (read, or about to be written): every
 * field the head has is kept, optional ones absent stay absent, so a new head field needs no
 * change here. A corrupt one is ERR_STORE. Root names (core's `isRootName`) never contain ':'.
 */
function checkHead(v: unknown, where: string): ChainHead {
  const head = parseChainHead(v)
  if (!head) throw new StoreError(`${where}: the chain head is malformed`)
  return head
}

/**
 * A record checked and copied. `root` is the root its key names: a `'default'` record has no
 * `root` field (as every record before chains had several roots), any other repeats its key's.
 */
function checkRecord(id: number, createdAt: unknown, rootKind: unknown, wrapped: unknown, storedRoot: unknown, root: string, where: string): KekRecord {
  const named = root !== DEFAULT_ROOT
  if (!isTime(createdAt) || typeof rootKind !== 'string' || !(wrapped instanceof Uint8Array) || wrapped.length === 0 || storedRoot !== (named ? root : undefined)) {
    throw new StoreError(`${where}: the KEK record ${id} is malformed`)
  }
  return Object.freeze({ id, createdAt, rootKind, wrapped: wrapped.slice(), ...(named ? { root } : {}) })
}

/** The root of a record about to be written, or of a wrap to delete. @throws TypeError */

/** `getKek` from every record of the id: the `'default'` one if there is one, else any. */
const preferDefault = (wraps: KekRecord[]) => wraps.find((r) => r.root === undefined) ?? wraps[0]

// ------------------------------------------------------------------------------------ Workers KV

/**
 * The part of a Workers KV binding (`KVNamespace`) that the store uses; a binding from
 * `env`, or Miniflare's `getKVNamespace()`, fits.
 */
export interface WorkersKvNamespace {
  /** Reads a value as text; `null` when the key is absent. */
  get(key: string, type: 'text'): Promise<string | null>
  /** Writes a value (last write wins: KV has no condition). */
  put(key: string, value: string): Promise<unknown>
  /** Deletes a key (a no-op when it is absent). */
  delete(key: string): Promise<unknown>
  /** One page of the keys under a prefix. */
  list(options: { prefix: string; cursor?: string }): Promise<{
    /** The keys of this page. */
    keys: Array<{
      /** The key. */
      name: string
    }>
    /** True on the last page. */
    list_complete: boolean
    /** Where the next page starts. */
    cursor?: string
  }>
}

/** Options of {@link workersKvStore}. */
export interface WorkersKvStoreOptions {
  /**
   * Prepended to every key, to share a namespace.
   *
   * @defaultValue `'kms-proxy:'`
   */
  prefix?: string
}

/** What a head key holds: the head and a random version token (there is no native version). */
interface KvHeadValue {
  v: 1
  head: ChainHead
  version: string
}

/**
 * What a KEK key holds; `writer` is a random token that lets a writer recognise its own record.
 * `root` only under `…:kek-wrap:<id>:<root>`: the `'default'` root's record has none.
 */
interface KvKekValue {
  v: 1
  id: number
  createdAt: number
  rootKind: string
  wrapped: string // base64
  writer: string
  root?: string
}

/**
 * A KeyStore over a Cloudflare Workers KV namespace. `atomic: false`: Workers KV has no
 * compare-and-swap and propagates writes between locations in up to about 60 s.
 *
 * What holds: nothing is lost. Every KEK is written under its own key (its random u32 id) and
 * read back before the chain uses it, so every encrypted data names a KEK that is in KV, and
 * every encrypted data stays decryptable (from another location, once KV has propagated the
 * record: up to about 60 s).
 *
 * What does not hold: the usage limit across instances. `casHead` is read, compare, write, read
 * back. Within one location that catches most races, but two instances that read the same head
 * version may both succeed (a lease handed out twice), and across locations each instance sees
 * only its own writes for up to KV's propagation delay, so each may count a shared KEK's uses on
 * its own. There is no hard bound; expect up to about one `maxWrapsPerKek` per instance that
 * shares the KEK (measured in a model of KV: 1.6× the limit with 2 instances, 2.3× with 4, 4.4×
 * with 8; exactly 2× minus one lease for two locations that both see the KEK). Leases are per
 * instance. For a strict
 * count use a store with compare-and-swap (a Durable Object, Deno KV, etcd); with this store,
 * divide the `maxWrapsPerKek` you want by the number of instances that may write at once.
 *
 * The residual race of put-if-absent (KV's put cannot be conditional): two writers that pick the
 * same random u32 id within one propagation window (probability about n² / 2^33 for n KEKs made
 * in that window) both see the id free and both write. The read-back makes the first writer give
 * up when the second put lands before its read-back; if it lands after (or in another location),
 * both use the id, the last write wins, and data under the other KEK could not be decrypted.
 *
 * Workers KV has no push, so the store has no `watchHead`: a chain reads the head at least every
 * `maxStalenessMs` before it encrypts, and sees a rotation made elsewhere within that bound plus
 * KV's propagation (up to about 60 s between locations; none within one).
 *
 * Several roots: a KEK's record under the `'default'` root stays at `…:kek:<id>`, where every
 * record was before (no migration); under any other root it is `…:kek-wrap:<id>:<root>`, with the
 * same read-back. `getKekWraps` lists `…:kek-wrap:<id>:`, so it sees a wrap written in another
 * location, and stops seeing one that `deleteKekWrap` deleted there, only once KV has propagated
 * the change (up to about 60 s).
 *
 * @throws TypeError - `namespace` is not a KV binding, or `prefix` is not a string.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`: KV failed, or a
 *   record is malformed.
 * @example
 * ```ts
 * export default {
 *   async fetch(request: Request, env: { KEYS: KVNamespace }) {
 *     const chain = await KeyChain.open({ rootKey: aesRootKey(rootKeyBytes), store: workersKvStore(env.KEYS) })
 *     return new Response(await chain.encryptText(await request.text()))
 *   },
 * }
 * ```
 */
export function workersKvStore(namespace: WorkersKvNamespace, options: WorkersKvStoreOptions = {}): KeyStore {
  if (!namespace || typeof namespace.get !== 'function' || typeof namespace.put !== 'function' || typeof namespace.list !== 'function' || typeof namespace.delete !== 'function') {
    throw new TypeError('workersKvStore: expected a Workers KV namespace binding')
  }
  const prefix = options.prefix ?? 'kms-proxy:'
  if (typeof prefix !== 'string') throw new TypeError('workersKvStore: prefix must be a string')
  // encodeURIComponent escapes ':' so a chain name can never reach into another chain's keys.
  const chainKey = (chain: string) => `${prefix}${encodeURIComponent(chain)}:`
  const headKey = (chain: string) => `${chainKey(chain)}head`
  const kekPrefix = (chain: string) => `${chainKey(chain)}kek:`
  // The 'default' root's record stays where every record was before chains had several roots.
  // Root names have no ':', and `kek-wrap:` is no prefix of `kek:`: each list sees only its own.
  const wrapPrefix = (chain: string, id?: number) => `${chainKey(chain)}kek-wrap:${id === undefined ? '' : `${id}:`}`
  const kekKey = (chain: string, id: number, root: string = DEFAULT_ROOT) =>
    root === DEFAULT_ROOT ? `${kekPrefix(chain)}${id}` : `${wrapPrefix(chain, id)}${root}`

  async function readHead(chain: string): Promise<KvHeadValue | undefined> {
    const raw = await namespace.get(headKey(chain), 'text')
    if (raw === null) return undefined
    const parsed = parseJson(raw) as KvHeadValue | undefined
    if (parsed?.v !== 1 || typeof parsed.version !== 'string') throw new StoreError('workersKvStore: the chain head is malformed')
    return { v: 1, head: checkHead(parsed.head, 'workersKvStore'), version: parsed.version }
  }

  async function readKek(chain: string, id: number, root: string = DEFAULT_ROOT): Promise<KvKekValue | undefined> {
    const raw = await namespace.get(kekKey(chain, id, root), 'text')
    if (raw === null) return undefined
    const parsed = parseJson(raw) as KvKekValue | undefined
    if (parsed?.v !== 1 || parsed.id !== id || typeof parsed.wrapped !== 'string' || parsed.root !== (root === DEFAULT_ROOT ? undefined : root)) {
      throw new StoreError(`workersKvStore: the KEK record ${id} is malformed`)
    }
    return parsed
  }

  const toRecord = (v: KvKekValue) =>
    checkRecord(v.id, v.createdAt, v.rootKind, wrappedOf(v.wrapped, v.id, 'workersKvStore'), v.root, v.root ?? DEFAULT_ROOT, 'workersKvStore')

  /** Every key under `prefix`, without it, through every page. */
  async function listNames(prefix: string): Promise<string[]> {
    const names: string[] = []
    let cursor: string | undefined
    for (;;) {
      const page = await namespace.list(cursor === undefined ? { prefix } : { prefix, cursor })
      for (const k of page.keys) names.push(k.name.slice(prefix.length))
      if (page.list_complete || !page.cursor) return names
      cursor = page.cursor
    }
  }

  /** The records of (id, root) pairs. A key listed but not yet readable (eventual consistency) is skipped, not an error. */
  async function readAll(chain: string, pairs: Array<readonly [number, string]>): Promise<KekRecord[]> {
    const values = await Promise.all(pairs.map(([id, root]) => readKek(chain, id, root)))
    return values.filter((v): v is KvKekValue => v !== undefined).map(toRecord)
  }

  /** `<id>:<root>` of a `kek-wrap:` key; anything else (not written by this store) is skipped. */
  const wrapPair = (rest: string): readonly [number, string] | undefined => {
    const colon = rest.indexOf(':')
    const id = Number(rest.slice(0, colon))
    const root = rest.slice(colon + 1)
    return colon > 0 && isU32(id) && String(id) === rest.slice(0, colon) && isRootName(root) ? [id, root] : undefined
  }

  /** Every record of KEK `id`: the `'default'` one and those listed under `…:kek-wrap:<id>:`. */
  async function wrapsOf(chain: string, id: number): Promise<KekRecord[]> {
    const roots = (await listNames(wrapPrefix(chain, id))).filter(isRootName)
    return readAll(chain, [[id, DEFAULT_ROOT], ...roots.map((root) => [id, root] as const)])
  }

  return {
    atomic: false,
    embedsKeks: false,
    async getHead(chain) {
      checkChain(chain)
      const h = await readHead(chain)
      return h && (Object.freeze({ value: h.head, version: h.version }) as Versioned<ChainHead>)
    },
    async casHead(chain, expected, next) {
      checkChain(chain)
      const value: KvHeadValue = { v: 1, head: checkHead(next, 'casHead'), version: randomToken() }
      const current = await readHead(chain)
      if (current?.version !== expected) return false
      await namespace.put(headKey(chain), JSON.stringify(value))
      // Best effort: if another writer's head landed after ours (in this location), we lost.
      const back = await readHead(chain)
      return back?.version === value.version
    },
    async getKek(chain, id) {
      checkChain(chain)
      checkId(id)
      const v = await readKek(chain, id)
      return v ? toRecord(v) : preferDefault(await wrapsOf(chain, id))
    },
    async putKekIfAbsent(chain, record) {
      checkChain(chain)
      checkId(record.id)
      const root = checkRoot(rootOf(record))
      const named = root === DEFAULT_ROOT ? undefined : root
      const checked = checkRecord(record.id, record.createdAt, record.rootKind, record.wrapped, named, root, 'putKekIfAbsent')
      if ((await readKek(chain, record.id, root)) !== undefined) return false
      const value: KvKekValue = {
        v: 1,
        id: checked.id,
        createdAt: checked.createdAt,
        rootKind: checked.rootKind,
        wrapped: toBase64(checked.wrapped),
        writer: randomToken(),
        ...(named ? { root: named } : {}),
      }
      await namespace.put(kekKey(chain, record.id, root), JSON.stringify(value))
      // KV's put cannot be conditional: read back and use the KEK only if the record is ours.
      const back = await readKek(chain, record.id, root)
      return back !== undefined && back.writer === value.writer && equalBytes(wrappedOf(back.wrapped, back.id, 'putKekIfAbsent'), checked.wrapped)
    },
    async listKeks(chain) {
      checkChain(chain)
      const [plain, wraps] = await Promise.all([listNames(kekPrefix(chain)), listNames(wrapPrefix(chain))])
      const pairs = [
        ...plain.map(Number).filter(isU32).map((id) => [id, DEFAULT_ROOT] as const),
        ...wraps.map(wrapPair).filter((p) => p !== undefined),
      ]
      return readAll(chain, pairs)
    },
    async getKekWraps(chain, id) {
      checkChain(chain)
      checkId(id)
      return wrapsOf(chain, id)
    },
    async deleteKekWrap(chain, id, root) {
      checkChain(chain)
      checkId(id)
      await namespace.delete(kekKey(chain, id, checkRoot(root)))
    },
  }
}

// ------------------------------------------------------------------------------------ Deno KV

type DenoKvKey = readonly (string | number | bigint | boolean | Uint8Array)[]

interface DenoKvEntry {
  readonly key: DenoKvKey
  readonly value: unknown
  readonly versionstamp: string | null
}

interface DenoKvAtomic {
  check(...checks: Array<{ key: DenoKvKey; versionstamp: string | null }>): DenoKvAtomic
  set(key: DenoKvKey, value: unknown): DenoKvAtomic
  delete(key: DenoKvKey): DenoKvAtomic
  commit(): Promise<{ ok: boolean }>
}

/** The part of a `Deno.Kv` (from `Deno.openKv()`) that the store uses. */
export interface DenoKv {
  /** Reads one entry. */
  get(key: DenoKvKey): Promise<DenoKvEntry>
  /** The entries under a key prefix. */
  list(selector: { prefix: DenoKvKey }): AsyncIterable<DenoKvEntry>
  /** Starts an atomic operation (checks, then sets, then commit). */
  atomic(): DenoKvAtomic
  /**
   * Streams the entries of up to 10 keys, at once and after each change (`Deno.Kv.watch`).
   * Without it the store has no `watchHead`, and chains read the head every `maxStalenessMs`.
   */
  watch?(keys: DenoKvKey[]): ReadableStream<DenoKvEntry[]>
  /** Reads several entries at once (the watch's poll; without it, one `get` per key). */
  getMany?(keys: DenoKvKey[]): Promise<DenoKvEntry[]>
}

/** Options of {@link denoKvStore}. */
export interface DenoKvStoreOptions {
  /**
   * First part of every key, to share a database.
   *
   * @defaultValue `'kms-proxy'`
   */
  prefix?: string
  /**
   * How long (ms) to keep retrying while SQLite answers "database is locked".
   *
   * @defaultValue 10,000 (10 s)
   */
  busyTimeoutMs?: number
  /**
   * How often (ms) `watchHead` reads the watched heads' versionstamps (one `getMany` per 10
   * chains), for the writes `kv.watch` does not push: on a local file, those of other processes.
   * `Infinity`: no poll, only what `kv.watch` pushes (on a local file, this process's writes).
   *
   * @defaultValue 1,000 (1 s)
   */
  watchPollMs?: number
}

/**
 * Deno KV on a local SQLite file answers "database is locked" instead of waiting when another
 * connection (in this process or another) writes at the same moment. Such a call normally did
 * not happen, so it is retried with a short random backoff. Should a commit that threw have
 * landed after all, the retry's check fails: put-if-absent then reports false (the chain picks another id; the
 * stored record is unused), casHead reports false (the chain reads the head again; a lease it
 * wrote counts as used), both on the safe side.
 */
async function whileBusy<T>(call: () => Promise<T>, timeoutMs: number): Promise<T> {
  const started = Date.now()
  for (let wait = 1; ; wait = Math.min(wait * 2, 32)) {
    try {
      return await call()
    } catch (error) {
      const message = String((error as Error | undefined)?.message ?? error)
      if (!/database is locked|SQLITE_BUSY/i.test(message) || Date.now() - started > timeoutMs) throw error
    }
    // Jitter from the platform CSPRNG (crypto.getRandomValues), as everywhere in this library.
    const jitter = crypto.getRandomValues(new Uint8Array(1))[0]! / 256
    await new Promise((resolve) => setTimeout(resolve, wait * (0.5 + jitter)))
  }
}

/** A KEK record's value; `root` only under `[…, 'kek-wrap', id, root]`, as in its key. */
interface DenoKekValue {
  createdAt: number
  rootKind: string
  wrapped: Uint8Array
  root?: string
}

/**
 * A KeyStore over Deno KV (`await Deno.openKv(path)`, or Deno Deploy's KV). Keys are
 * `[prefix, chain, 'head']`; `[prefix, chain, 'kek', id]` for a KEK's record under the
 * `'default'` root (where every record was before chains had several roots, so those need no
 * migration), `[prefix, chain, 'kek-wrap', id, root]` for its record under any other root. The
 * head changes by compare-and-swap on its versionstamp and KEK records are put-if-absent per
 * KEK and root (`kv.atomic().check({ key, versionstamp })`), so the store is atomic across every
 * process that opens the same database: `atomic: true`.
 *
 * `watchHead` (when the handle has `watch`): the chains of one store share one `kv.watch` per 10
 * chains (Deno KV's limit per watch), which pushes the writes of this process at once; as
 * `kv.watch` on a local file does not see another process's writes, the watched heads are also
 * read every `watchPollMs` (1 s). A chain opened on this store follows a rotation made anywhere
 * within about that; call `chain.close()` when done, so that no watch or timer is left running.
 *
 * @throws TypeError - `kv` is not a Deno KV handle, or an option of the wrong type.
 * @throws RangeError - `watchPollMs` under 10.
 * @throws {@link @kms-proxy/core!StoreError} - (from its methods) `ERR_STORE`: KV failed (still
 *   locked after `busyTimeoutMs`), or a record is malformed.
 * @example
 * ```ts
 * const kv = await Deno.openKv('./keys.sqlite')   // --unstable-kv
 * const chain = await KeyChain.open({ rootKey: passphraseRootKey({ passphrase }), store: denoKvStore(kv) })
 * ```
 */
export function denoKvStore(kv: DenoKv, options: DenoKvStoreOptions = {}): KeyStore {
  if (!kv || typeof kv.get !== 'function' || typeof kv.atomic !== 'function' || typeof kv.list !== 'function') {
    throw new TypeError('denoKvStore: expected a Deno.Kv (from Deno.openKv)')
  }
  const prefix = options.prefix ?? 'kms-proxy'
  if (typeof prefix !== 'string') throw new TypeError('denoKvStore: prefix must be a string')
  const busyTimeoutMs = options.busyTimeoutMs ?? 10_000
  const watchPollMs = options.watchPollMs ?? 1_000
  if (typeof watchPollMs !== 'number' || !(watchPollMs >= 10)) throw new RangeError('denoKvStore: watchPollMs must be 10 ms or more (Infinity: no poll)')
  const retry = <T>(call: () => Promise<T>) => whileBusy(call, busyTimeoutMs)
  const headKey = (chain: string) => [prefix, chain, 'head'] as const
  // The 'default' root's record stays where every record was before chains had several roots;
  // the others live apart, so that a version that predates them lists only 'default' records.
  const kekKey = (chain: string, id: number, root: string = DEFAULT_ROOT): DenoKvKey =>
    root === DEFAULT_ROOT ? [prefix, chain, 'kek', id] : [prefix, chain, 'kek-wrap', id, root]

  const watching = typeof kv.watch === 'function' ? denoHeadWatch(kv as Parameters<typeof denoHeadWatch>[0], headKey as (chain: string) => WatchKey, watchPollMs) : undefined
  /** KeyStore.watchHead: never throws; a chain name the store would refuse is never called. */
  const watch =
    watching &&
    ((chain: string, onChange: () => void) => {
      if (typeof chain !== 'string' || chain.length === 0) return () => {}
      return watching(chain, onChange)
    })

  const toRecord = (id: number, value: unknown, root: string = DEFAULT_ROOT) => {
    const v = value as Partial<DenoKekValue> | null
    return checkRecord(id, v?.createdAt, v?.rootKind, v?.wrapped, v?.root, root, 'denoKvStore')
  }

  /** The records under a key prefix whose keys have `length` parts, an id at [3] and (length 5) a root at [4]. */
  const listRecords = (selector: DenoKvKey, length: 4 | 5) =>
    retry(async () => {
      const out: KekRecord[] = []
      for await (const { key, value } of kv.list({ prefix: selector })) {
        // Keys of another shape were not written by this store: skipped, as before.
        const [id, root] = [key[3], length === 5 ? key[4] : DEFAULT_ROOT]
        if (key.length === length && isU32(id) && isRootName(root)) out.push(toRecord(id, value, root))
      }
      return out
    })

  /** Every record of KEK `id`; Deno KV compares key parts whole, so id 5 never matches 50. */
  const wrapsOf = async (chain: string, id: number) => {
    const [plain, named] = await Promise.all([retry(() => kv.get(kekKey(chain, id))), listRecords([prefix, chain, 'kek-wrap', id], 5)])
    return plain.versionstamp === null ? named : [toRecord(id, plain.value), ...named]
  }

  return {
    atomic: true,
    embedsKeks: false,
    async getHead(chain) {
      checkChain(chain)
      const entry = await retry(() => kv.get(headKey(chain)))
      if (entry.versionstamp === null) return undefined
      return Object.freeze({ value: checkHead(entry.value, 'denoKvStore'), version: entry.versionstamp })
    },
    async casHead(chain, expected, next) {
      checkChain(chain)
      // Stored by structured clone, every field as parseChainHead kept it.
      const value = checkHead(next, 'casHead')
      const key = headKey(chain)
      const result = await retry(() => kv.atomic().check({ key, versionstamp: expected ?? null }).set(key, value).commit())
      return result.ok === true
    },
    async getKek(chain, id) {
      checkChain(chain)
      checkId(id)
      const entry = await retry(() => kv.get(kekKey(chain, id)))
      return entry.versionstamp === null ? preferDefault(await wrapsOf(chain, id)) : toRecord(id, entry.value)
    },
    async putKekIfAbsent(chain, record) {
      checkChain(chain)
      checkId(record.id)
      const root = checkRoot(rootOf(record))
      const named = root === DEFAULT_ROOT ? undefined : root
      const r = checkRecord(record.id, record.createdAt, record.rootKind, record.wrapped, named, root, 'putKekIfAbsent')
      const key = kekKey(chain, r.id, root)
      const value: DenoKekValue = { createdAt: r.createdAt, rootKind: r.rootKind, wrapped: r.wrapped.slice(), ...(named ? { root: named } : {}) }
      const result = await retry(() => kv.atomic().check({ key, versionstamp: null }).set(key, value).commit())
      return result.ok === true
    },
    async listKeks(chain) {
      checkChain(chain)
      const [plain, named] = await Promise.all([listRecords([prefix, chain, 'kek'], 4), listRecords([prefix, chain, 'kek-wrap'], 5)])
      return [...plain, ...named]
    },
    async getKekWraps(chain, id) {
      checkChain(chain)
      checkId(id)
      return wrapsOf(chain, id)
    },
    async deleteKekWrap(chain, id, root) {
      checkChain(chain)
      checkId(id)
      const key = kekKey(chain, id, checkRoot(root))
      await retry(() => kv.atomic().delete(key).commit())
    },
    ...(watch ? { watchHead: watch } : {}),
  }
}
