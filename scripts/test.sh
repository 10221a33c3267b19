#!/usr/bin/env bash
# The single entry point for every test: Rust unit and integration tests, the bench
# targets in test mode, and the real-client suites (official `openai` Python SDK against
# the running binary). Installs what it needs; starts what it needs on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# Real components the tests drive: nginx (deployment tests), promtool (metrics check) and
# redis-server (shared state across instances); each test starts its own on a free port.
# systemd-analyze and curl check the deployment files (no Docker engine needed).
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Where the packages start system services, they are left alone: every test starts its
  # own server on a free port and never touches the host's.
fi

step "fetching crates"
cargo fetch --locked

step "Rust unit and integration tests"
cargo test --locked --lib --bins --tests

step "benchmarks compile and run once (test mode)"
cargo test --locked --bench pipeline --bench conversation --bench load

step "real-client suite: official openai Python SDK"
cargo build --locked --bin qwen-proxy
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
QWEN_PROXY_BIN="$PWD/target/debug/qwen-proxy" "$VENV/bin/python" -m pytest -q tests/clients

step "deployment files: compose commands (sh -n), Dockerfile, systemd unit (systemd-analyze verify)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
"$VENV/bin/python" -m pytest -q tests/deploy
