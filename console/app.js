// qwen-proxy operators' console: a single page on the admin API, with no framework and no
// build step. Served by the binary under a strict Content-Security-Policy, so: no inline
// script or style, no eval, and every piece of data (account names, models, error codes,
// reasons — all untrusted strings) goes into the page as text nodes, never as markup.
//
// Sections: utilities · alerts · the API and the session · the router · one section per
// page (overview, accounts, usage, requests, connect) · the confirmation dialog · start.

"use strict";

(() => {
  // ---------------------------------------------------------------------------------------
  // Utilities
  // ---------------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";

  /** An element with properties and children (strings become text nodes, never markup). */
  function el(tag, props, ...children) {
    return build(document.createElement(tag), props, children);
  }

  /** An SVG element, as `el`. */
  function svgEl(tag, props, ...children) {
    return build(document.createElementNS(SVG_NS, tag), props, children);
  }

  function build(node, props, children) {
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.setAttribute("class", v);
      else if (k === "text") node.textContent = String(v);
      else if (k === "testid") node.dataset.testid = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined && c !== false) node.append(c);
    }
    return node;
  }

  function clear(node) {
    node.replaceChildren();
    return node;
  }

  /** A query string the server reads as written: `URLSearchParams` writes a space as `+`,
   * which the admin API takes literally (a `+` in a value comes out as `%2B`). */
  function queryString(params) {
    return params.toString().replace(/\+/g, "%20");
  }

  function setText(id, value) {
    const node = typeof id === "string" ? $(id) : id;
    const text = value === null || value === undefined ? "—" : String(value);
    if (node.textContent !== text) node.textContent = text;
  }

  const intFormat = new Intl.NumberFormat("en-US");
  const fmtInt = (n) => (typeof n === "number" && Number.isFinite(n) ? intFormat.format(n) : "—");
  const pad2 = (n) => String(n).padStart(2, "0");

  /** A duration in milliseconds as people read it: 850 ms, 1.25 s, 2 min 5 s. */
  function fmtMs(ms) {
    if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
    if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
    return fmtSeconds(ms / 1000);
  }

  /** Seconds as "3 d 4 h", "4 h 12 min", "12 min 5 s", "42 s". */
  function fmtSeconds(total) {
    const s = Math.max(0, Math.floor(total));
    const d = Math.floor(s / 86_400);
    const h = Math.floor((s % 86_400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (d > 0) return h ? `${d} d ${h} h` : `${d} d`;
    if (h > 0) return m ? `${h} h ${m} min` : `${h} h`;
    if (m > 0) return sec ? `${m} min ${sec} s` : `${m} min`;
    return `${sec} s`;
  }

  /** A countdown: "3:59:58", "1 d 02:00:00", "0:42"; "now" when it is over. */
  function fmtCountdown(ms) {
    if (ms <= 0) return "now";
    const s = Math.ceil(ms / 1000);
    const d = Math.floor(s / 86_400);
    const h = Math.floor((s % 86_400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (d > 0) return `${d} d ${pad2(h)}:${pad2(m)}:${pad2(sec)}`;
    if (h > 0) return `${h}:${pad2(m)}:${pad2(sec)}`;
    return `${m}:${pad2(sec)}`;
  }

  /** "in 12 min", "3 min ago". */
  function fmtRelative(deltaMs) {
    const words = fmtSeconds(Math.abs(deltaMs) / 1000);
    if (Math.abs(deltaMs) < 1000) return "now";
    return deltaMs > 0 ? `in ${words}` : `${words} ago`;
  }

  const fmtClock = (ms) => {
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  };
  const fmtDateTime = (ms) => new Date(ms).toLocaleString();

  /** A UTC day, YYYY-MM-DD. */
  const utcDay = (date) => date.toISOString().slice(0, 10);
  const dayMs = (day) => Date.parse(`${day}T00:00:00Z`);

  /** A time the API gives as epoch ms, epoch s, epoch minutes or an ISO string, as ms. */
  function toMillis(v) {
    if (typeof v === "string") {
      const n = Number(v);
      if (!Number.isNaN(n) && v.trim() !== "") return toMillis(n);
      const t = Date.parse(v);
      return Number.isNaN(t) ? null : t;
    }
    if (typeof v !== "number" || !Number.isFinite(v)) return null;
    if (v > 1e11) return v; // ms
    if (v > 1e8) return v * 1000; // s
    return v * 60_000; // minutes
  }

  /** A round number at or above `v`, for a chart's scale. */
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const pow = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (m * pow >= v) return m * pow;
    }
    return 10 * pow;
  }

  /** Calls `fn` now and every `ms` after it settles, until stopped; skipped while hidden. */
  function poller(fn, ms) {
    let timer = null;
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) {
        try {
          await fn();
        } catch (e) {
          reportError("poll", e);
        }
      }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    tick();
    return {
      stop() {
        stopped = true;
        clearTimeout(timer);
      },
      now() {
        clearTimeout(timer);
        tick();
      },
    };
  }

  // ---------------------------------------------------------------------------------------
  // Alerts (errors, kept until dismissed or fixed) and notices (brief confirmations)
  // ---------------------------------------------------------------------------------------

  const alerts = new Map();

  /** Show an error under `key` (one per key: a repeated failure replaces its message). */
  function showError(key, message) {
    let item = alerts.get(key);
    if (!item) {
      const text = el("p");
      const close = el("button", {
        type: "button",
        class: "ghost small",
        "aria-label": "Dismiss",
        text: "✕",
        onclick: () => clearError(key),
      });
      item = { node: el("div", { class: "alert", testid: "alert-item", dataset: { key } }, text, close), text };
      alerts.set(key, item);
      $("alerts").append(item.node);
    }
    if (item.text.textContent !== message) item.text.textContent = message;
  }

  function clearError(key) {
    const item = alerts.get(key);
    if (item) {
      item.node.remove();
      alerts.delete(key);
    }
  }

  function clearAllErrors() {
    for (const key of [...alerts.keys()]) clearError(key);
  }

  /** An error from a call, under `key`, with what was being done. Session loss is not
   * repeated here: the sign-in form says it. */
  function reportError(key, err, doing) {
    if (err && err.sessionLost) return;
    const what = err && err.message ? err.message : String(err);
    const status = err && err.status ? ` (HTTP ${err.status}${err.code ? `, ${err.code}` : ""})` : "";
    showError(key, doing ? `${doing}: ${what}${status}` : `${what}${status}`);
  }

  /** A brief confirmation in the status region. */
  function notify(message) {
    const item = el("div", { class: "toast", testid: "notice-item" }, el("p", { text: message }));
    $("notice").append(item);
    setTimeout(() => item.remove(), 5000);
  }

  // ---------------------------------------------------------------------------------------
  // The API and the session
  // ---------------------------------------------------------------------------------------

  // `refusal`: why the server refused the last session cookie (expired, signed out), for
  // the sign-in form.
  const session = { csrf: null, active: false, refusal: "" };
  let clockSkewMs = 0;
  const serverNow = () => Date.now() + clockSkewMs;

  class ApiError extends Error {
    constructor(status, message, code, retryAfter) {
      super(message);
      this.status = status;
      this.code = code || null;
      this.retryAfter = retryAfter;
      this.sessionLost = false;
    }
  }

  /** Learn the server's clock from a `Date` header (whole seconds: only a real skew counts). */
  function noteServerClock(rsp) {
    const header = rsp.headers.get("date");
    const t = header ? Date.parse(header) : NaN;
    if (!Number.isNaN(t)) {
      const skew = t - Date.now();
      clockSkewMs = Math.abs(skew) > 3000 ? skew : 0;
    }
  }

  /**
   * One call to the admin API. Mutating calls carry the CSRF token; a 401 ends the session
   * (unless `signIn` is set: the sign-in call's 401 is a wrong key). Resolves to the JSON
   * answer (null for 204), rejects with an ApiError carrying the server's message and code.
   */
  async function api(method, path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const mutating = method !== "GET" && method !== "HEAD";
    if (mutating && session.csrf) headers["X-CSRF-Token"] = session.csrf;
    let body;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    let rsp;
    try {
      rsp = await fetch(path, { method, headers, body, credentials: "same-origin", cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, `the proxy did not answer (${e.message})`);
    }
    noteServerClock(rsp);
    if (rsp.ok) {
      if (rsp.status === 204) return null;
      const type = rsp.headers.get("content-type") || "";
      return type.includes("json") ? rsp.json() : rsp.text();
    }
    const err = await errorFrom(rsp);
    if (rsp.status === 401 && !options.signIn) {
      err.sessionLost = true;
      sessionLost(err.code === "not_signed_in" ? err.message : "Your session has ended: sign in again.");
    } else if (rsp.status === 403 && err.code === "csrf_token_invalid" && mutating && !options.retried) {
      // Another tab may have signed in again (a new token): fetch it and try once more.
      const fresh = await fetchSession();
      if (fresh) return api(method, path, { ...options, retried: true });
    }
    throw err;
  }

  async function errorFrom(rsp) {
    let message = `${rsp.status} ${rsp.statusText}`.trim();
    let code = null;
    try {
      const data = await rsp.json();
      const e = data && data.error;
      if (e && typeof e === "object") {
        message = e.message || message;
        code = e.code || e.type || null;
      } else if (typeof e === "string") {
        message = e;
      }
    } catch (_) {
      // Not JSON: the status line says it.
    }
    const retry = Number.parseInt(rsp.headers.get("retry-after") || "", 10);
    return new ApiError(rsp.status, message, code, Number.isNaN(retry) ? null : retry);
  }

  /** `GET /admin/session`: the CSRF token when the cookie is valid, else null
   * (`{"signed_in": false}`: no cookie, or one the server no longer takes — its `message`,
   * kept in `session.refusal`, says why). */
  async function fetchSession() {
    const rsp = await fetch("/admin/session", {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    });
    noteServerClock(rsp);
    if (!rsp.ok) throw await errorFrom(rsp);
    const data = await rsp.json();
    if (!data.signed_in) {
      session.refusal = typeof data.message === "string" ? data.message : "";
      return null;
    }
    adoptSession(data);
    return data;
  }

  /** `{"csrf", "expires_in_seconds"}` from `/admin/session`. */
  function adoptSession(data) {
    session.csrf = data.csrf;
    session.active = true;
    session.refusal = "";
    const left = data.expires_in_seconds;
    setText(
      "footer-session",
      typeof left === "number"
        ? `Signed in until ${fmtClock(Date.now() + left * 1000).slice(0, 5)} (in ${fmtSeconds(left)}).`
        : "Signed in.",
    );
  }

  /** The console after a valid session. */
  function showConsole() {
    $("loading").hidden = true;
    $("signin").hidden = true;
    $("console").hidden = false;
    route(false);
  }

  /** The sign-in form, everything the console showed dropped. */
  function showSignIn(message) {
    leaveCurrentPage();
    resetPages();
    clearAllErrors();
    session.csrf = null;
    session.active = false;
    $("loading").hidden = true;
    $("console").hidden = true;
    $("signin").hidden = false;
    const key = $("signin-key");
    key.value = "";
    $("signin-error").textContent = message || "";
    key.focus();
  }

  function sessionLost(message) {
    if (session.active) showSignIn(message);
  }

  let throttleTimer = null;

  async function signIn(event) {
    event.preventDefault();
    const key = $("signin-key").value;
    const submit = $("signin-form").querySelector("button[type=submit]");
    if (!key) {
      setText("signin-error", "Enter the admin key.");
      return;
    }
    submit.disabled = true;
    try {
      // The key goes as a bearer credential: the server throttles wrong ones.
      const data = await api("POST", "/admin/session", {
        headers: { Authorization: `Bearer ${key}` },
        signIn: true,
      });
      adoptSession(data);
      $("signin-key").value = "";
      $("signin-error").textContent = "";
      submit.disabled = false;
      showConsole();
      // The form is gone: the keyboard starts at the page's heading.
      if (currentPage) $(`h-${currentPage}`).focus();
    } catch (err) {
      if (err.status === 429) {
        const wait = err.retryAfter ?? 60;
        setText("signin-error", `Too many failed sign-ins from this address: try again in ${wait} s.`);
        holdSignIn(submit, wait);
      } else if (err.status === 401) {
        setText("signin-error", "Wrong key: that is not this proxy's ADMIN_KEY.");
        submit.disabled = false;
        $("signin-key").select();
      } else {
        setText("signin-error", `Could not sign in: ${err.message}`);
        submit.disabled = false;
      }
    }
  }

  /** Keep the sign-in button off while the server throttles, showing the time left. */
  function holdSignIn(submit, seconds) {
    clearInterval(throttleTimer);
    const until = Date.now() + seconds * 1000;
    const tick = () => {
      const left = until - Date.now();
      if (left <= 0) {
        clearInterval(throttleTimer);
        submit.disabled = false;
        submit.textContent = "Sign in";
        return;
      }
      submit.textContent = `Sign in (wait ${fmtCountdown(left)})`;
    };
    submit.disabled = true;
    tick();
    throttleTimer = setInterval(tick, 1000);
  }

  async function signOut() {
    try {
      await api("DELETE", "/admin/session");
      showSignIn("");
      notify("Signed out.");
    } catch (err) {
      if (!err.sessionLost) reportError("signout", err, "Could not sign out");
    }
  }

  // ---------------------------------------------------------------------------------------
  // Router: #/overview, #/accounts, #/usage, #/requests, #/connect
  // ---------------------------------------------------------------------------------------

  const pages = {};
  let currentPage = null;

  function route(userNavigated) {
    if (!session.active) return;
    let name = (location.hash.match(/^#\/([a-z]+)/) || [])[1];
    if (!Object.hasOwn(pages, name)) {
      name = "overview";
      history.replaceState(null, "", "#/overview");
    }
    if (name === currentPage) return;
    leaveCurrentPage();
    currentPage = name;
    for (const section of document.querySelectorAll("[data-page]")) {
      section.hidden = section.dataset.page !== name;
    }
    for (const link of document.querySelectorAll("[data-nav]")) {
      if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    const title = $(`h-${name}`).textContent;
    document.title = `${title} · qwen-proxy console`;
    pages[name].enter();
    if (userNavigated) $(`h-${name}`).focus();
  }

  // Keyboard shortcuts: g then o, a, u, r or c goes to a page (not while typing).
  const SHORTCUTS = { o: "overview", a: "accounts", u: "usage", r: "requests", c: "connect" };
  let pendingG = 0;

  function onShortcut(e) {
    if (!session.active || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if (e.target.closest("input, select, textarea, [contenteditable], dialog")) return;
    if (e.key === "g") {
      pendingG = Date.now();
      return;
    }
    const page = SHORTCUTS[e.key];
    if (page && Date.now() - pendingG < 1500) {
      e.preventDefault();
      location.hash = `#/${page}`;
    }
    pendingG = 0;
  }

  function leaveCurrentPage() {
    if (currentPage && pages[currentPage]) pages[currentPage].leave();
    currentPage = null;
  }

  function resetPages() {
    for (const page of Object.values(pages)) page.reset();
  }

  // ---------------------------------------------------------------------------------------
  // Overview
  // ---------------------------------------------------------------------------------------

  const STATES = ["ready", "signing_in", "cooling", "quarantined", "invalid", "forbidden", "disabled"];
  const STATE_WORDS = {
    ready: "ready",
    signing_in: "signing in",
    cooling: "cooling",
    quarantined: "quarantined",
    invalid: "invalid",
    forbidden: "forbidden",
    disabled: "disabled",
  };

  /** A state badge: the state's word and a colour (a class only for known states). */
  function stateBadge(state) {
    const known = STATES.includes(state) || ["ok", "degraded", "draining"].includes(state);
    return el("span", {
      class: `badge ${known ? state : "unknown"}`,
      testid: "state-badge",
      dataset: { state: String(state) },
      text: STATE_WORDS[state] || String(state),
    });
  }

  /** Counts by state as a list of badges (those above zero), with total and usable. */
  function renderStateCounts(list, counts) {
    clear(list);
    if (!counts) return;
    list.append(
      el("li", {}, el("span", { class: "count", text: fmtInt(counts.total) }), " total,"),
      el("li", {}, el("span", { class: "count", text: fmtInt(counts.usable) }), " usable"),
    );
    for (const state of STATES) {
      const n = counts[state] || 0;
      if (n > 0) {
        list.append(
          el("li", { testid: `count-${state}` }, stateBadge(state), el("span", { class: "count", text: fmtInt(n) })),
        );
      }
    }
  }

  const overview = {
    poll: null,
    uptimeTimer: null,
    uptimeBase: null,

    enter() {
      this.poll = poller(() => this.load(), 5000);
      this.uptimeTimer = setInterval(() => this.tickUptime(), 1000);
    },
    leave() {
      if (this.poll) this.poll.stop();
      clearInterval(this.uptimeTimer);
      this.poll = null;
    },
    reset() {
      for (const id of ["ov-version", "ov-uptime", "ov-requests", "ov-errors", "ov-ttft-p50", "ov-ttft-p99", "ov-ttft-count"]) {
        $(id).textContent = "…";
      }
      clear($("ov-reasons"));
      clear($("ov-chart"));
      clear($("ov-accounts"));
      this.uptimeBase = null;
      this.last = null;
    },

    async load() {
      try {
        const o = await api("GET", "/admin/overview");
        clearError("overview");
        this.render(o);
      } catch (err) {
        reportError("overview", err, "Could not load the overview");
      }
    },

    render(o) {
      const status = $("ov-status");
      status.className = `badge ${["ok", "degraded", "draining"].includes(o.status) ? o.status : "unknown"}`;
      setText(status, o.status);
      const reasons = clear($("ov-reasons"));
      for (const r of o.reasons || []) reasons.append(el("li", { text: r }));
      setText("ov-version", o.version);
      this.uptimeBase = { seconds: o.uptime_seconds, at: Date.now() };
      this.tickUptime();
      const hour = o.last_hour || {};
      setText("ov-requests", fmtInt(hour.requests));
      setText("ov-requests-unit", hour.requests === 1 ? "request" : "requests");
      setText("ov-errors", fmtInt(hour.errors));
      setText("ov-errors-unit", hour.errors === 1 ? "error" : "errors");
      const ttft = hour.ttft_ms || {};
      setText("ov-ttft-p50", fmtMs(ttft.p50));
      setText("ov-ttft-p99", fmtMs(ttft.p99));
      setText("ov-ttft-count", fmtInt(ttft.count));
      const counts = o.accounts && o.accounts.counts ? o.accounts.counts : o.accounts;
      renderStateCounts($("ov-accounts"), counts);
      this.last = o;
      this.drawChart();
      setText("ov-updated", `Updated ${fmtClock(Date.now())}`);
    },

    drawChart() {
      const box = $("ov-chart");
      if (this.last) clear(box).append(minuteChart(this.last.per_minute || [], chartWidth(box)));
    },

    tickUptime() {
      if (!this.uptimeBase || typeof this.uptimeBase.seconds !== "number") return;
      const s = this.uptimeBase.seconds + (Date.now() - this.uptimeBase.at) / 1000;
      setText("ov-uptime", fmtSeconds(s));
    },
  };
  pages.overview = overview;

  /** A chart's width: its box's, so that its text keeps its size at any width. */
  function chartWidth(box) {
    return Math.max(300, Math.round(box.clientWidth || 760));
  }

  /** Requests per minute as bars, the errors among them in their own colour. */
  function minuteChart(minutes, W) {
    const H = 200;
    const m = { left: 44, right: 8, top: 10, bottom: 24 };
    const plotW = W - m.left - m.right;
    const plotH = H - m.top - m.bottom;
    const max = niceCeil(Math.max(1, ...minutes.map((p) => p.requests || 0)));
    const totalReq = minutes.reduce((a, p) => a + (p.requests || 0), 0);
    const totalErr = minutes.reduce((a, p) => a + (p.errors || 0), 0);
    const peak = Math.max(0, ...minutes.map((p) => p.requests || 0));
    const chart = svgEl("svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-label": `${totalReq} requests and ${totalErr} errors in the last ${minutes.length} minutes; at most ${peak} in one minute.`,
      testid: "minute-chart",
    });
    axes(chart, { W, m, plotH, max });
    const n = Math.max(minutes.length, 1);
    const slot = plotW / n;
    const barW = Math.max(1, slot * 0.75);
    minutes.forEach((p, i) => {
      const x = m.left + i * slot + (slot - barW) / 2;
      const req = p.requests || 0;
      const err = Math.min(p.errors || 0, Math.max(req, p.errors || 0));
      const hReq = (req / max) * plotH;
      const hErr = (err / max) * plotH;
      const at = toMillis(p.minute);
      const label = `${at ? fmtClock(at).slice(0, 5) : `minute ${i + 1}`}: ${req} requests, ${err} errors`;
      const g = svgEl("g", { testid: "minute-bar" }, svgEl("title", { text: label }));
      if (hReq > 0) g.append(svgEl("rect", { class: "bar-req", x, y: m.top + plotH - hReq, width: barW, height: hReq }));
      if (hErr > 0) g.append(svgEl("rect", { class: "bar-err", x, y: m.top + plotH - hErr, width: barW, height: hErr }));
      chart.append(g);
    });
    const labelY = H - 6;
    chart.append(
      svgEl("text", { class: "axis", x: m.left, y: labelY, text: `−${minutes.length} min` }),
      svgEl("text", { class: "axis", x: m.left + plotW / 2, y: labelY, "text-anchor": "middle", text: `−${Math.round(minutes.length / 2)} min` }),
      svgEl("text", { class: "axis", x: W - m.right, y: labelY, "text-anchor": "end", text: "now" }),
    );
    return chart;
  }

  /** Grid lines and the y scale (0, half, max) of a bar chart. */
  function axes(chart, { W, m, plotH, max }) {
    for (const f of [0, 0.5, 1]) {
      const y = m.top + plotH - f * plotH;
      const value = max * f;
      chart.append(
        svgEl("line", { class: "gridline", x1: m.left, x2: W - m.right, y1: y, y2: y }),
        svgEl("text", { class: "axis", x: m.left - 6, y: y + 4, "text-anchor": "end", text: shortNumber(value) }),
      );
    }
  }

  function shortNumber(v) {
    if (v >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
    if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
    if (v >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
    return String(+v.toFixed(1));
  }

  // ---------------------------------------------------------------------------------------
  // Accounts
  // ---------------------------------------------------------------------------------------

  const accounts = {
    poll: null,
    ticker: null,
    rows: new Map(), // name → row (its elements, kept across refreshes so focus stays)
    busy: new Set(), // names with an action under way

    enter() {
      this.poll = poller(() => this.load(), 2500);
      this.ticker = setInterval(() => this.tick(), 1000);
    },
    leave() {
      if (this.poll) this.poll.stop();
      clearInterval(this.ticker);
      this.poll = null;
    },
    reset() {
      this.rows.clear();
      clear($("accounts-body"));
      clear($("accounts-counts"));
    },

    async load() {
      try {
        const data = await api("GET", "/admin/accounts");
        clearError("accounts");
        this.render(data);
      } catch (err) {
        reportError("accounts", err, "Could not load the accounts");
      }
    },

    render(data) {
      renderStateCounts($("accounts-counts"), data.counts);
      const body = $("accounts-body");
      const seen = new Set();
      let prev = null;
      for (const a of data.accounts || []) {
        const row = this.rows.get(a.name) || this.createRow(a.name);
        this.updateRow(row, a);
        const expected = prev ? prev.nextSibling : body.firstChild;
        if (row.tr !== expected) body.insertBefore(row.tr, expected);
        prev = row.tr;
        seen.add(a.name);
      }
      for (const [name, row] of this.rows) {
        if (!seen.has(name)) {
          row.tr.remove();
          this.rows.delete(name);
        }
      }
      $("accounts-empty").hidden = seen.size > 0;
      this.tick();
    },

    createRow(name) {
      const action = (act, label, cls) =>
        el("button", {
          type: "button",
          class: `small ${cls || ""}`.trim(),
          testid: `account-${act}`,
          dataset: { action: act, account: name },
          "aria-label": `${label} ${name}`,
          text: label,
        });
      const row = {
        name,
        state: el("td", { testid: "account-state", dataset: { label: "State" } }),
        reason: el("td", { class: "reason", testid: "account-reason", dataset: { label: "Reason" } }),
        back: el("td", { class: "nowrap", testid: "account-back", dataset: { label: "Back in" } }),
        inflight: el("td", { class: "num", testid: "account-inflight", dataset: { label: "In flight" } }),
        turns: el("td", { class: "num", testid: "account-turns", dataset: { label: "Turns" } }),
        token: el("td", { class: "nowrap", testid: "account-token", dataset: { label: "Token expires" } }),
        errors: el("td", { class: "errors", testid: "account-errors", dataset: { label: "Recent errors" } }),
        disable: action("disable", "Disable"),
        enable: action("enable", "Enable"),
        renew: action("renew", "Renew token"),
        purge: action("purge-chats", "Purge chats", "danger-text"),
        data: null,
      };
      row.tr = el(
        "tr",
        { testid: "account-row", dataset: { account: name } },
        el("th", { scope: "row", class: "name", text: name }),
        row.state,
        row.reason,
        row.back,
        row.inflight,
        row.turns,
        row.token,
        row.errors,
        el("td", { class: "row-actions" }, el("div", { class: "actions" }, row.disable, row.enable, row.renew, row.purge)),
      );
      this.rows.set(name, row);
      return row;
    },

    updateRow(row, a) {
      const before = row.data;
      row.data = a;
      row.tr.dataset.state = a.state;
      if (!before || before.state !== a.state) clear(row.state).append(stateBadge(a.state));
      setText(row.reason, a.reason || "—");
      setText(row.inflight, a.max_inflight ? `${a.inflight} / ${a.max_inflight}` : fmtInt(a.inflight));
      setText(row.turns, fmtInt(a.turns));
      this.renderErrors(row, a.recent_errors || []);
      this.setButtons(row);
    },

    /** Which actions apply: disable unless disabled; enable when out of rotation. */
    setButtons(row) {
      const a = row.data;
      const busy = this.busy.has(row.name);
      row.disable.disabled = busy || a.state === "disabled";
      row.enable.disabled = busy || a.state === "ready" || a.state === "signing_in";
      // A browser session without a refresh token needs a new cookie from a browser.
      row.renew.disabled = busy || a.state === "disabled" || a.can_renew === false;
      row.renew.title = a.can_renew === false ? "No password or refresh token: update the accounts file" : "";
      row.purge.disabled = busy;
    },

    renderErrors(row, errors) {
      const key = errors.map((e) => `${e.at_ms}:${e.error}`).join("|");
      if (row.errorsKey === key) return;
      row.errorsKey = key;
      const cell = clear(row.errors);
      if (errors.length === 0) {
        cell.textContent = "—";
        return;
      }
      const newest = [...errors].sort((x, y) => (y.at_ms || 0) - (x.at_ms || 0));
      const open = row.errorsOpen || false;
      const details = el(
        "details",
        { open, ontoggle: (e) => (row.errorsOpen = e.target.open) },
        el(
          "summary",
          { title: newest[0].error },
          `${errors.length} · `,
          el("span", { class: "clip", text: newest[0].error }),
        ),
        el("ol", {}, newest.map((e) => el("li", {}, el("time", { text: e.at_ms ? fmtClock(e.at_ms) : "" }), " ", e.error))),
      );
      cell.append(details);
    },

    /** Every second: countdowns to `until_ms`, token expiry relative to now. */
    tick() {
      const now = serverNow();
      for (const row of this.rows.values()) {
        const a = row.data;
        if (!a) continue;
        if (a.until_ms) {
          let span = row.back.firstChild;
          if (!span || span.nodeType !== 1) {
            span = el("span", { class: "countdown", testid: "account-countdown" });
            clear(row.back).append(span);
          }
          const left = a.until_ms - now;
          span.dataset.seconds = String(Math.max(0, Math.ceil(left / 1000)));
          span.title = `back at ${fmtDateTime(a.until_ms)}`;
          setText(span, fmtCountdown(left));
        } else {
          setText(row.back, "—");
        }
        if (a.token_expires) {
          const expMs = toMillis(a.token_expires);
          row.token.title = fmtDateTime(expMs);
          setText(row.token, expMs <= now ? "expired" : fmtRelative(expMs - now));
        } else {
          row.token.removeAttribute("title");
          setText(row.token, "—");
        }
      }
    },

    async act(name, action) {
      const row = this.rows.get(name);
      if (action === "purge-chats") {
        const ok = await confirmDialog({
          title: "Delete every chat of this account?",
          text: `Delete every upstream chat of the account “${name}” on chat.qwen.ai? Conversations kept on them start afresh. This cannot be undone.`,
          ok: "Delete all chats",
        });
        if (!ok) return;
      }
      const hadFocus = row && row.tr.contains(document.activeElement);
      this.busy.add(name);
      if (row && row.data) this.setButtons(row);
      try {
        const data = await api("POST", `/admin/accounts/${encodeURIComponent(name)}/${action}`);
        clearError(`account-${name}`);
        notify(actionDone(name, action, data));
        if (data && data.account && typeof data.account === "object" && row) {
          this.updateRow(row, data.account);
        }
      } catch (err) {
        reportError(`account-${name}`, err, `Could not ${actionWord(action)} ${name}`);
      } finally {
        this.busy.delete(name);
        if (row && row.data) this.setButtons(row);
        if (row && hadFocus && !row.tr.contains(document.activeElement)) {
          // The pressed button turned off: keep the keyboard in the row.
          const next = [row.enable, row.disable, row.renew, row.purge].find((b) => !b.disabled);
          if (next) next.focus();
        }
        this.tick();
        if (this.poll) this.poll.now();
      }
    },

    async reload() {
      const button = $("accounts-reload");
      button.disabled = true;
      try {
        const data = await api("POST", "/admin/accounts/reload");
        clearError("accounts-reload");
        const s = (data && data.reloaded) || {};
        notify(
          `Accounts file reloaded: ${fmtInt(s.kept)} kept, ${fmtInt(s.added)} added, ` +
            `${fmtInt(s.changed)} changed, ${fmtInt(s.removed)} removed.`,
        );
      } catch (err) {
        reportError("accounts-reload", err, "The accounts file was not reloaded");
      } finally {
        button.disabled = false;
        if (this.poll) this.poll.now();
      }
    },
  };
  pages.accounts = accounts;

  function actionWord(action) {
    return { disable: "disable", enable: "enable", renew: "renew the token of", "purge-chats": "purge the chats of" }[action] || action;
  }

  function actionDone(name, action, data) {
    switch (action) {
      case "disable":
        return `${name} is disabled: it takes no new turns.`;
      case "enable":
        return `${name} is enabled.`;
      case "renew":
        return `${name}: token renewed.`;
      case "purge-chats":
        return `${name}: ${fmtInt(data && data.deleted)} upstream chats deleted.`;
      default:
        return `${name}: done.`;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Usage
  // ---------------------------------------------------------------------------------------

  const SERIES = 8; // colours; beyond SERIES - 1 groups the rest count as "others"
  const MAX_CHART_DAYS = 400;
  const GROUP_WORDS = { account: "Account", key: "API key", model: "Model" };

  const usage = {
    data: null,
    loaded: false,

    enter() {
      const form = $("usage-form");
      if (!form.from.value || !form.to.value) {
        const today = new Date();
        form.to.value = utcDay(today);
        form.from.value = utcDay(new Date(today.getTime() - 6 * 86_400_000));
      }
      if (!this.loaded) this.load();
    },
    leave() {},
    reset() {
      this.data = null;
      this.loaded = false;
      clear($("usage-chart"));
      clear($("usage-legend"));
      clear($("usage-body"));
      clear($("usage-foot"));
      setText("usage-source", "");
    },

    query() {
      const form = $("usage-form");
      const q = new URLSearchParams();
      if (form.from.value) q.set("from", form.from.value);
      if (form.to.value) q.set("to", form.to.value);
      q.set("by", `day,${form.by.value}`);
      return q;
    },

    async load() {
      const q = this.query();
      $("usage-csv").href = `/admin/usage.csv?${queryString(q)}`;
      try {
        const data = await api("GET", `/admin/usage?${queryString(q)}`);
        clearError("usage");
        this.loaded = true;
        this.data = data;
        this.render();
      } catch (err) {
        reportError("usage", err, "Could not load the usage");
      }
    },

    render() {
      const data = this.data;
      if (!data) return;
      const form = $("usage-form");
      const group = form.by.value;
      const metric = form.metric.value;
      setText(
        "usage-source",
        `${data.from} to ${data.to} (UTC), ${data.source === "redis" ? "every instance (Redis)" : "this instance"}.`,
      );
      const rows = data.rows || [];
      const groups = groupTotals(rows, group);
      const series = topSeries(groups, metric);
      this.renderLegend(series);
      const box = $("usage-chart");
      clear(box).append(usageChart(rows, group, metric, series, data.from, data.to, chartWidth(box)));
      this.renderTable(groups, group, data.totals || {});
    },

    renderLegend(series) {
      const legend = clear($("usage-legend"));
      series.names.forEach((name, i) => {
        legend.append(el("li", {}, el("span", { class: `key series-${i}` }), name));
      });
      if (series.others) legend.append(el("li", {}, el("span", { class: `key series-${SERIES - 1}` }), "others"));
    },

    renderTable(groups, group, totals) {
      setText("usage-group-head", GROUP_WORDS[group] || group);
      const body = clear($("usage-body"));
      const sorted = [...groups.entries()].sort((a, b) => b[1].requests - a[1].requests || a[0].localeCompare(b[0]));
      for (const [name, c] of sorted) {
        body.append(
          el(
            "tr",
            { testid: "usage-row", dataset: { group: name } },
            el("th", { scope: "row", class: group === "account" ? "name" : "mono", text: name }),
            ...counterCells(c),
          ),
        );
      }
      if (sorted.length === 0) {
        body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No usage in this period." })));
      }
      clear($("usage-foot")).append(el("tr", { testid: "usage-totals" }, el("td", { text: "Total" }), ...counterCells(totals)));
    },
  };
  pages.usage = usage;

  const COUNTERS = ["requests", "input_tokens", "output_tokens", "reasoning_tokens", "errors"];

  function counterCells(c) {
    return COUNTERS.map((k) => el("td", { class: "num", text: fmtInt(c[k] || 0) }));
  }

  function metricOf(c, metric) {
    if (metric === "tokens") return (c.input_tokens || 0) + (c.output_tokens || 0);
    return c[metric] || 0;
  }

  /** Totals per group value over the whole period. */
  function groupTotals(rows, group) {
    const totals = new Map();
    for (const r of rows) {
      const name = String(r[group] ?? "—");
      const t = totals.get(name) || Object.fromEntries(COUNTERS.map((k) => [k, 0]));
      for (const k of COUNTERS) t[k] += r[k] || 0;
      totals.set(name, t);
    }
    return totals;
  }

  /** The groups drawn in their own colour (the largest), the rest as "others". */
  function topSeries(groups, metric) {
    const ranked = [...groups.entries()]
      .sort((a, b) => metricOf(b[1], metric) - metricOf(a[1], metric) || a[0].localeCompare(b[0]))
      .map(([name]) => name);
    const fits = ranked.length <= SERIES;
    const names = fits ? ranked : ranked.slice(0, SERIES - 1);
    return { names, others: !fits, index: new Map(names.map((n, i) => [n, i])) };
  }

  /** A stacked bar per day. */
  function usageChart(rows, group, metric, series, from, to, W) {
    const days = [];
    const start = dayMs(from);
    const end = dayMs(to);
    for (let t = start; t <= end && days.length < MAX_CHART_DAYS; t += 86_400_000) days.push(utcDay(new Date(t)));
    const stacks = new Map(days.map((d) => [d, new Array(SERIES).fill(0)]));
    for (const r of rows) {
      const stack = stacks.get(r.day);
      if (!stack) continue;
      const name = String(r[group] ?? "—");
      const i = series.index.has(name) ? series.index.get(name) : SERIES - 1;
      stack[i] += metricOf(r, metric);
    }
    const H = 220;
    const m = { left: 52, right: 8, top: 10, bottom: 24 };
    const plotW = W - m.left - m.right;
    const plotH = H - m.top - m.bottom;
    const dayTotals = days.map((d) => stacks.get(d).reduce((a, b) => a + b, 0));
    const max = niceCeil(Math.max(1, ...dayTotals));
    const metricWord = $("usage-metric").selectedOptions[0].textContent;
    const chart = svgEl("svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-label": `${metricWord} per day from ${from} to ${to}, by ${group}; ${fmtInt(dayTotals.reduce((a, b) => a + b, 0))} in all.`,
      testid: "usage-svg",
    });
    axes(chart, { W, m, plotH, max });
    const slot = plotW / Math.max(days.length, 1);
    const barW = Math.max(1, Math.min(48, slot * 0.7));
    const every = Math.max(1, Math.ceil(days.length / 10));
    days.forEach((day, i) => {
      const x = m.left + i * slot + (slot - barW) / 2;
      let y = m.top + plotH;
      const g = svgEl("g", { testid: "usage-day", dataset: { day } });
      const parts = [];
      stacks.get(day).forEach((v, s) => {
        if (v <= 0) return;
        const h = (v / max) * plotH;
        y -= h;
        const label = s < series.names.length ? series.names[s] : "others";
        parts.push(`${label} ${fmtInt(v)}`);
        g.append(svgEl("rect", { class: `series-${s}`, x, y, width: barW, height: Math.max(h, 0.5) }));
      });
      g.prepend(svgEl("title", { text: `${day}: ${parts.length ? parts.join(", ") : "nothing"}` }));
      chart.append(g);
      if (i % every === 0) {
        chart.append(svgEl("text", { class: "axis", x: x + barW / 2, y: H - 6, "text-anchor": "middle", text: day.slice(5) }));
      }
    });
    return chart;
  }

  // ---------------------------------------------------------------------------------------
  // Requests (the log, live)
  // ---------------------------------------------------------------------------------------

  const MAX_ROWS = 200;
  const FILTERS = ["status", "account", "model", "key", "api"];

  const requests = {
    entries: [], // newest first, at most MAX_ROWS
    ids: new Set(),
    source: null, // the EventSource
    pending: null, // events that came while the list loaded
    paused: false,
    broken: false,
    retryTimer: null,
    generation: 0,
    seen: { account: new Set(), model: new Set(), key: new Set() },
    meta: null,

    enter() {
      this.suggestAccounts();
      if (!this.paused) this.start();
      else this.setLive("off", "paused");
    },
    leave() {
      this.stop();
    },
    reset() {
      this.stop();
      this.entries = [];
      this.ids.clear();
      this.meta = null;
      for (const s of Object.values(this.seen)) s.clear();
      clear($("requests-body"));
      setText("requests-summary", "");
    },

    filters() {
      const form = $("requests-form");
      const q = new URLSearchParams();
      for (const name of FILTERS) {
        const v = form.elements[name].value.trim();
        if (v) q.set(name, v);
      }
      return q;
    },

    /** The stream first (its events wait while the list loads), then the list. */
    async start() {
      this.stop();
      const generation = ++this.generation;
      const q = this.filters();
      this.pending = [];
      this.openStream(q);
      try {
        const limit = new URLSearchParams(q);
        limit.set("limit", String(MAX_ROWS));
        const data = await api("GET", `/admin/requests?${queryString(limit)}`);
        if (generation !== this.generation) return; // a newer start (other filters) won
        clearError("requests");
        this.meta = { capacity: data.capacity, size: data.size };
        this.entries = [];
        this.ids.clear();
        for (const e of data.requests || []) this.remember(e, false);
        const waiting = this.pending || [];
        this.pending = null;
        this.renderAll();
        for (const e of waiting) this.add(e);
      } catch (err) {
        if (generation !== this.generation) return;
        this.pending = null;
        reportError("requests", err, "Could not load the request log");
      }
    },

    stop() {
      clearTimeout(this.retryTimer);
      if (this.source) {
        this.source.close();
        this.source = null;
      }
    },

    openStream(q) {
      const source = new EventSource(`/admin/requests/stream?${queryString(q)}`);
      this.source = source;
      this.setLive("connecting", "connecting…");
      source.addEventListener("hello", () => {
        clearError("requests-live");
        this.setLive("on", "live");
        if (this.broken) {
          // Back after a break: what came meanwhile is in the list.
          this.broken = false;
          this.start();
        }
      });
      source.addEventListener("request", (ev) => {
        let entry;
        try {
          entry = JSON.parse(ev.data);
        } catch (e) {
          reportError("requests-live", e, "A live entry could not be read");
          return;
        }
        if (this.pending) this.pending.push(entry);
        else this.add(entry);
      });
      source.onerror = () => {
        if (source !== this.source) return;
        this.broken = true;
        if (source.readyState === EventSource.CLOSED) {
          this.source = null;
          this.setLive("off", "disconnected");
          this.retryLater();
        } else {
          this.setLive("connecting", "reconnecting…");
        }
      };
    },

    /** The stream was refused: is the session over (sign-in), or try again shortly? */
    async retryLater() {
      try {
        const s = await fetchSession();
        if (!s) {
          sessionLost("Your session has ended: sign in again.");
          return;
        }
        showError("requests-live", "Live updates stopped; trying again in 5 s.");
        this.retryTimer = setTimeout(() => {
          if (currentPage === "requests" && !this.paused) this.start();
        }, 5000);
      } catch (err) {
        reportError("requests-live", err, "Live updates stopped");
      }
    },

    setLive(cls, text) {
      const live = $("requests-live");
      live.className = `live ${cls}`;
      setText(live, text);
    },

    togglePause() {
      this.paused = !this.paused;
      const button = $("requests-pause");
      button.setAttribute("aria-pressed", String(this.paused));
      button.textContent = this.paused ? "Resume" : "Pause";
      if (this.paused) {
        this.stop();
        this.setLive("off", "paused");
      } else {
        this.start();
      }
    },

    /** Keep an entry (newest first); false if it was there already (by its `seq`: request
     * ids are the clients' and may repeat). */
    remember(e, front) {
      if (this.ids.has(e.seq)) return false;
      this.ids.add(e.seq);
      if (front) this.entries.unshift(e);
      else this.entries.push(e);
      for (const name of ["account", "model", "key"]) {
        if (e[name]) this.seen[name].add(String(e[name]));
      }
      while (this.entries.length > MAX_ROWS) {
        const old = this.entries.pop();
        this.ids.delete(old.seq);
      }
      return true;
    },

    /** A live entry: on top, the oldest row beyond the cap dropped. */
    add(e) {
      if (!this.remember(e, true)) return;
      const body = $("requests-body");
      body.insertBefore(requestRow(e, true), body.firstChild);
      while (body.children.length > MAX_ROWS) body.lastChild.remove();
      if (this.meta) this.meta.size = Math.min((this.meta.size || 0) + 1, this.meta.capacity || Infinity);
      this.after();
    },

    renderAll() {
      clear($("requests-body")).append(...this.entries.map((e) => requestRow(e, false)));
      this.after();
    },

    after() {
      $("requests-empty").hidden = this.entries.length > 0;
      const m = this.meta;
      setText(
        "requests-summary",
        m && m.capacity
          ? `Showing the newest ${fmtInt(this.entries.length)} of ${fmtInt(m.size)} kept (the log keeps ${fmtInt(m.capacity)}).`
          : `Showing ${fmtInt(this.entries.length)}.`,
      );
      for (const name of ["account", "model", "key"]) fillDatalist(`dl-${name}`, this.seen[name]);
    },

    /** Account names for the filter, from the accounts list. */
    async suggestAccounts() {
      try {
        const data = await api("GET", "/admin/accounts");
        for (const a of data.accounts || []) this.seen.account.add(a.name);
        fillDatalist("dl-account", this.seen.account);
      } catch (err) {
        reportError("requests-accounts", err, "Could not list the accounts for the filter");
      }
    },
  };
  pages.requests = requests;

  function fillDatalist(id, values) {
    const list = $(id);
    if (list.childElementCount === values.size) return;
    clear(list).append(...[...values].sort().map((v) => el("option", { value: v })));
  }

  function statusClass(e) {
    const s = Number(e.status);
    if (e.error_type || e.error_code) return s >= 500 ? "s5xx" : s >= 400 ? "s4xx" : "error";
    if (s >= 500) return "s5xx";
    if (s >= 400) return "s4xx";
    return "s2xx";
  }

  function requestRow(e, fresh) {
    const at = toMillis(e.time_ms ?? e.time);
    const code = e.error_code || e.error_type;
    const status = el(
      "td",
      { class: "nowrap wide", testid: "request-status", dataset: { label: "Status" } },
      el(
        "span",
        {},
        el("span", { class: `badge ${statusClass(e)}`, text: String(e.status ?? "—") }),
        code ? " " : null,
        code ? el("code", { text: code }) : null,
      ),
    );
    const notes = [];
    if (e.stream) notes.push("stream");
    if (e.retries) notes.push(`${e.retries} ${e.retries === 1 ? "retry" : "retries"}`);
    if (e.moved) notes.push("moved");
    if (e.chat) notes.push(`chat ${String(e.chat).length > 12 ? `${String(e.chat).slice(0, 8)}…` : e.chat}`);
    const tokens = `${fmtInt(e.input_tokens)} / ${fmtInt(e.output_tokens)}${e.reasoning_tokens ? ` (+${fmtInt(e.reasoning_tokens)} reasoning)` : ""}`;
    return el(
      "tr",
      {
        class: fresh ? "fresh" : null,
        testid: "request-row",
        dataset: { id: String(e.id ?? ""), account: String(e.account ?? ""), status: String(e.status ?? "") },
      },
      el("td", { class: "nowrap", title: at ? fmtDateTime(at) : null, text: at ? fmtClock(at) : "—", dataset: { label: "Time" } }),
      status,
      el("td", { class: "nowrap", text: e.api ?? "—", dataset: { label: "API" } }),
      el("td", { class: "mono wide", text: e.model ?? "—", dataset: { label: "Model" } }),
      el("td", { class: "name", testid: "request-account", text: e.account ?? "—", dataset: { label: "Account" } }),
      el("td", { class: "mono", text: e.key ?? "—", dataset: { label: "Key" } }),
      el("td", { class: "num", text: fmtMs(e.ttft_ms), dataset: { label: "TTFT" } }),
      el("td", { class: "num", text: fmtMs(e.duration_ms), dataset: { label: "Duration" } }),
      el("td", { class: "num wide", text: tokens, dataset: { label: "Tokens in / out" } }),
      el("td", {
        class: "small wide",
        title: e.chat ? `upstream chat ${e.chat}` : null,
        text: notes.join(", "),
        dataset: { label: "Notes" },
      }),
    );
  }

  // ---------------------------------------------------------------------------------------
  // Connect (base URL, models, configurations to copy)
  // ---------------------------------------------------------------------------------------

  const PLAIN_ID = /^[A-Za-z0-9._:/-]{1,100}$/;
  const PREFERRED_MODEL = "qwen3.7-plus";

  const connect = {
    models: null,
    apiKey: "", // pasted by the operator; this page's memory only
    keysRequired: false,
    loading: false,

    enter() {
      setText("connect-base-url", this.base());
      setText("connect-anthropic-url", location.origin);
      if (!this.models && !this.loading) this.loadModels();
      this.renderSnippets();
    },
    leave() {},
    reset() {
      this.models = null;
      this.apiKey = "";
      $("connect-key").value = "";
      clear($("connect-models"));
      clear($("connect-model"));
    },

    base: () => `${location.origin}/v1`,

    async loadModels() {
      this.loading = true;
      const headers = { Accept: "application/json" };
      if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
      try {
        const rsp = await fetch("/v1/models", { headers, credentials: "omit", cache: "no-store" });
        if (rsp.status === 401) {
          this.keysRequired = true;
          $("connect-key-form").hidden = false;
          if (this.apiKey) reportError("connect", await errorFrom(rsp), "That API key was refused");
          this.renderSnippets();
          return;
        }
        if (!rsp.ok) throw await errorFrom(rsp);
        const data = await rsp.json();
        clearError("connect");
        $("connect-key-form").hidden = !this.keysRequired;
        this.models = (data.data || []).map((m) => String(m.id)).sort();
        this.renderModels();
      } catch (err) {
        reportError("connect", err, "Could not list the models");
      } finally {
        this.loading = false;
      }
    },

    renderModels() {
      const list = clear($("connect-models"));
      for (const id of this.models) list.append(el("li", {}, el("code", { text: id })));
      const select = $("connect-model");
      const current = select.value;
      clear(select).append(...this.models.map((id) => el("option", { value: id, text: id })));
      const pick = [current, PREFERRED_MODEL].find((m) => m && this.models.includes(m)) || this.models[0];
      if (pick) select.value = pick;
      this.renderSnippets();
    },

    context() {
      const chosen = $("connect-model").value;
      return {
        base: this.base(),
        origin: location.origin,
        model: chosen && PLAIN_ID.test(chosen) ? chosen : PREFERRED_MODEL,
        key: this.keysRequired ? "YOUR_API_KEY" : "sk-any",
      };
    },

    renderSnippets() {
      const ctx = this.context();
      const box = clear($("connect-snippets"));
      let group = null;
      let grid = null;
      for (const s of SNIPPETS) {
        if (s.group !== group) {
          group = s.group;
          grid = el("div", { class: "snippet-grid" });
          box.append(el("h2", { class: "group-title", text: group }), grid);
        }
        const code = el("code", { text: s.text(ctx) });
        const pre = el("pre", { id: `snippet-${s.id}`, testid: `snippet-${s.id}`, tabindex: 0 }, code);
        grid.append(
          el(
            "section",
            { class: "card snippet", "aria-labelledby": `snippet-h-${s.id}` },
            el(
              "h3",
              { id: `snippet-h-${s.id}` },
              el("span", { text: s.title }),
              el("button", {
                type: "button",
                class: "copy small",
                dataset: { copy: `snippet-${s.id}` },
                testid: `copy-${s.id}`,
                "aria-label": `Copy the ${s.title} configuration`,
                text: "Copy",
              }),
            ),
            s.note ? el("p", { class: "muted", text: s.note(ctx) }) : null,
            pre,
          ),
        );
      }
    },
  };
  pages.connect = connect;

  // The configurations README.md ("Coding agents", "Quick start") gives, with this proxy's
  // address and the chosen model filled in.
  const SDKS = "curl and the SDKs";
  const AGENTS = "Coding agents";
  const SNIPPETS = [
    {
      id: "curl",
      group: SDKS,
      title: "curl",
      text: (c) =>
        `curl -N ${c.base}/chat/completions -H 'content-type: application/json' \\\n` +
        `  -H 'Authorization: Bearer ${c.key}' \\\n` +
        `  -d '{"model":"${c.model}","stream":true,"messages":[{"role":"user","content":"Hello!"}]}'`,
    },
    {
      id: "openai-python",
      group: SDKS,
      title: "OpenAI Python SDK",
      note: () => "pip install openai",
      text: (c) =>
        `from openai import OpenAI\n\n` +
        `client = OpenAI(base_url="${c.base}", api_key="${c.key}")\n` +
        `stream = client.chat.completions.create(\n` +
        `    model="${c.model}",\n` +
        `    stream=True,\n` +
        `    messages=[{"role": "user", "content": "Hello!"}],\n` +
        `)\n` +
        `for chunk in stream:\n` +
        `    print(chunk.choices[0].delta.content or "", end="", flush=True)`,
    },
    {
      id: "openai-node",
      group: SDKS,
      title: "OpenAI Node SDK",
      note: () => "npm install openai",
      text: (c) =>
        `import OpenAI from "openai";\n\n` +
        `const client = new OpenAI({ baseURL: "${c.base}", apiKey: "${c.key}" });\n` +
        `const stream = await client.chat.completions.create({\n` +
        `  model: "${c.model}",\n` +
        `  stream: true,\n` +
        `  messages: [{ role: "user", content: "Hello!" }],\n` +
        `});\n` +
        `for await (const chunk of stream) {\n` +
        `  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");\n` +
        `}`,
    },
    {
      id: "anthropic-python",
      group: SDKS,
      title: "Anthropic Python SDK (Messages API)",
      note: () => "pip install anthropic — the base URL has no /v1.",
      text: (c) =>
        `import anthropic\n\n` +
        `client = anthropic.Anthropic(base_url="${c.origin}", api_key="${c.key}")\n` +
        `message = client.messages.create(\n` +
        `    model="${c.model}",\n` +
        `    max_tokens=1024,\n` +
        `    messages=[{"role": "user", "content": "Hello!"}],\n` +
        `)\n` +
        `print(message.content[0].text)`,
    },
    {
      id: "qwen-code",
      group: AGENTS,
      title: "Qwen Code",
      note: () =>
        "Or security.auth.selectedType: \"openai\" and model.name in ~/.qwen/settings.json. It honours HTTPS_PROXY even for loopback: clear it for a local proxy.",
      text: (c) =>
        `OPENAI_BASE_URL=${c.base} OPENAI_API_KEY=${c.key} \\\n` + `  qwen --auth-type openai --model ${c.model}`,
    },
    {
      id: "cline-cli",
      group: AGENTS,
      title: "Cline CLI",
      note: () => "It leaves a hub daemon running (port CLINE_HUB_PORT, default 25463).",
      text: (c) =>
        `cline auth -p openai-compatible -k ${c.key} -b ${c.base} -m ${c.model}\n` +
        `cline --json --auto-approve true "…"`,
    },
    {
      id: "cline-vscode",
      group: AGENTS,
      title: "Cline (VS Code)",
      note: () =>
        "The \"Next\" bundle (≥ 4.1.13) sends native tools; the \"Legacy\" one describes tools in the system prompt.",
      text: (c) => `API Provider: OpenAI Compatible\nBase URL:     ${c.base}\nAPI Key:      ${c.key}\nModel ID:     ${c.model}`,
    },
    {
      id: "opencode",
      group: AGENTS,
      title: "opencode",
      note: () => "~/.config/opencode/opencode.json; headless: opencode run --format json \"…\"",
      text: (c) =>
        JSON.stringify(
          {
            provider: {
              "qwen-proxy": {
                npm: "@ai-sdk/openai-compatible",
                options: { baseURL: c.base, apiKey: c.key },
                models: { [c.model]: {} },
              },
            },
            model: `qwen-proxy/${c.model}`,
            small_model: `qwen-proxy/${c.model}`,
          },
          null,
          2,
        ),
    },
    {
      id: "claude-code",
      group: AGENTS,
      title: "Claude Code",
      note: () =>
        "Anthropic's Messages API: the base URL has no /v1. CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 keeps it off Anthropic's servers; --model (or ANTHROPIC_MODEL) a Qwen id, or keep its claude-* names (MODEL_ALIASES maps them).",
      text: (c) =>
        `ANTHROPIC_BASE_URL=${c.origin} ANTHROPIC_API_KEY=${c.key} \\\n` +
        `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 claude --model ${c.model}`,
    },
    {
      id: "codex",
      group: AGENTS,
      title: "Codex CLI",
      note: () =>
        "~/.codex/config.toml (the Responses API); do not name the provider \"OpenAI\". Optional: model_catalog_url for the context window and apply_patch.",
      text: (c) =>
        `# export QWEN_API_KEY=${c.key}\n` +
        `model = "${c.model}"\n` +
        `model_provider = "qwen"\n\n` +
        `[model_providers.qwen]\n` +
        `name = "qwen-proxy"\n` +
        `base_url = "${c.base}"\n` +
        `wire_api = "responses"\n` +
        `env_key = "QWEN_API_KEY"\n` +
        `supports_websockets = false\n` +
        `# model_catalog_url = "${c.base}/models"`,
    },
    {
      id: "aider",
      group: AGENTS,
      title: "aider",
      note: () => "The openai/ prefix is required.",
      text: (c) => `OPENAI_API_BASE=${c.base} OPENAI_API_KEY=${c.key} \\\n` + `  aider --model openai/${c.model}`,
    },
    {
      id: "roo-code",
      group: AGENTS,
      title: "Roo Code (VS Code)",
      note: () => "Set the context window: custom models default to 128k.",
      text: (c) => `API Provider: OpenAI Compatible\nBase URL:     ${c.base}\nAPI Key:      ${c.key}\nModel:        ${c.model}`,
    },
    {
      id: "continue",
      group: AGENTS,
      title: "Continue",
      note: () =>
        "~/.continue/config.yaml. Without capabilities: [tool_use] the IDE describes tools in the system prompt.",
      text: (c) =>
        `models:\n` +
        `  - name: qwen-proxy\n` +
        `    provider: openai\n` +
        `    model: ${c.model}\n` +
        `    apiBase: ${c.base}\n` +
        `    apiKey: ${c.key}\n` +
        `    capabilities: [tool_use]`,
    },
    {
      id: "cursor",
      group: AGENTS,
      title: "Cursor",
      note: () =>
        "Cursor calls the base URL from its own servers: the proxy must be reachable from the internet over HTTPS and should have API_KEYS set.",
      text: (c) =>
        `Settings → Models → API Keys\n` +
        `OpenAI API Key:               ${c.key}\n` +
        `Override OpenAI Base URL:     ${c.base.startsWith("https://") ? c.base : "https://PUBLIC-HOST/v1"}\n` +
        `Add the custom model:         ${c.model}`,
    },
  ];

  /** Copy a block's text; where the clipboard API is not offered (plain HTTP on another
   * host), select it for Ctrl+C instead. */
  async function copyFrom(id) {
    const node = $(id);
    if (!node) return;
    const text = node.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        notify("Copied to the clipboard.");
        return;
      } catch (_) {
        // Refused (no permission): select it instead, below.
      }
    }
    const range = document.createRange();
    range.selectNodeContents(node);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    notify("Selected: press Ctrl+C (⌘C) to copy.");
  }

  // ---------------------------------------------------------------------------------------
  // Confirmation dialog
  // ---------------------------------------------------------------------------------------

  /** Ask before something that destroys: resolves true only for the confirming button. */
  function confirmDialog({ title, text, ok }) {
    const dialog = $("confirm");
    setText("confirm-title", title);
    setText("confirm-text", text);
    setText("confirm-ok", ok || "Confirm");
    const opener = document.activeElement;
    dialog.returnValue = "cancel";
    dialog.showModal();
    dialog.querySelector("[value=cancel]").focus();
    return new Promise((resolve) => {
      dialog.addEventListener(
        "close",
        () => {
          if (opener && opener.isConnected) opener.focus();
          resolve(dialog.returnValue === "ok");
        },
        { once: true },
      );
    });
  }

  // ---------------------------------------------------------------------------------------
  // Start
  // ---------------------------------------------------------------------------------------

  function wire() {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    window.addEventListener("hashchange", () => route(true));
    document.addEventListener("keydown", onShortcut);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (currentPage === "overview") overview.drawChart();
        if (currentPage === "usage") usage.render();
      }, 150);
    });
    document.querySelector("[data-skip]").addEventListener("click", (e) => {
      e.preventDefault();
      const heading = currentPage ? $(`h-${currentPage}`) : null;
      (heading || $("main")).focus();
    });

    $("accounts-body").addEventListener("click", (e) => {
      const button = e.target.closest("button[data-action]");
      if (button && !button.disabled) accounts.act(button.dataset.account, button.dataset.action);
    });
    $("accounts-reload").addEventListener("click", () => accounts.reload());

    const usageForm = $("usage-form");
    usageForm.addEventListener("submit", (e) => {
      e.preventDefault();
      usage.load();
    });
    usageForm.addEventListener("change", (e) => {
      if (e.target.name === "metric") usage.render();
      else if (usageForm.checkValidity()) usage.load();
    });

    const requestsForm = $("requests-form");
    requestsForm.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!requests.paused) requests.start();
    });
    requestsForm.addEventListener("reset", () => {
      setTimeout(() => {
        if (!requests.paused) requests.start();
      }, 0);
    });
    for (const name of ["status", "api"]) {
      requestsForm.elements[name].addEventListener("change", () => {
        if (!requests.paused) requests.start();
      });
    }
    $("requests-pause").addEventListener("click", () => requests.togglePause());

    $("connect-key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      connect.apiKey = $("connect-key").value.trim();
      connect.loadModels();
    });
    $("connect-model").addEventListener("change", () => connect.renderSnippets());
    document.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-copy]");
      if (button) copyFrom(button.dataset.copy);
    });
  }

  async function start() {
    wire();
    try {
      const s = await fetchSession();
      if (s) showConsole();
      else showSignIn(session.refusal);
    } catch (err) {
      showSignIn("");
      reportError("session", err, "Could not reach the console's API");
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
