//! The operators' side: the admin API's key, per-account outbound proxies, and a file the
//! binary refuses.

use super::*;

// === 10. admin API ===

#[tokio::test]
async fn the_admin_api_needs_its_key() {
    let file = AccountsFile::new(&json!([
        cookie_account("a"),
        cookie_account("b"),
        password_account("p", "p@example.com", "pass-word-SECRET"),
    ]));
    // Without ADMIN_KEY there is no admin API.
    let h = Harness::start_with(
        &[("QWEN_ACCOUNTS_FILE", file.path()), ("ADMIN_KEY", "")],
        quick_sim(),
    )
    .await;
    let r = admin(&h, h.addr, "GET", "/admin/accounts").await;
    assert_eq!(r.status, 404);
    let p = h
        .another_proxy(&[
            ("QWEN_ACCOUNTS_FILE", file.path()),
            ("ADMIN_KEY", ADMIN_KEY),
        ])
        .await;
    let url = |path: &str| format!("http://{}{path}", p.addr);
    let r = call(&h, url("/admin/accounts"), "GET", &[], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "invalid_admin_key");
    let wrong = [("authorization", "Bearer not-the-key")];
    let r = call(&h, url("/admin/accounts"), "GET", &wrong, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(error_code(&r), "invalid_admin_key");
    let r = call(&h, url("/admin/accounts/a/disable"), "POST", &wrong, None).await;
    assert_eq!(r.status, 401);
    wait_ready(&h, p.addr, 3).await;
    let r = admin(&h, p.addr, "GET", "/admin/accounts").await;
    assert_eq!(r.status, 200);
    let list = r.json();
    assert_eq!(list["counts"]["total"], 3);
    let a = &list["accounts"][0];
    assert_eq!(
        (a["name"].clone(), a["kind"].clone(), a["state"].clone()),
        (json!("a"), json!("cookies"), json!("ready"))
    );
    assert_eq!(
        (
            a["inflight"].clone(),
            a["max_inflight"].clone(),
            a["min_interval_ms"].clone()
        ),
        (json!(0), json!(4), json!(0))
    );
    assert_eq!(
        (a["turns"].clone(), a["proxy"].clone()),
        (json!(0), json!(false))
    );
    assert_eq!(a["recent_errors"], json!([]));
    assert_eq!(list["accounts"][2]["kind"], "password");

    // Wrong method, unknown account.
    assert_eq!(
        admin(&h, p.addr, "GET", "/admin/accounts/a/disable")
            .await
            .status,
        405
    );
    assert_eq!(
        admin(&h, p.addr, "POST", "/admin/accounts").await.status,
        405
    );
    assert_eq!(
        admin(&h, p.addr, "POST", "/admin/accounts/zz/disable")
            .await
            .status,
        404
    );

    // Disabled: no turns; enabled: back in rotation.
    let r = admin(&h, p.addr, "POST", "/admin/accounts/a/disable").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["account"]["state"], "disabled");
    let health_now = health(&h, p.addr).await;
    assert_eq!(state(&health_now, "a"), "disabled");
    for i in 0..4 {
        ask_ok(&h, p.addr, &format!("a disabled {i}")).await;
    }
    assert_eq!(completions(&h.sim_stats().await, "tok-a"), 0);
    let r = admin(&h, p.addr, "POST", "/admin/accounts/a/enable").await;
    assert_eq!(r.json()["account"]["state"], "ready");
    // Back in rotation: it started a turn longest ago, so it takes the next one.
    ask_ok(&h, p.addr, "a enabled").await;
    let stats = h.sim_stats().await;
    assert_eq!(completions(&stats, "tok-a"), 1, "{stats}");
    assert_eq!(
        metric(
            &h,
            p.addr,
            r#"upstream_account_cooldowns_total{reason="disabled"}"#
        )
        .await,
        1.0
    );

    // Purging deletes every chat of that account, and only those.
    ask_ok(&h, p.addr, "a again").await;
    let stats = h.sim_stats().await;
    let chats_before = stats["chats"].as_object().unwrap().len();
    let on_a = stats["accounts"]["tok-a"]["chats_created"]
        .as_u64()
        .unwrap();
    assert!(on_a >= 1, "{stats}");
    let r = admin(&h, p.addr, "POST", "/admin/accounts/a/purge-chats").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"account": "a", "purged": true, "deleted": on_a})
    );
    let stats = h.sim_stats().await;
    assert_eq!(stats["chats_purged"], on_a);
    assert_eq!(
        stats["chats"].as_object().unwrap().len() as u64,
        chats_before as u64 - on_a
    );

    // No secret anywhere an operator looks.
    let token = p.state.accounts.get("p").unwrap().token().unwrap();
    let mut secrets = vec![
        "tok-a".to_owned(),
        "tok-b".to_owned(),
        "pass-word-SECRET".to_owned(),
        ADMIN_KEY.to_owned(),
        token.access.clone(),
    ];
    secrets.extend(token.refresh.clone());
    for path in ["/admin/accounts", "/health", "/metrics"] {
        let body = admin(&h, p.addr, "GET", path).await.body;
        let text = String::from_utf8_lossy(&body);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{path} shows a secret");
        }
    }
}

