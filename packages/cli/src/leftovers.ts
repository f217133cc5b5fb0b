/**
 * Temporary files that a killed command left behind. Every output is written under a
 * temporary name and renamed when complete; SIGINT, SIGTERM and SIGHUP remove it, but SIGKILL,
 * a crash or a power cut cannot, and a decrypt's temporary file holds plaintext (mode 0600).
 * The name carries the writer's process id, so a running command's file is never taken for one.
 */
import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { isRunning, isTempName, tempWriter } from './io.js'

export interface Leftover {
  path: string
  bytes: number
  /** The process that wrote it (not running any more); undefined for a name without one. */
  pid: number | undefined
  modifiedAt: number
}

export interface TempScan {
  leftovers: Leftover[]
  /** Temporary files whose writer is still running: not leftovers. */
  inUse: string[]
}

/** The temporary files in `dir` (and below it when `recursive`; symbolic links are not followed). */
export async function scanTemps(dir: string, recursive: boolean, scan: TempScan = { leftovers: [], inUse: [] }): Promise<TempScan> {
  const entries = await readdir(dir, { withFileTypes: true })
  entries.sort((a, b) => (a.name < b.name ? -1 : 1))
  for (const e of entries) {
    const path = join(dir, e.name)
    if (e.isDirectory()) {
      if (recursive) await scanTemps(path, true, scan)
    } else if (e.isFile() && isTempName(e.name)) {
      const pid = tempWriter(e.name)
      if (pid !== undefined && isRunning(pid)) {
        scan.inUse.push(path)
        continue
      }
      const s = await lstat(path).catch(() => undefined)
      if (s) scan.leftovers.push({ path, bytes: s.size, pid, modifiedAt: Math.round(s.mtimeMs) })
    }
  }
  return scan
}
