//! Conformance: running the server.
//!
//! `/healthz`, the Prometheus series on `/metrics` (labelled with the
//! runtime, moving with posts, deliveries, viewers and refusals), and
//! graceful shutdown on SIGTERM and SIGINT: open SSE streams end and
//! the process exits 0 within 5 s.
//!
//! That `/healthz` answers 503 while draining is not checked: the drain
//! is over too quickly to observe without a hook inside the server.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

/// Every series the contract names for `/metrics`.
const SERIES: [&str; 6] = [
    "livecomment_connections",
    "livecomment_viewers",
    "livecomment_comments_posted_total",
    "livecomment_events_delivered_total",
    "livecomment_viewer_evictions_total",
    "livecomment_requests_refused_total",
];

/// Opens a viewer, sends `signal`, and checks the stream ends and the
/// process exits with status 0, each within 5 s.
fn check_graceful_shutdown(rt: &str, signal: &str) {
    let mut server = Server::start(rt, &[]);
    let mut viewer = server.sse("/streams/s/events");
    server.wait_for_viewers("s", 1);

    server.signal(signal);

    viewer.expect_end(Duration::from_secs(5));
    let status = server.wait_for_exit(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIG{signal}: {status}"
    );
}

conformance! {
    /// A healthy server answers `/healthz` with 200 `ok`.
    fn healthz_is_200_ok(rt) {
        let server = Server::start(rt, &[]);

        let response = server.get("/healthz");

        assert_eq!(response.status, 200, "{response}");
        assert_eq!(response.text().trim(), "ok");
    }

    /// `/metrics` is Prometheus text with every contract series, each
    /// labelled with the runtime that serves it.
    fn metrics_are_prometheus_text_labelled_with_the_runtime(rt) {
        let server = Server::start(rt, &[]);
        server.get("/nope");

        let response = server.get("/metrics");

        assert_eq!(response.status, 200, "{response}");
        let content_type = response.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("text/plain"), "Content-Type {content_type:?}");
        let metrics = Metrics::new(response.text());
        let label = format!("runtime=\"{rt}\"");
        for series in SERIES {
            assert!(metrics.has(series), "{series} missing from:\n{}", metrics.text());
            let labelled = metrics.sum_with(series, &label) == metrics.sum(series);
            assert!(labelled, "{series} has samples without {label}:\n{}", metrics.text());
        }
    }

    /// One post with one viewer moves posted and delivered by one each.
    fn metrics_count_posted_comments_and_delivered_events(rt) {
        let server = Server::start(rt, &[]);
        let mut viewer = server.sse("/streams/s/events");
        server.wait_for_viewers("s", 1);
        let before = server.metrics();

        server.post_comment("s", &server.token("alice"), "hi").expect_created();
        viewer.next_comment();

        let after = server.metrics();
        for series in ["livecomment_comments_posted_total", "livecomment_events_delivered_total"] {
            assert_eq!(after.sum(series) - before.sum(series), 1.0, "{series}");
        }
    }

    /// The gauges follow open connections and live viewers.
    fn metrics_count_connections_and_viewers(rt) {
        let server = Server::start(rt, &[]);
        let _viewers = [server.sse("/streams/a/events"), server.sse("/streams/b/events")];
        server.wait_for_viewers("a", 1);
        server.wait_for_viewers("b", 1);

        let metrics = server.metrics();

        assert_eq!(metrics.sum("livecomment_viewers"), 2.0);
        assert!(metrics.sum("livecomment_connections") >= 3.0, "2 viewers + this request");
    }

    /// Refused requests are counted under their error code.
    fn metrics_count_refused_requests_by_reason(rt) {
        let server = Server::start(rt, &[]);
        server.get("/nope").expect_error(404, "not_found");
        server.get("/streams/s/comments?limit=0").expect_error(400, "bad_request");
        server.post_comment("s", "bad-token", "hi").expect_error(401, "invalid_token");

        let metrics = server.metrics();

        for reason in ["not_found", "bad_request", "invalid_token"] {
            let label = format!("reason=\"{reason}\"");
            let count = metrics.sum_with("livecomment_requests_refused_total", &label);
            assert_eq!(count, 1.0, "refusals with {label}:\n{}", metrics.text());
        }
    }

    /// SIGTERM ends open event streams and exits 0 within 5 s.
    fn sigterm_ends_open_streams_and_exits_zero(rt) {
        check_graceful_shutdown(rt, "TERM");
    }

    /// SIGINT does the same as SIGTERM.
    fn sigint_ends_open_streams_and_exits_zero(rt) {
        check_graceful_shutdown(rt, "INT");
    }
}