// === 11. per-account outbound proxy ===

/// A minimal HTTP CONNECT proxy: counts tunnels, keeps each `Proxy-Authorization` and
/// everything the client sent through the tunnels (plain HTTP to the simulator).
#[derive(Default)]
pub(crate) struct ConnectProxy {
    /// How long the first tunnel takes to open (as a first TLS handshake through a proxy).
    first_tunnel_delay: Duration,
    connects: AtomicUsize,
    auth: Mutex<Vec<String>>,
    targets: Mutex<Vec<String>>,
    sent: Mutex<Vec<u8>>,
}

impl ConnectProxy {
    async fn start() -> (Arc<Self>, SocketAddr) {
        Self::start_with(Duration::ZERO).await
    }

    pub(crate) async fn start_with(first_tunnel_delay: Duration) -> (Arc<Self>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(ConnectProxy {
            first_tunnel_delay,
            ..ConnectProxy::default()
        });
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(p.clone().tunnel(conn));
            }
        });
        (proxy, addr)
    }

    async fn tunnel(self: Arc<Self>, mut client: TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if client.read_exact(&mut byte).await.is_err() {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let Some(target) = request_line
            .strip_prefix("CONNECT ")
            .and_then(|r| r.split_whitespace().next())
        else {
            let _ = client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await;
            return;
        };
        if self.connects.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::time::sleep(self.first_tunnel_delay).await;
        }
        self.targets.lock().unwrap().push(target.to_owned());
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("proxy-authorization") {
                    self.auth.lock().unwrap().push(v.trim().to_owned());
                }
            }
        }
        let Ok(upstream) = TcpStream::connect(target).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut up_rd, mut up_wr) = upstream.into_split();
        let log = self.clone();
        let to_upstream = async move {
            let mut buf = [0u8; 8192];
            loop {
                match client_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        log.sent.lock().unwrap().extend_from_slice(&buf[..n]);
                        if up_wr.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = up_wr.shutdown().await;
        };
        let to_client = async move {
            let _ = tokio::io::copy(&mut up_rd, &mut client_wr).await;
            let _ = client_wr.shutdown().await;
        };
        tokio::join!(to_upstream, to_client);
    }

    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
    }
}

