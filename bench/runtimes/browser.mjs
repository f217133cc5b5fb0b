// Entry for Chromium (bundled by esbuild, loaded by a cross-origin-isolated page on localhost:
// bench/lib/web.mjs). The host calls globalThis.runSuite(input) or globalThis.pipe(variant, mib)
// through page.evaluate.
import { pipe, runWebSuite } from '../lib/web-entry.mjs'

globalThis.runSuite = (input) =>
  runWebSuite(
    {
      runtime: 'chromium',
      // Set by the launcher from the browser's own version string; the user agent of a headless
      // Chromium says HeadlessChrome.
      version: globalThis.benchVersion ?? navigator.userAgent,
      // Launched with --js-flags=--expose-gc; undefined otherwise, and the suite goes without.
      gc: typeof globalThis.gc === 'function' ? () => globalThis.gc() : undefined,
      // Progress lines go to the host through a function the launcher exposes on the page.
      progress: typeof globalThis.benchProgress === 'function' ? (text) => void globalThis.benchProgress(text) : undefined,
    },
    input,
  )
globalThis.pipe = pipe
globalThis.suiteReady = true
