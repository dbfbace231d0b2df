//! Conformance: HTTP/1.1 itself and the server's protective limits.
//!
//! Keep-alive, pipelining and `Connection: close`; unknown paths (404)
//! and methods (405 with `Allow`); malformed request lines (400); heads
//! too large or with too many headers (431); heads and bodies that do
//! not arrive in time (408); connections beyond `--max-connections`
//! (503). Every refusal carries the contract's JSON error body.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

/// `GET /streams/{stream}` as raw bytes, keeping the connection open.
fn stream_info_request(stream: &str) -> String {
    format!("GET /streams/{stream} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// A request head for `/healthz` with `count` headers in all, Host included.
fn head_with_headers(count: usize) -> String {
    let mut head = "GET /healthz HTTP/1.1\r\nHost: t\r\n".to_string();
    for n in 1..count {
        head += &format!("X-Extra-{n}: {n}\r\n");
    }
    head + "\r\n"
}

conformance! {
    /// Two requests, one after the other, on one connection.
    fn two_requests_share_one_keep_alive_connection(rt) {
        let server = Server::start(rt, &[]);
        let mut conn = server.connect();

        conn.send(stream_info_request("a"));
        let first = conn.read_response();
        conn.send(stream_info_request("b"));
        let second = conn.read_response();

        assert_eq!(first.json()["stream"], "a");
        assert_eq!(second.json()["stream"], "b");
    }

    /// Two requests in one write get two responses, in request order.
    fn pipelined_requests_are_answered_in_order(rt) {
        let server = Server::start(rt, &[]);
        let mut conn = server.connect();
        let token = server.token("alice");
        let post = Request::comment("a", &token, "pipelined").to_bytes();

        let mut both = post;
        both.extend_from_slice(stream_info_request("b").as_bytes());
        both.extend_from_slice(stream_info_request("a").as_bytes());
        conn.send(both);

        assert_eq!(conn.read_response().expect_created()["stream"], "a");
        assert_eq!(conn.read_response().json()["stream"], "b");
        assert_eq!(conn.read_response().json()["last_id"], 1);
    }

    /// `Connection: close` gets its response, then the server closes.
    fn connection_close_is_honoured(rt) {
        let server = Server::start(rt, &[]);
        let mut conn = server.connect();

        conn.send("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");

        assert_eq!(conn.read_response().status, 200);
        conn.expect_closed();
    }

    /// Paths outside the contract are 404 `not_found`.
    fn unknown_paths_are_404(rt) {
        let server = Server::start(rt, &[]);

        let paths = ["/nope", "/streams", "/streams/", "/streams/s/x", "/streams/s/comments/1/x"];
        for path in paths {
            server.get(path).expect_error(404, "not_found");
        }
    }

    /// A known path with a method it does not serve is 405 with `Allow`.
    fn wrong_method_is_405_with_allow(rt) {
        let server = Server::start(rt, &[]);
        let cases = [
            ("PUT", "/streams/s/comments", &["GET", "POST"][..]),
            ("POST", "/streams/s/events", &["GET"][..]),
            ("PATCH", "/streams/s", &["GET"][..]),
            ("POST", "/healthz", &["GET"][..]),
        ];

        for (method, path, allowed) in cases {
            let request = Request::new(method, path).bearer(&server.token("alice"));
            let response = server.send(request.json(r#"{"text":"hi"}"#));
            response.expect_error(405, "method_not_allowed");
            let allow = response.header("allow").unwrap_or_default();
            for method in allowed {
                assert!(allow.contains(method), "{method} missing from Allow: {allow:?}");
            }
        }
    }

    /// A request line that is not HTTP is 400 `bad_request`.
    fn garbage_request_line_is_400(rt) {
        let server = Server::start(rt, &[]);

        for garbage in ["HELLO\r\n\r\n", "GET /healthz\r\n\r\n", "GET / HTTP/9.9 extra\r\n\r\n"] {
            let mut conn = server.connect();
            conn.send(garbage);
            conn.read_response().expect_error(400, "bad_request");
        }
    }

    /// A request head over 8 KiB is 431 `headers_too_large`.
    fn head_over_8_kib_is_431(rt) {
        let server = Server::start(rt, &[]);
        let mut conn = server.connect();
        let padding = "x".repeat(9000);

        conn.send(format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {padding}\r\n\r\n"));

        conn.read_response().expect_error(431, "headers_too_large");
    }

    /// 64 headers are fine; 65 are 431 `headers_too_large`.
    fn more_than_64_headers_is_431(rt) {
        let server = Server::start(rt, &[]);

        let mut conn = server.connect();
        conn.send(head_with_headers(64));
        assert_eq!(conn.read_response().status, 200, "64 headers");

        let mut conn = server.connect();
        conn.send(head_with_headers(65));
        conn.read_response().expect_error(431, "headers_too_large");
    }

    /// Half a head, then silence: 408 `timeout` after `--head-timeout`.
    fn incomplete_head_is_408_after_the_head_timeout(rt) {
        let server = Server::start(rt, &["--head-timeout", "500ms"]);
        let mut conn = server.connect();
        let sent_at = Instant::now();

        conn.send("GET /healthz HTTP/1.1\r\nHo");

        conn.read_response().expect_error(408, "timeout");
        let waited = sent_at.elapsed();
        assert!(waited >= Duration::from_millis(400), "408 after only {waited:?}");
    }

    /// A body shorter than its `Content-Length`: 408 `timeout` too.
    fn incomplete_body_is_408_after_the_head_timeout(rt) {
        let server = Server::start(rt, &["--head-timeout", "500ms"]);
        let mut conn = server.connect();
        let request = Request::comment("s", &server.token("alice"), "hello there").to_bytes();

        conn.send(&request[..request.len() - 5]);

        conn.read_response().expect_error(408, "timeout");
    }

    /// Past `--max-connections`, a new connection gets 503 `unavailable`
    /// and is closed; once a connection goes, a new one is served again.
    fn connections_beyond_max_connections_get_503(rt) {
        let server = Server::start(rt, &["--max-connections", "2"]);
        let mut held = [server.connect(), server.connect()];
        for conn in &mut held {
            conn.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(conn.read_response().status, 200);
        }

        let mut refused = server.connect();
        refused.send("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        refused.read_response().expect_error(503, "unavailable");
        refused.expect_closed();

        drop(held);
        let served = || server.send(Request::get("/healthz")).status == 200;
        wait_until("a connection slot to free up", PATIENCE, served);
    }
}
