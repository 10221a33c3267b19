//! Command-line parsing (hand-written: three subcommands and a handful of flags).

use std::path::PathBuf;

use crate::sim::{BxUaGate, Gate, SimConfig, SimTiming, PREFILL_PER_1K_TOKENS};

pub const USAGE: &str = "\
qwen-proxy — OpenAI-compatible API proxy for chat.qwen.ai

USAGE:
    qwen-proxy [serve] [--demo [--habits SEED]] [--port N] [--host H] [--env-file PATH]
    qwen-proxy sim [--port N] [--host H] [SIM OPTIONS]
    qwen-proxy check [--env-file PATH]
    qwen-proxy --help | --version

COMMANDS:
    serve    Run the proxy (default). Reads configuration from the environment and .env
             (see .env.example); flags override the environment.
    sim      Run the Qwen simulator alone (for tests, benchmarks and other proxies).
    check    Validate configuration and credentials, print a status table, exit 0/1.

SERVE OPTIONS:
    --demo            Serve against the built-in simulator; no credentials needed.
    --habits SEED     With --demo: the simulated model writes tool calls with a real model's
                      habits (README, Simulator): the k-th call-making answer gets habit SEED+k.
    --port N          Listen port (PORT, default 3000; 0 picks a free port).
    --host H          Listen address (HOST, default 0.0.0.0).
    --env-file PATH   Read variables from PATH instead of ./.env.

SIM OPTIONS:
    --port N               Listen port (default 8090; 0 picks a free port).
    --host H               Listen address (default 127.0.0.1).
    --chat-latency-ms N    Latency of POST /api/v2/chats/new (default 0).
    --ttft-ms N            Delay before the first content frame (default 0).
    --prefill-ms N         Added to that per 1,000 prompt tokens the chat has not read yet: a
                           fresh chat's whole history, a continued turn's new part (default 30).
    --delay-ms N           Delay between frames (default 0).
    --chunk-chars N        Answer characters per frame (default 4).
    --backlog N            Listen backlog (default 1024; capped by net.core.somaxconn).
    --http1-only           Refuse HTTP/2 (h2c), as an HTTP/1.1-only upstream would.
    --lowercase-codes      Write the 401 code as `unauthorized` (the upstream since 2026-09).
    --linger-ms N          How long a chat stays busy after a generation (default 300).
    --body-limit N         Anti-bot request body limit in bytes (default 131072).
    --gate LEVEL           Header strictness: none, 2026-06, 2026-09 (default), 2026-10.
    --accounts FILE        Strict mode: only these accounts (`email password [quota]` per line)
                           sign in; tokens expire; each account has a completion quota.
    --token-ttl-secs N     Lifetime of tokens issued in strict mode (default 2592000 = 30 d).
    --signin-limit N       Sign-ins (v1 and v2) allowed per sliding 6 minutes before the WAF
                           page (default 12).
    --bx-ua-gate MODE      none (default) or stale: a completion or chats/new whose `bx-ua` is
                           not a --fresh-bx-ua value draws the punish JSON.
    --fresh-bx-ua VALUE    A `bx-ua` value that still passes --bx-ua-gate stale (repeatable).
    --habits SEED          The simulated model writes tool calls with a real model's habits
                           (its own names, case variants, narration, calls while thinking,
                           text after a call, fenced examples, garbled markers, native calls),
                           the k-th call-making answer gets habit SEED+k of the list.
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    pub demo: bool,
    /// `--habits SEED` (with `--demo`): the simulated model's habits.
    pub habits: Option<u64>,
    pub port: Option<String>,
    pub host: Option<String>,
    /// `--env-file`: must exist. Without it, `./.env` is read if present.
    pub env_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SimArgs {
    pub host: String,
    pub port: u16,
    pub config: SimConfig,
}

#[derive(Debug, Clone)]
pub enum Command {
    Serve(ServeArgs),
    Sim(SimArgs),
    Check(ServeArgs),
    Help,
    Version,
}

