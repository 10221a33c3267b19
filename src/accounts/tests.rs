//! The pool without an upstream: selection, pacing, blame and reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;
use crate::accounts_file::parse;
use crate::error::{ProxyError, UpstreamClass, UpstreamError};

fn pool_of(file: &str) -> Arc<Pool> {
    let vars: HashMap<String, String> =
        HashMap::from([("QWEN_COOKIES".to_owned(), "token=unused".to_owned())]);
    let config = crate::config::Config::from_source(&vars, false).unwrap();
    let metrics = Metrics::new();
    let client = QwenClient::new(&config.upstream, 1, metrics.clone());
    Pool::new(
        client,
        PoolSettings {
            flow: SigninFlow::Auth,
            signin_interval: Duration::from_secs(30),
            challenge_base: Duration::from_secs(300),
            queue_timeout: Duration::from_secs(5),
        },
        parse(file).unwrap(),
        metrics,
        None,
    )
}

fn three() -> Arc<Pool> {
    pool_of(
        r#"[{"name":"a","cookies":"token=ta","min_interval_ms":0},
            {"name":"b","cookies":"token=tb","min_interval_ms":0},
            {"name":"c","cookies":"token=tc","min_interval_ms":0,"max_inflight":1}]"#,
    )
}

fn upstream(class: UpstreamClass, retry_after: Option<Duration>) -> ProxyError {
    let mut e = UpstreamError::new(class, "test");
    e.retry_after = retry_after;
    e.into()
}

#[tokio::test]
async fn new_turns_go_to_the_least_loaded_account() {
    let pool = three();
    let first = pool.acquire(&[]).await.unwrap();
    let second = pool.acquire(&[]).await.unwrap();
    let third = pool.acquire(&[]).await.unwrap();
    let mut names = vec![first.name(), second.name(), third.name()];
    names.sort_unstable();
    assert_eq!(names, ["a", "b", "c"], "one each while all are idle");
    // c is full (max_inflight 1): the next two go to a and b.
    let fourth = pool.acquire(&[]).await.unwrap();
    let fifth = pool.acquire(&[]).await.unwrap();
    assert_ne!(fourth.name(), "c");
    assert_ne!(fifth.name(), "c");
    assert_eq!(pool.get("c").unwrap().inflight(), 1);
    drop((first, second, third, fourth, fifth));
    assert!(
        pool.list().iter().all(|a| a.inflight() == 0),
        "leases free their slots"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_paced_account_makes_the_turn_wait() {
    let pool =
        pool_of(r#"[{"name":"solo","cookies":"token=t","max_inflight":1,"min_interval_ms":2000}]"#);
    let start = Instant::now();
    let lease = pool.acquire(&[]).await.unwrap();
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire(&[]).await.map(|l| l.name().to_owned()) })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "no room while the first turn runs");
    drop(lease);
    assert_eq!(waiting.await.unwrap().unwrap(), "solo");
    assert!(start.elapsed() >= Duration::from_secs(3));
    // And the minimum interval: a third turn waits at least 2 s after the second began.
    let before = Instant::now();
    let third = pool.acquire(&[]).await.unwrap();
    assert!(
        before.elapsed() >= Duration::from_secs(2),
        "{:?}",
        before.elapsed()
    );
    drop(third);
}

