// Child of bench/stream.mjs: `node stream-rss.mjs idle|raw|stream MiB` streams that much, encrypt
// then decrypt, piped (input generated, output hashed), and prints its peak RSS as JSON.
import { createHash } from 'node:crypto'
import { KeyChain, aesRootKey, memoryStore } from '@kms-proxy/core'

const [variant, mibArg] = process.argv.slice(2)
const total = Number(mibArg) * 1048576
const SEGMENT = 65536
const block = new Uint8Array(1 << 20)
for (let o = 0; o < block.length; o += 65536) crypto.getRandomValues(block.subarray(o, o + 65536))

function source() {
  let produced = 0
  return new ReadableStream({
    pull(controller) {
      if (produced >= total) return controller.close()
      const chunk = block.slice(0, Math.min(SEGMENT, total - produced))
      new DataView(chunk.buffer).setFloat64(0, produced)
      produced += chunk.length
      controller.enqueue(chunk)
    },
  })
}

/** Raw segmented AES-GCM as a TransformStream: one segment per 64 KiB chunk, one call each. */
const prefix = crypto.getRandomValues(new Uint8Array(7))
function rawStream(key, op) {
  let i = 0
  return new TransformStream({
    async transform(chunk, controller) {
      const iv = new Uint8Array(12)
      iv.set(prefix)
      new DataView(iv.buffer).setUint32(7, i++)
      controller.enqueue(new Uint8Array(await crypto.subtle[op]({ name: 'AES-GCM', iv }, key, chunk)))
    },
  })
}

const started = performance.now()
const hash = createHash('sha256')
const sink = new WritableStream({ write: (chunk) => void hash.update(chunk) })
if (variant === 'stream') {
  const chain = await KeyChain.open({ rootKey: aesRootKey(crypto.getRandomValues(new Uint8Array(16))), store: memoryStore() })
  await source().pipeThrough(chain.encryptStream()).pipeThrough(chain.decryptStream()).pipeTo(sink)
} else if (variant === 'raw') {
  const key = await crypto.subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt', 'decrypt'])
  await source().pipeThrough(rawStream(key, 'encrypt')).pipeThrough(rawStream(key, 'decrypt')).pipeTo(sink)
}
process.stdout.write(
  JSON.stringify({
    variant,
    mib: Number(mibArg),
    maxRssMiB: Math.round(process.resourceUsage().maxRSS / 102.4) / 10,
    seconds: Math.round((performance.now() - started) / 100) / 10,
  }),
)
