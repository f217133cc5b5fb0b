/**
 * Input and output for the commands: WHATWG streams over files and pipes (the same code on Node,
 * Bun and Deno, which all provide node:fs), output files that appear whole or not at all, and a
 * progress bar on a terminal.
 */
import { createReadStream, fstatSync, unlinkSync } from 'node:fs'
import { link, open, rename, stat, unlink, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import process from 'node:process'
import { CliError, EXIT } from './exit.js'

/** A Node readable (file or stdin) as a WHATWG ReadableStream of Uint8Array. */
export function webStream(source: AsyncIterable<Uint8Array | string>): ReadableStream<Uint8Array> {
  const it = source[Symbol.asyncIterator]()
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await it.next()
      if (done) controller.close()
      else controller.enqueue(typeof value === 'string' ? new TextEncoder().encode(value) : value)
    },
    async cancel() {
      await it.return?.()
    },
  })
}

export interface Input {
  stream: ReadableStream<Uint8Array>
  /** Bytes, when known (a file, or stdin redirected from a file). */
  size: number | undefined
  name: string
}

export async function openInput(path: string | undefined): Promise<Input> {
  if (path === undefined || path === '-') {
    let size: number | undefined
    try {
      const s = fstatSync(0)
      if (s.isFile()) size = s.size
    } catch {
      // no size: a pipe
    }
    return { stream: webStream(process.stdin), size, name: 'stdin' }
  }
  const s = await stat(path) // ENOENT and EACCES become EXIT.IO with the path
  if (s.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR', path })
  return { stream: webStream(createReadStream(path, { highWaterMark: 1 << 20 })), size: s.size, name: path }
}

/** Reads a whole stream (for single messages, which are not streamed). */
export async function readAll(stream: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = []
  let total = 0
  for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) {
    total += chunk.length
    if (total > limit) throw new RangeError(`the input is over ${limit} bytes: too large for a single message (leave out --message to stream it)`)
    chunks.push(chunk)
  }
  const out = new Uint8Array(total)
  let at = 0
  for (const c of chunks) {
    out.set(c, at)
    at += c.length
  }
  return out
}

/**
 * Reads at least `n` bytes (fewer only if the stream ends first) and returns them with a stream
 * that yields every byte again, from the first.
 */
export async function peek(stream: ReadableStream<Uint8Array>, n: number): Promise<{ head: Uint8Array; stream: ReadableStream<Uint8Array> }> {
  const reader = stream.getReader()
  const seen: Uint8Array[] = []
  let total = 0
  let ended = false
  while (total < n) {
    const { value, done } = await reader.read()
    if (done) {
      ended = true
      break
    }
    seen.push(value)
    total += value.length
  }
  const head = new Uint8Array(total)
  let at = 0
  for (const c of seen) {
    head.set(c, at)
    at += c.length
  }
  let replayed = false
  const again = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!replayed) {
        replayed = true
        if (head.length > 0) return controller.enqueue(head)
      }
      if (ended) return controller.close()
      const { value, done } = await reader.read()
      if (done) controller.close()
      else controller.enqueue(value)
    },
    cancel(reason) {
      return reader.cancel(reason)
    },
  })
  return { head, stream: again }
}

const TEMP_SUFFIX = '.kms-proxy-tmp'

/**
 * `.NAME.PID-RANDOM.kms-proxy-tmp` beside the target: hidden, recognisable, and naming the
 * process that writes it, so `clean` can tell a killed command's leftover from a running one's.
 */
function tempName(target: string): string {
  const tag = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, '0')).join('')
  return join(dirname(target), `.${basename(target)}.${process.pid}-${tag}${TEMP_SUFFIX}`)
}

/** True for the temporary files this module writes (rewrap skips them). */
export const isTempName = (name: string): boolean => name.endsWith(TEMP_SUFFIX)

/** The writer's process id in a temporary file's name (undefined for a name without one). */
export function tempWriter(name: string): number | undefined {
  const m = /\.(\d+)-[0-9a-f]{12}\.kms-proxy-tmp$/.exec(name)
  return m ? Number(m[1]) : undefined
}

