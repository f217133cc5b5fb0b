// Deno and Bun: the targets come as JSON in the KMS_TARGETS environment variable.
import { runSuite, type Targets } from './suite.ts'

declare const Deno: { env: { get(name: string): string | undefined } } | undefined
const raw = typeof Deno !== 'undefined' ? Deno.env.get('KMS_TARGETS') : (globalThis as any).process.env.KMS_TARGETS
console.log(JSON.stringify(await runSuite(JSON.parse(raw!) as Targets)))
