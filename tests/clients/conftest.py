"""Starts the real `qwen-proxy --demo` binary on a free port for the SDK suites."""

import contextlib
import os
import re
import subprocess
import time

import pytest

BIN = os.environ.get("QWEN_PROXY_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "qwen-proxy"))


@contextlib.contextmanager
def running_demo(habits=None, env=None):
    """A `qwen-proxy --demo` process: {"base_url": proxy /v1 URL, "sim_url": the simulator's URL}.
    `habits` (a seed): the simulated model writes its tool calls with a real model's habits
    (`--demo --habits SEED`, README "Simulator"). `env`: more variables for the proxy."""
    proc = subprocess.Popen(
        [BIN, "--demo", "--port", "0", "--env-file", "/dev/null"]
        + ([] if habits is None else ["--habits", str(habits)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # One demo serves most tests: the pause after a simulated challenge would fail the
        # tests after it, so it is off here (tests/hardening.rs covers it). The suites check
        # that conversations and agent loops continue one upstream chat; the demo's simulator
        # creates chats instantly, so the default adaptive policy would rightly leave each
        # busy chat for a fresh one — `wait` keeps the chat (the adaptive choice is tested in
        # tests/conversations.rs and measured in BENCHMARKS §6).
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("QWEN_", "API_KEYS"))},
            "CHALLENGE_COOLDOWN": "0",
            "BUSY_CHAT_POLICY": "wait",
            **(env or {}),
        },
    )
    try:
        deadline = time.monotonic() + 30
        url = sim = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on (http://[0-9.:]+)", line)
            s = re.search(r"simulator at (http://[0-9.:]+)", line)
            if m and s:
                url, sim = m.group(1), s.group(1)
                break
        assert url and sim, "qwen-proxy --demo did not report its addresses"
        yield {"base_url": url + "/v1", "sim_url": sim}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def demo():
    with running_demo() as d:
        yield d


@pytest.fixture()
def fresh_base_url():
    """A demo of its own, for a test whose upstream failure takes the demo's only account
    out of rotation (a spent quota cools it, a refused token makes it invalid)."""
    with running_demo() as d:
        yield d["base_url"]


@pytest.fixture(scope="session")
def habits_demo():
    """`habits_demo(seed)`: a `qwen-proxy --demo --habits SEED` of the session, one per seed
    (started when first asked for), as `running_demo` describes it."""
    with contextlib.ExitStack() as stack:
        started = {}

        def get(seed):
            if seed not in started:
                started[seed] = stack.enter_context(running_demo(habits=seed))
            return started[seed]

        yield get


@pytest.fixture(scope="session")
def base_url(demo):
    return demo["base_url"]
