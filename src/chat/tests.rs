//! The core's turn loop (`converse::TurnState`), driven step by step against an upstream
//! (the in-process simulator) — written by the turn-state unit tests.
//!
//! Each test builds an `AppState` over a simulator on a loopback port, walks one request's
//! turn through `begin` → `attempt` → `after_failure` / `ask_again` → `attempt`, and checks
//! where the turn goes (`prepared()`) against what the simulator saw (its chats, turns and
//! accounts), never against values only the code under test computed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::converse::TurnState;
use super::respond::Answered;
use super::Bookkeeping;
use crate::api::openai::{request::parse, OpenAi};
use crate::app::AppState;
use crate::config::Config;
use crate::conversation::budget::RequestChats;
use crate::conversation::{ChatTarget, Prepared};
use crate::error::{ProxyError, UpstreamClass as C};
use crate::sim::{SimConfig, Simulator};
use crate::tools::prompt::Hint;
use crate::turn::plan::{plan, Plan};
use crate::turn::{ApiRequest, ClientApi};

const MODEL: &str = "qwen3.7-plus";
/// The sentence of the `NoCall` hint, written out independently of `Hint::text`.
const NO_CALL_HINT: &str = "Your previous reply did not call a tool, but this reply must.";

/// A proxy's state over its own simulator (chats stay busy `linger_ms` after an answer).
struct Rig {
    sim: Simulator,
    state: Arc<AppState>,
    http: Client<HttpConnector, Full<Bytes>>,
    accounts_dir: Option<std::path::PathBuf>,
}

/// One parsed request, its plan and its chat ledger (what `TurnState` borrows).
struct Req {
    api: ApiRequest<<OpenAi as ClientApi>::Options>,
    plan: Plan,
    chats: RequestChats,
    books: Bookkeeping,
}

