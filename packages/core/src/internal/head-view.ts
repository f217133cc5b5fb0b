/**
 * What this process knows of the chain head, and how fresh it is (invariant 10). Every read of
 * the head anywhere in the chain goes through here, so any read counts as a check. Before an
 * encryption or a decryption, a view older than `maxStalenessMs` (or marked by the store's push)
 * reads the head again: a primary rotated by another process replaces this one's, and a KEK
 * retired or destroyed anywhere stops decrypting here. No timer: a chain nobody uses costs
 * nothing; a chain in use costs at most one head read per `maxStalenessMs`.
 */
import { DestroyedKekError, RetiredKekError } from '../errors.js'
import type { ChainHead, RetiredKek, Versioned } from '../store.js'

/** Throws when a head says its chain is retired or destroyed: nothing is encrypted, decrypted or rotated in it. */
export function assertChainUsable(head: Pick<ChainHead, 'chainRetiredAt' | 'chainDestroyedAt'> | undefined): void {
  if (head?.chainDestroyedAt !== undefined) throw new DestroyedKekError('this chain was destroyed: its KEKs are deleted for good')
  if (head?.chainRetiredAt !== undefined) throw new RetiredKekError('this chain is retired: unretireChain() makes it usable again')
}

export interface HeadViewHooks {
  /** Reads the head from the store (through the chain's store-call wrapper). */
  read(): Promise<Versioned<ChainHead> | undefined>
  /** A head names primary `id` (or none): the chain drops a superseded primary and its prepared DEKs. */
  primary(id: number | undefined): void
  /** KEKs newly seen destroyed (or every KEK, `'all'`, for a destroyed chain): dropped from memory. */
  destroyed(ids: readonly number[] | 'all'): void
}

export class HeadView {
  readonly #maxStaleness: number
  readonly #hooks: HeadViewHooks
  /** When the newest successful read started (ms since the epoch). */
  #checkedAt = -Infinity
  /** Set by the store's push: the head changed since the last read. */
  #dirty = false
  #reading: Promise<Versioned<ChainHead> | undefined> | undefined
  #retired = new Map<number, RetiredKek>()
  #chainRetiredAt: number | undefined
  #chainDestroyedAt: number | undefined
  /** The head read at open, kept for the first lease (see first()); gone at the next read or write. */
  #opening: { head: Versioned<ChainHead> | undefined } | undefined

  constructor(maxStalenessMs: number, hooks: HeadViewHooks) {
    this.#maxStaleness = maxStalenessMs
    this.#hooks = hooks
  }

  /** When the head was last read (ms since the epoch; -Infinity before the first read). */
  get checkedAt(): number {
    return this.#checkedAt
  }

  /** The store said the head changed: the next use reads it. */
  markDirty(): void {
    this.#dirty = true
  }

  /** Whether the next use must read the head first. */
  due(): boolean {
    return this.#dirty || Date.now() - this.#checkedAt >= this.#maxStaleness
  }

  /** Reads the head at open, and keeps it for the first lease (one store read for open and first use, not two). */
  async open(): Promise<void> {
    const head = await this.read()
    this.#opening = { head }
  }

  /**
   * The head read at open, once, if nothing was read or written since and it is still within the
   * bound: the first lease starts from it. A compare-and-swap on a head that moved meanwhile
   * fails and the lease reads it again, so a stale one costs a retry, never a wrong lease.
   */
  first(): { head: Versioned<ChainHead> | undefined } | undefined {
    const opening = this.#opening
    this.#opening = undefined
    return opening && !this.due() ? opening : undefined
  }

  /** Reads the head and takes it in; concurrent reads share one store call. */
  read(): Promise<Versioned<ChainHead> | undefined> {
    this.#opening = undefined
    if (this.#reading) return this.#reading
    const startedAt = Date.now()
    const dirtyBefore = this.#dirty
    this.#dirty = false
    const run = this.#hooks.read().then(
      (head) => {
        this.#take(head?.value, startedAt)
        return head
      },
      (error: unknown) => {
        if (dirtyBefore) this.#dirty = true
        throw error
      },
    )
    const reading = run.finally(() => {
      if (this.#reading === reading) this.#reading = undefined
    })
    this.#reading = reading
    return reading
  }

  /**
   * Reads the head when it is due. `strict` (encryption): a head that cannot be read past the
   * bound is an error, since a rotation may have happened meanwhile. Not strict (decryption):
   * the last head seen stands, so reading old data survives a store outage.
   */
  async fresh(strict: boolean): Promise<void> {
    if (!this.due()) return
    try {
      await this.read()
    } catch (error) {
      if (strict && Date.now() - this.#checkedAt >= this.#maxStaleness) throw error
    }
  }

  /** Throws when the chain is retired or destroyed. */
  assertChain(): void {
    // No object per call: this runs before every encryption and decryption.
    if (this.#chainRetiredAt !== undefined || this.#chainDestroyedAt !== undefined) {
      assertChainUsable({ chainRetiredAt: this.#chainRetiredAt, chainDestroyedAt: this.#chainDestroyedAt })
    }
  }

  /** Throws when KEK `id` (or the chain) is retired or destroyed. */
  assertKek(id: number): void {
    this.assertChain()
    if (this.#retired.size === 0) return
    const r = this.#retired.get(id)
    if (r?.destroyedAt !== undefined) throw new DestroyedKekError(`KEK ${id} was destroyed: data under it cannot be decrypted`)
    if (r) throw new RetiredKekError(`KEK ${id} is retired: unretireKek(${id}) makes it decrypt again`)
  }

  /** The head's entry for KEK `id`, if it is retired or destroyed. */
  retiredOf(id: number): RetiredKek | undefined {
    return this.#retired.get(id)
  }

  /** Takes in a head read elsewhere (a compare-and-swap this process just made, for instance). */
  take(head: ChainHead | undefined): void {
    this.#opening = undefined
    this.#take(head, this.#checkedAt)
  }

  #take(head: ChainHead | undefined, readAt: number): void {
    this.#checkedAt = Math.max(this.#checkedAt, readAt)
    const before = this.#retired
    this.#retired = new Map((head?.retired ?? []).map((r) => [r.id, r]))
    const wasDestroyed = this.#chainDestroyedAt !== undefined
    this.#chainRetiredAt = head?.chainRetiredAt
    this.#chainDestroyedAt = head?.chainDestroyedAt
    if (this.#chainDestroyedAt !== undefined && !wasDestroyed) this.#hooks.destroyed('all')
    const destroyed = [...this.#retired.values()].filter((r) => r.destroyedAt !== undefined && before.get(r.id)?.destroyedAt === undefined).map((r) => r.id)
    if (destroyed.length > 0) this.#hooks.destroyed(destroyed)
    this.#hooks.primary(head?.primary)
  }
}
