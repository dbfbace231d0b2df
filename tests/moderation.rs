//! Conformance: deleting comments, `DELETE /streams/{s}/comments/{id}`.
//!
//! Only a token with `"role": "moderator"` may delete (204); any other
//! valid token is 403, none or a refused one 401, and an unknown comment
//! or stream 404. Live viewers are told (SSE `event: delete`, WebSocket
//! `{"type":"delete",…}`), and the comment leaves the history, so no
//! later reader or resuming viewer sees it again.

#[macro_use]
mod common;

use common::*;
use serde_json::{Value, json};

/// A moderator's token.
fn moderator(server: &Server) -> String {
    let claims = json!({ "sub": "mod", "role": "moderator", "exp": now_secs() + 3600 });
    hs256(server.secret(), &claims)
}

/// Posts `count` comments to stream `s`, as alice.
fn post_many(server: &Server, count: u64) {
    let token = server.token("alice");
    for n in 1..=count {
        let response = server.post_comment("s", &token, &format!("c{n}"));
        assert_eq!(response.status, 201, "post {n}: {response}");
    }
}

/// `DELETE target` with `Authorization: Bearer token` when given.
fn delete(server: &Server, target: &str, token: Option<&str>) -> Response {
    let request = Request::new("DELETE", target);
    let request = match token {
        Some(token) => request.bearer(token),
        None => request,
    };
    server.send(request)
}

/// The ids in stream `s`'s history.
fn history_ids(server: &Server) -> Vec<u64> {
    let history = server.get("/streams/s/comments");
    assert_eq!(history.status, 200, "{history}");
    let comments = history.json()["comments"].as_array().unwrap().clone();
    comments.iter().map(|c| c["id"].as_u64().unwrap()).collect()
}

conformance! {
    /// A moderator's DELETE of the URL a 201 gave in `Location` is a 204
    /// with no body, and the comment leaves the history.
    fn moderator_deletes_a_comment_with_204_and_it_leaves_history(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 1);
        let second = server.post_comment("s", &server.token("alice"), "oops");
        post_many(&server, 1);
        let location = second.header("location").expect("a Location header").to_string();

        let response = delete(&server, &location, Some(&moderator(&server)));

        assert_eq!(response.status, 204, "{response}");
        assert!(response.body.is_empty(), "{response}");
        assert_eq!(history_ids(&server), [1, 3]);
        assert_eq!(server.stream_info("s")["last_id"], 3, "ids are not reused");
        let next = server.post_comment("s", &server.token("alice"), "next").expect_created();
        assert_eq!(next["id"], 4, "ids are not reused");
    }

    /// A valid token without the moderator role is 403 `forbidden`, and
    /// the comment stays.
    fn delete_with_a_normal_token_is_403_forbidden(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 1);
        let viewer_role = json!({ "sub": "bob", "role": "viewer", "exp": now_secs() + 3600 });

        for token in [server.token("alice"), hs256(server.secret(), &viewer_role)] {
            let response = delete(&server, "/streams/s/comments/1", Some(&token));
            response.expect_error(403, "forbidden");
        }
        assert_eq!(history_ids(&server), [1]);
    }

    /// No token, or a refused one (even claiming the moderator role), is
    /// 401 `invalid_token` with `WWW-Authenticate`, and the comment stays.
    fn delete_without_a_valid_token_is_401(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 1);
        let forged_claims = json!({ "sub": "mod", "role": "moderator", "exp": now_secs() + 3600 });
        let forged = hs256("not the server's secret", &forged_claims);

        for token in [None, Some("garbage"), Some(forged.as_str())] {
            let response = delete(&server, "/streams/s/comments/1", token);
            response.expect_error(401, "invalid_token");
            let challenge = response.header("www-authenticate");
            assert_eq!(challenge, Some("Bearer error=\"invalid_token\""), "{response}");
        }
        assert_eq!(history_ids(&server), [1]);
    }

    /// An id never posted, one already deleted, a stream never used, a
    /// non-numeric id and a bad stream name are all 404 `not_found`.
    fn delete_of_an_unknown_comment_or_stream_is_404(rt) {
        let server = Server::start(rt, &[]);
        let token = moderator(&server);
        post_many(&server, 2);
        assert_eq!(delete(&server, "/streams/s/comments/2", Some(&token)).status, 204);

        let targets = [
            "/streams/s/comments/99",
            "/streams/s/comments/2",
            "/streams/s/comments/0",
            "/streams/never-used/comments/1",
            "/streams/s/comments/abc",
            "/streams/bad%20name/comments/1",
        ];
        for target in targets {
            let response = delete(&server, target, Some(&token));
            response.expect_error(404, "not_found");
        }
        assert_eq!(history_ids(&server), [1]);
    }

    /// SSE viewers get `event: delete` with `{"id":N,"stream":"s"}` on
    /// one `data:` line and no `id:` line (which would move a browser's
    /// resume point), then later comments as usual.
    fn sse_viewers_get_a_delete_event(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 2);
        let mut viewer = server.sse("/streams/s/events");
        server.wait_for_viewers("s", 1);

        let response = delete(&server, "/streams/s/comments/1", Some(&moderator(&server)));
        assert_eq!(response.status, 204, "{response}");
        post_many(&server, 1);

        let event = viewer.next_event();
        assert_eq!(event.kind(), "delete", "{event:?}");
        assert_eq!(event.json(), json!({ "id": 1, "stream": "s" }));
        assert_eq!(event.id, None, "a delete event has no id: line");
        assert_eq!(viewer.next_comment()["id"], 3);
    }

    /// WebSocket viewers get exactly `{"type":"delete","id":N}`.
    fn websocket_viewers_get_a_delete_message(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 2);
        let mut viewer = server.ws("/streams/s/ws");
        server.wait_for_viewers("s", 1);

        let response = delete(&server, "/streams/s/comments/2", Some(&moderator(&server)));
        assert_eq!(response.status, 204, "{response}");

        assert_eq!(viewer.next_json(), json!({ "type": "delete", "id": 2 }));
    }

    /// Viewers of another stream are not told about the delete.
    fn delete_reaches_only_viewers_of_its_stream(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 1);
        let mut elsewhere = server.ws("/streams/other/ws");
        server.wait_for_viewers("other", 1);

        let response = delete(&server, "/streams/s/comments/1", Some(&moderator(&server)));
        assert_eq!(response.status, 204, "{response}");

        let posted = server.post_comment("other", &server.token("alice"), "hi").expect_created();
        assert_eq!(elsewhere.next_comment(), posted, "the next message is the new comment");
    }

    /// A viewer resuming from before a deleted comment, over SSE or
    /// WebSocket, gets the others and not the deleted one.
    fn resuming_viewers_never_see_a_deleted_comment(rt) {
        let server = Server::start(rt, &[]);
        post_many(&server, 3);
        let response = delete(&server, "/streams/s/comments/2", Some(&moderator(&server)));
        assert_eq!(response.status, 204, "{response}");

        let mut sse = server.sse("/streams/s/events?since=0");
        assert_eq!(sse.next_comment_ids(2), [1, 3], "SSE replay");
        let mut ws = server.ws("/streams/s/ws?since=0");
        assert_eq!(ws.next_comment_ids(2), [1, 3], "WebSocket replay");
        let page: Value = server.get("/streams/s/comments?since=1").json();
        assert_eq!(page["comments"].as_array().unwrap().len(), 1, "{page}");
    }
}
