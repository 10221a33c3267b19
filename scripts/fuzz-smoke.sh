#!/usr/bin/env bash
# Fuzz smoke test: build every cargo-fuzz target in fuzz/ and run each one briefly, from
# its seed corpus (fuzz/corpus/<target>, never written to) plus a scratch corpus. Fails
# when a target crashes — a panic, a broken invariant, a timeout, running out of memory —
# and says how to reproduce it. The long runs are in fuzz/README.md.
#
# Needs a nightly toolchain (`cargo +nightly`, for libFuzzer's instrumentation); without
# one it says so and succeeds. Installs cargo-fuzz when missing. Runs one target at a time
# in the foreground and stops it on exit, so nothing is left running.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 20)
#   FUZZ_TARGETS    space-separated targets (default: all, `cargo fuzz list`)
#   FUZZ_SANITIZER  none (default: the library forbids unsafe code; faster) or address
#   FUZZ_SEED       libFuzzer's random seed (default 1: the same inputs on every run, so a
#                   failure reproduces; 0 picks a new seed each time)
#   FUZZ_BUILD      extra `cargo fuzz build/run` options (default: --codegen-units 16,
#                   for a faster build; FUZZ_BUILD= for cargo-fuzz's own defaults,
#                   FUZZ_BUILD=--dev for the quickest build and slower runs)
#   CARGO_TARGET_DIR  honoured (fuzz builds land in its x86_64-unknown-linux-gnu/ subdir)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
seed=${FUZZ_SEED:-1}
sanitizer=${FUZZ_SANITIZER:-none}
read -r -a build <<<"${FUZZ_BUILD---codegen-units 16}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz-smoke: SKIPPED — no nightly toolchain (\`rustup toolchain install nightly\` to enable)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

cd fuzz
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

scratch=$(mktemp -d)
child=""
cleanup() {
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "fuzz-smoke: building ${targets[*]} (sanitizer $sanitizer)"
cargo +nightly fuzz build -s "$sanitizer" "${build[@]}"

failed=()
for t in "${targets[@]}"; do
  case "$t" in
    request_*|accounts_file) dict=dicts/json.dict ;;
    *) dict=dicts/sse.dict ;;
  esac
  mkdir -p "$scratch/$t" "artifacts/$t"
  log="$scratch/$t.log"
  echo "fuzz-smoke: $t for ${seconds}s"
  # -timeout: one input taking 10 s is a hang; the outer timeout is a last resort.
  timeout --kill-after=10 $((seconds + 300)) \
    cargo +nightly fuzz run -s "$sanitizer" "${build[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -seed="$seed" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -dict="$dict" -artifact_prefix="artifacts/$t/" >"$log" 2>&1 &
  child=$!
  if wait "$child"; then
    child=""
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 | sed "s/^/  $t: /" || true
  else
    child=""
    failed+=("$t")
    echo "fuzz-smoke: $t FAILED; the end of its output:"
    tail -n 40 "$log" | sed 's/^/  | /'
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: FAILED: ${failed[*]}"
  echo "  crashing inputs: fuzz/artifacts/<target>/; reproduce one with"
  echo "  (cd fuzz && cargo +nightly fuzz run -s $sanitizer <target> artifacts/<target>/<crash-file>)"
  exit 1
fi
echo "fuzz-smoke: ok (${#targets[@]} targets, ${seconds}s each)"