#[tokio::test(start_paused = true)]
async fn past_the_queue_timeout_a_busy_pool_says_so() {
    let pool =
        pool_of(r#"[{"name":"solo","cookies":"token=t","max_inflight":1,"min_interval_ms":0}]"#);
    let _lease = pool.acquire(&[]).await.unwrap();
    let e = pool.acquire(&[]).await.unwrap_err();
    assert_eq!(e.code(), Some("accounts_busy"));
    assert_eq!(e.status(), 429);
}

#[tokio::test]
async fn a_conversation_gets_its_own_account_or_none() {
    let pool = three();
    let lease = pool.acquire_on("b").await.unwrap().unwrap();
    assert_eq!(lease.name(), "b");
    assert!(pool.acquire_on("nobody").await.is_none(), "gone: move on");
    pool.blame(
        pool.get("a").unwrap().as_ref(),
        &upstream(UpstreamClass::RateLimited, Some(Duration::from_secs(3600))),
    );
    assert!(pool.acquire_on("a").await.is_none(), "cooling: move on");
}

#[tokio::test]
async fn the_quota_cools_an_account_for_num_hours_and_then_everyone_gets_the_earliest() {
    let pool = three();
    let quota = |h: u64| {
        upstream(
            UpstreamClass::RateLimited,
            Some(Duration::from_secs(h * 3600)),
        )
    };
    assert_eq!(pool.blame(&pool.get("a").unwrap(), &quota(4)), Blame::Quota);
    let view = pool.view(&pool.get("a").unwrap());
    assert_eq!(view.state, "cooling");
    let left = view.until_ms.unwrap() - epoch_millis();
    assert!(
        (4 * 3_600_000 - 5_000..=4 * 3_600_000).contains(&left),
        "{left}"
    );
    // New turns avoid it; the request that met it avoids what it left too.
    for _ in 0..4 {
        assert_ne!(pool.acquire(&[]).await.unwrap().name(), "a");
    }
    assert_eq!(pool.acquire(&["b".into()]).await.unwrap().name(), "c");
    pool.blame(&pool.get("b").unwrap(), &quota(2));
    pool.blame(&pool.get("c").unwrap(), &quota(3));
    let e = pool.acquire(&[]).await.unwrap_err();
    assert_eq!(e.status(), 429);
    assert_eq!(e.code(), Some("upstream_rate_limited"));
    let wait = e.retry_after().unwrap();
    assert!((7_195..=7_200).contains(&wait), "the earliest: b's {wait}");
}

#[tokio::test]
async fn a_challenge_on_two_accounts_is_nobodys_fault() {
    let pool = three();
    let challenge = upstream(UpstreamClass::Challenge, None);
    assert_eq!(
        pool.blame(&pool.get("a").unwrap(), &challenge),
        Blame::Challenged
    );
    assert_eq!(pool.get("a").unwrap().health().label(), "quarantined");
    assert!(pool.global.remaining().is_none());
    // A second account within the pause: the time of day, not the accounts.
    assert_eq!(
        pool.blame(&pool.get("b").unwrap(), &challenge),
        Blame::ChatChallenge
    );
    for name in ["a", "b", "c"] {
        assert_eq!(pool.get(name).unwrap().health(), Health::Ready, "{name}");
    }
    let paused = pool.global.remaining().unwrap();
    assert!(paused > Duration::from_secs(295));
    let e = pool.acquire(&[]).await.unwrap_err();
    assert_eq!(e.code(), Some("upstream_challenge_cooldown"));
}

#[tokio::test]
async fn with_nothing_coming_back_the_error_names_the_accounts() {
    let pool = pool_of(r#"[{"name":"x","cookies":"token=t"},{"name":"y","cookies":"token=u"}]"#);
    pool.blame(
        &pool.get("x").unwrap(),
        &upstream(UpstreamClass::Forbidden, None),
    );
    pool.set_enabled("y", false).await.unwrap();
    let e = pool.acquire(&[]).await.unwrap_err();
    assert_eq!(e.code(), Some("no_usable_account"));
    assert_eq!(e.status(), 503);
    let m = e.message();
    assert!(m.contains("1 disabled") && m.contains("1 forbidden"), "{m}");
    assert!(m.contains("forbidden: the upstream refused"), "{m}");
    assert!(!m.contains("x is"), "no account names for API clients: {m}");
    assert!(!m.contains("token=t"), "no secrets: {m}");
    pool.set_enabled("x", true).await.unwrap();
    assert_eq!(pool.acquire(&[]).await.unwrap().name(), "x");
}

#[tokio::test]
async fn a_reload_keeps_what_did_not_change_and_running_leases_survive() {
    let pool = three();
    let on_a = pool.acquire_on("a").await.unwrap().unwrap();
    pool.blame(
        &pool.get("b").unwrap(),
        &upstream(UpstreamClass::RateLimited, Some(Duration::from_secs(60))),
    );
    let summary = pool.install(
        parse(
            r#"[{"name":"b","cookies":"token=tb","min_interval_ms":0},
                {"name":"c","cookies":"token=tc2","min_interval_ms":0},
                {"name":"d","cookies":"token=td"}]"#,
        )
        .unwrap(),
    );
    assert_eq!(
        summary,
        ReloadSummary {
            kept: 1,
            added: 1,
            changed: 1,
            removed: 1
        }
    );
    assert_eq!(
        pool.get("b").unwrap().health().label(),
        "cooling",
        "kept as it was"
    );
    assert!(pool.get("a").is_none());
    // The turn on the removed account goes on, and ends cleanly.
    assert_eq!(on_a.name(), "a");
    drop(on_a);
    let names: Vec<String> = pool.views().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["b", "c", "d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_turns_never_overshoot_the_in_flight_limit() {
    let pool =
        pool_of(r#"[{"name":"solo","cookies":"token=t","max_inflight":2,"min_interval_ms":0}]"#);
    let most = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (pool, most) = (pool.clone(), most.clone());
            tokio::spawn(async move {
                let lease = pool.acquire(&[]).await.unwrap();
                most.fetch_max(lease.account().inflight(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(lease);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= 2, "{most:?}");
    assert_eq!(pool.get("solo").unwrap().inflight(), 0);
}

#[test]
fn how_long_a_rate_limit_cools_an_account() {
    let hours = |h: u64| {
        upstream(
            UpstreamClass::RateLimited,
            Some(Duration::from_secs(h * 3600)),
        )
    };
    assert_eq!(blame::quota_wait(&hours(4)), 4 * 3_600_000);
    assert_eq!(
        blame::quota_wait(&hours(1_000_000)),
        7 * 86_400_000,
        "capped at a week"
    );
    let daily = UpstreamError::new(
        UpstreamClass::RateLimited,
        "You've reached the upper limit for today's usage.",
    );
    assert_eq!(blame::quota_wait(&daily.into()), 86_400_000);
    let bare = UpstreamError::new(UpstreamClass::RateLimited, "HTTP 429");
    assert_eq!(
        blame::quota_wait(&bare.into()),
        60_000,
        "a bare 429 is not a day"
    );
}

#[tokio::test]
async fn another_instances_state_never_lifts_or_makes_a_disable() {
    let pool = three();
    pool.set_enabled("a", false).await.unwrap();
    let a = pool.get("a").unwrap();
    let later = epoch_millis() + 1_000;
    a.adopt_health(Health::Ready, later);
    assert_eq!(
        a.health(),
        Health::Disabled,
        "only the operator's key lifts it"
    );
    let b = pool.get("b").unwrap();
    b.adopt_health(Health::Disabled, later);
    assert_eq!(
        b.health(),
        Health::Ready,
        "only the operator's key makes it"
    );
    let cooling = Health::Cooling {
        until_ms: later + 60_000,
        reason: "elsewhere".into(),
    };
    b.adopt_health(cooling.clone(), later);
    assert_eq!(
        b.health(),
        cooling,
        "newer news from another instance is taken"
    );
    b.adopt_health(Health::Ready, later - 10);
    assert_eq!(b.health(), cooling, "older news is not");
}

#[tokio::test]
async fn editing_pacing_keeps_the_token_and_the_state() {
    let pool = pool_of(r#"[{"name":"a","cookies":"token=ta","min_interval_ms":0}]"#);
    pool.blame(
        &pool.get("a").unwrap(),
        &upstream(UpstreamClass::RateLimited, Some(Duration::from_secs(600))),
    );
    let summary = pool.install(
        parse(r#"[{"name":"a","cookies":"token=ta","min_interval_ms":0,"max_inflight":9}]"#)
            .unwrap(),
    );
    assert_eq!(summary.changed, 1);
    let a = pool.get("a").unwrap();
    assert_eq!(a.spec.max_inflight, Some(9));
    assert_eq!(a.health().label(), "cooling", "the state goes on");
    // New credentials: a new account.
    pool.install(parse(r#"[{"name":"a","cookies":"token=other"}]"#).unwrap());
    assert_eq!(pool.get("a").unwrap().health(), Health::Ready);
}
