//! The per-user posting limit: a token bucket per `sub`.
//!
//! Buckets live in a map split into shards by a hash of the user, each
//! behind its own mutex, so posters on different workers rarely meet on
//! a lock; a check holds the lock for a few arithmetic operations.
//!
//! A bucket that has refilled completely carries no information (a fresh
//! bucket would be identical), so when a shard grows past
//! [`PRUNE_AT`] entries, full buckets are dropped. Memory is bounded by
//! the number of users who posted within the last `burst / rate` seconds.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

const SHARDS: usize = 16;
const PRUNE_AT: usize = 4096;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Per-user token buckets.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved up.
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `user`. `Err(secs)` says how long until the
    /// next token (rounded up, at least 1) when the bucket is empty.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), u64> {
        let shard = &self.shards[self.hasher.hash_one(user) as usize % SHARDS];
        let mut map = shard.lock();
        if map.len() >= PRUNE_AT {
            self.prune(&mut map, now);
        }

        let bucket = map.entry(user.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err((wait.ceil() as u64).max(1))
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
    }

    fn prune(&self, map: &mut HashMap<String, Bucket>, now: Instant) {
        map.retain(|_, bucket| {
            self.refill(bucket, now);
            bucket.tokens < self.burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_next_post_waits() {
        let limiter = RateLimiter::new(5.0, 10.0);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check("alice", now).is_ok());
        }
        assert_eq!(limiter.check("alice", now), Err(1));
        assert!(limiter.check("bob", now).is_ok());
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let limiter = RateLimiter::new(5.0, 10.0);
        let now = Instant::now();
        for _ in 0..10 {
            limiter.check("alice", now).unwrap();
        }
        let later = now + Duration::from_millis(400);
        assert!(limiter.check("alice", later).is_ok());
        assert!(limiter.check("alice", later).is_ok());
        assert!(limiter.check("alice", later).is_err());
    }

    #[test]
    fn full_buckets_are_pruned() {
        let limiter = RateLimiter::new(1000.0, 1.0);
        let now = Instant::now();
        for i in 0..PRUNE_AT * SHARDS * 2 {
            limiter.check(&format!("u{i}"), now).unwrap();
        }
        let later = now + Duration::from_secs(1);
        limiter.check("last", later).unwrap();
        let total: usize = limiter.shards.iter().map(|s| s.lock().len()).sum();
        assert!(total < PRUNE_AT * SHARDS * 2, "nothing pruned: {total}");
    }
}
