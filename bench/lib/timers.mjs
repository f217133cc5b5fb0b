// How long setTimeout(0) takes on this runtime, for the Result's notes. kms-proxy refills its
// pool of prepared DEKs on a setTimeout(0) (a macrotask, so that the refill's crypto.subtle calls
// do not delay the caller's): where the runtime clamps that timer, the refill comes later. HTML
// clamps a timer to at least 4 ms once timers nest 5 deep (a timer set from a timer callback,
// five times over). Chromium 156 was seen to count a crypto.subtle continuation as part of the
// timer task that awaited it, so code that descends from nested timers through crypto.subtle
// awaits gets the clamp too; a message task ends the chain (the suite starts every sample from
// one, bench/lib/measure.mjs). Web APIs only.

const timer0 = () => new Promise((resolve) => setTimeout(resolve, 0))
const subtle = globalThis.crypto.subtle

function median(values) {
  const s = [...values].sort((a, b) => a - b)
  return s[s.length >> 1]
}

/**
 * Median delay of setTimeout(0), in ms, set right after a crypto.subtle call: `fresh`, in a chain
 * that a message task began; `nested`, in a chain that has passed through more than 5 timers.
 * Bounded: 15 timers each.
 */
export async function timerDelays() {
  const key = await subtle.importKey('raw', new Uint8Array(16), 'AES-GCM', false, ['encrypt'])
  const call = () => subtle.encrypt({ name: 'AES-GCM', iv: new Uint8Array(12) }, key, new Uint8Array(16))
  const channel = new MessageChannel()
  const message = () =>
    new Promise((resolve) => {
      channel.port1.onmessage = resolve
      channel.port2.postMessage(0)
    })
  const delay = async () => {
    await call()
    const t0 = performance.now()
    await timer0()
    return performance.now() - t0
  }
  const fresh = []
  for (let i = 0; i < 15; i++) {
    await message()
    fresh.push(await delay())
  }
  const nested = []
  for (let i = 0; i < 6; i++) await timer0()
  for (let i = 0; i < 15; i++) nested.push(await delay())
  channel.port1.close()
  return { fresh: median(fresh), nested: median(nested) }
}

/** The note for a Result. */
export async function timerNote() {
  const { fresh, nested } = await timerDelays()
  const ms = (x) => `${Number(x.toFixed(3))} ms`
  return `setTimeout(0), on which the DEK pool refills: median ${ms(fresh)} when set after a crypto.subtle call in code that a message task began; ${ms(nested)} when that code descends from more than 5 nested timer callbacks (through crypto.subtle awaits); the suite starts every sample from a message task`
}
