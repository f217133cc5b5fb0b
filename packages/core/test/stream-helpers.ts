/** Feeding and draining WHATWG streams in tests. */

/** Pipes `chunks` through `ts` and returns everything it output, concatenated. */
export async function through(ts: TransformStream<Uint8Array, Uint8Array>, chunks: Iterable<Uint8Array>): Promise<Uint8Array> {
  const { output } = await throughUntilError(ts, chunks)
  return output
}

/**
 * Pipes `chunks` through `ts`; returns what came out before the stream ended, and the error it
 * ended with (undefined for a clean close). Used to check what a failing decryption released.
 */
export async function throughUntilError(
  ts: TransformStream<Uint8Array, Uint8Array>,
  chunks: Iterable<Uint8Array>,
): Promise<{ output: Uint8Array; error: unknown; chunks: Uint8Array[] }> {
  const list = [...chunks]
  const source = new ReadableStream<Uint8Array>({
    pull(controller) {
      const next = list.shift()
      if (next === undefined) controller.close()
      else controller.enqueue(next)
    },
  })
  const out: Uint8Array[] = []
  let error: unknown
  let ended = false
  const reader = source.pipeThrough(ts).getReader()
  try {
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      out.push(value)
    }
    ended = true
  } catch (e) {
    error = e
  }
  if (!ended && error === undefined) throw new Error('stream neither closed nor errored')
  return { output: concatAll(out), error, chunks: out }
}

export function concatAll(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.length
  }
  return out
}

/** `bytes` cut at the given sizes (the last piece takes the rest). */
export function chunked(bytes: Uint8Array, sizes: number[]): Uint8Array[] {
  const out: Uint8Array[] = []
  let o = 0
  for (const s of sizes) {
    if (o >= bytes.length) break
    out.push(bytes.subarray(o, Math.min(bytes.length, o + s)))
    o += s
  }
  if (o < bytes.length) out.push(bytes.subarray(o))
  return out
}

/** A deterministic, non-repeating-looking pattern (not for crypto, just distinct bytes per offset). */
export function pattern(size: number, seed = 0): Uint8Array {
  const out = new Uint8Array(size)
  for (let i = 0; i < size; i++) out[i] = (i * 131 + (i >>> 8) * 7 + seed) & 0xff
  return out
}
