/**
 * Starts the plugin under umask 0 while another process watches the socket path in a tight
 * loop; prints `MODES [...]`, every mode the path was seen with. Run as its own process: a
 * vitest worker cannot set the umask.
 */
import { spawn } from 'node:child_process'
import { KeyChain, memoryStore } from '@kms-proxy/core'
import { serveKmsPlugin } from '../src/index.ts'

const socket = process.env.KMS_PROXY_K8S_SOCKET!
process.umask(0)
// A watcher in its own process, as another local user would poll: it reports each new mode.
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
`, socket], { stdio: ['ignore', 'pipe', 'inherit'] })
let watched = ''
watcher.stdout.on('data', (c: Buffer) => (watched += c))
while (!watched.includes('WATCHING')) await new Promise((r) => setTimeout(r, 5))
const plugin = await serveKmsPlugin({ socket, chain: await KeyChain.open({ store: memoryStore() }) })
await new Promise((r) => setTimeout(r, 100)) // let the watcher see the final mode
watcher.kill()
await plugin.close()
const seen = watched.split('\n').slice(1).filter(Boolean).map(Number)
process.stdout.write(`MODES ${JSON.stringify(seen)}\n`)
