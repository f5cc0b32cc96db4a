#!/usr/bin/env bash
# npm test: prepare the bed (fast when ready), then run unit and end-to-end tests one file at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash test/bed/install.sh
# The end-to-end tests run dist/ as a runner does: a bundle older than src/ would test old code.
if [ -z "${PREP_TEST_DIST:-}" ]; then
  fresh=$(mktemp -d)
  node scripts/package.mjs --out "$fresh" >/dev/null
  if ! diff -rq dist "$fresh" >/dev/null; then
    rm -rf "$fresh"
    echo "dist/ does not match src/: run 'npm run package' and commit dist/ (or set PREP_TEST_DIST)." >&2
    exit 1
  fi
  rm -rf "$fresh"
fi
shopt -s nullglob
files=(test/unit/*.test.ts test/e2e/*.test.ts)
if [ ${#files[@]} -eq 0 ]; then
  echo "no test files found" >&2
  exit 1
fi
# A test that hangs fails after 20 min (the longest takes a few); a file that leaves something
# open after its tests fails a minute later (test/bed/exit-guard.ts), instead of holding the run.
exec node --import tsx --import ./test/bed/exit-guard.ts --test --test-concurrency=1 \
  --test-timeout=1200000 "$@" "${files[@]}"
