//! Traffic over the pool: conversations pinned to their account, an account banned under
//! 50 streams, reload (admin API and SIGHUP) without dropping streams.

use super::*;

// === 6. a conversation stays on its account ===

#[tokio::test]
async fn a_conversation_stays_on_its_account() {
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        cookie_account("c")
    ]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    let keys = ["tok-a", "tok-b", "tok-c"];
    let per_account = |stats: &Value| keys.map(|k| completions(stats, k));
    let mut histories: Vec<Vec<Value>> = (0..3)
        .map(|c| vec![user(&format!("conversation {c}, turn 0"))])
        .collect();
    let mut owners: Vec<Option<usize>> = vec![None; 3];
    for turn in 0..3 {
        for c in 0..3 {
            let before = per_account(&h.sim_stats().await);
            let r = h
                .chat(json!({"model": MODEL, "messages": histories[c]}))
                .await;
            let answer = r.message_content();
            assert_eq!(
                answer,
                expected_answer(&format!("conversation {c}, turn {turn}"))
            );
            let after = per_account(&h.sim_stats().await);
            // One account took the turn (more than one completion request when the chat
            // was still busy with its last answer and the proxy waited and sent it again).
            let grew: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
            assert_eq!(grew.len(), 1, "one account: {before:?} → {after:?}");
            match owners[c] {
                None => owners[c] = Some(grew[0]),
                Some(owner) => assert_eq!(
                    keys[owner], keys[grew[0]],
                    "conversation {c}, turn {turn} left its account"
                ),
            }
            histories[c].push(assistant(&answer));
            histories[c].push(user(&format!("conversation {c}, turn {}", turn + 1)));
        }
    }
    let mut owners: Vec<usize> = owners.into_iter().map(Option::unwrap).collect();
    owners.sort_unstable();
    assert_eq!(
        owners,
        [0, 1, 2],
        "new conversations spread over the idle accounts"
    );
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_created"], 3, "each conversation kept its chat");
    for chat in stats["chats"].as_object().unwrap().values() {
        assert_eq!(chat["completions"], 3, "three answered turns in each chat");
    }
    for key in keys {
        let a = &stats["accounts"][key];
        assert_eq!(a["chats_created"], 1, "{key}");
    }
    for key in keys {
        assert_eq!(refused(&stats, key), 0);
    }
}

// === 7. an account banned mid-traffic ===

#[tokio::test]
async fn an_account_dying_mid_traffic_loses_nothing_but_its_started_streams() {
    const STREAMS: usize = 50;
    let mut entries = Vec::new();
    for name in ["a", "b", "c"] {
        let mut e = cookie_account(name);
        e["max_inflight"] = json!(100);
        entries.push(e);
    }
    let file = AccountsFile::new(&Value::Array(entries));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    // 150 frames 20 ms apart: each stream runs about three seconds.
    let expected = qwen_proxy::sim::answer::long_answer(600);
    let requests = (0..STREAMS).map(|i| {
        h.chat(json!({"model": MODEL, "stream": true,
            "messages": [user(&format!("stream {i} @@sim:long=600 @@sim:delay=20"))]}))
    });
    let hh = &h;
    let (replies, on_a) = tokio::join!(futures::future::join_all(requests), async move {
        // Once every stream has begun (its first chunk is out), kill a.
        eventually(
            "every stream running",
            Duration::from_secs(10),
            || async move {
                let active = metric(hh, hh.addr, "chat_active_streams").await;
                (active == STREAMS as f64).then_some(())
            },
        )
        .await;
        let on_a = listed(&health(hh, hh.addr).await, "a")["inflight"]
            .as_u64()
            .unwrap();
        sim_control(hh, "tok-a", "ban").await;
        on_a
    });
    assert!(on_a > 0, "a had streams running");
    let mut cut = 0;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, 200, "stream {i}");
        let s = summarize(&parse_sse(&r.body));
        match (&s.error, s.finish_reason.as_deref()) {
            (None, Some("stop")) => assert_eq!(s.content, expected, "stream {i}"),
            (Some(e), None) => {
                cut += 1;
                assert_eq!(e["code"], "upstream_forbidden", "stream {i}: {e}");
                assert!(
                    expected.starts_with(&s.content) && s.content.len() < expected.len(),
                    "stream {i}: what came is the start of the answer"
                );
            }
            other => panic!("stream {i} ended neither complete nor with an error: {other:?}"),
        }
    }
    // Every stream had begun and none was near its end when a was banned: exactly a's
    // streams are cut, the others and every turn a had not begun are complete.
    assert_eq!(
        cut as u64, on_a,
        "the streams running on a, and only those, are cut"
    );

    let health = h.health().await.json();
    assert_eq!(state(&health, "a"), "forbidden", "{health}");
    let forbidden = r#"upstream_account_cooldowns_total{reason="forbidden"}"#;
    assert_eq!(metric(&h, h.addr, forbidden).await, 1.0);
    let a_before = completions(&h.sim_stats().await, "tok-a");
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("after the ban {i}")).await;
    }
    assert_eq!(
        completions(&h.sim_stats().await, "tok-a"),
        a_before,
        "a banned account is never called again"
    );
}