impl Rig {
    /// `accounts`: browser-session accounts `NAME` (token `tok-NAME`); none: the single
    /// account of token `test-token`.
    async fn start(linger_ms: u64, accounts: &[&str], env: &[(&str, &str)]) -> Rig {
        let config = SimConfig {
            linger: Duration::from_millis(linger_ms),
            ..SimConfig::default()
        };
        let sim = Simulator::serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), config);
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert("QWEN_BASE_URL".into(), sim.base_url());
        vars.insert("QWEN_AUTH_BASE_URL".into(), sim.base_url());
        vars.insert("RETRY_INITIAL_DELAY".into(), "10".into());
        vars.insert("RETRY_MAX_DELAY".into(), "40".into());
        // These tests count the upstream's chats: none made ahead.
        vars.insert("CHAT_POOL_SIZE".into(), "0".into());
        let accounts_dir = (!accounts.is_empty()).then(|| accounts_file(accounts));
        match &accounts_dir {
            None => vars.insert("QWEN_COOKIES".into(), "token=test-token; other=1".into()),
            Some(dir) => vars.insert("QWEN_ACCOUNTS_FILE".into(), path_in(dir)),
        };
        for (k, v) in env {
            vars.insert((*k).into(), (*v).into());
        }
        let config = Config::from_source(&vars, false).expect("valid test config");
        let http = Client::builder(TokioExecutor::new()).build_http();
        let state = AppState::new(config);
        Rig {
            sim,
            state,
            http,
            accounts_dir,
        }
    }

    async fn req(&self, body: Value) -> Req {
        let api = parse(body.to_string().as_bytes()).unwrap();
        let plan = plan(&api.turn, &self.state.catalog().await.unwrap(), &[]).unwrap();
        let chats = RequestChats::new(self.state.config.conversations.chats_per_request);
        let books = Bookkeeping {
            client: "client-1".to_owned(),
            ..Bookkeeping::default()
        };
        Req {
            api,
            plan,
            chats,
            books,
        }
    }

    async fn begin<'a>(&'a self, req: &'a Req) -> TurnState<'a, OpenAi> {
        let (api, plan) = (&req.api, &req.plan);
        TurnState::begin(
            &self.state,
            api,
            "client-1",
            &req.books,
            Instant::now(),
            &req.chats,
            plan,
        )
        .await
    }

    /// A whole request through `run`: the answer's message.
    async fn turn(&self, body: Value) -> Value {
        let req = self.req(body).await;
        answered(self.begin(&req).await.run().await.map(Answered::Response)).await
    }

    /// A conversation's first turn ("one"); its answer.
    async fn first_turn(&self) -> String {
        let a1 = self.turn(ask(&[user("one")])).await;
        a1["content"].as_str().unwrap().to_owned()
    }

    /// The conversation's second request: "one", `a1`, then `said`.
    async fn second(&self, a1: &str, said: &str) -> Req {
        let messages = [
            user("one"),
            json!({"role": "assistant", "content": a1}),
            user(said),
        ];
        self.req(ask(&messages)).await
    }

    /// A call to the simulator: its stats, control and chat endpoints.
    async fn sim(&self, method: &str, path: &str, token: &str, body: String) -> Value {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.sim.base_url()))
            .header("cookie", format!("token={token}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let rsp = self.http.request(req).await.unwrap();
        serde_json::from_slice(&rsp.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    async fn stats(&self) -> Value {
        self.sim("GET", "/__sim/stats", "", String::new()).await
    }

    /// The simulator's only chat: its id and its turns.
    async fn only_chat(&self) -> (String, Vec<Value>) {
        let stats = self.stats().await;
        let chats = stats["chats"].as_object().unwrap();
        assert_eq!(chats.len(), 1, "{stats}");
        let (id, chat) = chats.iter().next().unwrap();
        (id.clone(), chat["turns"].as_array().unwrap().clone())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(dir) = &self.accounts_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An accounts file (mode 0600, as the proxy requires) in a fresh directory.
fn accounts_file(names: &[&str]) -> std::path::PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir().join(format!("qp-chat-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let account = |n: &&str| {
        let cookies = format!("other=1; token=tok-{n}");
        json!({"name": n, "cookies": cookies, "min_interval_ms": 0})
    };
    let list: Vec<Value> = names.iter().map(account).collect();
    let mut options = std::fs::OpenOptions::new();
    let file = options.write(true).create_new(true).mode(0o600);
    serde_json::to_writer(file.open(dir.join("accounts.json")).unwrap(), &list).unwrap();
    dir
}

fn path_in(dir: &std::path::Path) -> String {
    dir.join("accounts.json").to_str().unwrap().to_owned()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn ask(messages: &[Value]) -> Value {
    json!({"model": MODEL, "stream": false, "messages": messages})
}

/// The simulator's default answer (README "Simulator"), written out independently.
fn expected_answer(said: &str) -> String {
    format!("Simulated answer — 模拟回答: you said \"{said}\".")
}

/// The message of an attempt that must have answered (not streamed).
async fn answered(result: Result<Answered, ProxyError>) -> Value {
    let rsp = match result {
        Ok(Answered::Response(rsp)) => rsp,
        Ok(Answered::RetryWithHint(h)) => panic!("asked again with {h:?}"),
        Err(e) => panic!("failed: {e:?}"),
    };
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["choices"][0]["message"].is_object(), "{v}");
    v["choices"][0]["message"].clone()
}

/// The error of an attempt that must have failed with `class`.
fn failed(result: Result<Answered, ProxyError>, class: C) -> ProxyError {
    match result {
        Err(e) if e.upstream_class() == Some(class) => e,
        Err(e) => panic!("expected {class:?}, got {e:?}"),
        Ok(_) => panic!("answered, though {class:?} was expected"),
    }
}

/// The hint of an attempt that must have been asked again.
fn retried(result: Result<Answered, ProxyError>) -> Hint {
    match result {
        Ok(Answered::RetryWithHint(hint)) => hint,
        Ok(Answered::Response(_)) => panic!("answered without asking again"),
        Err(e) => panic!("failed: {e:?}"),
    }
}

/// The chat and parent an existing target points at.
fn existing(p: &Prepared) -> (String, Option<String>) {
    match &p.target {
        ChatTarget::Existing { chat_id, parent_id } => (chat_id.clone(), parent_id.clone()),
        ChatTarget::NewChat => panic!("expected an existing chat, got a new one"),
    }
}

/// A fresh chat with the history folded, on whichever account.
fn assert_fresh(p: &Prepared) {
    let what = (&p.target, &p.continued_from, &p.account);
    assert_eq!(what, (&ChatTarget::NewChat, &None, &None));
}

/// Attempts until one is not refused as busy (the simulator keeps a chat busy for its
/// linger after each answer), each busy answer followed by its fallback.
async fn past_busy(t: &mut TurnState<'_, OpenAi>) -> Result<Answered, ProxyError> {
    for _ in 0..5 {
        match t.attempt().await {
            Err(e) if e.upstream_class() == Some(C::ChatInProgress) => {
                t.after_failure(e).await.unwrap();
            }
            other => return other,
        }
    }
    t.attempt().await
}

/// A simulator counter (0 when absent).
fn n(counter: &Value) -> u64 {
    counter.as_u64().unwrap_or(0)
}

// === busy chats ===

#[tokio::test]
async fn a_busy_continued_chat_is_waited_for_in_the_same_chat_and_then_answers() {
    let rig = Rig::start(20, &[], &[]).await;
    let a1 = rig.first_turn().await;
    let (chat, turns) = rig.only_chat().await;
    let r1 = turns[0]["response_id"].as_str().map(str::to_owned);
    // The simulator refuses the chat's next two completions as busy, whatever the time.
    let req = rig.second(&a1, "two @@sim:in_progress=3").await;
    let mut t = rig.begin(&req).await;
    assert_eq!(existing(t.prepared()), (chat.clone(), r1.clone()));
    for _ in 0..2 {
        let e = failed(t.attempt().await, C::ChatInProgress);
        t.after_failure(e).await.unwrap();
        // A short learned window: wait, then the same turn into the same chat again.
        assert_eq!(existing(t.prepared()), (chat.clone(), r1.clone()));
        assert!(t.prepared().continued_from.is_some());
    }
    let answer = answered(t.attempt().await).await;
    assert_eq!(answer["content"], expected_answer("two"));
    let stats = rig.stats().await;
    let counts = (n(&stats["chats_created"]), n(&stats["busy_refusals"]));
    assert_eq!(counts, (1, 2), "{stats}");
    let (_, turns) = rig.only_chat().await;
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1]["parent_id"].as_str(), r1.as_deref());
}

#[tokio::test]
async fn begin_leaves_a_chat_the_learned_window_keeps_busy_longer_than_a_fresh_chat_takes() {
    let rig = Rig::start(5_000, &[], &[]).await;
    let a1 = rig.first_turn().await;
    // Earlier turns found chats busy 0.9 s and 1.7 s after their answers: a window of
    // 3.4 s, far more than `chats/new` (a few ms here) plus the chat left behind (1 s).
    rig.state
        .conversations
        .saw_chat(Duration::from_millis(900), true);
    rig.state
        .conversations
        .saw_chat(Duration::from_millis(1_700), true);
    let req = rig.second(&a1, "two").await;
    let mut t = rig.begin(&req).await;
    assert_fresh(t.prepared());
    assert!(
        t.prepared().content.contains("one"),
        "the history is folded"
    );
    let answer = answered(t.attempt().await).await;
    assert_eq!(answer["content"], expected_answer("two"));
    let stats = rig.stats().await;
    assert_eq!(n(&stats["chats_created"]), 2, "{stats}");
    assert_eq!(n(&stats["busy_refusals"]), 0, "the busy chat is not tried");
}

#[tokio::test]
async fn a_busy_answer_that_teaches_a_long_window_sends_the_turn_to_a_fresh_chat() {
    // Takes real time: a fresh chat pays only once the rest of the window exceeds
    // `chats/new` + 1 s (the chat left behind) + 0.2 s, and a busy answer teaches at most
    // twice its time after the answer. The simulator keeps the chat busy for 4 s.
    let rig = Rig::start(4_000, &[], &[]).await;
    let a1 = rig.first_turn().await;
    let (chat, _) = rig.only_chat().await;
    // A window of 0.8 s learned earlier: busy answers up to 2.6 s after an answer count.
    rig.state
        .conversations
        .saw_chat(Duration::from_millis(400), true);
    // The client comes back 1.5 s after the answer: past the learned window, so it is sent.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let req = rig.second(&a1, "two").await;
    let mut t = rig.begin(&req).await;
    assert_eq!(existing(t.prepared()).0, chat);
    let e = failed(t.attempt().await, C::ChatInProgress);
    // Busy 1.5 s after the answer: a 3 s window, 1.5 s left; a fresh chat is faster.
    t.after_failure(e).await.unwrap();
    assert_fresh(t.prepared());
    let answer = answered(t.attempt().await).await;
    assert_eq!(answer["content"], expected_answer("two"));
    let stats = rig.stats().await;
    let counts = (n(&stats["chats_created"]), n(&stats["busy_refusals"]));
    assert_eq!(counts, (2, 1), "{stats}");
    let left = rig.state.metrics.chats_left.with_label_values(&["busy"]);
    assert_eq!(left.get(), 1);
}

// === lost chats ===

/// A conversation's first turn, then its chat deleted upstream (in the browser, say): the
/// second turn's request, and the chat.
async fn lost_chat(rig: &Rig) -> (Req, String) {
    let a1 = rig.first_turn().await;
    let (chat, _) = rig.only_chat().await;
    let path = format!("/api/v2/chats/{chat}");
    let deleted = rig.sim("DELETE", &path, "test-token", String::new()).await;
    assert_eq!(deleted["success"], true, "{deleted}");
    (rig.second(&a1, "two").await, chat)
}

#[tokio::test]
async fn a_lost_chat_is_forgotten_and_the_turn_goes_to_a_fresh_chat_at_once() {
    let rig = Rig::start(20, &[], &[]).await;
    let (req, chat) = lost_chat(&rig).await;
    let mut t = rig.begin(&req).await;
    assert_eq!(existing(t.prepared()).0, chat);
    assert!(
        !t.prepared().content.contains("one"),
        "only the new message"
    );
    let e = failed(t.attempt().await, C::ChatNotFound);
    t.after_failure(e).await.unwrap();
    assert_fresh(t.prepared());
    assert!(t.prepared().content.contains("one"), "the whole history");
    // Forgotten: the same request now begins in a fresh chat.
    assert_eq!(rig.begin(&req).await.prepared().target, ChatTarget::NewChat);
    let answer = answered(t.attempt().await).await;
    assert_eq!(answer["content"], expected_answer("two"));
    assert_eq!(n(&rig.stats().await["chats_created"]), 2);
}

#[tokio::test]
async fn a_second_lost_chat_or_parent_fails_the_turn_with_its_error() {
    let rig = Rig::start(20, &[], &[]).await;
    let (req, _) = lost_chat(&rig).await;
    let mut t = rig.begin(&req).await;
    let e = failed(t.attempt().await, C::ChatNotFound);
    t.after_failure(e).await.unwrap();
    assert_fresh(t.prepared());
    // The fresh chat's completion gets a lost parent (the simulator replays that answer).
    let details = "Invalid input chat parent_id p is not exist.";
    let gone = crate::sim::wire::bad_request_json("r", "Bad_Request", details);
    assert_eq!(
        rig.sim("POST", "/__sim/replay", "", gone).await["queued"],
        true
    );
    let e = failed(t.attempt().await, C::ParentNotFound);
    let e = t.after_failure(e).await.expect_err("no second fresh chat");
    assert_eq!(e.upstream_class(), Some(C::ParentNotFound), "{e:?}");
    assert_eq!(n(&rig.stats().await["chats_created"]), 2);
}

// === accounts ===

/// The account (`a` or `b`) that holds the simulator's chats, and the other one.
async fn owner_and_other(rig: &Rig) -> (&'static str, &'static str) {
    let stats = rig.stats().await;
    match (
        n(&stats["accounts"]["tok-a"]["chats_created"]),
        n(&stats["accounts"]["tok-b"]["chats_created"]),
    ) {
        (1, 0) => ("a", "b"),
        (0, 1) => ("b", "a"),
        _ => panic!("one chat on one account expected: {stats}"),
    }
}

#[tokio::test]
async fn a_turn_refused_for_quota_moves_to_a_fresh_chat_on_another_account() {
    let rig = Rig::start(20, &["a", "b"], &[]).await;
    let a1 = rig.first_turn().await;
    let (first, other) = owner_and_other(&rig).await;
    // The chat's account runs out of quota upstream.
    let path = format!("/__sim/accounts/tok-{first}/quota?hours=1");
    assert_eq!(
        rig.sim("POST", &path, "", String::new()).await["applied"],
        "quota"
    );
    let req = rig.second(&a1, "two").await;
    let mut t = rig.begin(&req).await;
    assert_eq!(t.prepared().account.as_deref(), Some(first));
    let e = failed(past_busy(&mut t).await, C::RateLimited);
    t.after_failure(e).await.unwrap();
    assert_fresh(t.prepared());
    let answer = answered(t.attempt().await).await;
    assert_eq!(answer["content"], expected_answer("two"));
    assert_eq!(t.prepared().account.as_deref(), Some(other));
    // The cooled account is not called again, by this request or the next.
    rig.turn(ask(&[user("another conversation")])).await;
    let stats = &rig.stats().await["accounts"];
    let first = format!("tok-{first}");
    let counts = (
        n(&stats[&first]["completions"]),
        n(&stats[&first]["refused"]),
    );
    assert_eq!(counts, (2, 1), "{stats}");
    assert_eq!(
        n(&stats[&format!("tok-{other}")]["chats_created"]),
        2,
        "{stats}"
    );
}

#[tokio::test]
async fn begin_moves_a_chat_whose_account_cannot_take_turns_to_a_fresh_chat() {
    let rig = Rig::start(20, &["a", "b"], &[]).await;
    let a1 = rig.first_turn().await;
    let (first, other) = owner_and_other(&rig).await;
    // An operator disables the chat's account.
    rig.state.accounts.set_enabled(first, false).await.unwrap();
    let req = rig.second(&a1, "two").await;
    let mut t = rig.begin(&req).await;
    assert_fresh(t.prepared());
    let answer = answered(t.attempt().await).await;
    assert_eq!(answer["content"], expected_answer("two"));
    assert_eq!(t.prepared().account.as_deref(), Some(other));
    let stats = &rig.stats().await["accounts"];
    assert_eq!(
        n(&stats[&format!("tok-{first}")]["completions"]),
        1,
        "{stats}"
    );
}

// === tool-call retries ===

fn with_tools(messages: &[Value], choice: &str) -> Value {
    let weather = json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
        "required": ["city"]}}});
    json!({"model": MODEL, "stream": false, "messages": messages, "tools": [weather],
        "tool_choice": choice})
}

