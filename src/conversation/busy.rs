//! The chat-busy window, learned, and where a continued turn goes because of it.
//!
//! The upstream keeps a chat busy for a while after each answer ("The chat is in
//! progress!", qwen-protocol §7.1: about 1–5 s; the simulator's `--linger-ms`). Agents send
//! their next request — the tool results — the moment an answer ends, so the chat they
//! continue is usually still busy. There are two ways through:
//!
//! * wait out the rest of the window, then continue the chat: a small request, and the
//!   upstream keeps the chat's context;
//! * a fresh chat with the whole history folded: one `chats/new` (0.3–0.6 s upstream) and
//!   a bigger prompt, but no wait.
//!
//! [`BusyWindow`] keeps two estimates — how long chats stay busy after an answer, and how
//! long `chats/new` takes — from what the proxy sees, and [`BusyWindow::route`] picks the
//! faster way. It is a pure state machine; `Conversations` holds one per process.
//!
//! The window is bracketed: a busy answer `e` after an answer ended says the window is
//! longer than `e` (the *floor*); a turn that went through says it was not longer for that
//! chat. The estimate jumps well past a busy answer at once (another busy answer costs a
//! whole wait) and, on each turn that goes through, creeps a quarter of the way back down
//! towards just above the floor — close to the real window without crossing what was seen
//! busy. The floor itself is forgotten slowly, so a window that got shorter is found again.

use std::time::Duration;

pub use crate::config::BusyPolicy;

/// Where a continued turn goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The chat should be free: send now.
    Now,
    /// The chat should be free after this long: wait, then send.
    After(Duration),
    /// Waiting would take longer than a new chat: fold the history into a fresh one.
    Fresh,
}

/// A fresh chat must win by this much: its folded prompt costs the upstream more work
/// than the few new messages of a continuation, which the estimates do not see, and it
/// leaves one more chat behind in the account.
const FRESH_MARGIN: Duration = Duration::from_millis(200);
/// What `chats/new` is assumed to take before one was measured (qwen-protocol: 0.3–0.6 s).
const NEW_CHAT_PRIOR: Duration = Duration::from_millis(500);
/// No window estimate grows past this (a stuck chat is the busy fallbacks' business).
const MAX_WINDOW: Duration = Duration::from_secs(30);
/// How far above the floor the estimate settles: a window seen busy at the floor is
/// usually a little longer.
const FLOOR_MARGIN: Duration = Duration::from_millis(50);
/// A busy answer later than twice the estimate plus this is not about the window.
const OUTLIER_SLACK: Duration = Duration::from_secs(1);
/// The least a busy answer moves the estimate past its time.
const BUSY_STEP: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct BusyWindow {
    /// How long after an answer its chat is taken to be busy.
    window: Duration,
    /// The longest time after an answer at which a chat was seen busy (slowly forgotten).
    floor: Duration,
    /// Moving average of `chats/new` latency.
    new_chat: Duration,
    /// Whether `new_chat` was measured or is still the prior.
    new_chat_measured: bool,
}

impl Default for BusyWindow {
    /// Nothing known: chats are assumed free at once, so the first busy answer teaches.
    fn default() -> Self {
        Self {
            window: Duration::ZERO,
            floor: Duration::ZERO,
            new_chat: NEW_CHAT_PRIOR,
            new_chat_measured: false,
        }
    }
}

impl BusyWindow {
    /// Where a turn on a chat whose last answer ended `since_answer` ago should go.
    pub fn route(&self, since_answer: Duration, policy: BusyPolicy) -> Route {
        let left = self.left(since_answer);
        if left.is_zero() {
            return Route::Now;
        }
        if policy == BusyPolicy::Adaptive && left > self.new_chat + FRESH_MARGIN {
            Route::Fresh
        } else {
            Route::After(left)
        }
    }

    /// A turn went to a fresh chat instead ([`Route::Fresh`] was taken). That teaches
    /// nothing about the window, so both estimates lose a sixteenth: a window that got
    /// shorter is tried again eventually, instead of every turn going to a fresh chat for
    /// ever.
    pub fn chose_fresh(&mut self) {
        self.window -= self.window / 16;
        self.floor -= self.floor / 16;
    }

