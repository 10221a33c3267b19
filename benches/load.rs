//! The load tool: concurrent chat requests — streaming, or non-streamed in an open loop —
//! several ways, against fresh servers.
//!
//! Ways (`--ways`; all but `proxy-h1` by default):
//! * `direct`   — the client speaks the Qwen web protocol to the simulator itself
//!   (`chats/new`, then the completion): the baseline.
//! * `proxy`    — OpenAI requests through `qwen-proxy` in its default configuration
//!   (`UPSTREAM_HTTP2` unset: `auto`, h2c to the simulator since 40ed2f2; HTTP/1.1 before).
//! * `proxy-h2` — the same with `UPSTREAM_HTTP2=true` (upstream streams multiplexed over a
//!   few HTTP/2 connections).
//! * `proxy-h1` — the same with `UPSTREAM_HTTP2=false` (HTTP/1.1 upstream).
//! * `nginx`    — the Qwen protocol through nginx proxying the simulator with buffering off
//!   (upstream keepalive 256): the floor for a proxy that copies bytes without understanding
//!   them.
//!
//! The simulator runs as its own process with fixed timing (TTFT 50 ms, 20 answer frames of
//! 4 characters 5 ms apart). The servers are pinned to CPU 1 (when `taskset` exists and
//! the machine has two CPUs online), the client to CPU 0 by `scripts/bench-load.sh`, and
//! nginx runs one worker. `--unpinned` is the set-up users deploy instead: nothing pinned
//! (the script leaves the client alone too), nginx with `worker_processes auto` (a worker
//! per core), the client's runtime as it is; its rows say `pinned: false` and their mode
//! ends in ` unpinned`, and since no core is anyone's, only how busy all cores were
//! together is reported (`cores_busy`), not the client's and the servers' core.
//! `--proxy-env KEY=VALUE` (repeatable) sets the proxy's environment after the tool's own
//! (`MAX_CONCURRENT_STREAMS=0`, `CONVERSATION_MODE=stateless`, `LOG_LEVEL=warn`), so it
//! can override them; `LOAD_PROXY_BIN=PATH` runs another build of the binary (the
//! simulator too). Both are recorded in the rows (`proxy_env`, `binary`). All three
//! servers listen with a backlog of 1024 (the proxy's and the simulator's default, and
//! nginx's `backlog=` here), which the kernel caps at `net.core.somaxconn` (4096 on this
//! machine), so no way gets a longer accept queue than another.
//!
//! Modes:
//! * `first-herd` and `warm`: for every N and way the simulator and the middle process are
//!   started anew, then R rounds (`--rounds`, default 3) each start N streams at once.
//!   Round 1 is the first herd: nothing is pooled anywhere — the client is new and every
//!   connection, the client's and the middle's to the simulator, is opened during the
//!   herd, so the accept path and listen queues are measured. Rounds 2..R are `warm`,
//!   pooled into one row (percentiles over all their streams): the client is the same one,
//!   keeping up to N idle connections as an OpenAI SDK's keep-alive pool does, and the
//!   servers keep theirs (the proxy's upstream pool keeps every idle connection; nginx's
//!   `keepalive 256` keeps 256, so past 256 streams a warm herd through nginx still opens
//!   some).
//! * `first-open R/s` and `warm-open R/s`: the same with `--open-rate R` — streams start R
//!   per second instead of all at once; with `--frame-delay-ms D` slowing the frames, N
//!   streams are open together without saturating the machine.
//! * `throughput c=C` (`--throughput SECS`, instead of the herds): the simulator answers
//!   with no delay at all (TTFT 0, frames 0 ms apart) and C client loops (`--concurrency`,
//!   default 50; a list runs each) send streaming requests back to back for SECS seconds,
//!   after an unmeasured warm-up of a fifth of that (at most 1 s) on the same client.
//! * `non-stream R/s` (`--non-stream`, instead of the herds): what the proxy adds to a
//!   non-streamed completion. With the herd timing (a request takes ~0.18 s, so ~180 are
//!   in flight at 1,000/s), for each rate R (`--rates`, default 100,1000) an open loop
//!   starts request i at start + i/R in a task of its own for S seconds (`--seconds`,
//!   default 10), whatever is outstanding — the client never waits for a response before
//!   starting the next — after an unmeasured warm-up at the same rate (a fifth of S, at
//!   most 1 s). Latency runs from the *scheduled* start to the body's last byte, so a late
//!   start is charged to the request (no coordinated omission), and how late starts were is
//!   recorded. `direct` makes the chat and reads the completion's SSE body to its end (the
//!   Qwen web API only streams); the proxy ways ask OpenAI's `stream: false` and check
//!   `choices[0].message.content`. nginx is skipped: through it the client reads the same
//!   Qwen stream as direct.
//!
//! Per row: TTFT p50/p90/p99 and the added p50/p99 over `direct` (same N and mode, this run
//! or else `load.json`), inter-chunk p99, requests/s, chunks/s, CPU seconds per 1,000
//! chunks of the middle process (proxy; nginx master and worker; the simulator for
//! `direct`) and of the simulator — the scheduler's run time of their threads, in
//! nanoseconds, since 10 ms ticks are too coarse for a herd of 100 — the CPU use of the
//! client and of the servers, how busy their two cores were by anyone (`/proc/stat`: a core
//! shared with something else shows), the middle's peak RSS (per round: the peak is reset before each) and RSS per open
//! stream over the fresh process's, errors by kind (connect, request, status, body) and
//! wrong answers (every answer is compared byte for byte with the simulator's), the TCP
//! counters `ListenOverflows`, `ListenDrops` and `TCPSynRetrans` (`/proc/net/netstat`)
//! over the row's rounds — counters of the whole network namespace, ours alone while
//! nothing else on the machine connects; a listen overflow costs a client a SYN
//! retransmit, one second. A row is `saturated` when its baseline is (report::saturation):
//! direct's TTFT p50 over twice the simulator's 50 ms, or the client's core or the
//! servers' (unpinned: all cores) busy ≥ 90 % of direct's run; in throughput mode, where
//! the servers' core is meant to be busy, when the client's core was during the row's own
//! run.
//!
//! A non-stream row has instead: requests, ok, errors by kind, wrong answers, latency
//! p50/p90/p99/p99.9 and the added p50/p99 over `direct` at the same rate (this run or
//! `load.json`), the achieved rate (completions over the run's wall time, which ends with
//! the last response), how late requests started (p99, max), the most in flight, CPU
//! seconds per 1,000 requests of the middle process and of the simulator, and the
//! client's CPU and core use. It is `saturated` when its own client was (core ≥ 90 %
//! busy, or a start over 10 ms late: the schedule was the client's), or the servers' core
//! (unpinned: all cores) under direct.
//!
//! Bench mode writes `docs/bench/load.json` (merged with earlier runs, key = way, N, mode,
//! pinned, proxy env, binary; the machine's facts once per file); `scripts/load_charts.py`
//! draws the charts from its pinned, default-setting streaming rows.
//! `scripts/bench-load.sh` runs both (release build, raised fd limit, pinning unless
//! `--unpinned`):
//!     cargo bench --bench load -- [--n 1,100,1000,10000]
//!         [--ways direct,proxy,proxy-h2,proxy-h1,nginx] [--rounds 3]
//!         [--open-rate R] [--frame-delay-ms D] [--throughput SECS [--concurrency C,…]]
//!         [--non-stream [--rates 100,1000] [--seconds 10]]
//!         [--unpinned] [--proxy-env KEY=VALUE]…
//! Under `cargo test` (no `--bench`) it is a quick correctness smoke test: N = 1 and 20,
//! direct, proxy and proxy-h2, one round, then the non-stream mode at 20/s for 1 s, direct
//! and proxy; every request completes with the simulator's answer and no errors.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

