"""The operators' console (/admin/) in Debian's Chromium, against the real binary: signing
in and out, a wrong key refused and throttled, accounts that change state under the
operator's eyes, the request log live, the CSRF check, every page at desktop and phone
width in light and dark — with no console error, no uncaught exception and no
Content-Security-Policy violation in any of them (conftest.py)."""

import os
import re
import time

from playwright.sync_api import expect

from conftest import DESKTOP, PHONE, sign_in

PAGES = ("overview", "accounts", "usage", "requests", "connect")


def row(page, name):
    return page.locator(f'[data-testid="account-row"][data-account="{name}"]')


def test_sign_in_and_out(proxy, watch):
    page = watch.page
    rsp = page.goto(f"{proxy.url}/admin/")
    csp = rsp.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    expect(page.get_by_test_id("signout")).to_be_hidden()

    sign_in(page, proxy)
    version = proxy.call("GET", "/health")[2]["version"]
    expect(page.get_by_test_id("ov-version")).to_have_text(version)
    expect(page.get_by_test_id("nav-overview")).to_have_attribute("aria-current", "page")

    # The session cookie: HttpOnly (the page's script cannot read it), SameSite=Strict.
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies.get("qp_session")
    assert session, f"no qp_session cookie: {list(cookies)}"
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert "qp_session" not in page.evaluate("document.cookie")

    # A reload keeps the session (the page asks GET /admin/session first).
    page.reload()
    expect(page.get_by_test_id("ov-version")).to_have_text(version)

    page.get_by_test_id("signout").click()
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    expect(page.locator("#console")).to_be_hidden()
    # The browser dropped the cookie, and the server refuses it if it comes back.
    assert "qp_session" not in {c["name"] for c in page.context.cookies()}
    probe = page.request.get(f"{proxy.url}/admin/session")
    assert probe.status == 200 and probe.json() == {"signed_in": False}, probe.text()
    status, _, body = proxy.call("GET", "/admin/accounts", headers={"Cookie": f"qp_session={session['value']}"})
    assert status == 401 and body["error"]["code"] == "not_signed_in", (status, body)
    page.goto(f"{proxy.url}/admin/#/accounts")
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    expect(page.get_by_test_id("accounts-table")).to_be_hidden()


def test_wrong_key_refused_then_throttled(proxy_factory, watch):
    proxy = proxy_factory({"AUTH_FAILURE_LIMIT": "3", "AUTH_FAILURE_WINDOW": "60s"})
    page = watch.page
    watch.expect_failed_load("/admin/session", (401, 429))
    page.goto(f"{proxy.url}/admin/")
    error = page.get_by_test_id("signin-error")
    submit = page.get_by_test_id("signin-submit")

    page.get_by_test_id("signin-key").fill("not-the-admin-key-at-all")
    submit.click()
    expect(error).to_contain_text("Wrong key")
    expect(page.get_by_test_id("signout")).to_be_hidden()

    # Wrong again until the server throttles: then the page says so, with the wait.
    for _ in range(5):
        if "Too many" in error.inner_text():
            break
        expect(submit).to_be_enabled()
        page.get_by_test_id("signin-key").fill("still-not-the-admin-key")
        submit.click()
        expect(error).not_to_have_text("", timeout=5000)
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=signin-submit]').disabled"
            " || /Too many/.test(document.querySelector('[data-testid=signin-error]').textContent)"
        )
    expect(error).to_contain_text("Too many")
    assert re.search(r"\d+ s", error.inner_text()), error.inner_text()
    expect(submit).to_be_disabled()
    expect(submit).to_contain_text("wait")

    # While throttled even the right key is refused (429), by the server.
    rsp = page.request.post(f"{proxy.url}/admin/session", headers={"Authorization": f"Bearer {proxy.admin_key}"})
    assert rsp.status == 429, rsp.status
    assert rsp.headers.get("retry-after"), rsp.headers
    expect(page.get_by_test_id("signout")).to_be_hidden()


