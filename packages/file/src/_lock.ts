/**
 * Internal: lock files that stay exclusive through takeover and release, and a crash-safe
 * whole-file replace, on `node:fs` alone so that Node, Bun and Deno share one protocol. (Only
 * Deno has an OS file lock; a lock that only some of the processes sharing a file honour
 * excludes nothing, so none is used.)
 *
 * The protocol, for a lock file L:
 *
 * - Acquire. Write a fresh random token to a private file (created exclusively, random name),
 *   set its mtime to now, and `link` it to L. `link` fails if L exists, so at most one process
 *   holds L, and L never exists without its whole token (a waiter never reads half a lock).
 *   While held, the holder touches its own inode (through its open handle, never by path) every
 *   `staleMs / 4`, so a live holder's lock does not age even when its disk is slow.
 * - A lock whose mtime is older than `staleMs` was left by a crashed process. A waiter that sees
 *   one remembers its identity (inode and content, read through one handle), takes the breaker
 *   lock L.break (by this same protocol, so a crashed breaker is itself taken over), reads L
 *   again, and unlinks it only if it is still that same stale lock. Then it competes for L like
 *   everyone else. Two waiters that saw the same stale lock take the breaker one after the other;
 *   the second finds a different lock (or none) and leaves it alone. Before this protocol both
 *   deleted, the second deleting the first's new lock, and both wrote.
 * - Commit and release. The holder takes the breaker, checks that L still holds its token,
 *   renames its staged file over the data, fsyncs the folder, unlinks L, and drops the breaker.
 *   Only a breaker holder unlinks someone else's lock, so no takeover can fall between the check
 *   and the unlink; a holder whose lock was taken over (it stalled past `staleMs`) writes nothing
 *   and fails.
 *
 * What remains a lease, as with any lock that a crash must not wedge: a process whose event loop
 * stalls for more than about 3/4 of `staleMs` while holding the breaker can see its breaker
 * taken over. Every lock age is the file system's mtime against this machine's clock.
 */
import { link, open, stat, unlink, type FileHandle } from 'node:fs/promises'
import { dirname } from 'node:path'
import { StoreError, toHex } from '@kms-proxy/core'

export interface LockOptions {
  /** A lock file not touched for this long was left by a crashed process. */
  readonly staleMs: number
  /** Give up waiting for a lock after this long. */
  readonly timeoutMs: number
}

/** A lock file this process made. */
export interface HeldLock {
  readonly path: string
  /** True once release() ran. */
  readonly released: boolean
  /** True while the file at `path` is still the one this holder linked there. */
  owned(): Promise<boolean>
  /** Stops the heartbeat and unlinks the lock if it is still this holder's. Idempotent. */
  release(): Promise<void>
}

const errorCode = (error: unknown) => (error as { code?: unknown } | null)?.code
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** 128 random bits in hex, from the platform CSPRNG: names nobody can plant a file at in advance. */
export function randomName(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(16)))
}

/**
 * Creates `path` with O_CREAT | O_EXCL: fails with EEXIST if anything is there, a symlink
 * included, instead of following it.
 */
export async function createExclusive(path: string, data: string, mode = 0o600): Promise<FileHandle> {
  const handle = await open(path, 'wx', mode)
  try {
    await handle.writeFile(data)
    return handle
  } catch (error) {
    await handle.close()
    await unlink(path).catch(() => {})
    throw error
  }
}

/** Identity (inode and content, through one handle, so both are of one file) and age of a lock. */
async function inspect(path: string): Promise<{ identity: string; mtimeMs: number } | undefined> {
  let handle: FileHandle
  try {
    handle = await open(path, 'r')
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined
    throw error
  }
  try {
    const { ino, mtimeMs } = await handle.stat()
    return { identity: `${ino}:${await handle.readFile('utf8')}`, mtimeMs }
  } finally {
    await handle.close()
  }
}

const isStale = (seen: { mtimeMs: number }, options: LockOptions) => Date.now() - seen.mtimeMs > options.staleMs

