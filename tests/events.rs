//! Conformance: watching a stream live with Server-Sent Events.
//!
//! `GET /streams/{s}/events`: the response headers, the framing of a
//! comment event, resuming with `Last-Event-ID` or `?since=` (replay,
//! then live, no gap, no duplicate, `reset` when history no longer
//! reaches back), keep-alive comments, framing-proof text, the viewer
//! count after a disconnect, and eviction of a viewer that stops reading.

#[macro_use]
mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A rate limit high enough to post as fast as a test likes.
const NO_RATE_LIMIT: [&str; 4] = ["--rate-per-sec", "100000", "--rate-burst", "100000"];

const EVICTIONS: &str = "livecomment_viewer_evictions_total";

/// Posts `count` comments to stream `s` on one connection; asserts 201s.
fn post_many(server: &Server, count: u64) {
    let token = server.token("alice");
    let mut conn = server.connect();
    for n in 1..=count {
        let response = conn.exchange(&Request::comment("s", &token, &format!("c{n}")));
        assert_eq!(response.status, 201, "post {n}: {response}");
    }
}

/// Posts one comment to stream `s`, which must succeed.
fn post_one(server: &Server, text: &str) -> serde_json::Value {
    server
        .post_comment("s", &server.token("alice"), text)
        .expect_created()
}

/// With three comments posted, a viewer opened by `open` resuming after
/// id 1 gets 2 and 3, then the live 4 and 5, and nothing else.
fn check_resume_after_one(rt: &str, open: impl Fn(&Server) -> SseStream) {
    let server = Server::start(rt, &[]);
    post_many(&server, 3);

    let mut viewer = open(&server);
    assert_eq!(viewer.next_comment_ids(2), [2, 3], "replay");
    post_one(&server, "four");
    post_one(&server, "five");

    assert_eq!(viewer.next_comment_ids(2), [4, 5], "live after replay");
}

