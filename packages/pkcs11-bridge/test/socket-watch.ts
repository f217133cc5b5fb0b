/**
 * Watches a path's mode from another process, as another local user would poll it: a tight
 * lstat loop in Python that reports each new mode. For tests that a Unix socket is never
 * reachable with a wider mode than intended (the server runs under umask 0 in its own process).
 */
import { spawn } from 'node:child_process'

export interface ModeWatch {
  /** Stops watching; the modes seen, in order, first to last. */
  stop(): number[]
}

/** Starts the watcher and resolves once it polls (within 5 s). */
export async function watchModes(path: string): Promise<ModeWatch> {
  const watcher = spawn('python3', ['-c', `
import os, sys
seen = set()
print('WATCHING', flush=True)
while True:
    try:
        m = os.lstat(sys.argv[1]).st_mode & 0o777
    except FileNotFoundError:
        continue
    if m not in seen:
        seen.add(m)
        print(m, flush=True)
`, path], { stdio: ['ignore', 'pipe', 'inherit'] })
  let watched = ''
  watcher.stdout.on('data', (c: Buffer) => (watched += c))
  for (let i = 0; i < 200 && !watched.includes('WATCHING'); i++) await new Promise((r) => setTimeout(r, 25))
  if (!watched.includes('WATCHING')) {
    watcher.kill()
    throw new Error('the mode watcher did not start')
  }
  return {
    stop() {
      watcher.kill()
      return watched.split('\n').slice(1).filter(Boolean).map(Number)
    },
  }
}
