"""The operators' console in a real browser: the real `qwen-proxy --demo` binary (with
ADMIN_KEY and an accounts file of three simulated accounts) and Debian's Chromium driven by
Playwright. Every test gets a proxy of its own (account states, throttling and the request
log do not leak between tests) and a fresh browser context; every test fails on a console
error, an uncaught exception or a Content-Security-Policy violation in the page."""

import base64
import contextlib
import json
import os
import queue
import re
import secrets
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

BIN = os.environ.get(
    "QWEN_PROXY_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "qwen-proxy")
)
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ACCOUNTS = ("alpha", "beta", "gamma")
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def jwt(user_id, ttl_seconds):
    """A JWT-shaped token (the proxy reads `exp` unverified; the simulator takes any token)."""

    def part(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'id': user_id, 'exp': int(time.time()) + ttl_seconds})}.sig"


class Proxy:
    """A running proxy: its URL, the simulator's, the admin key and the accounts' tokens
    (the simulator's key for each account)."""

    def __init__(self, url, sim_url, admin_key, tokens, accounts_file):
        self.url = url
        self.accounts_file = accounts_file
        self.sim_url = sim_url
        self.admin_key = admin_key
        self.tokens = tokens

    def call(self, method, path, body=None, headers=None, base=None):
        """A plain HTTP call: (status, headers, parsed JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request((base or self.url) + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as rsp:
                raw, status, rh = rsp.read(), rsp.status, rsp.headers
        except urllib.error.HTTPError as e:
            raw, status, rh = e.read(), e.code, e.headers
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return status, rh, parsed

    def admin(self, method, path):
        """The admin API with the key as a Bearer credential (what scripts use)."""
        status, _, body = self.call(method, path, headers={"Authorization": f"Bearer {self.admin_key}"})
        assert status == 200, (method, path, status, body)
        return body

    def account(self, name):
        return next(a for a in self.admin("GET", "/admin/accounts")["accounts"] if a["name"] == name)

    def chat(self, text, model="qwen3.7-plus", stream=False):
        return self.call(
            "POST",
            "/v1/chat/completions",
            {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]},
        )

    def sim(self, method, path):
        status, _, body = self.call(method, path, base=self.sim_url)
        assert status == 200, (method, path, status, body)
        return body


@contextlib.contextmanager
def running_proxy(env=None):
    admin_key = secrets.token_hex(24)
    tokens = {name: jwt(f"u-{name}", ttl) for name, ttl in zip(ACCOUNTS, (20 * 86_400, 900, 5 * 3600))}
    with tempfile.TemporaryDirectory() as tmp:
        accounts_file = os.path.join(tmp, "accounts.json")
        entries = [{"name": n, "cookies": f"token={t}"} for n, t in tokens.items()]
        entries[2]["max_inflight"] = 2
        with open(accounts_file, "w") as f:
            json.dump(entries, f)
        os.chmod(accounts_file, 0o600)
        proc = subprocess.Popen(
            [BIN, "--demo", "--port", "0", "--env-file", "/dev/null"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith(("QWEN_", "API_KEYS", "ADMIN_"))},
                "ADMIN_KEY": admin_key,
                "QWEN_ACCOUNTS_FILE": accounts_file,
                "CHALLENGE_COOLDOWN": "0",
                "BUSY_CHAT_POLICY": "wait",
                **(env or {}),
            },
        )
        try:
            deadline = time.monotonic() + 30
            url = sim = None
            # Read on a thread (which also keeps the pipe drained): a binary that hangs
            # before its banner fails the test after 30 s instead of hanging it.
            lines = queue.Queue()
            threading.Thread(
                target=lambda: ([lines.put(l) for l in proc.stdout], lines.put(None)), daemon=True
            ).start()
            while time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if line is None:  # the binary exited
                    break
                m = re.search(r"listening on (http://[0-9.:]+)", line)
                s = re.search(r"simulator at (http://[0-9.:]+)", line)
                if m and s:
                    url, sim = m.group(1), s.group(1)
                    break
            assert url and sim, "qwen-proxy --demo did not report its addresses"
            yield Proxy(url, sim, admin_key, tokens, accounts_file)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def proxy():
    with running_proxy() as p:
        yield p


@pytest.fixture()
def proxy_factory():
    """`proxy_factory(env)`: a proxy with more variables (stopped after the test)."""
    with contextlib.ExitStack() as stack:
        yield lambda env=None: stack.enter_context(running_proxy(env))


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


# Records Content-Security-Policy violations in the page (an init script runs outside the
# page's CSP).
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


class PageWatch:
    """A page and what went wrong in it: console errors, uncaught exceptions, CSP violations.
    `expect_failed_load(path, statuses)` allows the browser's own "Failed to load resource"
    line for an answer the test provokes (a wrong key's 401: Chromium logs every failed
    fetch, whatever the page does with it)."""

    def __init__(self, page):
        self.page = page
        self.problems = []
        self.allowed = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))

    def _console(self, msg):
        if msg.type not in ("error", "warning"):
            return
        text = msg.text
        loc = (msg.location or {}).get("url", "")
        for path, statuses in self.allowed:
            if (
                text.startswith("Failed to load resource")
                and urlsplit(loc).path == path
                and any(f"status of {s} " in text for s in statuses)
            ):
                return
        self.problems.append(f"console.{msg.type}: {text} ({loc})")

    def expect_failed_load(self, path, statuses):
        self.allowed.append((path, tuple(statuses)))

    def check(self):
        problems = list(self.problems)
        try:
            problems += [f"CSP violation: {v}" for v in self.page.evaluate("window.__cspViolations || []")]
        except Exception as e:  # the page is gone: nothing more to read
            problems.append(f"could not read the page's CSP violations: {e}")
        assert not problems, "\n".join(problems)


@pytest.fixture()
def context_factory(browser):
    """`context_factory(viewport=…, color_scheme=…)` → (context, PageWatch); each page is
    checked for console errors and CSP violations when the test ends."""
    made = []

    def make(viewport=None, color_scheme="light"):
        ctx = browser.new_context(viewport=viewport or DESKTOP, color_scheme=color_scheme)
        ctx.add_init_script(CSP_WATCH)
        page = ctx.new_page()
        watch = PageWatch(page)
        made.append((ctx, watch))
        return ctx, watch

    yield make
    try:
        for _, watch in made:
            watch.check()
    finally:
        for ctx, _ in made:
            ctx.close()


@pytest.fixture()
def watch(context_factory):
    """A desktop page in light mode."""
    return context_factory()[1]


def sign_in(page, proxy, route="overview"):
    page.goto(f"{proxy.url}/admin/#/{route}")
    page.get_by_test_id("signin-key").fill(proxy.admin_key)
    page.get_by_test_id("signin-submit").click()
    page.get_by_test_id("signout").wait_for(state="visible")