/// "Renew the token" (the console's button): a password account gets a new token from
/// the upstream at once (the simulator counts one more sign-in or refresh, the account
/// stays ready and answers); a browser session without a refresh token cannot renew and
/// is left as it was (400, not marked invalid).
#[tokio::test]
async fn an_operator_renews_a_token_now_where_the_account_can() {
    let sim = strict_sim(ALICE, Duration::from_secs(3600));
    let file = AccountsFile::new(&json!([
        password_account("alice", "alice@example.com", "wonderland"),
        cookie_account("a"),
    ]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], sim).await;
    wait_ready(&h, h.addr, 2).await;
    let list = admin(&h, h.addr, "GET", "/admin/accounts").await.json();
    let can_renew: Vec<(Value, Value)> = list["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].clone(), a["can_renew"].clone()))
        .collect();
    assert_eq!(
        can_renew,
        [(json!("alice"), json!(true)), (json!("a"), json!(false))]
    );
    let before = h.sim_stats().await;
    let renewals =
        |s: &Value| s["signins"].as_u64().unwrap_or(0) + s["refreshes"].as_u64().unwrap_or(0);
    let r = admin(&h, h.addr, "POST", "/admin/accounts/alice/renew").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["renewed"], true);
    assert_eq!(r.json()["account"]["state"], "ready");
    assert_eq!(renewals(&h.sim_stats().await), renewals(&before) + 1);
    ask_ok(&h, h.addr, "after an operator's renewal").await;

    let r = admin(&h, h.addr, "POST", "/admin/accounts/a/renew").await;
    assert_eq!(r.status, 400);
    assert_eq!(error_code(&r), "account_cannot_renew");
    assert_eq!(state(&health(&h, h.addr).await, "a"), "ready");
    let r = admin(&h, h.addr, "POST", "/admin/accounts/nobody/renew").await;
    assert_eq!(r.status, 404);
    let r = admin(&h, h.addr, "GET", "/admin/accounts/alice/renew").await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn an_account_proxy_carries_its_traffic() {
    let (proxy, proxy_addr) = ConnectProxy::start().await;
    let mut tunnelled = cookie_account("x");
    tunnelled["proxy"] = json!(format!("http://user:pw@{proxy_addr}"));
    let file = AccountsFile::new(&json!([tunnelled, cookie_account("y")]));
    let h = Harness::start_with(&[("QWEN_ACCOUNTS_FILE", file.path())], quick_sim()).await;
    for i in 0..4 {
        ask_ok(&h, h.addr, &format!("proxied {i}")).await;
    }
    let stats = h.sim_stats().await;
    assert_eq!(
        (completions(&stats, "tok-x"), completions(&stats, "tok-y")),
        (2, 2)
    );
    assert!(proxy.connects.load(Ordering::SeqCst) >= 1);
    let auth = proxy.auth.lock().unwrap().clone();
    assert!(!auth.is_empty());
    assert!(auth.iter().all(|a| a == "Basic dXNlcjpwdw=="), "{auth:?}");
    let sim_authority = h.sim.addr().to_string();
    assert!(proxy
        .targets
        .lock()
        .unwrap()
        .iter()
        .all(|t| *t == sim_authority));
    // x's turns went through the tunnel, y's did not.
    let sent = proxy.sent();
    assert_eq!(
        sent.matches("POST /api/v2/chat/completions").count(),
        2,
        "{sent}"
    );
    assert!(sent.contains("token=tok-x"));
    assert!(!sent.contains("tok-y"), "y's traffic stays direct");
    let admin_view = h.health().await.json();
    assert_eq!(admin_view["accounts"]["counts"]["ready"], 2);
}

// === 12. the binary refuses a file it must not use ===

/// Run the binary to completion (bounded), listening on a free port if it starts.
fn run(env: &[(&str, &str)]) -> Output {
    let mut env = env.to_vec();
    env.push(("PORT", "0"));
    support::process::run(&["--env-file", "/dev/null"], &env)
}

#[test]
fn a_world_readable_accounts_file_is_refused() {
    let file = AccountsFile::new(&json!([{"name": "a", "cookies": "token=tok-SECRET0"}]));
    file.chmod(0o644);
    let out = run(&[("QWEN_ACCOUNTS_FILE", file.path())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(stderr.contains(file.path()), "names the file: {stderr}");
    assert!(!stderr.contains("SECRET0"));

    file.write_text(
        r#"[{"name": "a", "cookies": "no-token-SECRET1"},
            {"name": "b", "email": "b@x.io", "password": "SECRET2", "cookies": "token=SECRET3"}]"#,
    );
    let out = run(&[("QWEN_ACCOUNTS_FILE", file.path())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("entry 1") && stderr.contains("entry 2"),
        "{stderr}"
    );
    for secret in ["SECRET1", "SECRET2", "SECRET3"] {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "{secret}: {stderr}"
        );
    }
}
