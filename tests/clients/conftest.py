"""Starts the real `qwen-proxy --demo` binary on a free port for the SDK suites."""

import os
import re
import subprocess
import time

import pytest

BIN = os.environ.get("QWEN_PROXY_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "qwen-proxy"))


@pytest.fixture(scope="session")
def base_url():
    proc = subprocess.Popen(
        [BIN, "--demo", "--port", "0", "--env-file", "/nonexistent"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("QWEN_", "API_KEYS"))},
    )
    try:
        deadline = time.monotonic() + 30
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"listening on (http://[0-9.:]+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "qwen-proxy --demo did not report its address"
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
