/**
 * Internal: the store's folder, and what a file-system failure means to a caller.
 *
 * A store's last folder is made by its first write (mode 0700: it will hold wrapped keys), so
 * that `fileStore('./data/keys.json')` works in a fresh checkout. Its parents are not: a missing
 * parent is more often a mistyped path or a volume that is not mounted than a wish, and keys
 * written there would be keys nobody finds again (or, under a mount point, keys hidden once the
 * volume is mounted).
 *
 * A failure that will happen again until someone changes the file system (a missing folder,
 * a file where a folder should be, permission denied, a read-only file system) is a
 * non-retryable `ERR_STORE` that names the path; anything else (a full disk, too many open
 * files, an I/O error) stays retryable, as the key chain would report any store failure.
 */
import { mkdir, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { KmsProxyError, StoreError } from '@kms-proxy/core'
import { syncFolder } from './_lock.js'

const errorCode = (error: unknown): string | undefined => {
  const code = (error as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : undefined
}

/** What each such code says to the person who must fix it. */
const NEEDS_A_PERSON: Record<string, string> = {
  ENOENT: 'its folder does not exist',
  EISDIR: 'it is a folder, not a store file',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ELOOP: 'too many levels of symbolic links',
  ENAMETOOLONG: 'name too long',
}

/** The nearest folder above `path` that exists and is a file, if any. */
async function fileInTheWay(path: string): Promise<string | undefined> {
  for (let folder = dirname(path); folder !== dirname(folder); folder = dirname(folder)) {
    try {
      if (!(await stat(folder)).isDirectory()) return folder
      return undefined
    } catch {
      // Missing, or itself below a file: look higher.
    }
  }
  return undefined
}

/**
 * `error` (from `node:fs` while doing `doing`, such as "read ./keys.json") as a StoreError: not
 * retryable when only a change to the file system can make the call succeed.
 */
export async function storeFailure(error: unknown, doing: string, path: string): Promise<KmsProxyError> {
  if (error instanceof KmsProxyError) return error
  const code = errorCode(error)
  if (code === 'ENOTDIR') {
    const file = await fileInTheWay(path)
    const reason = file === undefined ? 'part of its path is not a folder' : `${file} is a file, not a folder`
    return new StoreError(`fileStore: cannot ${doing}: ${reason} (ENOTDIR)`, { cause: error })
  }
  if (code !== undefined && code in NEEDS_A_PERSON) {
    return new StoreError(`fileStore: cannot ${doing}: ${NEEDS_A_PERSON[code]} (${code})`, { cause: error })
  }
  return new StoreError(`fileStore: cannot ${doing}${code === undefined ? '' : ` (${code})`}`, { cause: error, retryable: true })
}

/**
 * Makes the folder of `path` if it is missing (mode 0700, and fsyncs its parent so that the new
 * folder survives a power cut); a missing parent is refused (see above).
 */
export async function ensureFolder(path: string): Promise<void> {
  const folder = dirname(path)
  try {
    if ((await stat(folder)).isDirectory()) return
    throw new StoreError(`fileStore: cannot write ${path}: ${folder} is a file, not a folder (ENOTDIR)`)
  } catch (error) {
    if (errorCode(error) !== 'ENOENT') throw await storeFailure(error, `write ${path}`, path)
  }
  const doing = `create the folder ${folder} for ${path}`
  try {
    await mkdir(folder, { mode: 0o700 })
  } catch (error) {
    const code = errorCode(error)
    if (code === 'EEXIST') return // another process made it meanwhile
    if (code === 'ENOENT') {
      throw new StoreError(`fileStore: cannot ${doing}: ${dirname(folder)} does not exist (only the store's own folder is created, never its parents)`, {
        cause: error,
      })
    }
    throw await storeFailure(error, doing, path)
  }
  await syncFolder(folder)
}