// === 8. reload ===

/// Names of the accounts the admin API lists.
async fn admin_names(h: &Harness, addr: SocketAddr) -> Vec<String> {
    let r = admin(h, addr, "GET", "/admin/accounts").await;
    assert_eq!(r.status, 200);
    r.json()["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A reload never freezes the proxy: the accounts file replaced by a FIFO (a read would block
/// forever) is refused at once, two reloads at a time included, and traffic goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_a_file_that_would_block_is_refused_and_the_proxy_answers() {
    let file = two_cookie_accounts();
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    std::fs::remove_file(file.path()).unwrap();
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "600", file.path()])
        .status()
        .unwrap();
    assert!(made.success());
    let reloads = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(
            admin(&h, h.addr, "POST", "/admin/accounts/reload"),
            admin(&h, h.addr, "POST", "/admin/accounts/reload")
        )
    })
    .await
    .expect("the reloads answer (a blocked read would hold them)");
    for r in [reloads.0, reloads.1] {
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("is not a regular file") || message.contains("another reload"),
            "{message}"
        );
    }
    let answered =
        tokio::time::timeout(Duration::from_secs(5), ask_ok(&h, h.addr, "still here")).await;
    assert!(answered.is_ok(), "the proxy answers after the reloads");
    assert_eq!(
        admin_names(&h, h.addr).await,
        ["a", "b"],
        "the accounts in use stay"
    );
}

