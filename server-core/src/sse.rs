//! Server-Sent Events framing (CONTRACT.md, "Server-Sent Events").
//!
//! Each event is encoded once, into shared [`Bytes`], and the same bytes
//! go to every SSE viewer ("encode once, write many"). Comment text only
//! ever appears inside a JSON string on a single `data:` line: JSON
//! escapes every line break, so no text can end the line or the event
//! early.

use crate::comment::Comment;
use bytes::Bytes;

/// The headers of an event-stream response, after the status line.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// The keep-alive comment line.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// `id: N`, `event: comment`, `data: <json>`.
pub fn comment_event(comment_json: &[u8], id: u64) -> Bytes {
    let mut out = Vec::with_capacity(comment_json.len() + 48);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b"\nevent: comment\ndata: ");
    out.extend_from_slice(comment_json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `event: delete` with the deleted comment's id and stream.
pub fn delete_event(stream: &str, id: u64) -> Bytes {
    let data = serde_json::json!({ "id": id, "stream": stream });
    Bytes::from(format!("event: delete\ndata: {data}\n\n"))
}

/// `event: reset`: the resume point is older than the retained history,
/// which now starts at `first_id`.
pub fn reset_event(first_id: u64) -> Bytes {
    Bytes::from(format!(
        "event: reset\ndata: {{\"first_id\":{first_id}}}\n\n"
    ))
}

/// Encodes a comment as JSON once; the caller reuses the bytes for the
/// HTTP response, history and every transport.
pub fn comment_json(comment: &Comment) -> Bytes {
    // Serialising a struct of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(comment).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn comment(text: &str) -> Comment {
        Comment {
            id: 42,
            stream: "match-7".into(),
            author: "alice".into(),
            name: None,
            text: text.into(),
            ts: 1,
        }
    }

    #[test]
    fn a_comment_event_has_id_event_and_data_lines() {
        let c = comment("Goal!");
        let ev = comment_event(&comment_json(&c), c.id);
        assert_eq!(
            std::str::from_utf8(&ev).unwrap(),
            "id: 42\nevent: comment\ndata: {\"id\":42,\"stream\":\"match-7\",\"author\":\"alice\",\"name\":null,\"text\":\"Goal!\",\"ts\":1}\n\n"
        );
    }

    #[test]
    fn reset_and_delete_events_are_json() {
        assert_eq!(
            &reset_event(7)[..],
            b"event: reset\ndata: {\"first_id\":7}\n\n"
        );
        assert_eq!(
            &delete_event("s", 3)[..],
            b"event: delete\ndata: {\"id\":3,\"stream\":\"s\"}\n\n"
        );
    }

    proptest! {
        /// Whatever the text, the event is exactly three lines and a
        /// blank line, and the data line parses back to the same text.
        #[test]
        fn no_comment_text_can_break_sse_framing(text in any::<String>()) {
            let c = comment(&text);
            let ev = comment_event(&comment_json(&c), c.id);
            let s = std::str::from_utf8(&ev).unwrap();
            prop_assert!(s.ends_with("\n\n"));
            let body = &s[..s.len() - 2];
            prop_assert!(!body.contains('\r'));
            let lines: Vec<&str> = body.split('\n').collect();
            prop_assert_eq!(lines.len(), 3);
            prop_assert_eq!(lines[0], "id: 42");
            prop_assert_eq!(lines[1], "event: comment");
            let data = lines[2].strip_prefix("data: ").unwrap();
            let back: Comment = serde_json::from_str(data).unwrap();
            prop_assert_eq!(back.text, text);
        }
    }
}
