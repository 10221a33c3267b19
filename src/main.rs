//! `qwen-proxy` binary: CLI → config → tracing → rustls provider → serve | sim | check.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use qwen_proxy::cli::{self, Command, ServeArgs, SimArgs};
use qwen_proxy::config::{Config, Env, Workers};
use qwen_proxy::sim::{SimConfig, SimTiming, Simulator};
use qwen_proxy::App;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `EX_USAGE`: bad command line or configuration.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Explicit, so rustls never has to guess between providers at run time.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cmd {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("qwen-proxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Serve(a) => serve(a),
        Command::Sim(a) => sim(a),
        Command::Check(a) => check(a),
    }
}

/// The simulator's and `check`'s runtime: work-stealing over every core.
fn runtime() -> tokio::runtime::Runtime {
    exit_unless_started(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    )
}

/// The proxy's runtime on the main thread: worker 0 of `WORKERS` single-threaded ones
/// (`qwen_proxy::workers`), or the one work-stealing runtime with `WORKERS` threads.
fn serving_runtime(workers: Workers) -> tokio::runtime::Runtime {
    if workers.work_stealing {
        exit_unless_started(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers.threads)
                .enable_all()
                .build(),
        )
    } else {
        qwen_proxy::workers::enter(0);
        exit_unless_started(qwen_proxy::workers::current_thread_runtime())
    }
}

fn exit_unless_started(
    runtime: std::io::Result<tokio::runtime::Runtime>,
) -> tokio::runtime::Runtime {
    runtime.unwrap_or_else(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        std::process::exit(1);
    })
}

fn load_config(a: &ServeArgs, demo: bool) -> Result<Config, String> {
    let mut env = match &a.env_file {
        Some(path) => Env::load(path, true)?,
        None => Env::load(std::path::Path::new(".env"), false)?,
    };
    if let Some(p) = &a.port {
        env.set_override("PORT", p.clone());
    }
    if let Some(h) = &a.host {
        env.set_override("HOST", h.clone());
    } else if demo {
        // The demo is for trying things out locally: loopback unless asked otherwise.
        env.set_override("HOST", "127.0.0.1");
    }
    Config::from_source(&env, demo).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; draining connections");
}

