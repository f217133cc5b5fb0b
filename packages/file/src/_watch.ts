/**
 * Internal: `watchHead` for the file store, by polling the file.
 *
 * A file has no push that Node, Bun and Deno share (`fs.watch` misses renames on some systems
 * and holds a handle per watcher), so one timer per store instance looks at the file's identity:
 * inode, size, and modification and change times in nanoseconds. Every write renames a new file
 * over the old one, so each write gives a new inode. Only when the identity changed is the file
 * read, and only the chains whose head version differs from the one last seen are told: a KEK
 * record written, or another chain's head, costs the watching chains nothing. A missed change
 * (an inode number reused within one interval with the same size and times) is caught by the
 * chain's own `maxStalenessMs`.
 *
 * The timer is `unref()`ed (Deno: `Deno.unrefTimer`), so a watching chain never keeps a process
 * alive, and it stops when the last watcher stops.
 */
import { stat } from 'node:fs/promises'

/** What a store instance's watch offers its methods. */
export interface HeadWatch {
  /** `KeyStore.watchHead`. */
  watch(chain: string, onChange: () => void): () => void
  /** This store instance wrote head `version` of `chain`: its watchers are told at once. */
  wrote(chain: string, version: string): void
}

/** A head version, `null` for a chain without a head. */
type Seen = string | null

/**
 * @param path - the store file.
 * @param intervalMs - time between two looks at the file.
 * @param versions - reads the file: each chain's head version (`null` when it has none).
 */
export function headWatch(path: string, intervalMs: number, versions: () => Promise<(chain: string) => Seen>): HeadWatch {
  const listeners = new Map<string, Set<() => void>>()
  /** The head version each watched chain had when the file was last read; absent: not read yet. */
  const seen = new Map<string, Seen>()
  let identity: string | undefined
  let timer: ReturnType<typeof setTimeout> | undefined
  let looking = false
  let again = false

  const tell = (chain: string) => {
    for (const onChange of listeners.get(chain) ?? []) {
      try {
        onChange()
      } catch {
        // A watcher's failure is its own; the others are still told.
      }
    }
  }

  const schedule = () => {
    if (timer !== undefined || listeners.size === 0) return
    timer = setTimeout(() => {
      timer = undefined
      void look()
    }, intervalMs)
    unrefTimer(timer)
  }

  async function look(): Promise<void> {
    if (looking) {
      again = true
      return
    }
    looking = true
    try {
      const now = await identityOf(path)
      const unread = [...listeners.keys()].some((chain) => !seen.has(chain))
      if (now === identity && !unread) return
      let versionOf: (chain: string) => Seen
      try {
        versionOf = await versions()
      } catch {
        // Unreadable or not a store (being replaced by hand, a permission changed): a hint to
        // every watching chain, whose own read reports what is wrong. Once per identity.
        identity = now
        for (const chain of listeners.keys()) if (seen.has(chain)) tell(chain)
        return
      }
      identity = now
      for (const chain of [...listeners.keys()]) {
        const version = versionOf(chain)
        const before = seen.get(chain)
        seen.set(chain, version)
        if (before !== undefined && before !== version) tell(chain)
      }
    } finally {
      looking = false
      if (again) {
        again = false
        void look()
      } else schedule()
    }
  }

  return {
    watch(chain, onChange) {
      let set = listeners.get(chain)
      if (!set) listeners.set(chain, (set = new Set()))
      // A distinct entry per call, so that one watcher's stop leaves the others.
      const own = () => onChange()
      set.add(own)
      // Read the new chain's head version now, not an interval later: a change after this read
      // is then seen as one.
      if (!seen.has(chain)) void look()
      let stopped = false
      return () => {
        if (stopped) return
        stopped = true
        set.delete(own)
        if (set.size > 0 || listeners.get(chain) !== set) return
        listeners.delete(chain)
        seen.delete(chain)
        if (listeners.size > 0) return
        if (timer !== undefined) clearTimeout(timer)
        timer = undefined
        identity = undefined
      }
    },
    wrote(chain, version) {
      if (!listeners.has(chain)) return
      if (seen.has(chain)) seen.set(chain, version)
      // After the write, never inside it, as a store that pushes does.
      setTimeout(() => tell(chain), 0)
    },
  }
}

/** The file's identity (`absent` when there is none, `error:CODE` when it cannot be looked at). */
async function identityOf(path: string): Promise<string> {
  try {
    const s = await stat(path, { bigint: true })
    return `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`
  } catch (error) {
    const code = (error as { code?: unknown } | null)?.code
    return code === 'ENOENT' ? 'absent' : `error:${String(code)}`
  }
}

function unrefTimer(timer: ReturnType<typeof setTimeout>): void {
  if (typeof timer === 'object' && timer !== null && typeof (timer as { unref?: unknown }).unref === 'function') (timer as { unref(): void }).unref()
  else (globalThis as { Deno?: { unrefTimer?(id: number): void } }).Deno?.unrefTimer?.(timer as unknown as number)
}
