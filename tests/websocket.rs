//! Conformance: watching and posting over a WebSocket.
//!
//! `GET /streams/{s}/ws` (RFC 6455) with a real client library: live
//! comments as `{"type":"comment",…}` messages, posting with a token in
//! the query or the `Authorization` header (`ack` or `error` echoing the
//! client's `ref`), read-only sockets, 401 before the upgrade, resuming
//! with `?since=` (and `reset`), the rate limit, malformed messages, the
//! close codes (1009, 1007, 1002, 1001), ping/pong, the viewer count, and
//! eviction of a viewer that stops reading.

#[macro_use]
mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ws::{FIN_TEXT, WsClient, WsNext, masked_frame, unmasked_frame};
use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

/// A rate limit high enough to post as fast as a test likes.
const NO_RATE_LIMIT: [&str; 4] = ["--rate-per-sec", "100000", "--rate-burst", "100000"];

const EVICTIONS: &str = "livecomment_viewer_evictions_total";

/// The largest message a client may send (CONTRACT.md, "WebSocket").
const MAX_MESSAGE: usize = 64 * 1024;

/// How soon a closed viewer must stop being counted: the contract's
/// second, plus room for the test's own polling.
const VIEWER_GONE: Duration = Duration::from_millis(1500);

/// Posts `count` comments to stream `s` over HTTP; asserts 201s.
fn post_many(server: &Server, count: u64) {
    let token = server.token("alice");
    let mut conn = server.connect();
    for n in 1..=count {
        let response = conn.exchange(&Request::comment("s", &token, &format!("c{n}")));
        assert_eq!(response.status, 201, "post {n}: {response}");
    }
}

/// Posts one comment to stream `s` over HTTP, which must succeed.
fn post_one(server: &Server, text: &str) -> Value {
    server
        .post_comment("s", &server.token("alice"), text)
        .expect_created()
}

/// A token for `alice` whose `name` claim is "Alice".
fn alice_named(server: &Server) -> String {
    let claims = json!({ "sub": "alice", "name": "Alice", "exp": now_secs() + 3600 });
    hs256(server.secret(), &claims)
}

/// The next `count` replies to posts (`ack` or `error`), in order,
/// skipping the live `comment` messages around them.
fn replies(client: &mut WsClient, count: usize) -> Vec<Value> {
    let mut replies = Vec::new();
    while replies.len() < count {
        let message = client.next_json();
        if message["type"] != "comment" {
            replies.push(message);
        }
    }
    replies
}

/// Asserts `message` is `{"type":"error","ref":…,"error":code,"message":…}`.
fn assert_error(message: &Value, reference: Option<&str>, code: &str) {
    assert_eq!(message["type"], "error", "expected an error: {message}");
    assert_eq!(message["error"], code, "error code in {message}");
    if let Some(reference) = reference {
        assert_eq!(message["ref"], reference, "ref in {message}");
    }
    let text = message["message"].as_str().unwrap_or_default();
    assert!(!text.is_empty(), "an error without a message: {message}");
}

/// Where a WebSocket client puts its token.
enum TokenIn {
    Query,
    Header,
}

/// Opens a poster with a token in `token_in`, an SSE viewer and a
/// WebSocket viewer; the poster's post is acked with its ref, and both
/// viewers and the history get the very comment the ack carries.
fn check_post_over_websocket(rt: &str, token_in: TokenIn) {
    let server = Server::start(rt, &[]);
    let token = alice_named(&server);
    let bearer = format!("Bearer {token}");
    let (target, headers) = match token_in {
        TokenIn::Query => (format!("/streams/s/ws?access_token={token}"), vec![]),
        TokenIn::Header => (
            "/streams/s/ws".to_string(),
            vec![("Authorization", &*bearer)],
        ),
    };

    let mut sse = server.sse("/streams/s/events");
    let mut watcher = server.ws("/streams/s/ws");
    let mut poster = server.ws_with(&target, &headers).expect("a 101");
    server.wait_for_viewers("s", 3);

    let before = now_millis();
    poster.post("Goal!", "r1");

    let ack = replies(&mut poster, 1).remove(0);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["ref"], "r1", "{ack}");
    assert_eq!(
        ack.as_object().unwrap().len(),
        3,
        "type, ref, comment: {ack}"
    );
    let comment = &ack["comment"];
    assert_eq!(comment["id"], 1);
    assert_eq!(comment["stream"], "s");
    assert_eq!(comment["author"], "alice");
    assert_eq!(comment["name"], "Alice");
    assert_eq!(comment["text"], "Goal!");
    let ts = comment["ts"].as_u64().expect("ts is an integer");
    assert!(before <= ts && ts <= now_millis(), "ts {ts}");

    assert_eq!(
        &watcher.next_comment(),
        comment,
        "the other WebSocket viewer"
    );
    assert_eq!(&sse.next_comment(), comment, "the SSE viewer");
    let history = server.get("/streams/s/comments").json();
    assert_eq!(history["comments"], json!([comment]), "the history");
}

