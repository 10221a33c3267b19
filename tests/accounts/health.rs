//! What a quota, a challenge, the chat challenge, a ban and a refused session do to one
//! account and to the turn that met them.

use super::*;

// === 1. daily quota ===

#[tokio::test]
async fn a_daily_quota_moves_the_turn_and_the_cooled_account_rests() {
    let file = two_cookie_accounts();
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    sim_control(&h, "tok-a", "quota?hours=1").await;

    // New conversations until one lands on a: it is answered all the same (moved to b).
    let cooled_at = now_ms();
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(sent < 2, "two idle accounts alternate: a gets one of two");
        let prompt = format!("quota {sent}");
        let r = h.ask(MODEL, &prompt, false).await;
        assert_eq!(r.message_content(), expected_answer(&prompt));
        assert!(r.headers.get("retry-after").is_none());
        sent += 1;
    }
    let health = h.health().await.json();
    let a = listed(&health, "a");
    assert_eq!(a["state"], "cooling", "{health}");
    assert!(a["reason"].as_str().unwrap().contains("daily quota"), "{a}");
    let until = a["until_ms"].as_u64().unwrap();
    assert!(
        until >= cooled_at + HOUR_MS && until <= now_ms() + HOUR_MS,
        "`num` hours from the refusal: {until}"
    );
    assert_eq!(state(&health, "b"), "ready");
    assert_eq!(health["status"], "ok", "b still serves");
    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-a"), refused(&stats, "tok-a")),
        (1, 1)
    );
    let b_before = completions(&stats, "tok-b");
    assert_eq!(b_before, sent, "every request was answered by b");

    // The cooled account is not called while it rests.
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("after {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-a"), refused(&stats, "tok-a")),
        (1, 1),
        "exactly the one refused call on a"
    );
    assert_eq!(completions(&stats, "tok-b"), b_before + 4);
    assert_eq!(refused(&stats, "tok-b"), 0);
    let turns = r#"upstream_account_turns_total{account="a",moved="true"}"#;
    assert_eq!(metric(&h, h.addr, turns).await, 1.0);
    let cooldowns = r#"upstream_account_cooldowns_total{reason="rate_limited"}"#;
    assert_eq!(metric(&h, h.addr, cooldowns).await, 1.0);
    assert_eq!(
        metric(&h, h.addr, r#"upstream_accounts{state="cooling"}"#).await,
        1.0
    );

    // b's quota too: 429 with the earliest return (a's), then no upstream call at all.
    sim_control(&h, "tok-b", "quota?hours=2").await;
    let r = h.ask(MODEL, "nobody left", false).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "upstream_rate_limited");
    let wait = retry_after(&r);
    assert!(wait <= 3600 && wait > 3500, "a's return, not b's: {wait}");
    let stats = h.sim_stats().await;
    assert_eq!(refused(&stats, "tok-b"), 1, "b refused the turn once");
    let calls = stats["completion_requests"].clone();
    let r = h.ask(MODEL, "still nobody", true).await;
    assert_eq!(r.status, 429);
    assert_eq!(error_code(&r), "upstream_rate_limited");
    let wait = retry_after(&r);
    assert!(wait <= 3600 && wait > 3500, "{wait}");
    assert_eq!(
        h.sim_stats().await["completion_requests"],
        calls,
        "no upstream call"
    );
    let health = h.health().await.json();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["accounts"]["counts"]["cooling"], 2);
    assert_eq!(health["accounts"]["counts"]["usable"], 0);
}

// === 2. a challenge on one account ===

