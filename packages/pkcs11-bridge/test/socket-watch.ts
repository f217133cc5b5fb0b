/**
 * Watches paths' modes from another process, as another local user would poll them: a tight
 * lstat loop in Python that reports each new (path, mode). For tests that a Unix socket is never
 * reachable with a wider mode than intended (the server runs under umask 0 in its own process).
 * A window of a few microseconds can slip between two polls on a loaded machine, so tests watch
 * several sockets made one after the other.
 */
import { spawn } from 'node:child_process'

export interface ModeWatch {
  /** Stops watching; for each path, the modes seen, first to last. */
  stop(): number[][]
}

/** Starts the watcher and resolves once it polls (within 5 s). */
export async function watchModes(paths: string[]): Promise<ModeWatch> {
  const watcher = spawn('python3', ['-c', `
import os, sys
paths = sys.argv[1:]
seen = set()
print('WATCHING', flush=True)
while True:
    for i, p in enumerate(paths):
        try:
            m = os.lstat(p).st_mode & 0o777
        except FileNotFoundError:
            continue
        if (i, m) not in seen:
            seen.add((i, m))
            print(i, m, flush=True)
`, ...paths], { stdio: ['ignore', 'pipe', 'inherit'] })
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
      const modes: number[][] = paths.map(() => [])
      for (const line of watched.split('\n').slice(1).filter(Boolean)) {
        const [i, m] = line.split(' ').map(Number)
        modes[i!]!.push(m!)
      }
      return modes
    },
  }
}
