//! Helpers shared by the conformance suite.
//!
//! The suite treats the `livecomment` binary as a black box: it starts
//! `livecomment serve` on port 0, talks to it over plain sockets and
//! checks what comes back against `shared/CONTRACT.md` and `docs/cli.md`.
//!
//! Layout:
//! - [`conformance!`]: turns each test body into one `#[test]` per runtime
//!   backend; **the list of backends lives in that macro, and only there**;
//! - `server`: start, stop and signal a server; run the `token` command;
//! - `http`: a raw HTTP/1.1 client that sends exact bytes;
//! - `sse`: a Server-Sent Events reader for a live stream;
//! - `tokens`: JWTs, good and bad, and key pairs made with `openssl`;
//! - `metrics`: reading the Prometheus text of `/metrics`.
//!
//! Nothing here sleeps and hopes: every wait is a bounded poll of a
//! condition ([`wait_until`]) or a read with a deadline, so a test that
//! goes wrong fails with a message instead of hanging.

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code, unused_imports)]

mod http;
mod metrics;
mod server;
mod sse;
mod tokens;
pub mod ws;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use http::{Conn, Request, Response};
pub use metrics::Metrics;
pub use server::{Server, TempDir, run_livecomment};
pub use sse::{Next, SseEvent, SseItem, SseStream};
pub use tokens::{KeyPair, base64url, claims, hs256, random_secret, sign, unsigned_token};

/// Runs every test body given to it on every runtime backend.
///
/// ```ignore
/// conformance! {
///     /// What the test shows.
///     fn healthz_is_200_ok(rt) {
///         let server = Server::start(rt, &[]);
///         ...
///     }
/// }
/// ```
///
/// Each body becomes a plain function `fn name(rt: &str)`, and each
/// backend gets a module of `#[test]` wrappers calling it, so a test is
/// reported as `tokio::healthz_is_200_ok` and `cargo test tokio::` runs
/// one backend.
///
/// **To add a backend, add its `--runtime` name to the list below.**
macro_rules! conformance {
    ($($tests:tt)*) => {
        // The runtime backends under test; add new ones here.
        conformance_on_runtimes!([tokio, may, glommio, mio, threads] { $($tests)* });
    };
}

/// The expansion behind [`conformance!`]: bodies once, wrappers per backend.
macro_rules! conformance_on_runtimes {
    ([$($runtime:ident),*] $tests:tt) => {
        conformance_bodies!($tests);
        $(
            mod $runtime {
                conformance_wrappers!($runtime $tests);
            }
        )*
    };
}

/// Emits each test body as `fn name(rt: &str)`.
macro_rules! conformance_bodies {
    ({ $( $(#[$meta:meta])* fn $name:ident($rt:ident) $body:block )* }) => {
        $( $(#[$meta])* fn $name($rt: &str) $body )*
    };
}

/// Emits one `#[test]` per body that runs it on `$runtime`.
macro_rules! conformance_wrappers {
    ($runtime:ident { $( $(#[$meta:meta])* fn $name:ident($rt:ident) $body:block )* }) => {
        $(
            #[test]
            fn $name() {
                super::$name(stringify!($runtime));
            }
        )*
    };
}

/// How long any single wait in the suite may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Polls `condition` every 10 ms until it holds; panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, condition: impl FnMut() -> bool) {
    assert!(
        poll_until(timeout, condition),
        "gave up after {timeout:?} waiting for {what}"
    );
}

/// Polls `condition` every 10 ms until it holds (true) or `timeout`
/// passes (false).
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Milliseconds since the Unix epoch, the unit of a comment's `ts`.
pub fn now_millis() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since_epoch.as_millis() as u64
}

/// Seconds since the Unix epoch, the unit of JWT `exp` and `nbf`.
pub fn now_secs() -> u64 {
    now_millis() / 1000
}