    /// A turn sent `since_answer` after the chat's last answer found it busy.
    ///
    /// A chat busy long past the estimate (more than twice it, plus a second) is busy for
    /// another reason — an aborted stream the upstream still runs, another client's turn —
    /// and says nothing about the window after an answer: it is ignored (the busy fallbacks
    /// wait it out), so one such chat cannot make every other turn wait for it.
    pub fn saw_busy(&mut self, since_answer: Duration) {
        if since_answer > self.window * 2 + OUTLIER_SLACK {
            return;
        }
        self.floor = self.floor.max(since_answer).min(MAX_WINDOW);
        // Doubling: a window of seconds is found in a few busy answers.
        let past = since_answer + since_answer.max(BUSY_STEP);
        self.window = self.window.max(past).min(MAX_WINDOW);
    }

    /// A turn sent `since_answer` after the chat's last answer went through.
    pub fn saw_free(&mut self, since_answer: Duration) {
        // Free at `since_answer` (earlier than estimated: a bound for this chat), or free
        // as estimated: either way, a quarter of the way down, not below the floor (plus a
        // margin). The floor is forgotten by a 256th, so the window is probed lower again
        // every few dozen turns.
        let above_floor = self.floor + FLOOR_MARGIN;
        let target = if since_answer < self.window {
            since_answer.max(above_floor)
        } else {
            above_floor
        };
        self.window -= self.window.saturating_sub(target) / 4;
        self.floor -= self.floor / 256;
    }

    /// `chats/new` answered after `took`.
    pub fn chat_created_in(&mut self, took: Duration) {
        // The first measurement replaces the prior; then an exponential moving average,
        // weight 1/4 on the newest.
        self.new_chat = if self.new_chat_measured {
            (self.new_chat * 3 + took) / 4
        } else {
            took
        };
        self.new_chat_measured = true;
    }

    /// How much longer a chat whose last answer ended `since_answer` ago is taken to be
    /// busy.
    pub fn left(&self, since_answer: Duration) -> Duration {
        self.window.saturating_sub(since_answer)
    }

    /// The current window estimate.
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn with_nothing_known_a_turn_goes_at_once() {
        let w = BusyWindow::default();
        assert_eq!(w.route(ms(0), BusyPolicy::Adaptive), Route::Now);
        assert_eq!(w.route(ms(0), BusyPolicy::Wait), Route::Now);
    }

    #[test]
    fn a_busy_answer_makes_the_next_turn_wait_past_it() {
        let mut w = BusyWindow::default();
        w.saw_busy(ms(10));
        // At least 100 ms past the busy answer.
        assert_eq!(w.window(), ms(110));
        assert_eq!(w.route(ms(20), BusyPolicy::Adaptive), Route::After(ms(90)));
        assert_eq!(w.route(ms(110), BusyPolicy::Adaptive), Route::Now);
        // Twice a later busy answer; never shorter on an earlier one.
        w.saw_busy(ms(400));
        assert_eq!(w.window(), ms(800));
        w.saw_busy(ms(5));
        assert_eq!(w.window(), ms(800));
    }

    #[test]
    fn successes_bring_the_estimate_down_towards_the_floor_without_crossing_it() {
        let mut w = BusyWindow::default();
        w.saw_busy(ms(300)); // window 600 ms, floor 300 ms
        w.saw_free(ms(600));
        // A quarter of the way from 600 to 50 ms above the floor (which is forgotten by a
        // 256th).
        assert_eq!(w.window(), ms(537) + Duration::from_micros(500));
        assert_eq!(w.floor, ms(300) - ms(300) / 256);
        for _ in 0..10 {
            let now = w.window();
            w.saw_free(now);
        }
        assert!(
            w.window() > ms(340) && w.window() < ms(370),
            "{:?}",
            w.window()
        );
        // Free well before the estimate: a quarter of the way to that time.
        let mut w = BusyWindow::default();
        w.saw_busy(ms(100)); // 200 ms, floor 100 ms
        w.saw_free(ms(180));
        assert_eq!(w.window(), ms(195));
    }

