// describeStore against PostgreSQL from another runtime (Deno, Bun): bundled by the test, run
// with the server's URL and a table-name seed as arguments; prints the results as one JSON line.
import { contract } from './contract.ts'

const args = (globalThis as { Deno?: { args: string[] } }).Deno?.args ?? (globalThis as unknown as { process: { argv: string[] } }).process.argv.slice(2)
const [url, seed] = args as [string, string]
console.log(JSON.stringify(await contract(url, seed)))