#[tokio::test]
async fn a_reload_keeps_open_streams() {
    let file = two_cookie_accounts();
    let h = Harness::start_with(
        &[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("ADMIN_KEY", ADMIN_KEY),
        ],
        quick_sim(),
    )
    .await;
    let expected = qwen_proxy::sim::answer::long_answer(400);
    let requests = (0..4).map(|i| {
        h.chat(json!({"model": MODEL, "stream": true,
            "messages": [user(&format!("slow {i} @@sim:long=400 @@sim:delay=20"))]}))
    });
    let hh = &h;
    let file = &file;
    let (replies, reload) = tokio::join!(futures::future::join_all(requests), async move {
        eventually(
            "four streams running",
            Duration::from_secs(10),
            || async move {
                let active = metric(hh, hh.addr, "chat_active_streams").await;
                (active == 4.0).then_some(())
            },
        )
        .await;
        let health = health(hh, hh.addr).await;
        assert_eq!(listed(&health, "a")["inflight"], 2, "{health}");
        assert_eq!(listed(&health, "b")["inflight"], 2, "{health}");
        file.write(&json!([cookie_account("b"), cookie_account("c")]));
        admin(hh, hh.addr, "POST", "/admin/accounts/reload").await
    });
    assert_eq!(
        reload.status,
        200,
        "{}",
        String::from_utf8_lossy(&reload.body)
    );
    assert_eq!(
        reload.json()["reloaded"],
        json!({"kept": 1, "added": 1, "changed": 0, "removed": 1})
    );
    assert_eq!(reload.json()["counts"]["total"], 2);
    for (i, r) in replies.iter().enumerate() {
        let s = summarize(&parse_sse(&r.body));
        assert!(s.error.is_none(), "stream {i}: {:?}", s.error);
        assert_eq!(s.finish_reason.as_deref(), Some("stop"), "stream {i}");
        assert_eq!(s.content, expected, "stream {i}");
    }
    assert_eq!(admin_names(&h, h.addr).await, ["b", "c"]);
    let stats = h.sim_stats().await;
    let (a0, b0, c0) = (
        completions(&stats, "tok-a"),
        completions(&stats, "tok-b"),
        completions(&stats, "tok-c"),
    );
    assert_eq!((a0, b0, c0), (2, 2, 0));
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("after the reload {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(completions(&stats, "tok-a"), a0, "a is gone");
    assert!(completions(&stats, "tok-c") > 0, "c takes turns");
    assert_eq!(
        completions(&stats, "tok-b") + completions(&stats, "tok-c"),
        b0 + 4
    );

    // A changed entry is rebuilt, an unchanged one kept.
    let mut c = cookie_account("c");
    c["max_inflight"] = json!(2);
    file.write(&json!([cookie_account("b"), c]));
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(
        r.json()["reloaded"],
        json!({"kept": 1, "added": 0, "changed": 1, "removed": 0})
    );

    // An unchanged account is kept as it is: cooling stays cooling. (The rebuilt c has the
    // fewest turns: it takes the next one.)
    sim_control(&h, "tok-c", "quota?hours=1").await;
    ask_ok(&h, h.addr, "c cools").await;
    assert_eq!(refused(&h.sim_stats().await, "tok-c"), 1);
    let until = listed(&h.health().await.json(), "c")["until_ms"].clone();
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(
        r.json()["reloaded"],
        json!({"kept": 2, "added": 0, "changed": 0, "removed": 0})
    );
    let c = listed(&h.health().await.json(), "c");
    assert_eq!(
        (c["state"].clone(), c["until_ms"].clone()),
        (json!("cooling"), until)
    );

    // A bad file changes nothing.
    file.write_text(r#"[{"name": "x"}, {"name": "b", "cookies": "token=tok-b"}]"#);
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(error_code(&r), "invalid_accounts_file");
    assert_eq!(admin_names(&h, h.addr).await, ["b", "c"]);
    // Nor does a file everyone may read.
    file.write(&json!([cookie_account("d")]));
    file.chmod(0o644);
    let r = admin(&h, h.addr, "POST", "/admin/accounts/reload").await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "invalid_accounts_file");
    assert!(r.error()["message"].as_str().unwrap().contains("chmod 600"));
    assert_eq!(admin_names(&h, h.addr).await, ["b", "c"]);
    ask_ok(&h, h.addr, "still served").await;
}

#[tokio::test]
async fn sighup_reloads_the_accounts_file() {
    use support::process;
    // The harness's own proxy is unused: the binary is the proxy here.
    let h = Harness::start_with(&[], quick_sim()).await;
    let file = two_cookie_accounts();
    let sim_url = h.sim.base_url();
    let env = [
        ("QWEN_ACCOUNTS_FILE", file.path().to_owned()),
        ("QWEN_BASE_URL", sim_url.clone()),
        ("QWEN_AUTH_BASE_URL", sim_url),
        ("ADMIN_KEY", ADMIN_KEY.to_owned()),
    ];
    // Its log, to see when it has handled a signal.
    let log = file.dir.join("stderr.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let running = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut cmd = process::command(&["--env-file", "/dev/null", "--port", "0"], &env);
        cmd.stderr(stderr);
        process::start(cmd)
    })
    .await
    .unwrap();
    assert_eq!(admin_names(&h, running.addr).await, ["a", "b"]);
    file.write(&json!([cookie_account("b"), cookie_account("c")]));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &running.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (hh, addr) = (&h, running.addr);
    eventually("the reload", Duration::from_secs(5), || async move {
        (admin_names(hh, addr).await == ["b", "c"]).then_some(())
    })
    .await;
    ask_ok(&h, running.addr, "after SIGHUP").await;
    // A bad file on SIGHUP: the accounts in use stay.
    file.write_text("not json");
    std::process::Command::new("kill")
        .args(["-HUP", &running.pid().to_string()])
        .status()
        .unwrap();
    let log = &log;
    eventually(
        "the bad file handled",
        Duration::from_secs(5),
        || async move {
            let text = std::fs::read_to_string(log).unwrap();
            text.contains("SIGHUP: the accounts file was not reloaded")
                .then_some(())
        },
    )
    .await;
    assert_eq!(admin_names(&h, running.addr).await, ["b", "c"]);
    ask_ok(&h, running.addr, "after a bad SIGHUP").await;
}