fn serve(a: ServeArgs) -> ExitCode {
    let mut config = match load_config(&a, a.demo) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // An unusable LOG_DIR is a configuration error like any other (exit 64).
    let logs = match qwen_proxy::logs::init(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    qwen_proxy::logs::name_unused_variables(&config);
    let workers = config.workers;
    let runtime = serving_runtime(workers);
    let code = runtime.block_on(async move {
        let mut _sim = None;
        if a.demo {
            // Realistic pacing, so the demo visibly streams.
            let sim_config = SimConfig {
                timing: SimTiming {
                    chat_latency: std::time::Duration::from_millis(30),
                    ttft: std::time::Duration::from_millis(150),
                    frame_delay: std::time::Duration::from_millis(25),
                    chunk_chars: 4,
                    prefill_per_1k_tokens: qwen_proxy::sim::PREFILL_PER_1K_TOKENS,
                },
                habits: a.habits,
                // A picture takes seconds upstream; the demo keeps a second of it.
                image_delay: std::time::Duration::from_secs(1),
                ..SimConfig::default()
            };
            match Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim_config).await {
                Ok(sim) => match sim.base_url().parse() {
                    Ok(url) => {
                        config.use_simulator(url);
                        _sim = Some(sim);
                    }
                    Err(e) => {
                        eprintln!("error: the demo simulator's address is not a URL: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                Err(e) => {
                    eprintln!("error: cannot start the demo simulator: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let addr = SocketAddr::new(config.host, config.port);
        let listeners =
            match qwen_proxy::server::bind_each(addr, config.listen_backlog, workers.runtimes()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            };
        let mut listeners = listeners.into_iter();
        // Worker 0's socket, registered with this runtime (`bind_each` gives at least one).
        let first = listeners
            .next()
            .ok_or_else(|| std::io::Error::other("no listening socket"))
            .and_then(tokio::net::TcpListener::from_std);
        let first = match first {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let bound = first.local_addr().unwrap_or(addr);
        warn_about_exposure(&config, bound);
        warn_about_backlog(config.listen_backlog);
        print_banner(
            bound,
            _sim.as_ref().map(Simulator::base_url),
            !config.api_keys.is_empty(),
            config.admin_key.is_some(),
        );
        tracing::info!(
            %bound,
            demo = a.demo,
            upstream = %config.upstream.base_url,
            threads = workers.threads,
            work_stealing = workers.work_stealing,
            "qwen-proxy listening"
        );
        let app = App::new(config);
        let reloads = reload_on_hangup(app.state.clone());
        app.serve_on_workers(first, listeners.collect(), shutdown_signal())
            .await;
        reloads.abort();
        ExitCode::SUCCESS
    });
    // The runtime's threads have stopped logging before the log file is written out.
    drop(runtime);
    drop(logs);
    code
}

/// `SIGHUP` re-reads `QWEN_ACCOUNTS_FILE` (as `POST /admin/accounts/reload`); open
/// streams keep their accounts.
fn reload_on_hangup(state: std::sync::Arc<qwen_proxy::AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                return;
            };
            while hangups.recv().await.is_some() {
                if let Err(errors) = state.reload_accounts().await {
                    tracing::error!(
                        errors = %errors.join("; "),
                        "SIGHUP: the accounts file was not reloaded; the accounts in use stay"
                    );
                }
            }
        }
        #[cfg(not(unix))]
        drop(state);
    })
}

/// The kernel silently caps the listen backlog at `net.core.somaxconn`: say so when
/// `LISTEN_BACKLOG` asks for more (Linux; elsewhere nothing is read).
fn warn_about_backlog(backlog: u32) {
    let Some(somaxconn) = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
    else {
        return;
    };
    if backlog > somaxconn {
        tracing::warn!(
            backlog,
            somaxconn,
            "LISTEN_BACKLOG is above net.core.somaxconn, which the kernel uses instead; raise it with `sysctl -w net.core.somaxconn=N` (DEPLOYMENT.md)"
        );
    }
}

fn warn_about_exposure(config: &Config, bound: SocketAddr) {
    if config.api_keys.is_empty() && !bound.ip().is_loopback() {
        tracing::warn!(
            %bound,
            "API_KEYS is not set and the proxy listens on a non-loopback address: anyone who can reach it can use the Qwen account"
        );
    }
}

/// `sim`: the demo simulator's URL, when in demo mode. `keys`: API_KEYS is set, so the
/// examples send a key (a placeholder: a key is never printed). `console`: ADMIN_KEY is set.
fn print_banner(bound: SocketAddr, sim: Option<String>, keys: bool, console: bool) {
    let host = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let base = format!("http://{host}:{}", bound.port());
    let mode = match &sim {
        Some(url) => format!(
            " (demo mode: answers come from the built-in Qwen simulator at {url}; its counters: {url}/__sim/stats)"
        ),
        None => String::new(),
    };
    let (key_setup, auth_header, sdk_import, api_key) = if keys {
        (
            "  export QWEN_PROXY_KEY='<one of the keys in API_KEYS>'\n",
            " -H \"Authorization: Bearer $QWEN_PROXY_KEY\"",
            "  import os\n",
            "os.environ[\"QWEN_PROXY_KEY\"]",
        )
    } else {
        ("", "", "", "\"unused\"")
    };
    // In the demo, the simulated model calls tools on request (README, "Simulator").
    let tools_demo = if sim.is_some() {
        format!(
            "
A tool call (`@@sim:call` makes the simulated model call the first tool):
  curl -N {base}/v1/chat/completions -H 'content-type: application/json'{auth_header} \\
    -d '{{\"model\":\"qwen3.7-plus\",\"stream\":true,\"tools\":[{{\"type\":\"function\",\"function\":{{\"name\":\"get_weather\",\"parameters\":{{\"type\":\"object\",\"properties\":{{\"city\":{{\"type\":\"string\"}}}},\"required\":[\"city\"]}}}}}}],\"messages\":[{{\"role\":\"user\",\"content\":\"Weather in Paris? @@sim:call\"}}]}}'
"
        )
    } else {
        String::new()
    };
    let console = if console {
        format!("The operators' console: {base}/admin/ (sign in with ADMIN_KEY)")
    } else {
        format!(
            "The operators' console: set ADMIN_KEY (16+ random characters) and open {base}/admin/"
        )
    };
    let banner = format!(
        "qwen-proxy {} listening on {base}{mode}

Try it with curl:
{key_setup}  curl -N {base}/v1/chat/completions -H 'content-type: application/json'{auth_header} \\
    -d '{{\"model\":\"qwen3.7-plus\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'

Or with the OpenAI Python SDK (pip install openai):
{sdk_import}  from openai import OpenAI
  client = OpenAI(base_url=\"{base}/v1\", api_key={api_key})
  stream = client.chat.completions.create(model=\"qwen3.7-plus\", stream=True, messages=[{{\"role\": \"user\", \"content\": \"Hello!\"}}])
  for chunk in stream:
      print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)

{console}
{tools_demo}
Coding agents: Claude Code (Anthropic's API, no /v1):
  ANTHROPIC_BASE_URL={base} ANTHROPIC_API_KEY=<key> claude
The Codex CLI (the Responses API): a provider in ~/.codex/config.toml with
  base_url = \"{base}/v1\", wire_api = \"responses\", supports_websockets = false
(README, \"Coding agents\", for these and the others.)
",
        env!("CARGO_PKG_VERSION")
    );
    // A closed stdout (piped into `head`, a supervisor that went away) must not kill the
    // server: ignore write errors instead of panicking like `println!`.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes());
    let _ = out.flush();
}

fn sim(a: SimArgs) -> ExitCode {
    let addr: IpAddr = match a.host.parse() {
        Ok(ip) => ip,
        Err(_) => {
            eprintln!("error: --host {:?} is not an IP address", a.host);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    runtime().block_on(async move {
        let sim = match Simulator::start(SocketAddr::new(addr, a.port), a.config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot listen on {}:{}: {e}", a.host, a.port);
                return ExitCode::FAILURE;
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "qwen-proxy sim listening on {}", sim.base_url());
        let _ = out.flush();
        drop(out);
        shutdown_signal().await;
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn check(a: ServeArgs) -> ExitCode {
    let config = match load_config(&a, false) {
        Ok(c) => c,
        Err(e) => {
            println!("configuration  FAIL\n{e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{:<14} ok", "configuration");
    println!("{:<14} {}", "upstream", config.upstream.base_url);
    // The service would refuse to start without its log file.
    let mut logs_ok = true;
    if let Some(file) = &config.log_file {
        match qwen_proxy::logs::probe(file) {
            Ok(()) => println!("{:<14} ok: {:?}", "log files", file.path()),
            Err(e) => {
                logs_ok = false;
                println!("{:<14} FAIL: {e}", "log files");
            }
        }
    }
    // Read-only towards everything shared: no Redis (a running fleet must not adopt what a
    // check sees), and no token is refreshed (a rotating refresh token would be spent).
    let mut config = config;
    config.redis = None;
    runtime().block_on(async move {
        let app = App::new(config);
        let state = app.state.clone();
        let mut ok = logs_ok;
        match state.client.fetch_models(&guest(&state)).await {
            Ok(_) => println!("{:<14} ok", "reachable"),
            Err(e) => {
                ok = false;
                println!("{:<14} FAIL: {e}", "reachable");
            }
        }
        // Password accounts sign in (paced, as in service); then every account's token is
        // checked against the upstream.
        state.accounts.sign_in_missing().await;
        println!();
        println!(
            "{:<20} {:<9} {:<12} {:<22} detail",
            "account", "kind", "state", "token expires"
        );
        let now = qwen_proxy::common::epoch_secs();
        for account in state.accounts.list().iter() {
            let view = state.accounts.view(account);
            let expires = match view.token_expires {
                Some(exp) if exp <= now => "expired".to_owned(),
                Some(exp) => format!(
                    "in {}",
                    qwen_proxy::accounts::health::human((exp - now) * 1000)
                ),
                None if account.caller().is_some() => "unknown (not a JWT)".to_owned(),
                None => "-".to_owned(),
            };
            let detail = match account.caller() {
                Some(who) => match state.client.check_auth(&who).await {
                    Ok(_) => "token accepted".to_owned(),
                    Err(e) => {
                        ok = false;
                        format!("FAIL: {e}")
                    }
                },
                None => {
                    ok = false;
                    format!(
                        "FAIL: {}",
                        view.reason.unwrap_or_else(|| "no token".to_owned())
                    )
                }
            };
            println!(
                "{:<20} {:<9} {:<12} {:<22} {}",
                qwen_proxy::untrusted::Untrusted(&view.name).to_string(),
                view.kind,
                view.state,
                expires,
                detail
            );
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// A caller without credentials (the model list answers guests too).
fn guest(state: &qwen_proxy::AppState) -> qwen_proxy::qwen::client::Caller {
    state.client.caller(
        &qwen_proxy::qwen::headers::Credentials::default(),
        qwen_proxy::qwen::client::Route::Direct,
    )
}
