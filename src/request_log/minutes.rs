//! The last hour at a glance, whatever the size of the ring: requests, errors and a
//! histogram of times to first token for each of the last [`MINUTES`] minutes. Pure: the
//! time comes in as a parameter.
//!
//! A request counts in the minute (UTC, from the Unix epoch) in which its response ended.
//! Each minute has a slot, reused an hour later (a slot holding an older minute is cleared
//! before it counts again), so memory is fixed: 60 × ([`TTFT_BOUNDS_MS`] + 2) counters.
//!
//! **Resolution.** First-token times go into fixed buckets on a roughly logarithmic scale
//! from 1 ms to 120 s ([`TTFT_BOUNDS_MS`]: from 10 ms on, each bound is 1.3–1.43 × the one
//! before); a percentile is reported as the upper bound of the bucket it falls in — never
//! below the true value, at most 43 % above it (at most 2 ms above it under 10 ms). Times
//! beyond 120 s count as 120 s.

use serde::Serialize;

/// Minutes kept: the last hour, the current minute included.
pub(crate) const MINUTES: usize = 60;

const MINUTE_MS: u64 = 60_000;

/// The upper bounds (inclusive, ms) of the first-token buckets.
pub(crate) const TTFT_BOUNDS_MS: [u64; 37] = [
    1, 2, 3, 5, 7, 10, 14, 20, 28, 40, 56, 80, 110, 150, 200, 270, 360, 480, 640, 850, 1_100,
    1_500, 2_000, 2_700, 3_600, 4_800, 6_400, 8_500, 11_000, 15_000, 20_000, 27_000, 36_000,
    48_000, 64_000, 85_000, 120_000,
];

const BUCKETS: usize = TTFT_BOUNDS_MS.len();

/// The bucket of a first-token time.
pub(crate) fn bucket_of(ms: u64) -> usize {
    TTFT_BOUNDS_MS
        .partition_point(|&bound| bound < ms)
        .min(BUCKETS - 1)
}

#[derive(Debug, Clone, Copy)]
struct Minute {
    /// Minutes since the Unix epoch (`u64::MAX`: never used).
    index: u64,
    requests: u64,
    errors: u64,
    ttft: [u32; BUCKETS],
}

impl Minute {
    const EMPTY: Minute = Minute {
        index: u64::MAX,
        requests: 0,
        errors: 0,
        ttft: [0; BUCKETS],
    };
}

/// The per-minute counts of the last hour.
#[derive(Debug, Clone)]
pub(crate) struct Minutes {
    /// Minute `i` lives in slot `i % MINUTES`.
    slots: [Minute; MINUTES],
}

impl Default for Minutes {
    fn default() -> Self {
        Minutes {
            slots: [Minute::EMPTY; MINUTES],
        }
    }
}

/// One minute of [`LastHour::per_minute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct MinuteCount {
    /// The minute's start, in milliseconds since the Unix epoch.
    pub(crate) minute: u64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

/// Percentiles of the first-token times (bucket upper bounds; none without a sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Ttft {
    pub(crate) p50: Option<u64>,
    pub(crate) p99: Option<u64>,
    /// Requests whose answer began.
    pub(crate) count: u64,
}

/// The last hour: totals, first-token percentiles, and every minute, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastHour {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) ttft: Ttft,
    /// [`MINUTES`] of them, zero-filled, the current minute last.
    pub(crate) per_minute: Vec<MinuteCount>,
}

impl Minutes {
    /// A request that ended at `now_ms`: an error or not, and when its answer began.
    pub(crate) fn record(&mut self, now_ms: u64, error: bool, ttft_ms: Option<u64>) {
        let index = now_ms / MINUTE_MS;
        let slot = &mut self.slots[(index % MINUTES as u64) as usize];
        if slot.index != index {
            // A clock stepped back past the slot's minute: that minute is not counted
            // again (its slot holds a later one).
            if slot.index != u64::MAX && slot.index > index {
                return;
            }
            *slot = Minute {
                index,
                ..Minute::EMPTY
            };
        }
        slot.requests += 1;
        slot.errors += u64::from(error);
        if let Some(ms) = ttft_ms {
            let b = &mut slot.ttft[bucket_of(ms)];
            *b = b.saturating_add(1);
        }
    }

    /// The hour ending with the minute of `now_ms`.
    pub(crate) fn last_hour(&self, now_ms: u64) -> LastHour {
        let current = now_ms / MINUTE_MS;
        let mut hist = [0u64; BUCKETS];
        let mut per_minute = Vec::with_capacity(MINUTES);
        for index in (current.saturating_sub(MINUTES as u64 - 1))..=current {
            let slot = &self.slots[(index % MINUTES as u64) as usize];
            let mut count = MinuteCount {
                minute: index * MINUTE_MS,
                requests: 0,
                errors: 0,
            };
            if slot.index == index {
                count.requests = slot.requests;
                count.errors = slot.errors;
                for (h, n) in hist.iter_mut().zip(slot.ttft) {
                    *h += u64::from(n);
                }
            }
            per_minute.push(count);
        }
        LastHour {
            requests: per_minute.iter().map(|m| m.requests).sum(),
            errors: per_minute.iter().map(|m| m.errors).sum(),
            ttft: Ttft {
                p50: percentile(&hist, 50),
                p99: percentile(&hist, 99),
                count: hist.iter().sum(),
            },
            per_minute,
        }
    }
}

/// The `p`th percentile of a histogram over [`TTFT_BOUNDS_MS`]: the bound of the bucket
/// that holds the sample of rank ⌈p/100 × n⌉ (the nearest-rank method).
pub(crate) fn percentile(hist: &[u64; BUCKETS], p: u64) -> Option<u64> {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = (p * n).div_ceil(100).max(1);
    let mut seen = 0;
    for (count, bound) in hist.iter().zip(TTFT_BOUNDS_MS) {
        seen += count;
        if seen >= rank {
            return Some(bound);
        }
    }
    TTFT_BOUNDS_MS.last().copied()
}
