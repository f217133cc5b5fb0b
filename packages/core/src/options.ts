/**
 * The options of a key chain, their defaults and their checks, and the checks of the arguments
 * of every call: wrong types are a TypeError naming the argument, out-of-range numbers a
 * RangeError, strings that are not well-formed UTF-16 a TypeError.
 */
import { asBytes, utf8, type Bytes } from './internal/bytes.js'
import { ephemeralRootKey, type RootKey } from './root-key.js'
import { DEFAULT_ROOT, checkChainName, checkRootName, embeddedStore, type ChainRootState, type KeyStore } from './store.js'

/** Options of `KeyChain.open`. Every one has a default. */
export interface KeyChainOptions {
  /**
   * Wraps the KEKs: `aesRootKey`, `passphraseRootKey`, a KMS, an HSM, WebAuthn, or your own.
   *
   * @defaultValue `ephemeralRootKey()`: a random key of this process only; data dies with it.
   */
  rootKey?: RootKey
  /**
   * Several roots by name, for a chain that has (or will have) several: a passkey and a
   * recovery passphrase, KMS keys in two regions, an HSM and a break-glass KMS key. Any one of
   * them unlocks the chain; a rotation wraps the new KEK under every root of the chain, so it
   * needs every one. Names: 1 to 64 characters of letters, digits, `.`, `_`, `-`. Give
   * `rootKey` or `roots`, not both; `rootKey: r` is the chain's only root, whatever its name
   * (`'default'` for a new chain).
   */
  roots?: Readonly<Record<string, RootKey>>
  /**
   * Keeps the wrapped KEKs and the head: `memoryStore()`, `fileStore`, `etcdStore`, … or your own.
   *
   * @defaultValue `embeddedStore()`: each encrypted data carries its root-wrapped KEK.
   */
  store?: KeyStore
  /**
   * Chain name: the store key prefix, bound into every KEK wrap. 1 to 255 characters.
   *
   * @defaultValue `'default'`
   */
  name?: string
  /**
   * DEKs a KEK wraps before rotation, across every process. 1 to 2^32.
   *
   * @defaultValue 2^21 (2,097,152): an IV collision chance about 2^−55 per KEK.
   */
  maxWrapsPerKek?: number
  /**
   * Age (ms) at which the primary KEK rotates.
   *
   * @defaultValue 7 days (604,800,000)
   */
  maxKekAgeMs?: number
  /**
   * Unwrapped DEKs kept for repeated decryption of the same data; 0 turns it off (then a
   * decryption takes the same time whether or not the data was decrypted before).
   *
   * @defaultValue 1024
   */
  dekCacheSize?: number
  /**
   * DEKs prepared (generated and wrapped) ahead of encrypt calls; 0 turns it off.
   *
   * @defaultValue 16
   */
  dekPoolSize?: number
  /**
   * Uses of the primary KEK reserved per store write. A process that crashes loses at most this
   * many uses; another process sees a rotation at the latest after this many encryptions.
   *
   * @defaultValue `maxWrapsPerKek / 64`, between 1 and 65,536 (32,768 with the default limit)
   */
  leaseSize?: number
  /**
   * Whether decryption may send a KEK embedded in the data to the root key. Default: true with
   * an embedding store, false otherwise, so that a chain on a shared store looks KEKs up only in
   * its store and invented embedded KEKs cannot make it call the root key. Turn it on to read
   * data written with the embedded store (for example, to rewrap it into a shared store).
   *
   * @defaultValue `store.embedsKeks`
   */
  acceptEmbeddedKeks?: boolean
  /**
   * The longest this chain goes without reading its head before an encryption or a decryption
   * (invariant 10): a rotation made by any process is used here within this bound, a KEK
   * retired anywhere stops decrypting here within it (while this process's root key cannot
   * unwrap the new primary, it goes on under the KEK it holds, within that KEK's lease and age,
   * retrying every 5 s). Costs at most one store read per bound
   * while the chain is used, none while it is idle. When the store pushes changes
   * (`watchHead`), a change is usually seen at once; this bound still holds if a push is lost.
   * An encryption that cannot read the head past the bound fails (`ERR_STORE`, retryable); a
   * decryption goes on with the head it last read. `Infinity` turns the check off (a
   * rotation elsewhere is then seen when the lease runs out, as before).
   *
   * @defaultValue 15,000 (15 s)
   */
  maxStalenessMs?: number
  /**
   * Whether to follow the store's push of head changes (`watchHead`: etcd's watch, Deno KV's
   * watch, a `BroadcastChannel` between tabs, a file's change). A watch holds a connection or a
   * timer: call `chain.close()` when done with the chain, so that a process can exit.
   *
   * @defaultValue true when the store has `watchHead`
   */
  watch?: boolean
  /**
   * How long a KEK (or the chain) must have been retired before `destroyKek` (or
   * `destroyChain`) may delete it, unless the call gives its own. Gives every process time to
   * see the retirement, and an operator time to notice what still needed the KEK.
   *
   * @defaultValue 7 days (604,800,000)
   */
  destroyGraceMs?: number
}

