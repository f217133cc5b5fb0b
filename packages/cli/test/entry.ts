// Runs the CLI from its sources (tsx resolves @kms-proxy/* to packages/*/src through tsconfig paths).
import process from 'node:process'
import { runAndExit } from '../src/index.ts'

await runAndExit(process.argv.slice(2))
