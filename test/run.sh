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
exec node --import tsx --test --test-concurrency=1 "$@" "${files[@]}"