/** Options of `encrypt`, `decrypt` and their text and stream forms. */
export interface EncryptOptions {
  /**
   * Authenticated, not encrypted, not stored: the same bytes must be given to decrypt. A string
   * is taken as UTF-8; absent and empty are the same.
   *
   * @defaultValue none (empty)
   */
  associatedData?: Uint8Array | string
}

/** Options of `encryptStream`. */
export interface EncryptStreamOptions extends EncryptOptions {
  /**
   * Plaintext bytes per segment, recorded in the stream header; 16 to 2^24.
   *
   * @defaultValue 65,536
   */
  segmentSize?: number
}

/** One KEK as `stats()` reports it. */
export interface KekStats {
  /** The KEK id (a random u32), as in the header of the data it protects. */
  id: number
  /** Whether this process encrypts under it now. */
  primary: boolean
  /** DEKs this process wrapped (or prepared) under the KEK. */
  wraps: number
  /** When the KEK was made (ms since the epoch). */
  createdAt: number
  /** Messages and streams this process decrypted under it. */
  decryptions: number
  /** Data this process moved off it with `rewrap` or `rewrapStreamHeader`: after a rewrap of everything, what a retirement may count on. */
  rewrapped: number
  /** `'retired'` or `'destroyed'` when the head last read says so, else `'active'`. */
  state: 'active' | 'retired' | 'destroyed'
}

/**
 * The primary KEK as the store's head names it, and how much of it is left, across every
 * process that shares the store. What `primaryStatus()` returns.
 */
export interface PrimaryStatus {
  /** The KEK id the head names as primary: the one the next encryption uses unless it rotates. */
  id: number
  /** When that KEK was made (ms since the epoch). */
  createdAt: number
  /** Milliseconds until the age limit rotates it (0 when already due). */
  ageLeftMs: number
  /** Uses left before the usage limit rotates it: unleased uses plus this process's unused lease. */
  usesLeft: number
  /** Whether this process holds the KEK unwrapped (it can encrypt under it without the root key). */
  loaded: boolean
}

/** What a root change did: `addRoot`, `removeRoot`, `changeRoot`. */
export interface RootChangeReport {
  /** The root added (`addRoot`, `changeRoot`) or removed (`removeRoot`). */
  name: string
  /** KEKs of the chain (distinct ids) the change went through. */
  keks: number
  /** Wraps written: KEKs wrapped under the new root, or under a root that stays. */
  wrapped: number
  /** Wraps deleted under the root that left. */
  deleted: number
  /**
   * Root-key unwraps this chain made meanwhile: one per KEK re-wrapped, one to prove the new
   * root, and one to prove that this process holds a root of the chain (none when it has
   * unwrapped the chain's primary already).
   */
  rootKeyUnwraps: number
  /** Root-key wraps this chain made meanwhile: one per KEK re-wrapped. */
  rootKeyWraps: number
}

