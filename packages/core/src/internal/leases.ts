/**
 * The primary KEK and its lease: blocks of uses reserved by compare-and-swap on the chain head,
 * so the usage limit holds across every process that shares a store (invariant 4) with no store
 * write per encryption; and rotation when the primary is used up, too old, missing, or on demand.
 */
import { StoreError, isKmsProxyError } from '../errors.js'
import { encodeHeader } from '../format.js'
import type { ChainHead, ChainRoot, KeyStore, Versioned } from '../store.js'
import type { Bytes } from './bytes.js'
import { assertChainUsable } from './head-view.js'
import { missingPrimary, type Counts, type KekSource, type NewKekMade, type Wrap } from './kek-source.js'
import { randomPublicBytes } from './random.js'

/** The primary KEK as this process holds it, with the lease of uses it reserved. */
export interface Primary {
  readonly id: number
  readonly createdAt: number
  readonly kek: CryptoKey
  /** Header of data under this KEK: the DEK wrap's AAD. */
  readonly header: Bytes
  /** The same with the stream flag: the DEK wrap's AAD for a stream. */
  readonly streamHeader: Bytes
  next: number
  end: number
}

/**
 * A KEK this process created and persisted but has not (knowingly) made primary. `replaces` is
 * the primary of the head it was made to replace: the spare may be proposed again only while the
 * head still names that primary. A compare-and-swap can land and still answer false or throw
 * (a lost answer); once the head has moved on, the spare may have been primary meanwhile and
 * used by others, and installing it again would restart its usage count. No KEK is ever
 * installed twice, so a head that still names `replaces` proves the spare never was primary.
 */
interface Spare extends NewKekMade {
  readonly replaces: number | undefined
}

const CAS_ATTEMPTS = 1000
/**
 * How long a superseded primary stays in use after its successor could not be unwrapped because
 * the root key was unreachable, before the next try: one root-key call (and its timeout) per
 * period, not one per encryption.
 */
const HOLD_MS = 5_000

export interface LeaseSettings {
  readonly name: string
  readonly store: KeyStore
  readonly maxWraps: number
  readonly maxAge: number
  readonly leaseSize: number
  /** Reads the chain head (through the chain's view of it, so that every read counts as a check). */
  readonly readHead: () => Promise<Versioned<ChainHead> | undefined>
  /** The head read at open, once, if still good to start from (see HeadView.first). */
  readonly firstHead: () => { head: Versioned<ChainHead> | undefined } | undefined
}

export class Leases {
  readonly #s: LeaseSettings
  readonly #keks: KekSource
  readonly #counts: Counts
  #primary: Primary | undefined
  #refreshing: Promise<void> | undefined
  #spare: Spare | undefined
  /** Primaries this process held and saw replaced (bounded): see supersededBy. */
  readonly #replaced = new Set<number>()
  /** A head named a newer primary: the next use moves to it (see acquire). */
  #superseded = false
  #supersedings = 0
  /** Until when a superseded primary stays in use because its successor could not be unwrapped. */
  #holdUntil = 0

  constructor(settings: LeaseSettings, keks: KekSource, counts: Counts) {
    this.#s = settings
    this.#keks = keks
    this.#counts = counts
  }

  /** The primary as this process holds it, if any (no store call). */
  get primary(): Primary | undefined {
    return this.#primary
  }

  /** The head's primary and what is left of it; one store read, no root-key call. */
  async status(): Promise<{ id: number; createdAt: number; ageLeftMs: number; usesLeft: number; loaded: boolean } | undefined> {
    const { maxWraps, maxAge } = this.#s
    const head = await this.#s.readHead()
    if (!head) return undefined
    const h = head.value
    const mine = this.#primary?.id === h.primary ? this.#primary : undefined
    return {
      id: h.primary,
      createdAt: h.primaryCreatedAt,
      ageLeftMs: Math.max(0, h.primaryCreatedAt + maxAge - Date.now()),
      usesLeft: Math.max(0, maxWraps - h.leased) + (mine ? mine.end - mine.next : 0),
      loaded: mine !== undefined,
    }
  }

  expired(p: Primary): boolean {
    return Date.now() - p.createdAt >= this.#s.maxAge
  }

  /** Whether a head named a newer primary than the one this process holds (it moves at its next use). */
  get superseded(): boolean {
    return this.#superseded
  }

  /** A head named a newer primary: the next use leases from it instead (the old lease's uses stay counted). */
  supersede(): void {
    this.#superseded = true
    this.#supersedings++
  }

  /** The next use tries the superseded primary's successor again at once (an explicit refresh). */
  retrySwitch(): void {
    this.#holdUntil = 0
  }