/** True while process `pid` exists (EPERM: it does, under another user). */
export function isRunning(pid: number): boolean {
  if (pid === process.pid) return true
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as { code?: string }).code === 'EPERM'
  }
}

/** Temporary files being written; removed if the process is interrupted. */
const pending = new Set<string>()
let trapped = false

/** Removes the temporary files being written, at once: the process is about to exit. */
function discardPending(): void {
  for (const temp of pending) {
    try {
      unlinkSync(temp)
    } catch {
      // already gone
    }
  }
  pending.clear()
}

/** Ctrl-C, a kill or a closed terminal while an output is written removes its temporary file (exit 130 / 143 / 129). */
function trapSignals(): void {
  if (trapped) return
  trapped = true
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(signal, () => {
      discardPending()
      process.stderr.write(`\nkms-proxy: interrupted; no output written\n`)
      process.exit(code)
    })
  }
}

let guarded: string | undefined
let lineWritten = false

/** The failure of stdout or stderr (a reader that went away: EPIPE), if either failed. */
export function outputFailure(): { stream: 'stdout' | 'stderr'; error: unknown } | undefined {
  for (const stream of ['stdout', 'stderr'] as const) {
    const s = process[stream] as NodeJS.WriteStream & { errored?: Error | null }
    if (s.errored) return { stream, error: s.errored }
  }
  return undefined
}

/** Writes the command's one error line to stderr; a closed output then adds no second one. */
export function errorLine(line: string): void {
  lineWritten = true
  process.stderr.write(`${line}\n`)
}

/**
 * Ends the command at once in EXIT.IO because stdout or stderr failed (`| head` went away): one
 * line on stderr when stdout failed and no error line was written yet, the temporary files
 * removed. On a closed stderr nothing can be said: the exit code is all there is.
 */
export function endOnFailedOutput(command: string, stream: 'stdout' | 'stderr', error: unknown): never {
  discardPending()
  if (stream === 'stdout' && !lineWritten && !process.stderr.destroyed) {
    lineWritten = true
    const code = (error as { code?: unknown } | null)?.code
    const why = code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED' ? 'was closed before the end (broken pipe)' : `could not be written (${typeof code === 'string' ? code : 'error'})`
    process.stderr.write(`${command}: the output ${why}\n`)
  }
  process.exit(EXIT.IO)
}

/**
 * Without a listener, a write to a pipe whose reader went away is an unhandled 'error' event:
 * a stack trace and exit 1. With it, every write of the command, to stdout or stderr, ends
 * in EXIT.IO with one line ({@link endOnFailedOutput}). Call once, before the command writes.
 */
export function guardOutput(command: string): void {
  if (guarded !== undefined) return
  guarded = command
  for (const stream of ['stdout', 'stderr'] as const) process[stream].on('error', (error) => endOnFailedOutput(command, stream, error))
}

export interface Output {
  writable: WritableStream<Uint8Array>
  /**
   * Makes the output final (rename into place). Call only after the pipe finished without error.
   * `beforeRename` may still refuse (throw), after the data is on disk and before it replaces `path`.
   */
  commit(beforeRename?: () => Promise<void>): Promise<void>
  /** Removes what was written. Safe to call after a failure at any point. */
  discard(): Promise<void>
}

export interface OutputOptions {
  /** The new file's mode, exactly (not narrowed by the umask). Default 0600. */
  mode?: number
  /**
   * The new file's owner and group (rewrap keeps a file's): given to the temporary file before
   * it is renamed into place. Where this user may not give them, the output fails (EXIT.IO) and
   * nothing replaces `path`.
   */
  owner?: { uid: number; gid: number }
  /**
   * Replace a file already at `path` (rewrap, `--force`). Without it the new file is linked into
   * place only if nothing is there (no-clobber, atomic: a file that appears meanwhile is kept),
   * and the output fails with a usage error that names `--force`.
   */
  replace?: boolean
}

/** The refusal of an output path that exists, in the words of every command with `-o`. */
export const existsError = (path: string): CliError => new CliError(EXIT.USAGE, `${path} exists: pass --force to overwrite it`)

