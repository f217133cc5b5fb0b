/**
 * Child process for stream-gib.test.ts: 1 GiB of generated input through encryptStream then
 * decryptStream, nothing on disk. Prints one JSON line: both SHA-256 digests, byte counts, the
 * peak RSS (process.resourceUsage().maxRSS) and the time. Run as its own process so that the
 * RSS is the pipeline's alone, not the test runner's.
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { KeyChain, aesRootKey, memoryStore } from '../src/index.ts'

const TOTAL = Number(process.env.STREAM_BYTES ?? 2 ** 30)
// Chunk sizes that do not line up with 64 KiB segments, from 1 B to 1 MiB.
const SIZES = [1 << 20, 100_003, 65_536, 1, 65_537, 4096, 7, 300_000]

const chain = await KeyChain.open({ rootKey: aesRootKey(crypto.getRandomValues(new Uint8Array(32))), store: memoryStore() })
// One random MiB, with each chunk's first 8 bytes set to its offset: no two chunks alike.
const block = new Uint8Array(1 << 20)
for (let o = 0; o < block.length; o += 65536) crypto.getRandomValues(block.subarray(o, o + 65536))
const inHash = createHash('sha256')
const outHash = createHash('sha256')
let produced = 0
let n = 0
let encryptedBytes = 0
let decryptedBytes = 0

const source = new ReadableStream<Uint8Array>({
  pull(controller) {
    if (produced >= TOTAL) return controller.close()
    const size = Math.min(SIZES[n++ % SIZES.length]!, TOTAL - produced)
    const chunk = block.slice(0, size)
    if (size >= 8) new DataView(chunk.buffer).setFloat64(0, produced) // the offset: no two chunks alike
    produced += size
    inHash.update(chunk)
    controller.enqueue(chunk)
  },
})
const count = new TransformStream<Uint8Array, Uint8Array>({
  transform(chunk, controller) {
    encryptedBytes += chunk.length
    controller.enqueue(chunk)
  },
})
const started = performance.now()
const sink = new WritableStream<Uint8Array>({
  write(chunk) {
    decryptedBytes += chunk.length
    outHash.update(chunk)
  },
})
await source.pipeThrough(chain.encryptStream({ associatedData: 'gib' })).pipeThrough(count).pipeThrough(chain.decryptStream({ associatedData: 'gib' })).pipeTo(sink)
const seconds = (performance.now() - started) / 1000
process.stdout.write(
  JSON.stringify({
    inputBytes: produced,
    encryptedBytes,
    decryptedBytes,
    inputSha256: inHash.digest('hex'),
    outputSha256: outHash.digest('hex'),
    maxRssMiB: Math.round((process.resourceUsage().maxRSS / 1024) * 10) / 10,
    vmHwmMiB: vmHwm(),
    seconds: Math.round(seconds * 10) / 10,
  }) + '\n',
)

/** Peak RSS of this process image from /proc (Linux), in MiB; null where there is no /proc. */
function vmHwm(): number | null {
  try {
    const kib = Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1])
    return Number.isFinite(kib) ? Math.round((kib / 1024) * 10) / 10 : null
  } catch {
    return null
  }
}
