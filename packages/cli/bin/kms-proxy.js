#!/usr/bin/env node
// The kms-proxy command. Node >= 20; also `bun bin/kms-proxy.js` and `deno run -A bin/kms-proxy.js`.
import process from 'node:process'
import { main } from '../dist/index.js'

const code = await main(process.argv.slice(2))
// Let stdout drain, then exit: an exit code set while streams are still open would be lost on
// some runtimes, and a k8s-plugin that stopped must not wait for idle handles.
process.exitCode = code
// A stdout whose reader went away (EPIPE) never drains: exit at once.
if (process.stdout.writableLength > 0 && !process.stdout.destroyed) process.stdout.once('drain', () => process.exit(code))
else process.exit(code)
