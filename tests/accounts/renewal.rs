//! Token renewal (ahead of expiry, on an expiry answer, shared, legacy) and sign-in pacing.

use super::*;
use crate::operators::ConnectProxy;

// === 4. token renewal ===

#[tokio::test]
async fn tokens_are_refreshed_before_expiry() {
    // 35 s tokens are renewed 30 s before they expire: 5 s after each sign-in or refresh,
    // at the background task's next pass (every 5 s).
    let sim = strict_sim(&format!("{ALICE}{BOB}"), Duration::from_secs(35));
    let file = AccountsFile::new(&json!([
        password_account("alice", "alice@example.com", "wonderland"),
        password_account("bob", "bob@example.com", "builder"),
    ]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "300"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    wait_ready(hh, hh.addr, 2).await;
    // Each account is refreshed twice within about 11 s: the second refresh presents the
    // rotated refresh token the first one answered, so that one was stored and used.
    let mut asked = 0;
    let stats = eventually("two refreshes per account", Duration::from_secs(15), || {
        asked += 1;
        let prompt = format!("while refreshing {asked}");
        async move {
            ask_ok(hh, hh.addr, &prompt).await;
            let stats = hh.sim_stats().await;
            assert_eq!(
                stats["refreshes_refused"], 0,
                "a spent refresh token was used"
            );
            assert_eq!(
                stats["signins"], 2,
                "renewed by refresh, not by signing in again"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            (stats["refreshes"].as_u64().unwrap() >= 4).then_some(stats)
        }
    })
    .await;
    assert_eq!(stats["signins_refused"], 0);
    assert!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="refresh"}"#
        )
        .await
            >= 4.0
    );
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="refused"}"#
        )
        .await,
        0.0
    );
    let health = health(&h, h.addr).await;
    assert_eq!(health["accounts"]["counts"]["ready"], 2, "{health}");
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_turn_sent_again() {
    // Long-lived tokens: nothing is renewed ahead, every renewal below is the expiry's.
    let sim = strict_sim(&format!("{ALICE}{BOB}"), Duration::from_secs(3600));
    let file = AccountsFile::new(&json!([
        password_account("alice", "alice@example.com", "wonderland"),
        password_account("bob", "bob@example.com", "builder"),
    ]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "50"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    wait_ready(hh, hh.addr, 2).await;
    let refreshes = r#"upstream_account_signins_total{kind="refresh"}"#;
    assert_eq!(metric(&h, h.addr, refreshes).await, 0.0);

    // The upstream expires alice's token (server-side): the turn that meets it is answered.
    sim_control(&h, "alice@example.com", "expire_token").await;
    let mut sent = 0;
    while refused(&h.sim_stats().await, "alice@example.com") == 0 {
        assert!(
            sent < 2,
            "two idle accounts alternate: alice gets one of two"
        );
        ask_ok(&h, h.addr, &format!("expiry {sent}")).await;
        sent += 1;
    }
    let stats = h.sim_stats().await;
    assert_eq!(stats["refreshes"], 1, "one refresh");
    assert_eq!(stats["refreshes_refused"], 0);
    assert_eq!(stats["signins"], 2, "no new sign-in");
    let alice = &stats["accounts"]["alice@example.com"];
    assert_eq!(
        (
            alice["completions"].clone(),
            alice["refused"].clone(),
            alice["chats_created"].clone()
        ),
        (json!(2), json!(1), json!(1)),
        "the same turn again, in the same chat, with the new token"
    );
    assert_eq!(metric(&h, h.addr, refreshes).await, 1.0);
    let health = health(&h, h.addr).await;
    assert_eq!(state(&health, "alice"), "ready");

    // A token refused again right after its renewal: one refresh and one retry, then the
    // account is invalid with the reason — and the request fails there rather than walking
    // on through the pool (a refusal the request causes must not take every account out).
    let calls_before = h.sim_stats().await["completion_requests"].as_u64().unwrap();
    let r = h.ask(MODEL, "revoke me @@sim:expire_token", false).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "upstream_auth_failed");
    let stats = h.sim_stats().await;
    assert_eq!(stats["refreshes"], 2, "exactly one more refresh");
    assert_eq!(stats["signins"], 2);
    assert_eq!(
        stats["completion_requests"].as_u64().unwrap() - calls_before,
        2,
        "the turn, then once more after the renewal"
    );
    assert_eq!(metric(&h, h.addr, refreshes).await, 2.0);
    let after = h.health().await.json();
    let invalid: Vec<&str> = ["alice", "bob"]
        .into_iter()
        .filter(|name| state(&after, name) == "invalid")
        .collect();
    assert_eq!(
        invalid.len(),
        1,
        "exactly the account that was refused: {after}"
    );
    let reason = listed(&after, invalid[0])["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("again right after renewing"), "{reason}");
}

/// A strict simulator (hour-long tokens) and a proxy whose one account, alice (a password
/// account), has signed in.
async fn alice_signed_in(env: &[(&str, &str)]) -> (Harness, AccountsFile) {
    let file = AccountsFile::new(&json!([password_account(
        "alice",
        "alice@example.com",
        "wonderland"
    )]));
    let mut all = vec![
        ("QWEN_ACCOUNTS_FILE", file.path()),
        ("QWEN_SIGNIN_INTERVAL", "50"),
    ];
    all.extend_from_slice(env);
    let h = Harness::start_with(&all, strict_sim(ALICE, Duration::from_secs(3600))).await;
    wait_ready(&h, h.addr, 1).await;
    (h, file)
}

#[tokio::test]
async fn turns_that_meet_one_expiry_share_one_renewal() {
    let (h, _file) = alice_signed_in(&[]).await;
    // The first completion revokes the token; every one sent with it after that is refused.
    // Five turns at once: the renewal is not repeated for each.
    sim_control(&h, "alice@example.com", "expire_token").await;
    let prompts: Vec<String> = (0..5).map(|i| format!("together {i}")).collect();
    futures::future::join_all(prompts.iter().map(|p| ask_ok(&h, h.addr, p))).await;
    let stats = h.sim_stats().await;
    // Those sent before the renewal met the expiry (all but the latest, as a rule); each
    // was sent again, once, with the renewed token.
    let met = refused(&stats, "alice@example.com");
    assert!(met >= 2, "several turns met the expiry: {met}");
    assert_eq!(completions(&stats, "alice@example.com"), 5 + met);
    assert_eq!(stats["refreshes"], 1, "one renewal for all of them");
    assert_eq!(stats["signins"], 1);
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="refresh"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_legacy_flow_renews_by_signing_in_again() {
    let (h, _file) = alice_signed_in(&[("QWEN_SIGNIN_FLOW", "legacy")]).await;
    sim_control(&h, "alice@example.com", "expire_token").await;
    ask_ok(&h, h.addr, "legacy").await;
    let stats = h.sim_stats().await;
    assert_eq!(
        stats["signins"], 2,
        "signed in again: legacy has no refresh token"
    );
    assert_eq!(stats["refreshes"], 0);
    assert_eq!(refused(&stats, "alice@example.com"), 1);
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="signin"}"#
        )
        .await,
        2.0
    );
}

