//! An account's health as a pure state machine: what the upstream's answers do to it, and
//! when it may be used again. Times are Unix milliseconds so that several instances can
//! share the state through Redis (`accounts::shared`).
//!
//! | state         | how it gets there                               | comes back            |
//! |---------------|-------------------------------------------------|-----------------------|
//! | `ready`       | a token and no trouble                          | —                     |
//! | `signing_in`  | no usable token yet (start, or a failed refresh) | when sign-in succeeds |
//! | `cooling`     | the daily quota (`RateLimited`, `num` hours)    | after those hours     |
//! | `quarantined` | an anti-bot challenge on this account           | after a growing pause |
//! | `invalid`     | credentials refused and no way to renew them    | reload / enable       |
//! | `forbidden`   | 403: the account is banned or disabled upstream | reload / enable       |
//! | `disabled`    | an operator disabled it (admin API)             | enable                |

use serde::{Deserialize, Serialize};

/// The longest quarantine: the base pause doubled this many times at most.
const MAX_STRIKE_DOUBLINGS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    Ready,
    SigningIn {
        #[serde(default)]
        reason: Option<String>,
    },
    Cooling {
        until_ms: u64,
        reason: String,
    },
    Quarantined {
        until_ms: u64,
        strikes: u32,
        reason: String,
    },
    Invalid {
        reason: String,
    },
    Forbidden {
        reason: String,
    },
    Disabled,
}

impl Health {
    pub fn label(&self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::SigningIn { .. } => "signing_in",
            Health::Cooling { .. } => "cooling",
            Health::Quarantined { .. } => "quarantined",
            Health::Invalid { .. } => "invalid",
            Health::Forbidden { .. } => "forbidden",
            Health::Disabled => "disabled",
        }
    }

    pub const LABELS: [&'static str; 7] = [
        "ready",
        "signing_in",
        "cooling",
        "quarantined",
        "invalid",
        "forbidden",
        "disabled",
    ];

    /// The state as of `now`: a pause that is over is `ready` again (the stored state of a
    /// quarantine keeps its strikes until a good answer clears them, see `answered`).
    pub fn at(&self, now_ms: u64) -> Health {
        match self {
            Health::Cooling { until_ms, .. } | Health::Quarantined { until_ms, .. }
                if *until_ms <= now_ms =>
            {
                Health::Ready
            }
            h => h.clone(),
        }
    }

    /// Whether turns may be sent on it now.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.at(now_ms) == Health::Ready
    }

    /// When a paused account comes back (`None`: it is usable, or only an operator or a
    /// sign-in brings it back).
    pub fn back_at(&self, now_ms: u64) -> Option<u64> {
        match self.at(now_ms) {
            Health::Cooling { until_ms, .. } | Health::Quarantined { until_ms, .. } => {
                Some(until_ms)
            }
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::SigningIn { reason } => reason.as_deref(),
            Health::Cooling { reason, .. }
            | Health::Quarantined { reason, .. }
            | Health::Invalid { reason }
            | Health::Forbidden { reason } => Some(reason),
            Health::Ready | Health::Disabled => None,
        }
    }

    /// Strikes of a quarantine, also one that is over (the next one grows from them).
    fn strikes(&self) -> u32 {
        match self {
            Health::Quarantined { strikes, .. } => *strikes,
            _ => 0,
        }
    }

    /// The daily quota ran out: cool down for `wait_ms`. An operator's or the upstream's
    /// verdict (disabled, forbidden, invalid) is not overridden by a pause.
    pub fn quota_reached(&self, now_ms: u64, wait_ms: u64) -> Health {
        if self.is_final() {
            return self.clone();
        }
        Health::Cooling {
            until_ms: now_ms.saturating_add(wait_ms),
            reason: format!("daily quota reached; back in {}", human(wait_ms)),
        }
    }

    /// An anti-bot challenge: quarantine for `base_ms`, doubled for each strike in a row.
    /// One challenge is one strike: the requests that were already on their way when it
    /// came meet it too, and find the account quarantined — the same event, not another.
    pub fn challenged(&self, now_ms: u64, base_ms: u64, what: &str) -> Health {
        if self.is_final() {
            return self.clone();
        }
        if matches!(self, Health::Quarantined { until_ms, .. } if *until_ms > now_ms) {
            return self.clone();
        }
        let strikes = self.strikes() + 1;
        let pause = base_ms.saturating_mul(1 << (strikes - 1).min(MAX_STRIKE_DOUBLINGS));
        Health::Quarantined {
            until_ms: now_ms.saturating_add(pause),
            strikes,
            reason: format!("{what} (strike {strikes}); back in {}", human(pause)),
        }
    }

    /// A good answer: strikes are forgiven.
    pub fn answered(&self, now_ms: u64) -> Health {
        match self.at(now_ms) {
            Health::Ready => Health::Ready,
            h => h,
        }
    }

    /// Only an operator (reload, enable) or a new token lifts these.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Health::Invalid { .. } | Health::Forbidden { .. } | Health::Disabled
        )
    }
}