def test_account_on_quota_turns_cooling_with_a_countdown(proxy, watch):
    page = watch.page
    sign_in(page, proxy, "accounts")
    expect(row(page, "beta").get_by_test_id("account-state")).to_have_text("ready")

    # The simulator spends beta's quota; the next turn that lands on beta meets it (and moves
    # on to another account). New conversations take turns across the three accounts.
    proxy.sim("POST", f"/__sim/accounts/{proxy.tokens['beta']}/quota?hours=2")
    for i in range(6):
        status, _, body = proxy.chat(f"question {i}")
        assert status == 200, body
        if proxy.account("beta")["state"] == "cooling":
            break
    assert proxy.account("beta")["state"] == "cooling"

    state = row(page, "beta").get_by_test_id("account-state")
    expect(state).to_have_text("cooling", timeout=6000)
    countdown = row(page, "beta").get_by_test_id("account-countdown")
    expect(countdown).to_have_text(re.compile(r"^\d+:\d\d(:\d\d)?$"))
    first = int(countdown.get_attribute("data-seconds"))
    assert 2 * 3600 - 60 < first <= 2 * 3600, first
    # It counts down every second on its own (the list itself is refreshed every 2.5 s).
    seen = []
    for _ in range(7):
        seen.append(int(countdown.get_attribute("data-seconds")))
        time.sleep(0.5)
    assert seen == sorted(seen, reverse=True), seen
    assert len(set(seen)) >= 3 and 2 <= seen[0] - seen[-1] <= 8, seen
    expect(row(page, "beta").get_by_test_id("account-reason")).to_contain_text("quota")
    # The others are untouched, and say so.
    expect(row(page, "alpha").get_by_test_id("account-state")).to_have_text("ready")
    expect(row(page, "alpha").get_by_test_id("account-back")).to_have_text("—")


def test_disable_enable_round_trip(proxy, watch):
    page = watch.page
    sign_in(page, proxy, "accounts")
    alpha = row(page, "alpha")
    expect(alpha.get_by_test_id("account-state")).to_have_text("ready")
    expect(alpha.get_by_test_id("account-enable")).to_be_disabled()

    alpha.get_by_test_id("account-disable").click()
    expect(alpha.get_by_test_id("account-state")).to_have_text("disabled")
    assert proxy.account("alpha")["state"] == "disabled"
    expect(alpha.get_by_test_id("account-disable")).to_be_disabled()
    # The keyboard stays in the row: the button that turned off handed focus on.
    expect(alpha.get_by_test_id("account-enable")).to_be_focused()

    page.keyboard.press("Enter")
    expect(alpha.get_by_test_id("account-state")).to_have_text("ready")
    assert proxy.account("alpha")["state"] == "ready"
    expect(page.get_by_test_id("accounts-counts")).to_contain_text("3 usable")


