// The main job: encrypt many records under a passphrase root key and count what it costs.
// Run from the repo root with `pnpm demo` (after `pnpm build`), or via scripts/demo.sh.
import { spawnSync } from 'node:child_process'
import { createHash, randomFillSync } from 'node:crypto'
import { createReadStream, mkdtempSync, openSync, rmSync, statSync, writeSync, closeSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KeyChain, embeddedStore } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { passphraseRootKey } from '@kms-proxy/passphrase'

const RECORDS = Number(process.env.DEMO_RECORDS ?? 50_000)
const FILE_MIB = Number(process.env.DEMO_FILE_MIB ?? 256)
const passphrase = process.env.KMS_PROXY_PASSPHRASE ?? 'demo passphrase: set KMS_PROXY_PASSPHRASE'

function record(i) {
  return JSON.stringify({ id: i, name: `customer ${i}`, iban: `DE${String(1e18 + i * 7919).slice(0, 20)}`, note: 'x'.repeat(i % 200) })
}

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-demo-'))
process.on('exit', () => rmSync(dir, { recursive: true, force: true }))

async function run(label, options) {
  // The wrapped KEKs and the chain head live in a file (atomic rename, a lock).
  // Or, with embedded: true, no key file at all: each record carries its wrapped KEK (the default).
  const path = join(dir, `keys-${options.maxWrapsPerKek ?? 'default'}.json`)
  const embedded = options.embedded === true
  delete options.embedded
  const store = embedded ? embeddedStore() : fileStore(path)
  // The root key counts its own calls, so the numbers below are what reached it.
  const inner = passphraseRootKey({ passphrase })
  const calls = { wrap: 0, unwrap: 0 }
  const rootKey = {
    kind: inner.kind,
    newKek: (aad) => (calls.wrap++, inner.newKek(aad)),
    unwrapKek: (w, aad) => (calls.unwrap++, inner.unwrapKek(w, aad)),
  }
  const chain = await KeyChain.open({ rootKey, store, ...options })
  const started = performance.now()
  const encrypted = []
  for (let i = 0; i < RECORDS; i++) encrypted.push(await chain.encrypt(record(i), { associatedData: `customer/${i}` }))
  const encryptMs = performance.now() - started

  // Another process's view: a new chain on a new handle to the same file, same passphrase.
  const reader = await KeyChain.open({ rootKey, store: embedded ? embeddedStore() : fileStore(path), ...options })
  const t0 = performance.now()
  for (let i = 0; i < RECORDS; i++) {
    const plaintext = new TextDecoder().decode(await reader.decrypt(encrypted[i], { associatedData: `customer/${i}` }))
    if (plaintext !== record(i)) throw new Error(`record ${i} did not round-trip`)
  }
  const decryptMs = performance.now() - t0
  const bytes = encrypted.reduce((n, e) => n + e.length, 0)
  return {
    label,
    records: RECORDS,
    keks: embedded ? calls.wrap : (await store.listKeks('default')).length,
    rootCalls: calls.wrap + calls.unwrap,
    wraps: calls.wrap,
    unwraps: calls.unwrap,
    encryptUs: (encryptMs * 1000) / RECORDS,
    decryptUs: (decryptMs * 1000) / RECORDS,
    avgBytes: bytes / RECORDS,
    storeBytes: embedded ? 0 : statSync(path).size,
  }
}

const rows = [
  await run('default policy (2^21 wraps per KEK)', {}),
  await run('maxWrapsPerKek = 10,000', { maxWrapsPerKek: 10_000 }),
  await run('embedded store (the default: no key file, KEK in each record)', { embedded: true }),
]

