/**
 * A chain's roots after day one: adding one, removing one, replacing one (invariant 8). Each is a
 * short sequence of head states (`adding`, `active`, `removing`), each step idempotent, so that a
 * process killed at any point leaves every KEK readable by a root of the chain, and running the
 * same change again finishes it. Other processes keep encrypting and decrypting meanwhile: a
 * rotation during a change wraps its KEK under the roots the head lists, and the change lists the
 * KEKs again until a pass finds nothing left to do.
 */
import { LimitError, RootKeyError, StoreError } from '../errors.js'
import { checkRootKey, checkRootName, type RootChangeReport, type RootInfo } from '../options.js'
import type { RootKey } from '../root-key.js'
import { DEFAULT_ROOT, rootOf, type ChainHead, type ChainRoot, type KekRecord, type Versioned } from '../store.js'
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

  /** A chain opened with `rootKey` names its one root after the head before it gains or loses one. */
  #bind(head: ChainHead | undefined): void {
    if (!this.#keks.single) return
    const live = this.#keks.chainRoots(head).filter((r) => r.state !== 'removing')
    if (live.length !== 1) throw new RootKeyError(`this chain has ${live.length} roots: open it with roots: { … } naming them`)
    this.#keks.bindSingle(live[0]!.name)
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
    this.#bind(head?.value)
    const existing = keks.chainRoots(head?.value).find((r) => r.name === name)
    if (!head) {
      // No KEK yet: the first rotation wraps its KEK under every root this process holds.
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
    this.#bind(head.value)
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
    let from = options.from
    if (from === undefined) {
      // An unfinished change resumes: its old root is the one being removed.
      const removing = roots.filter((r) => r.state === 'removing')
      const live = roots.filter((r) => r.state !== 'removing')
      if (removing.length === 1) from = removing[0]!.name
      else if (live.length === 1) from = live[0]!.name
      else throw new TypeError('options.from: this chain has several roots: say which one to replace')
    }
    checkRootName(from, 'options.from')
    if (!roots.some((r) => r.name === from)) throw new TypeError(`options.from: this chain has no root named "${from}"`)
    const name = options.name ?? nextName(from)
    checkRootName(name, 'options.name')
    if (name === from) throw new TypeError('options.name: the new root needs a name of its own')
    const added = await this.add(name, root)
    const removed = await this.remove(from)
    return {
      name,
      keks: Math.max(added.keks, removed.keks),
      wrapped: added.wrapped + removed.wrapped,
      deleted: removed.deleted,
      rootKeyUnwraps: added.rootKeyUnwraps + removed.rootKeyUnwraps,
      rootKeyWraps: added.rootKeyWraps + removed.rootKeyWraps,
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
