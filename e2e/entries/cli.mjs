// Entry for Node, Bun and Deno: `<runtime> e2e/entries/cli.mjs input.json` prints the output JSON.
// The packages are imported by name, so their package.json `exports` are what resolves them.
import { readFileSync } from 'node:fs'
import process from 'node:process'
import * as core from '@kms-proxy/core'
import * as passphrase from '@kms-proxy/passphrase'
import { runSuite } from '../suite/run.mjs'

const input = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const output = await runSuite({ core, passphrase }, input)
process.stdout.write(JSON.stringify(output))