/** Refuses, before any work, an output file that exists, and a folder (a FIFO or device is written in place: not refused). */
export async function refuseExisting(path: string | undefined, force: boolean): Promise<void> {
  if (force || path === undefined || path === '-') return
  const existing = await stat(path).catch(() => undefined)
  if (existing?.isFile()) throw existsError(path)
  if (existing?.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR', path })
}

/** Errors about the temporary file name the path the user gave: the temporary name means nothing to them. */
function namedAs<T>(temp: string, path: string, run: () => Promise<T>): Promise<T> {
  return run().catch((error: unknown) => {
    const e = error as { path?: unknown; dest?: unknown; message?: unknown } | null
    if (e && typeof e === 'object' && e.path === temp) {
      e.path = path
      if (typeof e.message === 'string') e.message = e.message.split(temp).join(path)
    }
    throw error
  })
}

/**
 * A file written under a temporary name in the same folder and renamed over `path` on commit,
 * so a failure never leaves a half-written file at `path`. A FIFO, a terminal or a device
 * (`/dev/null`, `/dev/stdout`) is written in place, like stdout: renaming over it would replace
 * it with a regular file (as root, /dev/null itself).
 */
export async function openOutputFile(path: string, options: OutputOptions = {}): Promise<Output> {
  const { mode = 0o600, owner, replace = false } = options
  const existing = await stat(path).catch(() => undefined)
  const direct = existing !== undefined && !existing.isFile() && !existing.isDirectory()
  const temp = direct ? path : tempName(path)
  const named = <T>(run: () => Promise<T>) => namedAs(temp, path, run)
  if (!direct) trapSignals()
  const handle: FileHandle = await named(() => open(temp, direct ? 'w' : 'wx', mode))
  if (!direct) {
    pending.add(temp)
    try {
      await keepOwner(handle, owner)
      await handle.chmod(mode) // after chown, which may clear bits; exactly `mode`, not narrowed by the umask
    } catch (error) {
      await handle.close().catch(() => {})
      await unlink(temp).catch(() => {})
      pending.delete(temp)
      throw error
    }
  }
  let closed = false
  const close = async () => {
    if (!closed) {
      closed = true
      await handle.close()
    }
  }
  return {
    writable: new WritableStream<Uint8Array>({
      async write(chunk) {
        let at = 0
        while (at < chunk.length) at += (await named(() => handle.write(chunk, at, chunk.length - at))).bytesWritten
      },
    }),
    async commit(beforeRename) {
      if (direct) return named(close)
      await named(() => handle.sync())
      await named(close)
      await beforeRename?.()
      await named(() => (replace ? rename(temp, path) : linkIfAbsent(temp, path)))
      pending.delete(temp)
      await syncFolder(path)
    },
    async discard() {
      await close().catch(() => {})
      if (direct) return
      await unlink(temp).catch(() => {})
      pending.delete(temp)
    },
  }
}

/**
 * Puts `temp` at `path` only if nothing is there: link(2) fails with EEXIST instead of replacing,
 * so a file that appeared since the command started is kept. Where the file system has no hard
 * links, a check and a rename (a file appearing between the two is replaced).
 */
async function linkIfAbsent(temp: string, path: string): Promise<void> {
  try {
    await link(temp, path)
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code === 'EEXIST') throw existsError(path)
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw error
    if (await stat(path).then(() => true, () => false)) throw existsError(path)
    return rename(temp, path)
  }
  await unlink(temp)
}

/**
 * Makes a rename durable: until the folder is fsynced, a power cut can bring back the old name
 * (or no file at all) although the rename returned. Where the platform cannot open or fsync a
 * folder (Windows, some file systems), the rename is as durable as the file system makes it.
 */
async function syncFolder(path: string): Promise<void> {
  let folder: FileHandle | undefined
  try {
    folder = await open(dirname(path), 'r')
    await folder.sync()
  } catch (error) {
    const code = (error as { code?: string }).code
    if (!['EISDIR', 'EPERM', 'EACCES', 'EINVAL', 'ENOTSUP', 'EBADF'].includes(code ?? '')) throw error
  } finally {
    await folder?.close()
  }
}

