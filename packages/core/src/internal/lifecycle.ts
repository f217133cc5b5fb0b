/**
 * The end of a KEK's life, and of a chain's (invariant 9): retire (reversible: it no longer
 * decrypts), destroy (its records deleted for good: crypto-shredding). Each is one edit of the
 * head by compare-and-swap, then, for destroy, deletions that a rerun finishes. The head marks a
 * KEK destroyed before any record goes, so no process is left using a half-deleted KEK.
 */
import { DestroyedKekError, LimitError, StoreError, UnknownKekError } from '../errors.js'
import { rootOf, type ChainHead, type RetiredKek, type Versioned } from '../store.js'
import type { HeadView } from './head-view.js'
import type { KekSource } from './kek-source.js'

const ATTEMPTS = 100

/** What a destroy did. */
export interface DestroyReport {
  /** The KEKs destroyed: one for `destroyKek`, every KEK of the chain for `destroyChain`. */
  keks: number[]
  /** KEK records deleted from the store by this call (a rerun deletes what a crash left). */
  deleted: number
}

export class Lifecycle {
  readonly #keks: KekSource
  readonly #view: HeadView
  readonly #graceMs: number

  constructor(keks: KekSource, view: HeadView, graceMs: number) {
    this.#keks = keks
    this.#view = view
    this.#graceMs = graceMs
  }

  /** Marks KEK `id` retired. Idempotent; refuses the primary and an id the store does not have. */
  async retireKek(id: number): Promise<RetiredKek> {
    checkId(id)
    let known = false
    return this.#edit((h) => {
      if (id === h.primary) throw new LimitError(`KEK ${id} is the primary: rotate() first, then retire it`)
      const found = (h.retired ?? []).find((r) => r.id === id)
      if (found) return { result: found }
      return { result: { id, retiredAt: Date.now() }, next: (r) => ({ ...h, retired: [...(h.retired ?? []), r] }) }
    }, async () => {
      if (known) return
      if ((await this.#keks.wrapsOf(id)).length === 0) throw new UnknownKekError(`KEK ${id} is not in the store`)
      known = true
    })
  }

