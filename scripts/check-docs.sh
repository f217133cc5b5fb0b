#!/usr/bin/env bash
# The API reference builds without a warning (typedoc.json treats every warning, an undocumented
# export included, as an error), and every package has a CHANGELOG.md whose newest entry is its
# version. Last line: "N passed, N failed"; exit status non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0
failed=0

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if pnpm --silent run docs >"$log" 2>&1; then
  echo "ok   pnpm run docs: API reference built in docs-api/ with no warning"
  passed=$((passed + 1))
else
  sed 's/\x1b\[[0-9;]*m//g' "$log" | tail -40
  echo "FAIL pnpm run docs: TypeDoc reported the warnings or errors above"
  failed=$((failed + 1))
fi

if node -e '
  const fs = require("fs")
  const problems = []
  const fixed = JSON.parse(fs.readFileSync(".changeset/config.json", "utf8")).fixed.flat()
  const versions = new Set()
  for (const dir of fs.readdirSync("packages")) {
    const pkg = JSON.parse(fs.readFileSync(`packages/${dir}/package.json`, "utf8"))
    versions.add(pkg.version)
    if (!fixed.includes(pkg.name)) problems.push(`${pkg.name} is not in the fixed group of .changeset/config.json`)
    let log = ""
    try { log = fs.readFileSync(`packages/${dir}/CHANGELOG.md`, "utf8") } catch { problems.push(`packages/${dir}/CHANGELOG.md is missing`); continue }
    const newest = /^## (\S+)$/m.exec(log)?.[1]
    if (!log.startsWith(`# ${pkg.name}\n`)) problems.push(`packages/${dir}/CHANGELOG.md does not start with "# ${pkg.name}"`)
    if (newest !== pkg.version) problems.push(`packages/${dir}/CHANGELOG.md: newest entry ${newest}, package version ${pkg.version}`)
  }
  if (versions.size !== 1) problems.push(`packages have different versions: ${[...versions].join(", ")}`)
  for (const p of problems) console.error(p)
  process.exit(problems.length ? 1 : 0)
'; then
  echo "ok   every package: one shared version, a CHANGELOG.md whose newest entry is that version"
  passed=$((passed + 1))
else
  echo "FAIL changelogs and versions: see above"
  failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
