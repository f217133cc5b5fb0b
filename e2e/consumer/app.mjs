// The consumer app on Node, Deno and Bun: `<runtime> app.mjs KMS_URL` prints the results as JSON.
import process from 'node:process'
import { run } from './checks.mjs'

process.stdout.write(JSON.stringify(await run({ kmsUrl: process.argv[2] })))