console.log(`kms-proxy demo: ${RECORDS.toLocaleString('en')} records, passphrase root key (PBKDF2-SHA-256, 600,000 iterations), node ${process.version}\n`)
console.log('| policy | encryptions + decryptions | root-key calls (wrap / unwrap) | KEKs | calls saved vs one per message | µs per encrypt | µs per decrypt |')
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
for (const r of rows) {
  const messages = 2 * r.records
  console.log(
    `| ${r.label} | ${messages.toLocaleString('en')} | ${r.rootCalls} (${r.wraps} / ${r.unwraps}) | ${r.keks} | ${(messages / r.rootCalls).toLocaleString('en', { maximumFractionDigits: 0 })}x fewer | ${r.encryptUs.toFixed(1)} | ${r.decryptUs.toFixed(1)} |`,
  )
}
console.log(`\nThe file store is one file of ${rows.slice(0, 2).map((r) => r.storeBytes.toLocaleString('en')).join(' and ')} bytes (wrapped KEKs and the chain head).`)
console.log(`Each record grew by ${(rows[0].avgBytes - RECORDS_AVG()).toFixed(0)} bytes on average (header, wrapped DEK, IVs, tag); ${(rows[2].avgBytes - RECORDS_AVG()).toFixed(0)} with the KEK embedded.`)
console.log('With a KMS as the root key each of those root-key calls is a billed, rate-limited network request;')
console.log('a naive envelope (one KMS call per message) would have made one per encryption and one per decryption.')

function RECORDS_AVG() {
  let n = 0
  for (let i = 0; i < RECORDS; i++) n += Buffer.byteLength(record(i))
  return n / RECORDS
}

// ------------------------------------------------------------------------------------------
// A file of any size, through the kms-proxy command: a stream in constant memory.
if (FILE_MIB > 0) {
  const cli = fileURLToPath(new URL('./node_modules/.bin/kms-proxy', import.meta.url))
  const env = { ...process.env, KMS_PROXY_PASSPHRASE: passphrase, KMS_PROXY_CONFIG: join(dir, 'kms-proxy.json') }
  const kp = (...args) => {
    const started = performance.now()
    const r = spawnSync(cli, args, { env, encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`kms-proxy ${args[0]} exited ${r.status}: ${r.stderr}`)
    return performance.now() - started
  }
  const plain = join(dir, 'backup.bin')
  const fd = openSync(plain, 'w')
  const chunk = Buffer.alloc(1 << 20)
  for (let i = 0; i < FILE_MIB; i++) writeSync(fd, randomFillSync(chunk))
  closeSync(fd)
  const sha256 = (file) =>
    new Promise((resolve, reject) => {
      const h = createHash('sha256')
      createReadStream(file).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject)
    })
  kp('init', '--store-path', join(dir, 'cli-keys.json'))
  const encMs = kp('encrypt', '-q', '-i', plain, '-o', `${plain}.kp`, '--aad', 'backup.bin')
  const decMs = kp('decrypt', '-q', '-i', `${plain}.kp`, '-o', `${plain}.out`, '--aad', 'backup.bin')
  const same = (await sha256(plain)) === (await sha256(`${plain}.out`))
  if (!same) throw new Error('the file did not round-trip')
  const size = statSync(plain).size
  const overhead = statSync(`${plain}.kp`).size - size
  console.log(`\nA ${FILE_MIB} MiB file through the kms-proxy command (init, encrypt, decrypt; each a new process with one PBKDF2 unlock):`)
  console.log('')
  console.log('| step | seconds | MiB/s |')
  console.log('| --- | ---: | ---: |')
  console.log(`| encrypt (stream, 64 KiB segments) | ${(encMs / 1000).toFixed(2)} | ${(FILE_MIB / (encMs / 1000)).toFixed(0)} |`)
  console.log(`| decrypt | ${(decMs / 1000).toFixed(2)} | ${(FILE_MIB / (decMs / 1000)).toFixed(0)} |`)
  console.log(`\nSHA-256 equal after the round trip; the encrypted file is ${overhead.toLocaleString('en')} bytes larger (${((overhead / size) * 100).toFixed(3)} %).`)
}

// The demo's own peak (every record of one policy is held in memory at once); each kms-proxy
// command above is a process of its own, in constant memory whatever the file's size.
console.log(`\nPeak memory of the demo process: ${Math.round(process.resourceUsage().maxRSS / 1024)} MiB resident.`)
