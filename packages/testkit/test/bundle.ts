// Bundles a test child from the sources (tsconfig paths map @kms-proxy/* to packages/*/src, as
// vitest does), so that Node, Bun and Deno children all run the code in the tree.
import { join } from 'node:path'
import { build } from 'esbuild'

const ROOT = join(import.meta.dirname, '..', '..', '..')

/**
 * Bundles `entry` (a file, or TypeScript source whose imports resolve from `resolveDir`) to the
 * ES module `outfile`, for Node 20 and later.
 */
export async function bundleChild(entry: { file: string } | { source: string; resolveDir: string }, outfile: string): Promise<void> {
  await build({
    ...('file' in entry ? { entryPoints: [entry.file] } : { stdin: { contents: entry.source, resolveDir: entry.resolveDir, loader: 'ts' as const } }),
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    tsconfig: join(ROOT, 'tsconfig.json'),
    logLevel: 'silent',
  })
}
