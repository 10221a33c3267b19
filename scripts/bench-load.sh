#!/usr/bin/env bash
# Run the load tool as documented in BENCHMARKS.md — release build, the highest fd limit this
# machine allows, the client pinned to CPU 0 (the tool pins the servers to CPU 1) — then draw
# the charts from docs/bench/load.json with scripts/load_charts.py (matplotlib, in a venv of
# its own under target/, created on first use).
#   ./scripts/bench-load.sh                        # N = 1,100,1000,10000; direct, proxy, proxy-h2, nginx; 3 rounds
#   ./scripts/bench-load.sh --ways direct,proxy-h1  # proxy-h1 (UPSTREAM_HTTP2=false) only when asked
#   ./scripts/bench-load.sh --n 1,100 --ways direct,proxy --rounds 2
#   ./scripts/bench-load.sh --throughput 10 --concurrency 50
#   ./scripts/bench-load.sh --charts-only          # only redraw the charts
set -euo pipefail
cd "$(dirname "$0")/.."

charts_only=0
args=()
for a in "$@"; do
  if [ "$a" = --charts-only ]; then charts_only=1; else args+=("$a"); fi
done

if [ "$charts_only" = 0 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  echo "fd limit: $(ulimit -n) (the tool raises its own soft limit to the hard one)"
  cargo bench --locked --bench load --no-run
  pin=()
  if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -gt 1 ]; then
    pin=(taskset -c 0)
  fi
  "${pin[@]}" cargo bench --locked --bench load -- ${args[@]+"${args[@]}"}
fi

VENV=target/bench-venv
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib
fi
"$VENV/bin/python" scripts/load_charts.py
