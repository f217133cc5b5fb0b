// Entry for Chromium (bundled by esbuild, loaded by a cross-origin-isolated page on localhost:
// bench/lib/web.mjs). The host calls globalThis.runSuite(input) or globalThis.pipe(variant, mib)
// through page.evaluate.
import * as core from '@kms-proxy/core'
import * as jose from 'jose'
import { josePeer, runSuite } from '../lib/suite.mjs'
import { pipeThroughBoth } from '../lib/stream.mjs'
import { loadAwsPeer } from '../lib/peer-aws-browser.mjs'

globalThis.runSuite = async (input) =>
  runSuite(
    {
      runtime: 'chromium',
      // Set by the launcher from the browser's own version string; the user agent of a headless
      // Chromium says HeadlessChrome.
      version: globalThis.benchVersion ?? navigator.userAgent,
      core,
      peers: { jose: josePeer(jose), ...(await loadAwsPeer('chromium')) },
      // Launched with --js-flags=--expose-gc; undefined otherwise, and the suite goes without.
      gc: typeof globalThis.gc === 'function' ? () => globalThis.gc() : undefined,
      // Progress lines go to the host through a function the launcher exposes on the page.
      progress: typeof globalThis.benchProgress === 'function' ? (text) => void globalThis.benchProgress(text) : undefined,
    },
    input,
  )
globalThis.pipe = (variant, mib) => pipeThroughBoth(core, variant, mib)
globalThis.suiteReady = true
