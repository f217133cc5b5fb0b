/**
 * 1 GiB through encryptStream then decryptStream in a child Node process (generated input,
 * SHA-256 compared at both ends, nothing on disk but the bundled script), with its peak RSS.
 * The child is bundled with esbuild first so that no TypeScript loader sits in the measured
 * process (tsx alone adds about 40 MiB of RSS).
 *
 * It is started through `sh -c '…; exit $?'`, not spawned directly: on Linux, getrusage's
 * maxRSS survives fork + exec, so a child spawned straight from this (large) test process would
 * report the parent's RSS as its own peak. The shell forks a fresh, small process for node.
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { expect, it } from 'vitest'

const GIB = 2 ** 30

it('1 GiB through encryptStream and decryptStream: same SHA-256 at both ends, peak RSS under 128 MiB', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-gib-'))
  try {
    const script = join(dir, 'child.mjs')
    await build({
      entryPoints: [fileURLToPath(new URL('./stream-gib.child.mts', import.meta.url))],
      bundle: true,
      platform: 'node',
      format: 'esm',
      outfile: script,
      logLevel: 'error',
    })
    const run = spawnSync('/bin/sh', ['-c', '"$0" "$1"; exit $?', process.execPath, script], {
      env: { ...process.env, STREAM_BYTES: String(GIB) },
      encoding: 'utf8',
      timeout: 170_000,
    })
    expect(run.status, run.stderr).toBe(0)
    const result = JSON.parse(run.stdout) as {
      inputBytes: number
      encryptedBytes: number
      decryptedBytes: number
      inputSha256: string
      outputSha256: string
      maxRssMiB: number
      vmHwmMiB: number | null
      seconds: number
    }
    console.log(
      `1 GiB stream round trip: peak RSS ${result.maxRssMiB} MiB (VmHWM ${result.vmHwmMiB} MiB), ${result.seconds} s (${(1024 / result.seconds).toFixed(0)} MiB/s encrypt + decrypt)`,
    )
    expect(result.inputBytes).toBe(GIB)
    expect(result.decryptedBytes).toBe(GIB)
    // Header (61 B) and a 16-byte tag per 64 KiB segment: 16,384 segments.
    expect(result.encryptedBytes).toBe(GIB + 61 + 16 * (GIB / 65536))
    expect(result.outputSha256).toMatch(/^[0-9a-f]{64}$/)
    expect(result.outputSha256).toBe(result.inputSha256)
    expect(result.maxRssMiB).toBeGreaterThan(20) // a real measurement of a whole Node process
    expect(result.maxRssMiB).toBeLessThan(128)
    // The kernel's own high-water mark of this image agrees (Linux; null elsewhere).
    if (result.vmHwmMiB !== null) expect(result.vmHwmMiB).toBeLessThan(128)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}, 180_000)