def test_purge_asks_first(proxy, watch):
    page = watch.page
    proxy.chat("make a chat")
    sign_in(page, proxy, "accounts")
    gamma = row(page, "gamma")
    dialog = page.get_by_test_id("confirm-dialog")

    gamma.get_by_test_id("account-purge-chats").click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("gamma")
    expect(page.get_by_test_id("confirm-cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert proxy.sim("GET", "/__sim/stats")["chats_purged"] == 0

    gamma.get_by_test_id("account-purge-chats").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice")).to_contain_text("gamma")
    expect(page.get_by_test_id("notice")).to_contain_text("deleted")


def test_a_refused_action_is_shown_not_swallowed(proxy, watch):
    page = watch.page
    sign_in(page, proxy, "accounts")
    # A browser session's token (no password, no refresh token) cannot be renewed: the
    # button says so instead of failing.
    renew = row(page, "alpha").get_by_test_id("account-renew")
    expect(renew).to_be_disabled()
    expect(renew).to_have_attribute("title", re.compile("accounts file"))
    # An accounts file broken on disk: the reload is refused (400), the accounts in use stay.
    watch.expect_failed_load("/admin/accounts/reload", (400,))
    with open(proxy.accounts_file, "w") as f:
        f.write("[{not json")
    page.get_by_test_id("accounts-reload").click()
    alert = page.get_by_test_id("alerts")
    expect(alert).to_contain_text("invalid_accounts_file")
    expect(row(page, "alpha").get_by_test_id("account-state")).to_have_text("ready")
    expect(page.get_by_test_id("account-row")).to_have_count(3)
    alert.get_by_role("button", name="Dismiss").click()
    expect(alert.get_by_test_id("alert-item")).to_have_count(0)


def test_reload_accounts_file(proxy, watch):
    page = watch.page
    sign_in(page, proxy, "accounts")
    expect(page.get_by_test_id("account-row")).to_have_count(3)
    page.get_by_test_id("accounts-reload").click()
    expect(page.get_by_test_id("notice")).to_contain_text("3 kept")


def test_request_appears_in_the_log_live(proxy, watch):
    page = watch.page
    sign_in(page, proxy, "requests")
    expect(page.get_by_test_id("requests-live")).to_have_text("live", timeout=10_000)
    before = {a["name"]: a["turns"] for a in proxy.admin("GET", "/admin/accounts")["accounts"]}

    status, _, body = proxy.chat("hello from the console test")
    assert status == 200, body
    after = {a["name"]: a["turns"] for a in proxy.admin("GET", "/admin/accounts")["accounts"]}
    served = [n for n in after if after[n] > before.get(n, 0)]
    assert len(served) == 1, (before, after)

    rows = page.get_by_test_id("request-row")
    expect(rows).to_have_count(1, timeout=10_000)
    first = rows.first
    expect(first.get_by_test_id("request-account")).to_have_text(served[0])
    expect(first.get_by_test_id("request-status")).to_contain_text("200")
    expect(first).to_contain_text("qwen3.7-plus")

    # An unknown model: a 404 with its code, live too; the status filter keeps it alone.
    status, _, _ = proxy.chat("which model?", model="no-such-model")
    assert status == 404
    expect(rows).to_have_count(2, timeout=10_000)
    expect(rows.first.get_by_test_id("request-status")).to_contain_text("404")
    page.get_by_test_id("requests-status").select_option("4xx")
    expect(rows).to_have_count(1, timeout=10_000)
    expect(rows.first.get_by_test_id("request-status")).to_contain_text("404")

    # Paused, nothing new shows; resumed, the list catches up.
    page.get_by_test_id("requests-status").select_option("")
    expect(rows).to_have_count(2, timeout=10_000)
    page.get_by_test_id("requests-pause").click()
    expect(page.get_by_test_id("requests-live")).to_have_text("paused")
    proxy.chat("while paused")
    time.sleep(1.0)
    expect(rows).to_have_count(2)
    page.get_by_test_id("requests-pause").click()
    expect(rows).to_have_count(3, timeout=10_000)


def test_an_action_without_the_csrf_token_is_refused(proxy, watch):
    page = watch.page
    sign_in(page, proxy, "accounts")
    url = f"{proxy.url}/admin/accounts/alpha/disable"

    # The session cookie alone (what a forged request would carry): refused, nothing done.
    rsp = page.request.post(url)
    assert rsp.status == 403, rsp.status
    assert rsp.json()["error"]["code"] == "csrf_token_invalid", rsp.text()
    wrong = page.request.post(url, headers={"X-CSRF-Token": "0" * 32})
    assert wrong.status == 403, wrong.status
    assert proxy.account("alpha")["state"] == "ready"
    assert page.request.delete(f"{proxy.url}/admin/session").status == 403
    assert page.request.get(f"{proxy.url}/admin/session").status == 200

    # With the session's token the same call works: the 403 was the CSRF check.
    csrf = page.request.get(f"{proxy.url}/admin/session").json()["csrf"]
    assert page.request.post(url, headers={"X-CSRF-Token": csrf}).status == 200
    assert proxy.account("alpha")["state"] == "disabled"
    expect(row(page, "alpha").get_by_test_id("account-state")).to_have_text("disabled", timeout=6000)


def test_every_page_by_keyboard(proxy, watch):
    page = watch.page
    proxy.chat("some usage for the charts")
    sign_in(page, proxy)
    # Signed in, the keyboard starts at the page's heading.
    expect(page.locator("#h-overview")).to_be_focused()
    # On a fresh load, the first Tab reaches the skip link, which leads to the content.
    page.reload()
    expect(page.get_by_test_id("ov-version")).not_to_have_text("…")
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#h-overview")).to_be_focused()
    # The nav links, each by Enter.
    for name in PAGES[1:]:
        link = page.get_by_test_id(f"nav-{name}")
        link.focus()
        page.keyboard.press("Enter")
        expect(link).to_have_attribute("aria-current", "page")
        expect(page.locator(f"#h-{name}")).to_be_focused()
        expect(page.locator(f"#page-{name}")).to_be_visible()
    for name in PAGES:
        if name != "connect":
            expect(page.get_by_test_id(f"nav-{name}")).not_to_have_attribute("aria-current", "page")
    # Shortcuts: g then a letter, not while typing in a field.
    page.locator("#h-connect").focus()
    page.keyboard.press("g")
    page.keyboard.press("a")
    expect(page.get_by_test_id("nav-accounts")).to_have_attribute("aria-current", "page")
    page.get_by_test_id("nav-requests").click()
    page.get_by_test_id("requests-model").focus()
    page.keyboard.type("ga")
    expect(page.get_by_test_id("nav-requests")).to_have_attribute("aria-current", "page")
    expect(page.get_by_test_id("requests-model")).to_have_value("ga")


def test_overview_usage_and_connect_show_the_data(proxy, watch):
    page = watch.page
    for i in range(3):
        proxy.chat(f"usage {i}")
    sign_in(page, proxy)
    expect(page.get_by_test_id("ov-status")).to_have_text(re.compile("ok|degraded"))
    expect(page.get_by_test_id("ov-chart").locator("svg [data-testid=minute-bar]")).to_have_count(60)
    # The three chats above, and nothing else, in the last hour.
    expect(page.get_by_test_id("ov-requests")).to_have_text("3")
    expect(page.get_by_test_id("ov-accounts")).to_contain_text("3 total")

    page.get_by_test_id("nav-usage").click()
    usage_rows = page.get_by_test_id("usage-row")
    expect(usage_rows.first).to_be_visible()
    # Total, then the requests column: one turn per chat.
    expect(page.get_by_test_id("usage-totals").locator("td").nth(1)).to_have_text("3")
    expect(page.get_by_test_id("usage-chart").locator("svg")).to_be_visible()
    page.get_by_test_id("usage-by").select_option("model")
    expect(usage_rows.first).to_contain_text("qwen3.7-plus")
    csv = page.get_by_test_id("usage-csv").get_attribute("href")
    assert csv.startswith("/admin/usage.csv?") and "by=day%2Cmodel" in csv, csv
    got = page.request.get(proxy.url + csv)
    assert got.status == 200 and got.text().startswith("day,model,requests"), got.text()[:200]

    page.get_by_test_id("nav-connect").click()
    expect(page.get_by_test_id("connect-base-url")).to_have_text(f"{proxy.url}/v1")
    expect(page.get_by_test_id("connect-models")).to_contain_text("qwen3.7-plus")
    expect(page.get_by_test_id("snippet-codex")).to_contain_text(f'base_url = "{proxy.url}/v1"')
    expect(page.get_by_test_id("snippet-claude-code")).to_contain_text(f"ANTHROPIC_BASE_URL={proxy.url} ")
    page.get_by_test_id("connect-model").select_option("qwen3.7-plus-thinking")
    expect(page.get_by_test_id("snippet-openai-python")).to_contain_text('model="qwen3.7-plus-thinking"')
    page.get_by_test_id("copy-curl").click()
    expect(page.get_by_test_id("notice")).to_contain_text(re.compile("Copied|Selected"))


def test_every_page_at_phone_and_desktop_width_light_and_dark(proxy, context_factory):
    """Each page in the four combinations: nothing wider than the screen, nothing in the
    console. With CONSOLE_SCREENSHOTS=DIR, a screenshot of each in DIR (docs/console)."""
    out = os.environ.get("CONSOLE_SCREENSHOTS")
    if out:
        os.makedirs(out, exist_ok=True)
    # Something to show: answers, an unknown model, a cooling account, a disabled one.
    for i in range(4):
        proxy.chat(f"hello {i}", stream=i % 2 == 0)
    proxy.chat("a model nobody has", model="qwen-nonexistent")
    proxy.sim("POST", f"/__sim/accounts/{proxy.tokens['beta']}/quota?hours=3")
    for i in range(6):
        proxy.chat(f"until beta cools {i}", model="qwen3.7-plus-thinking")
        if proxy.account("beta")["state"] == "cooling":
            break
    proxy.admin("POST", "/admin/accounts/gamma/disable")
    for scheme in ("light", "dark"):
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            ctx, watch = context_factory(viewport=viewport, color_scheme=scheme)
            page = watch.page
            sign_in(page, proxy)
            for name in PAGES:
                page.goto(f"{proxy.url}/admin/#/{name}")
                settle(page, name)
                overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{name} at {size} is {overflow}px wider than the screen"
                # Records shown as cards (accounts, requests) fit their box, no sideways scroll.
                cards = page.evaluate(
                    "[...document.querySelectorAll('.table-wrap')]"
                    ".filter(w => w.offsetParent && w.querySelector('table.stack'))"
                    ".map(w => w.scrollWidth - w.clientWidth)"
                )
                if size == "phone":
                    assert all(o <= 0 for o in cards), f"{name}: cards wider than their box by {cards}px"
                if out:
                    page.screenshot(path=os.path.join(out, f"{name}-{size}-{scheme}.png"), full_page=True)


def settle(page, name):
    """Wait until a page shows its data."""
    if name == "overview":
        expect(page.get_by_test_id("ov-chart").locator("svg")).to_be_visible()
    elif name == "accounts":
        expect(page.get_by_test_id("account-countdown")).to_be_visible()
    elif name == "usage":
        expect(page.get_by_test_id("usage-row").first).to_be_visible()
    elif name == "requests":
        expect(page.get_by_test_id("request-row").first).to_be_visible()
        expect(page.get_by_test_id("requests-live")).to_have_text("live", timeout=10_000)
    elif name == "connect":
        expect(page.get_by_test_id("connect-models")).to_contain_text("qwen3.7-plus")
    # Fonts, the fade of new rows.
    page.wait_for_timeout(2200)
