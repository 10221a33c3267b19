//! The accounts out of images: an account whose daily image generations are used up still
//! chats, so this is kept apart from its health (`health.rs`) and only image turns avoid it
//! (`chat::accounts`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::common::epoch_millis;

/// Accounts whose daily image generations are used up, until when (Unix ms). Apart from
/// the accounts' health: an account out of images still chats, so only image turns avoid
/// it.
#[derive(Debug, Default)]
pub(crate) struct ImageQuota {
    until: Mutex<HashMap<String, u64>>,
}

impl ImageQuota {
    pub(crate) fn spent(&self, account: &str, until_ms: u64) {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account.to_owned(), until_ms);
    }

    /// The accounts out of images now, and when each has them again.
    pub(crate) fn spent_now(&self) -> Vec<(String, u64)> {
        let now = epoch_millis();
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.retain(|_, at| *at > now);
        until.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