fn called(message: &Value) -> &str {
    message["tool_calls"][0]["function"]["name"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_new_chats_answer_without_the_required_call_is_asked_again_in_a_fresh_chat() {
    let rig = Rig::start(20, &[], &[]).await;
    let req = rig
        .req(with_tools(&[user("Just chat with me.")], "required"))
        .await;
    let mut t = rig.begin(&req).await;
    assert_fresh(t.prepared());
    let sent = t.prepared().content.clone();
    // The simulated model answers in prose, which `required` refuses.
    let hint = retried(t.attempt().await);
    assert_eq!(hint, Hint::NoCall);
    t.ask_again(hint);
    assert_fresh(t.prepared());
    let content = &t.prepared().content;
    assert!(
        content.starts_with(&sent),
        "the same fold, the hint after it"
    );
    assert_eq!(content.matches(NO_CALL_HINT).count(), 1, "{content}");
    let answer = answered(t.attempt().await).await;
    assert_eq!(called(&answer), "get_weather", "{answer}");
    let stats = rig.stats().await;
    assert_eq!(n(&stats["chats_created"]), 2, "a fresh chat: {stats}");
}

#[tokio::test]
async fn a_continued_chats_answer_without_the_required_call_is_asked_again_in_that_chat() {
    let rig = Rig::start(20, &[], &[]).await;
    let first = user(r#"Weather? @@sim:call=get_weather,{"city":"Oslo"}"#);
    let m1 = rig
        .turn(with_tools(std::slice::from_ref(&first), "auto"))
        .await;
    assert_eq!(called(&m1), "get_weather", "{m1}");
    let (chat, turns) = rig.only_chat().await;
    let r1 = turns[0]["response_id"].as_str().map(str::to_owned);
    // The result carries no directive: the model answers in prose, which `required` refuses.
    let id = m1["tool_calls"][0]["id"].clone();
    let result = json!({"role": "tool", "tool_call_id": id, "content": "rain"});
    let req = rig.req(with_tools(&[first, m1, result], "required")).await;
    let mut t = rig.begin(&req).await;
    assert_eq!(existing(t.prepared()), (chat.clone(), r1.clone()));
    let sent = t.prepared().content.clone();
    let hint = retried(past_busy(&mut t).await);
    t.ask_again(hint);
    // The same turn again, as a sibling of the first answer: same chat, same parent.
    assert_eq!(existing(t.prepared()), (chat, r1.clone()));
    assert!(t.prepared().continued_from.is_some());
    let content = &t.prepared().content;
    assert!(
        content.starts_with(&sent),
        "the same turn, the hint after it"
    );
    assert_eq!(content.matches(NO_CALL_HINT).count(), 1, "{content}");
    assert_eq!(
        called(&answered(past_busy(&mut t).await).await),
        "get_weather"
    );
    let (_, turns) = rig.only_chat().await;
    assert_eq!(turns.len(), 3, "{turns:?}");
    let parents = [
        turns[1]["parent_id"].as_str(),
        turns[2]["parent_id"].as_str(),
    ];
    assert_eq!(parents, [r1.as_deref(); 2]);
}

// === stateless mode ===

#[tokio::test]
async fn begin_in_stateless_mode_always_opens_a_fresh_chat_with_the_history() {
    let rig = Rig::start(20, &[], &[("CONVERSATION_MODE", "stateless")]).await;
    let a1 = rig.first_turn().await;
    let req = rig.second(&a1, "two").await;
    let mut t = rig.begin(&req).await;
    assert_fresh(t.prepared());
    let content = &t.prepared().content;
    assert!(
        content.contains("one") && content.contains("two"),
        "{content}"
    );
    let answer = answered(t.attempt().await).await;
    assert_eq!(answer["content"], expected_answer("two"));
    assert_eq!(n(&rig.stats().await["chats_created"]), 2);
}
