// A Bun script on kms-proxy: a key chain under a passphrase in a file store, a few records
// encrypted as text columns, and a file encrypted and decrypted as a stream (Bun.file in,
// Bun.write out), in constant memory.
//
//   KMS_PROXY_PASSPHRASE=... bun main.ts [folder]      (the folder defaults to ./data)
//
// Its expected failures (no passphrase, a wrong one, a store it cannot use) print one line and
// exit non-zero: 2 for a setting to fix, 1 for anything else.
import { KeyChain, isKmsProxyError } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { passphraseRootKey } from '@kms-proxy/passphrase'

const dir = process.argv[2] ?? './data'
const keysPath = `${dir}/keys.json`

/** An expected failure: one line on stderr and an exit status, never a stack trace. */
function fail(message: string, status = 1): never {
  console.error(`bun-script: ${message}`)
  process.exit(status)
}

const passphrase = process.env.KMS_PROXY_PASSPHRASE
if (passphrase === undefined) fail(`KMS_PROXY_PASSPHRASE is not set: set it to the passphrase that protects ${keysPath}`, 2)
if (passphrase === '') fail(`KMS_PROXY_PASSPHRASE is empty: set it to the passphrase that protects ${keysPath}`, 2)
// PBKDF2 count: OWASP's 600,000 unless the environment asks for less (for a quick try).
const iterations = Number(process.env.KMS_PROXY_ITERATIONS ?? 600_000)

try {
  await main(passphraseRootKeyOrExit())
} catch (error) {
  if (isKmsProxyError(error)) {
    if (error.code === 'ERR_ROOT_KEY' && !error.retryable) {
      fail(`KMS_PROXY_PASSPHRASE does not unlock ${keysPath}: a wrong passphrase, or the file was altered (ERR_ROOT_KEY)`)
    }
    fail(`${error.message} (${error.code}${error.retryable ? ', may succeed if tried again' : ''})`)
  }
  // A file the script itself reads or writes (report.bin): the system's message names it.
  if (typeof (error as { code?: unknown }).code === 'string') fail((error as Error).message)
  throw error
}

function passphraseRootKeyOrExit() {
  try {
    return passphraseRootKey({ passphrase: passphrase!, iterations })
  } catch (error) {
    if (error instanceof RangeError || error instanceof TypeError) fail(`KMS_PROXY_ITERATIONS=${process.env.KMS_PROXY_ITERATIONS}: ${error.message}`, 2)
    throw error
  }
}

async function main(rootKey: ReturnType<typeof passphraseRootKey>): Promise<void> {
  const chain = await KeyChain.open({
    name: 'bun-script',
    rootKey,
    store: fileStore(keysPath),
  })

  // Records: each column authenticated with its row id, so a ciphertext can't be moved to another row.
  const users = [
    { id: 1, email: 'ada@example.com' },
    { id: 2, email: 'grace@example.com' },
    { id: 3, email: 'edsger@example.com' },
  ]
  const rows = await Promise.all(users.map(async (u) => ({ id: u.id, email: await chain.encryptText(u.email, { associatedData: `users/${u.id}` }) })))
  for (const row of rows) console.log(`row ${row.id}: ${row.email.slice(0, 12)}… (${row.email.length} chars)`)
  const back = await Promise.all(rows.map((row) => chain.decryptText(row.email, { associatedData: `users/${row.id}` })))
  console.log(`records: ${back.every((email, i) => email === users[i]!.email) ? 'all decrypted' : 'MISMATCH'}`)
  try {
    await chain.decryptText(rows[0]!.email, { associatedData: 'users/2' })
    console.log('moved column: accepted (wrong!)')
  } catch (error) {
    console.log(`moved column: refused (${(error as { code: string }).code})`)
  }

  // A file as a stream: 3 MiB of random bytes, encrypted in 64 KiB segments and decrypted back.
  const plain = new Uint8Array(3 * 1024 * 1024)
  for (let i = 0; i < plain.length; i += 65536) crypto.getRandomValues(plain.subarray(i, i + 65536))
  await Bun.write(`${dir}/report.bin`, plain)
  const encrypted = Bun.file(`${dir}/report.bin`).stream().pipeThrough(chain.encryptStream({ associatedData: 'report.bin' }))
  await Bun.write(`${dir}/report.bin.kp`, new Response(encrypted))
  const decrypted = Bun.file(`${dir}/report.bin.kp`).stream().pipeThrough(chain.decryptStream({ associatedData: 'report.bin' }))
  await Bun.write(`${dir}/report.out`, new Response(decrypted))
  const sha = async (path: string) => new Bun.CryptoHasher('sha256').update(await Bun.file(path).arrayBuffer()).digest('hex')
  const [a, b] = await Promise.all([sha(`${dir}/report.bin`), sha(`${dir}/report.out`)])
  console.log(`stream: ${Bun.file(`${dir}/report.bin`).size} bytes -> ${Bun.file(`${dir}/report.bin.kp`).size} encrypted -> ${a === b ? 'identical' : 'DIFFERENT'} (sha256 ${a.slice(0, 16)}…)`)

  const s = chain.stats()
  const count = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`
  console.log(`root-key calls: ${count(s.rootKeyWraps, 'wrap')}, ${count(s.rootKeyUnwraps, 'unwrap')} for ${count(s.encryptions, 'encryption')} and ${count(s.decryptions, 'decryption')}`)
}
