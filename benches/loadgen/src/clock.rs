//! One time base for posters and viewers.
//!
//! A post carries its scheduled send time as Unix nanoseconds in its text;
//! a viewer subtracts that from the time it read the event. Both sides
//! live in this process, so both use one [`Clock`]: a monotonic `Instant`
//! paired once with the wall clock. Latencies then never jump when the
//! wall clock is adjusted during a run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_unix_nanos: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            origin: Instant::now(),
            origin_unix_nanos: duration_nanos(unix),
        }
    }

    /// Unix nanoseconds at `at`, on this clock.
    pub fn nanos_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        self.origin_unix_nanos + duration_nanos(since)
    }

    /// Unix nanoseconds now, on this clock.
    pub fn now_nanos(&self) -> u64 {
        self.nanos_at(Instant::now())
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
pub fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
