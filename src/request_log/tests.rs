//! The request log's pure parts: the ring, the filters, the query parser, the minutes and
//! their percentiles, the recorder, and the live feed's body. Expected values are written
//! out by hand (epoch times checked with `date -u -d … +%s%3N`).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;

use super::minutes::{bucket_of, percentile, Minutes, MINUTES, TTFT_BOUNDS_MS};
use super::query::{parse_since, Filter, Status, DEFAULT_LIMIT};
use super::*;
use crate::error::{ProxyError, UpstreamClass};
use crate::routes::Api;

/// 2026-12-08T13:04:05.250Z.
const T0: u64 = 1_796_735_045_250;

fn entry(id: &str) -> Entry {
    Entry {
        seq: 0,
        id: id.to_owned(),
        time: "2026-12-08T13:04:05.250Z".to_owned(),
        time_ms: T0,
        api: "chat_completions",
        model: Some("qwen3.7-plus".to_owned()),
        key: Some("anon".to_owned()),
        account: Some("a".to_owned()),
        chat: Some("chat-1".to_owned()),
        stream: false,
        status: 200,
        error_type: None,
        error_code: None,
        ttft_ms: Some(120),
        duration_ms: 300,
        input_tokens: Some(10),
        output_tokens: Some(20),
        reasoning_tokens: None,
        retries: 0,
        moved: 0,
    }
}

fn ids(entries: &[Arc<Entry>]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

fn all(limit: usize) -> Query {
    Query {
        filter: Filter::default(),
        limit,
    }
}

// === the ring ===

#[test]
fn entries_are_numbered_in_order_even_with_the_same_request_id() {
    let log = RequestLog::new(5);
    for _ in 0..3 {
        log.record(entry("same-id"));
    }
    let seqs: Vec<u64> = log.select(&all(5)).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 2, 1]);
}

#[test]
fn the_ring_keeps_the_last_n_newest_first() {
    let log = RequestLog::new(3);
    assert_eq!((log.capacity(), log.size()), (3, 0));
    for i in 1..=5 {
        log.record(entry(&format!("r{i}")));
    }
    assert_eq!(log.size(), 3);
    assert_eq!(ids(&log.select(&all(10))), ["r5", "r4", "r3"]);
    assert_eq!(ids(&log.select(&all(2))), ["r5", "r4"], "the limit");
}

#[test]
fn the_overview_counts_failures_to_serve_not_clients_leaving() {
    let log = RequestLog::new(10);
    let failed = Entry {
        status: 502,
        error_type: Some("upstream_error"),
        ..entry("failed")
    };
    let in_band = Entry {
        error_type: Some("server_error"),
        ..entry("in-band")
    };
    let left = Entry {
        error_type: Some("client_closed"),
        ..entry("left")
    };
    let gone_early = Entry {
        status: 499,
        error_type: Some("client_closed"),
        ..entry("gone-early")
    };
    for e in [entry("ok"), failed, in_band, left, gone_early] {
        log.record(e);
    }
    let hour = log.last_hour(T0 + 300);
    assert_eq!((hour.requests, hour.errors), (5, 2));
    // The log's own error filter still shows the clients that left.
    let errors = Query {
        filter: Filter {
            status: Some(Status::Error),
            ..Filter::default()
        },
        limit: 10,
    };
    assert_eq!(
        ids(&log.select(&errors)),
        ["gone-early", "left", "in-band", "failed"]
    );
}

#[test]
fn a_log_of_size_zero_keeps_and_feeds_nothing_but_counts_the_minutes() {
    let log = RequestLog::new(0);
    let mut rx = log.subscribe();
    log.record(entry("r1"));
    assert_eq!(log.size(), 0);
    assert!(log.select(&all(10)).is_empty());
    assert!(rx.try_recv().is_err(), "nothing fed");
    let hour = log.last_hour(T0 + 300);
    assert_eq!((hour.requests, hour.ttft.count), (1, 1));
}