/// Parse `args` (without the program name). Flags take their value as the next argument
/// or after `=` (`--port 8080`, `--port=8080`).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let split: Vec<&str> = args
        .iter()
        .flat_map(|a| match a.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => vec![flag, value],
            _ => vec![a.as_str()],
        })
        .collect();
    let mut it = split.into_iter().peekable();
    let sub = match it.peek().copied() {
        Some("serve") | Some("sim") | Some("check") => it.next(),
        _ => None,
    };
    let rest: Vec<&str> = it.collect();
    if rest.iter().any(|a| *a == "--help" || *a == "-h") {
        return Ok(Command::Help);
    }
    if rest.iter().any(|a| *a == "--version" || *a == "-V") {
        return Ok(Command::Version);
    }
    match sub {
        Some("sim") => parse_sim(&rest).map(Command::Sim),
        Some("check") => parse_serve(&rest, false).map(Command::Check),
        _ => parse_serve(&rest, true).map(Command::Serve),
    }
}

/// A `--habits` seed.
fn seed(v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("--habits expects a whole number (a seed), got `{v}`"))
}

fn value<'a>(flag: &str, it: &mut impl Iterator<Item = &'a str>) -> Result<&'a str, String> {
    it.next()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn parse_serve(args: &[&str], allow_demo: bool) -> Result<ServeArgs, String> {
    let mut out = ServeArgs {
        demo: false,
        habits: None,
        port: None,
        host: None,
        env_file: None,
    };
    let mut it = args.iter().copied();
    while let Some(a) = it.next() {
        match a {
            "--demo" if allow_demo => out.demo = true,
            "--habits" if allow_demo => out.habits = Some(seed(value(a, &mut it)?)?),
            "--port" => out.port = Some(value(a, &mut it)?.to_owned()),
            "--host" => out.host = Some(value(a, &mut it)?.to_owned()),
            "--env-file" => out.env_file = Some(PathBuf::from(value(a, &mut it)?)),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if out.habits.is_some() && !out.demo {
        return Err("--habits needs --demo (it sets the built-in simulator's habits)".to_owned());
    }
    Ok(out)
}

fn parse_sim(args: &[&str]) -> Result<SimArgs, String> {
    let mut out = SimArgs {
        host: "127.0.0.1".to_owned(),
        port: 8090,
        config: SimConfig {
            timing: SimTiming {
                prefill_per_1k_tokens: PREFILL_PER_1K_TOKENS,
                ..SimTiming::default()
            },
            image_delay: crate::sim::IMAGE_GENERATION_DELAY,
            ..SimConfig::default()
        },
    };
    let mut it = args.iter().copied();
    let mut accounts_file: Option<String> = None;
    let mut token_ttl = std::time::Duration::from_secs(30 * 86_400);
    let num = |flag: &str, v: &str| -> Result<u64, String> {
        v.parse()
            .map_err(|_| format!("{flag} expects a whole number, got `{v}`"))
    };
    while let Some(a) = it.next() {
        let ms = |v: u64| std::time::Duration::from_millis(v);
        match a {
            "--port" => {
                let v = value(a, &mut it)?;
                out.port = v
                    .parse()
                    .map_err(|_| format!("--port expects 0-65535, got `{v}`"))?;
            }
            "--host" => out.host = value(a, &mut it)?.to_owned(),
            "--chat-latency-ms" => out.config.timing.chat_latency = ms(num(a, value(a, &mut it)?)?),
            "--ttft-ms" => out.config.timing.ttft = ms(num(a, value(a, &mut it)?)?),
            "--prefill-ms" => {
                out.config.timing.prefill_per_1k_tokens = ms(num(a, value(a, &mut it)?)?)
            }
            "--delay-ms" => out.config.timing.frame_delay = ms(num(a, value(a, &mut it)?)?),
            "--chunk-chars" => {
                out.config.timing.chunk_chars = num(a, value(a, &mut it)?)?.max(1) as usize
            }
            "--http1-only" => out.config.http1_only = true,
            "--lowercase-codes" => out.config.lowercase_codes = true,
            "--backlog" => {
                let v = value(a, &mut it)?;
                out.config.backlog = v.parse().ok().filter(|b| *b > 0).ok_or_else(|| {
                    format!("--backlog expects a whole number of connections, got `{v}`")
                })?;
            }
            "--linger-ms" => out.config.linger = ms(num(a, value(a, &mut it)?)?),
            "--body-limit" => out.config.body_limit = num(a, value(a, &mut it)?)? as usize,
            "--gate" => out.config.gate = value(a, &mut it)?.parse::<Gate>()?,
            "--accounts" => accounts_file = Some(value(a, &mut it)?.to_owned()),
            "--token-ttl-secs" => {
                token_ttl = std::time::Duration::from_secs(num(a, value(a, &mut it)?)?)
            }
            "--signin-limit" => out.config.signin_limit = num(a, value(a, &mut it)?)? as usize,
            "--habits" => out.config.habits = Some(seed(value(a, &mut it)?)?),
            "--bx-ua-gate" => out.config.bx_ua_gate = value(a, &mut it)?.parse::<BxUaGate>()?,
            "--fresh-bx-ua" => out.config.fresh_bx_ua.push(value(a, &mut it)?.to_owned()),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if let Some(path) = accounts_file {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("--accounts {path}: {e}"))?;
        let accounts = crate::sim::accounts::Accounts::parse(&text, token_ttl)
            .map_err(|e| format!("--accounts {path}: {e}"))?;
        out.config.accounts = Some(std::sync::Arc::new(accounts));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn serve_is_the_default() {
        match parse(&args("--demo --port 0")).unwrap() {
            Command::Serve(a) => {
                assert!(a.demo);
                assert_eq!(a.port.as_deref(), Some("0"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&args("serve")).unwrap(), Command::Serve(_)));
    }

    #[test]
    fn flags_take_values_after_an_equals_sign() {
        let Command::Serve(a) = parse(&args("--port=8081 --host=::1 --env-file=/x/y.env")).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.port.as_deref(), Some("8081"));
        assert_eq!(a.host.as_deref(), Some("::1"));
        assert_eq!(a.env_file, Some(PathBuf::from("/x/y.env")));
        let Command::Sim(s) = parse(&args("sim --port=9 --gate=none")).unwrap() else {
            panic!()
        };
        assert_eq!(s.port, 9);
        assert!(parse(&args("--port="))
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn sim_flags() {
        let Command::Sim(s) =
            parse(&args("sim --port 9 --ttft-ms 50 --delay-ms 5 --gate none")).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.port, 9);
        assert_eq!(s.config.timing.ttft.as_millis(), 50);
        assert_eq!(s.config.gate, Gate::None);
        assert_eq!(s.config.signin_limit, 12);
        assert_eq!(s.config.bx_ua_gate, BxUaGate::Ignored);
        assert!(s.config.fresh_bx_ua.is_empty());
        let Command::Sim(s) = parse(&args(
            "sim --signin-limit 3 --bx-ua-gate stale --fresh-bx-ua 231!a --fresh-bx-ua=231!b",
        ))
        .unwrap() else {
            panic!()
        };
        assert_eq!(s.config.signin_limit, 3);
        assert_eq!(s.config.bx_ua_gate, BxUaGate::Stale);
        assert_eq!(s.config.fresh_bx_ua, ["231!a", "231!b"]);
        assert!(parse(&args("sim --bx-ua-gate fresh")).is_err());
        assert!(parse(&args("sim --signin-limit many")).is_err());
    }

    #[test]
    fn errors_and_help() {
        assert!(parse(&args("--bogus")).is_err());
        assert!(parse(&args("check --demo")).is_err());
        assert!(parse(&args("sim --port x")).is_err());
        assert!(matches!(parse(&args("sim --help")).unwrap(), Command::Help));
    }
}