/// `3 h 20 min`, `45 s`: for reasons shown to operators.
pub fn human(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s.div_ceil(60)),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn a_quota_pause_ends_by_itself() {
        let h = Health::Ready.quota_reached(1_000, 4 * 60 * MIN);
        assert_eq!(h.label(), "cooling");
        assert!(!h.usable(1_000 + 4 * 60 * MIN - 1));
        assert_eq!(h.back_at(1_000), Some(1_000 + 4 * 60 * MIN));
        assert!(h.usable(1_000 + 4 * 60 * MIN));
        assert_eq!(h.reason(), Some("daily quota reached; back in 4 h 0 min"));
    }

    #[test]
    fn one_challenge_met_by_many_requests_is_one_strike() {
        let base = 300_000;
        let q1 = Health::Ready.challenged(0, base, "challenged");
        // 29 more requests that were in flight meet the same challenge moments later.
        let mut h = q1.clone();
        for at in 1..30 {
            h = h.challenged(at, base, "challenged");
        }
        assert_eq!(h, q1, "still strike 1, back after the first pause");
        // After the pause, a new challenge is the next strike.
        let q2 = h.challenged(base, base, "challenged");
        assert!(q2.reason().unwrap().contains("strike 2"), "{q2:?}");
    }

    #[test]
    fn quarantines_grow_with_strikes_and_a_good_answer_forgives() {
        let base = 5 * MIN;
        let q1 = Health::Ready.challenged(0, base, "challenged");
        assert_eq!(q1.back_at(0), Some(base));
        // The pause is over but the next challenge finds the strike.
        let q2 = q1.challenged(base, base, "challenged");
        assert_eq!(q2.back_at(base), Some(base + 2 * base));
        let q3 = q2.challenged(3 * base, base, "challenged");
        let q4 = q3.challenged(7 * base, base, "challenged");
        let q5 = q4.challenged(15 * base, base, "challenged");
        assert_eq!(
            q5.back_at(15 * base),
            Some(15 * base + 8 * base),
            "capped at 8x"
        );
        assert!(q5.reason().unwrap().contains("strike 5"));
        let ok = q5.answered(23 * base);
        assert_eq!(ok, Health::Ready);
        assert_eq!(
            ok.challenged(0, base, "challenged").back_at(0),
            Some(base),
            "strikes start over"
        );
    }

    #[test]
    fn pauses_do_not_override_final_verdicts() {
        for h in [
            Health::Disabled,
            Health::Forbidden {
                reason: "banned".into(),
            },
            Health::Invalid {
                reason: "refused".into(),
            },
        ] {
            assert_eq!(h.quota_reached(0, MIN), h);
            assert_eq!(h.challenged(0, MIN, "x"), h);
            assert!(!h.usable(u64::MAX));
            assert_eq!(h.back_at(0), None);
        }
    }

    #[test]
    fn serialises_with_a_state_tag() {
        let h = Health::Cooling {
            until_ms: 5,
            reason: "q".into(),
        };
        let s = serde_json::to_string(&h).unwrap();
        assert_eq!(s, r#"{"state":"cooling","until_ms":5,"reason":"q"}"#);
        assert_eq!(serde_json::from_str::<Health>(&s).unwrap(), h);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(45_000), "45 s");
        assert_eq!(human(5 * MIN), "5 min");
        assert_eq!(human(26 * 60 * MIN + 30 * MIN), "26 h 30 min");
    }
}
