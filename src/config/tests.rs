//! Reading the configuration: defaults, every error at once, Node-era values, `.env`.

use std::collections::HashMap;
use std::path::Path;

use super::*;

fn src(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_with_credentials() {
    let c = Config::from_source(&src(&[("QWEN_COOKIES", "a=1; token=abc; b=2")]), false).unwrap();
    assert_eq!(c.port, 3000);
    assert_eq!(c.upstream.auth_token.as_ref().unwrap().expose(), "abc");
    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.models_cache_duration, Duration::from_secs(3600));
}

#[test]
fn the_request_log_keeps_a_thousand_by_default_and_may_be_off() {
    let with = |pairs: &[(&str, &str)]| {
        let mut all = vec![("QWEN_COOKIES", "token=abc")];
        all.extend_from_slice(pairs);
        Config::from_source(&src(&all), false)
    };
    assert_eq!(with(&[]).unwrap().request_log.size, 1000);
    assert_eq!(
        with(&[("REQUEST_LOG_SIZE", "0")]).unwrap().request_log.size,
        0
    );
    for bad in ["100001", "-1", "lots"] {
        let e = with(&[("REQUEST_LOG_SIZE", bad)]).unwrap_err();
        assert!(
            e.0.iter().any(|m| m.contains("REQUEST_LOG_SIZE")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn missing_credentials_say_what_to_set() {
    let e = Config::from_source(&src(&[]), false).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.0[0].contains("QWEN_COOKIES") && e.0[0].contains("--demo"));
    assert!(Config::from_source(&src(&[]), true).is_ok());
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let e = Config::from_source(
        &src(&[
            ("PORT", "70000"),
            ("HOST", "nowhere"),
            ("LOG_FORMAT", "xml"),
            ("RETRY_MAX_ATTEMPTS", "-1"),
            ("CORS_ENABLED", "maybe"),
            ("QWEN_BASE_URL", "ftp://x"),
            ("QWEN_COOKIES", "a=1"),
            ("SESSION_TIMEOUT", "0"),
            ("LISTEN_BACKLOG", "0"),
            ("BUSY_CHAT_POLICY", "Sometimes"),
            ("UPSTREAM_HTTP2", "h3"),
        ]),
        false,
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 11, "{e}");
    let text = e.to_string();
    for line in [
        "LISTEN_BACKLOG must be at least 1",
        "BUSY_CHAT_POLICY=\"Sometimes\" must be adaptive or wait",
        "UPSTREAM_HTTP2=\"h3\" must be auto, true or false",
        "LOG_FORMAT=\"xml\" must be text or json",
    ] {
        assert!(text.contains(line), "{line:?} missing from {text}");
    }
}

#[test]
fn new_settings_have_their_documented_defaults() {
    let c = Config::from_source(&src(&[("QWEN_COOKIES", "token=abc")]), false).unwrap();
    assert_eq!(c.listen_backlog, crate::server::DEFAULT_LISTEN_BACKLOG);
    assert_eq!(c.listen_backlog, 1024);
    assert_eq!(c.conversations.busy_policy, BusyPolicy::Adaptive);
    assert_eq!(c.upstream.protocol, UpstreamProtocol::Auto);
    let c = Config::from_source(
        &src(&[
            ("QWEN_COOKIES", "token=abc"),
            ("UPSTREAM_HTTP2", "TRUE"),
            ("BUSY_CHAT_POLICY", "Wait"),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(c.upstream.protocol, UpstreamProtocol::Http2);
    assert_eq!(c.conversations.busy_policy, BusyPolicy::Wait);
}

#[test]
fn node_era_values_are_understood() {
    let c = Config::from_source(
        &src(&[
            ("QWEN_COOKIES", "token=abc"),
            ("HOST", "localhost"),
            ("TRUST_PROXY", "loopback, 10.0.0.0/8"),
            ("SESSION_TIMEOUT", "30m"),
            ("RETRY_MAX_DELAY", "1h"),
            ("RETRY_INITIAL_DELAY", "1.5s"),
            ("UPSTREAM_IDLE_TIMEOUT", "250"),
            ("LOG_LEVEL", "verbose"),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(c.host, IpAddr::from([127, 0, 0, 1]));
    assert!(matches!(c.trust_proxy, TrustProxy::Ranges(ref r) if r.len() == 3));
    assert_eq!(c.session_timeout, Duration::from_secs(1800));
    assert_eq!(c.retry.max_delay, Duration::from_secs(3600));
    assert_eq!(c.retry.initial_delay, Duration::from_millis(1500));
    assert_eq!(c.upstream.idle_timeout, Duration::from_millis(250));
    assert_eq!(c.log_level, "debug");
    for (value, trust) in [("true", TrustProxy::OneProxy), ("2", TrustProxy::Hops(2))] {
        let c = Config::from_source(&src(&[("TRUST_PROXY", value)]), true).unwrap();
        assert_eq!(c.trust_proxy, trust);
    }
}

#[test]
fn log_levels_and_aliases() {
    for (given, filter) in [
        ("warning", "warn"),
        ("WARN", "warn"),
        ("silly", "trace"),
        ("http", "debug"),
        ("qwen_proxy=debug,info", "qwen_proxy=debug,info"),
        ("off", "off"),
    ] {
        assert_eq!(parse_log_level(given).as_deref(), Ok(filter), "{given}");
    }
    for bad in ["loud", "verbose-ish", "info,loud"] {
        let e = parse_log_level(bad).unwrap_err();
        assert!(e.contains("not a level"), "{bad}: {e}");
    }
    // A bad level is a configuration error (exit 64), not a silent logger.
    let e = Config::from_source(&src(&[("LOG_LEVEL", "loud")]), true).unwrap_err();
    assert!(e.0[0].contains("LOG_LEVEL"), "{e}");
}

#[test]
fn durations() {
    for (v, ms) in [
        ("0", 0),
        ("250", 250),
        ("2s", 2_000),
        ("1.5 s", 1_500),
        ("30m", 1_800_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("100ms", 100),
    ] {
        assert_eq!(parse_duration(v), Some(Duration::from_millis(ms)), "{v}");
    }
    for bad in ["", "x", "5 parsecs", "-1", "1.5", "s", "9999999d"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
}

#[test]
fn a_named_env_file_must_exist() {
    let missing = Path::new("/nonexistent/qwen-proxy.env");
    assert!(Env::load(missing, true)
        .unwrap_err()
        .contains("qwen-proxy.env"));
    assert!(Env::load(missing, false).is_ok());
}

#[test]
fn url_forms() {
    let u = RedisUrl::parse("redis://127.0.0.1:6390/2").unwrap();
    assert_eq!(
        (u.hosts.as_slice(), u.db, u.password.is_none(), u.tls),
        (&[("127.0.0.1".to_owned(), 6390)][..], 2, true, false)
    );
    let u = RedisUrl::parse("redis://:pw@cache").unwrap();
    assert_eq!(
        (
            u.hosts[0].clone(),
            u.password.as_ref().map(Secret::expose),
            u.username
        ),
        (("cache".to_owned(), 6379), Some("pw"), None)
    );
    let u = RedisUrl::parse("redis://me:pw@[::1]:7000").unwrap();
    assert_eq!(
        (u.hosts[0].clone(), u.username.as_deref()),
        (("::1".to_owned(), 7000), Some("me"))
    );
    // TLS, an ACL user with a percent-encoded password, several hosts.
    let u = RedisUrl::parse("rediss://app:p%40ss%3Aw@a:7000,b,[::1]:7002/0").unwrap();
    assert!(u.tls);
    assert_eq!(u.password.as_ref().map(Secret::expose), Some("p@ss:w"));
    assert_eq!(
        u.hosts,
        [
            ("a".to_owned(), 7000),
            ("b".to_owned(), 6379),
            ("::1".to_owned(), 7002)
        ]
    );
    assert!(RedisUrl::parse("http://x").is_err());
    assert!(RedisUrl::parse("redis://x:port").is_err());
    assert!(RedisUrl::parse("redis://a,").is_err());
    assert!(RedisUrl::parse("redis://x/256").is_err());
}

#[test]
fn redis_modes() {
    let read = |vars: &[(&str, &str)]| {
        let mut all = vec![("QWEN_COOKIES", "token=t")];
        all.extend_from_slice(vars);
        Config::from_source(&src(&all), false)
    };
    let c = read(&[("REDIS_URL", "redis://a:1,b:2"), ("REDIS_CLUSTER", "true")]).unwrap();
    assert_eq!(c.redis.unwrap().mode, RedisMode::Cluster);
    let c = read(&[
        ("REDIS_URL", "rediss://app:secret@s1:26379,s2:26379/3"),
        ("REDIS_SENTINEL_MASTER", "main"),
        ("REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
        ("REDIS_TIMEOUT", "2s"),
    ])
    .unwrap();
    let redis = c.redis.unwrap();
    assert!(
        matches!(&redis.mode, RedisMode::Sentinel { master, password: Some(_), .. } if master == "main")
    );
    assert_eq!(redis.timeout, Duration::from_secs(2));
    let printed = format!("{redis:?}");
    assert!(!printed.contains("secret"), "{printed}");
    // Several hosts need a mode; a Cluster has no databases; a CA needs TLS; a missing CA
    // file is reported; one mode at a time. Every problem at once, no password in them.
    let e = read(&[("REDIS_URL", "redis://:hunter2@a,b/1")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("REDIS_CLUSTER=true"), "{e}");
    let e = read(&[
        ("REDIS_URL", "redis://:hunter2@a/1"),
        ("REDIS_CLUSTER", "true"),
        ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("database"), "{e}");
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let e = read(&[
        ("REDIS_URL", "redis://a"),
        ("REDIS_CLUSTER", "true"),
        ("REDIS_SENTINEL_MASTER", "m"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("exclude each other"), "{e}");
}

#[test]
fn dotenv_syntax() {
    let m = parse_dotenv("# c\nexport A=1\nB=\"two words\"\nC='x#y'\nD=v # trailing\n\n").unwrap();
    assert_eq!(m["A"], "1");
    assert_eq!(m["B"], "two words");
    assert_eq!(m["C"], "x#y");
    assert_eq!(m["D"], "v");
    assert!(parse_dotenv("novalue").is_err());
}

/// Records every key the configuration reads.
struct Recording(std::cell::RefCell<Vec<String>>);

impl Source for Recording {
    fn get(&self, key: &str) -> Option<String> {
        self.0.borrow_mut().push(key.to_owned());
        None
    }
}

#[test]
fn env_example_documents_exactly_the_variables_read() {
    let rec = Recording(Default::default());
    let _ = Config::from_source(&rec, true);
    let read: std::collections::BTreeSet<String> = rec.0.into_inner().into_iter().collect();
    let documented: std::collections::BTreeSet<String> = include_str!("../../.env.example")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .collect();
    assert_eq!(read, documented, "config reads vs .env.example documents");
}

#[test]
fn secrets_do_not_debug_print() {
    let c = Config::from_source(&src(&[("QWEN_COOKIES", "token=supersecret")]), false).unwrap();
    assert!(!format!("{c:?}").contains("supersecret"));
}

#[test]
fn model_aliases_are_part_model_pairs() {
    assert_eq!(
        parse_model_aliases(" Haiku = qwen3.7-plus-fast , claude=qwen3.7-plus,").unwrap(),
        [
            ("haiku".to_owned(), "qwen3.7-plus-fast".to_owned()),
            ("claude".to_owned(), "qwen3.7-plus".to_owned())
        ]
    );
    assert!(parse_model_aliases("claude")
        .unwrap_err()
        .contains("MODEL_ALIASES"));
    assert!(parse_model_aliases("=qwen").is_err());
    assert!(parse_model_aliases(DEFAULT_MODEL_ALIASES).unwrap().len() == 4);
}

#[test]
fn workers_are_a_thread_per_cpu_unless_set() {
    let workers = |env: &[(&str, &str)]| {
        let mut vars = vec![("QWEN_COOKIES", "token=abc")];
        vars.extend_from_slice(env);
        Config::from_source(&src(&vars), false).map(|c| c.workers)
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = workers(&[]).unwrap();
    assert_eq!((default.threads, default.work_stealing), (cpus, false));
    assert_eq!(default.runtimes(), cpus);
    assert_eq!(workers(&[("WORKERS", "AUTO")]).unwrap().threads, cpus);
    let stealing = workers(&[("WORKERS", "3"), ("WORK_STEALING", "true")]).unwrap();
    assert_eq!((stealing.threads, stealing.runtimes()), (3, 1));
    for bad in ["0", "-1", "two", "1025"] {
        let e = workers(&[("WORKERS", bad)]).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "WORKERS=\"{bad}\" must be auto or a number of threads from 1 to 1024"
            )),
            "{e}"
        );
    }
}

#[test]
fn logs_go_to_stderr_unless_log_dir_is_set() {
    let read = |env: &[(&str, &str)]| {
        let mut vars = vec![("QWEN_COOKIES", "token=abc")];
        vars.extend_from_slice(env);
        Config::from_source(&src(&vars), false)
    };
    assert_eq!(read(&[]).unwrap().log_file, None);
    // Rotation settings alone do not move the logs.
    assert_eq!(read(&[("LOG_MAX_FILES", "3")]).unwrap().log_file, None);
    let c = read(&[("LOG_DIR", "/var/log/qwen-proxy")]).unwrap();
    let file = c.log_file.unwrap();
    assert_eq!(
        (file.dir.as_path(), file.max_size, file.max_files),
        (Path::new("/var/log/qwen-proxy"), 10 * 1024 * 1024, 5)
    );
    assert_eq!(file.path(), Path::new("/var/log/qwen-proxy/qwen-proxy.log"));
    let c = read(&[
        ("LOG_DIR", "logs"),
        ("LOG_MAX_SIZE", "512k"),
        ("LOG_MAX_FILES", "3"),
    ])
    .unwrap();
    let file = c.log_file.unwrap();
    assert_eq!((file.max_size, file.max_files), (512 * 1024, 3));
}

#[test]
fn sizes_are_bytes_or_a_number_with_a_unit() {
    for (v, bytes) in [
        ("4096", 4096),
        ("10MiB", 10 << 20),
        ("10mib", 10 << 20),
        ("10M", 10 << 20),
        ("10 MB", 10_000_000),
        ("512k", 512 << 10),
        ("512KB", 512_000),
        ("1.5KiB", 1536),
        ("1.5GB", 1_500_000_000),
        ("2g", 2 << 30),
        ("100b", 100),
    ] {
        assert_eq!(parse_size(v), Some(bytes), "{v}");
    }
    for bad in [
        "",
        "x",
        "-1",
        "1.5",
        "10XB",
        "MB",
        "1e3",
        "99999999999999999999999",
        "99999999999G",
        "1e300k",
    ] {
        assert_eq!(parse_size(bad), None, "{bad}");
    }
}

#[test]
fn bad_log_rotation_values_are_reported_with_the_others() {
    let e = Config::from_source(
        &src(&[
            ("LOG_DIR", "/tmp/logs"),
            ("LOG_MAX_SIZE", "10XB"),
            ("LOG_MAX_FILES", "0"),
            ("PORT", "x"),
        ]),
        true,
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("LOG_MAX_SIZE=\"10XB\" must be a size"),
        "{text}"
    );
    assert!(text.contains("LOG_MAX_FILES=\"0\" must be"), "{text}");
    // Checked without LOG_DIR too; too small a file is refused (it would rotate every line).
    for (key, bad) in [
        ("LOG_MAX_SIZE", "100"),
        ("LOG_MAX_SIZE", "2TiB"),
        ("LOG_MAX_FILES", "1001"),
        ("LOG_MAX_FILES", "five"),
    ] {
        let e = Config::from_source(&src(&[(key, bad)]), true).unwrap_err();
        assert!(e.0[0].starts_with(&format!("{key}=\"{bad}\"")), "{e}");
    }
}

#[test]
fn node_era_variables_without_meaning_are_named_never_valued() {
    let c = Config::from_source(&src(&[]), true).unwrap();
    assert!(c.unused_variables.is_empty());
    let c = Config::from_source(&src(&[("NODE_ENV", "production")]), true).unwrap();
    let names: Vec<&str> = c.unused_variables.iter().map(|v| v.name).collect();
    assert_eq!(names, ["NODE_ENV"]);
    assert!(c.unused_variables[0].instead.contains("LOG_LEVEL"));
    // Set but empty is not set.
    let c = Config::from_source(&src(&[("NODE_ENV", "")]), true).unwrap();
    assert!(c.unused_variables.is_empty());
}
