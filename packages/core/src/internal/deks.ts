/**
 * The decryption side of DEKs: the DEK named by an encrypted data's header, unwrapped by its KEK
 * (cached, embedded or stored), cached by its wrap bytes, and only while the head allows the
 * KEK (not retired, not destroyed: see head-view.ts).
 */
import { DecryptError } from '../errors.js'
import { IV_BYTES, decodeHeader, type MessageParts } from '../format.js'
import { bytesKey, gcmParams } from './bytes.js'
import type { HeadView } from './head-view.js'
import type { Counts, KekSource } from './kek-source.js'
import { Lru } from './lru.js'

/** What finding a DEK needs; a message and a stream header both have it. */
export type DekParts = Pick<MessageParts, 'kekId' | 'embeddedKeks' | 'headerLength' | 'dekPrefix'>

export class Deks {
  readonly #keks: KekSource
  readonly #view: HeadView
  readonly #counts: Counts
  readonly #acceptEmbedded: boolean
  readonly #cache: Lru<string, Promise<CryptoKey>>

  constructor(keks: KekSource, view: HeadView, counts: Counts, acceptEmbedded: boolean, cacheSize: number) {
    this.#keks = keks
    this.#view = view
    this.#counts = counts
    this.#acceptEmbedded = acceptEmbedded
    this.#cache = new Lru(cacheSize)
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

  /** The DEK of a data to decrypt (non-extractable), from the cache or unwrapped. */
  async forDecrypt(parts: DekParts): Promise<CryptoKey> {
    if (this.#view.due()) await this.#view.fresh(false)
    this.#assertUsable(parts.kekId)
    const cacheKey = this.#cache.capacity > 0 ? bytesKey(parts.dekPrefix) : undefined
    if (cacheKey !== undefined) {
      const hit = this.#cache.get(cacheKey)
      if (hit) {
        this.#counts.dekCacheHits++
        return hit
      }
    }
    this.#counts.dekCacheMisses++
    const pending = this.#unwrap(parts, false)
    if (cacheKey !== undefined) {
      this.#cache.set(cacheKey, pending)
      pending.catch(() => this.#cache.deleteIf(cacheKey, pending))
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
