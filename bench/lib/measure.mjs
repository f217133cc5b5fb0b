// The measuring method of the benchmark, on Web APIs only (performance.now, setTimeout), so that
// it runs unchanged in Node, Deno, Bun, workerd and a browser page.
//
// For one group of variants: each variant warms up (which also sets how many operations make one
// sample), then the variants take turns, one sample each per round, in a new random order every
// round. A sample's time per operation is its wall time divided by its operations. Reported per
// variant: the median sample (ms per op) and the median over rounds of (its time / raw's time in
// the same round), so that drift of the machine hits both sides of a ratio alike. The first
// variant of a group is the baseline ("raw").

/** Median of a list of numbers (the mean of the middle two for an even count). */
export function median(values) {
  const s = [...values].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** A shuffled copy. Math.random only orders the variants of a round; nothing here is a key. */
export function shuffled(list) {
  const out = [...list]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * A yield through a message task. HTML clamps a timer to 4 ms once timers nest 5 deep, and
 * Chromium counts code that awaited crypto.subtle after a timer as part of that nesting: after
 * the idle timers between samples, kms-proxy's DEK pool refill (a setTimeout(0)) would come 4 ms
 * late, which no application that handles events sees. A message task ends the chain, so every
 * sample starts as code run from an event would. Returns { next(), close() }; without
 * MessageChannel, next() resolves at once.
 */
function messageTasks() {
  if (typeof MessageChannel !== 'function') return { next: async () => {}, close() {} }
  const channel = new MessageChannel()
  let waiting
  channel.port1.onmessage = () => waiting?.()
  return {
    next: () =>
      new Promise((resolve) => {
        waiting = resolve
        channel.port2.postMessage(0)
      }),
    // An open port keeps Node's event loop alive.
    close: () => channel.port1.close(),
  }
}

/**
 * The smallest nonzero step of performance.now(), in ms. Chromium coarsens the clock (100 µs
 * without cross-origin isolation) and workerd's steps in whole milliseconds; a sample must last
 * many steps for its time to mean anything. Spins for a change a bounded number of times and
 * falls back to a timer wait, so that a clock that only moves across I/O cannot hang the run.
 */
export async function clockResolution() {
  const steps = []
  for (let k = 0; k < 8 && steps.length < 5; k++) {
    let a = performance.now()
    // Align to a tick first, so that the step measured is a whole one.
    for (let n = 0, b; n < 2e6 && (b = performance.now()) === a; n++) a = b
    a = performance.now()
    let b = a
    for (let n = 0; n < 2e6 && b === a; n++) b = performance.now()
    if (b === a) {
      await sleep(1)
      b = performance.now()
    }
    if (b > a) steps.push(b - a)
  }
  return steps.length ? Math.min(...steps) : 1
}

/**
 * Runs `ops` operations of a variant (one awaited at a time, or in Promise.all batches of
 * `inFlight`); returns ms per operation.
 */
async function sample(variant, ops) {
  const { fn, inFlight } = variant
  const t0 = performance.now()
  if (inFlight > 1) {
    const batches = Math.max(1, Math.round(ops / inFlight))
    for (let b = 0; b < batches; b++) {
      const all = new Array(inFlight)
      for (let i = 0; i < inFlight; i++) all[i] = fn(i)
      await Promise.all(all)
    }
    return (performance.now() - t0) / (batches * inFlight)
  }
  for (let i = 0; i < ops; i++) await fn(i)
  return (performance.now() - t0) / ops
}

/**
 * Makes the measuring function for one run.
 *
 * cfg: { warmMs, sampleMs, rounds, minRounds, groupMs, calibrationSamples } (sampleMs is already
 * at least 50 clock steps); gc: a full garbage collection or undefined; progress: optional status
 * line.
 *
 * The returned `measure(variants, label)` takes [{ name, fn, inFlight }] (the first is the
 * baseline) and returns { [name]: { msPerOp, ratio, rounds } }.
 */
export function makeMeasure(cfg, { gc, progress } = {}) {
  /**
   * Before every sample: a short idle (background work of the previous sample, such as the DEK
   * pool's refill, finishes) and a full GC where the runtime offers one, so that no sample pays
   * for the garbage of the variant before it.
   */
  async function settle(tasks) {
    await sleep(2)
    await tasks.next()
    gc?.()
  }
  /** More operations per sample, so that one lasts sampleMs: at most 8 times as many per step. */
  function grow(v, ms) {
    const step = v.inFlight > 1 ? v.inFlight : 1
    const factor = Math.min(8, cfg.sampleMs / Math.max(ms, cfg.resolutionMs ?? 0.001))
    return Math.max(v.ops + step, Math.ceil((v.ops * factor) / step) * step)
  }
  async function measure(variants, label) {
    const tasks = messageTasks()
    try {
      return await measureGroup(variants, label, tasks)
    } finally {
      tasks.close()
    }
  }
  async function measureGroup(variants, label, tasks) {
    for (const v of variants) {
      v.inFlight ??= 1
      const step = v.inFlight > 1 ? v.inFlight : 1
      await tasks.next() // calibrate under the conditions of the samples
      const t0 = performance.now()
      await sample(v, step)
      // The first call can be far slower (compilation, first use of a key): the calibration
      // counts from after it, so one slow start does not shrink every sample to one operation.
      const t1 = performance.now()
      let ops = 0
      while (performance.now() - t0 < cfg.warmMs || ops < step) {
        await sample(v, step)
        ops += step
      }
      // A clock that did not move (coarse, or a very fast call) still yields a finite estimate.
      v.perOp = Math.max(performance.now() - t1, cfg.resolutionMs ?? 0.001) / ops
      v.ops = Math.max(step, Math.round(cfg.sampleMs / v.perOp / step) * step)
      // Check the estimate with whole samples: calls can speed up many times over after the
      // warm-up (workerd's 1 MiB encryptions went from about 5 ms to 0.3 ms after about 100 calls),
      // and a sample that ends up far shorter than planned is mostly clock steps.
      for (let k = 0; k < (cfg.calibrationSamples ?? 4); k++) {
        const ms = (await sample(v, v.ops)) * v.ops
        if (ms >= 0.7 * cfg.sampleMs) break
        v.ops = grow(v, ms)
      }
      v.samples = []
    }
    // Rounds until groupMs is spent (at least minRounds, at most rounds). Counted from the clock,
    // not estimated: the idle and GC before each sample cost more than the sample where the heap
    // is large (1 MiB payloads).
    const roundsStart = performance.now()
    let rounds = 0
    for (let r = 0; r < cfg.rounds; r++) {
      const spent = performance.now() - roundsStart
      if (r >= cfg.minRounds && spent + spent / r > cfg.groupMs) break
      rounds = r + 1
      progress?.(`${label}: round ${r + 1}`)
      // A new order every round: no variant always runs right after the same other one (whose
      // leftovers, such as freed memory to map again, would otherwise bias it the same way).
      for (const v of shuffled(variants)) {
        await settle(tasks)
        const perOp = await sample(v, v.ops)
        v.samples.push(perOp)
        // Still too short (the calls sped up further): longer samples from the next round on.
        if (perOp * v.ops < 0.5 * cfg.sampleMs) v.ops = grow(v, perOp * v.ops)
      }
    }
    const raw = variants[0]
    const out = {}
    for (const v of variants) {
      const ratios = v.samples.map((t, i) => t / raw.samples[i])
      out[v.name] = { msPerOp: median(v.samples), ratio: median(ratios), rounds, opsPerSample: v.ops }
    }
    return out
  }
  return measure
}

/**
 * Latency with idle time between calls, as in a server that encrypts now and then: one call, then
 * 1 ms of idle, variants taking turns. Returns { [name]: { p50, p90 } } in ms. Only meaningful
 * where the clock resolves well below a call (the suite leaves it out otherwise).
 */
export async function paced(variants, count, progress, label) {
  const lat = variants.map(() => [])
  const warm = Math.max(5, count >> 3)
  const tasks = messageTasks()
  try {
    for (let r = 0; r < count + warm; r++) {
      if (r % 20 === 0) progress?.(`${label}: ${r}/${count + warm}`)
      for (const k of shuffled(variants.map((_, k) => k))) {
        await sleep(1)
        await tasks.next() // each call starts as an event's handler would, outside any timer chain
        const t0 = performance.now()
        await variants[k].fn(0)
        if (r >= warm) lat[k].push(performance.now() - t0)
      }
    }
  } finally {
    tasks.close()
  }
  const q = (a, p) => [...a].sort((x, y) => x - y)[Math.floor(p * (a.length - 1))]
  const out = {}
  variants.forEach((v, k) => (out[v.name] = { p50: q(lat[k], 0.5), p90: q(lat[k], 0.9) }))
  return out
}
