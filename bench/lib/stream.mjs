// Streams, portable: encryptStream / decryptStream against raw segmented crypto.subtle AES-GCM-128
// (the same 64 KiB segments, the same nonce layout, one segment after another, output discarded),
// interleaved by the suite's measure; the in-process memory of a long piped stream where the
// runtime reports its memory; and `pipeThroughBoth`, what a child process runs while the host
// reads its peak RSS from outside (bench/lib/local.mjs). Web APIs only.

const subtle = globalThis.crypto.subtle
const SEGMENT = 65536
const AD = new TextEncoder().encode('tenant=42;file=report.pdf')

/** One raw segment nonce: 7-byte prefix, u32 counter, last flag (the stream's layout). */
function nonce(prefix, i, last) {
  const n = new Uint8Array(12)
  n.set(prefix)
  new DataView(n.buffer).setUint32(7, i)
  n[11] = last ? 1 : 0
  return n
}

/** Raw segmented AES-GCM over `chunks`, one call after another; returns the bytes out. */
async function rawSegmented(key, op, chunks, prefix) {
  let bytes = 0
  for (let i = 0; i < chunks.length; i++) {
    const out = await subtle[op]({ name: 'AES-GCM', iv: nonce(prefix, i, i === chunks.length - 1), additionalData: AD }, key, chunks[i])
    bytes += out.byteLength
  }
  return bytes
}

/** Pipes `chunks` through `ts` into a sink that only counts (and calls `onChunk`). */
async function throughStream(ts, chunks, onChunk) {
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
        onChunk?.(chunk)
      },
    }),
  )
  return bytes
}