/** Gives the new file `owner`'s uid and gid when they differ from the writer's (no call otherwise). */
async function keepOwner(handle: FileHandle, owner: OutputOptions['owner']): Promise<void> {
  if (!owner) return
  const mine = await handle.stat()
  if (mine.uid === owner.uid && mine.gid === owner.gid) return
  try {
    await handle.chown(owner.uid, owner.gid)
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code !== 'EPERM' && code !== 'EINVAL') throw error
    throw new CliError(EXIT.IO, `owned by uid ${owner.uid} gid ${owner.gid}, which this user (uid ${mine.uid}) cannot give to the new copy; left as it is`)
  }
}

/** Writes `bytes` to `path` whole or not at all (openOutputFile, one write, commit). */
export async function writeWhole(path: string, bytes: Uint8Array, options: OutputOptions & { beforeRename?: () => Promise<void> } = {}): Promise<void> {
  const { beforeRename, ...outputOptions } = options
  const output = await openOutputFile(path, outputOptions)
  try {
    const writer = output.writable.getWriter()
    await writer.write(bytes)
    await writer.close()
    await output.commit(beforeRename)
  } catch (error) {
    await output.discard()
    throw error
  }
}

/**
 * Standard output, with back-pressure. Nothing to commit; a failure may leave part written. A
 * reader that goes away (`| head`) fails the write with EPIPE instead of crashing the process.
 */
export function stdoutOutput(): Output {
  const out = process.stdout
  let failed: Error | undefined
  out.on('error', (error) => void (failed ??= error))
  return {
    writable: new WritableStream<Uint8Array>({
      write(chunk) {
        return new Promise<void>((resolve, reject) => {
          if (failed) return reject(failed)
          const onError = (error: Error) => {
            out.off('drain', onDrain)
            reject(error)
          }
          const onDrain = () => {
            out.off('error', onError)
            resolve()
          }
          const ok = out.write(chunk, (error) => (error ? reject(error) : undefined))
          if (ok) resolve()
          else out.once('drain', onDrain).once('error', onError)
        })
      },
      close() {
        return new Promise<void>((resolve) => out.write(new Uint8Array(0), () => resolve()))
      },
    }),
    async commit() {},
    async discard() {},
  }
}

// ------------------------------------------------------------------------------ progress

/** Inputs over this many bytes get a progress bar (on a terminal, size known). */
export const PROGRESS_MIN_BYTES = 8 * 1024 * 1024
const FRAME_MS = 100

const mib = (n: number) => (n / 1048576).toFixed(1)

/**
 * A pass-through stream that draws a bar on stderr: a first frame at once, then at most one
 * frame every 100 ms, and a last frame at 100 % when the input ends.
 */
export function progressBar(total: number, label: string): TransformStream<Uint8Array, Uint8Array> {
  const err = process.stderr
  const started = Date.now()
  let done = 0
  let last = 0
  const draw = () => {
    last = Date.now()
    const width = Math.max(10, Math.min(40, (err.columns ?? 80) - 50))
    const fraction = total > 0 ? Math.min(1, done / total) : 1
    const filled = Math.round(fraction * width)
    const seconds = Math.max(0.001, (last - started) / 1000)
    const rate = done / 1048576 / seconds
    err.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}% ${mib(done)}/${mib(total)} MiB ${rate.toFixed(0)} MiB/s`)
  }
  return new TransformStream<Uint8Array, Uint8Array>({
    start() {
      draw()
    },
    transform(chunk, controller) {
      done += chunk.length
      if (Date.now() - last >= FRAME_MS) draw()
      controller.enqueue(chunk)
    },
    flush() {
      draw()
      err.write('\n')
    },
  })
}

export function wantsProgress(size: number | undefined, quiet: boolean): size is number {
  return !quiet && size !== undefined && size > PROGRESS_MIN_BYTES && process.stderr.isTTY === true
}