conformance! {
    /// The three headers the contract requires of an event stream.
    fn events_response_has_the_sse_headers(rt) {
        let server = Server::start(rt, &[]);

        let viewer = server.sse("/streams/s/events");

        let head = viewer.head();
        let content_type = head.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("text/event-stream"), "{head}");
        assert_eq!(head.header("cache-control"), Some("no-cache"), "{head}");
        assert_eq!(head.header("x-accel-buffering"), Some("no"), "{head}");
    }

    /// A posted comment reaches a live viewer as `id: N`, `event: comment`
    /// and one `data:` line holding the same JSON the POST returned.
    fn live_comment_arrives_as_id_event_and_one_data_line(rt) {
        let server = Server::start(rt, &[]);
        let mut viewer = server.sse("/streams/s/events");
        server.wait_for_viewers("s", 1);

        let posted = post_one(&server, "Goal!");

        let event = viewer.next_event();
        assert_eq!(event.id.as_deref(), Some("1"));
        assert_eq!(event.kind(), "comment");
        assert_eq!(event.json(), posted);
    }

    /// Without `Last-Event-ID` or `since`, earlier comments are not sent.
    fn without_a_resume_point_only_new_comments_arrive(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 3);
        let mut viewer = server.sse("/streams/s/events");
        server.wait_for_viewers("s", 1);

        post_one(&server, "new");

        assert_eq!(viewer.next_comment()["id"], 4);
    }

    /// `Last-Event-ID: 1` replays 2 and 3, then continues live.
    fn last_event_id_replays_later_comments_then_continues_live(rt) {
        check_resume_after_one(rt, |server| {
            server.sse_with("/streams/s/events", &[("Last-Event-ID", "1")])
        });
    }

    /// `?since=1` replays 2 and 3, then continues live.
    fn since_query_replays_later_comments_then_continues_live(rt) {
        check_resume_after_one(rt, |server| server.sse("/streams/s/events?since=1"));
    }

    /// A viewer resuming while comments keep coming sees every id after
    /// its resume point exactly once, in order, across the switch from
    /// replay to live.
    fn resume_during_steady_posting_has_no_gap_or_duplicate(rt) {
        let server = Server::start(rt, &NO_RATE_LIMIT);
        let total = 1000;

        let ids = std::thread::scope(|scope| {
            scope.spawn(|| post_many(&server, total));
            let last_id = || server.stream_info("s")["last_id"].as_u64().unwrap_or(0);
            wait_until("10 comments posted", PATIENCE, || last_id() >= 10);
            let mut viewer = server.sse("/streams/s/events?since=5");
            viewer.next_comment_ids(total as usize - 5)
        });

        assert_eq!(ids, (6..=total).collect::<Vec<_>>());
    }

    /// A resume point older than the retained history first gets
    /// `event: reset` with the first retained id, then comments from it.
    fn resume_point_older_than_history_starts_with_a_reset(rt) {
        let server = Server::start(rt, &["--history", "5"]);
        post_many(&server, 10);
        let by_query = server.sse("/streams/s/events?since=2");
        let by_header = server.sse_with("/streams/s/events", &[("Last-Event-ID", "2")]);

        for mut viewer in [by_query, by_header] {
            let reset = viewer.next_event();
            assert_eq!(reset.kind(), "reset", "{reset:?}");
            assert_eq!(reset.json(), json!({ "first_id": 6 }));
            assert_eq!(viewer.next_comment_ids(5), [6, 7, 8, 9, 10]);
        }
    }

    /// `--keepalive 300ms` sends `: keep-alive` comments that often.
    fn keep_alive_comments_arrive_at_the_configured_interval(rt) {
        let server = Server::start(rt, &["--keepalive", "300ms"]);
        let mut viewer = server.sse("/streams/s/events");
        let deadline = Instant::now() + Duration::from_secs(3);

        let mut keep_alives = 0;
        while keep_alives < 3 {
            match viewer.next(deadline) {
                Next::Item(SseItem::Comment(text)) => {
                    assert_eq!(text, "keep-alive");
                    keep_alives += 1;
                }
                other => panic!("expected 3 keep-alives within 3 s, got {other:?}"),
            }
        }
    }

    /// Newlines, blank lines and field names inside comment text never
    /// leave the single `data:` line; the next event is unaffected.
    fn multi_line_text_stays_inside_one_data_line(rt) {
        let server = Server::start(rt, &[]);
        let mut viewer = server.sse("/streams/s/events");
        server.wait_for_viewers("s", 1);
        let sneaky = "a\nb\n\nevent: reset\ndata: {\"first_id\":1}\n\nid: 99\n: x";

        post_one(&server, sneaky);
        post_one(&server, "after");

        let event = viewer.next_event();
        assert_eq!(event.data_lines.len(), 1, "{event:?}");
        assert_eq!(event.json()["text"], sneaky);
        let next = viewer.next_event();
        assert_eq!((next.kind(), next.id.as_deref()), ("comment", Some("2")), "{next:?}");
    }

    /// A viewer that closes its socket stops being counted within about
    /// a second, with no comment posted to reveal the closed socket.
    fn viewer_stops_being_counted_within_a_second_of_closing(rt) {
        let server = Server::start(rt, &[]);
        let viewer = server.sse("/streams/s/events");
        server.wait_for_viewers("s", 1);

        drop(viewer);

        let gone = || server.stream_info("s")["viewers"] == 0;
        wait_until("the closed viewer to stop counting", Duration::from_millis(1500), gone);
    }

    /// A malformed `since` is a bad query.
    fn events_with_a_malformed_since_is_400(rt) {
        let server = Server::start(rt, &[]);

        for query in ["since=abc", "since=-1"] {
            let response = server.get(&format!("/streams/s/events?{query}"));
            response.expect_error(400, "bad_request");
        }
    }

    /// A viewer that stops reading is evicted once its queue passes
    /// `--viewer-queue`, while another viewer receives every comment and
    /// the poster keeps getting 201s; it then resumes with
    /// `Last-Event-ID` and loses nothing retained.
    fn slow_viewer_is_evicted_without_stalling_others_and_resumes_losslessly(rt) {
        let args = [&NO_RATE_LIMIT[..], &["--viewer-queue", "16384"]].concat();
        let server = Server::start(rt, &args);
        let mut stalled = server.sse("/streams/s/events");
        let fast = read_ids_in_background(server.sse("/streams/s/events"));
        server.wait_for_viewers("s", 2);

        let (posted, fast_ids) = post_big_comments_until_an_eviction(&server, &fast);

        server.wait_for_viewers("s", 1);
        assert_eq!(server.metrics().sum(EVICTIONS), 1.0, "one viewer evicted");
        assert_eq!(fast_ids, (1..=posted).collect::<Vec<_>>(), "the reading viewer");

        let seen = ids_until_end(&mut stalled);
        let resume_point = seen.len() as u64;
        assert_eq!(seen, (1..=resume_point).collect::<Vec<_>>(), "before eviction");
        let last_event_id = resume_point.to_string();
        let headers = [("Last-Event-ID", last_event_id.as_str())];
        let mut resumed = server.sse_with("/streams/s/events", &headers);
        let rest = resumed.next_comment_ids((posted - resume_point) as usize);
        assert_eq!(rest, (resume_point + 1..=posted).collect::<Vec<_>>(), "after resuming");
    }
}

