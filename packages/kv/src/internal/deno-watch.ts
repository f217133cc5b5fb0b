/**
 * The head watch of a Deno KV store: every chain subscribed on one store instance shares as few
 * `kv.watch` streams as Deno KV allows. A watch covers at most {@link WATCH_KEYS} keys (Deno KV
 * refuses more: "Too many keys (max 10)"), so chains sit in groups of up to ten, one watch per
 * group; a group's watch is re-created when its set of chains changes, the others keep theirs.
 *
 * `kv.watch` on a local SQLite file sees the writes of this process only (any handle), not those
 * of another process on the same file (checked with Deno 2.9.6: none seen in 25 s). So each
 * group also reads its heads' versionstamps every `pollMs` with one `getMany`. Watch and poll
 * feed one comparison: a chain is called when its head's versionstamp differs from the last one
 * seen, and once when it joins (the head may have changed while the watch started), so neither
 * misses a change nor reports one twice.
 */

/** Deno KV's limit on the keys of one `watch`. */
export const WATCH_KEYS = 10

/** What the watch needs of a Deno KV key and entry. */
export type WatchKey = readonly (string | number | bigint | boolean | Uint8Array)[]
interface WatchEntry {
  readonly versionstamp: string | null
}

/** The part of a `Deno.Kv` the watch uses. */
export interface WatchableKv {
  watch(keys: WatchKey[]): ReadableStream<readonly WatchEntry[]>
  getMany?(keys: WatchKey[]): Promise<readonly WatchEntry[]>
  get(key: WatchKey): Promise<WatchEntry>
}

interface Group {
  readonly chains: string[]
  /** Bumped at every re-creation: a loop of an older generation stops at its next step. */
  generation: number
  reader?: ReadableStreamDefaultReader<readonly WatchEntry[]>
  /** The next poll. */
  pollTimer?: ReturnType<typeof setTimeout>
  /** A reconnection's wait, and what ends it early when the group changes. */
  waitTimer?: ReturnType<typeof setTimeout>
  wake?: () => void
  restartQueued: boolean
}

/** A handle closed under the watch: Deno says BadResource; nothing will ever come from it. */
const isClosed = (error: unknown) => (error as Error | undefined)?.name === 'BadResource'

/** Lets a timer not hold a Node process open (Deno's and browsers' timers are numbers). */
function unref(timer: ReturnType<typeof setTimeout>): ReturnType<typeof setTimeout> {
  ;(timer as { unref?: () => void }).unref?.()
  return timer
}

/**
 * The `watchHead` of one store instance. `headKey` maps a chain to its head's key; `pollMs`
 * (Infinity: no poll) is how often each group reads its heads' versionstamps.
 */
export function denoHeadWatch(kv: WatchableKv, headKey: (chain: string) => WatchKey, pollMs: number): (chain: string, onChange: () => void) => () => void {
  const listeners = new Map<string, Set<() => void>>()
  /** The versionstamp last seen per chain (null: no head); absent: never seen, so call once. */
  const seen = new Map<string, string | null>()
  const groups: Group[] = []
  const groupOf = new Map<string, Group>()

  function notify(chain: string): void {
    for (const onChange of [...(listeners.get(chain) ?? [])]) {
      try {
        onChange()
      } catch {
        // A listener's failure is its own; the others and the watch go on.
      }
    }
  }

  /** Takes in one reading of a group's heads (from the watch or the poll), in the order of `chains`. */
  function compare(g: Group, generation: number, chains: readonly string[], entries: readonly WatchEntry[]): void {
    if (g.generation !== generation) return
    chains.forEach((chain, i) => {
      const stamp = entries[i]?.versionstamp ?? null
      if (!listeners.has(chain) || (seen.has(chain) && seen.get(chain) === stamp)) return
      seen.set(chain, stamp)
      notify(chain)
    })
  }

  function halt(g: Group): void {
    g.generation++
    void g.reader?.cancel().catch(() => {})
    g.reader = undefined
    clearTimeout(g.pollTimer)
    clearTimeout(g.waitTimer)
    g.pollTimer = g.waitTimer = undefined
    g.wake?.()
  }

  async function follow(g: Group, generation: number, chains: readonly string[]): Promise<void> {
    const keys = chains.map(headKey)
    for (let failures = 0; g.generation === generation; failures++) {
      try {
        const reader = kv.watch(keys).getReader()
        g.reader = reader
        for (;;) {
          const { done, value } = await reader.read()
          if (done || g.generation !== generation) break
          failures = 0
          compare(g, generation, chains, value)
        }
      } catch (error) {
        if (isClosed(error)) return
      }
      if (g.generation !== generation) return
      // The stream ended without us (a closed handle ends it too; the next watch call then says
      // so): wait, then watch again. Its first reading shows any change missed meanwhile.
      const wait = Math.min(100 * 2 ** Math.min(failures, 6), 5_000)
      await new Promise<void>((resolve) => {
        g.wake = resolve
        g.waitTimer = unref(setTimeout(resolve, wait))
      })
      g.wake = g.waitTimer = undefined
    }
  }

  function poll(g: Group, generation: number, chains: readonly string[]): void {
    if (!(pollMs < Infinity)) return
    const keys = chains.map(headKey)
    const read = () => (kv.getMany ? kv.getMany(keys) : Promise.all(keys.map((k) => kv.get(k))))
    const next = () => {
      if (g.generation !== generation) return
      g.pollTimer = unref(
        setTimeout(() => {
          g.pollTimer = undefined
          read().then(
            (entries) => {
              compare(g, generation, chains, entries)
              next()
            },
            (error: unknown) => {
              if (!isClosed(error)) next()
            },
          )
        }, pollMs),
      )
    }
    next()
  }

  function restart(g: Group): void {
    halt(g)
    if (g.chains.length === 0) {
      // A group emptied by its last stop() is already gone when its queued restart runs.
      const at = groups.indexOf(g)
      if (at >= 0) groups.splice(at, 1)
      return
    }
    const generation = g.generation
    const chains = [...g.chains]
    void follow(g, generation, chains)
    poll(g, generation, chains)
  }

  /** Many chains joining at once (a process opening its chains) re-create a group's watch once. */
  function queueRestart(g: Group): void {
    if (g.restartQueued) return
    g.restartQueued = true
    queueMicrotask(() => {
      g.restartQueued = false
      restart(g)
    })
  }

  function join(chain: string): void {
    let g = groups.find((x) => x.chains.length < WATCH_KEYS)
    if (!g) groups.push((g = { chains: [], generation: 0, restartQueued: false }))
    g.chains.push(chain)
    groupOf.set(chain, g)
    queueRestart(g)
  }

  function leave(chain: string): void {
    const g = groupOf.get(chain)!
    groupOf.delete(chain)
    seen.delete(chain)
    g.chains.splice(g.chains.indexOf(chain), 1)
    // At once when the group empties, so that nothing of it outlives the last stop().
    if (g.chains.length === 0) restart(g)
    else queueRestart(g)
  }

  return (chain, onChange) => {
    if (typeof onChange !== 'function') return () => {}
    const own = () => onChange() // a distinct entry per call: one subscriber's stop leaves the others
    let set = listeners.get(chain)
    if (!set) {
      listeners.set(chain, (set = new Set()))
      join(chain)
    }
    set.add(own)
    let stopped = false
    return () => {
      if (stopped) return
      stopped = true
      set.delete(own)
      if (set.size === 0 && listeners.get(chain) === set) {
        listeners.delete(chain)
        leave(chain)
      }
    }
  }
}
