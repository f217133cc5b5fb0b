#!/usr/bin/env bash
# One command on a fresh machine: set up, then run the whole test suite.
# Ends with one plain line "N passed, N failed" summed over every suite it ran.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tmp
# Set-up must be quiet when it succeeds: its one summary line on stdout, nothing on stderr.
bash scripts/setup.sh >.tmp/setup.out 2>.tmp/setup.err || { cat .tmp/setup.out .tmp/setup.err; echo "0 passed, 1 failed"; exit 1; }
cat .tmp/setup.out
setup_quiet=0
if [ "$(wc -l <.tmp/setup.out)" -le 2 ] && [ ! -s .tmp/setup.err ]; then setup_quiet=1; else echo "setup printed more than its summary:"; cat .tmp/setup.err; fi
# Real peers from Debian: Chromium for the browser tests (Playwright's own browser download
# cannot work here), etcd for the etcd store, SoftHSM2 for the PKCS#11 root keys, PostgreSQL
# for the Postgres store. Installed only
# when missing. moto (the AWS emulator: KMS, STS and DynamoDB) comes with the machine's Python; PyPI is out of reach.
missing=()
command -v "${CHROMIUM_PATH:-/usr/bin/chromium}" >/dev/null 2>&1 || missing+=(chromium)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server etcd-client)
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
# PostgreSQL: the Postgres store's tests start their own server from Debian's binaries.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# strace: the file store and the CLI prove that a rename is followed by an fsync of its folder.
command -v strace >/dev/null 2>&1 || missing+=(strace)
# python3: the terminal tests drive the CLI through a pty, and the browser example's README serves
# its folder with python3's http.server.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test: installing ${missing[*]} from Debian"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null \
    || echo "test: could not install ${missing[*]}; the suites that need them will fail and say so"
fi

