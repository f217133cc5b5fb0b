// Entry for Node, Deno and Bun, started by bench/lib/local.mjs:
//   <runtime> bench/runtimes/cli.mjs suite <input.json>   prints the suite's Result as JSON
//   <runtime> bench/runtimes/cli.mjs rss <idle|raw|stream> <MiB>   streams that much, encrypt then
//     decrypt, piped, prints { ok, bytes, seconds }, and stays alive a moment for the host's last
//     reading of its peak RSS.
// Packages are imported by name, so their package.json `exports` resolve them (the built dist).
import { readFileSync } from 'node:fs'
import process from 'node:process'
import * as core from '@kms-proxy/core'
import { josePeer, runSuite } from '../lib/suite.mjs'
import { pipeThroughBoth } from '../lib/stream.mjs'

const kind = globalThis.Deno ? 'deno' : globalThis.Bun ? 'bun' : 'node'
const [mode, ...args] = process.argv.slice(2)
const firstLine = (error) => String(error?.message ?? error).split('\n')[0]

if (mode === 'rss') {
  const [variant, mib] = args
  const run = await pipeThroughBoth(core, variant, Number(mib))
  process.stdout.write(JSON.stringify(run) + '\n')
  // The host polls /proc/<pid>/status while this process lives: give it a last look.
  await new Promise((resolve) => setTimeout(resolve, 150))
  process.exit(run.ok ? 0 : 1)
}

/** A full GC: Deno with --v8-flags=--expose-gc, Bun's own, Node's through v8 + vm at run time. */
async function fullGc() {
  if (kind === 'bun') return () => globalThis.Bun.gc(true)
  if (typeof globalThis.gc === 'function') return globalThis.gc
  if (kind === 'node') {
    // Set at run time, so the command stays `node bench/runtimes/cli.mjs`.
    const v8 = await import('node:v8')
    const vm = await import('node:vm')
    v8.setFlagsFromString('--expose-gc')
    return vm.runInNewContext('gc')
  }
  return undefined
}

function version() {
  if (kind === 'deno') return `deno ${globalThis.Deno.version.deno} (V8 ${globalThis.Deno.version.v8})`
  if (kind === 'bun') return `bun ${globalThis.Bun.version}`
  return `node ${process.version} (V8 ${process.versions.v8})`
}

const rss = kind === 'deno' ? () => globalThis.Deno.memoryUsage().rss : () => process.memoryUsage.rss()

/** The AWS Encryption SDK for Node: raw AES keyring with a caching materials manager. */
async function awsNodePeer() {
  const aws = await import('@aws-crypto/client-node')
  return async (ad) => {
    const { buildClient, CommitmentPolicy, RawAesKeyringNode, RawAesWrappingSuiteIdentifier, NodeCachingMaterialsManager, getLocalCryptographicMaterialsCache, AlgorithmSuiteIdentifier } = aws
    const { encrypt, decrypt } = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    const keyring = new RawAesKeyringNode({
      keyNamespace: 'bench',
      keyName: 'aes-128',
      unencryptedMasterKey: crypto.getRandomValues(new Uint8Array(16)),
      wrappingSuite: RawAesWrappingSuiteIdentifier.AES128_GCM_IV12_TAG16_NO_PADDING,
    })
    const cmm = new NodeCachingMaterialsManager({
      backingMaterials: keyring,
      cache: getLocalCryptographicMaterialsCache(1000),
      maxAge: 10 * 60 * 1000,
      maxMessagesEncrypted: 2 ** 32,
      maxBytesEncrypted: Number.MAX_SAFE_INTEGER,
    })
    // The SDK's recommended suite without signatures (kms-proxy does not sign either).
    const suiteId = AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY
    const encryptionContext = { ad: new TextDecoder().decode(ad) }
    return {
      encrypt: async (p) => (await encrypt(cmm, p, { suiteId, encryptionContext })).result,
      decrypt: async (d) => (await decrypt(cmm, d)).plaintext,
    }
  }
}

const input = JSON.parse(readFileSync(args[0], 'utf8'))
const peers = {}
const loadNotes = []
try {
  peers.jose = josePeer(await import('jose'))
} catch (error) {
  loadNotes.push(`jose: could not be loaded (${firstLine(error)})`)
}
try {
  peers.aws = await awsNodePeer()
  peers.awsName = '@aws-crypto/client-node'
} catch (error) {
  loadNotes.push(`@aws-crypto/client-node: could not be loaded on ${kind} (${firstLine(error)})`)
}
const env = {
  runtime: input.runtime ?? kind,
  version: version(),
  core,
  peers,
  gc: await fullGc(),
  memory: rss,
  memoryName: kind === 'deno' ? 'RSS (Deno.memoryUsage)' : 'RSS (process.memoryUsage)',
  progress: input.progress ? (text) => process.stderr.write(`progress ${text}\n`) : undefined,
}
const result = await runSuite(env, input)
result.notes.unshift(...loadNotes)
process.stdout.write(JSON.stringify(result))
