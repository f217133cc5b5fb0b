/**
 * The bridge's Unix socket: never reachable at its path with a wider mode than asked, a socket
 * left by a killed bridge replaced, a live one or another file never taken over.
 *
 * The same steps as the Kubernetes plugin's socket (packages/k8s/src/server.ts), written for a
 * node:net server instead of a gRPC one.
 */
import { connect, type Server } from 'node:net'
import { chmod, link, lstat, mkdtemp, rm, unlink } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { RootKeyError } from '@kms-proxy/core'

const refuse = (path: string, why: string) => new RootKeyError(`the PKCS#11 bridge could not listen: ${path} ${why}`)

/** Removes a socket file left by a bridge that died; refuses a live socket or a file that is not a socket. */
export async function clearStaleSocket(path: string): Promise<void> {
  let info
  try {
    info = await lstat(path)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return
    throw new RootKeyError(`the PKCS#11 bridge could not listen on ${path} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  if (!info.isSocket()) throw refuse(path, 'exists and is not a socket; not removing it')
  // A socket nobody accepts on (ECONNREFUSED) belongs to a dead process.
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path)
    probe.once('connect', () => {
      probe.destroy()
      resolve(true)
    })
    probe.once('error', () => resolve(false))
  })
  if (live) throw refuse(path, 'is in use by a running server')
  await unlink(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw refuse(path, `is a stale socket that could not be removed (${error.code ?? 'error'})`)
  })
}

/** The socket file this server put in place, to remove at close only if it is still ours. */
export interface PlacedSocket {
  remove(): Promise<void>
}

/**
 * Listens on `path` with `mode`. A socket is made with the umask's mode (0777 under umask 0):
 * bound in place, it would take calls from any local user until a chmod. So it is bound in a
 * private (0700) folder next to `path`, given its mode, and only then linked into place (a
 * link, unlike a rename, fails if another bridge took the path meanwhile, as a bind in place
 * would).
 */
export async function listenOnSocket(server: Server, path: string, mode: number): Promise<PlacedSocket> {
  const staging = await mkdtemp(join(dirname(path), '.kms-proxy-')).catch((error: NodeJS.ErrnoException) => {
    throw new RootKeyError(`the PKCS#11 bridge could not listen on ${path} (${error.code ?? 'error'})`)
  })
  try {
    const bound = join(staging, 's')
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(bound, () => {
        server.off('error', reject)
        resolve()
      })
    })
    await chmod(bound, mode)
    await link(bound, path).catch((error: NodeJS.ErrnoException) => {
      throw error.code === 'EEXIST' ? refuse(path, 'was created by someone else while this bridge started') : error
    })
    const placed = await lstat(path)
    return {
      async remove() {
        const now = await lstat(path).catch(() => undefined)
        if (now && now.ino === placed.ino && now.dev === placed.dev) await unlink(path).catch(() => {})
      },
    }
  } catch (error) {
    server.close()
    if (error instanceof RootKeyError) throw error
    throw new RootKeyError(`the PKCS#11 bridge could not listen on ${path} (${(error as NodeJS.ErrnoException).code ?? 'error'})`)
  } finally {
    await rm(staging, { recursive: true, force: true })
  }
}