conformance! {
    /// A comment posted over HTTP reaches a WebSocket viewer as
    /// `{"type":"comment","comment":{…}}`, the same JSON the POST returned.
    fn live_comment_arrives_as_a_comment_message(rt) {
        let server = Server::start(rt, &[]);
        let mut viewer = server.ws("/streams/s/ws");
        server.wait_for_viewers("s", 1);

        let posted = post_one(&server, "Goal!");

        assert_eq!(viewer.next_comment(), posted);
    }

    /// Without `since`, a WebSocket viewer gets only new comments.
    fn without_since_only_new_comments_arrive(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 3);
        let mut viewer = server.ws("/streams/s/ws");
        server.wait_for_viewers("s", 1);

        post_one(&server, "new");

        assert_eq!(viewer.next_comment()["id"], 4);
    }

    /// A post over a socket opened with `?access_token=` is acked with
    /// its ref and the comment reaches SSE and WebSocket viewers.
    fn post_with_access_token_query_is_acked_and_reaches_every_viewer(rt) {
        check_post_over_websocket(rt, TokenIn::Query);
    }

    /// The same with the token in an `Authorization: Bearer` header.
    fn post_with_authorization_header_is_acked_and_reaches_every_viewer(rt) {
        check_post_over_websocket(rt, TokenIn::Header);
    }

    /// The poster watches the stream too: its own comment also arrives
    /// as a live `comment` message, so its resume point stays right.
    fn poster_also_receives_its_own_comment_as_a_live_message(rt) {
        let server = Server::start(rt, &[]);
        let token = server.token("alice");
        let mut poster = server.ws(&format!("/streams/s/ws?access_token={token}"));
        server.wait_for_viewers("s", 1);

        poster.post("mine", "r1");

        let mut types = [poster.next_json(), poster.next_json()]
            .map(|message| message["type"].as_str().unwrap_or_default().to_string());
        types.sort();
        assert_eq!(types, ["ack", "comment"]);
    }

    /// Without a token the socket watches but cannot post: a post gets
    /// an `invalid_token` error with its ref, nothing is stored, and the
    /// socket stays open for live comments.
    fn socket_without_a_token_is_read_only(rt) {
        let server = Server::start(rt, &[]);
        let mut viewer = server.ws("/streams/s/ws");
        server.wait_for_viewers("s", 1);

        viewer.post("sneaky", "r1");

        assert_error(&viewer.next_json(), Some("r1"), "invalid_token");
        assert_eq!(server.stream_info("s")["last_id"], 0, "nothing stored");
        let posted = post_one(&server, "still watching");
        assert_eq!(viewer.next_comment(), posted);
    }

    /// A refused token at connect time is a 401 with the contract's
    /// error body and `WWW-Authenticate`, and no upgrade: whether it
    /// came in the query or the header, garbled or expired.
    fn invalid_token_at_connect_is_401_without_upgrade(rt) {
        let server = Server::start(rt, &[]);
        let expired = hs256(server.secret(), &json!({ "sub": "alice", "exp": now_secs() - 600 }));
        let other_secret = hs256("not the server's secret", &claims("alice"));

        let cases = [
            ("/streams/s/ws?access_token=garbage".to_string(), None),
            (format!("/streams/s/ws?access_token={expired}"), None),
            (format!("/streams/s/ws?access_token={other_secret}"), None),
            ("/streams/s/ws".to_string(), Some("Bearer garbage".to_string())),
            ("/streams/s/ws".to_string(), Some(format!("Bearer {expired}"))),
        ];
        for (target, authorization) in cases {
            let header = authorization.as_deref().map(|value| ("Authorization", value));
            let headers: Vec<_> = header.into_iter().collect();
            let Err(response) = server.ws_with(&target, &headers) else {
                panic!("{target} with {authorization:?} was upgraded");
            };
            response.expect_error(401, "invalid_token");
            let challenge = response.header("www-authenticate");
            assert_eq!(challenge, Some("Bearer error=\"invalid_token\""), "{response}");
        }
        assert_eq!(server.stream_info("s")["viewers"], 0);
    }

    /// A bad stream name is 404, and a plain GET without the upgrade
    /// headers or with a malformed `since` is 400, all without upgrade.
    fn bad_stream_name_or_request_is_refused_without_upgrade(rt) {
        let server = Server::start(rt, &[]);

        let Err(response) = server.ws_with("/streams/no%20spaces/ws", &[]) else {
            panic!("a bad stream name was upgraded");
        };
        response.expect_error(404, "not_found");
        let Err(response) = server.ws_with("/streams/s/ws?since=abc", &[]) else {
            panic!("since=abc was upgraded");
        };
        response.expect_error(400, "bad_request");
        server.get("/streams/s/ws").expect_error(400, "bad_request");
    }

    /// `?since=1` replays 2 and 3, then continues live with 4 and 5.
    fn since_replays_later_comments_then_continues_live(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 3);

        let mut viewer = server.ws("/streams/s/ws?since=1");
        assert_eq!(viewer.next_comment_ids(2), [2, 3], "replay");
        post_one(&server, "four");
        post_one(&server, "five");

        assert_eq!(viewer.next_comment_ids(2), [4, 5], "live after replay");
        viewer.expect_silence(Duration::from_millis(200));
    }

    /// A resume point older than the history (`--history 3`) first gets
    /// `{"type":"reset","first_id":F}`, then the comments from F.
    fn since_older_than_history_starts_with_a_reset(rt) {
        let server = Server::start(rt, &["--history", "3"]);
        post_many(&server, 6);

        let mut viewer = server.ws("/streams/s/ws?since=1");

        assert_eq!(viewer.next_json(), json!({ "type": "reset", "first_id": 4 }));
        assert_eq!(viewer.next_comment_ids(3), [4, 5, 6]);
    }

    /// The per-user rate limit applies over the socket: past the burst,
    /// a post gets a `rate_limited` error carrying its ref.
    fn rate_limited_post_gets_an_error_with_its_ref(rt) {
        let server = Server::start(rt, &["--rate-per-sec", "1", "--rate-burst", "2"]);
        let token = server.token("alice");
        let mut poster = server.ws(&format!("/streams/s/ws?access_token={token}"));

        for reference in ["r1", "r2", "r3"] {
            poster.post("hi", reference);
        }

        let replies = replies(&mut poster, 3);
        assert_eq!((replies[0]["type"].as_str(), replies[0]["ref"].as_str()), (Some("ack"), Some("r1")));
        assert_eq!((replies[1]["type"].as_str(), replies[1]["ref"].as_str()), (Some("ack"), Some("r2")));
        assert_error(&replies[2], Some("r3"), "rate_limited");
        assert_eq!(server.stream_info("s")["last_id"], 2, "only two stored");
    }

    /// Messages that are not a valid post get `bad_request` errors (with
    /// the ref when there is one) and leave the socket usable.
    fn malformed_messages_get_bad_request_errors(rt) {
        let server = Server::start(rt, &[]);
        let token = server.token("alice");
        let mut poster = server.ws(&format!("/streams/s/ws?access_token={token}"));

        for junk in ["not json", "{\"type\":\"post\"}", "[1,2]", "{\"type\":\"shout\",\"text\":\"x\"}"] {
            poster.send_text(junk);
            let reply = poster.next_json();
            assert_error(&reply, None, "bad_request");
        }
        for (text, reference) in [("   ", "blank"), (&"x".repeat(501) as &str, "long"), ("a\u{7}b", "bell")] {
            poster.post(text, reference);
            assert_error(&poster.next_json(), Some(reference), "bad_request");
        }

        poster.post("fine", "ok");
        let ack = replies(&mut poster, 1).remove(0);
        assert_eq!((ack["type"].as_str(), ack["ref"].as_str()), (Some("ack"), Some("ok")), "{ack}");
    }

    /// A message of exactly 64 KiB is read (and refused as a post, its
    /// text being too long); one byte more closes with 1009.
    fn message_over_64_kib_closes_with_1009(rt) {
        let server = Server::start(rt, &[]);
        let token = server.token("alice");
        let mut client = server.ws(&format!("/streams/s/ws?access_token={token}"));

        client.send_text(&post_of_exactly(MAX_MESSAGE, "big"));
        assert_error(&client.next_json(), Some("big"), "bad_request");

        client.send_text(&post_of_exactly(MAX_MESSAGE + 1, "bigger"));
        assert_eq!(client.expect_close(), 1009);
    }

    /// Two fragments of 40 KiB each make a message over 64 KiB, though
    /// each frame is under it: 1009 as well.
    fn fragmented_message_over_64_kib_closes_with_1009(rt) {
        let server = Server::start(rt, &[]);
        let mut client = server.ws("/streams/s/ws");
        let fragment = vec![b'x'; 40 * 1024];

        client.send_raw(&masked_frame(0x01, &fragment));
        client.send_raw(&masked_frame(0x80, &fragment));

        assert_eq!(client.expect_close(), 1009);
    }

    /// A text frame that is not UTF-8 closes with 1007.
    fn invalid_utf8_text_frame_closes_with_1007(rt) {
        let server = Server::start(rt, &[]);
        let mut client = server.ws("/streams/s/ws");

        client.send_raw(&masked_frame(FIN_TEXT, b"{\"type\":\"post\",\"text\":\"\xff\xfe\"}"));

        assert_eq!(client.expect_close(), 1007);
    }

    /// Protocol errors close with 1002: an unmasked client frame, a
    /// reserved opcode, and a reserved bit set without an extension.
    fn protocol_errors_close_with_1002(rt) {
        let server = Server::start(rt, &[]);
        let hello = b"{\"type\":\"post\",\"text\":\"hi\"}";
        let cases = [
            ("an unmasked frame", unmasked_frame(FIN_TEXT, hello)),
            ("reserved opcode 3", masked_frame(0x83, hello)),
            ("reserved control opcode 0xB", masked_frame(0x8B, b"")),
            ("RSV1 without an extension", masked_frame(0xC1, hello)),
        ];

        for (what, frame) in cases {
            let mut client = server.ws("/streams/s/ws");
            client.send_raw(&frame);
            assert_eq!(client.expect_close(), 1002, "{what}");
        }
    }

    /// A ping is answered with a pong carrying the same payload.
    fn ping_is_answered_with_a_pong(rt) {
        let server = Server::start(rt, &[]);
        let mut client = server.ws("/streams/s/ws");

        client.send(Message::Ping(b"are you there?".to_vec().into()));

        let deadline = Instant::now() + PATIENCE;
        match client.next(deadline) {
            WsNext::Other(Message::Pong(payload)) => assert_eq!(&payload[..], b"are you there?"),
            other => panic!("expected a pong, got {other:?}"),
        }
    }

    /// SIGTERM closes every socket with 1001, and the server exits 0.
    fn shutdown_closes_sockets_with_1001(rt) {
        let mut server = Server::start(rt, &[]);
        let token = server.token("alice");
        let mut viewer = server.ws("/streams/s/ws");
        let mut poster = server.ws(&format!("/streams/s/ws?access_token={token}"));
        server.wait_for_viewers("s", 2);

        server.signal("TERM");

        assert_eq!(viewer.expect_close(), 1001, "the viewer");
        assert_eq!(poster.expect_close(), 1001, "the poster");
        let status = server.wait_for_exit(Duration::from_secs(5));
        assert!(status.success(), "exit status {status:?}");
    }

    /// WebSocket viewers count in `GET /streams/{s}` with SSE viewers,
    /// and stop counting within about a second of closing, whether they
    /// close cleanly or just drop the connection.
    fn websocket_viewers_count_and_stop_counting_within_a_second(rt) {
        let server = Server::start(rt, &[]);
        let _sse = server.sse("/streams/s/events");
        let clean = server.ws("/streams/s/ws");
        let abrupt = server.ws("/streams/s/ws");
        server.wait_for_viewers("s", 3);

        clean.close();
        let two_left = || server.stream_info("s")["viewers"] == 2;
        wait_until("a cleanly closed viewer to stop counting", VIEWER_GONE, two_left);

        drop(abrupt);
        let one_left = || server.stream_info("s")["viewers"] == 1;
        wait_until("a dropped viewer to stop counting", VIEWER_GONE, one_left);
    }

    /// A WebSocket viewer that stops reading is evicted once its queue
    /// passes `--viewer-queue`, while another receives every comment and
    /// the poster keeps getting 201s; it then resumes with `?since=` and
    /// loses nothing retained.
    fn slow_websocket_viewer_is_evicted_while_another_keeps_receiving(rt) {
        let args = [&NO_RATE_LIMIT[..], &["--viewer-queue", "16384"]].concat();
        let server = Server::start(rt, &args);
        let mut stalled = server.ws("/streams/s/ws");
        let fast = read_ids_in_background(server.ws("/streams/s/ws"));
        server.wait_for_viewers("s", 2);

        let (posted, fast_ids) = post_big_comments_until_an_eviction(&server, &fast);

        server.wait_for_viewers("s", 1);
        assert_eq!(server.metrics().sum(EVICTIONS), 1.0, "one viewer evicted");
        assert_eq!(fast_ids, (1..=posted).collect::<Vec<_>>(), "the reading viewer");

        let seen: Vec<u64> = stalled
            .texts_until_end(Duration::from_secs(20))
            .iter()
            .map(|text| comment_id(text))
            .collect();
        let resume_point = seen.len() as u64;
        assert_eq!(seen, (1..=resume_point).collect::<Vec<_>>(), "before eviction");
        let mut resumed = server.ws(&format!("/streams/s/ws?since={resume_point}"));
        let rest = resumed.next_comment_ids((posted - resume_point) as usize);
        assert_eq!(rest, (resume_point + 1..=posted).collect::<Vec<_>>(), "after resuming");
    }
}