  /** Reserves one use of the primary KEK, renewing the lease or rotating when needed. */
  async acquire(): Promise<Primary> {
    let refreshed = false
    for (;;) {
      const p = this.#primary
      if (p && this.#superseded && !refreshed && Date.now() >= this.#holdUntil) {
        try {
          await (this.#refreshing ?? this.#startRefresh(false))
          refreshed = true
          continue
        } catch (error) {
          // The new primary could not be unwrapped because the root key is unreachable: rather
          // than stop encrypting, this process goes on under the KEK it holds, within that KEK's
          // lease and age, and tries again after HOLD_MS. Anything else fails the call: a root
          // this process lacks, a store failure, a lease or an age used up.
          const unreachable = isKmsProxyError(error) && error.code === 'ERR_ROOT_KEY' && error.retryable
          if (!unreachable || this.#primary !== p || p.next >= p.end || this.expired(p)) throw error
          this.#holdUntil = Date.now() + HOLD_MS
        }
      }
      // Right after a refresh the primary is used even if already past its age, so that a
      // tiny maxKekAgeMs cannot make the loop rotate forever.
      if (p && p.next < p.end && (refreshed || !this.expired(p))) {
        p.next++
        this.#keks.entries.get(p.id)!.wraps++
        return p
      }
      await (this.#refreshing ?? this.#startRefresh(false))
      refreshed = true
    }
  }

  /** Up to `n` more uses of `p` from its current lease, without a store call; returns how many. */
  take(p: Primary, n: number): number {
    let taken = 0
    while (taken < n && p.next < p.end) {
      p.next++
      taken++
    }
    this.#keks.entries.get(p.id)!.wraps += taken
    return taken
  }

  /** A new primary now, after any refresh in flight. */
  async rotate(): Promise<Primary> {
    while (this.#refreshing) await this.#refreshing.catch(() => {})
    await this.#startRefresh(true)
    return this.#primary!
  }

  /** Runs #refresh as the one refresh in flight; concurrent callers await it instead of starting their own. */
  #startRefresh(force: boolean): Promise<void> {
    const supersedings = this.#supersedings
    const run: Promise<void> = this.#refresh(force)
      .then(() => {
        // Up to date with the head read: unless another head named a newer primary meanwhile.
        if (this.#supersedings === supersedings) this.#superseded = false
      })
      .finally(() => {
        if (this.#refreshing === run) this.#refreshing = undefined
      })
    this.#refreshing = run
    return run
  }

  /**
   * Brings #primary up to date with a fresh lease: reads the head; reserves a block of uses by
   * compare-and-swap; rotates when the primary is used up, too old, missing, or `force`.
   */
  async #refresh(force: boolean): Promise<void> {
    const { name, store, maxWraps, maxAge, leaseSize } = this.#s
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      // Lost a compare-and-swap: back off with full jitter (up to 2^attempt ms, at most 64 ms)
      // so that processes contending on one head do not retry in lockstep.
      if (attempt > 0) await new Promise((r) => setTimeout(r, (randomPublicBytes(1)[0]! * Math.min(64, 2 ** attempt)) / 256))
      const opened = attempt === 0 && !force ? this.#s.firstHead() : undefined
      const head = opened ? opened.head : await this.#s.readHead()
      const h = head?.value
      assertChainUsable(h)
      // A spare made before the root set changed may lack a wrap under a root added since.
      if (this.#spare && (this.#spare.replaces !== h?.primary || !covers(this.#spare, this.#keks.chainRoots(h)))) {
        await this.#dropSpare(this.#spare, this.#keks.chainRoots(h))
        this.#spare = undefined
      }
      const mustRotate = force || h === undefined || h.leased >= maxWraps || Date.now() - h.primaryCreatedAt >= maxAge
      if (!mustRotate) {
        if (await this.#leaseFrom(head!, h)) return
        continue
      }
      const spare = (this.#spare ??= { ...(await this.#keks.createKek(h)), replaces: h?.primary })
      const take = Math.min(leaseSize, maxWraps)
      const next: ChainHead = { ...(h ?? this.#newChainRoots()), primary: spare.id, primaryCreatedAt: spare.createdAt, leased: take }
      if (await this.#keks.storeCall('update the chain head', () => store.casHead(name, head?.version, next))) {
        this.#spare = undefined
        // The head names its KEK now (a brand-new chain: its first roots define it).
        this.#keks.markProved(spare.wraps.map((w) => w.root))
        this.#counts.rotations++
        this.#setPrimary(spare.id, spare.createdAt, spare.kek, spare.wraps, 0, take)
        return
      }
    }
    throw new StoreError('too much contention on the chain head; gave up', { retryable: true })
  }

  async #leaseFrom(head: Versioned<ChainHead>, h: ChainHead): Promise<boolean> {
    const { name, store, maxWraps, leaseSize } = this.#s
    const current = this.#primary
    let loaded: { kek: CryptoKey; wraps: Wrap[]; createdAt: number } | undefined
    if (current?.id !== h.primary) {
      // Another process rotated: load its KEK (one root unwrap, cached) BEFORE reserving uses,
      // so that a root key that is down costs no uses: a lease taken first and then not used
      // would count as spent, and a few failed encrypts could use up the primary for everyone.
      const stored = await this.#keks.loadStored(h.primary)
      if (!stored) throw missingPrimary()
      // What data under it embeds: its wrap under each root that is not leaving, in the head's order.
      const roots = this.#keks.chainRoots(h).filter((r) => r.state !== 'removing')
      const wraps: Wrap[] = []
      for (const r of roots) {
        const record = stored.records.find((x) => (x.root ?? 'default') === r.name) ?? (roots.length === 1 ? stored.records[0] : undefined)
        if (record) wraps.push({ root: r.name, wrapped: record.wrapped })
      }
      loaded = { kek: stored.kek, wraps, createdAt: h.primaryCreatedAt }
    }
    const take = Math.min(leaseSize, maxWraps - h.leased)
    const next: ChainHead = { ...h, leased: h.leased + take }
    if (!(await this.#keks.storeCall('update the chain head', () => store.casHead(name, head.version, next)))) return false
    if (!loaded) {
      // Same KEK, new block of uses: keep the object, so the prepared pool stays valid.
      current!.next = h.leased
      current!.end = h.leased + take
      return true
    }
    this.#setPrimary(h.primary, loaded.createdAt, loaded.kek, loaded.wraps, h.leased, h.leased + take)
    return true
  }

  /**
   * A spare no data names is left as it is (invariant 9), except its wraps under roots the head
   * no longer lists or is removing: a removed root must not keep opening a KEK made as it left.
   */
  async #dropSpare(spare: Spare, roots: readonly ChainRoot[]): Promise<void> {
    const { name, store } = this.#s
    if (typeof store.deleteKekWrap !== 'function') return
    for (const w of spare.wraps) {
      if (roots.some((r) => r.name === w.root && r.state !== 'removing')) continue
      await this.#keks.storeCall('delete a KEK wrap', () => store.deleteKekWrap!(name, spare.id, w.root)).catch(() => {})
    }
  }

  /**
   * The roots field of a brand-new chain's head: the roots this process holds, unless that is
   * one root called 'default' (a head without the field, as before chains had several roots).
   */
  #newChainRoots(): { roots?: readonly ChainRoot[] } {
    const roots = this.#keks.chainRoots(undefined)
    return roots.length === 1 && roots[0]!.name === 'default' ? {} : { roots }
  }

  /**
   * Forgets the primary, so the next use loads it again from the head: after a root change, data
   * on the embedded store must carry the primary's wraps under the new set of roots.
   */
  reload(): void {
    this.#primary = undefined
  }

  /**
   * Whether a head naming `id` as primary supersedes this process's primary: not when `id` is
   * a primary this process already saw replaced, which only a stale read can name (a store that
   * is eventually consistent), since no KEK is ever made primary twice.
   */
  supersededBy(id: number | undefined): boolean {
    const current = this.#primary
    return current !== undefined && current.id !== id && (id === undefined || !this.#replaced.has(id))
  }

  #setPrimary(id: number, createdAt: number, kek: CryptoKey, wraps: Wrap[], next: number, end: number): void {
    const before = this.#primary?.id
    if (before !== undefined && before !== id) {
      this.#replaced.add(before)
      // A bound for a process that lives through many rotations: old entries matter least.
      if (this.#replaced.size > 1024) this.#replaced.delete(this.#replaced.values().next().value as number)
    }
    this.#holdUntil = 0
    const embedded = this.#s.store.embedsKeks ? wraps : undefined
    this.#primary = {
      id,
      createdAt,
      kek,
      header: encodeHeader(id, embedded),
      streamHeader: encodeHeader(id, embedded, true),
      next,
      end,
    }
  }
}

/**
 * Whether a KEK fits the head's roots: a wrap under every active root, and none under a root
 * being removed or gone (a KEK made before a removal began would let the removed root open
 * data written after it).
 */
function covers(made: NewKekMade, roots: readonly ChainRoot[]): boolean {
  const live = (name: string) => roots.some((r) => r.name === name && r.state !== 'removing')
  return roots.every((r) => r.state !== 'active' || made.wraps.some((w) => w.root === r.name)) && made.wraps.every((w) => live(w.root))
}
