/**
 * The decryption side of DEKs: the DEK named by an encrypted data's header, unwrapped by its KEK
 * (cached, embedded or stored), cached by its wrap bytes, and only while the head allows the
 * KEK (not retired, not destroyed: see head-view.ts).
 *
 * The cache is keyed by a 32-bit hash of header || iv1 || wrapped DEK and each entry keeps those
 * bytes, compared in full before a hit counts: a hit needs no header parsing, no object and no
 * string per call. A hash collision is a miss, never a wrong DEK.
 */
import { DecryptError } from '../errors.js'
import { FLAG_EMBEDDED_KEK, FLAG_STREAM, FORMAT_VERSION_ROOTS, IV_BYTES, WRAPPED_DEK_BYTES, decodeHeader, type MessageParts } from '../format.js'
import { gcmParams, type Bytes } from './bytes.js'
import type { HeadView } from './head-view.js'
import type { Counts, KekSource } from './kek-source.js'

/** What finding a DEK needs; a message and a stream header both have it. */
export type DekParts = Pick<MessageParts, 'kekId' | 'embeddedKeks' | 'headerLength' | 'dekPrefix'>

/** A cached DEK: `key` once its unwrap has succeeded. */
export interface CachedDek {
  /** header || iv1 || wrapped DEK, copied: what a hit must match byte for byte. */
  readonly prefix: Bytes
  readonly kekId: number
  readonly pending: Promise<CryptoKey>
  key: CryptoKey | undefined
  /** Used since it was last passed over for eviction (second chance: a hit only sets this bit). */
  hot: boolean
}

/**
 * FNV-1a over the prefix's last 16 bytes (the wrapped DEK's tag, random for every DEK) and its
 * length: a bucket index, not a security measure (entries are compared in full).
 */
export function hashPrefix(bytes: Uint8Array, end: number): number {
  let h = Math.imul(0x811c9dc5 ^ end, 0x01000193)
  for (let i = Math.max(0, end - 16); i < end; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193)
  return h >>> 0
}

/**
 * The DEK cache: least recently used out, approximated by a second chance (a hit sets a bit; the
 * oldest entry with its bit set is moved to the back instead of evicted), so that a hit writes
 * one boolean instead of moving its entry.
 */
class DekCache {
  readonly #map = new Map<number, CachedDek>()
  constructor(readonly capacity: number) {}

  get(hash: number): CachedDek | undefined {
    const entry = this.#map.get(hash)
    if (entry) entry.hot = true
    return entry
  }

  set(hash: number, entry: CachedDek): void {
    const map = this.#map
    map.delete(hash)
    map.set(hash, entry)
    while (map.size > this.capacity) {
      const [oldest, value] = map.entries().next().value as [number, CachedDek]
      map.delete(oldest)
      if (value.hot) {
        value.hot = false
        map.set(oldest, value)
      }
    }
  }

  /** Deletes `hash` only while it still maps to `entry` (a failed unwrap must not evict its successor). */
  deleteIf(hash: number, entry: CachedDek): void {
    if (this.#map.get(hash) === entry) this.#map.delete(hash)
  }

  clear(): void {
    this.#map.clear()
  }
}

/**
 * Where iv1 || wrapped DEK ends in a message, read without allocating; undefined when the bytes
 * are too short for it to matter (the full decoder then says what is wrong).
 */
export function prefixEnd(bytes: Uint8Array): number | undefined {
  if (bytes.length < 6) return undefined
  let o = 6
  if (bytes[5]! & FLAG_EMBEDDED_KEK) {
    if (bytes[0] !== FORMAT_VERSION_ROOTS) {
      if (bytes.length < 8) return undefined
      o = 8 + ((bytes[6]! << 8) | bytes[7]!)
    } else {
      if (bytes.length < 7) return undefined
      const count = bytes[6]!
      o = 7
      for (let i = 0; i < count; i++) {
        if (bytes.length < o + 1) return undefined
        o += 1 + bytes[o]!
        if (bytes.length < o + 2) return undefined
        o += 2 + ((bytes[o]! << 8) | bytes[o + 1]!)
      }
    }
  }
  return o + IV_BYTES + WRAPPED_DEK_BYTES
}

function samePrefix(entry: CachedDek, bytes: Uint8Array): boolean {
  const p = entry.prefix
  if (bytes.length < p.length) return false
  for (let i = 0; i < p.length; i++) if (p[i] !== bytes[i]) return false
  return true
}

export class Deks {
  readonly #keks: KekSource
  readonly #view: HeadView
  readonly #counts: Counts
  readonly #acceptEmbedded: boolean
  readonly #cache: DekCache

  constructor(keks: KekSource, view: HeadView, counts: Counts, acceptEmbedded: boolean, cacheSize: number) {
    this.#keks = keks
    this.#view = view
    this.#counts = counts
    this.#acceptEmbedded = acceptEmbedded
    this.#cache = new DekCache(cacheSize)
  }

