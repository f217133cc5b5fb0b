// Streaming benchmark: encryptStream / decryptStream against raw segmented crypto.subtle
// AES-GCM-128 (the same 64 KiB segments, the same nonce layout, one segment after another,
// output discarded) in the same run, interleaved by bench/run.mjs's `measure`. Peak memory comes
// from child processes (bench/stream-rss.mjs), one per variant, so that each RSS is its own.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { KeyChain, aesRootKey, memoryStore } from '@kms-proxy/core'

const subtle = globalThis.crypto.subtle
const SEGMENT = 65536
const AD = new TextEncoder().encode('tenant=42;file=report.pdf')

/** One raw segment nonce: 7-byte prefix, u32 counter, last flag (what the stream does). */
function nonce(prefix, i, last) {
  const n = new Uint8Array(12)
  n.set(prefix)
  new DataView(n.buffer).setUint32(7, i)
  n[11] = last ? 1 : 0
  return n
}

/** Raw segmented AES-GCM over `chunks` (each SEGMENT long but the last), one at a time. */
async function rawSegmented(key, op, chunks, aad) {
  const prefix = crypto.getRandomValues(new Uint8Array(7))
  let bytes = 0
  for (let i = 0; i < chunks.length; i++) {
    const out = await subtle[op]({ name: 'AES-GCM', iv: nonce(prefix, i, i === chunks.length - 1), additionalData: aad }, key, chunks[i])
    bytes += out.byteLength
  }
  return bytes
}

/** Pipes `chunks` through `ts` into a sink that only counts. */
async function throughStream(ts, chunks) {
  let i = 0
  let bytes = 0
  const source = new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++])
      else controller.close()
    },
  })
  await source.pipeThrough(ts).pipeTo(
    new WritableStream({
      write(chunk) {
        bytes += chunk.length
      },
    }),
  )
  return bytes
}

function split(bytes, size) {
  const out = []
  for (let o = 0; o < bytes.length; o += size) out.push(bytes.subarray(o, Math.min(bytes.length, o + size)))
  return out
}

/**
 * Runs the streaming groups; returns rows for `reportStreams`. `measure(variants, label)` is
 * run.mjs's interleaved measurement.
 */
export async function streamBench(measure, quick) {
  const size = (quick ? 8 : 32) * 1024 * 1024
  const plaintext = new Uint8Array(size)
  for (let o = 0; o < size; o += 65536) crypto.getRandomValues(plaintext.subarray(o, o + 65536))
  // Input arrives in 64 KiB chunks (what fs streams and fetch bodies give), not aligned to the
  // header on the decrypting side.
  const inChunks = split(plaintext, SEGMENT)
  const key = await subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt', 'decrypt'])
  const chain = await KeyChain.open({ rootKey: aesRootKey(crypto.getRandomValues(new Uint8Array(16))), store: memoryStore() })

  // Round trips first: each variant must give back what went in.
  const encrypted = new Uint8Array(await new Response(new Blob([plaintext]).stream().pipeThrough(chain.encryptStream({ associatedData: AD }))).arrayBuffer())
  const back = new Uint8Array(await new Response(new Blob([encrypted]).stream().pipeThrough(chain.decryptStream({ associatedData: AD }))).arrayBuffer())
  if (back.length !== size || back.some((b, i) => b !== plaintext[i])) throw new Error('stream round trip failed')
  const rawSealed = []
  const prefix = crypto.getRandomValues(new Uint8Array(7))
  for (let i = 0; i < inChunks.length; i++) {
    rawSealed.push(new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv: nonce(prefix, i, i === inChunks.length - 1), additionalData: AD }, key, inChunks[i])))
  }
  const encChunks = split(encrypted, SEGMENT)

  const results = []
  for (const [id, title, variants] of [
    [
      'streamEnc',
      'encrypt',
      [
        ['raw', () => rawSegmented(key, 'encrypt', inChunks, AD)],
        ['control', () => rawSegmented(key, 'encrypt', inChunks, AD)],
        ['stream', () => throughStream(chain.encryptStream({ associatedData: AD }), inChunks)],
      ],
    ],
    [
      'streamDec',
      'decrypt',
      [
        // Raw decrypt opens its own segments with their own nonces: no verification shortcut.
        ['raw', () => rawDecrypt(key, rawSealed, prefix)],
        ['control', () => rawDecrypt(key, rawSealed, prefix)],
        ['stream', () => throughStream(chain.decryptStream({ associatedData: AD }), encChunks)],
      ],
    ],
  ]) {
    const values = await measure(
      variants.map(([name, fn]) => ({ name, fn, inFlight: 1 })),
      `stream ${title}, ${size >> 20} MiB`,
    )
    results.push({ id, title, size, values })
  }
  return results
}

async function rawDecrypt(key, sealed, prefix) {
  let bytes = 0
  for (let i = 0; i < sealed.length; i++) {
    const out = await subtle.decrypt({ name: 'AES-GCM', iv: nonce(prefix, i, i === sealed.length - 1), additionalData: AD }, key, sealed[i])
    bytes += out.byteLength
  }
  return bytes
}

/** Peak RSS of a child process streaming `mib` MiB through each variant. */
export function streamMemory(mib) {
  const script = fileURLToPath(new URL('./stream-rss.mjs', import.meta.url))
  const out = {}
  for (const variant of ['idle', 'raw', 'stream']) {
    // Through a shell that forks (`; exit $?`): getrusage's maxRSS survives fork + exec on Linux,
    // so a child spawned straight from this large process would report our RSS as its peak.
    const run = spawnSync('/bin/sh', ['-c', '"$0" "$1" "$2" "$3"; exit $?', process.execPath, script, variant, String(mib)], { encoding: 'utf8' })
    if (run.status !== 0) throw new Error(`stream-rss ${variant}: ${run.stderr.slice(0, 500)}`)
    out[variant] = JSON.parse(run.stdout)
  }
  return out
}

export function reportStreams(results, memory, log) {
  if (!results.length) return
  const mibps = (size, v) => size / 1048576 / (v.msPerOp / 1000)
  log()
  log(`Streams: ${results[0].size >> 20} MiB per operation in 64 KiB input chunks, 64 KiB segments, ${AD.length} B associated data. Raw = the same segments sealed (or opened) with one \`crypto.subtle\` call each, one after another, output discarded. Throughput × raw = raw's time / the stream's: higher is better, target ≥ 0.9×.`)
  log()
  log('| op | raw MiB/s | encryptStream / decryptStream MiB/s | throughput × raw | noise | target ≥ 0.9× |')
  log('| --- | ---: | ---: | ---: | ---: | --- |')
  for (const r of results) {
    const v = r.values
    const x = 1 / v.stream.ratio
    log(`| ${r.title} | ${mibps(r.size, v.raw).toFixed(0)} | ${mibps(r.size, v.stream).toFixed(0)} | ${x.toFixed(2)}× | ${(1 / v.control.ratio).toFixed(2)}× | ${x >= 0.9 ? 'met' : '**missed**'} |`)
  }
  if (memory) {
    log()
    log(`Peak RSS (\`process.resourceUsage().maxRSS\`) of a Node process that streams ${memory.stream.mib} MiB, encrypt then decrypt, piped, input generated and output hashed: Node alone ${memory.idle.maxRssMiB} MiB; raw segmented ${memory.raw.maxRssMiB} MiB; encryptStream → decryptStream ${memory.stream.maxRssMiB} MiB (${memory.stream.seconds} s).`)
  }
}