/// A post message of exactly `len` bytes, padded with its text.
fn post_of_exactly(len: usize, reference: &str) -> String {
    let empty = json!({ "type": "post", "text": "", "ref": reference }).to_string();
    let padding = "x".repeat(len - empty.len());
    let message = json!({ "type": "post", "text": padding, "ref": reference }).to_string();
    assert_eq!(message.len(), len);
    message
}

/// The comment id in a `{"type":"comment",…}` message.
fn comment_id(text: &str) -> u64 {
    let message: Value = serde_json::from_str(text).expect("JSON");
    assert_eq!(message["type"], "comment", "{message}");
    message["comment"]["id"].as_u64().expect("a comment id")
}

/// Posts ~2 KB comments (500 emoji) until the server reports an
/// eviction; every post must be a 201. Returns how many were posted and
/// the ids the reading viewer received.
///
/// The poster lets the reading viewer fall at most [`MAX_LAG`] comments
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
/// The thread ends when the socket does or after 30 s of silence.
fn read_ids_in_background(mut viewer: WsClient) -> mpsc::Receiver<u64> {
    let (ids, received) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let text = match viewer.next(Instant::now() + Duration::from_secs(30)) {
                WsNext::Text(text) => text,
                WsNext::Other(_) => continue,
                _ => return,
            };
            if ids.send(comment_id(&text)).is_err() {
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
