/**
 * The store's folder: a missing last folder is created (0700) by the first write; every other
 * folder fault (a missing parent, a file where a folder should be, a folder where the file should
 * be, permission denied) is a non-retryable ERR_STORE naming the path, from every store call and
 * through a KeyChain, never the retryable "the store failed" that a retry loop would spin on.
 */
import { spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { KeyChain, aesRootKey } from '@kms-proxy/core'
import { fileStore } from '../src/index.ts'
import { bundleChild } from '../../testkit/test/bundle.ts'
import { everyCall, type Outcome } from './fixtures/every-call.ts'

const NOBODY = 65534
const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-file-folder-'))
const script = join(dir, 'every-call.mjs')
afterAll(() => rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 }))
beforeAll(async () => {
  // The child runs as nobody: it must be able to reach and read the script.
  chmodSync(dir, 0o755)
  await bundleChild({ source: "import { everyCall } from './every-call.ts'\nprocess.stdout.write(JSON.stringify(await everyCall(process.argv[2])))", resolveDir: join(import.meta.dirname, 'fixtures') }, script)
  chmodSync(script, 0o644)
})

/** Runs every store call on `path` in a Node process as nobody. */
function everyCallAsNobody(path: string): Promise<Record<string, Outcome>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, path], { uid: NOBODY, gid: NOBODY, cwd: '/', env: { PATH: process.env.PATH } })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('error', reject)
    child.on('close', (code) => {
      try {
        resolve(JSON.parse(out))
      } catch {
        reject(new Error(`the child exited ${code}: ${err.slice(0, 1000)}`))
      }
    })
  })
}

/** A message naming `path`, then saying `reason`. */
const naming = (path: string, reason: string) => new RegExp(`${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*${reason}`)
const failed = (message: RegExp) => ({ name: 'StoreError', code: 'ERR_STORE', retryable: false, message: expect.stringMatching(message) })
const record = { id: 7, createdAt: 1, rootKind: 'aes', wrapped: new Uint8Array([1, 2, 3]) }
const rootBytes = new Uint8Array(32).fill(9)

it('a missing last folder: reads find an empty store and create nothing; the first write creates the folder (0700) and the file (0600)', async () => {
  const folder = join(dir, 'data')
  const path = join(folder, 'keys.json')
  const store = fileStore(path)
  expect(await store.getHead('c')).toBeUndefined()
  expect(await store.getKek('c', 7)).toBeUndefined()
  expect(await store.listKeks('c')).toEqual([])
  expect(existsSync(folder), 'a read created the folder').toBe(false)
  expect(await store.putKekIfAbsent('c', record)).toBe(true)
  expect(statSync(folder).mode & 0o777).toBe(0o700)
  expect(statSync(path).mode & 0o777).toBe(0o600)
  expect(readdirSync(folder)).toEqual(['keys.json'])
  expect((await fileStore(path).getKek('c', 7))?.wrapped).toEqual(record.wrapped)

  // What the bun-script example does: a KeyChain on a store in a folder that is not there yet.
  const chain = await KeyChain.open({ rootKey: aesRootKey(rootBytes), store: fileStore(join(dir, 'fresh', 'keys.json')) })
  const encrypted = await chain.encryptText('hello')
  expect(await chain.decryptText(encrypted)).toBe('hello')
  expect(statSync(join(dir, 'fresh')).mode & 0o777).toBe(0o700)
})

it('a missing parent folder: every write fails, not retryable, naming the folder; nothing is created', async () => {
  const parent = join(dir, 'no-such-parent')
  const path = join(parent, 'data', 'keys.json')
  const outcomes = await everyCall(path)
  expect(outcomes.getHead).toBe('ok')
  expect(outcomes.getKek).toBe('ok')
  expect(outcomes.listKeks).toBe('ok')
  const missing = failed(naming(parent, 'does not exist'))
  expect(outcomes.putKekIfAbsent).toEqual(missing)
  expect(outcomes.casHead).toEqual(missing)
  expect(existsSync(parent)).toBe(false)

  // Through a KeyChain (the bun-script report): the same error, not a retryable "the store failed".
  const opened = KeyChain.open({ rootKey: aesRootKey(rootBytes), store: fileStore(path) }).then((chain) => chain.encryptText('x'))
  await expect(opened).rejects.toMatchObject(missing)
})

