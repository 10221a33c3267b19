//! Sign-ins keep `interval` apart per egress address (direct, or each account proxy): the
//! upstream walls about a dozen sign-ins per few minutes per address (qwen-protocol §2.3).
//! Each address is its own lane: a proxied account never waits for the direct lane.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// When a lane's last sign-in ended.
type Lane = Arc<tokio::sync::Mutex<Option<Instant>>>;

#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    lanes: Mutex<HashMap<String, Lane>>,
}

impl Pacer {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// Wait for the address's turn and hold it: sign-ins through one address go one after
    /// another, and the next starts `interval` after this one *ended* (when the returned
    /// turn is dropped) — connection set-up (a tunnel, a protocol probe) cannot bring two
    /// closer together as the upstream sees them.
    pub(crate) async fn turn(&self, egress: &str) -> PacerTurn {
        let lane = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(egress.to_owned())
            .or_default()
            .clone();
        let last = lane.lock_owned().await;
        if let Some(at) = *last {
            let ready = at + self.interval;
            if ready > Instant::now() {
                tokio::time::sleep_until(ready).await;
            }
        }
        PacerTurn { last }
    }
}

/// A sign-in's turn on its address; its end is stamped when dropped.
pub(crate) struct PacerTurn {
    last: OwnedMutexGuard<Option<Instant>>,
}

impl Drop for PacerTurn {
    fn drop(&mut self) {
        *self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sign_ins_through_one_address_keep_their_distance() {
        let pacer = Arc::new(Pacer::new(Duration::from_secs(30)));
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..3 {
            let turn = pacer.turn("direct").await;
            at.push(start.elapsed());
            // The sign-in itself takes a second: the next waits from its end.
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(turn);
        }
        assert_eq!(
            at,
            [
                Duration::ZERO,
                Duration::from_secs(31),
                Duration::from_secs(62)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn another_address_is_not_held_back_by_a_busy_one() {
        let pacer = Arc::new(Pacer::new(Duration::from_secs(30)));
        drop(pacer.turn("direct").await);
        // The direct lane is pacing (and a sign-in is even running on it) …
        let direct = {
            let pacer = pacer.clone();
            tokio::spawn(async move {
                let _turn = pacer.turn("direct").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            })
        };
        tokio::task::yield_now().await;
        // … while a proxy's lane goes at once.
        let before = Instant::now();
        drop(pacer.turn("proxy-1").await);
        assert_eq!(before.elapsed(), Duration::ZERO);
        direct.await.unwrap();
    }
}
