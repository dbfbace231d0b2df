//! The service's limits and settings, with the contract's defaults.
//!
//! One `Config` is built by the binary from its flags and shared,
//! read-only, by every connection on every runtime. Nothing here changes
//! after start-up, so it needs no lock.

use std::time::Duration;

/// Limits and settings every backend applies the same way.
#[derive(Debug, Clone)]
pub struct Config {
    /// Open connections beyond which new ones get 503 and are closed.
    pub max_connections: usize,
    /// Largest accepted POST body, in bytes (413 beyond it).
    pub max_body: usize,
    /// Largest request head (request line and headers), in bytes (431).
    pub max_head: usize,
    /// Most headers in one request (431 beyond it).
    pub max_headers: usize,
    /// Time allowed for a request head, and then its body, to arrive (408).
    pub head_timeout: Duration,
    /// Interval between SSE keep-alive comments.
    pub keepalive: Duration,
    /// Comments retained per stream for history and resume.
    pub history: usize,
    /// A viewer's pending bytes beyond which it is evicted.
    pub viewer_queue: usize,
    /// Sustained posts per second allowed to one user.
    pub rate_per_sec: f64,
    /// Posts one user may make in a burst.
    pub rate_burst: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: 10_000,
            max_body: 4096,
            max_head: 8192,
            max_headers: 64,
            head_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            history: 10_000,
            viewer_queue: 1 << 20,
            rate_per_sec: 5.0,
            rate_burst: 10.0,
        }
    }
}
