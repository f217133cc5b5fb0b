/**
 * DEKs prepared ahead of `encrypt` calls: generated, imported and wrapped off the caller's path,
 * so that an encryption in steady state costs one `crypto.subtle` call. Each prepared DEK is used
 * exactly once; its use of the KEK was reserved when it was prepared, and a prepared DEK that is
 * dropped (rotate(), a KEK past its age) counts as used.
 */
import { DEK_BYTES, IV_BYTES } from '../format.js'
import { concat } from './bytes.js'
import type { Leases, Primary } from './leases.js'
import { randomBytes, randomPublicBytes } from './random.js'

export interface Prepared {
  readonly primary: Primary
  /** The pool's epoch when prepared; drop() moves the epoch so older entries are discarded. */
  readonly epoch: number
  readonly dek: CryptoKey
  /** header || iv1 || wrapped DEK */
  readonly prefix: Uint8Array
}

const GCM = 'AES-GCM'
const GCM_ALGORITHM = { name: GCM }

export class DekPool {
  readonly #size: number
  readonly #leases: Leases
  #pool: Prepared[] = []
  #filling = false
  #epoch = 0

  constructor(size: number, leases: Leases) {
    this.#size = size
    this.#leases = leases
  }

  /** Discards every prepared DEK (their uses stay counted). */
  drop(): void {
    this.#epoch++
    this.#pool = []
  }

  /**
   * The oldest prepared DEK that may still be used. Entries under a KEK that was rotated for
   * usage stay valid (their uses were reserved within the limit); entries from before drop()
   * or under a KEK past its age are dropped, their uses counted as spent.
   */
  take(): Prepared | undefined {
    const pool = this.#pool
    while (pool.length > 0) {
      const prepared = pool.shift()!
      if (prepared.epoch === this.#epoch && !this.#leases.expired(prepared.primary)) return prepared
    }
    return undefined
  }

  /**
   * Schedules a refill once half the pool is used. A macrotask, not a microtask: the refill's
   * burst of subtle calls must never sit between a caller's encrypt and its result.
   */
  fill(): void {
    if (this.#filling || this.#size === 0 || this.#pool.length > this.#size >> 1) return
    this.#filling = true
    const timer = setTimeout(() => void this.#refill(), 0) as unknown as { unref?: () => void }
    timer.unref?.() // Node, Bun, Deno: a pending refill never keeps the process alive
  }

  /**
   * Failures are left for the next inline encrypt, which runs the same steps and reports them.
   * A drop() (close, a superseded primary) ends the refill after its current step: a closed
   * chain takes no more leases and makes no more KEKs in the background.
   */
  async #refill(): Promise<void> {
    const epoch = this.#epoch
    try {
      while (this.#epoch === epoch && this.#pool.length < this.#size) {
        const p = await this.#leases.acquire()
        const n = 1 + this.#leases.take(p, this.#size - this.#pool.length - 1)
        for (const prepared of await this.prepare(p, n)) {
          if (prepared.epoch === this.#epoch) this.#pool.push(prepared)
        }
      }
    } catch {
      // See above.
    } finally {
      this.#filling = false
    }
  }

  /**
   * `n` fresh DEKs wrapped under `p`, whose uses the caller reserved. Their bytes come from one
   * `getRandomValues` call and are zeroed before this function yields: WebCrypto's importKey and
   * encrypt copy their input before returning ("get a copy of the bytes held by").
   */
  prepare(p: Primary, n: number, stream = false): Promise<Prepared[]> {
    const epoch = this.#epoch
    const header = stream ? p.streamHeader : p.header
    const keyBytes = randomBytes(DEK_BYTES * n)
    const pending: Promise<Prepared>[] = []
    for (let i = 0; i < n; i++) {
      const dekBytes = keyBytes.subarray(i * DEK_BYTES, (i + 1) * DEK_BYTES)
      const iv1 = randomPublicBytes(IV_BYTES)
      const dek = crypto.subtle.importKey('raw', dekBytes, GCM_ALGORITHM, false, ['encrypt'])
      const wrapped = crypto.subtle.encrypt({ name: GCM, iv: iv1, additionalData: header }, p.kek, dekBytes)
      pending.push(
        Promise.all([dek, wrapped]).then(([key, wrap]) => ({ primary: p, epoch, dek: key, prefix: concat(header, iv1, new Uint8Array(wrap)) })),
      )
    }
    keyBytes.fill(0)
    return Promise.all(pending)
  }
}
