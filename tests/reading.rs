//! Conformance: reading a stream without watching it live.
//!
//! `GET /streams/{s}/comments?since=N&limit=M` (retained history, ids
//! above N, ascending, limit 1..=1000 defaulting to 100, bounded by
//! `--history`) and `GET /streams/{s}` (last id and live viewer count).

#[macro_use]
mod common;

use common::*;
use serde_json::Value;

/// A rate limit high enough to post as fast as a test likes.
const NO_RATE_LIMIT: [&str; 4] = ["--rate-per-sec", "100000", "--rate-burst", "100000"];

/// Posts `count` comments ("c1", "c2", …) to `stream` on one connection
/// and returns them as the server answered.
fn post_many(server: &Server, stream: &str, count: usize) -> Vec<Value> {
    let token = server.token("alice");
    let mut conn = server.connect();
    let comments = (1..=count).map(|n| {
        let request = Request::comment(stream, &token, &format!("c{n}"));
        conn.exchange(&request).expect_created()
    });
    comments.collect()
}

/// `GET /streams/s/comments{query}`, which must be a 200 for stream `s`.
fn history(server: &Server, query: &str) -> Value {
    let response = server.get(&format!("/streams/s/comments{query}"));
    assert_eq!(response.status, 200, "history{query}: {response}");
    let page = response.json();
    assert_eq!(page["stream"], "s");
    page
}

/// The ids of a history page's comments.
fn ids(page: &Value) -> Vec<u64> {
    let comments = page["comments"].as_array().expect("a comments array");
    comments
        .iter()
        .map(|comment| comment["id"].as_u64().unwrap())
        .collect()
}

conformance! {
    /// `since=N` lists the retained comments with id above N, oldest
    /// first, each exactly as the POST returned it.
    fn history_lists_comments_after_since_in_ascending_order(rt) {
        let server = Server::start(rt, &[]);
        let posted = post_many(&server, "s", 5);

        let page = history(&server, "?since=2");

        assert_eq!(page["comments"].as_array().unwrap(), &posted[2..]);
    }

    /// Without `since`, history starts at the oldest retained comment;
    /// `first_id` and `last_id` give the retained range.
    fn history_without_since_starts_at_the_oldest_comment(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, "s", 3);

        let page = history(&server, "");

        assert_eq!(ids(&page), [1, 2, 3]);
        assert_eq!(page["first_id"], 1);
        assert_eq!(page["last_id"], 3);
    }

    /// A stream nobody posted to exists and has an empty history.
    fn history_of_an_unused_stream_is_empty(rt) {
        let server = Server::start(rt, &[]);

        let page = history(&server, "");

        assert_eq!(ids(&page), Vec::<u64>::new());
    }

    /// `limit` defaults to 100 and may be anything from 1 to 1000.
    fn history_limit_defaults_to_100_and_goes_up_to_1000(rt) {
        let server = Server::start(rt, &NO_RATE_LIMIT);
        post_many(&server, "s", 105);

        assert_eq!(ids(&history(&server, "")), (1..=100).collect::<Vec<_>>());
        assert_eq!(ids(&history(&server, "?limit=1000")).len(), 105);
        assert_eq!(ids(&history(&server, "?since=10&limit=3")), [11, 12, 13]);
        assert_eq!(ids(&history(&server, "?limit=1&since=104")), [105]);
        assert_eq!(ids(&history(&server, "?since=105")), Vec::<u64>::new());
    }

    /// Out-of-range or non-numeric `limit` and `since` are 400.
    fn history_with_a_bad_query_is_400(rt) {
        let server = Server::start(rt, &[]);

        for query in ["limit=1001", "limit=0", "limit=abc", "since=abc", "since=-1", "since="] {
            let response = server.get(&format!("/streams/s/comments?{query}"));
            response.expect_error(400, "bad_request");
        }
    }

    /// `--history N` keeps the newest N comments: the oldest are gone.
    fn history_is_bounded_by_the_history_flag(rt) {
        let server = Server::start(rt, &[&NO_RATE_LIMIT[..], &["--history", "10"]].concat());
        post_many(&server, "s", 15);

        let page = history(&server, "?since=0");

        assert_eq!(ids(&page), (6..=15).collect::<Vec<_>>());
        assert_eq!(page["first_id"], 6);
        assert_eq!(page["last_id"], 15);
    }

    /// `GET /streams/{s}` gives the name, the last id (0 before any
    /// comment) and the number of live viewers.
    fn stream_info_reports_last_id_and_viewers(rt) {
        let server = Server::start(rt, &[]);

        let fresh = server.stream_info("s");
        assert_eq!(fresh["stream"], "s");
        assert_eq!(fresh["last_id"], 0, "{fresh}");
        assert_eq!(fresh["viewers"], 0, "{fresh}");

        post_many(&server, "s", 3);
        let _first = server.sse("/streams/s/events");
        let _second = server.sse("/streams/s/events");
        let _elsewhere = server.sse("/streams/other/events");
        server.wait_for_viewers("s", 2);
        let info = server.stream_info("s");
        assert_eq!(info["stream"], "s");
        assert_eq!(info["last_id"], 3);
    }
}
