/**
 * A chain's roots after day one: adding one, removing one, replacing one (invariant 8). Each is a
 * short sequence of head states (`adding`, `active`, `removing`), each step idempotent, so that a
 * process killed at any point leaves every KEK readable by a root of the chain, and running the
 * same change again finishes it. Other processes keep encrypting and decrypting meanwhile: a
 * rotation during a change wraps its KEK under the roots the head lists, and the change lists the
 * KEKs again until a pass finds nothing left to do.
 */
import { LimitError, RootKeyError, StoreError } from '../errors.js'
import { checkRootKey, type RootChangeReport, type RootInfo } from '../options.js'
import type { RootKey } from '../root-key.js'
import { DEFAULT_ROOT, checkRootName, rootOf, type ChainHead, type ChainRoot, type KekRecord, type Versioned } from '../store.js'
import type { Counts, KekSource } from './kek-source.js'

const ATTEMPTS = 1000

export class RootChanges {
  readonly #keks: KekSource
  readonly #counts: Counts
  readonly #changed: () => void

  /** `changed` runs after a change lands: data on the embedded store must carry the new wraps. */
  constructor(keks: KekSource, counts: Counts, changed: () => void) {
    this.#keks = keks
    this.#counts = counts
    this.#changed = changed
  }

  async #head(): Promise<Versioned<ChainHead> | undefined> {
    const k = this.#keks
    return k.storeCall('read the chain head', () => k.store.getHead(k.chainName))
  }

  async #cas(head: Versioned<ChainHead>, roots: readonly ChainRoot[]): Promise<boolean> {
    const k = this.#keks
    const next: ChainHead = { ...head.value, roots }
    return k.storeCall('update the chain head', () => k.store.casHead(k.chainName, head.version, next))
  }

  /** Changes the head's list of roots by `edit` (undefined: leave it) until a compare-and-swap lands. */
  async #editRoots(edit: (roots: ChainRoot[]) => ChainRoot[] | undefined): Promise<void> {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const head = await this.#head()
      if (!head) throw new StoreError('the chain head disappeared during a root change', { retryable: true })
      const next = edit(this.#keks.chainRoots(head.value).map((r) => ({ ...r })))
      if (!next || (await this.#cas(head, next))) return
    }
    throw new StoreError('too much contention on the chain head; gave up', { retryable: true })
  }

  /**
   * Before a change edits the head, this process proves it holds a root of the chain: its root
   * unwraps a KEK of that root (normally the primary, cached: no call). A chain opened with
   * `rootKey` then names its one root after the root it proved to be. So a process holding a
   * root the chain no longer has fails here, with ERR_ROOT_KEY, having written nothing.
   */
  async #proveHeld(head: ChainHead | undefined): Promise<string | undefined> {
    const keks = this.#keks
    if (!head) return undefined
    // A root being removed counts: an unfinished change run again holds the root it removes.
    const roots = keks.chainRoots(head)
    const active = [...roots.filter((r) => r.state === 'active'), ...roots.filter((r) => r.state === 'removing')]
    let firstError: unknown
    for (const r of active) {
      if (!keks.rootFor(r.name)) continue
      try {
        await keks.proveHeld(r.name, head.primary)
        if (keks.single) keks.bindSingle(r.name)
        return r.name
      } catch (error) {
        firstError ??= error
      }
    }
    throw firstError ?? new RootKeyError(`this process holds none of the chain's roots (${active.map((r) => r.name).join(', ')})`)
  }

  #needMultiRootStore(what: string): void {
    if (!this.#keks.multiRootStore) throw new TypeError(`${what}: this store keeps one root per KEK (it has no getKekWraps and deleteKekWrap)`)
  }

  #report(name: string): { report: RootChangeReport; done: () => RootChangeReport } {
    const [wraps, unwraps] = [this.#counts.rootKeyWraps, this.#counts.rootKeyUnwraps]
    const report: RootChangeReport = { name, keks: 0, wrapped: 0, deleted: 0, rootKeyUnwraps: 0, rootKeyWraps: 0 }
    return {
      report,
      done: () => {
        report.rootKeyWraps = this.#counts.rootKeyWraps - wraps
        report.rootKeyUnwraps = this.#counts.rootKeyUnwraps - unwraps
        return report
      },
    }
  }

  async add(name: string, root: RootKey): Promise<RootChangeReport> {
    checkRootName(name, 'name')
    checkRootKey(root, 'root')
    if (typeof root.wrapKek !== 'function') throw new TypeError('root: this root cannot wrap an existing KEK (it has no wrapKek)')
    this.#needMultiRootStore('addRoot')
    const { report, done } = this.#report(name)
    const keks = this.#keks
    const head = await this.#head()
    await this.#proveHeld(head?.value)
    const existing = keks.chainRoots(head?.value).find((r) => r.name === name)
    if (!head) {
      // No KEK yet: the first rotation wraps its KEK under every root this process holds.
      if (keks.single) keks.bindSingle(DEFAULT_ROOT)
      if (keks.held.has(name) && keks.held.get(name) !== root) throw new TypeError(`name: this chain already has a root named "${name}"`)
      keks.hold(name, root)
      return done()
    }
    if (existing?.state === 'removing') throw new RootKeyError(`the root "${name}" is being removed: run removeRoot("${name}") to finish first`)
    keks.hold(name, root)
    if (existing?.state !== 'active') {
      if (!existing) await this.#editRoots((roots) => (roots.some((r) => r.name === name) ? undefined : [...roots, { name, kind: root.kind, state: 'adding' }]))
      let verified = false
      for (let attempt = 0; ; attempt++) {
        if (attempt === ATTEMPTS) throw new StoreError('too much contention on the chain head; gave up', { retryable: true })
        const current = await this.#head()
        const entry = current && keks.chainRoots(current.value).find((r) => r.name === name)
        if (!current || !entry) throw new RootKeyError(`the root "${name}" was removed by another process during addRoot`)
        if (entry.state === 'active') break
        const groups = await this.#groups()
        report.keks = groups.size
        if (!verified) {
          // A run cut short, or another process adding the same name: the root must open the
          // wraps already under its name, so that a second, different root (a mistyped
          // passphrase) cannot split the KEKs between two keys under one name.
          const mine = [...groups.values()].flat().find((r) => rootOf(r) === name)
          if (mine) await keks.proveWrap(name, root, mine.wrapped, mine.id)
          verified = mine !== undefined
        }
        let missing = 0
        for (const [id, records] of groups) {
          if (records.some((r) => rootOf(r) === name)) continue
          missing++
          const { kek } = await keks.unwrapForRewrap(id, records, name)
          const wrapped = await keks.wrapUnder(name, root, kek, id)
          // The new root proves itself on its first wrap, before anything is written under it.
          if (!verified) await keks.proveWrap(name, root, wrapped, id)
          verified = true
          if (await this.#put({ id, createdAt: records[0]!.createdAt, rootKind: root.kind, wrapped, ...rootField(name) })) report.wrapped++
          else {
            // Another process wrote this KEK's wrap under the name first: it must be this root's.
            const theirs = (await keks.wrapsOf(id)).find((r) => rootOf(r) === name)
            if (theirs) await keks.proveWrap(name, root, theirs.wrapped, id)
          }
        }
        if (missing === 0 && (await this.#cas(current, keks.chainRoots(current.value).map((r) => (r.name === name ? { ...r, state: 'active' as const } : r))))) break
      }
      if (verified) keks.markProved([name])
    }
    this.#changed()
    return done()
  }

  async remove(name: string): Promise<RootChangeReport> {
    checkRootName(name, 'name')
    const { report, done } = this.#report(name)
    const keks = this.#keks
    const head = await this.#head()
    if (!head) {
      if (!keks.held.has(name) || keks.single) throw new TypeError(`name: this chain has no root named "${name}"`)
      if (keks.held.size === 1) throw lastRoot(name)
      keks.held.delete(name)
      return done()
    }
    await this.#proveHeld(head.value)
    const entry = keks.chainRoots(head.value).find((r) => r.name === name)
    if (!entry) return done() // removed already: running the change again finishes nothing more
    this.#needMultiRootStore('removeRoot')
    const stays = (roots: readonly ChainRoot[]) => roots.filter((r) => r.name !== name && r.state === 'active')
    await this.#editRoots((roots) => {
      if (stays(roots).length === 0) throw lastRoot(name)
      return roots.some((r) => r.name === name && r.state !== 'removing') ? roots.map((r) => (r.name === name ? { ...r, state: 'removing' as const } : r)) : undefined
    })
    const current = await this.#head()
    const staying = new Set(stays(keks.chainRoots(current?.value)).map((r) => r.name))
    // Every KEK keeps a wrap under a root that stays before any wrap under this one goes.
    const groups = await this.#groups()
    report.keks = groups.size
    for (const [id, records] of groups) {
      if (records.some((r) => staying.has(rootOf(r)))) continue
      const target = [...staying].find((n) => typeof keks.held.get(n)?.wrapKek === 'function')
      if (target === undefined) {
        throw new RootKeyError(`a KEK has no wrap under a root that stays, and this process holds none of them to give it one: nothing was deleted`)
      }
      const root = keks.held.get(target)!
      const { kek } = await keks.unwrapForRewrap(id, records, target)
      const wrapped = await keks.wrapUnder(target, root, kek, id)
      if (await this.#put({ id, createdAt: records[0]!.createdAt, rootKind: root.kind, wrapped, ...rootField(target) })) report.wrapped++
    }
    report.deleted += await this.#deleteWraps(name, groups)
    await this.#editRoots((roots) => (roots.some((r) => r.name === name) ? roots.filter((r) => r.name !== name) : undefined))
    // A process that read the head before the removal began may have written a wrap under this
    // root since the first sweep: a second sweep after the head dropped it.
    report.deleted += await this.#deleteWraps(name, await this.#groups())
    this.#changed()
    return done()
  }

  async change(root: RootKey, options: { from?: string; name?: string } = {}): Promise<RootChangeReport> {
    if (typeof options !== 'object' || options === null) throw new TypeError('options: expected an object')
    checkRootKey(root, 'root')
    const head = await this.#head()
    const roots = this.#keks.chainRoots(head?.value)
    const inState = (state: ChainRoot['state']) => roots.filter((r) => r.state === state)
    const [removing, active, adding] = [inState('removing'), inState('active'), inState('adding')]
    const { report, done } = this.#report(options.name ?? '')
    let proved: string | undefined
    let unproved: unknown
    try {
      proved = await this.#proveHeld(head?.value)
    } catch (error) {
      unproved = error
    }
    let from = options.from
    if (from === undefined) {
      // An unfinished change resumes: its old root is the one being removed; or the one active
      // root beside one being added; or, with two active, the one this process holds.
      if (removing.length === 1) from = removing[0]!.name
      else if (active.length === 1) from = active[0]!.name
      else if (active.length === 2 && proved !== undefined && options.name === undefined) from = proved
      else throw new TypeError('options.from: this chain has several roots: say which one to replace')
    }
    checkRootName(from, 'options.from')
    if (!roots.some((r) => r.name === from)) {
      // Run again after it finished, with the names given: the new root is the chain's already.
      const done = options.name !== undefined && head && roots.some((r) => r.name === options.name && r.state === 'active')
      if (done && (await this.#opens(root, options.name!, head.value.primary))) return { ...this.#report(options.name!).done() }
      throw new TypeError(`options.from: this chain has no root named "${from}"`)
    }
    const other = active.length === 2 && removing.length === 0 ? active.find((r) => r.name !== from) : undefined
    const name = options.name ?? (adding.length === 1 && adding[0]!.name !== from ? adding[0]!.name : (other?.name ?? nextName(from)))
    checkRootName(name, 'options.name')
    if (name === from) throw new TypeError('options.name: the new root needs a name of its own')
    report.name = name
    if (unproved !== undefined) {
      // Run again after it finished (a process killed before it returned): the new root is the
      // chain's root already, so there is nothing left to do.
      if (head && (await this.#opens(root, from, head.value.primary))) return { ...done(), name: from }
      // Run again after the old root's last wrap was deleted: the new root, active and opening
      // its own wrap, finishes the removal (which needs no root: only the head changes).
      const live = roots.some((r) => r.name === name && r.state === 'active')
      if (!head || !live || !(await this.#opens(root, name, head.value.primary))) throw unproved
      this.#keks.adopt(name, root)
    }
    const added = await this.add(name, root)
    const removed = await this.remove(from)
    report.keks = Math.max(added.keks, removed.keks)
    report.wrapped = added.wrapped + removed.wrapped
    report.deleted = removed.deleted
    return done()
  }

  /** Whether `root` unwraps the primary's wrap under the chain root `name` (one call). */
  async #opens(root: RootKey, name: string, primary: number): Promise<boolean> {
    const record = (await this.#keks.wrapsOf(primary)).find((r) => rootOf(r) === name)
    if (!record) return false
    try {
      await this.#keks.proveWrap(name, root, record.wrapped, primary)
      return true
    } catch {
      return false
    }
  }

  async list(): Promise<RootInfo[]> {
    const head = await this.#head()
    return this.#keks.chainRoots(head?.value).map((r) => ({ name: r.name, kind: r.kind, state: r.state, held: this.#keks.rootFor(r.name) !== undefined }))
  }

  /** Every KEK's records, by id, oldest KEK first. */
  async #groups(): Promise<Map<number, KekRecord[]>> {
    const k = this.#keks
    const all = await k.storeCall('list the KEKs', () => k.store.listKeks(k.chainName))
    all.sort((x, y) => x.createdAt - y.createdAt || x.id - y.id)
    const groups = new Map<number, KekRecord[]>()
    for (const r of all) groups.set(r.id, [...(groups.get(r.id) ?? []), r])
    return groups
  }

  #put(record: KekRecord): Promise<boolean> {
    const k = this.#keks
    return k.storeCall('write a KEK', () => k.store.putKekIfAbsent(k.chainName, record))
  }

  async #deleteWraps(name: string, groups: Map<number, KekRecord[]>): Promise<number> {
    const k = this.#keks
    let deleted = 0
    for (const [id, records] of groups) {
      if (!records.some((r) => rootOf(r) === name)) continue
      await k.storeCall('delete a KEK wrap', () => k.store.deleteKekWrap!(k.chainName, id, name))
      deleted++
    }
    return deleted
  }
}

/** `root` as a record carries it: none for 'default', where records were before chains had several roots. */
function rootField(name: string): { root?: string } {
  return name === DEFAULT_ROOT ? {} : { root: name }
}

/** The default name of the root that replaces `from`: 'default' → 'default-2' → 'default-3'. */
export function nextName(from: string): string {
  const m = /^(.*)-(\d{1,6})$/.exec(from)
  const next = m ? `${m[1]}-${Number(m[2]) + 1}` : `${from}-2`
  if (next.length > 64) throw new TypeError('options.name: give the new root a name (the one derived from options.from is too long)')
  return next
}

function lastRoot(name: string): LimitError {
  return new LimitError(`the root "${name}" is the chain's last root: a chain keeps at least one (add another first)`)
}
