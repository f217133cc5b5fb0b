// Runs the CLI from its sources (tsx resolves @kms-proxy/* to packages/*/src through tsconfig paths).
import process from 'node:process'
import { main } from '../src/index.ts'

const code = await main(process.argv.slice(2))
process.exitCode = code
if (process.stdout.writableLength > 0 && !process.stdout.destroyed) process.stdout.once('drain', () => process.exit(code))
else process.exit(code)
