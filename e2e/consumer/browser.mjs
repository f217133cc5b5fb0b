// The consumer app as a browser page would load it; bundled by esbuild with platform "browser".
export { run } from './checks.mjs'