#[test]
fn the_list_json_has_entries_capacity_and_size() {
    let log = RequestLog::new(5);
    log.record(entry("r1"));
    let v: serde_json::Value =
        serde_json::from_slice(&list_json(&log.select(&all(5)), 5, log.size())).unwrap();
    assert_eq!(v["capacity"], 5);
    assert_eq!(v["size"], 1);
    let e = &v["requests"][0];
    assert_eq!(
        e,
        &serde_json::json!({
            "seq": 1, "id": "r1", "time": "2026-12-08T13:04:05.250Z", "time_ms": T0,
            "api": "chat_completions", "model": "qwen3.7-plus", "key": "anon",
            "account": "a", "chat": "chat-1", "stream": false, "status": 200,
            "error_type": null, "error_code": null, "ttft_ms": 120, "duration_ms": 300,
            "input_tokens": 10, "output_tokens": 20, "reasoning_tokens": null,
            "retries": 0, "moved": 0
        })
    );
}

// === filters ===

#[test]
fn filters_select_by_status_error_names_api_and_time() {
    let log = RequestLog::new(10);
    let mut e = entry("ok");
    log.record(e.clone());
    e.id = "unauthorized".into();
    e.status = 401;
    e.key = None;
    e.account = None;
    log.record(e.clone());
    e.id = "overloaded".into();
    e.status = 503;
    e.account = Some("b".into());
    e.key = Some("f00d".into());
    log.record(e.clone());
    e.id = "in-band".into();
    e.status = 200;
    e.error_type = Some("server_error");
    e.api = "messages";
    e.model = Some("qwen3.8-max".into());
    e.time_ms = T0 + 60_000;
    log.record(e);

    let q = |f: Filter| {
        ids(&log.select(&Query {
            filter: f,
            limit: 10,
        }))
        .join(",")
    };
    let status = |s| Filter {
        status: Some(s),
        ..Filter::default()
    };
    assert_eq!(q(status(Status::Exact(200))), "in-band,ok");
    assert_eq!(q(status(Status::Class(4))), "unauthorized");
    assert_eq!(q(status(Status::Class(5))), "overloaded");
    assert_eq!(q(status(Status::Error)), "in-band,overloaded,unauthorized");
    assert_eq!(
        q(Filter {
            errors_only: true,
            ..Filter::default()
        }),
        "in-band,overloaded,unauthorized"
    );
    let by = |f: fn(&mut Filter)| {
        let mut filter = Filter::default();
        f(&mut filter);
        q(filter)
    };
    assert_eq!(by(|f| f.account = Some("b".into())), "in-band,overloaded");
    assert_eq!(by(|f| f.key = Some("anon".into())), "ok");
    assert_eq!(by(|f| f.model = Some("qwen3.8-max".into())), "in-band");
    assert_eq!(by(|f| f.api = Some("messages")), "in-band");
    assert_eq!(by(|f| f.since_ms = Some(T0 + 1)), "in-band");
    assert_eq!(
        by(|f| f.since_ms = Some(T0)),
        "in-band,overloaded,unauthorized,ok"
    );
    // Every condition must hold.
    assert_eq!(
        by(|f| {
            f.account = Some("b".into());
            f.status = Some(Status::Class(5));
        }),
        "overloaded"
    );
}

// === the query parser ===

fn parse(raw: &str) -> Result<Query, ProxyError> {
    parse_query(raw, 1000, Page::List)
}

fn refused_param(raw: &str, page: Page) -> String {
    match parse_query(raw, 1000, page) {
        Ok(q) => panic!("{raw:?} was accepted: {q:?}"),
        Err(e) => {
            assert_eq!(e.status(), 400, "{raw:?}");
            e.param().unwrap_or("").to_owned()
        }
    }
}

#[test]
fn the_query_parser_reads_every_parameter() {
    let q = parse("").unwrap();
    assert_eq!((q.filter, q.limit), (Filter::default(), DEFAULT_LIMIT));
    let q = parse(
        "status=5xx&errors=only&account=acct%201&key=anon&model=qwen3.7-plus&api=images\
         &since=2026-12-08T13:04:05.250%2B01:00&limit=7",
    )
    .unwrap();
    assert_eq!(
        q.filter,
        Filter {
            status: Some(Status::Class(5)),
            errors_only: true,
            account: Some("acct 1".into()),
            key: Some("anon".into()),
            model: Some("qwen3.7-plus".into()),
            api: Some("images"),
            since_ms: Some(1_796_731_445_250),
        }
    );
    assert_eq!(q.limit, 7);
    assert_eq!(
        parse("status=200").unwrap().filter.status,
        Some(Status::Exact(200))
    );
    assert_eq!(
        parse("status=4XX").unwrap().filter.status,
        Some(Status::Class(4))
    );
    assert_eq!(
        parse("status=error").unwrap().filter.status,
        Some(Status::Error)
    );
    assert_eq!(
        parse("since=1796731445250").unwrap().filter.since_ms,
        Some(1_796_731_445_250)
    );
    // Above the capacity: the capacity; a small log's default: all of it.
    assert_eq!(parse("limit=5000").unwrap().limit, 1000);
    assert_eq!(parse_query("", 2, Page::List).unwrap().limit, 2);
    // The feed takes the filters.
    let feed = parse_query("status=error&api=messages", 1000, Page::Feed).unwrap();
    assert_eq!(feed.filter.api, Some("messages"));
}

