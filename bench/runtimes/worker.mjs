// Entry for workerd (bundled by esbuild, run by Miniflare: bench/lib/web.mjs). POST a JSON input:
// { quick, only } runs the suite and answers its Result; { pipe: { variant, mib } } streams that
// much, encrypt then decrypt, while the host reads the workerd process's peak RSS from /proc.
import { pipe, runWebSuite } from '../lib/web-entry.mjs'

export default {
  async fetch(request, bindings) {
    const input = await request.json()
    if (input.pipe) return Response.json(await pipe(input.pipe.variant, input.pipe.mib))
    const env = {
      runtime: bindings.RUNTIME,
      version: bindings.VERSION,
      // Started with --expose-gc (bench/lib/web.mjs); workerd reports no memory figure to scripts,
      // the host reads the process's RSS instead.
      gc: typeof globalThis.gc === 'function' ? () => globalThis.gc() : undefined,
    }
    return Response.json(await runWebSuite(env, input))
  },
}
