#!/usr/bin/env bash
# One command on a fresh machine: set up, then run the demo (the main job).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
pnpm --silent demo
