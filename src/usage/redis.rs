//! Usage in Redis, summed over every instance: one hash a day, `qp:usage:{YYYY-MM-DD}`,
//! whose fields are `<account>\t<key>\t<model>\t<counter>` and values the counts. Each
//! instance adds its increments with `HINCRBY` (one script per day and flush, a bounded
//! number of rows each) and renews the day's expiry to `USAGE_DAYS` + 1 days, so the hashes
//! of days no longer kept go away by themselves. The day is the hash tag: a script's one
//! key is its slot.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Counters, Day, DayRows, RowKey};
use crate::redis::{RedisClient, RedisError};

/// `ARGV[1]`: the expiry (seconds); then field, increment pairs.
const ADD: &str = "for i = 2, #ARGV, 2 do \
      redis.call('hincrby', KEYS[1], ARGV[i], ARGV[i + 1]) \
    end \
    redis.call('expire', KEYS[1], ARGV[1]) \
    return 1";
const READ: &str = "return redis.call('hgetall', KEYS[1])";

/// Rows a script adds at most (Redis blocks while a script runs: keep each one short).
const ROWS_PER_SCRIPT: usize = 1_000;

#[derive(Debug)]
pub struct SharedUsage {
    client: Arc<RedisClient>,
    ttl_secs: String,
}

fn day_key(day: Day) -> String {
    format!("qp:usage:{{{day}}}")
}

fn field(key: &RowKey, counter: &str) -> String {
    format!("{}\t{}\t{}\t{counter}", key.account, key.key, key.model)
}

/// A field's row and counter (`None`: not a field of ours).
fn from_field(field: &str) -> Option<(RowKey, &str)> {
    let mut parts = field.splitn(4, '\t');
    let (account, key, model, counter) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some((RowKey::new(account, key, model), counter))
}

impl SharedUsage {
    pub fn new(client: Arc<RedisClient>, days: u32) -> Self {
        SharedUsage {
            client,
            ttl_secs: ((u64::from(days) + 1) * 86_400).to_string(),
        }
    }

    /// Add one day's rows. `Err`: the rows not added (all of them, or those after a
    /// failed script).
    pub async fn add(&self, day: Day, rows: DayRows) -> Result<(), DayRows> {
        let key = day_key(day);
        let rows: Vec<(RowKey, Counters)> = rows.into_iter().collect();
        let mut sent = 0;
        for chunk in rows.chunks(ROWS_PER_SCRIPT) {
            let mut args = vec![self.ttl_secs.clone()];
            for (row, c) in chunk {
                for (name, v) in Counters::NAMES.iter().zip(c.values()) {
                    if v > 0 {
                        args.push(field(row, name));
                        args.push(v.to_string());
                    }
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = self.client.eval::<i64>(ADD, &[&key], &args).await {
                tracing::warn!(error = %e.0, day = %day, "usage: not added to Redis yet; retried at the next flush");
                return Err(rows.into_iter().skip(sent).collect());
            }
            sent += chunk.len();
        }
        Ok(())
    }

    /// Every instance's rows of the days `from..=to`.
    pub async fn read(&self, from: Day, to: Day) -> Result<BTreeMap<Day, DayRows>, RedisError> {
        let mut table = BTreeMap::new();
        let mut day = from;
        while day <= to {
            let flat: Vec<String> = self.client.eval(READ, &[&day_key(day)], &[]).await?;
            let rows: &mut DayRows = table.entry(day).or_default();
            for pair in flat.chunks_exact(2) {
                let Some((row, counter)) = from_field(&pair[0]) else {
                    continue;
                };
                let mut one = Counters::default();
                if let (Some(slot), Ok(v)) = (one.value_mut(counter), pair[1].parse::<u64>()) {
                    *slot = v;
                    rows.entry(row).or_default().add(&one);
                }
            }
            day = day.plus(1);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_keys_name_their_day() {
        let row = RowKey::new("acct, \"a\"", "0123abcd", "qwen3-max");
        let f = field(&row, "input_tokens");
        let (back, counter) = from_field(&f).unwrap();
        assert_eq!((back, counter), (row, "input_tokens"));
        assert_eq!(from_field("no tabs"), None);
        assert_eq!(
            day_key(Day::parse("2026-03-01").unwrap()),
            "qp:usage:{2026-03-01}"
        );
    }
}
