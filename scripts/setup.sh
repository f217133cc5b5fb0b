#!/usr/bin/env bash
# Sets up a fresh machine that has Node.js >= 20 and npm: pnpm (pinned), the workspace's
# packages from the lockfile, and a build of every package. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PNPM_VERSION=12.4.2
# Runs a step quietly; if it fails, shows its whole output (stdout and stderr) and stops.
quiet() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup: '$*' failed (its output is above)" >&2
    exit 1
  fi
  rm -f "$log"
}
node -e 'const [a]=process.versions.node.split(".").map(Number); if (a < 20) { console.error(`kms-proxy needs Node.js >= 20, found ${process.version}`); process.exit(1) }'
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version 2>/dev/null)" != "$PNPM_VERSION" ]; then
  echo "setup: installing pnpm $PNPM_VERSION with npm"
  quiet npm install --global --no-fund --no-audit "pnpm@$PNPM_VERSION"
fi
# Native addons build against the system's Node headers; pnpm ignores nodedir in .npmrc.
export npm_config_nodedir="${npm_config_nodedir:-/usr}"
quiet pnpm install --frozen-lockfile --reporter=silent
quiet pnpm --silent build
echo "setup: pnpm $(pnpm --version), node $(node --version), packages built"