    #[test]
    fn a_fixed_window_is_learned_with_few_busy_answers() {
        // The simulator's linger: busy for 300 ms after each answer; turns sent at once.
        let linger = ms(300);
        let mut w = BusyWindow::default();
        let mut refused = 0;
        let mut waited = Duration::ZERO;
        for _turn in 0..30 {
            let mut since = Duration::ZERO;
            loop {
                match w.route(since, BusyPolicy::Wait) {
                    Route::After(d) => since += d,
                    Route::Now => {}
                    Route::Fresh => unreachable!("policy is wait"),
                }
                if since < linger {
                    refused += 1;
                    w.saw_busy(since);
                } else {
                    w.saw_free(since);
                    break;
                }
            }
            waited += since;
        }
        // Learning costs a few busy answers; then each turn waits about the window.
        println!("{refused} busy answers, mean wait {:?}", waited / 30);
        assert!(refused <= 6, "{refused} busy answers in 30 turns");
        assert!(waited / 30 < ms(420), "mean wait {:?}", waited / 30);
    }

    #[test]
    fn a_long_window_goes_to_a_fresh_chat_unless_told_to_wait() {
        let mut w = BusyWindow::default();
        w.saw_busy(ms(900)); // window 1.8 s
        w.saw_busy(ms(1_500)); // window 3 s
        for _ in 0..20 {
            w.chat_created_in(ms(300));
        }
        // 3 s left against ~0.3 s for chats/new (+0.2 s margin): a fresh chat.
        assert_eq!(w.route(ms(0), BusyPolicy::Wait), Route::After(ms(3_000)));
        assert_eq!(w.route(ms(0), BusyPolicy::Adaptive), Route::Fresh);
        // Near the window's end waiting is shorter (the window shrinks a sixteenth when a
        // fresh chat is taken).
        w.chose_fresh();
        assert_eq!(w.window(), ms(3_000) - ms(3_000) / 16);
        assert_eq!(
            w.route(ms(2_600), BusyPolicy::Adaptive),
            Route::After(ms(3_000) - ms(3_000) / 16 - ms(2_600))
        );
    }

    #[test]
    fn always_choosing_a_fresh_chat_probes_the_window_again_in_the_end() {
        let mut w = BusyWindow::default();
        w.saw_busy(ms(900));
        w.saw_busy(ms(1_500)); // window 3 s
        let fresh = (0..100)
            .take_while(|_| {
                let fresh = w.route(ms(0), BusyPolicy::Adaptive) == Route::Fresh;
                if fresh {
                    w.chose_fresh();
                }
                fresh
            })
            .count();
        // 3 s shrinks below 0.7 s (new chat 0.5 s + margin) in about 23 fresh chats.
        assert!((15..40).contains(&fresh), "{fresh}");
        assert!(matches!(
            w.route(ms(0), BusyPolicy::Adaptive),
            Route::After(_)
        ));
    }

    #[test]
    fn a_short_window_is_waited_out_rather_than_paying_for_a_new_chat() {
        let mut w = BusyWindow::default();
        w.saw_busy(ms(150)); // window 300 ms, new chat assumed 500 ms
        assert_eq!(w.route(ms(0), BusyPolicy::Adaptive), Route::After(ms(300)));
    }

    #[test]
    fn the_window_estimate_is_capped() {
        let mut w = BusyWindow::default();
        for s in [1, 3, 7, 15, 31, 63] {
            w.saw_busy(Duration::from_secs(s));
        }
        assert_eq!(w.window(), MAX_WINDOW);
        assert!(w.floor <= MAX_WINDOW);
    }

    #[test]
    fn a_chat_busy_long_after_its_answer_does_not_teach_the_window() {
        let mut w = BusyWindow::default();
        w.saw_busy(ms(150)); // window 300 ms
                             // Busy a minute after its answer: an aborted stream still running, not the window.
        w.saw_busy(Duration::from_secs(60));
        assert_eq!(w.window(), ms(300));
        assert_eq!(w.floor, ms(150));
        // With nothing known, a busy answer more than a second after the answer is ignored
        // too.
        let mut w = BusyWindow::default();
        w.saw_busy(ms(1_500));
        assert_eq!(w.window(), Duration::ZERO);
    }

    #[test]
    fn new_chat_latency_is_a_moving_average() {
        let mut w = BusyWindow::default();
        assert_eq!(w.new_chat, NEW_CHAT_PRIOR);
        w.chat_created_in(ms(300));
        assert_eq!(w.new_chat, ms(300));
        w.chat_created_in(ms(700));
        assert_eq!(w.new_chat, ms(400));
    }
}
