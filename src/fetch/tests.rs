//! The fetcher's rules, each with an address it must refuse: first the pure parts (the
//! forbidden-address table, CIDR parsing, URL checks, redirect resolution), then fetches
//! against small HTTP servers on loopback (plain HTTP, `allow_http`), where every refusal
//! also asserts that the refused server saw no request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::policy::{all_rules, forbidden_rule};
use super::target::{ends_in_number, join};
use super::*;
use crate::common::BoxFuture;

// === the forbidden-address table ===

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_forbidden_range_is_refused_by_its_rule() {
    let cases = [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private network"),
        ("172.16.0.1", "private network"),
        ("172.31.255.255", "private network"),
        ("192.168.1.1", "private network"),
        ("fc00::1", "unique-local (private)"),
        ("fdff:ffff::1", "unique-local (private)"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("169.254.169.254", "cloud metadata service"),
        ("fd00:ec2::254", "cloud metadata service"),
        ("100.100.100.200", "cloud metadata service"),
        ("168.63.129.16", "cloud metadata service"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("100.127.255.255", "shared address space (CGNAT)"),
        ("0.0.0.0", "unspecified address"),
        ("0.1.2.3", "unspecified address"),
        ("::", "unspecified address"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("192.0.2.1", "documentation range"),
        ("198.51.100.1", "documentation range"),
        ("203.0.113.1", "documentation range"),
        ("2001:db8::1", "documentation range"),
        ("198.18.0.1", "benchmarking range"),
        ("198.19.255.255", "benchmarking range"),
        ("240.0.0.1", "reserved range"),
        ("192.0.0.8", "IETF protocol assignments"),
        // IPv6 forms of forbidden IPv4 addresses, named by the address they embed.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata service"),
        ("::ffff:0:10.0.0.1", "private network"),
        ("::127.0.0.1", "loopback"),
        ("::10.1.2.3", "private network"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata service"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:7f00:1::1", "loopback"),
        ("2002:a00:5::", "private network"),
        ("2002:a9fe:a9fe::1", "cloud metadata service"),
        // Teredo: client 10.0.0.1 obfuscated (inverted) in the last 32 bits.
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private network"),
    ];
    for (addr, rule) in cases {
        assert_eq!(forbidden_rule(ip(addr)), Some(rule), "{addr}");
    }
}

#[test]
fn public_addresses_are_not_forbidden() {
    for addr in [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "169.253.255.255",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo, client 8.8.8.8
    ] {
        assert_eq!(forbidden_rule(ip(addr)), None, "{addr}");
    }
}

#[test]
fn the_rule_tables_hold_canonical_networks() {
    for net in all_rules() {
        assert!(net.is_canonical(), "{net}");
    }
}

#[test]
fn the_allow_list_overrides_the_rules_for_what_it_holds_only() {
    let policy = FetchPolicy {
        allow: parse_allow_list("127.0.0.1/32, 10.0.0.0/8").unwrap(),
        ..FetchPolicy::default()
    };
    assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
    assert_eq!(policy.check(ip("::ffff:127.0.0.1")), Ok(()));
    assert_eq!(policy.check(ip("10.200.0.1")), Ok(()));
    assert_eq!(policy.check(ip("127.0.0.2")), Err("loopback"));
    assert_eq!(policy.check(ip("::1")), Err("loopback"));
    assert_eq!(policy.check(ip("192.168.0.1")), Err("private network"));
    assert_eq!(policy.check(ip("93.184.215.14")), Ok(()));
}

// === CIDR parsing ===

#[test]
fn networks_parse_and_contain_what_they_should() {
    let net: IpNet = "10.0.0.0/8".parse().unwrap();
    assert!(net.contains(ip("10.255.1.1")));
    assert!(!net.contains(ip("11.0.0.0")));
    assert!(!net.contains(ip("::ffff:10.0.0.1")), "families never mix");
    let host: IpNet = "127.0.0.1".parse().unwrap();
    assert_eq!(host.to_string(), "127.0.0.1/32");
    assert!(!host.contains(ip("127.0.0.2")));
    let all: IpNet = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(ip("203.0.113.9")));
    let v6: IpNet = "fd00::/8".parse().unwrap();
    assert!(v6.contains(ip("fd12::1")));
    assert!(!v6.contains(ip("fe00::1")));
    assert_eq!("::1/128".parse::<IpNet>().unwrap().to_string(), "::1/128");
}

#[test]
fn malformed_networks_are_refused() {
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/08x",
        "banana",
        "10.0.0/8",
        "010.0.0.0/8",
        "",
    ] {
        assert!(bad.parse::<IpNet>().is_err(), "{bad}");
    }
}

#[test]
fn allow_lists_are_comma_separated() {
    let list = parse_allow_list(" 127.0.0.1/32, 10.0.0.0/8,,::1/128 ,").unwrap();
    assert_eq!(list.len(), 3);
    assert!(parse_allow_list("").unwrap().is_empty());
    let err = parse_allow_list("127.0.0.1/32,nope").unwrap_err();
    assert!(err.contains("nope"), "{err}");
}

// === URLs ===

#[test]
fn numeric_hosts_are_recognised() {
    for host in [
        "2130706433",
        "0x7f.1",
        "0x7F000001",
        "017700000001",
        "0177.0.0.1",
        "127.1",
        "127.0.0.1.",
        "example.0x",
        "1.2.3.4.5",
    ] {
        assert!(ends_in_number(host), "{host}");
    }
    for host in [
        "example.com",
        "a1.example",
        "0x7f.com",
        "1.2.3.4a",
        "localhost.",
    ] {
        assert!(!ends_in_number(host), "{host}");
    }
}

#[test]
fn redirects_resolve_against_the_current_url() {
    let base: Uri = "http://h.test:8080/a/b/c?q=1".parse().unwrap();
    let cases = [
        ("d", "http://h.test:8080/a/b/d"),
        ("../d?x", "http://h.test:8080/a/d?x"),
        ("/x/./y/../z", "http://h.test:8080/x/z"),
        ("../../../../top", "http://h.test:8080/top"),
        (".", "http://h.test:8080/a/b/"),
        ("..", "http://h.test:8080/a/"),
        ("?n=2", "http://h.test:8080/a/b/c?n=2"),
        ("", "http://h.test:8080/a/b/c?q=1"),
        ("#frag", "http://h.test:8080/a/b/c?q=1"),
        ("//other.test/p", "http://other.test/p"),
        ("https://x.test/y#z", "https://x.test/y"),
        ("file:///etc/passwd", "file:///etc/passwd"),
    ];
    for (location, want) in cases {
        assert_eq!(join(&base, location).unwrap(), want, "{location}");
    }
}

#[test]
fn only_the_allowed_schemes_pass() {
    let http = policy("");
    for url in [
        "file:///etc/passwd",
        "ftp://example.com/cat.png",
        "gopher://example.com:70/_GET",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "dict://example.com:11211/stats",
    ] {
        assert_eq!(
            target::parse(url, &http).unwrap_err(),
            FetchError::Scheme,
            "{url}"
        );
    }
    // https only by default; upper case is the same scheme.
    let default = FetchPolicy::default();
    assert_eq!(
        target::parse("http://example.com/cat.png", &default).unwrap_err(),
        FetchError::Scheme
    );
    assert!(target::parse("https://example.com/cat.png", &default).is_ok());
    assert!(target::parse("HTTPS://example.com/cat.png", &default).is_ok());
}

#[test]
fn odd_urls_are_refused() {
    let p = policy("");
    for url in [
        "https://user:secret@example.com/cat.png",
        "https://user@example.com/cat.png",
        "https://@example.com/cat.png",
        "//example.com/cat.png",
        "/cat.png",
        "https:/example.com",
        "https://exa mple.com/",
        "https://[::1/",
        "https://[fe80::1%25eth0]/",
        "https://example.com:0/",
        "https://example.com:/",
        "https://%6c%6f%63%61%6c%68%6f%73%74/",
        "https://exa..mple.com/",
        "https://2130706433/",
        "https://0x7f.1/",
    ] {
        match target::parse(url, &p) {
            Err(FetchError::BadUrl(_)) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let long = format!("https://example.com/{}", "a".repeat(9000));
    assert!(matches!(
        target::parse(&long, &p),
        Err(FetchError::BadUrl(_))
    ));
}

#[test]
fn messages_name_no_credentials_and_a_bounded_host() {
    let err = target::parse("https://user:hunter2@example.com/", &policy("")).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let long = FetchError::forbidden(&"a".repeat(500), ip("10.0.0.1"), "private network");
    let shown = long.to_string();
    assert!(shown.len() < 200, "{shown}");
    assert!(!shown.contains("10.0.0.1"), "{shown}");
    let odd = FetchError::resolve("evil\n<script>");
    assert!(!odd.to_string().contains('<'), "{odd}");
}

// === fetches against loopback servers ===

type Reply = Response<UnsyncBoxBody<Bytes, Infallible>>;

/// A policy for the loopback servers: plain HTTP, a 1 KiB cap, 5 s, 3 redirects.
fn policy(allow: &str) -> FetchPolicy {
    FetchPolicy {
        allow: parse_allow_list(allow).unwrap(),
        allow_http: true,
        max_bytes: 1024,
        timeout: Duration::from_secs(5),
        max_redirects: 3,
    }
}

/// An HTTP/1.1 server that counts its requests and keeps their headers.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Server {
    async fn start(ip: &str, route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        Server::on(TcpListener::bind((ip, 0)).await.unwrap(), route)
    }

    /// Serve `route(path and query)` on a bound listener.
    fn on(listener: TcpListener, route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let route = Arc::new(route);
        let (counter, log) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (route, hits, seen) = (route.clone(), counter.clone(), log.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    seen.lock().unwrap().push(req.headers().clone());
                    let reply = route(req.uri().path_and_query().map_or("/", |p| p.as_str()));
                    async move { Ok::<_, Infallible>(reply) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Server { addr, hits, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: &'static [u8]) -> Reply {
    let mut b = Response::builder().status(status);
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(Full::new(Bytes::from_static(body)).boxed_unsync())
        .unwrap()
}

fn png() -> Reply {
    reply(200, &[("content-type", "image/png")], b"\x89PNG-not-really")
}

fn redirect(status: u16, location: &str) -> Reply {
    reply(status, &[("location", location)], b"")
}

/// Names mapped to addresses, for `Fetcher::with_resolver`.
struct Names(HashMap<String, Vec<IpAddr>>);

impl Resolve for Names {
    fn resolve(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let found = self
            .0
            .get(host)
            .cloned()
            .ok_or(io::ErrorKind::NotFound.into());
        Box::pin(async move { found })
    }
}

fn names(entries: &[(&str, &[&str])]) -> Arc<dyn Resolve> {
    let map = entries
        .iter()
        .map(|(name, addrs)| (name.to_string(), addrs.iter().map(|a| ip(a)).collect()))
        .collect();
    Arc::new(Names(map))
}

#[track_caller]
fn assert_forbidden(got: Result<Fetched, FetchError>, want_addr: &str, want_rule: &str) {
    match got {
        Err(FetchError::Forbidden { addr, rule, .. }) => {
            assert_eq!((addr, rule), (ip(want_addr), want_rule));
        }
        other => panic!("expected Forbidden({want_addr}, {want_rule}), got {other:?}"),
    }
}

#[tokio::test]
async fn an_allowed_address_is_fetched_with_fixed_headers_only() {
    let server = Server::start("127.0.0.1", |_| png()).await;
    let fetcher = Fetcher::new(policy("127.0.0.1/32"));
    let got = fetcher.get(&server.url("/cat.png#frag")).await.unwrap();
    assert_eq!(&got.bytes[..], b"\x89PNG-not-really");
    assert_eq!(got.content_type.as_deref(), Some("image/png"));
    assert_eq!(got.final_url, server.url("/cat.png"));
    assert_eq!(server.hits(), 1);
    let seen = server.seen.lock().unwrap()[0].clone();
    assert_eq!(seen["user-agent"], "qwen-proxy-image-fetch");
    assert_eq!(seen["accept"], "image/*");
    for header in ["cookie", "authorization", "proxy-authorization"] {
        assert!(!seen.contains_key(header), "{header}");
    }
}

#[tokio::test]
async fn a_name_resolving_to_an_allowed_address_is_fetched() {
    // The control for the refusals below: the injected resolver does route requests.
    let server = Server::start("127.0.0.1", |_| png()).await;
    let dns = names(&[("img.test", &["127.0.0.1"])]);
    let fetcher = Fetcher::with_resolver(policy("127.0.0.1/32"), dns);
    let url = format!("http://img.test:{}/cat.png", server.port());
    let got = fetcher.get(&url).await.unwrap();
    assert_eq!(got.final_url, url);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn forbidden_literals_are_refused_before_any_request() {
    let server = Server::start("127.0.0.1", |_| png()).await;
    let port = server.port();
    let fetcher = Fetcher::new(policy(""));
    let cases = [
        (format!("http://127.0.0.1:{port}/"), "127.0.0.1", "loopback"),
        (
            format!("https://127.0.0.1:{port}/"),
            "127.0.0.1",
            "loopback",
        ),
        (
            format!("http://0.0.0.0:{port}/"),
            "0.0.0.0",
            "unspecified address",
        ),
        (format!("http://[::1]:{port}/"), "::1", "loopback"),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "::ffff:127.0.0.1",
            "loopback",
        ),
        (
            format!("http://[::ffff:7f00:1]:{port}/"),
            "::ffff:127.0.0.1",
            "loopback",
        ),
        (
            format!("http://[64:ff9b::7f00:1]:{port}/"),
            "64:ff9b::7f00:1",
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254",
            "cloud metadata service",
        ),
    ];
    for (url, addr, rule) in cases {
        assert_forbidden(fetcher.get(&url).await, addr, rule);
    }
    // The default policy (https only, nothing allowed) refuses the same way.
    let url = format!("https://127.0.0.1:{port}/");
    let default = Fetcher::new(FetchPolicy::default());
    assert_forbidden(default.get(&url).await, "127.0.0.1", "loopback");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn localhost_by_name_is_refused_after_resolution() {
    let server = Server::start("127.0.0.1", |_| png()).await;
    let fetcher = Fetcher::new(policy(""));
    let got = fetcher
        .get(&server.url("/").replace("127.0.0.1", "localhost"))
        .await;
    match got {
        Err(FetchError::Forbidden { host, addr, rule }) => {
            assert_eq!(host, "localhost");
            assert!(addr.is_loopback(), "{addr}");
            assert_eq!(rule, "loopback");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn names_resolving_to_forbidden_addresses_are_refused() {
    let server = Server::start("127.0.0.1", |_| png()).await;
    let url = format!("http://evil.test:{}/", server.port());
    for (addr, rule) in [
        ("10.0.0.5", "private network"),
        ("169.254.169.254", "cloud metadata service"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fe80::1", "link-local"),
        ("127.0.0.1", "loopback"),
    ] {
        let fetcher = Fetcher::with_resolver(policy(""), names(&[("evil.test", &[addr])]));
        assert_forbidden(fetcher.get(&url).await, addr, rule);
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn one_forbidden_address_among_allowed_ones_refuses_the_name() {
    let server = Server::start("127.0.0.1", |_| png()).await;
    let dns = names(&[("mixed.test", &["127.0.0.1", "10.0.0.5"])]);
    let fetcher = Fetcher::with_resolver(policy("127.0.0.1/32"), dns);
    let url = format!("http://mixed.test:{}/", server.port());
    assert_forbidden(fetcher.get(&url).await, "10.0.0.5", "private network");
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn an_unknown_name_does_not_resolve() {
    let fetcher = Fetcher::with_resolver(policy(""), names(&[]));
    let got = fetcher.get("http://nowhere.test/cat.png").await;
    assert_eq!(
        got.unwrap_err(),
        FetchError::Resolve {
            host: "nowhere.test".into()
        }
    );
}

#[tokio::test]
async fn every_redirect_is_checked_like_the_first_url() {
    // 127.0.0.2 is loopback too, but outside the allow-list.
    let other = Server::start("127.0.0.2", |_| png()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (to_other, to_evil) = (
        other.url("/cat.png"),
        format!("http://evil.test:{port}/cat.png"),
    );
    let server = Server::on(listener, move |path| match path {
        "/to-other" => redirect(302, &to_other),
        "/to-metadata" => redirect(301, "http://169.254.169.254/latest/meta-data/"),
        "/to-file" => redirect(302, "file:///etc/passwd"),
        "/to-evil" => redirect(307, &to_evil),
        "/dir/relative" => redirect(303, "../cat.png?size=2"),
        "/loop" => redirect(308, "/loop"),
        "/cat.png?size=2" => png(),
        _ => reply(404, &[], b""),
    });
    // evil.test has an allowed address first: without the check the request would go out.
    let dns = names(&[("evil.test", &["127.0.0.1", "10.0.0.5"])]);
    let fetcher = Fetcher::with_resolver(policy("127.0.0.1/32"), dns);

    let got = fetcher.get(&server.url("/to-other")).await;
    assert_forbidden(got, "127.0.0.2", "loopback");
    assert_eq!((server.hits(), other.hits()), (1, 0));

    let got = fetcher.get(&server.url("/to-metadata")).await;
    assert_forbidden(got, "169.254.169.254", "cloud metadata service");
    assert_eq!(server.hits(), 2);

    let got = fetcher.get(&server.url("/to-file")).await;
    assert_eq!(got.unwrap_err(), FetchError::Scheme);
    assert_eq!(server.hits(), 3);

    let got = fetcher.get(&server.url("/to-evil")).await;
    assert_forbidden(got, "10.0.0.5", "private network");
    assert_eq!(server.hits(), 4);

    let got = fetcher.get(&server.url("/dir/relative")).await.unwrap();
    assert_eq!(got.final_url, server.url("/cat.png?size=2"));
    assert_eq!(got.content_type.as_deref(), Some("image/png"));
    assert_eq!(server.hits(), 6);

    // The first request and three redirects, then no fourth.
    let got = fetcher.get(&server.url("/loop")).await;
    assert_eq!(got.unwrap_err(), FetchError::TooManyRedirects);
    assert_eq!(server.hits(), 10);
    assert_eq!(other.hits(), 0);
}

#[tokio::test]
async fn refused_schemes_credentials_and_numeric_hosts_send_nothing() {
    // 127.0.0.1 is allowed: a spelling that slipped through to a resolver would be fetched.
    let server = Server::start("127.0.0.1", |_| png()).await;
    let port = server.port();
    let fetcher = Fetcher::new(policy("127.0.0.1/32"));
    for host in [
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "017700000001",
        "0177.0.0.1",
        "127.1",
        "127.0.0.1.",
    ] {
        let got = fetcher.get(&format!("http://{host}:{port}/")).await;
        assert!(matches!(got, Err(FetchError::BadUrl(_))), "{host}: {got:?}");
    }
    let got = fetcher
        .get(&format!("http://user:pw@127.0.0.1:{port}/"))
        .await;
    assert!(matches!(got, Err(FetchError::BadUrl(_))), "{got:?}");
    let got = fetcher.get(&format!("ftp://127.0.0.1:{port}/")).await;
    assert_eq!(got.unwrap_err(), FetchError::Scheme);
    // https required by default, even for an allowed address.
    let https_only = Fetcher::new(FetchPolicy {
        allow_http: false,
        ..policy("127.0.0.1/32")
    });
    let got = https_only.get(&server.url("/")).await;
    assert_eq!(got.unwrap_err(), FetchError::Scheme);
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let server = Server::start("127.0.0.1", |path| match path {
        "/exact" => reply(200, &[], &[b'x'; 1024]),
        "/declared" => reply(200, &[], &[b'x'; 1025]),
        // Declares 1 MB, sends ten bytes, then stalls: only the declared length can refuse it.
        "/declared-stalling" => {
            let chunks =
                futures::stream::iter([Ok(Frame::data(Bytes::from_static(b"0123456789")))])
                    .chain(futures::stream::pending());
            Response::builder()
                .header("content-length", "1000000")
                .body(StreamBody::new(chunks).boxed_unsync())
                .unwrap()
        }
        // Chunked: no length declared, 4 × 300 bytes.
        _ => {
            let chunks = futures::stream::iter(
                (0..4).map(|_| Ok(Frame::data(Bytes::from_static(&[b'y'; 300])))),
            );
            Response::new(StreamBody::new(chunks).boxed_unsync())
        }
    })
    .await;
    let fetcher = Fetcher::new(FetchPolicy {
        timeout: Duration::from_secs(2),
        ..policy("127.0.0.1/32")
    });
    let too_large = FetchError::TooLarge { limit: 1024 };
    assert_eq!(
        fetcher
            .get(&server.url("/exact"))
            .await
            .unwrap()
            .bytes
            .len(),
        1024
    );
    assert_eq!(
        fetcher.get(&server.url("/declared")).await.unwrap_err(),
        too_large
    );
    let got = fetcher.get(&server.url("/declared-stalling")).await;
    assert_eq!(got.unwrap_err(), too_large);
    let got = fetcher.get(&server.url("/chunked")).await;
    assert_eq!(got.unwrap_err(), too_large);
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let fetcher = Fetcher::new(FetchPolicy {
        timeout: Duration::from_millis(300),
        ..policy("127.0.0.1/32")
    });
    let got = fetcher.get(&format!("http://{addr}/cat.png")).await;
    assert_eq!(got.unwrap_err(), FetchError::Timeout);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "it did connect");
}

#[tokio::test]
async fn a_non_success_answer_is_its_status() {
    let server = Server::start("127.0.0.1", |path| match path {
        "/missing" => reply(404, &[], b"not found"),
        "/broken" => reply(500, &[], b"oops"),
        // A redirect status without a Location is an answer, not a redirect.
        _ => reply(302, &[], b""),
    })
    .await;
    let fetcher = Fetcher::new(policy("127.0.0.1/32"));
    for (path, status) in [("/missing", 404), ("/broken", 500), ("/nowhere", 302)] {
        let got = fetcher.get(&server.url(path)).await;
        assert_eq!(got.unwrap_err(), FetchError::Status(status), "{path}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let fetcher = Fetcher::new(policy("127.0.0.1/32"));
    let got = fetcher.get(&format!("http://{addr}/")).await;
    assert!(matches!(got, Err(FetchError::Connect(_))), "{got:?}");
}

#[test]
fn a_name_that_does_not_resolve_and_one_that_resolves_inward_read_the_same() {
    let forbidden = FetchError::forbidden(
        "intranet.corp",
        "10.0.0.5".parse().unwrap(),
        "private network",
    );
    let unknown = FetchError::resolve("intranet.corp");
    assert_eq!(forbidden.to_string(), unknown.to_string());
    assert!(!forbidden.to_string().contains("10.0.0.5"));
    assert!(!forbidden.to_string().contains("private"));
    // A literal address says which rule refused it (the client wrote the address).
    let literal = FetchError::forbidden("10.0.0.5", "10.0.0.5".parse().unwrap(), "private network");
    assert!(literal.to_string().contains("private network"), "{literal}");
}
