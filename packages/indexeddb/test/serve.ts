// Shared by the Chromium tests: bundle a page script with esbuild, serve it on localhost, launch
// headless Chromium with playwright-core.
import { readFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { extname, join, normalize } from 'node:path'
import * as esbuild from 'esbuild'
import { chromium, type Browser, type Page } from 'playwright-core'

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']

/** esbuild, format esm, platform browser; the repo tsconfig maps @kms-proxy/* to the sources. */
export async function bundle(entry: string): Promise<Uint8Array> {
  const built = await esbuild.build({ entryPoints: [entry], bundle: true, format: 'esm', platform: 'browser', target: 'es2022', write: false, logLevel: 'error' })
  return built.outputFiles[0]!.contents
}

const TYPES: Record<string, string> = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.md': 'text/plain' }

/**
 * Serves `routes` (path -> bytes, built in memory) and, for any other path, files under `dir`
 * (if given). Listens on 127.0.0.1; pages use http://localhost:PORT.
 */
export async function serve(routes: Record<string, Uint8Array | string>, dir?: string): Promise<{ server: Server; origin: string }> {
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname
    const file = path === '/' ? '/index.html' : path
    const body = routes[file] ?? (dir && !normalize(file).includes('..') ? tryRead(join(dir, file)) : undefined)
    if (body === undefined) {
      res.writeHead(404).end('not found')
      return
    }
    res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' })
    res.end(body)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, origin: `http://localhost:${(server.address() as AddressInfo).port}` }
}

function tryRead(path: string): Uint8Array | undefined {
  try {
    return readFileSync(path)
  } catch {
    return undefined
  }
}

export function launch(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true })
}

/** Opens `url` in `page` and waits for `globalThis[flag] === true`; page errors go into the failure. */
export async function openPage(page: Page, url: string, flag: string): Promise<Page> {
  const errors: string[] = []
  page.on('pageerror', (e) => errors.push(String(e)))
  await page.goto(url)
  await page.waitForFunction((f) => (globalThis as any)[f] === true, flag, { timeout: 15_000 }).catch(() => {
    throw new Error(`the page did not load: ${errors.join('; ') || 'no page error'}`)
  })
  return page
}
