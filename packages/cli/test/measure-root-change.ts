/**
 * Measures `kms-proxy root change` from a passphrase to AWS KMS (moto) on a file store of N KEKs:
 * time, root calls and bytes of data written. Not a test: the numbers in the README come from it.
 * Run: node_modules/.bin/tsx packages/cli/test/measure-root-change.ts 1000
 */
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { KeyChain, memoryStore } from '@kms-proxy/core'
import { fileStore } from '@kms-proxy/file'
import { passphraseRootKey } from '@kms-proxy/passphrase'
import { startMoto } from './moto.ts'
import { FAST_KDF, WEAK_KDF_ENV, bundleCli, spawnCollect, tempDir } from './helpers.ts'

const N = Number(process.argv[2] ?? 1000)
const CREDENTIALS = { accessKeyId: 'AKIAMEASURE000000000', secretAccessKey: 'measure-secret' }
const work = tempDir('measure-roots')
const moto = await startMoto(CREDENTIALS, 'eu-central-1', 60_000)
try {
  const bundle = await bundleCli(work.dir)
  const keyId = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
  const dir = join(work.dir, 'chain')
  mkdirSync(dir)
  const env = { KMS_PROXY_CONFIG: join(dir, 'kms-proxy.json'), KMS_PROXY_PASSPHRASE: 'measure passphrase', AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey, ...WEAK_KDF_ENV }
  const run = (args: string[]) => spawnCollect(process.execPath, [bundle, ...args], { cwd: dir, env })
  const init = await run(['init', ...FAST_KDF])
  if (init.code !== 0) throw new Error(init.stderr)
  // Made in memory, then written to the store file once: N rotations on the file store would take minutes.
  const memory = memoryStore()
  const root = passphraseRootKey({ passphrase: env.KMS_PROXY_PASSPHRASE, kdf: 'pbkdf2', iterations: 1000 })
  const file = fileStore(join(dir, 'kms-proxy-keys.json'))
  const first = (await file.listKeks('default'))[0]!
  await memory.putKekIfAbsent('default', first)
  await memory.casHead('default', undefined, (await file.getHead('default'))!.value)
  const chain = await KeyChain.open({ rootKey: root, store: memory, dekPoolSize: 0 })
  const data = await chain.encrypt('measured')
  for (let i = 1; i < N; i++) await chain.rotate()
  const records = await memory.listKeks('default')
  const head = (await memory.getHead('default'))!.value
  const stored = JSON.parse(readFileSync(join(dir, 'kms-proxy-keys.json'), 'utf8'))
  stored.chains.default = {
    head: { ...stored.chains.default.head, value: head },
    keks: Object.fromEntries(records.map((r) => [String(r.id), { createdAt: r.createdAt, rootKind: r.rootKind, wrapped: Buffer.from(r.wrapped).toString('base64') }])),
  }
  writeFileSync(join(dir, 'kms-proxy-keys.json'), JSON.stringify(stored), { mode: 0o600 })
  writeFileSync(join(dir, 'data.kp'), data)
  const before = statSync(join(dir, 'kms-proxy-keys.json')).size
  const started = performance.now()
  const r = await run(['root', 'change', '--root', 'aws-kms', '--aws-key-id', keyId, '--aws-region', 'eu-central-1', '--endpoint', moto.endpoint, '--json'])
  const ms = performance.now() - started
  if (r.code !== 0) throw new Error(r.stderr)
  const after = statSync(join(dir, 'kms-proxy-keys.json')).size
  const dec = await run(['decrypt', '-i', join(dir, 'data.kp')])
  console.log(JSON.stringify({ keks: N, report: JSON.parse(r.stdout.toString()), ms: Math.round(ms), storeBytesBefore: before, storeBytesAfter: after, decrypts: dec.stdout.toString() === 'measured' }))
} finally {
  moto.close()
  work.cleanup()
}