// The same launcher as the tests (a bench target cannot name tests/support otherwise).
#[path = "../tests/support/process.rs"]
#[allow(dead_code)] // the tests use all of it; the load tool, part
mod process;

#[path = "load_support/client.rs"]
mod client;
#[path = "load_support/measure.rs"]
mod measure;
#[path = "load_support/report.rs"]
mod report;
#[path = "load_support/servers.rs"]
mod servers;

use client::{
    new_client, one_stream, scheduled_completion, HttpClient, Scheduled, Stream, StreamError,
};
use measure::{measure, summarize, summarize_completions, Opening, Round};
use report::Row;
use servers::{Servers, Setup, Timing, Way};

/// The simulator's TTFT in the herd and open modes.
const SIM_TTFT_MS: u64 = 50;
/// Between rounds, so a round's CPU time and memory are its own: the servers finish
/// closing the previous round's streams first.
const PAUSE: Duration = Duration::from_millis(200);
/// After the servers start, before their idle memory is read.
const SETTLE: Duration = Duration::from_millis(100);

/// Fresh servers for `way`, settled, with the middle's resident size before any stream and a
/// new client keeping up to `idle` connections. `None` (said once) when nginx is missing.
async fn start_way(
    way: Way,
    timing: Timing,
    setup: &Setup,
    idle: usize,
) -> Option<(Servers, u64, HttpClient)> {
    let Some(servers) = Servers::start(way, timing, setup).await else {
        eprintln!("nginx not found: skipping the nginx way");
        return None;
    };
    tokio::time::sleep(SETTLE).await;
    let rss_base = servers::rss_kib(&servers.middle_pids());
    Some((servers, rss_base, new_client(idle)))
}

