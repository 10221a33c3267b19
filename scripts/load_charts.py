#!/usr/bin/env python3
"""Charts of the load tool's rows (docs/bench/load.json) as PNGs in docs/bench/.

Run by scripts/bench-load.sh after the tool (or alone: `./scripts/bench-load.sh
--charts-only`). Needs matplotlib; nothing else in the project needs this script.
`load_charts.py DIR` reads DIR/load.json and draws into DIR instead.

Charts (each only when load.json has rows for it):
  load-ttft-<mode>.png   TTFT p50 and p99 against N, absolute, per way, one file per herd or
                         open mode (first-herd, warm, ...); direct dashed as the baseline.
  load-cpu.png           CPU seconds per 1,000 chunks of the middle process, per way and N.
  load-rss.png           resident memory per open stream of the middle process.
  load-throughput.png    throughput mode: requests/s, and CPU per 1,000 chunks (middle
                         process and simulator).
  load-listen.png        first herd: listen-queue overflows, SYN retransmits and connect
                         errors per way and N.
Where the baseline was saturated (the row's `saturated` flag: direct's TTFT p50 over twice
the simulator's, or a pegged core), the chart says "direct saturated".
The charts draw the standard set-up only: streaming modes, pinned, the proxy's default
settings, this build. Rows of other set-ups (`"pinned": false`, a `proxy_env`, a `binary`)
and the non-stream mode are in load.json and the tool's output.
"""

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# `load_charts.py [DIR]`: the rows in DIR/load.json, the charts into DIR.
OUT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "docs" / "bench"
WAYS = ["direct", "proxy", "proxy-h2", "proxy-h1", "nginx"]
STYLE = {
    "direct": dict(color="black", linestyle="--", marker="o"),
    "proxy": dict(color="tab:blue", linestyle="-", marker="s"),
    "proxy-h2": dict(color="tab:orange", linestyle="-", marker="^"),
    "proxy-h1": dict(color="tab:purple", linestyle="-", marker="v"),
    "nginx": dict(color="tab:green", linestyle="-", marker="D"),
}
# With fewer streams, start-up allocations dominate the memory per stream.
MIN_RSS_N = 100
SATURATED = "direct saturated"


def load():
    path = OUT / "load.json"
    data = json.loads(path.read_text())
    if isinstance(data, list):  # the old format: rows only
        return {}, data
    rows = [r for r in data.get("rows") or [] if standard(r)]
    return data.get("machine") or {}, rows


def standard(row):
    """A row of the set-up the charts show (see the module's doc)."""
    return (row.get("pinned", True) and not row.get("proxy_env") and not row.get("binary")
            and not row.get("non_stream"))


def machine_line(machine):
    cpus = machine.get("cpus")
    model = machine.get("cpu_model")
    parts = [(f"{cpus} cores" if cpus else "cores unknown") + (f" ({model})" if model else "")]
    server, client = machine.get("server_cpus"), machine.get("client_cpus")
    if server and client and server != client:
        parts.append(f"servers pinned to CPU {server}, client to CPU {client}")
    else:
        parts.append("servers and client not pinned apart")
    return ", ".join(parts)


def title(fig, what, machine):
    fig.suptitle(f"{what}\n{machine_line(machine)}", fontsize=12)


def plain_n(n):
    return f"{n:,}"


def ways_in(rows):
    present = {r["way"] for r in rows}
    return [w for w in WAYS if w in present] + sorted(present - set(WAYS))


def style(way):
    return STYLE.get(way, dict(color="gray", linestyle=":", marker="x"))