/// Posts ~2 KB comments (500 emoji) until the server reports an
/// eviction; every post must be a 201. Returns how many were posted and
/// the ids the reading viewer received.
///
/// The poster lets the reading viewer fall at most `MAX_LAG` comments
/// behind, well under the 16 KiB bound, so the test process being
/// descheduled can never make the reading viewer look slow.
fn post_big_comments_until_an_eviction(
    server: &Server,
    fast: &mpsc::Receiver<u64>,
) -> (u64, Vec<u64>) {
    const MAX_POSTS: u64 = 8000;
    const MAX_LAG: u64 = 4;
    let token = server.token("alice");
    let text = "😀".repeat(500);
    let mut conn = server.connect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut fast_ids = Vec::new();

    for n in 1..=MAX_POSTS {
        while fast_ids.len() as u64 + MAX_LAG < n {
            fast_ids.push(next_id(fast));
        }
        let response = conn.exchange(&Request::comment("s", &token, &text));
        assert_eq!(
            response.status, 201,
            "post {n} with a stalled viewer: {response}"
        );
        if n % 50 == 0 && server.metrics().sum(EVICTIONS) >= 1.0 {
            while (fast_ids.len() as u64) < n {
                fast_ids.push(next_id(fast));
            }
            return (n, fast_ids);
        }
        assert!(
            Instant::now() < deadline,
            "no eviction after {n} posts and 90 s"
        );
    }
    panic!("no eviction after {MAX_POSTS} posts of 2 KB with --viewer-queue 16384");
}

/// Reads `viewer` on a thread, sending each comment id down a channel.
/// The thread ends when the stream does or after 30 s of silence.
fn read_ids_in_background(mut viewer: SseStream) -> mpsc::Receiver<u64> {
    let (ids, received) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let event = match viewer.next(Instant::now() + Duration::from_secs(30)) {
                Next::Item(SseItem::Event(event)) => event,
                Next::Item(SseItem::Comment(_)) => continue,
                Next::Closed | Next::TimedOut => return,
            };
            if ids.send(event.json()["id"].as_u64().unwrap()).is_err() {
                return;
            }
        }
    });
    received
}

/// The next id from a background reader; panics after [`PATIENCE`].
fn next_id(ids: &mpsc::Receiver<u64>) -> u64 {
    ids.recv_timeout(PATIENCE)
        .expect("the reading viewer stopped receiving comments")
}

/// Reads what an evicted viewer still has buffered, up to the end of
/// the stream, and returns the comment ids.
fn ids_until_end(viewer: &mut SseStream) -> Vec<u64> {
    let events = viewer.expect_end(Duration::from_secs(20));
    events
        .iter()
        .map(|event| event.json()["id"].as_u64().unwrap())
        .collect()
}
