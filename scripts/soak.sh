#!/usr/bin/env bash
# The soak of BENCHMARKS.md §8: a release build, then SOAK_SECONDS (default 600) of mixed
# traffic with faults through the proxy to the simulator — two processes of the release
# binary on free ports, stopped at the end — sampled every 10 s. Prints the table and the
# verdict; the samples go to target/soak/soak.csv, the processes' logs next to it. Exits 1
# when the full run (SOAK_SECONDS >= 300) is not flat.
#   ./scripts/soak.sh                     # 10 minutes
#   SOAK_SECONDS=120 ./scripts/soak.sh    # a trial: the same report, never fails
#   SOAK_CLIENTS=64 SOAK_SAMPLE_SECONDS=5 ./scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export SOAK_SECONDS="${SOAK_SECONDS:-600}"
cargo bench --locked --bench soak --no-run
mkdir -p target/soak
cargo bench --locked --bench soak 2>&1 | tee target/soak/soak.txt