const USAGE: &str = "usage: cargo bench --bench load -- [--n 1,100,1000,10000] \
    [--ways direct,proxy,proxy-h2,proxy-h1,nginx] [--rounds R] [--open-rate R] [--frame-delay-ms D] \
    [--throughput SECS [--concurrency C,…] | --non-stream [--rates 100,1000] [--seconds S]] \
    [--unpinned] [--proxy-env KEY=VALUE]…";

struct Options {
    /// `cargo bench` (`--bench`): measure and write `load.json`; else the smoke test.
    full: bool,
    ns: Vec<usize>,
    ways: Vec<Way>,
    rounds: usize,
    open_rate: f64,
    frame_delay_ms: u64,
    throughput: Option<f64>,
    concurrency: Vec<usize>,
    /// `--non-stream`: the open loop of non-streamed completions, at each of `rates` per
    /// second for `seconds`.
    non_stream: bool,
    rates: Vec<f64>,
    seconds: f64,
    setup: Setup,
}

fn list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| format!("{flag}: bad value {x:?}"))
        })
        .collect()
}

fn one<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{flag}: bad value {v:?}"))
}

fn options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let mut o = Options {
        full,
        ns: if full {
            vec![1, 100, 1000, 10000]
        } else {
            vec![1, 20]
        },
        ways: if full {
            Way::DEFAULT.to_vec()
        } else {
            vec![Way::Direct, Way::Proxy, Way::ProxyH2]
        },
        rounds: if full { 3 } else { 1 },
        open_rate: 0.0,
        frame_delay_ms: 5,
        throughput: None,
        concurrency: vec![50],
        non_stream: false,
        rates: if full {
            vec![100.0, 1000.0]
        } else {
            vec![20.0]
        },
        seconds: if full { 10.0 } else { 1.0 },
        setup: Setup {
            pinned: servers::pinning(),
            proxy_env: Vec::new(),
        },
    };
    let mut it = args.iter().flat_map(|a| match a.split_once('=') {
        Some((flag, value)) if flag.starts_with("--") => vec![flag.to_owned(), value.to_owned()],
        _ => vec![a.clone()],
    });
    let mut ways_given = false;
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        let takes_value = [
            "--n",
            "--ways",
            "--rounds",
            "--open-rate",
            "--frame-delay-ms",
            "--throughput",
            "--concurrency",
            "--rates",
            "--seconds",
            "--proxy-env",
        ];
        if !takes_value.contains(&flag) {
            match flag {
                "--unpinned" => o.setup.pinned = false,
                "--non-stream" => o.non_stream = true,
                // `--bench`; in test mode also whatever the test runner passes
                // (`--nocapture`).
                _ if full && flag != "--bench" => return Err(format!("unknown argument {flag:?}")),
                _ => {}
            }
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag {
            "--n" => o.ns = list(flag, &v)?,
            "--ways" => {
                ways_given = true;
                o.ways = v
                    .split(',')
                    .map(|w| Way::parse(w.trim()).ok_or_else(|| format!("--ways: no way {w:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => o.rounds = one(flag, &v)?,
            "--open-rate" => o.open_rate = one(flag, &v)?,
            "--frame-delay-ms" => o.frame_delay_ms = one(flag, &v)?,
            "--throughput" => o.throughput = Some(one(flag, &v)?),
            "--concurrency" => o.concurrency = list(flag, &v)?,
            "--rates" => o.rates = list(flag, &v)?,
            "--seconds" => o.seconds = one(flag, &v)?,
            _ => {
                let (k, value) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--proxy-env: KEY=VALUE, not {v:?}"))?;
                o.setup.proxy_env.push((k.to_owned(), value.to_owned()));
            }
        }
    }
    if o.rounds == 0 {
        return Err("--rounds: at least 1".into());
    }
    if o.non_stream && !ways_given {
        o.ways.retain(|w| *w != Way::Nginx); // see `run_non_stream`
    }
    if o.non_stream && o.throughput.is_some() {
        return Err("--non-stream and --throughput: one mode at a time".into());
    }
    if o.rates.iter().any(|r| *r <= 0.0) || o.seconds <= 0.0 {
        return Err("--rates and --seconds: above 0".into());
    }
    // The baseline first, so the other ways' rows can be compared with it as they print.
    o.ways.sort();
    o.ways.dedup();
    Ok(o)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What every row of a run is stamped with.
struct Stamp {
    commit: Option<String>,
    setup: Setup,
    /// `LOAD_PROXY_BIN`, when it was used.
    binary: Option<String>,
}

/// Stamp, compare with the baseline, print, remember.
fn emit(mut row: Row, known: &mut Vec<Row>, stamp: &Stamp) -> Row {
    row.run_unix = now_unix();
    row.commit.clone_from(&stamp.commit);
    row.pinned = stamp.setup.pinned;
    if !row.pinned {
        row.mode += " unpinned";
    }
    // Only the proxy runs with them; the other ways' rows are the same measurement whatever
    // they were.
    if row.way.starts_with("proxy") {
        row.proxy_env = (stamp.setup.proxy_env.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
    }
    row.binary.clone_from(&stamp.binary);
    report::relate(&mut row, known);
    println!("{}", report::line(&row));
    known.push(row.clone());
    row
}

/// One round of `n` streams, all at once or `open_rate` per second.
async fn herd_round(
    client: &HttpClient,
    servers: &Servers,
    way: Way,
    n: usize,
    open_rate: f64,
) -> Round {
    let open = Arc::new(AtomicUsize::new(0));
    let port = servers.port();
    let work = async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (client, open) = (client.clone(), open.clone());
                let at = if open_rate > 0.0 {
                    start + Duration::from_secs_f64(i as f64 / open_rate)
                } else {
                    start
                };
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    one_stream(&client, port, way.qwen(), &open).await
                })
            })
            .collect();
        let mut streams = Vec::with_capacity(n);
        for t in tasks {
            streams.push(t.await.expect("a stream task panicked"));
        }
        streams
    };
    let (usage, streams) = measure(servers, &open, work).await;
    Round { usage, streams }
}

