import { defineConfig } from 'vitest/config'
import { fileURLToPath } from 'node:url'

const src = (name: string) => fileURLToPath(new URL(`./packages/${name}/src/index.ts`, import.meta.url))

export default defineConfig({
  resolve: {
    // Unit tests run against the sources; the e2e suite runs against the built dist/.
    alias: {
      '@kms-proxy/core': src('core'),
      '@kms-proxy/passphrase': src('passphrase'),
      '@kms-proxy/testkit': src('testkit'),
      '@kms-proxy/file': src('file'),
      '@kms-proxy/etcd': src('etcd'),
      '@kms-proxy/kv': src('kv'),
      '@kms-proxy/indexeddb': src('indexeddb'),
      '@kms-proxy/kms': src('kms'),
      '@kms-proxy/webauthn': src('webauthn'),
      '@kms-proxy/pkcs11-bridge': src('pkcs11-bridge'),
      '@kms-proxy/pkcs11': src('pkcs11'),
      '@kms-proxy/k8s': src('k8s'),
      '@kms-proxy/cli': src('cli'),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts'],
    testTimeout: 60_000,
    pool: 'threads',
  },
})