passed=0
failed=0
status=0
# The names of failed checks, printed again at the end (scripts/list-failures.mjs).
rm -f .tmp/failures.txt .tmp/vitest-*.json
if [ "$setup_quiet" -eq 1 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi

# Suite 1: type check (counts as one check).
if pnpm --silent typecheck; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; echo "type check" >>.tmp/failures.txt; fi

# Suite 2: unit and integration tests (vitest), on Node 20 here and on Node 22 and 24 below.
vitest_suite() { # label, node binary, vitest options...
  local label=$1 node_bin=$2 json=".tmp/vitest-${1// /-}.json" code=0 p f started=$SECONDS
  shift 2
  rm -f "$json"
  echo "== vitest, $label"
  # The chosen Node first on PATH: tests that start `node` (the CLI, examples) run on it too.
  PATH="$(cd "$(dirname "$node_bin")" && pwd):$PATH" "$node_bin" node_modules/vitest/vitest.mjs run \
    --reporter=default --reporter=json --outputFile.json="$json" "$@" || code=$?
  if [ -f "$json" ]; then
    read -r p f < <(node -e 'const r=require("./'"$json"'"); const skipped = r.numPendingTests + r.numTodoTests; if (skipped) console.error(`${skipped} skipped or todo tests: counted as failed`); console.log(r.numPassedTests, r.numFailedTests + skipped)')
    # vitest fails a run with an unhandled error even when every test passed: count that as a failure.
    if [ "$code" -ne 0 ] && [ "$f" -eq 0 ]; then echo "vitest exited $code (an unhandled error): counted as failed"; f=1; echo "vitest, $label: exited $code with every test passed (an unhandled error; see its output)" >>.tmp/failures.txt; fi
    echo "vitest, $label: $p passed, $f failed ($((SECONDS - started)) s)"
    passed=$((passed + p)); failed=$((failed + f))
    [ "$f" -eq 0 ] || status=1
  else
    echo "vitest, $label: no result"
    echo "vitest, $label: no result (exit $code)" >>.tmp/failures.txt
    failed=$((failed + 1)); status=1
  fi
}
NODE22=e2e/node_modules/node22/bin/node
NODE24=e2e/node_modules/node24/bin/node
vitest_suite "Node 20" "$(command -v node)"

# Suite 3: the conformance suite on Node, Deno, Bun, workerd (twice) and Chromium, the interop
# matrix and the packaging checks.
rm -f .tmp/e2e.json
pnpm --silent test:e2e || status=1
if [ -f .tmp/e2e.json ]; then
  read -r p f < <(node -e 'const r=require("./.tmp/e2e.json"); console.log(r.passed, r.failed)')
  passed=$((passed + p)); failed=$((failed + f))
else
  failed=$((failed + 1)); status=1
fi

# Suites 4 and on: scripts that print one line per check and "N passed, N failed" last.
#   publishing: pack every package, install the tarballs with npm in a fresh project, run an app
#     on Node, Deno and Bun, bundle it, type-check it (e2e/consumer.mjs), on Node 20, 22 and 24;
#   the conformance suite again on Node 22 and 24;
#   the benchmark's quick run on every runtime (bench/run.mjs);
#   public types under TypeScript 5.9, 6.0 and 7.0 (e2e/types.mjs); JSR dry run (e2e/jsr.mjs);
#   the API reference and the changelogs (scripts/check-docs.sh).
suite() { # name, command...
  local name=$1 out line p f started=$SECONDS
  shift
  echo "== $name"
  out=$("$@" 2>&1)
  local code=$?
  printf '%s\n' "$out" | grep -vE '^ok ' | tail -n 40
  printf '%s\n' "$out" | grep -E '^[[:space:]]*FAIL' | sed -E "s/^[[:space:]]*FAIL[[:space:]]*/$name: /" >>.tmp/failures.txt
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
  if [ -n "$line" ]; then
    read -r p f < <(echo "$line" | sed -E 's/^([0-9]+) passed, ([0-9]+) failed.*/\1 \2/')
    passed=$((passed + p)); failed=$((failed + f))
    echo "$name: $line ($((SECONDS - started)) s)"
  else
    failed=$((failed + 1))
    echo "$name: no result line"
    echo "$name: no result line (exit $code)" >>.tmp/failures.txt
  fi
  [ "$code" -eq 0 ] || status=1
}
# Node 24 runs vitest in child processes: its worker threads abort the run when a worker ends
# with a crypto.subtle call still pending (a Node 24 fault, not this library's).
# On Node 22 and 24, the files whose subject is another runtime (Chromium, Deno, Bun, workerd)
# are left out: Node only starts that runtime there, and the Node 20 run has them.
OTHER_RUNTIMES=(
  --exclude 'packages/indexeddb/test/browser-notes.test.ts' --exclude 'packages/indexeddb/test/indexeddb.test.ts'
  --exclude 'packages/webauthn/test/webauthn.test.ts' --exclude 'packages/etcd/test/etcd-runtimes.test.ts'
  --exclude 'packages/kms/test/runtimes.test.ts' --exclude 'packages/cli/test/runtimes.test.ts'
  --exclude 'packages/kv/test/deno-kv.test.ts' --exclude 'packages/kv/test/workers-kv.test.ts'
  --exclude 'packages/durable-object/test/example-cloudflare-worker.test.ts' --exclude 'packages/kv/test/example-deno-kv.test.ts'
  --exclude 'packages/durable-object/test/durable-object.test.ts' --exclude 'packages/postgres/test/postgres-runtimes.test.ts'
  --exclude 'packages/file/test/example-bun-script.test.ts'
)
vitest_suite "Node 22" "$NODE22" "${OTHER_RUNTIMES[@]}"
vitest_suite "Node 24" "$NODE24" --pool=forks "${OTHER_RUNTIMES[@]}"
suite "consumer, Node 20" node e2e/consumer.mjs
suite "consumer, Node 22" "$NODE22" e2e/consumer.mjs
suite "consumer, Node 24" "$NODE24" e2e/consumer.mjs
# On Node 22 and 24 the conformance suite runs its Node runtime and the packaging checks: the
# other runtimes (Deno, Bun, workerd, Chromium) do not depend on which Node starts them, and
# they ran above.
suite "conformance, Node 22" env E2E_ONLY=node "$NODE22" e2e/run.mjs
suite "conformance, Node 24" env E2E_ONLY=node "$NODE24" e2e/run.mjs
# The benchmark, quick, on every runtime (Node 20, 22, 24, Deno, Bun, workerd, Chromium): that it
# runs everywhere and every variant round-trips; its numbers are never asserted.
suite "bench, quick, every runtime" env BENCH_QUICK=1 node bench/run.mjs
suite "types" node e2e/types.mjs
suite "jsr" node e2e/jsr.mjs
suite "docs" bash scripts/check-docs.sh

node scripts/list-failures.mjs || true
echo "whole run: $((SECONDS / 60)) min $((SECONDS % 60)) s"
echo "$passed passed, $failed failed"
exit $status
