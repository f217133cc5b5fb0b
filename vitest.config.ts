import { defineConfig } from 'vitest/config'
import { fileURLToPath } from 'node:url'

const src = (name: string) => fileURLToPath(new URL(`./packages/${name}/src/index.ts`, import.meta.url))

export default defineConfig({
  resolve: {
    // Unit tests run against the sources; the e2e suite runs against the built dist/.
    alias: {
      '@kms-proxy/core': src('core'),
      '@kms-proxy/passphrase': src('passphrase'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts'],
    testTimeout: 60_000,
    pool: 'threads',
  },
})
