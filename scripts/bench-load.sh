#!/usr/bin/env bash
# Run the load tool as documented in BENCHMARKS.md — release build, the highest fd limit this
# machine allows, the client pinned to CPU 0 (the tool pins the servers to CPU 1; with
# --unpinned nothing is pinned, client included, as users deploy) — then draw the charts from
# docs/bench/load.json with scripts/load_charts.py (matplotlib, in a venv of its own under
# target/, created on first use).
#   ./scripts/bench-load.sh                        # N = 1,100,1000,10000; direct, proxy, proxy-h2, nginx; 3 rounds
#   ./scripts/bench-load.sh --ways direct,proxy-h1  # proxy-h1 (UPSTREAM_HTTP2=false) only when asked
#   ./scripts/bench-load.sh --n 1,100 --ways direct,proxy --rounds 2
#   ./scripts/bench-load.sh --throughput 10 --concurrency 50
#   ./scripts/bench-load.sh --throughput 10 --concurrency 50 --unpinned
#   ./scripts/bench-load.sh --non-stream --rates 100,1000 --seconds 10 --ways direct,proxy
#   ./scripts/bench-load.sh --non-stream --ways proxy --proxy-env CHAT_POOL_SIZE=0  # env for the proxy
#   LOAD_PROXY_BIN=/path/to/other/qwen-proxy ./scripts/bench-load.sh ...           # another build (A/B)
#   ./scripts/bench-load.sh --charts-only          # only redraw the charts
set -euo pipefail
cd "$(dirname "$0")/.."

charts_only=0
unpinned=0
args=()
for a in "$@"; do
  if [ "$a" = --charts-only ]; then charts_only=1; else args+=("$a"); fi
  if [ "$a" = --unpinned ]; then unpinned=1; fi
done

if [ "$charts_only" = 0 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  echo "fd limit: $(ulimit -n) (the tool raises its own soft limit to the hard one)"
  cargo bench --locked --bench load --no-run
  pin=()
  if [ "$unpinned" = 0 ] && command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -gt 1 ]; then
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