async fn run_herds(o: &Options, known: &mut Vec<Row>, stamp: &Stamp) -> Vec<Row> {
    let timing = Timing {
        ttft_ms: SIM_TTFT_MS,
        frame_delay_ms: o.frame_delay_ms,
    };
    let (first, warm, opening) = if o.open_rate > 0.0 {
        (
            format!("first-open {}/s", o.open_rate),
            format!("warm-open {}/s", o.open_rate),
            Opening::Spread,
        )
    } else {
        ("first-herd".to_owned(), "warm".to_owned(), Opening::Herd)
    };
    let mut rows = Vec::new();
    for &n in &o.ns {
        for &way in &o.ways {
            let Some((servers, rss_base, client)) = start_way(way, timing, &o.setup, n).await
            else {
                continue;
            };
            let mut rounds = Vec::with_capacity(o.rounds);
            for i in 0..o.rounds {
                if i > 0 {
                    tokio::time::sleep(PAUSE).await;
                }
                rounds.push(herd_round(&client, &servers, way, n, o.open_rate).await);
            }
            drop(client);
            servers.stop();
            let (round1, rest) = rounds.split_at(1);
            let row = summarize(way, first.clone(), n, round1, opening, rss_base, timing);
            rows.push(emit(row, known, stamp));
            if !rest.is_empty() {
                let row = summarize(way, warm.clone(), n, rest, opening, rss_base, timing);
                rows.push(emit(row, known, stamp));
            }
        }
    }
    rows
}