/** One root of a chain, as `listRoots()` tells it. */
export interface RootInfo {
  /** The root's name in the chain. */
  name: string
  /** Its RootKey.kind. */
  kind: string
  /** `adding`, `active` or `removing`: see {@link ChainRoot}. */
  state: ChainRootState
  /** Whether this process holds it. */
  held: boolean
}

/** One root's calls in `stats().roots`. */
export interface RootStats {
  /** RootKey.kind of the root. */
  kind: string
  /** Calls that wrapped a KEK under it (`newKek` or `wrapKek`). */
  wraps: number
  /** Calls that unwrapped a KEK with it. */
  unwraps: number
  /** False after a retryable failure of this root, until it answers again. */
  available: boolean
}

/** What `stats()` returns: counters of this process since `open`. */
export interface KeyChainStats {
  /** Messages and streams encrypted. */
  encryptions: number
  /** Messages and streams decrypted. */
  decryptions: number
  /** New primary KEKs this process made (by `rotate()` or by a limit). */
  rotations: number
  /** Root-key calls that made a KEK (`newKek`). */
  rootKeyWraps: number
  /** Root-key calls that unwrapped a KEK (`unwrapKek`): at most one per KEK per process. */
  rootKeyUnwraps: number
  /**
   * False after a root-key call failed with a retryable error (a KMS that is down), until a call
   * succeeds. Meanwhile encryption goes on under the current KEK until its rotation is due.
   */
  rootKeyAvailable: boolean
  /** The last root-key failure (its code and message), if any. */
  rootKeyLastError?: string
  /** Decryptions that found their DEK in the DEK cache. */
  dekCacheHits: number
  /** Decryptions that unwrapped their DEK. */
  dekCacheMisses: number
  /** Every KEK this process has loaded or made. */
  keks: KekStats[]
  /** The roots this process holds, by name (`'default'` for a chain opened with `rootKey`), with their calls. */
  roots: Record<string, RootStats>
  /** Decryptions (and rewraps) refused because their KEK, or the chain, is retired or destroyed. */
  refusedRetired: number
  /** When this process last read the chain head (ms since the epoch): see `maxStalenessMs`. */
  headCheckedAt: number
}

const DEFAULT_MAX_WRAPS = 2 ** 21
const HARD_MAX_WRAPS = 2 ** 32
const DEFAULT_MAX_AGE_MS = 7 * 24 * 3600 * 1000
const DEFAULT_MAX_STALENESS_MS = 15_000
const DEFAULT_DESTROY_GRACE_MS = 7 * 24 * 3600 * 1000

/** Every option of a chain, checked and with its default filled in. */
export type ResolvedOptions = Omit<Required<KeyChainOptions>, 'rootKey' | 'roots'> & {
  /** The roots this process holds, by name, in the order given (the order unwraps try them). */
  roots: Map<string, RootKey>
  /** Opened with `rootKey`: the one root stands for the chain's only root, whatever its name. */
  single: boolean
}

/** Checks a root key. @throws TypeError */
export function checkRootKey(root: unknown, what = 'rootKey'): RootKey {
  const r = root as RootKey
  if (typeof r !== 'object' || r === null || typeof r.newKek !== 'function' || typeof r.unwrapKek !== 'function') {
    throw new TypeError(`${what}: expected a RootKey (newKek and unwrapKek)`)
  }
  if (r.wrapKek !== undefined && typeof r.wrapKek !== 'function') throw new TypeError(`${what}: wrapKek must be a function`)
  return r
}

