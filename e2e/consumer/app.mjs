// The consumer app on Node, Deno and Bun: `<runtime> app.mjs KMS_URL` prints the results as JSON.
// Besides what runs everywhere (checks.mjs), a package for servers only: the file store.
import { mkdtempSync, rmSync } from 'node:fs'
import process from 'node:process'
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { run } from './checks.mjs'

const results = await run({ kmsUrl: process.argv[2] })
const dir = mkdtempSync('keys-')
try {
  const rootKey = aesRootKey(new Uint8Array(32).fill(3))
  const encrypted = await (await KeyChain.open({ rootKey, store: fileStore(`${dir}/keys.json`) })).encrypt('on disk')
  // Another chain on the same file, as another process would open it.
  const again = await KeyChain.open({ rootKey, store: fileStore(`${dir}/keys.json`) })
  const plaintext = new TextDecoder().decode(await again.decrypt(encrypted))
  results.push({ name: 'a file store keeps the chain for the next process', ok: plaintext === 'on disk', detail: plaintext === 'on disk' ? 'file store' : `decrypted "${plaintext}"` })
} catch (error) {
  results.push({ name: 'a file store keeps the chain for the next process', ok: false, detail: String(error?.message ?? error) })
} finally {
  rmSync(dir, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify(results))
