/**
 * The four KMS root keys, unchanged, in Deno, Bun, workerd (Miniflare) and Chromium: the
 * describeRootKey contract against moto (AWS) and the local Google, Vault and Azure servers,
 * each run's code bundled by esbuild from the package sources. Node is covered by the other files.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { bundle, launch, serve } from '../../indexeddb/test/serve.ts'
import { startMoto, type Moto } from './fakes/moto.ts'
import { startFakeGcpKms, type FakeGcpKms } from './fakes/gcp.ts'
import { startFakeVault, type FakeVault } from './fakes/vault.ts'
import { startFakeAzureKeyVault, type FakeAzureKeyVault } from './fakes/azure.ts'
import { startCorsProxy } from './fakes/cors.ts'
import { createLedger, startAzureIdentityFake, startContainerFake, startGcpMetadataFake, startImdsFake } from './fakes/metadata.ts'
import type { Targets } from './portable/suite.ts'

// deno: the binary itself. npm's `deno` package runs it through a Node wrapper (spawnSync) that
// does not pass signals on, so stopping the wrapper would leave deno running.
const bin = (name: string) => join(import.meta.dirname, '..', '..', '..', 'node_modules', ...(name === 'deno' ? ['deno', 'deno'] : ['.bin', name]))
type Result = { name: string; ok: boolean; ms: number; error?: string }
const credentials = { accessKeyId: 'AKIDKMSPROXYRUNTIMES', secretAccessKey: 'kms-proxy-runtimes-secret/abc+def' }
const gcpKey = (k: string) => `projects/p/locations/europe-west1/keyRings/r/cryptoKeys/${k}`

let moto: Moto
let gcp: FakeGcpKms
let vault: FakeVault
let azure: FakeAzureKeyVault
let targets: Targets
const closers: (() => unknown)[] = []
const dir = mkdtempSync(join(tmpdir(), 'kms-runtimes-'))

/** The portable suite, bundled from the sources (the Chromium tests' shared esbuild helper). */
async function bundleEntry(entry: string): Promise<string> {
  return new TextDecoder().decode(await bundle(join(import.meta.dirname, 'portable', entry)))
}

