/**
 * examples/deno-kv, followed as its README is written: its `sh` blocks run literally in bash from
 * a temporary copy of the repository (see example-readme.ts), with only the port changed.
 * Stated rule: the block whose first line starts with `# Build` is not run (it rebuilds every
 * package of the checkout); the test asserts it says `pnpm build` and that the built files the
 * example imports are up to date.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { readmeBlocks } from '../../testkit/test/readme-blocks.ts'
import { freePort, groupGone, killGroup, listening, matchesShown, repoRoot, requireBuilt, runBash, shBlocks, startBlock, tempCheckout, type Background } from './example-readme.ts'

const readme = join(repoRoot, 'examples', 'deno-kv', 'README.md')
const scratch = mkdtempSync(join(tmpdir(), 'kms-proxy-deno-kv-example-'))
const env = { ...process.env, DENO_DIR: join(scratch, 'deno-dir'), DENO_NO_UPDATE_CHECK: '1', NO_COLOR: '1' }
const started: ChildProcess[] = []
afterAll(() => {
  for (const child of started) killGroup(child)
  rmSync(scratch, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 })
})

describe('examples/deno-kv README, as written', () => {
  let checkout: string
  let port: number
  let serve: string[]
  let curl: string[]
  let shown: string[]
  let encrypted: string

  beforeAll(async () => {
    requireBuilt('core', 'kv')
    checkout = tempCheckout(scratch, 'deno-kv', ['README.md', 'deno.json', 'main.mjs'])
    port = await freePort()
    const blocks = shBlocks(readme, scratch)
    const at = (prefix: string) => blocks.find((b) => b.title.startsWith(prefix))?.commands ?? []
    expect(at('# Build')).toEqual(['pnpm build'])
    serve = at('# Serve').map((c) => c.replaceAll('8000', String(port)))
    curl = at('# In another terminal').map((c) => c.replaceAll('8000', String(port)))
    // What the README shows the curl block printing: the plain block right after it.
    const all = readmeBlocks(readme)
    const i = all.findIndex((b) => b.lang === 'sh' && b.text.startsWith('# In another terminal'))
    shown = all[i + 1]?.lang === '' ? all[i + 1]!.text.trimEnd().split('\n') : []
  })

  async function startServer(): Promise<Background> {
    const server = await startBlock(serve, checkout, env, /listening on http/, 20_000)
    started.push(server.shell)
    return server
  }

  async function stopWith(signal: NodeJS.Signals, server: Background): Promise<number | null> {
    process.kill(server.pid, signal)
    const code = await Promise.race([server.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000))])
    expect(code).not.toBe('timeout')
    return code as number | null
  }

  it('starts from the repository root (cd examples/deno-kv) with the repository\'s Deno binary, and curl prints what the README shows', async () => {
    expect(serve[0]).toBe('cd examples/deno-kv')
    expect(serve.at(-1)).toMatch(/^ROOT_KEY=\$\(cat root\.key\) .*deno run .*main\.mjs$/)
    const server = await startServer()
    try {
      expect(server.stdout() + server.stderr()).toMatch(/listening on http/)
      const run = await runBash(curl.join('\n'), checkout, env)
      expect(run.stderr).toBe('')
      const lines = run.stdout.trimEnd().split('\n')
      expect(shown.length).toBe(curl.length)
      expect(lines.length).toBe(shown.length)
      lines.forEach((line, k) => expect(matchesShown(shown[k]!, line), `${line} vs ${shown[k]}`).toBe(true))
      encrypted = JSON.parse(lines[0]!).encrypted
      expect(encrypted).toMatch(/^kp1\./)
      expect(existsSync(join(checkout, 'examples', 'deno-kv', 'root.key'))).toBe(true)
    } finally {
      // SIGTERM to the process the README's command started: the port is free and no deno is left.
      const code = await stopWith('SIGTERM', server)
      expect(code).toBe(0)
      expect(await groupGone(server.shell, 5_000)).toBe(true)
      expect(await listening(port)).toBe(false)
    }
  }, 40_000)

  it('started again the same way (root.key kept), it decrypts what it encrypted before; Ctrl-C (SIGINT) stops it cleanly', async () => {
    const server = await startServer()
    try {
      const r = await fetch(`http://127.0.0.1:${port}/decrypt`, { method: 'POST', body: JSON.stringify({ encrypted }) })
      expect(r.status).toBe(200)
      expect(await r.json()).toEqual({ text: 'hello' })
    } finally {
      expect(await stopWith('SIGINT', server)).toBe(0)
      expect(await groupGone(server.shell, 5_000)).toBe(true)
      expect(await listening(port)).toBe(false)
    }
  }, 30_000)

  it('root.key lost (the README then makes a new one): it refuses to serve, in one line, with a non-zero exit', async () => {
    rmSync(join(checkout, 'examples', 'deno-kv', 'root.key'))
    const server = await startServer()
    const code = await Promise.race([server.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 15_000))])
    expect(code).not.toBe('running')
    expect(code).not.toBe(0)
    expect(server.stdout()).not.toMatch(/listening/)
    const lines = server.stderr().trimEnd().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/ROOT_KEY cannot unwrap the primary KEK of chain "default" in .*keys\.sqlite/)
    expect(lines[0]).toMatch(/restore root\.key from a backup/)
    expect(await listening(port)).toBe(false)
  }, 30_000)
})

it('root.key and keys.sqlite* are git-ignored in examples/deno-kv', () => {
  const ignored = execFileSync('git', ['check-ignore', 'examples/deno-kv/root.key', 'examples/deno-kv/keys.sqlite', 'examples/deno-kv/keys.sqlite-shm'], { cwd: repoRoot, encoding: 'utf8' })
  expect(ignored.trim().split('\n')).toHaveLength(3)
})

it('a missing or malformed ROOT_KEY, or a KV file that cannot be opened: exit 1 with one line, no stack', async () => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ ROOT_KEY: '' }, /^deno-kv example: set ROOT_KEY to base64 of 32 random bytes/],
    [{ ROOT_KEY: 'c2hvcnQ=' }, /^deno-kv example: ROOT_KEY must be base64 of 32 bytes, not 5$/],
    [{ ROOT_KEY: randomKey(), KV_PATH: join(scratch, 'no-such-folder', 'keys.sqlite') }, /^deno-kv example: cannot open .*no-such-folder\/keys\.sqlite: /],
  ]
  await Promise.all(
    cases.map(async ([vars, line]) => {
      const run = await runBash('exec "$DENO" run --allow-env --allow-net --allow-read --allow-write main.mjs', join(repoRoot, 'examples', 'deno-kv'), { ...env, DENO: join(repoRoot, 'node_modules', 'deno', 'deno'), PORT: '0', ...vars }, 20_000)
      expect(run.code).toBe(1)
      expect(run.stdout).toBe('')
      expect(run.stderr.trimEnd().split('\n')).toHaveLength(1)
      expect(run.stderr.trimEnd()).toMatch(line)
    }),
  )
}, 30_000)

/** main.mjs under the real Deno binary, on a free port; resolves once it listens (or it exits). */
async function startDeno(rootKey: string, kvPath: string): Promise<{ child: ChildProcess; url: string }> {
  const deno = join(repoRoot, 'node_modules', 'deno', 'deno')
  const child = spawn(deno, ['run', '--allow-env', '--allow-net', '--allow-read', '--allow-write', 'main.mjs'], {
    cwd: join(repoRoot, 'examples', 'deno-kv'),
    env: { ...env, ROOT_KEY: rootKey, KV_PATH: kvPath, PORT: '0' },
    detached: true,
  })
  started.push(child)
  let out = ''
  let err = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (err += d))
  const deadline = Date.now() + 20_000
  while (!/listening on http/.test(out) && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
  const url = /listening on (http:\/\/\S+?)\/?$/m.exec(out)?.[1]
  if (!url) throw new Error(`deno did not start: ${err}`)
  return { child, url }
}

const randomKey = () => Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64')

it('two servers whose ROOT_KEYs differ share one KV file: the one whose key cannot unwrap the primary answers 500 (a server fault), not 400', async () => {
  requireBuilt('core', 'kv')
  const kvPath = join(scratch, 'shared.sqlite')
  // Both start on an empty store (nothing to check yet); b then makes the primary under its key.
  const a = await startDeno(randomKey(), kvPath)
  const b = await startDeno(randomKey(), kvPath)
  try {
    const post = (url: string, path: string, body: unknown) => fetch(url + path, { method: 'POST', body: JSON.stringify(body) })
    expect((await post(b.url, '/encrypt', { text: 'from b' })).status).toBe(200)
    const r = await post(a.url, '/encrypt', { text: 'from a' })
    expect(r.status).toBe(500)
    expect(await r.json()).toMatchObject({ error: 'ERR_ROOT_KEY' })
    // A client's own bad input stays 4xx on the same server.
    expect((await post(a.url, '/decrypt', { encrypted: 'kp1.AAAA' })).status).toBe(400)
    expect((await post(a.url, '/encrypt', { nope: 1 })).status).toBe(400)
  } finally {
    killGroup(a.child)
    killGroup(b.child)
  }
}, 40_000)
