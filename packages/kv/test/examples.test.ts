import { afterAll, expect, it } from 'vitest'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as esbuild from 'esbuild'
import { Miniflare } from 'miniflare'

/** Miniflare's KV binding as seen from Node (its types need @cloudflare/workers-types, not installed). */
type NodeKv = { list(options?: { prefix?: string; cursor?: string }): Promise<{ keys: Array<{ name: string }>; list_complete: boolean; cursor?: string }>; get(key: string, type: 'text'): Promise<string | null>; put(key: string, value: string): Promise<unknown> }

const root = join(import.meta.dirname, '..', '..', '..')
const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-kv-examples-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
const ROOT_KEY = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64')

/** Flips one bit in the middle of the base64url body of a text-form encrypted data. */
function tamper(encrypted: string): string {
  const i = Math.floor(encrypted.length / 2)
  const c = encrypted[i] === 'A' ? 'B' : 'A'
  return encrypted.slice(0, i) + c + encrypted.slice(i + 1)
}

type Call = (path: string, body: unknown) => Promise<{ status: number; body: any }>

async function exerciseApi(call: Call): Promise<string> {
  const text = 'héllo, wörld ' + 'x'.repeat(100)
  const enc = await call('/encrypt', { text })
  expect(enc.status).toBe(200)
  expect(enc.body.encrypted).toMatch(/^kp1\./)
  const dec = await call('/decrypt', { encrypted: enc.body.encrypted })
  expect(dec).toEqual({ status: 200, body: { text } })
  const tampered = await call('/decrypt', { encrypted: tamper(enc.body.encrypted) })
  expect(tampered.status).toBe(400)
  expect(tampered.body.error).toBe('ERR_DECRYPT')
  expect(JSON.stringify(tampered.body)).not.toContain('héllo')
  const truncated = await call('/decrypt', { encrypted: enc.body.encrypted.slice(0, 20) })
  expect(truncated).toMatchObject({ status: 400, body: { error: 'ERR_FORMAT' } })
  expect(await call('/encrypt', { nope: 1 })).toMatchObject({ status: 400, body: { error: 'ERR_REQUEST' } })
  return enc.body.encrypted
}

it('examples/cloudflare-worker in Miniflare on a real KV binding: round trip, tampered input is 400 ERR_DECRYPT', async () => {
  const built = await esbuild.build({
    entryPoints: [join(root, 'examples', 'cloudflare-worker', 'worker.mjs')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    write: false,
    absWorkingDir: root,
    logLevel: 'error',
  })
  const mf = new Miniflare({
    modules: true,
    script: built.outputFiles[0]!.text,
    compatibilityDate: '2026-05-01',
    kvNamespaces: ['KEYS'],
    bindings: { ROOT_KEY },
  })
  try {
    const call: Call = async (path, body) => {
      const r = await mf.dispatchFetch(`http://localhost${path}`, { method: 'POST', body: JSON.stringify(body) })
      return { status: r.status, body: await r.json() }
    }
    await exerciseApi(call)
    expect((await mf.dispatchFetch('http://localhost/')).status).toBe(404)
    const kv = (await mf.getKVNamespace('KEYS')) as unknown as NodeKv
    const names = (await kv.list()).keys.map((k) => k.name)
    expect(names.some((n) => n === 'kms-proxy:default:head')).toBe(true)
    expect(names.some((n) => /^kms-proxy:default:kek:\d+$/.test(n))).toBe(true)
  } finally {
    await mf.dispose()
  }
}, 30_000)