// === 5. sign-in pacing ===

#[tokio::test]
async fn sign_ins_are_paced() {
    let sim = strict_sim(&format!("{ALICE}{BOB}{CAROL}"), Duration::from_secs(3600));
    let file = AccountsFile::new(&json!([
        password_account("alice", "alice@example.com", "wonderland"),
        password_account("bob", "bob@example.com", "builder"),
        password_account("carol", "carol@example.com", "secret-garden"),
    ]));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "300"),
        ],
        sim,
    )
    .await;
    let before = h.health().await.json();
    assert_eq!(before["accounts"]["counts"]["total"], 3);
    let hh = &h;
    wait_ready(hh, hh.addr, 3).await;
    let stats = h.sim_stats().await;
    assert_eq!(stats["signins"], 3);
    assert_eq!(stats["signins_refused"], 0);
    let times: Vec<u64> = stats["signin_times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(times.len(), 3, "{times:?}");
    // As the upstream sees them (arrival times), not as the proxy meant them: an
    // intermittent failure here is the pacing defect the next test shows every time.
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= 300, "sign-ins 300 ms apart: {times:?}");
    }
    assert_eq!(
        metric(
            &h,
            h.addr,
            r#"upstream_account_signins_total{kind="signin"}"#
        )
        .await,
        3.0
    );
    for i in 0..3 {
        ask_ok(&h, h.addr, &format!("signed in {i}")).await;
    }
    let stats = h.sim_stats().await;
    for email in ["alice@example.com", "bob@example.com", "carol@example.com"] {
        assert_eq!(completions(&stats, email), 1, "{email}");
    }
}

#[tokio::test]
async fn sign_ins_are_paced_as_the_upstream_sees_them() {
    // Three accounts behind one outbound proxy (one egress address), whose first tunnel
    // is slow to open: the upstream must still see the sign-ins 300 ms apart.
    let (_proxy, proxy_addr) = ConnectProxy::start_with(Duration::from_millis(150)).await;
    let via = format!("http://{proxy_addr}");
    let mut entries = Vec::new();
    for (name, email, password) in [
        ("alice", "alice@example.com", "wonderland"),
        ("bob", "bob@example.com", "builder"),
        ("carol", "carol@example.com", "secret-garden"),
    ] {
        let mut e = password_account(name, email, password);
        e["proxy"] = json!(via);
        entries.push(e);
    }
    let file = AccountsFile::new(&Value::Array(entries));
    let sim = strict_sim(&format!("{ALICE}{BOB}{CAROL}"), Duration::from_secs(3600));
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("QWEN_SIGNIN_INTERVAL", "300"),
        ],
        sim,
    )
    .await;
    let hh = &h;
    wait_ready(hh, hh.addr, 3).await;
    let stats = h.sim_stats().await;
    assert_eq!(stats["signins"], 3);
    let times: Vec<u64> = stats["signin_times_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(times.len(), 3, "{times:?}");
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 300,
            "the upstream saw two sign-ins less than 300 ms apart: {times:?}"
        );
    }
}
