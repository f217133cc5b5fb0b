#!/usr/bin/env node
// The kms-proxy command. Node >= 20; also `bun bin/kms-proxy.js` and `deno run -A bin/kms-proxy.js`.
import process from 'node:process'
import { runAndExit } from '../dist/index.js'

await runAndExit(process.argv.slice(2))
