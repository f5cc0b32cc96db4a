#!/usr/bin/env bash
# npm run demo: prepare the bed (tools, MinIO, Node 24, npm ci, the bundle), then run the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash test/bed/install.sh
[ -f dist/main/index.js ] || npm run package
exec node --import tsx test/demo.ts
