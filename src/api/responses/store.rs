//! Stored responses (`store: true`, the API's default): the `response` object for `GET
//! /v1/responses/{id}`, the turn's own input and output as messages for a later
//! `previous_response_id`, and each output item by id for the AI SDK's `item_reference`.
//!
//! In memory, bounded: the oldest go first past [`MAX_BYTES`], and none outlives [`TTL`].
//! A response links to its predecessor instead of copying the history, so a long chain
//! costs what its turns cost once. It lives on the instance that answered: behind a load
//! balancer without affinity a continuation may land where its predecessor is unknown, and
//! is told so (a 400 naming `previous_response_id` or the item) — never answered on a
//! history cut short. Codex sends `store: false` and its whole history every turn.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::encoder::Item;
use super::request::{call_message, merge_calls};
use super::tools::{custom_arguments, flat_name};
use crate::error::ProxyError;
use crate::turn::{CalledTool, Message, Role};

mod footprint;

/// The most bytes kept: what the responses, their messages and items cost the allocator
/// (`footprint`).
pub const MAX_BYTES: usize = 128 * 1024 * 1024;
/// How long a response is kept.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest chain of `previous_response_id` followed.
const MAX_CHAIN: usize = 10_000;

#[derive(Debug)]
struct Stored {
    object: Bytes,
    previous: Option<String>,
    /// The request's own input (without its instructions, without the history it
    /// continued), then the output, as messages.
    messages: Vec<Message>,
    items: Vec<String>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    responses: HashMap<String, Stored>,
    items: HashMap<String, Message>,
    /// Ids in the order they were saved, with when.
    order: VecDeque<(Instant, String)>,
    bytes: usize,
}

/// The stored responses of this instance.
#[derive(Debug)]
pub struct ResponseStore {
    inner: Mutex<Inner>,
    max_bytes: usize,
    ttl: Duration,
}

impl Default for ResponseStore {
    fn default() -> Self {
        Self::new(MAX_BYTES, TTL)
    }
}

/// An output item as the message a later turn's history holds (reasoning holds nothing).
fn item_message(item: &Item) -> Option<Message> {
    match item {
        Item::Reasoning { .. } => None,
        Item::Message { text, .. } => Some(Message::text_message(Role::Assistant, text.clone())),
        Item::FunctionCall {
            call_id,
            name,
            namespace,
            arguments,
            ..
        } => Some(call_message(CalledTool {
            id: call_id.clone(),
            name: flat_name(namespace.as_deref(), name),
            arguments: arguments.clone(),
        })),
        Item::CustomToolCall {
            call_id,
            name,
            input,
            ..
        } => Some(call_message(CalledTool {
            id: call_id.clone(),
            name: name.clone(),
            arguments: custom_arguments(input),
        })),
    }
}

impl ResponseStore {
    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (each step is one insert or
        // remove); keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep a finished response: its object, the turn's own input messages and its items.
    pub fn save(
        &self,
        id: &str,
        previous: Option<&str>,
        object: &Value,
        own: Vec<Message>,
        items: &[Item],
    ) {
        let mut object = serde_json::to_vec(object).unwrap_or_default();
        object.shrink_to_fit();
        let object = Bytes::from(object);
        let mut messages = own;
        let mut by_id = Vec::new();
        for item in items {
            if let Some(m) = item_message(item) {
                by_id.push((item.id().to_owned(), m.clone()));
                messages.push(m);
            }
        }
        merge_calls(&mut messages);
        messages.shrink_to_fit();
        let bytes = stored_bytes(id, previous, &object, &messages, &by_id);
        if bytes > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        inner.evict(now, self.ttl, self.max_bytes.saturating_sub(bytes));
        let item_ids = by_id.iter().map(|(i, _)| i.clone()).collect();
        inner.items.extend(by_id);
        inner.bytes += bytes;
        inner.order.push_back((now, id.to_owned()));
        inner.responses.insert(
            id.to_owned(),
            Stored {
                object,
                previous: previous.map(str::to_owned),
                messages,
                items: item_ids,
                bytes,
            },
        );
    }

    /// What the kept responses cost (`footprint`), for tests and the budget's users.
    pub fn kept_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The `response` object, while it is kept.
    pub fn get(&self, id: &str) -> Option<Bytes> {
        let mut inner = self.lock();
        inner.evict(Instant::now(), self.ttl, self.max_bytes);
        inner.responses.get(id).map(|s| s.object.clone())
    }

    /// Forget a response (and its items); whether it was kept.
    pub fn delete(&self, id: &str) -> bool {
        self.lock().remove(id)
    }

    /// The whole history a continuation of `id` starts from: every response of the chain,
    /// oldest first, input then output. A missing link is a 400 naming the parameter.
    pub fn history(&self, id: &str) -> Result<Vec<Message>, ProxyError> {
        let mut inner = self.lock();
        inner.evict(Instant::now(), self.ttl, self.max_bytes);
        let mut chain = Vec::new();
        let mut next = Some(id);
        while let Some(id) = next {
            let stored = inner.responses.get(id).filter(|_| chain.len() < MAX_CHAIN);
            let Some(stored) = stored else {
                return Err(ProxyError::BadRequest {
                    message: format!(
                        "Previous response with id '{}' not found (responses are kept {} h on the instance that answered; with `store: false`, send the whole history instead).",
                        crate::untrusted::clip(id),
                        self.ttl.as_secs() / 3600
                    ),
                    param: Some("previous_response_id".to_owned()),
                    code: Some("previous_response_not_found"),
                });
            };
            chain.push(&stored.messages);
            next = stored.previous.as_deref();
        }
        Ok(chain.into_iter().rev().flatten().cloned().collect())
    }

    /// An output item as a message (`item_reference`).
    pub fn item(&self, id: &str) -> Option<Message> {
        let mut inner = self.lock();
        inner.evict(Instant::now(), self.ttl, self.max_bytes);
        inner.items.get(id).cloned()
    }
}

/// What keeping a response costs: its entry in `responses` (id, `Stored`, the object, the
/// messages, the item ids), in `order`, and each item's entry in `items`.
fn stored_bytes(
    id: &str,
    previous: Option<&str>,
    object: &Bytes,
    messages: &Vec<Message>,
    items: &[(String, Message)],
) -> usize {
    use footprint::{heap, string, table_entry};
    let item_ids = heap(items.len() * std::mem::size_of::<String>())
        + items.iter().map(|(i, _)| string(i)).sum::<usize>();
    let response = table_entry::<(String, Stored)>()
        + string(id)
        + previous.map_or(0, string)
        + heap(object.len())
        + footprint::messages(messages)
        + item_ids;
    let order = table_entry::<(Instant, String)>() + string(id);
    let items: usize = items
        .iter()
        .map(|(i, m)| table_entry::<(String, Message)>() + string(i) + footprint::message(m))
        .sum();
    response + order + items
}

impl Inner {
    fn remove(&mut self, id: &str) -> bool {
        let Some(stored) = self.responses.remove(id) else {
            return false;
        };
        for item in &stored.items {
            self.items.remove(item);
        }
        self.bytes -= stored.bytes;
        true
    }

    /// Drop what has expired, then the oldest until at most `budget` bytes are kept.
    fn evict(&mut self, now: Instant, ttl: Duration, budget: usize) {
        while let Some((at, id)) = self.order.front() {
            let expired = now.duration_since(*at) >= ttl;
            if !expired && self.bytes <= budget {
                break;
            }
            let id = id.clone();
            self.order.pop_front();
            self.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests;
