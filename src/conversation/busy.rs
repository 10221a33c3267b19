//! The chat-busy window, learned, and where a continued turn goes because of it.
//!
//! The upstream keeps a chat busy for a while after each answer ("The chat is in
//! progress!", qwen-protocol §7.1: about 1–5 s; the simulator's `--linger-ms`). Agents send
//! their next request — the tool results — the moment an answer ends, so the chat they
//! continue is usually still busy. There are two ways through:
//!
//! * wait out the rest of the window, then continue the chat: a small request, and the
//!   upstream keeps the chat's context;
//! * a fresh chat with the whole history folded: one `chats/new` (0.3–0.6 s upstream), the
//!   model reading the whole history again before its first token (prefill), the history's
//!   bytes sent again — close to the upstream's 128 KiB anti-bot limit for an agent, whose
//!   system prompt and tools alone are 80 KB — and one more chat left behind in the account.
//!
//! [`BusyWindow`] keeps three estimates — how long chats stay busy after an answer, how long
//! `chats/new` takes, and what the first token costs per byte the chat has not read
//! ([`Prefill`]) — from what the proxy sees. [`BusyWindow::route`] says when a fresh chat
//! could be faster at all; [`BusyWindow::fresh_pays`] decides with the fold in hand: never a
//! fold over `BUSY_FRESH_MAX_BYTES` just to save a wait, and the time saved must pay for
//! `chats/new`, for reading the fold and for the chat left behind. It is a pure state
//! machine; `Conversations` holds one per process.
//!
//! The window is bracketed: a busy answer `e` after an answer ended says the window is
//! longer than `e` (the *floor*); a turn that went through says it was not longer for that
//! chat. The estimate jumps well past a busy answer at once (another busy answer costs a
//! whole wait) and, on each turn that goes through, creeps a quarter of the way back down
//! towards just above the floor — close to the real window without crossing what was seen
//! busy. The floor itself is forgotten slowly, so a window that got shorter is found again.

use std::time::Duration;

pub(crate) use crate::config::BusyPolicy;

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

/// A fresh chat must win by this much beyond the costs the estimates see.
const FRESH_MARGIN: Duration = Duration::from_millis(200);
/// What a chat left behind in the account is worth, in time a fresh chat must save: one
/// more chat in the user's history, a step towards the account's anti-bot challenge, and
/// markers of the conversation left upstream (tool-calling.md F17).
const CHAT_LEFT_BEHIND: Duration = Duration::from_secs(1);
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
pub(crate) struct BusyWindow {
    /// How long after an answer its chat is taken to be busy.
    window: Duration,
    /// The longest time after an answer at which a chat was seen busy (slowly forgotten).
    floor: Duration,
    /// Moving average of `chats/new` latency.
    new_chat: Duration,
    /// Whether `new_chat` was measured or is still the prior.
    new_chat_measured: bool,
    /// Time to first token per byte of prompt the chat has not read.
    prefill: Prefill,
}

impl Default for BusyWindow {
    /// Nothing known: chats are assumed free at once, so the first busy answer teaches.
    fn default() -> Self {
        Self {
            window: Duration::ZERO,
            floor: Duration::ZERO,
            new_chat: NEW_CHAT_PRIOR,
            new_chat_measured: false,
            prefill: Prefill::default(),
        }
    }
}

