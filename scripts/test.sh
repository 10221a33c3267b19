#!/usr/bin/env bash
# The single entry point for every test: formatting and lints, Rust unit and integration
# tests, the bench targets in test mode, a fuzz smoke run (with a nightly toolchain), the
# real-client suites against the running binary (official `openai` and `anthropic` Python
# SDKs, LangChain, the OpenAI Agents SDK; openai-node, the Vercel AI SDK and Anthropic's
# TypeScript SDK under Node's test runner), real coding agents run headless (Qwen Code, the
# Cline CLI, opencode, Claude Code, the Codex CLI; once more against a simulated model with
# a real model's habits) and the deployment files. Installs what it needs; starts what it
# needs on free ports and leaves the host's own services alone.
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
# redis-cli joins the test Cluster and drives Sentinel; openssl makes the TLS tests' CA.
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Node.js and npm for the Node client suite (the machine image brings Node 20 and npm 11).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Debian's Chromium for the operators' console suite (Playwright drives it; Playwright's own
# browser download is not used).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
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

step "formatting (cargo fmt --check) and lints (cargo clippy, warnings are errors)"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

step "Rust unit and integration tests"
cargo test --locked --lib --bins --tests

step "benchmarks compile and run once (test mode)"
cargo test --locked --bench pipeline --bench tool_scan --bench conversation --bench load --bench accounts --bench soak

step "fuzz smoke run: each cargo-fuzz target for 10 s from its seed corpus (skipped without nightly)"
# fuzz/README.md. The targets check invariants (split invariance, well-formed streams, no
# secret in an error); a crash fails the step and leaves its input in fuzz/artifacts/.
# Its own workspace and build (release, instrumented, in fuzz/target: 1.5 GB); measured on
# two cores: 5m50s from cold (4m20s of it the build), 3m20s after a change to the proxy.
# cargo-fuzz is installed when missing (once). Without a nightly toolchain it says so and
# succeeds.
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" ./scripts/fuzz-smoke.sh

step "real-client suite: official openai and anthropic Python SDKs"
cargo build --locked --bin qwen-proxy
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
QWEN_PROXY_BIN="$PWD/target/debug/qwen-proxy" "$VENV/bin/python" -m pytest -q tests/clients

step "operators' console in a real browser (Playwright, Debian's Chromium)"
# tests/console: the real binary with ADMIN_KEY and three simulated accounts, /admin/ in
# /usr/bin/chromium (headless): sign-in, throttling, account states, the live request log,
# CSRF, every page at desktop and phone width in light and dark, no console error.
# CONSOLE_SCREENSHOTS=docs/console also writes the screenshots README shows.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/console/requirements.txt
QWEN_PROXY_BIN="$PWD/target/debug/qwen-proxy" "$VENV/bin/python" -m pytest -q tests/console

step "real-client suite: openai-node, the Vercel AI SDK and Anthropic's SDK (node --test)"
# npm ci installs exactly package-lock.json (and empties node_modules first); skipped while
# node_modules holds the stamp of an install from the same package.json and lock.
NODE_SUITE=tests/clients-node
if ! cat "$NODE_SUITE/package.json" "$NODE_SUITE/package-lock.json" | cmp -s - "$NODE_SUITE/node_modules/.installed-from"; then
  (cd "$NODE_SUITE" && npm ci --no-audit --no-fund)
  cat "$NODE_SUITE/package.json" "$NODE_SUITE/package-lock.json" >"$NODE_SUITE/node_modules/.installed-from"
fi
QWEN_PROXY_BIN="$PWD/target/debug/qwen-proxy" npm --prefix "$NODE_SUITE" test

step "real coding agents, headless: Qwen Code, the Cline CLI, opencode, Claude Code and the Codex CLI (node --test)"
# Each agent gets a scratch HOME, no proxy variables and a 120 s budget; the suite stops the
# processes it started (Cline's daemon included) by pid. Installed as the suite above.
AGENT_SUITE=tests/agents
if ! cat "$AGENT_SUITE/package.json" "$AGENT_SUITE/package-lock.json" | cmp -s - "$AGENT_SUITE/node_modules/.installed-from"; then
  (cd "$AGENT_SUITE" && npm ci --no-audit --no-fund)
  cat "$AGENT_SUITE/package.json" "$AGENT_SUITE/package-lock.json" >"$AGENT_SUITE/node_modules/.installed-from"
fi
QWEN_PROXY_BIN="$PWD/target/debug/qwen-proxy" npm --prefix "$AGENT_SUITE" test

step "real coding agents again, the simulated model with a real model's habits (--demo --habits)"
# Each agent's proxy starts the habit cycle at its own offset (README "Simulator"); every task
# must complete or fail honestly, and no raw tool-call markup may reach an agent as its answer.
AGENT_SUITE_HABITS=3 QWEN_PROXY_BIN="$PWD/target/debug/qwen-proxy" npm --prefix "$AGENT_SUITE" test

step "deployment files: compose commands (sh -n), Dockerfile, systemd unit (systemd-analyze verify)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt
"$VENV/bin/python" -m pytest -q tests/deploy