  /** Forgets every cached DEK (a KEK was destroyed). */
  clear(): void {
    this.#cache.clear()
  }

  /**
   * Before an encryption: the head read if due (strict: see maxStalenessMs), the chain usable.
   * A promise only when the head must be read: inside the bound, the hot path awaits nothing.
   */
  fresh(): Promise<void> | undefined {
    if (this.#view.due()) return this.#view.fresh(true).then(() => this.#view.assertChain())
    this.#view.assertChain()
    return undefined
  }

  /**
   * A single message whose DEK is cached and unwrapped, found without parsing: the entry (its
   * prefix length is where iv2 starts), or undefined for the full path (not cached, a head read
   * due, a stream, or anything malformed). Throws only what the full path would: a retired or
   * destroyed KEK.
   */
  hit(bytes: Uint8Array): CachedDek | undefined {
    if (this.#cache.capacity === 0 || this.#view.due()) return undefined
    const end = prefixEnd(bytes)
    // A stream's DEK is cached too: its header must still go through decodeMessage, which refuses it.
    if (end === undefined || end > bytes.length || bytes[5]! & FLAG_STREAM) return undefined
    const entry = this.#cache.get(hashPrefix(bytes, end))
    if (entry?.key === undefined || entry.prefix.length !== end || !samePrefix(entry, bytes)) return undefined
    this.#assertUsable(entry.kekId)
    this.#counts.dekCacheHits++
    return entry
  }

  /** The DEK of a data to decrypt (non-extractable), from the cache or unwrapped. */
  async forDecrypt(parts: DekParts): Promise<CryptoKey> {
    if (this.#view.due()) await this.#view.fresh(false)
    this.#assertUsable(parts.kekId)
    const prefix = parts.dekPrefix
    const hash = this.#cache.capacity > 0 ? hashPrefix(prefix, prefix.length) : undefined
    if (hash !== undefined) {
      const cached = this.#cache.get(hash)
      if (cached && cached.prefix.length === prefix.length && samePrefix(cached, prefix)) {
        this.#counts.dekCacheHits++
        return cached.pending
      }
    }
    this.#counts.dekCacheMisses++
    const pending = this.#unwrap(parts, false)
    if (hash !== undefined) {
      const entry: CachedDek = { prefix: prefix.slice(), kekId: parts.kekId, pending, key: undefined, hot: false }
      this.#cache.set(hash, entry)
      pending.then(
        (key) => void (entry.key = key),
        () => this.#cache.deleteIf(hash, entry),
      )
    }
    return pending
  }

  /** The DEK of a data to rewrap: extractable (wrapKey requires it), never cached. */
  async forRewrap(parts: DekParts): Promise<CryptoKey> {
    if (this.#view.due()) await this.#view.fresh(false)
    this.#assertUsable(parts.kekId)
    return this.#unwrap(parts, true)
  }

  /** Counts a data decrypted under KEK `kekId`, for stats(). */
  decrypted(kekId: number): void {
    const entry = this.#keks.entries.get(kekId)
    if (entry) entry.decryptions++
  }

  /** Counts a data moved off KEK `kekId` by a rewrap, for stats(). */
  movedOff(kekId: number): void {
    const entry = this.#keks.entries.get(kekId)
    if (entry) entry.rewrapped++
  }

  /** The KEK usable, as the last head read says (a decryption reads it first when due; the last head stands if the store is down). */
  #assertUsable(kekId: number): void {
    try {
      this.#view.assertKek(kekId)
    } catch (error) {
      this.#counts.refusedRetired++
      throw error
    }
  }

  /** KEK (cached, embedded or stored), then the DEK: non-extractable unless `forRewrap`. */
  async #unwrap(parts: DekParts, forRewrap: boolean): Promise<CryptoKey> {
    // Own copy: the caller's buffer may change while we wait for the KEK.
    const prefix = parts.dekPrefix.slice()
    const h = parts.headerLength
    // Without acceptEmbeddedKeks the embedded KEK is still authenticated (it is in the header,
    // the DEK wrap's AAD) but never sent to the root key: the KEK comes from the store by id.
    const embedded = this.#acceptEmbedded && parts.embeddedKeks ? decodeHeader(prefix).embeddedKeks : undefined
    const kek = await this.#keks.kekFor(parts.kekId, embedded)
    try {
      return await crypto.subtle.unwrapKey(
        'raw',
        prefix.subarray(h + IV_BYTES),
        kek,
        gcmParams(prefix.subarray(h, h + IV_BYTES), prefix.subarray(0, h)),
        'AES-GCM',
        // extractable only for rewrap, whose wrapKey call requires it; the bytes stay inside WebCrypto.
        forRewrap,
        ['decrypt'],
      )
    } catch {
      throw new DecryptError('decryption failed')
    }
  }
}