#[test]
fn a_bad_or_unknown_parameter_is_a_400_naming_it() {
    for (raw, param) in [
        ("status=600", "status"),
        ("status=20", "status"),
        ("status=ok", "status"),
        ("status=6xx", "status"),
        ("errors=yes", "errors"),
        ("account=", "account"),
        ("api=chat", "api"),
        ("since=yesterday", "since"),
        ("since=2026-02-30T00:00:00Z", "since"),
        ("since=2026-12-08T25:00:00Z", "since"),
        ("since=2026-12-08T10:00:00", "since"),
        ("since=2026-12-08T10:00:00.Z", "since"),
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=many", "limit"),
        ("prompt=x", "prompt"),
        ("status=200&sort=time", "sort"),
    ] {
        assert_eq!(refused_param(raw, Page::List), param, "{raw}");
    }
    // Not for the live feed.
    assert_eq!(refused_param("since=0", Page::Feed), "since");
    assert_eq!(refused_param("limit=5", Page::Feed), "limit");
}

#[test]
fn since_reads_epoch_milliseconds_and_rfc3339() {
    assert_eq!(parse_since("0"), Some(0));
    assert_eq!(parse_since("2026-12-08T23:59:59Z"), Some(1_796_774_399_000));
    assert_eq!(parse_since("2026-12-08 23:59:59z"), Some(1_796_774_399_000));
    assert_eq!(
        parse_since("2027-01-01T00:00:00-05:30"),
        Some(1_798_781_400_000)
    );
    assert_eq!(
        parse_since("2026-12-08T13:04:05.25+01:00"),
        Some(1_796_731_445_250)
    );
    // Digits past the millisecond are dropped.
    assert_eq!(
        parse_since("2026-12-08T13:04:05.2509999+01:00"),
        Some(1_796_731_445_250)
    );
    for bad in [
        "",
        "2026-12-08",
        "2026-12-08T1:00:00Z",
        "2026-12-08T10:00:00+0100",
        "1e3",
    ] {
        assert_eq!(parse_since(bad), None, "{bad:?}");
    }
}

// === minutes ===

/// The start of a minute (2026-12-08T13:04:00Z) and `m` minutes on.
const M0: u64 = 1_796_735_040_000;
fn minute(m: u64) -> u64 {
    M0 + m * 60_000
}

#[test]
fn minutes_count_requests_and_errors_across_minute_boundaries() {
    let mut m = Minutes::default();
    m.record(minute(0), false, Some(100));
    m.record(minute(0) + 59_999, true, None);
    m.record(minute(1), false, Some(300));
    m.record(minute(3) + 1, true, Some(50));
    let hour = m.last_hour(minute(3) + 30_000);
    assert_eq!(hour.per_minute.len(), MINUTES);
    let last: Vec<_> = hour.per_minute[MINUTES - 4..]
        .iter()
        .map(|c| (c.minute, c.requests, c.errors))
        .collect();
    assert_eq!(
        last,
        [
            (minute(0), 2, 1),
            (minute(1), 1, 0),
            (minute(2), 0, 0),
            (minute(3), 1, 1)
        ]
    );
    // Oldest first, one minute apart, zero-filled.
    assert_eq!(hour.per_minute[0].minute, minute(3) - 59 * 60_000);
    assert!(hour
        .per_minute
        .windows(2)
        .all(|w| w[1].minute == w[0].minute + 60_000));
    assert!(hour.per_minute[..MINUTES - 4]
        .iter()
        .all(|c| c.requests == 0));
    assert_eq!((hour.requests, hour.errors, hour.ttft.count), (4, 2, 3));
}