impl BusyWindow {
    /// Where a turn on a chat whose last answer ended `since_answer` ago should go.
    pub(crate) fn route(&self, since_answer: Duration, policy: BusyPolicy) -> Route {
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

    /// Whether a turn that would wait `left` for its chat, sending `continued` bytes there,
    /// should go to a fresh chat whose folded history is `fold` bytes: never for a fold over
    /// `max_fold`, and only when the wait is longer than `chats/new`, the model reading the
    /// bytes it has not read, the chat left behind and a margin.
    pub(crate) fn fresh_pays(
        &self,
        left: Duration,
        continued: usize,
        fold: usize,
        max_fold: usize,
    ) -> bool {
        if fold > max_fold {
            return false;
        }
        let reading = self.prefill.time_for(fold.saturating_sub(continued));
        self.new_chat + reading + CHAT_LEFT_BEHIND + FRESH_MARGIN < left
    }

    /// The first upstream event of a turn that sent `bytes` the chat had not read came
    /// `ttft` after the request.
    pub(crate) fn saw_first_token(&mut self, bytes: usize, ttft: Duration) {
        self.prefill.saw(bytes, ttft);
    }

    /// The learned cost of reading one KiB of prompt.
    pub(crate) fn prefill_per_kib(&self) -> Duration {
        self.prefill.time_for(1024)
    }

    /// A turn went to a fresh chat instead ([`Route::Fresh`] was taken). That teaches
    /// nothing about the window, so both estimates lose a sixteenth: a window that got
    /// shorter is tried again eventually, instead of every turn going to a fresh chat for
    /// ever.
    pub(crate) fn chose_fresh(&mut self) {
        self.window -= self.window / 16;
        self.floor -= self.floor / 16;
    }

    /// A turn sent `since_answer` after the chat's last answer found it busy.
    ///
    /// A chat busy long past the estimate (more than twice it, plus a second) is busy for
    /// another reason — an aborted stream the upstream still runs, another client's turn —
    /// and says nothing about the window after an answer: it is ignored (the busy fallbacks
    /// wait it out), so one such chat cannot make every other turn wait for it.
    pub(crate) fn saw_busy(&mut self, since_answer: Duration) {
        if since_answer > self.window * 2 + OUTLIER_SLACK {
            return;
        }
        self.floor = self.floor.max(since_answer).min(MAX_WINDOW);
        // Doubling: a window of seconds is found in a few busy answers.
        let past = since_answer + since_answer.max(BUSY_STEP);
        self.window = self.window.max(past).min(MAX_WINDOW);
    }

    /// A turn sent `since_answer` after the chat's last answer went through.
    pub(crate) fn saw_free(&mut self, since_answer: Duration) {
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
    pub(crate) fn chat_created_in(&mut self, took: Duration) {
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
    pub(crate) fn left(&self, since_answer: Duration) -> Duration {
        self.window.saturating_sub(since_answer)
    }

    /// The current window estimate.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }
}

/// What the first token costs per byte of prompt the chat has not read: the slope of a
/// least-squares line through the proxy's own turns — (bytes sent, time to the first
/// upstream event) — with each older turn weighing a little less. Continued turns (a few
/// new messages) and fresh chats (the whole history) give the spread a slope needs; until
/// there is enough of it, the prior: 30 ms per 1,000 tokens at about 4 bytes a token
/// (`sim::PREFILL_PER_1K_TOKENS` has the sources).
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefill {
    /// Decayed weighted sums: weight, x, y, x², xy (x in KiB, y in ms).
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

/// The prior per KiB: 30 ms per 1,000 tokens of about 4 bytes.
const PREFILL_PRIOR_MS_PER_KIB: f64 = 30.0 * 1024.0 / 4000.0;
/// No slope is believed above this (a thinking model's slow turn, a queue): 200 ms per KiB.
const PREFILL_MAX_MS_PER_KIB: f64 = 200.0;
/// Each new turn weighs this much of the one before (a memory of about 30 turns).
const PREFILL_DECAY: f64 = 0.97;
/// The spread of sizes (standard deviation, KiB) and the weight a slope needs.
const PREFILL_MIN_SPREAD_KIB: f64 = 4.0;
const PREFILL_MIN_WEIGHT: f64 = 4.0;

impl Prefill {
    pub(crate) fn saw(&mut self, bytes: usize, ttft: Duration) {
        let (x, y) = (bytes as f64 / 1024.0, ttft.as_secs_f64() * 1e3);
        self.w = self.w * PREFILL_DECAY + 1.0;
        self.sx = self.sx * PREFILL_DECAY + x;
        self.sy = self.sy * PREFILL_DECAY + y;
        self.sxx = self.sxx * PREFILL_DECAY + x * x;
        self.sxy = self.sxy * PREFILL_DECAY + x * y;
    }

    /// Milliseconds per KiB: the learned slope when the sizes seen spread enough, else the
    /// prior.
    fn ms_per_kib(&self) -> f64 {
        if self.w < PREFILL_MIN_WEIGHT {
            return PREFILL_PRIOR_MS_PER_KIB;
        }
        let mean_x = self.sx / self.w;
        let var_x = self.sxx / self.w - mean_x * mean_x;
        if var_x < PREFILL_MIN_SPREAD_KIB * PREFILL_MIN_SPREAD_KIB {
            return PREFILL_PRIOR_MS_PER_KIB;
        }
        let cov = self.sxy / self.w - mean_x * (self.sy / self.w);
        (cov / var_x).clamp(0.0, PREFILL_MAX_MS_PER_KIB)
    }

    /// The time to read `bytes` more.
    pub(crate) fn time_for(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(self.ms_per_kib() * bytes as f64 / 1024.0 / 1e3)
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
    fn prefill_is_learned_from_turns_of_different_sizes() {
        let mut p = Prefill::default();
        let ms_f = |d: Duration| d.as_secs_f64() * 1e3;
        // Before any spread: the prior, 30 ms per 4,000 bytes (1,000 tokens).
        assert!((ms_f(p.time_for(4000)) - 30.0).abs() < 1e-6);
        // Continued turns of 2 KiB and fresh chats of 80 KiB, at 20 ms per KiB over a base
        // of 400 ms.
        for _ in 0..10 {
            p.saw(2 * 1024, ms(440));
            p.saw(80 * 1024, ms(2_000));
        }
        let per_kib = ms_f(p.time_for(1024));
        assert!((per_kib - 20.0).abs() < 0.01, "{per_kib}");
        // Sizes that do not spread teach no slope.
        let mut same = Prefill::default();
        for t in [100, 900, 300, 5_000] {
            same.saw(10 * 1024, ms(t));
        }
        assert!((ms_f(same.time_for(4000)) - 30.0).abs() < 1e-6);
    }

    #[test]
    fn a_fresh_chat_must_pay_for_reading_the_fold_and_the_chat_left_behind() {
        let mut w = BusyWindow::default();
        w.chat_created_in(ms(300));
        // At the prior 7.68 ms per KiB: an 8 KiB fold costs 61 ms to read; with chats/new,
        // the chat left behind and the margin, a wait must be over 1.56 s to give way.
        let (continued, fold) = (0, 8 * 1024);
        assert!(!w.fresh_pays(ms(1_500), continued, fold, 32 * 1024));
        assert!(w.fresh_pays(ms(1_600), continued, fold, 32 * 1024));
        // An agent's 80 KB fold is never sent just to save a wait, however long.
        assert!(!w.fresh_pays(Duration::from_secs(30), 2_000, 80_000, 32 * 1024));
        // A slow reader makes a big fold cost what it costs.
        for _ in 0..10 {
            w.saw_first_token(1024, ms(500));
            w.saw_first_token(31 * 1024, ms(3_500)); // 100 ms per KiB
        }
        assert!(!w.fresh_pays(ms(3_000), 1024, 31 * 1024, 32 * 1024));
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