  /** Makes a retired KEK decrypt again. Idempotent; a destroyed KEK stays destroyed. */
  async unretireKek(id: number): Promise<void> {
    checkId(id)
    await this.#edit((h) => {
      const found = (h.retired ?? []).find((r) => r.id === id)
      if (!found) return { result: undefined }
      if (found.destroyedAt !== undefined) throw new DestroyedKekError(`KEK ${id} was destroyed: it cannot come back`)
      const rest = h.retired!.filter((r) => r.id !== id)
      return { result: undefined, next: () => withRetired(h, rest) }
    })
  }

  /**
   * Deletes every record of KEK `id`, for good. Refuses the primary, a KEK not retired, and one
   * retired for less than the grace period. Run again after a crash, it finishes the deletions.
   */
  async destroyKek(id: number, graceMs = this.#graceMs): Promise<DestroyReport> {
    checkId(id)
    checkGrace(graceMs)
    this.#checkStore()
    await this.#edit((h) => {
      if (id === h.primary) throw new LimitError(`KEK ${id} is the primary: it cannot be destroyed`)
      const found = (h.retired ?? []).find((r) => r.id === id)
      if (!found) throw new LimitError(`KEK ${id} is not retired: retireKek(${id}) first, and destroy it after the grace period`)
      if (found.destroyedAt !== undefined) return { result: undefined }
      checkRetiredFor(`KEK ${id}`, found.retiredAt, graceMs)
      const marked = { id, retiredAt: found.retiredAt, destroyedAt: Date.now() }
      return { result: undefined, next: () => ({ ...h, retired: h.retired!.map((r) => (r.id === id ? marked : r)) }) }
    })
    const deleted = await this.#deleteWraps([id])
    return { keks: [id], deleted }
  }

  /** Retires the whole chain (no encryption, no decryption). Idempotent. */
  async retireChain(): Promise<number> {
    return this.#edit((h) => {
      if (h.chainRetiredAt !== undefined) return { result: h.chainRetiredAt }
      const at = Date.now()
      return { result: at, next: () => ({ ...h, chainRetiredAt: at }) }
    })
  }

  /** Makes a retired chain usable again. Idempotent; a destroyed chain stays destroyed. */
  async unretireChain(): Promise<void> {
    await this.#edit((h) => {
      if (h.chainDestroyedAt !== undefined) throw new DestroyedKekError('this chain was destroyed: it cannot come back')
      if (h.chainRetiredAt === undefined) return { result: undefined }
      const { chainRetiredAt: _, ...rest } = h
      return { result: undefined, next: () => rest }
    })
  }

  /**
   * Deletes every KEK record of the chain, for good; the head stays as a tombstone (ids and
   * times, no key). Refuses a chain not retired, or retired for less than the grace period.
   */
  async destroyChain(graceMs = this.#graceMs): Promise<DestroyReport> {
    checkGrace(graceMs)
    this.#checkStore()
    await this.#edit((h) => {
      if (h.chainDestroyedAt !== undefined) return { result: undefined }
      if (h.chainRetiredAt === undefined) throw new LimitError('this chain is not retired: retireChain() first, and destroy it after the grace period')
      checkRetiredFor('the chain', h.chainRetiredAt, graceMs)
      const at = Date.now()
      return { result: undefined, next: () => ({ ...h, chainDestroyedAt: at }) }
    })
    const k = this.#keks
    const records = await k.storeCall('list the KEKs', () => k.store.listKeks(k.chainName))
    const ids = [...new Set(records.map((r) => r.id))]
    const deleted = await this.#deleteWraps(ids, records)
    return { keks: ids, deleted }
  }

  async #deleteWraps(ids: readonly number[], listed?: readonly { id: number; root?: string }[]): Promise<number> {
    const k = this.#keks
    let deleted = 0
    for (const id of ids) {
      const wraps = listed ? listed.filter((r) => r.id === id) : await k.wrapsOf(id)
      for (const w of wraps) {
        await k.storeCall('delete a KEK record', () => k.store.deleteKekWrap!(k.chainName, id, rootOf(w)))
        deleted++
      }
      k.forget(id)
    }
    return deleted
  }

  #checkStore(): void {
    const store = this.#keks.store
    if (store.embedsKeks) throw new TypeError('this store embeds each KEK in the data it protects: destroy the data instead')
    if (typeof store.deleteKekWrap !== 'function' || typeof store.getKekWraps !== 'function') {
      throw new TypeError('this store cannot delete KEK records (it lacks getKekWraps and deleteKekWrap)')
    }
  }

  /**
   * Reads the head, lets `decide` say what to write, and writes it by compare-and-swap, until
   * one lands. `decide` may throw (a refusal); `next` absent means nothing to change.
   */
  async #edit<T>(
    decide: (h: ChainHead) => { result: T; next?: (result: T) => ChainHead },
    before?: () => Promise<void>,
  ): Promise<T> {
    const k = this.#keks
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const head: Versioned<ChainHead> | undefined = await this.#view.read()
      if (!head) throw new UnknownKekError('this chain has no KEK yet')
      const { result, next } = decide(head.value)
      if (!next) return result
      if (before) await before()
      const value = next(result)
      if (await k.storeCall('update the chain head', () => k.store.casHead(k.chainName, head.version, value))) {
        this.#view.take(value)
        return result
      }
    }
    throw new StoreError('too much contention on the chain head; gave up', { retryable: true })
  }
}

function withRetired(h: ChainHead, retired: readonly RetiredKek[]): ChainHead {
  const { retired: _, ...rest } = h
  return retired.length > 0 ? { ...rest, retired } : rest
}

function checkId(id: unknown): asserts id is number {
  if (!Number.isInteger(id) || (id as number) < 1 || (id as number) > 0xffffffff) throw new TypeError('id: expected a KEK id (an integer from 1 to 2^32 − 1)')
}

function checkGrace(graceMs: unknown): void {
  if (typeof graceMs !== 'number' || !(graceMs >= 0)) throw new RangeError('graceMs: expected a number of milliseconds, 0 or more')
}

function checkRetiredFor(what: string, retiredAt: number, graceMs: number): void {
  const age = Date.now() - retiredAt
  if (age < graceMs) {
    throw new LimitError(`${what} was retired ${Math.round(age / 1000)} s ago; it can be destroyed after the grace period of ${Math.round(graceMs / 1000)} s`)
  }
}