#[test]
fn an_hour_later_a_minute_is_gone_and_its_slot_starts_afresh() {
    let mut m = Minutes::default();
    m.record(minute(0), true, Some(10));
    assert_eq!(
        m.last_hour(minute(59)).requests,
        1,
        "59 minutes on: still in the hour"
    );
    assert_eq!(m.last_hour(minute(60)).requests, 0, "60 minutes on: out");
    // Minute 60 reuses minute 0's slot, cleared first.
    m.record(minute(60), false, None);
    let hour = m.last_hour(minute(60));
    assert_eq!((hour.requests, hour.errors, hour.ttft.count), (1, 0, 0));
    // A clock that steps back to minute 0 does not count into minute 60's slot.
    m.record(minute(0), true, None);
    assert_eq!(m.last_hour(minute(60)).requests, 1);
}

#[test]
fn buckets_are_inclusive_upper_bounds_capped_at_120_s() {
    assert_eq!(TTFT_BOUNDS_MS.len(), 37);
    assert!(TTFT_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
    // The documented resolution: from 10 ms on, a bound is at most 1.43 × the one before
    // (a true value just above the lower bound is reported at most 43 % high); below, at
    // most 3 ms apart (2 ms high).
    for w in TTFT_BOUNDS_MS.windows(2) {
        if w[0] >= 10 {
            assert!(w[1] * 100 <= w[0] * 143, "{w:?}");
        } else {
            assert!(w[1] - w[0] <= 3, "{w:?}");
        }
    }
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(1), 0);
    assert_eq!(bucket_of(2), 1);
    assert_eq!(TTFT_BOUNDS_MS[bucket_of(101)], 110);
    assert_eq!(TTFT_BOUNDS_MS[bucket_of(110)], 110);
    assert_eq!(TTFT_BOUNDS_MS[bucket_of(111)], 150);
    assert_eq!(TTFT_BOUNDS_MS[bucket_of(120_000)], 120_000);
    assert_eq!(TTFT_BOUNDS_MS[bucket_of(10_000_000)], 120_000);
}

#[test]
fn percentiles_are_the_nearest_rank_buckets_upper_bound() {
    let mut hist = [0u64; TTFT_BOUNDS_MS.len()];
    assert_eq!(percentile(&hist, 50), None);
    // 50 × 100 ms, 49 × 1 s, 1 × 50 s.
    hist[bucket_of(100)] += 50;
    hist[bucket_of(1_000)] += 49;
    hist[bucket_of(50_000)] += 1;
    assert_eq!(percentile(&hist, 50), Some(110));
    assert_eq!(percentile(&hist, 51), Some(1_100));
    assert_eq!(percentile(&hist, 99), Some(1_100));
    assert_eq!(percentile(&hist, 100), Some(64_000));
    // One sample: every percentile is its bucket.
    let mut one = [0u64; TTFT_BOUNDS_MS.len()];
    one[bucket_of(7)] = 1;
    assert_eq!(
        (percentile(&one, 50), percentile(&one, 99)),
        (Some(7), Some(7))
    );
}

#[test]
fn the_last_hours_percentiles_merge_every_minute() {
    let mut m = Minutes::default();
    // Minute 0: 99 fast answers; minute 30: one slow one.
    for _ in 0..99 {
        m.record(minute(0), false, Some(30));
    }
    m.record(minute(30), false, Some(9_000));
    m.record(minute(30), true, None);
    let hour = m.last_hour(minute(30));
    assert_eq!(hour.ttft.count, 100);
    assert_eq!(hour.ttft.p50, Some(40));
    assert_eq!(hour.ttft.p99, Some(40));
    assert_eq!((hour.requests, hour.errors), (101, 1));
    // 31 minutes on, minute 0 has left the hour: the slow one is all that is left.
    let later = m.last_hour(minute(60));
    assert_eq!((later.ttft.count, later.ttft.p50), (1, Some(11_000)));
}

// === the recorder ===

fn kinds(api: Api, _: &ProxyError) -> &'static str {
    match api {
        Api::Anthropic => "anthropic_type",
        _ => "openai_type",
    }
}

