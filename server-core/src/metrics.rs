//! Counters and gauges, rendered as Prometheus text for `/metrics`.
//!
//! Every field is an atomic that any connection on any worker updates
//! with `Relaxed` ordering: each is an independent count, and a scrape
//! that sees one a moment before another is fine. Hot counters sit on
//! their own cache lines so workers bumping different ones do not
//! contend.

use crate::error::ApiError;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A value alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct Padded<T>(T);

/// The refusal reasons, in the order they are rendered.
const REASONS: [&str; 12] = [
    "bad_request",
    "invalid_token",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "timeout",
    "length_required",
    "too_large",
    "unsupported_media_type",
    "rate_limited",
    "headers_too_large",
    "unavailable",
];

/// The service's metrics.
#[derive(Default)]
pub struct Metrics {
    connections: Padded<AtomicI64>,
    viewers: Padded<AtomicI64>,
    posted: Padded<AtomicU64>,
    delivered: Padded<AtomicU64>,
    evictions: Padded<AtomicU64>,
    requests: Padded<AtomicU64>,
    refused: [AtomicU64; REASONS.len()],
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections.0.fetch_add(1, Relaxed);
    }
    pub fn connection_closed(&self) {
        self.connections.0.fetch_sub(1, Relaxed);
    }
    /// Open connections now.
    pub fn connections(&self) -> i64 {
        self.connections.0.load(Relaxed)
    }
    pub fn viewer_joined(&self) {
        self.viewers.0.fetch_add(1, Relaxed);
    }
    pub fn viewer_left(&self) {
        self.viewers.0.fetch_sub(1, Relaxed);
    }
    pub fn comment_posted(&self) {
        self.posted.0.fetch_add(1, Relaxed);
    }
    pub fn events_delivered(&self, n: u64) {
        self.delivered.0.fetch_add(n, Relaxed);
    }
    pub fn viewer_evicted(&self) {
        self.evictions.0.fetch_add(1, Relaxed);
    }
    pub fn request(&self) {
        self.requests.0.fetch_add(1, Relaxed);
    }
    pub fn refused(&self, err: &ApiError) {
        if let Some(i) = REASONS.iter().position(|r| *r == err.code()) {
            self.refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Prometheus text exposition, every series labelled with `runtime`.
    pub fn render(&self, runtime: &str) -> String {
        let mut out = String::with_capacity(2048);
        let l = format!("runtime=\"{runtime}\"");
        let series: [(&str, &str, &str, i64); 6] = [
            (
                "livecomment_connections",
                "gauge",
                "Open client connections.",
                self.connections.0.load(Relaxed),
            ),
            (
                "livecomment_viewers",
                "gauge",
                "Live SSE and WebSocket viewers.",
                self.viewers.0.load(Relaxed),
            ),
            (
                "livecomment_comments_posted_total",
                "counter",
                "Comments accepted.",
                self.posted.0.load(Relaxed) as i64,
            ),
            (
                "livecomment_events_delivered_total",
                "counter",
                "Events handed to viewers' sockets.",
                self.delivered.0.load(Relaxed) as i64,
            ),
            (
                "livecomment_viewer_evictions_total",
                "counter",
                "Viewers disconnected for falling behind.",
                self.evictions.0.load(Relaxed) as i64,
            ),
            (
                "livecomment_requests_total",
                "counter",
                "HTTP requests parsed.",
                self.requests.0.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{l}}} {value}\n"
            );
        }

        let name = "livecomment_requests_refused_total";
        let _ = write!(
            out,
            "# HELP {name} Requests refused, by reason.\n# TYPE {name} counter\n"
        );
        for (reason, count) in REASONS.iter().zip(&self.refused) {
            let _ = writeln!(
                out,
                "{name}{{{l},reason=\"{reason}\"}} {}",
                count.load(Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_labels_every_series_with_the_runtime() {
        let m = Metrics::default();
        m.refused(&ApiError::RateLimited { retry_after: 1 });
        m.events_delivered(3);
        let text = m.render("tokio");
        assert!(text.contains("livecomment_events_delivered_total{runtime=\"tokio\"} 3\n"));
        assert!(text.contains(
            "livecomment_requests_refused_total{runtime=\"tokio\",reason=\"rate_limited\"} 1\n"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("runtime=\"tokio\""), "{line}");
        }
    }
}
