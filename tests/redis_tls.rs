//! Redis as a managed service runs it: TLS only (`rediss://`, a private CA given by
//! `REDIS_CA_FILE`), the default user off and an ACL user whose password needs
//! percent-encoding in the URL. A real `redis-server` with `--tls-port` and a CA and server
//! certificate made by `openssl` in the test; two proxy instances share a conversation
//! through it. A server the client cannot verify, or a wrong password, degrades to local
//! state; the password never appears in the logs, even at trace level.

// Tests and benches: a failed unwrap is a failure with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::process;
use support::redis::{TempDir, TlsFiles};
use support::{assistant, expected_answer, quick_sim, user, Harness, RedisServer};

const MODEL: &str = "qwen3.7-plus";
const USER: &str = "proxy-app";
/// Characters a URL must encode (`@`, `/`, `:`, `%`, `#`).
const PASSWORD: &str = "s3cr#t@p/ss:w%rd";
const PASSWORD_ENCODED: &str = "s3cr%23t%40p%2Fss%3Aw%25rd";

fn url(port: u16, password: &str) -> String {
    format!("rediss://{USER}:{password}@localhost:{port}/0")
}

async fn answer(h: &Harness, addr: std::net::SocketAddr, messages: &[Value]) -> String {
    h.chat_at(addr, json!({"model": MODEL, "messages": messages}))
        .await
        .message_content()
}

async fn store_status(h: &Harness, addr: std::net::SocketAddr) -> Value {
    h.health_at(addr).await.json()["session_store"]["status"].clone()
}

#[tokio::test]
async fn two_instances_share_a_conversation_over_tls_with_an_acl_user() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, USER, PASSWORD).await;
    let url = url(redis.port, PASSWORD_ENCODED);
    let ca = tls.ca();
    let env = [("REDIS_URL", url.as_str()), ("REDIS_CA_FILE", ca.as_str())];
    let h = Harness::start_with(&env, quick_sim()).await;
    let b = h.another_proxy(&env).await;
    let mut messages = Vec::new();
    for k in 0..4 {
        let q = format!("turn {k}");
        messages.push(user(&q));
        let a = answer(&h, [h.addr, b.addr][k % 2], &messages).await;
        assert_eq!(a, expected_answer(&q));
        messages.push(assistant(&a));
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["chats_created"], 1,
        "one chat across instances: {stats}"
    );
    for addr in [h.addr, b.addr] {
        assert_eq!(store_status(&h, addr).await, "ok");
    }
    let keys = redis.keys();
    assert!(
        keys.iter().any(|k| k.starts_with("qp:s:")),
        "the sessions went to the TLS server: {keys:?}"
    );
}

/// The certificate is verified (a CA that did not sign it, or the system's roots, refuse
/// it) and the ACL password is checked: each such instance works on with local state and
/// says so.
#[tokio::test]
async fn an_unverified_server_or_a_wrong_password_degrade_to_local_state() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, USER, PASSWORD).await;
    let good = url(redis.port, PASSWORD_ENCODED);
    let wrong = url(redis.port, "not-the-password");
    let (ca, other_ca) = (tls.ca(), tls.other_ca());
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "a CA that did not sign the server's certificate",
            vec![("REDIS_URL", &good), ("REDIS_CA_FILE", &other_ca)],
        ),
        ("the system's roots", vec![("REDIS_URL", &good)]),
        (
            "a wrong password",
            vec![("REDIS_URL", &wrong), ("REDIS_CA_FILE", &ca)],
        ),
    ];
    let h = Harness::start_with(&[], quick_sim()).await;
    for (case, env) in cases {
        let p = h.another_proxy(&env).await;
        let a = answer(&h, p.addr, &[user(case)]).await;
        assert_eq!(a, expected_answer(case), "{case}: served from local state");
        assert_eq!(store_status(&h, p.addr).await, "degraded", "{case}");
    }
    assert!(redis.keys().is_empty(), "nothing reached Redis");
}

/// The binary at `LOG_LEVEL=trace`, connecting with the right password and with a wrong
/// one: neither the password nor its encoded form is in what it logs; where it connects is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_never_logged() {
    let tls = TlsFiles::generate();
    let redis = RedisServer::start_tls(&tls, USER, PASSWORD).await;
    let h = Harness::start_with(&[], quick_sim()).await;
    let logs = TempDir::new("tls-logs");
    let ca = tls.ca();
    let sim = h.sim.base_url();
    let mut seen = String::new();
    for (i, password) in [PASSWORD_ENCODED, "wrong%40password"]
        .into_iter()
        .enumerate()
    {
        let url = url(redis.port, password);
        let log = logs.path(&format!("stderr-{i}.log"));
        let mut cmd = process::command(
            &process::serve_args("0"),
            &[
                ("QWEN_BASE_URL", sim.as_str()),
                ("QWEN_COOKIES", "token=tls-token"),
                ("REDIS_URL", url.as_str()),
                ("REDIS_CA_FILE", ca.as_str()),
                ("LOG_LEVEL", "trace"),
                ("LOG_FORMAT", "json"),
            ],
        );
        cmd.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let running = process::start(cmd);
        let prompt = format!("logged {i}");
        let a = answer(&h, running.addr, &[user(&prompt)]).await;
        assert_eq!(a, expected_answer(&prompt));
        let health = h.health_at(running.addr).await.json();
        let expected = if i == 0 { "ok" } else { "degraded" };
        assert_eq!(health["session_store"]["status"], expected, "{health}");
        drop(running);
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen.push_str(&std::fs::read_to_string(&log).unwrap());
    }
    assert!(
        seen.len() > 10_000,
        "trace logs were written: {} bytes",
        seen.len()
    );
    assert!(
        seen.contains(&format!("localhost:{}", redis.port)),
        "the logs name where Redis is"
    );
    for secret in [
        PASSWORD,
        PASSWORD_ENCODED,
        "wrong%40password",
        "wrong@password",
    ] {
        assert!(!seen.contains(secret), "{secret:?} is in the logs");
    }
}