#[test]
fn the_recorder_keeps_what_it_is_told() {
    let r = Recorder::new(Api::Anthropic, kinds);
    r.key("f00d");
    r.asked("my\nmodel", true);
    assert_eq!(r.take().model.as_deref(), Some("my model"), "cleaned");
    r.asked("claude-x", true);
    r.resolved("qwen3.7-plus");
    r.attempt("a", "c1");
    r.account("b");
    r.first_token(Duration::from_millis(1500));
    r.tokens(1, 2, None);
    r.tokens(10, 20, Some(5));
    r.retries(1);
    r.retries(2);
    r.moved();
    r.failed(&ProxyError::upstream(UpstreamClass::Overloaded, "busy"));
    r.closed_early();
    let fill = r.take();
    assert_eq!(fill.model.as_deref(), Some("qwen3.7-plus"));
    assert!(fill.stream);
    assert_eq!(
        (fill.account.as_deref(), fill.chat.as_deref()),
        (Some("b"), None),
        "a new account's chat is not known yet"
    );
    assert_eq!(fill.ttft_ms, Some(1500));
    assert_eq!(
        fill.tokens,
        Some(record::Tokens {
            input: 11,
            output: 22,
            reasoning: Some(5)
        })
    );
    assert_eq!((fill.retries, fill.moved), (3, 1));
    assert_eq!(
        fill.error,
        Some(("anthropic_type", Some("upstream_overloaded"))),
        "an error sent first stays"
    );
    // Taken: empty again; a client that leaves is said so.
    r.closed_early();
    assert_eq!(r.take().error, Some(("client_closed", None)));
    // Inert: nothing to tell.
    let inert = Recorder::default();
    inert.key("x");
    assert_eq!(inert.take(), record::Fill::default());
}

// === the live feed ===

/// The next frame's text (`None` at the end), within 5 s of (paused) time.
async fn frame(feed: &mut Feed) -> Option<String> {
    let f = tokio::time::timeout(Duration::from_secs(5), feed.frame())
        .await
        .expect("a frame")?;
    Some(String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn the_feed_says_hello_then_sends_matching_entries_and_keeps_alive() {
    let log = RequestLog::new(10);
    let (drain, drained) = tokio::sync::oneshot::channel::<()>();
    let filter = Filter {
        status: Some(Status::Error),
        ..Filter::default()
    };
    let mut feed = Feed::new(
        log.subscribe(),
        filter,
        10,
        Duration::from_secs(15),
        async {
            let _ = drained.await;
        },
    );
    assert_eq!(
        frame(&mut feed).await.unwrap(),
        "event: hello\ndata: {\"capacity\":10}\n\n"
    );
    let mut failed = entry("failed");
    failed.status = 502;
    log.record(entry("ok"));
    log.record(failed);
    let text = frame(&mut feed).await.unwrap();
    let data = text
        .strip_prefix("event: request\ndata: ")
        .and_then(|t| t.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{text:?}"));
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["status"].as_u64()),
        (Some("failed"), Some(502))
    );
    // Quiet: a keep-alive after 15 s.
    let quiet = tokio::time::timeout(Duration::from_secs(14), feed.frame()).await;
    assert!(quiet.is_err(), "nothing before 15 s");
    assert_eq!(frame(&mut feed).await.unwrap(), ": keep-alive\n\n");
    // The instance drains: the feed ends.
    drain.send(()).unwrap();
    assert_eq!(frame(&mut feed).await, None);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_falls_behind_skips_and_is_told() {
    let log = RequestLog::new(10);
    let mut feed = Feed::new(
        log.subscribe(),
        Filter::default(),
        10,
        Duration::from_secs(15),
        std::future::pending(),
    );
    assert!(frame(&mut feed).await.unwrap().starts_with("event: hello"));
    for i in 0..FEED_CAPACITY + 5 {
        log.record(entry(&format!("r{i}")));
    }
    assert_eq!(
        frame(&mut feed).await.unwrap(),
        ": skipped 5 entries (this feed fell behind)\n\n"
    );
    let next = frame(&mut feed).await.unwrap();
    assert!(next.contains("\"id\":\"r5\""), "{next}");
    // The log is gone: the feed ends.
    drop(log);
    for _ in 0..FEED_CAPACITY - 1 {
        assert!(frame(&mut feed)
            .await
            .unwrap()
            .starts_with("event: request"));
    }
    assert_eq!(frame(&mut feed).await, None);
}
