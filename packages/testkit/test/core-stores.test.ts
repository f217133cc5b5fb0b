import { it } from 'vitest'
import { embeddedStore, memoryStore } from '@kms-proxy/core'
import { createHarness, describeStore } from '../src/index.ts'

// The two stores in core pass the same contract as every adapter.
const t = createHarness(it)
describeStore(t, {
  name: 'memoryStore',
  severalRoots: true,
  watch: true,
  async open() {
    const store = memoryStore()
    return { store, another: () => store }
  },
})
describeStore(t, {
  name: 'embeddedStore',
  severalRoots: true,
  watch: true,
  async open() {
    const store = embeddedStore()
    return { store, another: () => store }
  },
})