function check(results: Result[]): void {
  expect(results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.error}`)).toEqual([])
  expect(results.length).toBe(38) // 9 contract tests (wrapKek included) × 4 KMSs, and 2 of the credential providers
}

function run(command: string, args: string[], env: Record<string, string>): Promise<Result[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('error', reject)
    child.on('close', (code) => {
      try {
        resolve(JSON.parse(stdout) as Result[])
      } catch {
        reject(new Error(`${command} exited ${code}: ${(stderr || stdout).slice(0, 2000)}`))
      }
    })
  })
}

beforeAll(async () => {
  moto = await startMoto(credentials)
  closers.push(() => moto.close())
  const keyId = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
  const otherKeyId = (await moto.kms('CreateKey', {})).KeyMetadata.KeyId
  gcp = await startFakeGcpKms({ token: 'ya29.runtimes-token', keys: [gcpKey('app'), gcpKey('other')] })
  vault = await startFakeVault({ token: 'hvs.runtimes-token', keys: ['app', 'other'] })
  azure = await startFakeAzureKeyVault({ token: 'eyJ.runtimes-token', keys: ['app', 'other'] })
  closers.push(() => gcp.close(), () => vault.close(), () => azure.close())
  const ledger = createLedger()
  const identityHeader = 'runtimes-identity-header'
  const sources = await Promise.all([
    startImdsFake({ ledger, lifetimeMs: 600_000 }),
    startContainerFake({ ledger, lifetimeMs: 600_000, authorization: () => 'runtimes-container-token' }),
    startGcpMetadataFake({ ledger, lifetimeMs: 600_000 }),
    startAzureIdentityFake({ ledger, lifetimeMs: 600_000, identityHeader }),
  ])
  closers.push(...sources.map((s) => () => s.close()))
  const [imds, container, gcpMetadata, azureIdentity] = sources.map((s) => s.url) as [string, string, string, string]
  targets = {
    aws: { endpoint: moto.endpoint, keyId, otherKeyId, ...credentials },
    gcp: { endpoint: gcp.url, token: 'ya29.runtimes-token', keyName: gcpKey('app'), otherKeyName: gcpKey('other') },
    vault: { address: vault.url, token: 'hvs.runtimes-token' },
    azure: { vaultUrl: azure.url, token: 'eyJ.runtimes-token' },
    sources: { imds, container, containerToken: 'runtimes-container-token', gcp: gcpMetadata, azure: azureIdentity, identityHeader },
  }
}, 120_000) // startMoto may take up to 100 s on a loaded machine

afterAll(async () => {
  for (const close of closers.reverse()) await close()
  rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
})

describe('KMS root keys in other runtimes', () => {
  it('Deno: the contract passes for AWS, Google, Vault and Azure, and the credential providers', async () => {
    const file = join(dir, 'deno.mjs')
    writeFileSync(file, await bundleEntry('cli.ts'))
    const env = { KMS_TARGETS: JSON.stringify(targets), DENO_DIR: join(dir, 'deno-dir'), NO_COLOR: '1', DENO_NO_UPDATE_CHECK: '1' }
    check(await run(bin('deno'), ['run', '--quiet', '--allow-net=127.0.0.1', '--allow-env=KMS_TARGETS', file], env))
  }, 60_000)

  it('Bun: the contract passes for AWS, Google, Vault and Azure, and the credential providers', async () => {
    const file = join(dir, 'bun.mjs')
    writeFileSync(file, await bundleEntry('cli.ts'))
    check(await run(bin('bun'), [file], { KMS_TARGETS: JSON.stringify(targets) }))
  }, 60_000)

  it('workerd (Miniflare): the contract passes for AWS, Google, Vault and Azure, and the credential providers', async () => {
    const { Miniflare } = await import('miniflare')
    const mf = new Miniflare({ modules: true, script: await bundleEntry('worker.ts'), compatibilityDate: '2026-05-01' })
    try {
      const response = await mf.dispatchFetch('http://localhost/', { method: 'POST', body: JSON.stringify(targets) })
      const body = await response.text()
      if (!response.ok) throw new Error(`worker answered ${response.status}: ${body.slice(0, 2000)}`)
      check(JSON.parse(body) as Result[])
    } finally {
      await mf.dispose()
    }
  }, 60_000)

  it('Chromium (a page on http://localhost, each KMS and credential source behind a CORS proxy): the contract and the credential providers pass', async () => {
    const proxied = async (url: string) => {
      const proxy = await startCorsProxy(url)
      closers.push(() => proxy.close())
      return proxy.url
    }
    const browserTargets: Targets = {
      aws: { ...targets.aws, endpoint: `${await proxied(targets.aws.endpoint)}/` },
      gcp: { ...targets.gcp, endpoint: await proxied(targets.gcp.endpoint) },
      vault: { ...targets.vault, address: await proxied(targets.vault.address) },
      azure: { ...targets.azure, vaultUrl: await proxied(targets.azure.vaultUrl) },
      sources: {
        ...targets.sources,
        imds: await proxied(targets.sources.imds),
        container: await proxied(targets.sources.container),
        gcp: await proxied(targets.sources.gcp),
        azure: await proxied(targets.sources.azure),
      },
    }
    const { server, origin } = await serve({ '/page.js': await bundleEntry('page.ts'), '/index.html': '<!doctype html><script type="module" src="/page.js"></script>' })
    const browser = await launch()
    try {
      const page = await browser.newPage()
      await page.goto(`${origin}/?targets=${encodeURIComponent(JSON.stringify(browserTargets))}`)
      await page.waitForFunction(() => (globalThis as { results?: unknown }).results !== undefined)
      check((await page.evaluate(() => (globalThis as unknown as { results: Promise<unknown> }).results)) as Result[])
    } finally {
      await browser.close()
      server.close()
    }
  }, 60_000)
})
