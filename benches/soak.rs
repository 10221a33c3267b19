//! The soak: ten minutes of mixed traffic with faults through the proxy to the simulator,
//! both separate processes of our binary, and whether their memory, file descriptors and
//! tasks stay flat.
//!
//! * **Processes.** `qwen-proxy sim` in strict mode with four accounts (tokens living
//!   180 s, so every account renews its token by refresh token several times), and the
//!   proxy with an accounts file of the four as password accounts (`QWEN_BASE_URL` and
//!   `QWEN_AUTH_BASE_URL` at the simulator), each on a port it picked itself. Stopped at the
//!   end (SIGTERM, then SIGKILL); their stderr is next to the CSV, `soak-{proxy,sim}.log`.
//! * **Traffic.** 32 client loops (`SOAK_CLIENTS`), each thinking 0.5–2 s between
//!   operations, draw from the mix in `soak_support/traffic.rs` (`Kind::weight`): OpenAI chat
//!   streamed and not, three-turn conversations, tool calls answered with a tool result,
//!   Anthropic `/v1/messages` sessions, `/v1/responses` (unstored, and stored then continued
//!   by `previous_response_id`), client aborts mid-answer and before it, and the `@@sim:`
//!   faults `internal_error`, `reset`, `empty`, `stall=3000` (past the 2 s idle timeout),
//!   `stall=500`, `moderation_output`, `in_progress=1`. Scheduled, rotating over the
//!   accounts: a quota mid-answer (`rate_limited_after=0.01`) every 60 s, a quota before any
//!   content (the simulator's control) every 90 s, an expired token every 120 s, an
//!   operator's purge of an account's chats every 30 s. Every operation checks its outcome:
//!   the answer names its own prompt, or the error is the fault's; anything else is
//!   *unexpected*, counted with its reason.
//! * **Samples** every 10 s (`SOAK_SAMPLE_SECONDS`): the proxy's
//!   `process_resident_memory_bytes`, `process_open_fds`, `tokio_alive_tasks`,
//!   `chat_active_streams`, `conversation_sessions` from `/metrics`; the simulator's `VmRSS`
//!   and open fds from `/proc/PID/{status,fd}`; the operations and requests done and the
//!   unexpected ones, per kind. Once before the traffic (idle) and once after it stopped and
//!   5 s passed with the client's connections closed (quiet). Written to
//!   `target/soak/soak.csv` (`SOAK_CSV`) and printed.
//! * **Verdict.** Over the load samples, the median of the last third against the median of
//!   the second (the first is warm-up): the growth of each series, and its least-squares
//!   slope over those two thirds (a ramp shows there before it passes a limit). After the
//!   quiet: no stream active, tasks and fds back within a few of the idle baseline. In the
//!   full mode (`SOAK_SECONDS` ≥ 300) the bench exits 1 if either process's RSS grew over
//!   10 %, a stream is still active, tasks or fds stay over the idle baseline by more than
//!   16, the simulator still has a stream in flight, or over 1 % of the operations were
//!   unexpected.
//!
//! `cargo bench --bench soak` (or `scripts/soak.sh`) runs `SOAK_SECONDS` (default 600);
//! below 300 s it is a trial that reports and exits 0. Under `cargo test` (no `--bench`) it
//! runs 5 s of the same traffic (every kind at least once) against the debug build and checks
//! loosely: every kind ran, at most 10 % unexpected, no stream left, tasks and fds back near
//! the baseline. For diagnosis: `SOAK_MIX=kind,…` (only these kinds), `SOAK_THINK_MS=LO,HI`,
//! `SOAK_PROXY_ENV=K=V,…` (more configuration for the proxy), `SOAK_CLIENTS`. BENCHMARKS.md
//! §8 has the method, the mix and the results.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

// The same launcher as the tests (a bench target cannot name tests/support otherwise).
#[path = "../tests/support/process.rs"]
#[allow(dead_code)] // the tests use all of it; the soak, part
mod process;

#[path = "soak_support/report.rs"]
mod report;
#[path = "soak_support/servers.rs"]
mod servers;
#[path = "soak_support/traffic.rs"]
mod traffic;

use report::{Sample, Thirds};
use servers::Stack;
use traffic::{Ctx, Every, Kind, Shape, Stats};

/// Tasks and fds of a process may stay this far over its idle baseline after the quiet
/// (an idle pooled upstream connection, a timer).
const SLACK: u64 = 16;
/// The full mode's limit on RSS growth, last third over second, percent.
const RSS_GROWTH_LIMIT_PCT: f64 = 10.0;

