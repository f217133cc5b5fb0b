// For the Workers KV configuration (wrangler.kv.toml): prints every record of its KEYS namespace
// (the chain heads and the wrapped KEKs) as the JSON array that `wrangler kv bulk put` restores: [{"key": "...", "value": "..."}].
//   node backup.mjs --remote > kv-backup.json     (the deployed namespace)
//   node backup.mjs --local > kv-backup.json      (the one `wrangler dev` keeps in .wrangler/)
// The KEKs in it are wrapped by the root key: the backup is useless without that key, and that
// key is useless without the backup. Keep both, apart.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const where = process.argv[2]
if (where !== '--remote' && where !== '--local') {
  console.error('usage: node backup.mjs --remote|--local > kv-backup.json')
  process.exit(2)
}
const wrangler = (...args) => execFileSync('node_modules/.bin/wrangler', [...args, '--config', 'wrangler.kv.toml', '--binding', 'KEYS', where], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })

// `kv key list` pages through every key and prints one JSON array.
const names = JSON.parse(wrangler('kv', 'key', 'list')).map((key) => key.name)
const dir = mkdtempSync(join(tmpdir(), 'kv-backup-'))
try {
  const values = {}
  // Bulk reads take at most 100 keys. `kv bulk get` prints {"name": {"value": "..."}}, then a
  // line of its own ("Success!").
  for (let i = 0; i < names.length; i += 100) {
    writeFileSync(join(dir, 'names.json'), JSON.stringify(names.slice(i, i + 100)))
    const out = wrangler('kv', 'bulk', 'get', join(dir, 'names.json'))
    Object.assign(values, JSON.parse(out.slice(0, out.lastIndexOf('}') + 1)))
  }
  const missing = names.filter((name) => typeof values[name]?.value !== 'string')
  if (missing.length > 0) throw new Error(`no value read for ${missing.join(', ')}`)
  console.log(JSON.stringify(names.map((key) => ({ key, value: values[key].value }))))
} finally {
  rmSync(dir, { recursive: true, force: true })
}