/// `c` loops sending streams back to back until `secs` have passed.
async fn loops(
    client: &HttpClient,
    port: u16,
    way: Way,
    c: usize,
    secs: f64,
    open: &Arc<AtomicUsize>,
) -> Vec<Result<Stream, StreamError>> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let (client, open) = (client.clone(), open.clone());
            tokio::spawn(async move {
                let mut streams = Vec::new();
                while Instant::now() < end {
                    streams.push(one_stream(&client, port, way.qwen(), &open).await);
                }
                streams
            })
        })
        .collect();
    let mut streams = Vec::new();
    for t in tasks {
        streams.extend(t.await.expect("a client loop panicked"));
    }
    streams
}

async fn run_throughput(o: &Options, secs: f64, known: &mut Vec<Row>, stamp: &Stamp) -> Vec<Row> {
    // No simulated latency: the servers' work per stream is all that paces the loops.
    let timing = Timing {
        ttft_ms: 0,
        frame_delay_ms: 0,
    };
    let mut rows = Vec::new();
    for &c in &o.concurrency {
        for &way in &o.ways {
            let Some((servers, rss_base, client)) = start_way(way, timing, &o.setup, c).await
            else {
                continue;
            };
            let open = Arc::new(AtomicUsize::new(0));
            // Unmeasured: connections and pools filled, allocators grown.
            loops(
                &client,
                servers.port(),
                way,
                c,
                (secs / 5.0).min(1.0),
                &open,
            )
            .await;
            let work = loops(&client, servers.port(), way, c, secs, &open);
            let (usage, streams) = measure(&servers, &open, work).await;
            drop(client);
            servers.stop();
            let mode = format!("throughput c={c}");
            let round = Round { usage, streams };
            let row = summarize(way, mode, c, &[round], Opening::Spread, rss_base, timing);
            rows.push(emit(row, known, stamp));
        }
    }
    rows
}

/// Non-streamed completions at `rate` per second for `secs`, open loop: request i starts at
/// `start + i / rate` in a task of its own whatever is outstanding, so a slow response never
/// holds the next request back.
async fn open_loop(
    client: &HttpClient,
    port: u16,
    way: Way,
    rate: f64,
    secs: f64,
    open: &Arc<AtomicUsize>,
) -> Vec<Scheduled> {
    let start = Instant::now();
    let total = (rate * secs).round() as usize;
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        let (client, open) = (client.clone(), open.clone());
        tasks.push(tokio::spawn(async move {
            scheduled_completion(&client, port, way.qwen(), at, &open).await
        }));
    }
    let mut done = Vec::with_capacity(total);
    for t in tasks {
        done.push(t.await.expect("a request task panicked"));
    }
    done
}

