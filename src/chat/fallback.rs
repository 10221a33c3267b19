//! The conversation fallbacks of one request: what the core does when the chat it chose
//! cannot take the turn. A pure policy; the core (`chat::complete`) acts on it.
//!
//! * "The chat is in progress!" → wait and send the same turn into the same chat again (up
//!   to [`MAX_BUSY_WAITS`] times: the upstream keeps a chat busy for seconds after a
//!   generation, and giving up early would abandon a continued conversation), then once
//!   into a fresh chat with the whole history folded. For a chat whose last answer time is
//!   known, the learned busy window (`conversation::busy`) says how long to wait, or that a
//!   fresh chat is faster; otherwise each wait is at least half the backoff.
//! * The remembered chat or its parent is gone upstream (deleted, another account) → once,
//!   at once, a fresh chat with the whole history: sending only the new turn without its
//!   parent would give the upstream a context that differs from what the client sent.
//!
//! These waits are the core's own budget, separate from the retry layer's (transient
//! failures): a spent retry budget never turns a busy conversation into `503`.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::conversation::busy::Route;
use crate::error::{ProxyError, UpstreamClass as C};

/// Same-chat waits for a busy chat before falling back to a fresh chat.
pub(super) const MAX_BUSY_WAITS: u32 = 5;
/// Same-chat waits the learned busy window may set. Each busy answer at least doubles the
/// window (up to its 30 s cap), so these find any window it can hold; a chat still busy
/// after them is stuck and gets the plain waits, then a fresh chat.
pub(super) const MAX_LEARNED_WAITS: u32 = 10;

/// What the next attempt of this request does instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fallback {
    /// After the delay, the same turn into the same chat.
    SameChat(Duration),
    /// After the delay, a fresh chat with the whole history folded.
    FreshChat(Duration),
}

/// The fallbacks used so far by one request.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Fallbacks {
    busy_waits: u32,
    learned_waits: u32,
    fresh_chat: bool,
}

impl Fallbacks {
    /// `learned`: for a busy chat whose last answer time is known, where the busy window
    /// estimate (already updated with this busy answer) sends the turn now.
    pub(super) fn decide(
        &mut self,
        e: &ProxyError,
        backoff: &Backoff,
        learned: Option<Route>,
    ) -> Option<Fallback> {
        match e.upstream_class()? {
            C::ChatInProgress if learned == Some(Route::Fresh) && !self.fresh_chat => {
                self.fresh_chat = true;
                Some(Fallback::FreshChat(Duration::ZERO))
            }
            C::ChatInProgress => match learned {
                Some(Route::After(left)) if self.learned_waits < MAX_LEARNED_WAITS => {
                    self.learned_waits += 1;
                    Some(Fallback::SameChat(left))
                }
                _ if self.busy_waits < MAX_BUSY_WAITS => {
                    self.busy_waits += 1;
                    Some(Fallback::SameChat(backoff.equal(self.busy_waits)))
                }
                _ if !self.fresh_chat => {
                    self.fresh_chat = true;
                    Some(Fallback::FreshChat(backoff.full(1)))
                }
                _ => None,
            },
            C::ParentNotFound | C::ChatNotFound if !self.fresh_chat => {
                self.fresh_chat = true;
                Some(Fallback::FreshChat(Duration::ZERO))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
            multiplier: 2.0,
            jitter: |d| d, // deterministic: the full delay
        }
    }

    fn e(class: C) -> ProxyError {
        ProxyError::upstream(class, "x")
    }

    #[test]
    fn a_busy_chat_is_waited_out_then_a_fresh_chat_is_used_once() {
        let mut f = Fallbacks::default();
        let busy = e(C::ChatInProgress);
        let ms = |d: Duration| d.as_millis() as u64;
        let got: Vec<Option<Fallback>> =
            (0..7).map(|_| f.decide(&busy, &backoff(), None)).collect();
        // Equal jitter with the full delay: 100, 200, then capped at 250.
        let waits: Vec<u64> = got[..5]
            .iter()
            .map(|d| match d {
                Some(Fallback::SameChat(d)) => ms(*d),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(waits, [100, 200, 250, 250, 250]);
        assert_eq!(
            got[5],
            Some(Fallback::FreshChat(Duration::from_millis(100)))
        );
        assert_eq!(got[6], None, "a fresh chat once");
    }

    #[test]
    fn a_lost_chat_or_parent_gets_one_fresh_chat_at_once() {
        for class in [C::ParentNotFound, C::ChatNotFound] {
            let mut f = Fallbacks::default();
            assert_eq!(
                f.decide(&e(class), &backoff(), None),
                Some(Fallback::FreshChat(Duration::ZERO))
            );
            assert_eq!(f.decide(&e(class), &backoff(), None), None);
        }
    }

    #[test]
    fn everything_else_is_not_a_conversation_matter() {
        let mut f = Fallbacks::default();
        for class in [C::ServerError, C::Challenge, C::RateLimited, C::Connect] {
            assert_eq!(f.decide(&e(class), &backoff(), None), None, "{class:?}");
        }
        assert_eq!(f.decide(&ProxyError::Overloaded, &backoff(), None), None);
    }

    #[test]
    fn a_learned_window_sets_the_wait_or_sends_the_turn_to_a_fresh_chat_once() {
        let mut f = Fallbacks::default();
        let busy = e(C::ChatInProgress);
        let left = Duration::from_millis(420);
        assert_eq!(
            f.decide(&busy, &backoff(), Some(Route::After(left))),
            Some(Fallback::SameChat(left))
        );
        assert_eq!(
            f.decide(&busy, &backoff(), Some(Route::Fresh)),
            Some(Fallback::FreshChat(Duration::ZERO))
        );
        // The fresh chat was used: from now on only waits (the backoff's, with no window).
        assert_eq!(
            f.decide(&busy, &backoff(), Some(Route::Fresh)),
            Some(Fallback::SameChat(Duration::from_millis(100)))
        );
        // Learned waits are bounded too.
        let mut f = Fallbacks::default();
        for _ in 0..MAX_LEARNED_WAITS {
            assert_eq!(
                f.decide(&busy, &backoff(), Some(Route::After(left))),
                Some(Fallback::SameChat(left))
            );
        }
        assert_eq!(
            f.decide(&busy, &backoff(), Some(Route::After(left))),
            Some(Fallback::SameChat(Duration::from_millis(100)))
        );
    }
}
