// kms-proxy benchmark: the cost of a chain's roots. What changing the root of a chain with 1,000
// KEKs costs (root-key calls, time, data bytes written), what a second root adds in bytes, and
// what unlocking costs per root kind.
//
//   pnpm build && node bench/roots.mjs          (about a minute)
//   BENCH_KEKS=200 node bench/roots.mjs         fewer KEKs, faster
//
// Root keys are real (AES-GCM in WebCrypto, PBKDF2 at the passphrase root's default 600,000
// iterations); stores are real (memory, and the file store in a temporary folder).
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KeyChain, aesRootKey, embeddedStore, memoryStore } from '@kms-proxy/core'
import { fileStore } from '../packages/file/dist/index.js'
import { passphraseRootKey } from '../packages/passphrase/dist/index.js'

const KEKS = Number(process.env.BENCH_KEKS ?? 1000)
// The file store writes the whole file and fsyncs it per record: fewer KEKs keep the run short.
const FILE_KEKS = Number(process.env.BENCH_FILE_KEKS ?? 200)
const log = (line = '') => process.stdout.write(line + '\n')
const ms = (t) => `${Math.round(t).toLocaleString('en-US')} ms`
const bytes = (n) => crypto.getRandomValues(new Uint8Array(n))

/** A root with its calls counted. */
function counted(inner) {
  const calls = { newKek: 0, wrapKek: 0, unwrapKek: 0 }
  return {
    calls,
    key: {
      kind: inner.kind,
      newKek: (aad) => (calls.newKek++, inner.newKek(aad)),
      wrapKek: (kek, aad) => (calls.wrapKek++, inner.wrapKek(kek, aad)),
      unwrapKek: (w, aad, o) => (calls.unwrapKek++, inner.unwrapKek(w, aad, o)),
    },
  }
}

const digest = (list) => createHash('sha256').update(Buffer.concat(list.map((d) => Buffer.from(d)))).digest('hex')

async function changeRootOf(storeName, store, oldRoot, newRoot, keks = KEKS) {
  // A chain with KEKS KEKs, one message under each.
  const maker = await KeyChain.open({ rootKey: oldRoot(), store, dekPoolSize: 0 })
  const data = []
  for (let i = 0; i < keks; i++) {
    if (i > 0) await maker.rotate()
    data.push(await maker.encrypt(`message ${i}`))
  }
  const before = digest(data)
  const [old, neu] = [counted(oldRoot()), counted(newRoot())]
  const chain = await KeyChain.open({ rootKey: old.key, store })
  const started = performance.now()
  const report = await chain.changeRoot(neu.key)
  const took = performance.now() - started
  const after = await KeyChain.open({ rootKey: newRoot(), store })
  for (const d of data) await after.decrypt(d)
  if (digest(data) !== before) throw new Error('data changed')
  log(
    `| ${storeName} | ${report.keks.toLocaleString('en-US')} | ${old.calls.unwrapKek.toLocaleString('en-US')} | ${neu.calls.wrapKek.toLocaleString('en-US')} + ${neu.calls.unwrapKek} | ${report.deleted.toLocaleString('en-US')} | ${ms(took)} | 0 |`,
  )
}

async function unlock(label, open) {
  const samples = []
  for (let i = 0; i < 3; i++) {
    const { chain, data } = await open()
    const started = performance.now()
    await chain.decrypt(data)
    samples.push(performance.now() - started)
  }
  samples.sort((a, b) => a - b)
  log(`| ${label} | ${ms(samples[1])} |`)
}

const dir = await mkdtemp(join(tmpdir(), 'kp-bench-roots-'))
try {
  log(`Node ${process.versions.node}, ${KEKS.toLocaleString('en-US')} KEKs\n`)
  log('Changing the root (`changeRoot`): calls, time, data bytes written\n')
  log('| store | KEKs | old root unwraps | new root wraps + unwraps | old wraps deleted | time | data bytes written |')
  log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
  const A = bytes(32)
  const B = bytes(32)
  await changeRootOf('memory, AES → AES', memoryStore(), () => aesRootKey(A), () => aesRootKey(B))
  await changeRootOf('file, AES → AES', fileStore(join(dir, 'keys.json')), () => aesRootKey(A), () => aesRootKey(B), FILE_KEKS)
  const phrase = (p) => () => passphraseRootKey({ passphrase: p })
  await changeRootOf('memory, passphrase → new passphrase', memoryStore(), phrase('correct horse battery staple'), phrase('a new passphrase, typed twice'))

  log('\nWhat a second root adds\n')
  log('| where | one root | two roots | added |')
  log('| --- | ---: | ---: | ---: |')
  const store = memoryStore()
  const one = await KeyChain.open({ rootKey: aesRootKey(A), store })
  await one.encrypt('x')
  const oneRecords = await store.listKeks('default')
  await one.addRoot('recovery', aesRootKey(B))
  const twoRecords = await store.listKeks('default')
  const size = (rs) => rs.reduce((n, r) => n + r.wrapped.length, 0)
  log(`| a KEK in a store (AES roots: wrapped bytes) | ${size(oneRecords)} B | ${size(twoRecords)} B | ${size(twoRecords) - size(oneRecords)} B, one record |`)
  const m1 = await (await KeyChain.open({ rootKey: aesRootKey(A) })).encrypt('x')
  const m2 = await (await KeyChain.open({ roots: { passkey: aesRootKey(A), recovery: aesRootKey(B) } })).encrypt('x')
  log(`| each message, embedded store (roots "passkey", "recovery") | ${m1.length} B | ${m2.length} B | ${m2.length - m1.length} B |`)
  const ps = memoryStore()
  const pc = await KeyChain.open({ rootKey: aesRootKey(A), store: ps })
  await pc.encrypt('x')
  await pc.addRoot('recovery', passphraseRootKey({ passphrase: 'correct horse battery staple' }))
  const pr = (await ps.listKeks('default')).find((r) => r.root === 'recovery')
  log(`| a KEK in a store, passphrase root | | | ${pr.wrapped.length} B |`)

  log('\nUnlock: the first decryption of a new process (one root-key unwrap), median of 3\n')
  log('| roots | time |')
  log('| --- | ---: |')
  const fresh = async (rootKey, opts = {}) => {
    const s = memoryStore()
    const data = await (await KeyChain.open({ ...opts.writer, store: s })).encrypt('x')
    return { chain: await KeyChain.open({ rootKey, ...opts.reader, store: s }), data }
  }
  await unlock('one AES root', () => fresh(aesRootKey(A), { writer: { rootKey: aesRootKey(A) } }))
  await unlock('two AES roots, opened with the first', () => fresh(undefined, { writer: { roots: { a: aesRootKey(A), b: aesRootKey(B) } }, reader: { rootKey: undefined, roots: { a: aesRootKey(A) } } }))
  await unlock('two AES roots, the first down (unreachable): unlocks through the second', () => {
    const down = { kind: 'aes', newKek: () => Promise.reject(new Error('down')), unwrapKek: () => Promise.reject(Object.assign(new Error('down'))) }
    return fresh(undefined, { writer: { roots: { a: aesRootKey(A), b: aesRootKey(B) } }, reader: { rootKey: undefined, roots: { a: down, b: aesRootKey(B) } } })
  })
  const P = 'correct horse battery staple'
  await unlock('one passphrase root (PBKDF2, 600,000 iterations)', () => fresh(passphraseRootKey({ passphrase: P }), { writer: { rootKey: passphraseRootKey({ passphrase: P }) } }))
} finally {
  await rm(dir, { recursive: true, force: true })
}
