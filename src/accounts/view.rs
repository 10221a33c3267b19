//! The operators' view of the pool: counts by state (`/health`, the gauge) and each account
//! as the admin API shows it — never a secret.

use serde::Serialize;

use super::health::Health;
use std::sync::atomic::Ordering;

use super::{Account, Pool, RecentError};
use crate::common::epoch_millis;

/// Counts by state, for `/health` and the gauge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StateCounts {
    pub total: usize,
    pub usable: usize,
    #[serde(flatten)]
    pub by_state: std::collections::BTreeMap<&'static str, usize>,
}

/// One account as operators see it: never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub name: String,
    pub kind: &'static str,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    pub inflight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
    pub min_interval_ms: u64,
    pub turns: u64,
    pub proxy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_expires: Option<u64>,
    /// A new token can be had without a browser (a password, or a refresh token).
    pub can_renew: bool,
    pub recent_errors: Vec<RecentError>,
}

impl Pool {
    pub fn counts(&self) -> StateCounts {
        let now = epoch_millis();
        let mut c = StateCounts::default();
        for label in Health::LABELS {
            c.by_state.insert(label, 0);
        }
        for a in self.list().iter() {
            let h = a.health();
            c.total += 1;
            if a.takes_turns(now) {
                c.usable += 1;
            }
            *c.by_state.entry(h.label()).or_insert(0) += 1;
        }
        c
    }

    pub fn view(&self, a: &Account) -> AccountView {
        let h = a.health();
        AccountView {
            name: a.name().to_owned(),
            kind: a.spec.login.kind(),
            state: h.label(),
            reason: h.reason().map(str::to_owned),
            until_ms: h.back_at(epoch_millis()),
            inflight: a.inflight(),
            max_inflight: a.spec.max_inflight,
            min_interval_ms: a.spec.min_interval.as_millis() as u64,
            turns: a.turns.load(Ordering::Relaxed),
            proxy: a.spec.proxy.is_some(),
            token_expires: a.token().and_then(|t| t.exp()),
            can_renew: Pool::can_renew(a),
            recent_errors: a
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }

    pub fn views(&self) -> Vec<AccountView> {
        self.list().iter().map(|a| self.view(a)).collect()
    }

    pub(crate) fn publish_gauges(&self) {
        let c = self.counts();
        for (state, n) in &c.by_state {
            self.metrics
                .accounts
                .with_label_values(&[state])
                .set(*n as i64);
        }
    }
}

impl StateCounts {
    /// `2 cooling, 1 invalid` — for error messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .by_state
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        if parts.is_empty() {
            "no accounts".to_owned()
        } else {
            parts.join(", ")
        }
    }
}
