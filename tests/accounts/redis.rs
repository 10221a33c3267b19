//! Several instances over a real redis-server: shared cooldowns, state adopted later, tokens
//! surviving a restart, an operator's disable surviving Redis (restarted empty, or away
//! when the disable was given).

use super::*;

// === 9. Redis ===

#[tokio::test]
async fn two_instances_share_cooldowns_through_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let file = two_cookie_accounts();
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    let second = h.another_proxy(&env).await;
    assert_eq!(state(&health(&h, second.addr).await, "a"), "ready");

    sim_control(&h, "tok-a", "quota?hours=1").await;
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(sent < 2, "two idle accounts alternate: a gets one of two");
        ask_ok(&h, h.addr, &format!("first instance {sent}")).await;
        sent += 1;
    }
    let here = listed(&health(&h, h.addr).await, "a");
    assert_eq!(here["state"], "cooling");
    let (hh, second_addr) = (&h, second.addr);
    let there = eventually(
        "the second instance learns",
        Duration::from_secs(12),
        || async move {
            let a = listed(&health(hh, second_addr).await, "a");
            (a["state"] == "cooling").then_some(a)
        },
    )
    .await;
    assert_eq!(there["until_ms"], here["until_ms"], "the same pause");
    for i in 0..4 {
        ask_ok(&h, second.addr, &format!("second instance {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        completions(&stats, "tok-a"),
        1,
        "only the refused call, on the first"
    );
    assert_eq!(refused(&stats, "tok-a"), 1);
}

/// A proxy with the cookie accounts a, b and c sharing `redis`: the accounts file (kept
/// alive with the harness), Redis's URL, the harness.
async fn three_accounts_over(redis: &RedisServer) -> (AccountsFile, String, Harness) {
    let url = redis.url();
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        cookie_account("c")
    ]));
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
        ("ADMIN_KEY", ADMIN_KEY),
    ];
    let h = Harness::start_with(&env, quick_sim()).await;
    (file, url, h)
}

#[tokio::test]
async fn an_instance_started_later_adopts_the_shared_state() {
    let redis = RedisServer::start().await;
    let (file, url, h) = three_accounts_over(&redis).await;
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
        ("ADMIN_KEY", ADMIN_KEY),
    ];
    // On the first instance: a cools on its quota, the operator disables b.
    sim_control(&h, "tok-a", "quota?hours=1").await;
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(
            sent < 3,
            "three idle accounts take turns: a gets one of three"
        );
        ask_ok(&h, h.addr, &format!("first instance {sent}")).await;
        sent += 1;
    }
    let r = admin(&h, h.addr, "POST", "/admin/accounts/b/disable").await;
    assert_eq!(r.status, 200);
    let here = health(&h, h.addr).await;
    assert_eq!(
        (state(&here, "a"), state(&here, "b")),
        ("cooling".into(), "disabled".into())
    );
    let port = redis.port;
    eventually(
        "both states stored",
        Duration::from_secs(5),
        || async move {
            let a = redis_get(port, "qp:acct:{a}:health").await?;
            let b = redis_get(port, "qp:acct:{b}:health").await?;
            (a.contains("cooling") && b.contains("disabled")).then_some(())
        },
    )
    .await;

    // Started (or restarted, as in a deploy) afterwards: it knows both within a sync or
    // two, and sends neither account a turn.
    let later = h.another_proxy(&env).await;
    let deadline = Instant::now() + Duration::from_secs(12);
    let seen = loop {
        let seen = health(&h, later.addr).await;
        let adopted = state(&seen, "a") == "cooling" && state(&seen, "b") == "disabled";
        if adopted || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(state(&seen, "a"), "cooling", "{seen}");
    assert_eq!(state(&seen, "b"), "disabled", "{seen}");
    assert_eq!(
        listed(&seen, "a")["until_ms"],
        listed(&here, "a")["until_ms"]
    );
    let before = h.sim_stats().await;
    for i in 0..3 {
        ask_ok(&h, later.addr, &format!("new instance {i}")).await;
    }
    let after = h.sim_stats().await;
    for key in ["tok-a", "tok-b"] {
        assert_eq!(completions(&after, key), completions(&before, key), "{key}");
    }
    assert_eq!(
        completions(&after, "tok-c"),
        completions(&before, "tok-c") + 3
    );
}

/// `GET key` on the Redis at `port`, over a plain connection (`None`: no such key).
async fn redis_get(port: u16, key: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let cmd = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    s.write_all(cmd.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.starts_with("$-1\r\n") {
            return None;
        }
        if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n")) {
            let len: usize = len.parse().ok()?;
            if rest.len() >= len {
                return Some(rest[..len].to_owned());
            }
        }
    }
}