/// The non-stream mode, herd timing (a request takes about 0.18 s, so ~180 are in flight at
/// 1,000/s): for every rate and way, fresh servers, an unmeasured warm-up at the same rate
/// (a fifth of the run, at most 1 s, on the same client: connections and pools filled),
/// then the measured open loop.
async fn run_non_stream(
    o: &Options,
    ways: &[Way],
    known: &mut Vec<Row>,
    stamp: &Stamp,
) -> Vec<Row> {
    let timing = Timing {
        ttft_ms: SIM_TTFT_MS,
        frame_delay_ms: o.frame_delay_ms,
    };
    let mut rows = Vec::new();
    for &rate in &o.rates {
        for &way in ways {
            if way == Way::Nginx {
                // Through nginx the client reads the same Qwen stream as direct: nothing a
                // non-streamed completion adds.
                eprintln!("nginx: skipped in non-stream mode");
                continue;
            }
            // A pool of `rate` idle connections (an SDK's keep-alive pool) holds every
            // request in flight with room to spare.
            let idle = rate.ceil() as usize;
            let Some((servers, _, client)) = start_way(way, timing, &o.setup, idle).await else {
                continue;
            };
            let (port, open) = (servers.port(), Arc::new(AtomicUsize::new(0)));
            open_loop(&client, port, way, rate, (o.seconds / 5.0).min(1.0), &open).await;
            let work = open_loop(&client, port, way, rate, o.seconds, &open);
            let (usage, done) = measure(&servers, &open, work).await;
            drop(client);
            servers.stop();
            let mode = format!("non-stream {rate}/s");
            let row = summarize_completions(way, mode, rate, &usage, &done, timing);
            rows.push(emit(row, known, stamp));
        }
    }
    rows
}

fn main() {
    let o = options().unwrap_or_else(|e| {
        eprintln!("{e}\n{USAGE}");
        std::process::exit(2)
    });
    let fd_limit = if o.full {
        let limit = servers::raise_fd_limit();
        if let Some(limit) = limit {
            eprintln!("open-file limit: {limit}");
        }
        limit
    } else {
        None
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/bench/load.json");
    // Earlier rows: merged into the file, and a baseline for ways measured without
    // `direct` this time.
    let old = if o.full {
        report::read_rows(&path)
    } else {
        Vec::new()
    };
    let mut known = old.clone();
    // Bench mode runs for minutes; a build of the binary meanwhile must not change it.
    let frozen = if o.full {
        servers::freeze_binary()
    } else {
        None
    };
    let binary = servers::other_binary().filter(|_| o.full);
    if let (Some(b), None) = (&binary, &frozen) {
        eprintln!("LOAD_PROXY_BIN={}: cannot copy it", b.display());
        std::process::exit(2);
    }
    let stamp = Stamp {
        commit: report::commit(),
        setup: o.setup.clone(),
        binary: binary.map(|b| std::fs::canonicalize(&b).unwrap_or(b).display().to_string()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = rt.block_on(async {
        let mut rows = match o.throughput {
            _ if o.non_stream => run_non_stream(&o, &o.ways, &mut known, &stamp).await,
            Some(secs) => run_throughput(&o, secs, &mut known, &stamp).await,
            None => run_herds(&o, &mut known, &stamp).await,
        };
        if !o.full && !o.non_stream {
            // The smoke test covers the non-stream mode too, briefly.
            let ways = [Way::Direct, Way::Proxy];
            rows.extend(run_non_stream(&o, &ways, &mut known, &stamp).await);
        }
        rows
    });
    if let Some(dir) = frozen {
        let _ = std::fs::remove_dir_all(dir);
    }
    if o.full {
        let machine = report::machine_facts(fd_limit, o.setup.pinned);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match report::write_rows(&path, old, &rows, machine) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
    } else {
        // Quick mode is a correctness smoke test: never a timing assertion.
        assert!(!rows.is_empty(), "no rows");
        for r in &rows {
            assert_eq!(r.errors, 0, "{r:?}");
            if let Some(ns) = &r.non_stream {
                assert_eq!(r.requests, (ns.rate * o.seconds).round() as usize, "{r:?}");
            } else if o.throughput.is_none() {
                assert_eq!(r.requests, r.n * r.rounds, "{r:?}");
            }
            assert_eq!(r.ok, r.requests, "{r:?}");
            assert_eq!(r.wrong_answers, 0, "{r:?}");
        }
        println!(
            "load smoke test: {} rows, all requests complete and correct",
            rows.len()
        );
    }
}