/** Takes `path` (see the protocol above); throws a retryable StoreError at `deadline`. */
export async function acquireLock(path: string, options: LockOptions, deadline = Date.now() + options.timeoutMs): Promise<HeldLock> {
  const token = randomName()
  const staging = `${path}.${token}.tmp`
  const handle = await createExclusive(staging, `${token}\n`)
  let linked = false
  let identity: string
  try {
    identity = `${(await handle.stat()).ino}:${token}\n`
    for (let wait = 2; ; wait = Math.min(wait * 2, 20)) {
      // link keeps the inode, and with it the mtime: a token staged while waiting must not be
      // born stale.
      const now = new Date()
      await handle.utimes(now, now)
      try {
        await link(staging, path)
        linked = true
        break
      } catch (error) {
        if (errorCode(error) !== 'EEXIST') throw error
      }
      if (Date.now() > deadline) throw new StoreError(`fileStore: timed out waiting for ${path}`, { retryable: true })
      const seen = await inspect(path)
      if (seen === undefined) continue // released meanwhile
      if (isStale(seen, options)) await breakStale(path, seen.identity, options, deadline)
      else await sleep(wait)
    }
  } finally {
    await unlink(staging).catch(() => {})
    if (!linked) await handle.close()
  }
  const beat = setInterval(() => {
    const now = new Date()
    handle.utimes(now, now).catch(() => {})
  }, Math.max(options.staleMs / 4, 10))
  let released = false
  const owned = async () => (await inspect(path))?.identity === identity
  return {
    path,
    owned,
    get released() {
      return released
    },
    async release() {
      if (released) return
      released = true
      clearInterval(beat)
      try {
        if (await owned()) await unlink(path)
      } finally {
        await handle.close()
      }
    },
  }
}

async function breakStale(path: string, identity: string, options: LockOptions, deadline: number): Promise<void> {
  const breaker = await acquireLock(`${path}.break`, options, deadline)
  try {
    const seen = await inspect(path)
    // Still the lock judged stale: only a breaker holder removes another's lock, and we are it.
    if (seen?.identity === identity && isStale(seen, options)) await unlink(path)
  } finally {
    await breaker.release()
  }
}

/**
 * Under the breaker: if `held` is still ours, runs `commit`, then unlinks `held`. With a commit,
 * a lost lock throws (retryable) and nothing is committed; without one, a lost lock is no error.
 */
export async function commitAndRelease(held: HeldLock, options: LockOptions, commit?: () => Promise<void>): Promise<void> {
  const breaker = await acquireLock(`${held.path}.break`, options)
  try {
    if (commit) {
      if (!(await held.owned())) {
        throw new StoreError(`fileStore: lost ${held.path} to another process (held past staleLockMs); nothing was written`, { retryable: true })
      }
      await commit()
    }
  } finally {
    try {
      await held.release()
    } finally {
      await breaker.release()
    }
  }
}

/** Error codes of runtimes that cannot open or fsync a folder (Windows, some file systems). */
const NO_FOLDER_SYNC = new Set(['EISDIR', 'EPERM', 'EACCES', 'EINVAL', 'ENOTSUP', 'EBADF'])

/**
 * fsyncs the folder holding `path`, so that a rename into it survives a power cut. Where the
 * runtime or the file system cannot open or fsync a folder (the codes above), the rename is as
 * durable as the file system makes it on its own.
 */
export async function syncFolder(path: string): Promise<void> {
  let handle: FileHandle
  try {
    handle = await open(dirname(path), 'r')
  } catch (error) {
    if (NO_FOLDER_SYNC.has(errorCode(error) as string)) return
    throw error
  }
  try {
    await handle.sync()
  } catch (error) {
    if (!NO_FOLDER_SYNC.has(errorCode(error) as string)) throw error
  } finally {
    await handle.close()
  }
}

/** Writes `data` to a new, exclusively created file with a random name next to `path`, fsynced; returns its name. */
export async function stageFile(path: string, data: string): Promise<string> {
  const staged = `${path}.${randomName()}.tmp`
  const current = await stat(path).catch(() => undefined)
  const handle = await createExclusive(staged, data)
  try {
    if (current) {
      // The new copy replaces the old file: give it the old one's mode, and its owner and group
      // where this process may (root may; others keep their own), so that a store belonging to
      // a service is still the service's after root rotated it.
      // (Compared with the new file's own owner, not the process's ids: Deno asks for --allow-sys
      // to tell a process its uid.)
      await handle.chmod(current.mode & 0o7777)
      const mine = await handle.stat()
      if (current.uid !== mine.uid || current.gid !== mine.gid) {
        await handle.chown(current.uid, current.gid).catch((error: { code?: string }) => {
          if (error.code !== 'EPERM' && error.code !== 'EINVAL') throw error
        })
      }
    }
    await handle.sync()
  } catch (error) {
    await unlink(staged).catch(() => {})
    throw error
  } finally {
    await handle.close()
  }
  return staged
}