#[tokio::test]
async fn a_token_survives_a_restart_through_redis() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let file = AccountsFile::new(&json!([password_account(
        "alice",
        "alice@example.com",
        "wonderland"
    )]));
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
        ("QWEN_SIGNIN_INTERVAL", "50"),
    ];
    let mut h = Harness::start_with(&env, strict_sim(ALICE, Duration::from_secs(3600))).await;
    let hh = &h;
    wait_ready(hh, hh.addr, 1).await;
    ask_ok(&h, h.addr, "before the restart").await;
    let port = redis.port;
    eventually("the token stored", Duration::from_secs(5), || async move {
        redis_get(port, "qp:acct:{alice}:token").await
    })
    .await;
    assert_eq!(h.sim_stats().await["signins"], 1);
    h.begin_shutdown();
    h.wait_stopped().await;

    let restarted = h.another_proxy(&env).await;
    wait_ready(&h, restarted.addr, 1).await;
    ask_ok(&h, restarted.addr, "after the restart").await;
    let stats = h.sim_stats().await;
    assert_eq!(stats["signins"], 1, "no second sign-in");
    assert_eq!(completions(&stats, "alice@example.com"), 2);
    assert_eq!(refused(&stats, "alice@example.com"), 0);
}

/// Before, an operator's disable lived only in Redis: Redis restarted empty, and at their
/// next sync every instance took the missing key for an enable; a disable given while Redis
/// was away answered 200 and was undone when Redis came back. Each instance now keeps the
/// verdicts it gave or adopted and gives them back to a Redis that lost them.
#[tokio::test]
async fn an_operators_disable_outlives_redis() {
    let mut redis = RedisServer::start().await;
    let (file, url, h) = three_accounts_over(&redis).await;
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("REDIS_URL", url.as_str()),
        ("ADMIN_KEY", ADMIN_KEY),
    ];
    let second = h.another_proxy(&env).await;
    let both = [h.addr, second.addr];
    let hh = &h;
    let disabled_everywhere = |names: &'static [&'static str]| async move {
        for addr in both {
            let seen = health(hh, addr).await;
            if names.iter().any(|n| state(&seen, n) != "disabled") {
                return None;
            }
        }
        Some(())
    };

    // 1. Disabled on the first instance, known to the second; then Redis restarts empty.
    let r = admin(&h, h.addr, "POST", "/admin/accounts/a/disable").await;
    assert_eq!(r.status, 200);
    let within = Duration::from_secs(12);
    eventually("a disabled on both", within, || disabled_everywhere(&["a"])).await;
    redis.restart().await;
    // Both instances have synced with the empty Redis twice since (a sync every 5 s; the
    // first sync after a restart used to fail on the dead connections of the old client).
    tokio::time::sleep(Duration::from_secs(11)).await;
    disabled_everywhere(&["a"])
        .await
        .expect("a still disabled on both instances after Redis restarted empty");
    let stored = redis_get(redis.port, "qp:acct:{a}:operator").await;
    assert!(
        stored.is_some_and(|v| v.contains("\"disabled\":true")),
        "the disable given back to Redis"
    );

    // 2. Redis goes away; b is disabled on the second instance meanwhile (200, and it holds
    //    there); Redis comes back empty and the first instance learns it.
    redis.stop();
    let r = admin(&h, second.addr, "POST", "/admin/accounts/b/disable").await;
    assert_eq!(r.status, 200);
    assert_eq!(state(&health(&h, second.addr).await, "b"), "disabled");
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart().await;
    eventually("b disabled on both", within, || disabled_everywhere(&["b"])).await;

    // Both instances have synced with the new Redis since (a sync every 5 s): a and b stay
    // out of rotation on both, and only c takes turns.
    tokio::time::sleep(Duration::from_secs(6)).await;
    disabled_everywhere(&["a", "b"])
        .await
        .expect("a and b still disabled on both instances");
    let before = h.sim_stats().await;
    for (i, addr) in both.into_iter().enumerate() {
        for k in 0..2 {
            ask_ok(&h, addr, &format!("instance {i} turn {k}")).await;
        }
    }
    let after = h.sim_stats().await;
    for key in ["tok-a", "tok-b"] {
        assert_eq!(completions(&after, key), completions(&before, key), "{key}");
    }
    assert_eq!(
        completions(&after, "tok-c"),
        completions(&before, "tok-c") + 4
    );

    // An operator's enable, on the other instance than the disable, still reaches both.
    let r = admin(&h, second.addr, "POST", "/admin/accounts/a/enable").await;
    assert_eq!(r.status, 200);
    eventually("a enabled on both", within, || async move {
        for addr in both {
            if state(&health(hh, addr).await, "a") != "ready" {
                return None;
            }
        }
        Some(())
    })
    .await;
}