export function resolveOptions(options: KeyChainOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  if (options.rootKey !== undefined && options.roots !== undefined) throw new TypeError('give rootKey or roots, not both')
  const roots = new Map<string, RootKey>()
  if (options.roots !== undefined) {
    if (typeof options.roots !== 'object' || options.roots === null) throw new TypeError('roots: expected an object of root keys by name')
    for (const [name, root] of Object.entries(options.roots)) roots.set(checkRootName(name, 'root name'), checkRootKey(root, `roots.${name}`))
    if (roots.size === 0) throw new TypeError('roots: expected at least one root key')
  } else {
    roots.set(DEFAULT_ROOT, checkRootKey(options.rootKey ?? ephemeralRootKey()))
  }
  const store = options.store ?? embeddedStore()
  for (const method of ['getHead', 'casHead', 'getKek', 'putKekIfAbsent', 'listKeks'] as const) {
    if (typeof store !== 'object' || typeof store[method] !== 'function') {
      throw new TypeError(`store: expected a KeyStore (missing ${method})`)
    }
  }
  const name = options.name ?? 'default'
  checkChainName(name, 'name') // bound into every KEK wrap: must be well-formed
  const maxWrapsPerKek = options.maxWrapsPerKek ?? DEFAULT_MAX_WRAPS
  if (!Number.isInteger(maxWrapsPerKek) || maxWrapsPerKek < 1 || maxWrapsPerKek > HARD_MAX_WRAPS) {
    throw new RangeError('maxWrapsPerKek: expected an integer from 1 to 2^32')
  }
  const maxKekAgeMs = options.maxKekAgeMs ?? DEFAULT_MAX_AGE_MS
  if (typeof maxKekAgeMs !== 'number' || !(maxKekAgeMs > 0)) {
    throw new RangeError('maxKekAgeMs: expected a positive number')
  }
  const dekCacheSize = integerOption('dekCacheSize', options.dekCacheSize, 1024, 0, 2 ** 24)
  const dekPoolSize = integerOption('dekPoolSize', options.dekPoolSize, 16, 0, 1024)
  const leaseDefault = Math.max(1, Math.min(65536, Math.floor(maxWrapsPerKek / 64)))
  const leaseSize = integerOption('leaseSize', options.leaseSize, leaseDefault, 1, HARD_MAX_WRAPS)
  const acceptEmbeddedKeks = options.acceptEmbeddedKeks ?? store.embedsKeks === true
  if (typeof acceptEmbeddedKeks !== 'boolean') throw new TypeError('acceptEmbeddedKeks: expected a boolean')
  const maxStalenessMs = options.maxStalenessMs ?? DEFAULT_MAX_STALENESS_MS
  if (typeof maxStalenessMs !== 'number' || !(maxStalenessMs >= 0)) throw new RangeError('maxStalenessMs: expected a number of milliseconds, 0 or more (Infinity: no check)')
  const watch = options.watch ?? typeof store.watchHead === 'function'
  if (typeof watch !== 'boolean') throw new TypeError('watch: expected a boolean')
  const destroyGraceMs = options.destroyGraceMs ?? DEFAULT_DESTROY_GRACE_MS
  if (typeof destroyGraceMs !== 'number' || !(destroyGraceMs >= 0)) throw new RangeError('destroyGraceMs: expected a number of milliseconds, 0 or more')
  return {
    roots,
    single: options.roots === undefined,
    store,
    name,
    maxWrapsPerKek,
    maxKekAgeMs,
    dekCacheSize,
    dekPoolSize,
    leaseSize,
    acceptEmbeddedKeks,
    maxStalenessMs,
    watch,
    destroyGraceMs,
  }
}

/** Bytes of a data argument: a Uint8Array as it is, a string as UTF-8 (well-formed only). */
export function bytesArgument(name: string, value: Uint8Array | string): Bytes {
  if (typeof value === 'string') return utf8(value, name)
  if (value instanceof Uint8Array) return asBytes(value)
  throw new TypeError(`${name}: expected a Uint8Array or a string`)
}

export function associatedDataOf(options: EncryptOptions | undefined): Uint8Array | undefined {
  if (options === undefined) return undefined
  if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
  const ad = options.associatedData
  return ad === undefined ? undefined : bytesArgument('associatedData', ad)
}

function integerOption(name: string, value: number | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  if (!Number.isInteger(value) || value < min || value > max) throw new RangeError(`${name}: expected an integer from ${min} to ${max}`)
  return value
}