/** The parts one after another in a new array. */
export function concat(...parts) {
  let n = 0
  for (const p of parts) n += p.length
  const out = new Uint8Array(n)
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

function split(bytes, size) {
  const out = []
  for (let o = 0; o < bytes.length; o += size) out.push(bytes.subarray(o, Math.min(bytes.length, o + size)))
  return out
}

/**
 * A generated source of `total` bytes in 64 KiB chunks (what fs streams and fetch bodies give),
 * each chunk a fresh copy carrying its offset in its first 8 bytes, so the far end can tell that
 * every chunk came back in order.
 */
function generated(total) {
  const block = new Uint8Array(SEGMENT)
  crypto.getRandomValues(block)
  let produced = 0
  return new ReadableStream({
    pull(controller) {
      if (produced >= total) return controller.close()
      const chunk = block.slice(0, Math.min(SEGMENT, total - produced))
      if (chunk.length >= 8) new DataView(chunk.buffer).setFloat64(0, produced)
      produced += chunk.length
      controller.enqueue(chunk)
    },
  })
}

/** A sink that checks the offsets `generated` wrote, re-chunked or not. */
function checkingSink(onChunk) {
  const state = { bytes: 0, bad: 0, pending: new Uint8Array(0) }
  const sink = new WritableStream({
    write(chunk) {
      // Chunks may come back in other sizes: check each 64 KiB boundary as it passes.
      let o = 0
      while (o < chunk.length) {
        const into = state.bytes % SEGMENT
        const take = Math.min(chunk.length - o, SEGMENT - into)
        if (into === 0 && take >= 8 && new DataView(chunk.buffer, chunk.byteOffset + o, 8).getFloat64(0) !== state.bytes) state.bad++
        state.bytes += take
        o += take
      }
      onChunk?.()
    },
  })
  return { sink, state }
}

/** Raw segmented AES-GCM as a TransformStream: one call per 64 KiB chunk. */
function rawTransform(key, op, prefix) {
  let i = 0
  return new TransformStream({
    async transform(chunk, controller) {
      controller.enqueue(new Uint8Array(await subtle[op]({ name: 'AES-GCM', iv: nonce(prefix, i++, false), additionalData: AD }, key, chunk)))
    },
  })
}

/**
 * Streams `mib` MiB, encrypt then decrypt, piped: 'stream' through a chain's encryptStream and
 * decryptStream, 'raw' through raw segmented AES-GCM, 'idle' not at all (the runtime alone).
 * Returns { bytes, seconds, ok }.
 */
export async function pipeThroughBoth(core, variant, mib, onChunk) {
  const total = mib * 1048576
  const started = performance.now()
  const { sink, state } = checkingSink(onChunk)
  if (variant === 'stream') {
    const chain = await core.KeyChain.open({ rootKey: core.aesRootKey(crypto.getRandomValues(new Uint8Array(16))), store: core.memoryStore() })
    await generated(total).pipeThrough(chain.encryptStream({ associatedData: AD })).pipeThrough(chain.decryptStream({ associatedData: AD })).pipeTo(sink)
  } else if (variant === 'raw') {
    const key = await subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt', 'decrypt'])
    const prefix = crypto.getRandomValues(new Uint8Array(7))
    await generated(total).pipeThrough(rawTransform(key, 'encrypt', prefix)).pipeThrough(rawTransform(key, 'decrypt', prefix)).pipeTo(sink)
  }
  const expected = variant === 'idle' ? 0 : total
  return { bytes: state.bytes, seconds: (performance.now() - started) / 1000, ok: state.bytes === expected && state.bad === 0 }
}

/**
 * The stream groups of the suite. Returns { rows, checks, notes }: rows of throughput
 * ({ id, title, size, values }) and, where env.memory exists, one { id: 'streamMemory', ... }.
 */
export async function streamSuite(env, measure, { quick, memoryMiB }) {
  const rows = []
  const checks = []
  const notes = []
  const size = (quick ? 4 : 32) * 1048576
  const plaintext = new Uint8Array(size)
  for (let o = 0; o < size; o += SEGMENT) crypto.getRandomValues(plaintext.subarray(o, o + SEGMENT))
  // Input arrives in 64 KiB chunks, not aligned to the header on the decrypting side.
  const inChunks = split(plaintext, SEGMENT)
  const key = await subtle.importKey('raw', crypto.getRandomValues(new Uint8Array(16)), 'AES-GCM', false, ['encrypt', 'decrypt'])
  const { KeyChain, aesRootKey, memoryStore } = env.core
  const chain = await KeyChain.open({ rootKey: aesRootKey(crypto.getRandomValues(new Uint8Array(16))), store: memoryStore() })

  // Round trips first: each variant must give back what went in.
  const collect = async (ts, chunks) => {
    const parts = []
    await throughStream(ts, chunks, (c) => parts.push(c))
    return concat(...parts)
  }
  let encChunks
  try {
    const encrypted = await collect(chain.encryptStream({ associatedData: AD }), inChunks)
    const back = await collect(chain.decryptStream({ associatedData: AD }), split(encrypted, SEGMENT))
    let same = back.length === size
    for (let i = 0; same && i < size; i++) same = back[i] === plaintext[i]
    checks.push({ name: 'encryptStream → decryptStream round trip', ok: same, detail: same ? `${size >> 20} MiB` : 'different bytes' })
    if (!same) return { rows, checks, notes }
    encChunks = split(encrypted, SEGMENT)
  } catch (error) {
    checks.push({ name: 'encryptStream → decryptStream round trip', ok: false, detail: String(error?.message ?? error).split('\n')[0] })
    return { rows, checks, notes }
  }
  const prefix = crypto.getRandomValues(new Uint8Array(7))
  const rawSealed = []
  for (let i = 0; i < inChunks.length; i++) {
    rawSealed.push(new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv: nonce(prefix, i, i === inChunks.length - 1), additionalData: AD }, key, inChunks[i])))
  }
  // The same raw calls inside a TransformStream on the same plumbing: what the runtime's streams
  // alone cost around one crypto.subtle call per chunk (its own segments, no last flag).
  const rawSealedInStream = []
  for (let i = 0; i < inChunks.length; i++) {
    rawSealedInStream.push(new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv: nonce(prefix, i, false), additionalData: AD }, key, inChunks[i])))
  }
  const inStream = await collect(rawTransform(key, 'decrypt', prefix), rawSealedInStream)
  checks.push({ name: 'raw segmented AES-GCM in a TransformStream round trip', ok: inStream.length === size, detail: `${inStream.length} bytes` })
  for (const [id, title, variants] of [
    [
      'streamEnc',
      'encrypt',
      [
        ['raw', () => rawSegmented(key, 'encrypt', inChunks, prefix)],
        ['control', () => rawSegmented(key, 'encrypt', inChunks, prefix)],
        ['rawStream', () => throughStream(rawTransform(key, 'encrypt', prefix), inChunks)],
        ['stream', () => throughStream(chain.encryptStream({ associatedData: AD }), inChunks)],
      ],
    ],
    [
      'streamDec',
      'decrypt',
      [
        // Raw decrypt opens its own segments with their own nonces: no verification shortcut.
        ['raw', () => rawSegmented(key, 'decrypt', rawSealed, prefix)],
        ['control', () => rawSegmented(key, 'decrypt', rawSealed, prefix)],
        ['rawStream', () => throughStream(rawTransform(key, 'decrypt', prefix), rawSealedInStream)],
        ['stream', () => throughStream(chain.decryptStream({ associatedData: AD }), encChunks)],
      ],
    ],
  ]) {
    const values = await measure(
      variants.map(([name, fn]) => ({ name, fn, inFlight: 1 })),
      `${env.runtime} stream ${title}, ${size >> 20} MiB`,
    )
    rows.push({ id, title, size, values })
  }

  if (env.memory) {
    // In-process memory of a long piped stream: what the runtime reports, sampled every 16 chunks.
    const mib = memoryMiB ?? (quick ? 16 : 256)
    env.gc?.()
    const before = env.memory()
    let peak = before ?? 0
    let n = 0
    const run = await pipeThroughBoth(env.core, 'stream', mib, () => {
      if (++n % 16 === 0) peak = Math.max(peak, env.memory() ?? 0)
    })
    checks.push({ name: `encryptStream → decryptStream, ${mib} MiB piped, every chunk back in order`, ok: run.ok, detail: `${run.bytes} bytes` })
    if (before !== undefined) {
      rows.push({ id: 'streamMemory', mib, what: env.memoryName ?? 'memory', beforeMiB: before / 1048576, peakMiB: peak / 1048576, seconds: run.seconds })
    } else notes.push('stream memory: the runtime reported none')
  }
  return { rows, checks, notes }
}