#[tokio::test]
async fn a_challenge_quarantines_that_account_only() {
    let file = two_cookie_accounts();
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("CHALLENGE_COOLDOWN", "60000"),
        ],
        quick_sim(),
    )
    .await;
    sim_control(&h, "tok-a", "challenge?secs=60").await;
    let challenged_at = now_ms();
    let mut sent = 0;
    while completions(&h.sim_stats().await, "tok-a") == 0 {
        assert!(sent < 2, "two idle accounts alternate: a gets one of two");
        ask_ok(&h, h.addr, &format!("challenge {sent}")).await;
        sent += 1;
    }
    let health = h.health().await.json();
    let a = listed(&health, "a");
    assert_eq!(a["state"], "quarantined", "{health}");
    assert!(a["reason"].as_str().unwrap().contains("challenge"), "{a}");
    let until = a["until_ms"].as_u64().unwrap();
    assert!(
        until >= challenged_at + 60_000 && until <= now_ms() + 60_000,
        "{until}"
    );
    assert_eq!(state(&health, "b"), "ready");
    assert_eq!(
        health["status"], "ok",
        "one account's challenge pauses nobody else"
    );
    assert_eq!(health["upstream"]["challenge_cooldown_seconds"], 0);

    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-a"), refused(&stats, "tok-a")),
        (1, 1)
    );
    let b_before = completions(&stats, "tok-b");
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("meanwhile {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        completions(&stats, "tok-a"),
        1,
        "a is not called in quarantine"
    );
    assert_eq!(completions(&stats, "tok-b"), b_before + 4);
    let m = |reason: &str| format!("upstream_account_cooldowns_total{{reason=\"{reason}\"}}");
    assert_eq!(metric(&h, h.addr, &m("challenge")).await, 1.0);
    assert_eq!(metric(&h, h.addr, &m("chat_challenge")).await, 0.0);
    let moved = r#"upstream_account_turns_total{account="a",moved="true"}"#;
    assert_eq!(metric(&h, h.addr, moved).await, 1.0);
}

// === 3. the chat challenge ===

#[tokio::test]
async fn a_chat_challenge_pauses_everyone_and_blames_nobody() {
    let file = two_cookie_accounts();
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("CHALLENGE_COOLDOWN", "60000"),
        ],
        quick_sim(),
    )
    .await;
    // The time-of-day challenge: every account's completions draw the punish JSON.
    let r = h.ask(MODEL, "hello @@sim:chat_challenge=30", false).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "upstream_challenge");
    let wait = retry_after(&r);
    assert!(wait <= 60 && wait > 50, "the pause: {wait}");
    let stats = h.sim_stats().await;
    // Tried on a, moved once to b, which was challenged too.
    for key in ["tok-a", "tok-b"] {
        assert_eq!(
            (completions(&stats, key), refused(&stats, key)),
            (1, 1),
            "{key}"
        );
    }
    let health = h.health().await.json();
    assert_eq!(state(&health, "a"), "ready", "not blamed: {health}");
    assert_eq!(state(&health, "b"), "ready", "not blamed: {health}");
    assert_eq!(health["status"], "degraded");
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("paused"), "{reasons}");
    let left = health["upstream"]["challenge_cooldown_seconds"]
        .as_u64()
        .unwrap();
    assert!(left > 50 && left <= 60, "{left}");
    let m = |reason: &str| format!("upstream_account_cooldowns_total{{reason=\"{reason}\"}}");
    assert_eq!(metric(&h, h.addr, &m("chat_challenge")).await, 1.0);

    // Every completion waits out the pause, without an upstream call.
    let calls = stats["completion_requests"].clone();
    for stream in [false, true] {
        let r = h.ask(MODEL, "and now?", stream).await;
        assert_eq!(r.status, 503);
        assert_eq!(error_code(&r), "upstream_challenge_cooldown");
        let wait = retry_after(&r);
        assert!(wait <= 60 && wait > 50, "{wait}");
    }
    assert_eq!(h.sim_stats().await["completion_requests"], calls);
}

// === a ban, a refused session ===

