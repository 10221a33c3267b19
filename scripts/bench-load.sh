#!/usr/bin/env bash
# Run the load tool as documented in BENCHMARKS.md: release build, the highest fd limit this
# machine allows, the client pinned to CPU 0 (the tool pins the servers to CPU 1).
#   ./scripts/bench-load.sh                       # N = 1,100,1000,10000; direct, proxy, nginx
#   ./scripts/bench-load.sh --n 1,100 --ways direct,proxy
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "fd limit: $(ulimit -n) (the tool raises its own soft limit to the hard one)"
cargo bench --locked --bench load --no-run
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -gt 1 ]; then
  exec taskset -c 0 cargo bench --locked --bench load -- "$@"
fi
exec cargo bench --locked --bench load -- "$@"
