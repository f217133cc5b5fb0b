// What the workerd and Chromium entries share (bench/runtimes/worker.mjs, browser.mjs): the
// suite with the web peers, plus a note on the runtime's timers, and the stream that the host
// watches from outside for peak RSS. Bundled into each entry by esbuild.
import * as core from '@kms-proxy/core'
import * as jose from 'jose'
import { josePeer, runSuite } from './suite.mjs'
import { pipeThroughBoth } from './stream.mjs'
import { loadAwsPeer } from './peer-aws-browser.mjs'
import { timerNote } from './timers.mjs'

/** Runs the suite; env: { runtime, version, gc?, progress? } (bench-contract). */
export async function runWebSuite(env, input) {
  const result = await runSuite({ ...env, core, peers: { jose: josePeer(jose), ...(await loadAwsPeer(env.runtime)) } }, input)
  result.notes.push(await timerNote())
  return result
}

/** Streams `mib` MiB encrypt -> decrypt inside the runtime (variant 'idle', 'raw' or 'stream'). */
export const pipe = (variant, mib) => pipeThroughBoth(core, variant, mib)
