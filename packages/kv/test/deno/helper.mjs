// A second Deno process for watch.test.mjs, on the same database file. Prints one JSON object.
//   cas <kvFile> <chain>   one casHead (leased + 1): { at }, the time it committed
//   rotate <kvFile>        rotates the 'default' chain: { primary, at }
//   exit <kvFile> <what>   opens a watching chain, encrypts, closes <what> (chain, kv or nothing)
//                          and ends its script: { encrypted } (the process exits only if nothing runs)
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { denoKvStore } from '@kms-proxy/kv'

const ROOT = Uint8Array.from({ length: 32 }, (_, i) => (i * 13 + 5) & 0xff)
const kekIdOf = (e) => ((e[1] << 24) | (e[2] << 16) | (e[3] << 8) | e[4]) >>> 0
const [mode, file, chain] = Deno.args
const kv = await Deno.openKv(file)
let out
if (mode === 'cas') {
  const store = denoKvStore(kv)
  const current = await store.getHead(chain)
  if (!(await store.casHead(chain, current.version, { ...current.value, leased: current.value.leased + 1 }))) throw new Error('casHead lost')
  out = { at: Date.now() }
} else if (mode === 'rotate') {
  const rotating = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: denoKvStore(kv), watch: false, dekPoolSize: 0 })
  await rotating.rotate()
  const at = Date.now()
  out = { primary: kekIdOf(await rotating.encrypt('z')), at }
  rotating.close()
} else if (mode === 'exit') {
  const watching = await KeyChain.open({ rootKey: aesRootKey(ROOT), store: denoKvStore(kv), dekPoolSize: 0 })
  await watching.encrypt('z')
  if (chain === 'chain') watching.close()
  if (chain === 'kv') kv.close()
  console.log(JSON.stringify({ encrypted: true }))
} else {
  throw new Error(`unknown mode ${mode}`)
}
if (mode !== 'exit') {
  kv.close()
  console.log(JSON.stringify(out))
}