it('a file where a folder should be (ENOTDIR), a folder where the store file should be (EISDIR), a symbolic-link loop (ELOOP), a name too long: every call fails, not retryable, naming the path', async () => {
  const file = join(dir, 'a-file')
  writeFileSync(file, 'not a folder')
  const underFile = join(file, 'keys.json')
  for (const [name, outcome] of Object.entries(await everyCall(underFile))) {
    expect(outcome, name).toEqual(failed(naming(file, 'is a file, not a folder')))
  }
  const deeper = join(file, 'data', 'keys.json')
  for (const [name, outcome] of Object.entries(await everyCall(deeper))) expect(outcome, name).toEqual(failed(naming(file, 'is a file, not a folder')))

  const folderInstead = join(dir, 'keys-folder.json')
  mkdirSync(folderInstead)
  for (const [name, outcome] of Object.entries(await everyCall(folderInstead))) {
    expect(outcome, name).toEqual(failed(naming(folderInstead, 'is a folder, not a store file')))
  }
  expect(readdirSync(folderInstead)).toEqual([])
  expect(readdirSync(dir).filter((f) => f.startsWith('keys-folder.json.')), 'a lock or temporary file left behind').toEqual([])

  // A folder that is a loop of symbolic links (ELOOP), and a name longer than the file system allows.
  symlinkSync(join(dir, 'loop-b'), join(dir, 'loop-a'))
  symlinkSync(join(dir, 'loop-a'), join(dir, 'loop-b'))
  const inLoop = join(dir, 'loop-a', 'keys.json')
  for (const [name, outcome] of Object.entries(await everyCall(inLoop))) expect(outcome, name).toEqual(failed(naming(inLoop, 'too many levels of symbolic links')))
  const tooLong = join(dir, `${'k'.repeat(300)}.json`)
  for (const [name, outcome] of Object.entries(await everyCall(tooLong))) expect(outcome, name).toEqual(failed(naming(tooLong, 'name too long')))
})

it('permission denied (as nobody): on the folder, on the file, and on a parent the last folder cannot be made in; every call fails, not retryable', async () => {
  expect(process.getuid?.(), 'this test needs root, to run a child as nobody').toBe(0)
  // A folder closed to others (0700), then an open folder (0777) holding root's own 0600 file.
  for (const [name, mode] of [['closed', 0o700], ['open', 0o777]] as const) {
    const folder = join(dir, name)
    mkdirSync(folder)
    chmodSync(folder, mode)
    const path = join(folder, 'keys.json')
    await fileStore(path).putKekIfAbsent('c', record)
    for (const [call, outcome] of Object.entries(await everyCallAsNobody(path))) {
      expect(outcome, `${name}: ${call}`).toEqual(failed(naming(path, 'permission denied')))
    }
  }

  // A parent that nobody may not write in: the last folder cannot be made.
  const readOnlyParent = join(dir, 'read-only')
  mkdirSync(readOnlyParent)
  chmodSync(readOnlyParent, 0o755)
  const outcomes = await everyCallAsNobody(join(readOnlyParent, 'data', 'keys.json'))
  expect([outcomes.getHead, outcomes.getKek, outcomes.listKeks]).toEqual(['ok', 'ok', 'ok'])
  expect(outcomes.putKekIfAbsent).toEqual(failed(naming(readOnlyParent, 'permission denied')))
  expect(outcomes.casHead).toEqual(failed(/permission denied/))
  expect(readdirSync(readOnlyParent)).toEqual([])
}, 30_000)