def save(fig, name):
    path = OUT / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def ttft_chart(machine, rows, mode):
    rows = [r for r in rows if r["mode"] == mode and r["ok"] > 0]
    if not rows:
        return
    ns = sorted({r["n"] for r in rows})
    saturated_ns = sorted({r["n"] for r in rows if r.get("saturated")})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharey=True, layout="constrained")
    for ax, (field, label) in zip(axes, [("ttft_p50_ms", "p50"), ("ttft_p99_ms", "p99")]):
        for way in ways_in(rows):
            pts = sorted((r["n"], r[field]) for r in rows if r["way"] == way)
            label_way = f"{way} (baseline)" if way == "direct" else way
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label_way, **style(way))
        ax.set_xscale("log")
        ax.set_yscale("log")
        # The N measured, labelled as plain numbers; no minor ticks between them.
        ax.xaxis.set_major_locator(ticker.FixedLocator(ns))
        ax.xaxis.set_major_formatter(ticker.FixedFormatter([plain_n(n) for n in ns]))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        log_y_ticks(ax, [r[f] for r in rows for f in ("ttft_p50_ms", "ttft_p99_ms")])
        ax.set_xlim(ns[0] / 2, ns[-1] * 2)
        ax.set_xlabel("concurrent streams N (log scale)")
        ax.set_title(f"TTFT {label}")
        ax.grid(True, which="major", alpha=0.3)
        for n in saturated_ns:
            ax.axvspan(n / 1.4, n * 1.4, color="gray", alpha=0.12, linewidth=0)
            # At the bottom of the band: a saturated N has the largest TTFTs, up top.
            ax.annotate(
                SATURATED,
                xy=(n, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                color="dimgray",
                rotation=90,
            )
    axes[0].set_ylabel("time to first token (ms, log scale)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), title="way")
    title(fig, f"Time to first token by concurrency — mode {mode}", machine)
    save(fig, f"load-ttft-{slug(mode)}.png")


def log_y_ticks(ax, values):
    """Log y axis: ticks at 1-2-5 per decade, or denser when the data span less than about a
    decade (so a chart of 50 to 140 ms gets more than two labels); plain numbers."""
    values = [v for v in values if v > 0]
    span = math.log10(max(values) / min(values)) if values else 0
    if span <= 1.2:
        subs = (1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    elif span <= 2.5:
        subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    else:
        subs = (1.0, 2.0, 5.0)
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,g}"))
    ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs="all"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def slug(mode):
    return "".join(c if c.isalnum() else "-" for c in mode).strip("-").replace("--", "-")


def grouped_bars(ax, rows, groups, group_label, value, ways):
    """Bars per way, grouped by `groups` (values of the key `group_label`); the bar
    containers, for labels."""
    width = 0.8 / max(len(ways), 1)
    containers = []
    for i, way in enumerate(ways):
        xs, ys = [], []
        for g, key in enumerate(groups):
            row = next((r for r in rows if r["way"] == way and group_label(r) == key), None)
            if row is not None and value(row) is not None:
                xs.append(g + (i - (len(ways) - 1) / 2) * width)
                ys.append(value(row))
        s = style(way)
        containers.append(ax.bar(xs, ys, width, label=way,
                                 color=s["color"] if way != "direct" else "lightgray",
                                 edgecolor=s["color"]))
    ax.set_xticks(range(len(groups)))
    return containers


def group_labels(rows, groups, key):
    labels = []
    for g in groups:
        text = g if isinstance(g, str) else f"N = {plain_n(g)}"
        if any(r.get("saturated") for r in rows if key(r) == g):
            text += f"\n({SATURATED})"
        labels.append(text)
    return labels


def cpu_chart(machine, rows):
    """One panel per mode and N, each on its own scale: the per-request fixed cost at N = 1
    would otherwise flatten the larger herds' bars."""
    modes = [m for m in ("first-herd", "warm") if any(r["mode"] == m for r in rows)]
    rows = [r for r in rows if r["mode"] in modes and r["ok"] > 0]
    if not rows:
        return
    ns = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(len(modes), len(ns), figsize=(3.6 * len(ns) + 1.5, 3.6 * len(modes)),
                             squeeze=False, layout="constrained")
    for i, mode in enumerate(modes):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            panel = [r for r in rows if r["mode"] == mode and r["n"] == n]
            ways = ways_in(panel)
            values = [next(r for r in panel if r["way"] == w)["cpu_s_per_1000_chunks"]
                      for w in ways]
            bars = ax.bar(range(len(ways)), values,
                          color=[style(w)["color"] if w != "direct" else "lightgray"
                                 for w in ways],
                          edgecolor=[style(w)["color"] for w in ways])
            ax.bar_label(bars, fmt="{:.3f}", fontsize=8)
            ax.set_xticks(range(len(ways)))
            ax.set_xticklabels(ways, fontsize=8)
            ax.margins(y=0.15)
            ax.set_title(f"{mode}, N = {plain_n(n)}", fontsize=10)
            ax.grid(True, axis="y", alpha=0.3)
            if any(r.get("saturated") for r in panel):
                ax.text(0.5, 0.97, SATURATED, transform=ax.transAxes, ha="center", va="top",
                        fontsize=8, color="dimgray")
            if j == 0:
                ax.set_ylabel("CPU s per 1,000 chunks (s)")
    title(fig, "CPU seconds per 1,000 answer chunks of the middle process "
          "(direct: the simulator itself)", machine)
    save(fig, "load-cpu.png")


def rss_chart(machine, rows):
    modes = [m for m in ("first-herd", "warm") if any(r["mode"] == m for r in rows)]
    rows = [r for r in rows if r["mode"] in modes and r["n"] >= MIN_RSS_N]
    if not rows:
        return
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 5.5), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, mode in zip(axes[0], modes):
        mrows = [r for r in rows if r["mode"] == mode]
        ns = sorted({r["n"] for r in mrows})
        grouped_bars(ax, mrows, ns, lambda r: r["n"], lambda r: r["rss_per_open_stream_kib"],
                     ways_in(mrows))
        ax.set_xticklabels(group_labels(mrows, ns, lambda r: r["n"]))
        ax.set_title(f"mode {mode}")
        ax.set_ylabel("peak RSS over the fresh process, per open stream (KiB)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       title="way\n(direct: the simulator)")
    title(fig, f"Memory per open stream of the middle process (N ≥ {MIN_RSS_N})", machine)
    save(fig, "load-rss.png")


def throughput_chart(machine, rows):
    rows = [r for r in rows if r["mode"].startswith("throughput")]
    if not rows:
        return
    modes = sorted({r["mode"] for r in rows},
                   key=lambda m: next(r["n"] for r in rows if r["mode"] == m))
    # One bar per (concurrency, way), in both panels.
    bars = [r for m in modes for w in ways_in(rows) for r in rows
            if r["mode"] == m and r["way"] == w]
    labels = []
    for r in bars:
        # A star, explained below the chart: a longer note would run into the next label.
        text = r["way"] + ("*" if r.get("saturated") else "")
        if len(modes) > 1:
            text += f"\nc={r['n']}"
        labels.append(text)
    colors = [style(r["way"])["color"] for r in bars]
    fills = [c if r["way"] != "direct" else "lightgray" for c, r in zip(colors, bars)]
    # A gap between concurrency groups.
    xs = [i + 0.6 * modes.index(r["mode"]) for i, r in enumerate(bars)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained")
    rps = ax1.bar(xs, [r["requests_per_s"] for r in bars], 0.6, color=fills, edgecolor=colors)
    ax1.bar_label(rps, fmt="{:,.0f}", fontsize=8)
    ax1.set_ylabel("completed streams per second (req/s)")
    ax1.set_title("requests/s (20 answer chunks each)")
    ax1.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    # CPU per 1,000 chunks: the middle process, and the simulator behind it (hatched);
    # for direct the simulator is all there is.
    middle = [0.0 if r["way"] == "direct" else r["cpu_s_per_1000_chunks"] for r in bars]
    sim = [r["sim_cpu_s_per_1000_chunks"] for r in bars]
    ax2.bar(xs, middle, 0.6, color=colors, label="middle process")
    ax2.bar(xs, sim, 0.6, bottom=middle, color="white", edgecolor=colors, hatch="//",
            label="simulator")
    ax2.set_ylabel("CPU seconds per 1,000 answer chunks (s)")
    ax2.set_title("CPU per 1,000 chunks: middle process + simulator (hatched)")
    ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8, rotation=45, ha="right")
        ax.margins(y=0.1)
        ax.grid(True, axis="y", alpha=0.3)
    if any(r.get("saturated") for r in bars):
        fig.text(0.01, -0.01, "* client saturated: the client's core was ≥ 90 % busy, so this "
                 "rate is the client's limit, not the way's", fontsize=9, color="dimgray",
                 va="top")
    concurrency = ", ".join(m.removeprefix("throughput ") for m in modes)
    secs = max(r.get("wall_s", 0) for r in rows)
    title(fig, f"Throughput, zero simulated latency ({concurrency} client loops, "
          f"about {secs:.0f} s per way)", machine)
    save(fig, "load-throughput.png")


def listen_chart(machine, rows):
    rows = [r for r in rows if r["mode"] == "first-herd"]
    if not rows:
        return
    ns = sorted({r["n"] for r in rows})
    ways = ways_in(rows)
    panels = [
        ("listen_overflows", "listen-queue overflows"),
        ("syn_retrans", "SYN retransmits"),
        ("connect_errors", "connect errors"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), layout="constrained")
    for ax, (field, label) in zip(axes, panels):
        for bars in grouped_bars(ax, rows, ns, lambda r: r["n"], lambda r, f=field: r.get(f, 0),
                                 ways):
            # Counts, printed: a zero bar is otherwise invisible.
            ax.bar_label(bars, fmt="{:,.0f}", fontsize=7, rotation=90, padding=2)
        ax.set_xticklabels(group_labels(rows, ns, lambda r: r["n"]))
        ax.set_title(label)
        ax.set_ylabel(f"{label} in the round (count)")
        ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
        # Room above the tallest bar for its rotated label; at least 0..1 when all are 0.
        ax.set_ylim(bottom=0, top=max(1, ax.get_ylim()[1] * 1.15))
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), title="way")
    title(fig, "First herd: accept path (TCP counters are system-wide, loopback only here)",
          machine)
    save(fig, "load-listen.png")


def main():
    machine, rows = load()
    if not rows:
        sys.exit(f"{OUT / 'load.json'} has no rows")
    modes = sorted({r["mode"] for r in rows if not r["mode"].startswith("throughput")})
    for mode in modes:
        ttft_chart(machine, rows, mode)
    cpu_chart(machine, rows)
    rss_chart(machine, rows)
    throughput_chart(machine, rows)
    listen_chart(machine, rows)


if __name__ == "__main__":
    main()
