#!/usr/bin/env bash
# npm test: prepare the bed (fast when ready), then run unit and end-to-end tests one file at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash test/bed/install.sh
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