/// A series of the samples.
type Field = fn(&Sample) -> u64;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The scheduled faults: when each runs first and how often then.
fn schedule(seconds: u64) -> Vec<(Kind, Every)> {
    let every = |first: u64, then: u64| Every {
        first: secs(first),
        then: Some(secs(then)),
    };
    if seconds >= 60 {
        vec![
            (Kind::QuotaMidAnswer, every(20, 60)),
            (Kind::QuotaBeforeAnswer, every(40, 90)),
            (Kind::ExpireToken, every(50, 120)),
            (Kind::PurgeChats, every(30, 30)),
        ]
    } else {
        // A short run: each once, early.
        [
            Kind::QuotaMidAnswer,
            Kind::QuotaBeforeAnswer,
            Kind::ExpireToken,
            Kind::PurgeChats,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let first = Duration::from_millis(500 + 400 * i as u64);
            (k, Every { first, then: None })
        })
        .collect()
    }
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let seconds = env_u64("SOAK_SECONDS").unwrap_or(if bench { 600 } else { 5 });
    let full = seconds >= 300;
    let every = secs(env_u64("SOAK_SAMPLE_SECONDS").unwrap_or(if seconds >= 60 { 10 } else { 1 }));
    // `SOAK_MIX=kind,kind`: only these kinds (diagnosis: which part of the traffic a growth
    // follows); scheduled kinds named there keep their schedule, the others are not run.
    let named: Option<Vec<Kind>> = std::env::var("SOAK_MIX").ok().map(|list| {
        list.split(',')
            .map(|n| {
                Kind::parse(n.trim()).unwrap_or_else(|| {
                    let all: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                    panic!("SOAK_MIX: unknown kind {n:?}; kinds: {}", all.join(","))
                })
            })
            .collect()
    });
    let included = |k: &Kind| named.as_ref().map_or(true, |n| n.contains(k));
    let mix: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| k.weight() > 0 && included(k))
        .collect();
    let scheduled: Vec<(Kind, Every)> = schedule(seconds)
        .into_iter()
        .filter(|(k, _)| included(k))
        .collect();
    // `SOAK_PROXY_ENV=K=V,K=V`: more configuration for the proxy (diagnosis).
    let proxy_env: Vec<(String, String)> = std::env::var("SOAK_PROXY_ENV")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let shape = Shape {
        clients: env_u64("SOAK_CLIENTS").unwrap_or(32) as usize,
        // `SOAK_THINK_MS=LO,HI`: another think time (a faster soak amplifies a growth per
        // request).
        think_ms: std::env::var("SOAK_THINK_MS")
            .ok()
            .and_then(|v| {
                let (lo, hi) = v.split_once(',')?;
                Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
            })
            .unwrap_or((500, 2000)),
        mix,
    };
    assert!(
        !shape.mix.is_empty() || !scheduled.is_empty(),
        "SOAK_MIX leaves nothing to run"
    );
    let quiet = secs(5);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    std::fs::create_dir_all(&root).unwrap();
    let tag = if bench { "soak" } else { "soak-short" };
    let csv =
        std::env::var_os("SOAK_CSV").map_or_else(|| root.join(format!("{tag}.csv")), PathBuf::from);

    println!(
        "soak: {seconds} s of traffic, {} clients thinking {}–{} ms, samples every {} s, {} mode; binary {}",
        shape.clients,
        shape.think_ms.0,
        shape.think_ms.1,
        every.as_secs(),
        if full { "full" } else if bench { "trial" } else { "test" },
        process::BIN
    );
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", loadavg.trim());

    if named.is_some() || !proxy_env.is_empty() {
        let kinds: Vec<_> = shape
            .mix
            .iter()
            .chain(scheduled.iter().map(|(k, _)| k))
            .map(|k| k.name())
            .collect();
        println!(
            "diagnosis: kinds {}; proxy env {proxy_env:?}",
            kinds.join(",")
        );
    }
    // The processes' logs go next to the samples, named after them.
    let logs = csv.parent().map_or_else(|| root.clone(), PathBuf::from);
    let stem = csv
        .file_stem()
        .map_or_else(|| tag.to_owned(), |s| s.to_string_lossy().into_owned());
    std::fs::create_dir_all(&logs).unwrap();
    let stack = Stack::start(&logs, &stem, &proxy_env);
    println!(
        "simulator pid {} at {}, proxy pid {} at {}",
        stack.sim.pid(),
        stack.sim_url(),
        stack.proxy.pid(),
        stack.proxy_url()
    );
    let probe = traffic::new_client(4);
    stack.wait_ready(&probe).await;
    tokio::time::sleep(secs(2)).await;

    let stats = Arc::new(Stats::new());
    let mut samples: Vec<Sample> = Vec::new();
    let idle = report::sample(&probe, &stack, &stats, 0.0, "idle").await;
    println!("{}", report::HEADER);
    println!("{}", report::line(&idle, None));
    samples.push(idle.clone());

    let ctx = Ctx {
        client: traffic::new_client(2 * shape.clients),
        proxy: stack.proxy_url(),
        sim: stack.sim_url(),
        stats: stats.clone(),
        seq: Arc::new(AtomicU64::new(0)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients = if shape.mix.is_empty() {
        Vec::new()
    } else {
        traffic::spawn_clients(&ctx, shape.clone(), &stop)
    };
    let scheduler = traffic::spawn_scheduler(&ctx, stack.accounts.clone(), scheduled, &stop);
    drop(ctx);

    let mut k = 1u32;
    loop {
        let at = start + every * k;
        let end = start + secs(seconds);
        tokio::time::sleep_until(at.min(end)).await;
        let s = report::sample(
            &probe,
            &stack,
            &stats,
            start.elapsed().as_secs_f64(),
            "load",
        )
        .await;
        println!("{}", report::line(&s, samples.last()));
        samples.push(s);
        if at >= end {
            break;
        }
        k += 1;
    }

    // Stop: no new operation; those running finish (each is bounded by its own timeout).
    stop.store(true, Ordering::Relaxed);
    let drained = Instant::now();
    for c in clients {
        let _ = c.await;
    }
    let _ = scheduler.await;
    println!(
        "traffic stopped; the last operations took {:.1} s to finish; quiet for {} s",
        drained.elapsed().as_secs_f64(),
        quiet.as_secs()
    );
    // The traffic client's pooled connections closed with its last clone (above).
    tokio::time::sleep(quiet).await;
    let t = start.elapsed().as_secs_f64();
    let after = report::sample(&probe, &stack, &stats, t, "quiet").await;
    println!("{}", report::line(&after, None));
    samples.push(after.clone());
    let sim_stats = servers::get_json(&probe, &format!("{}/__sim/stats", stack.sim_url()), None)
        .await
        .unwrap_or_default();
    let metrics = servers::get_text(&probe, &format!("{}/metrics", stack.proxy_url()), None)
        .await
        .unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", loadavg.trim());

    match report::write_csv(&csv, &samples) {
        Ok(()) => println!("samples: {}", csv.display()),
        Err(e) => println!("could not write {}: {e}", csv.display()),
    }

    // --- the traffic ---
    println!(
        "\n{:<20} {:>7} {:>8} {:>10}",
        "kind", "ops", "requests", "unexpected"
    );
    let (ops, requests, unexpected) = stats.totals();
    let mut by_design = 0;
    for kind in Kind::ALL {
        let s = stats.kind(kind);
        let n = s.ops.load(Ordering::Relaxed);
        let bad = s.unexpected.load(Ordering::Relaxed);
        if kind.fails_by_design() {
            by_design += n - bad;
        }
        println!(
            "{:<20} {:>7} {:>8} {:>10}{}",
            kind.name(),
            n,
            s.requests.load(Ordering::Relaxed),
            bad,
            if kind.fails_by_design() {
                "   (errors by design)"
            } else {
                ""
            }
        );
    }
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    println!(
        "{:<20} {:>7} {:>8} {:>10}\nerrors by design (the faults'): {by_design} of {ops} operations ({:.1} %); unexpected: {unexpected} ({:.2} %)",
        "all",
        ops,
        requests,
        unexpected,
        pct(by_design, ops),
        pct(unexpected, ops)
    );
    for ((kind, reason), n) in stats.reasons.lock().unwrap().iter().take(30) {
        println!("  unexpected {} × {n}: {reason}", kind.name());
    }
    println!(
        "simulator: chats_created {}, completion_requests {}, completions {}, aborted_streams {}, busy_refusals {}, chats_purged {}, in_flight {}, signins {}, refreshes {} (refused {})",
        sim_stats["chats_created"],
        sim_stats["completion_requests"],
        sim_stats["completions"],
        sim_stats["aborted_streams"],
        sim_stats["busy_refusals"],
        sim_stats["chats_purged"],
        sim_stats["in_flight"],
        sim_stats["signins"],
        sim_stats["refreshes"],
        sim_stats["refreshes_refused"]
    );
    for line in metrics.lines().filter(|l| {
        [
            "upstream_account_cooldowns_total",
            "upstream_account_signins_total",
            "conversation_fallbacks_total",
            "conversation_turns_total",
            "upstream_errors_total",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    }) {
        println!("proxy: {line}");
    }

    // --- flatness ---
    let load: Vec<Sample> = samples
        .iter()
        .filter(|s| s.phase == "load")
        .cloned()
        .collect();
    let series: [(&str, Field, bool); 8] = [
        ("proxy RSS KiB", |s| s.proxy_rss_kib, true),
        ("proxy open fds", |s| s.proxy_fds, false),
        ("proxy tokio tasks", |s| s.proxy_tasks, false),
        ("proxy active streams", |s| s.proxy_streams, false),
        ("proxy sessions", |s| s.proxy_sessions, false),
        ("sim RSS KiB", |s| s.sim_rss_kib, true),
        ("sim open fds", |s| s.sim_fds, false),
        ("sim threads", |s| s.sim_threads, false),
    ];
    println!(
        "\n{:<22} {:>10} {:>12} {:>12} {:>10} {:>12} {:>10}",
        "series", "idle", "2nd third", "last third", "growth", "slope/min", "quiet"
    );
    let mut rss_growth = Vec::new();
    for (name, f, pct_wise) in series {
        let th = Thirds::of(&load, f);
        let growth = if pct_wise {
            format!("{:+.1} %", th.growth_pct())
        } else {
            format!("{:+.1}", th.growth())
        };
        if pct_wise {
            rss_growth.push((name, th.growth_pct()));
        }
        println!(
            "{:<22} {:>10} {:>12.1} {:>12.1} {:>10} {:>+12.1} {:>10}",
            name,
            f(&idle),
            th.second,
            th.last,
            growth,
            Thirds::slope_per_min(&load, f),
            f(&after)
        );
    }
    // What a steady growth of the proxy's memory costs per request (after warm-up; not for a
    // run of a few samples, where the slope is noise).
    if let (true, Some(first), Some(last)) =
        (load.len() >= 9, load.get(load.len() / 3), load.last())
    {
        let minutes = (last.t - first.t) / 60.0;
        let per_min = last.requests.saturating_sub(first.requests) as f64 / minutes.max(1e-9);
        let slope = Thirds::slope_per_min(&load, |s| s.proxy_rss_kib);
        println!(
            "proxy RSS after warm-up: {slope:+.0} KiB/min at {per_min:.0} requests/min = {:+.0} bytes per request",
            1024.0 * slope / per_min.max(1e-9)
        );
    }

    // --- verdict ---
    let mut problems: Vec<String> = Vec::new();
    if after.proxy_streams != 0 {
        problems.push(format!(
            "{} streams still active after the quiet",
            after.proxy_streams
        ));
    }
    for (name, now, base) in [
        ("proxy tasks", after.proxy_tasks, idle.proxy_tasks),
        ("proxy fds", after.proxy_fds, idle.proxy_fds),
        ("sim fds", after.sim_fds, idle.sim_fds),
    ] {
        if now > base + SLACK {
            problems.push(format!(
                "{name}: {now} after the quiet, {base} idle (over +{SLACK})"
            ));
        }
    }
    if sim_stats["in_flight"].as_i64().unwrap_or(0) != 0 {
        problems.push(format!(
            "the simulator has {} streams in flight",
            sim_stats["in_flight"]
        ));
    }
    let unexpected_limit = if full { 1.0 } else { 10.0 };
    if pct(unexpected, ops) > unexpected_limit {
        problems.push(format!(
            "{unexpected} of {ops} operations unexpected (over {unexpected_limit} %)"
        ));
    }
    if full {
        for (name, g) in &rss_growth {
            if *g > RSS_GROWTH_LIMIT_PCT {
                problems.push(format!(
                    "{name} grew {g:.1} % (over {RSS_GROWTH_LIMIT_PCT} %)"
                ));
            }
        }
    } else {
        for kind in Kind::ALL.into_iter().filter(included) {
            if stats.kind(kind).ops.load(Ordering::Relaxed) == 0 {
                problems.push(format!("no {} operation ran", kind.name()));
            }
        }
    }
    drop(stack); // both processes stopped
    if problems.is_empty() {
        println!("\nverdict: flat — every check passed");
        return;
    }
    println!("\nverdict: NOT flat");
    for p in &problems {
        println!("  - {p}");
    }
    // A trial (`cargo bench` with SOAK_SECONDS < 300) reports only.
    if full || !bench {
        std::process::exit(1);
    }
}