#[tokio::test]
async fn a_ban_or_a_refused_session_takes_the_account_out_and_the_turn_moves() {
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        cookie_account("c")
    ]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    // a is banned upstream (403); b's session is revoked, and a browser session without a
    // refresh token cannot renew it.
    sim_control(&h, "tok-a", "ban").await;
    sim_control(&h, "tok-b", "expire_token").await;
    for i in 0..3 {
        ask_ok(&h, h.addr, &format!("around them {i}")).await;
    }
    let health = h.health().await.json();
    let a = listed(&health, "a");
    assert_eq!(a["state"], "forbidden", "{health}");
    assert!(a["reason"].as_str().unwrap().contains("403"), "{a}");
    let b = listed(&health, "b");
    assert_eq!(b["state"], "invalid", "{health}");
    assert!(b["reason"].as_str().unwrap().contains("cookies"), "{b}");
    assert_eq!(state(&health, "c"), "ready");
    let stats = h.sim_stats().await;
    // a's new chat was refused already (a ban refuses `chats/new` too); b's completion was.
    assert_eq!(stats["accounts"]["tok-a"], Value::Null, "{stats}");
    assert_eq!(
        (completions(&stats, "tok-b"), refused(&stats, "tok-b")),
        (1, 1)
    );
    assert_eq!(completions(&stats, "tok-c"), 3);
    assert_eq!(refused(&stats, "tok-c"), 0);
    for (sample, value) in [
        (
            r#"upstream_account_cooldowns_total{reason="forbidden"}"#,
            1.0,
        ),
        (r#"upstream_account_cooldowns_total{reason="invalid"}"#, 1.0),
        (r#"upstream_account_signins_total{kind="refused"}"#, 1.0),
        (
            r#"upstream_account_turns_total{account="a",moved="true"}"#,
            1.0,
        ),
        (
            r#"upstream_account_turns_total{account="b",moved="true"}"#,
            1.0,
        ),
        (
            r#"upstream_account_turns_total{account="c",moved="false"}"#,
            3.0,
        ),
        (r#"upstream_accounts{state="ready"}"#, 1.0),
    ] {
        assert_eq!(metric(&h, h.addr, sample).await, value, "{sample}");
    }
    // Neither is called again.
    ask_ok(&h, h.addr, "only c").await;
    let stats = h.sim_stats().await;
    assert_eq!(
        completions(&stats, "tok-a") + completions(&stats, "tok-b"),
        1
    );
    assert_eq!(completions(&stats, "tok-c"), 4);
}

// === uploads paused on one account ===

/// A long history (about `kib` KiB) that needs a document, different for each `seed`.
fn long_history(kib: usize, seed: usize) -> Vec<Value> {
    let mut messages = vec![json!({"role": "system", "content": "You are careful."})];
    for i in 0..kib / 10 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let text = format!(
            "{seed} turn {i}: {}",
            "lorem ipsum dolor sit amet ".repeat(380)
        );
        messages.push(json!({"role": role, "content": text}));
    }
    messages.push(json!({"role": "user", "content": format!("Summarise conversation {seed}.")}));
    messages
}

#[tokio::test]
async fn an_account_whose_uploads_are_paused_leaves_the_turn_to_another() {
    let file = two_cookie_accounts();
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    // Arm the parse challenge on whichever account answers (the directive is sticky for it).
    let r = h.ask(MODEL, "arm @@sim:parse_challenge=60", false).await;
    assert_eq!(r.status, 200);
    let stats = h.sim_stats().await;
    let (armed, other) = if completions(&stats, "tok-a") == 1 {
        ("tok-a", "tok-b")
    } else {
        ("tok-b", "tok-a")
    };
    // Long conversations until one lands on the armed account first: its parse is refused,
    // its uploads pause, and the turn moves to the other account — answered all the same.
    let mut seed = 0;
    while h.sim_stats().await["files"]["parses_refused"] == 0 {
        assert!(seed < 4, "two idle accounts alternate");
        let r = h
            .chat(json!({"model": MODEL, "messages": long_history(200, seed)}))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        seed += 1;
    }
    let stats = h.sim_stats().await;
    assert_eq!(stats["files"]["parses_refused"], 1, "{}", stats["files"]);
    assert_eq!(
        completions(&stats, armed),
        1,
        "only the arming turn reached it"
    );
    assert!(completions(&stats, other) >= 1);
    // While paused, the armed account is not asked to parse again.
    let r = h
        .chat(json!({"model": MODEL, "messages": long_history(200, 99)}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(h.sim_stats().await["files"]["parses_refused"], 1);
}
