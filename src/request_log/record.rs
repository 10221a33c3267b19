//! What a request's handlers tell the request log while it runs: a [`Recorder`], shared
//! through the request's extensions (the retry layer's attempts and the images' turns copy
//! the extensions, so they all tell the same one). A request outside the log (another route,
//! a unit test) gets an inert one: every call is then a no-op, and nobody needs to ask.
//!
//! Each call takes the recorder's lock once; they happen a few times per request (the key,
//! the model, each attempt's account and chat, the first token, the tokens, the end), never
//! per streamed chunk.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::http::Extensions;

use crate::error::ProxyError;
use crate::routes::Api;

/// How a client API names an error's `type` in its error body (`api::error_type`); handed
/// to the log by the stack, because the log sits below the client APIs.
pub(crate) type ErrorKinds = fn(Api, &ProxyError) -> &'static str;

/// The `error_type` of a request whose client left before its response ended.
pub(crate) const CLIENT_CLOSED: &str = "client_closed";

/// One request's record in the making (cheap to clone: an `Arc`, or nothing when inert).
#[derive(Clone, Default)]
pub(crate) struct Recorder(Option<Arc<Shared>>);

struct Shared {
    /// The route's client API: whose error types the error gets.
    api: Api,
    kinds: ErrorKinds,
    fill: Mutex<Fill>,
}

/// What is known of the request so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fill {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    pub(crate) key: Option<String>,
    pub(crate) account: Option<String>,
    pub(crate) chat: Option<String>,
    /// The error's `type` in the client's body and the proxy's code.
    pub(crate) error: Option<(&'static str, Option<&'static str>)>,
    pub(crate) ttft_ms: Option<u64>,
    pub(crate) tokens: Option<Tokens>,
    pub(crate) retries: u32,
    pub(crate) moved: u32,
}

/// The tokens of the answers the client got, as their `usage` said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) input: u64,
    pub(crate) output: u64,
    /// Unknown when the upstream did not report reasoning.
    pub(crate) reasoning: Option<u64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(shared) => write!(f, "Recorder({:?})", shared.lock()),
            None => f.write_str("Recorder(inert)"),
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Fill> {
        // Nothing panics under this lock; a poisoned one still holds consistent data.
        self.fill.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Recorder {
    /// The recorder of a request on a route of client API `api`.
    pub(crate) fn new(api: Api, kinds: ErrorKinds) -> Self {
        Recorder(Some(Arc::new(Shared {
            api,
            kinds,
            fill: Mutex::default(),
        })))
    }

    /// The request's recorder, from its extensions (inert when it is not logged).
    pub(crate) fn of(extensions: &Extensions) -> Self {
        extensions.get::<Recorder>().cloned().unwrap_or_default()
    }

    fn with(&self, f: impl FnOnce(&mut Fill)) {
        if let Some(shared) = &self.0 {
            f(&mut shared.lock());
        }
    }

    /// The accepted API key's fingerprint, or `anon`.
    pub(crate) fn key(&self, fingerprint: &str) {
        self.with(|r| r.key = Some(fingerprint.to_owned()));
    }

    /// The request as parsed: the model the client named (cleaned, cut) and whether it
    /// asked for a stream.
    pub(crate) fn asked(&self, model: &str, stream: bool) {
        self.with(|r| {
            r.model = Some(crate::usage::clean_name(model));
            r.stream = stream;
        });
    }

    /// The model as resolved to the upstream's.
    pub(crate) fn resolved(&self, model: &str) {
        self.with(|r| r.model = Some(crate::usage::clean_name(model)));
    }

    /// An attempt took `account` (its chat is not known yet).
    pub(crate) fn account(&self, account: &str) {
        self.with(|r| {
            r.account = Some(account.to_owned());
            r.chat = None;
        });
    }

    /// The attempt's account and upstream chat, together: the image turns of one request
    /// run at once, and an entry must not pair one turn's account with another's chat.
    pub(crate) fn attempt(&self, account: &str, chat_id: &str) {
        self.with(|r| {
            r.account = Some(account.to_owned());
            r.chat = Some(chat_id.to_owned());
        });
    }

    /// The answer began `since_arrival` after the request arrived (the answer the client
    /// gets: a later one replaces an earlier one that was asked again).
    pub(crate) fn first_token(&self, since_arrival: Duration) {
        self.with(|r| r.ttft_ms = Some(since_arrival.as_millis() as u64));
    }

    /// A completed answer's tokens (summed over the turns of a request that has several:
    /// `n` images).
    pub(crate) fn tokens(&self, input: u64, output: u64, reasoning: Option<u64>) {
        self.with(|r| {
            let t = r.tokens.get_or_insert_with(Tokens::default);
            t.input = t.input.saturating_add(input);
            t.output = t.output.saturating_add(output);
            t.reasoning = match (t.reasoning, reasoning) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
            };
        });
    }

    /// The retry layer's attempts after the first (summed over a request's turns).
    pub(crate) fn retries(&self, n: u32) {
        self.with(|r| r.retries = r.retries.saturating_add(n));
    }

    /// The turn moved to another account.
    pub(crate) fn moved(&self) {
        self.with(|r| r.moved = r.moved.saturating_add(1));
    }

    /// The client got `e`: as its response, or in-band after the 200.
    pub(crate) fn failed(&self, e: &ProxyError) {
        if let Some(shared) = &self.0 {
            let kind = (shared.kinds)(shared.api, e);
            shared.lock().error = Some((kind, e.code()));
        }
    }

    /// The client got an error this log names itself (a panic's 500).
    pub(crate) fn failed_as(&self, kind: &'static str, code: Option<&'static str>) {
        self.with(|r| r.error = Some((kind, code)));
    }

    /// The client left before the response ended: said so unless an error was sent first.
    pub(crate) fn closed_early(&self) {
        self.with(|r| {
            r.error.get_or_insert((CLIENT_CLOSED, None));
        });
    }

    /// Everything told so far (the recorder is left empty).
    pub(crate) fn take(&self) -> Fill {
        let mut fill = Fill::default();
        self.with(|r| fill = std::mem::take(r));
        fill
    }
}
