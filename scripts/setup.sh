#!/usr/bin/env bash
# Sets up a fresh machine that has Node.js >= 20 and npm: pnpm (pinned), the workspace's
# packages from the lockfile, and a build of every package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PNPM_VERSION=12.4.2
node -e 'const [a]=process.versions.node.split(".").map(Number); if (a < 20) { console.error(`kms-proxy needs Node.js >= 20, found ${process.version}`); process.exit(1) }'
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version 2>/dev/null)" != "$PNPM_VERSION" ]; then
  echo "setup: installing pnpm $PNPM_VERSION with npm"
  npm install --global --no-fund --no-audit "pnpm@$PNPM_VERSION" >/dev/null
fi
# Native addons build against the system's Node headers; pnpm ignores nodedir in .npmrc.
export npm_config_nodedir="${npm_config_nodedir:-/usr}"
pnpm install --frozen-lockfile --reporter=silent
# The build is quiet unless it fails: then its whole output (rollup writes to stderr) is shown.
build_log=$(mktemp)
if ! pnpm --silent build >"$build_log" 2>&1; then
  cat "$build_log" >&2
  rm -f "$build_log"
  echo "setup: the build failed (its output is above)" >&2
  exit 1
fi
rm -f "$build_log"
echo "setup: pnpm $(pnpm --version), node $(node --version), packages built"
