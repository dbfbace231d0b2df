//! Conformance: `POST /streams/{s}/comments`.
//!
//! What a 201 carries (the comment JSON, `Location`, per-stream ids),
//! which stream names exist, the comment text rules, how the request
//! body must be framed and typed (411, 413, 415, smuggling guards), and
//! the per-user rate limit (429).

#[macro_use]
mod common;

use common::*;
use serde_json::{Value, json};

/// Posts `text` and returns the response, with a token for `alice`.
fn post(server: &Server, text: &str) -> Response {
    server.post_comment("s", &server.token("alice"), text)
}

/// A comment request on stream `s` with a raw body and content type.
fn raw_post(server: &Server, content_type: &str, body: &str) -> Request {
    let request = Request::post("/streams/s/comments").bearer(&server.token("alice"));
    request.body(content_type, body.as_bytes())
}

/// The head of a comment POST, with `headers` added, and no body.
fn post_head(server: &Server, headers: &str) -> String {
    let token = server.token("alice");
    format!(
        "POST /streams/s/comments HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{headers}\r\n"
    )
}

conformance! {
    /// A valid post answers 201 with the stored comment and its URL:
    /// id, stream, author (the token's `sub`), name, trimmed text, ts.
    fn post_returns_201_with_the_comment_and_its_location(rt) {
        let server = Server::start(rt, &[]);

        let before = now_millis();
        let response = server.post_comment("match-7", &server.token("alice"), "  Goal!  ");
        let after = now_millis();

        let comment = response.expect_created();
        assert_eq!(response.header("location"), Some("/streams/match-7/comments/1"));
        let content_type = response.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "{response}");
        assert_eq!(comment["id"], 1);
        assert_eq!(comment["stream"], "match-7");
        assert_eq!(comment["author"], "alice");
        assert_eq!(comment["name"], Value::Null);
        assert_eq!(comment["text"], "Goal!");
        let ts = comment["ts"].as_u64().expect("ts is an integer");
        assert!(before <= ts && ts <= after, "ts {ts} outside [{before}, {after}]");
    }

    /// Ids count 1, 2, 3 within a stream, and each stream has its own.
    fn ids_count_from_one_in_each_stream_independently(rt) {
        let server = Server::start(rt, &[]);
        let token = server.token("alice");

        let mut ids = Vec::new();
        for stream in ["a", "a", "b", "a", "b"] {
            let comment = server.post_comment(stream, &token, "hi").expect_created();
            ids.push((comment["stream"].clone(), comment["id"].clone()));
        }

        let expected = [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)];
        let expected: Vec<_> = expected.iter().map(|(s, id)| (json!(s), json!(id))).collect();
        assert_eq!(ids, expected);
    }

    /// The optional `name` claim becomes the comment's `name`.
    fn name_claim_becomes_the_comment_name(rt) {
        let server = Server::start(rt, &[]);
        let claims = json!({ "sub": "alice", "name": "Alice", "exp": now_secs() + 600 });
        let token = hs256(server.secret(), &claims);

        let comment = server.post_comment("s", &token, "hello").expect_created();

        assert_eq!(comment["author"], "alice");
        assert_eq!(comment["name"], "Alice");
    }

    /// Stream names are `[A-Za-z0-9_.-]{1,64}`; every other name is 404 on
    /// every stream endpoint.
    fn stream_names_outside_the_pattern_are_404(rt) {
        let server = Server::start(rt, &[]);
        let token = server.token("alice");
        let too_long = "a".repeat(65);

        for name in [too_long.as_str(), "a%20b", "%C3%A4", "a%2Fb", "a+b", "a*"] {
            server.post_comment(name, &token, "hi").expect_error(404, "not_found");
            for suffix in ["", "/comments", "/events"] {
                let response = server.get(&format!("/streams/{name}{suffix}"));
                response.expect_error(404, "not_found");
            }
        }
    }

    /// Names using every allowed character class, up to 64 long, work.
    fn stream_names_inside_the_pattern_are_accepted(rt) {
        let server = Server::start(rt, &[]);
        let token = server.token("alice");
        let longest = "x".repeat(64);

        for name in ["Match_7.final-B", longest.as_str(), "0"] {
            let comment = server.post_comment(name, &token, "hi").expect_created();
            assert_eq!(comment["stream"], name);
        }
    }

    /// Text that is empty once trimmed is refused.
    fn empty_or_whitespace_only_text_is_400(rt) {
        let server = Server::start(rt, &[]);

        for text in ["", " ", "   \n\t  "] {
            post(&server, text).expect_error(400, "bad_request");
        }
    }

    /// The limit is 500 Unicode scalar values after trimming, not bytes.
    fn text_is_limited_to_500_scalar_values_after_trimming(rt) {
        let server = Server::start(rt, &[]);
        let ascii_500 = "a".repeat(500);
        let emoji_500 = "😀".repeat(500);
        let padded_500 = format!("  {ascii_500}\n ");

        for text in [&ascii_500, &emoji_500] {
            assert_eq!(post(&server, text).expect_created()["text"], text.as_str());
        }
        assert_eq!(post(&server, &padded_500).expect_created()["text"], ascii_500);
        for text in ["a".repeat(501), "😀".repeat(501)] {
            post(&server, &text).expect_error(400, "bad_request");
        }
    }

    /// Control characters are refused, except `\n` and `\t`, which are
    /// stored and returned exactly as sent.
    fn control_characters_are_400_except_newline_and_tab(rt) {
        let server = Server::start(rt, &[]);

        for text in ["a\u{0}b", "a\u{7}b", "a\rb", "a\u{1b}[31mb", "a\u{7f}b", "a\u{85}b"] {
            post(&server, text).expect_error(400, "bad_request");
        }
        let kept = "line one\nline\ttwo\n\nthree";
        assert_eq!(post(&server, kept).expect_created()["text"], kept);
    }

    /// A body that is not a JSON object with a string `text` is refused.
    fn malformed_json_or_missing_text_is_400(rt) {
        let server = Server::start(rt, &[]);

        for body in [r#"{"text":"#, "not json", r#""hi""#, "[]", "{}", r#"{"text":5}"#,
                     r#"{"text":null}"#, r#"{"txt":"hi"}"#, ""] {
            let response = server.send(raw_post(&server, "application/json", body));
            response.expect_error(400, "bad_request");
        }
    }

    /// Only `application/json` bodies are taken.
    fn post_without_json_content_type_is_415(rt) {
        let server = Server::start(rt, &[]);
        let body = r#"{"text":"hi"}"#;

        let not_json = ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"];
        for content_type in not_json {
            let response = server.send(raw_post(&server, content_type, body));
            response.expect_error(415, "unsupported_media_type");
        }
        let untyped = Request::post("/streams/s/comments").bearer(&server.token("alice"));
        server.send(untyped.raw_body(body.as_bytes())).expect_error(415, "unsupported_media_type");
    }

    /// Parameters after the media type, such as a charset, are fine.
    fn json_content_type_with_charset_is_accepted(rt) {
        let server = Server::start(rt, &[]);
        let body = r#"{"text":"hi"}"#;

        for content_type in ["application/json; charset=utf-8", "application/json;charset=UTF-8"] {
            server.send(raw_post(&server, content_type, body)).expect_created();
        }
    }

    /// Media types compare case-insensitively (RFC 9110, 8.3.1).
    fn json_content_type_is_matched_case_insensitively(rt) {
        let server = Server::start(rt, &[]);

        let response = server.send(raw_post(&server, "Application/JSON", r#"{"text":"hi"}"#));

        response.expect_created();
    }

    /// A POST with neither `Content-Length` nor chunked encoding is 411.
    fn post_without_content_length_is_411(rt) {
        let server = Server::start(rt, &[]);
        let mut conn = server.connect();

        conn.send(post_head(&server, ""));

        conn.read_response().expect_error(411, "length_required");
    }

    /// A declared body over 4096 bytes is refused from the head alone:
    /// the test sends no body at all and still gets its 413.
    fn body_over_4096_bytes_is_413_before_the_body_is_sent(rt) {
        let server = Server::start(rt, &[]);
        let mut conn = server.connect();

        conn.send(post_head(&server, "Content-Length: 4097\r\n"));

        conn.read_response().expect_error(413, "too_large");
    }

    /// A body of exactly `--max-body` bytes is accepted; one more is 413.
    fn body_of_exactly_max_body_is_accepted_and_one_more_is_413(rt) {
        let server = Server::start(rt, &["--max-body", "100"]);
        let exact = json_body_of_len(100);
        let over = json_body_of_len(101);

        server.send(raw_post(&server, "application/json", &exact)).expect_created();
        let response = server.send(raw_post(&server, "application/json", &over));

        response.expect_error(413, "too_large");
    }

    /// `Content-Length` together with `Transfer-Encoding` is refused and
    /// the connection closed (request smuggling guard).
    fn content_length_with_transfer_encoding_is_400_and_closes(rt) {
        let server = Server::start(rt, &[]);
        let body = r#"{"text":"hi"}"#;
        let headers = "Content-Length: 13\r\nTransfer-Encoding: chunked\r\n";
        let mut conn = server.connect();

        conn.send(post_head(&server, headers) + body);

        conn.read_response().expect_error(400, "bad_request");
        conn.expect_closed();
    }

    /// Two `Content-Length` headers that disagree are refused and the
    /// connection closed.
    fn differing_duplicate_content_lengths_are_400_and_close(rt) {
        let server = Server::start(rt, &[]);
        let body = r#"{"text":"hi"}"#;
        let mut conn = server.connect();

        conn.send(post_head(&server, "Content-Length: 13\r\nContent-Length: 14\r\n") + body);

        conn.read_response().expect_error(400, "bad_request");
        conn.expect_closed();
    }

    /// With the default 5/s and burst 10, one user's 11th rapid post is
    /// 429 with `Retry-After`, while another user is unaffected.
    fn posting_faster_than_the_burst_is_429_for_that_user_only(rt) {
        let server = Server::start(rt, &[]);
        let alice = server.token("alice");
        let mut conn = server.connect();

        // Pipelined in one write, so all eleven arrive well within the
        // 200 ms it takes to earn a new token at 5/s.
        let burst = (1..=11).map(|n| Request::comment("s", &alice, &format!("post {n}")));
        conn.send(burst.flat_map(|request| request.to_bytes()).collect::<Vec<u8>>());
        for n in 1..=10 {
            let response = conn.read_response();
            assert_eq!(response.status, 201, "post {n} of the burst: {response}");
        }
        let refused = conn.read_response();
        let bob = conn.exchange(&Request::comment("s", &server.token("bob"), "hi"));

        refused.expect_error(429, "rate_limited");
        let retry_after = refused.header("retry-after").expect("a Retry-After header");
        let seconds: u64 = retry_after.parse().expect("Retry-After in whole seconds");
        assert!((1..=10).contains(&seconds), "Retry-After: {seconds}");
        assert_eq!(bob.expect_created()["author"], "bob");
    }
}

/// A valid `{"text":"hi"}` padded with spaces to exactly `len` bytes.
fn json_body_of_len(len: usize) -> String {
    let body = format!(r#"{{"text":"hi"{}}}"#, " ".repeat(len - 13));
    assert_eq!(body.len(), len);
    body
}
