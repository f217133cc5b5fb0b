/** A bounded map that forgets the least recently used entry. Map keeps insertion order. */
export class Lru<K, V> {
  readonly #map = new Map<K, V>()
  constructor(readonly capacity: number) {}

  get(key: K): V | undefined {
    const value = this.#map.get(key)
    if (value !== undefined) {
      this.#map.delete(key)
      this.#map.set(key, value)
    }
    return value
  }

  set(key: K, value: V): void {
    if (this.capacity <= 0) return
    this.#map.delete(key)
    this.#map.set(key, value)
    if (this.#map.size > this.capacity) this.#map.delete(this.#map.keys().next().value as K)
  }

  /** Deletes `key` only while it still maps to `value` (a failed promise must not evict its successor). */
  deleteIf(key: K, value: V): void {
    if (this.#map.get(key) === value) this.#map.delete(key)
  }

  clear(): void {
    this.#map.clear()
  }

  get size(): number {
    return this.#map.size
  }
}
