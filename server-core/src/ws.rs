//! The WebSocket transport (RFC 6455), framed by `tungstenite`.
//!
//! `tungstenite`'s [`WebSocketContext`] is its protocol layer without a
//! socket: it reads frames from, and writes frames to, any `Read + Write`
//! it is handed. Here that is a [`Pipe`] over the connection's own input
//! and output buffers, so the WebSocket stays sans-I/O like the rest of
//! the core: the runtime glue cannot tell it from HTTP.
//!
//! Outgoing events are the exception: a comment is framed once, when it
//! is published, and the same frame bytes go to every WebSocket viewer
//! (server frames are unmasked, so they are identical for everyone).
//! Those bytes are appended to the output directly, between whole frames
//! that `tungstenite` writes (pongs, acks, close), never inside one.
//!
//! Limits (CONTRACT.md, "WebSocket"): a frame or message over 64 KiB
//! closes with 1009, invalid UTF-8 in a text frame with 1007, any other
//! protocol error with 1002; shutdown closes with 1001.

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use std::io::{self, Read, Write};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

/// The largest frame or message a client may send.
pub const MAX_MESSAGE: usize = 64 << 10;

/// A `tungstenite` context for a server connection with our limits.
pub fn server_context() -> WebSocketContext {
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_MESSAGE))
        .max_message_size(Some(MAX_MESSAGE))
        // Viewers mostly listen: a small, eagerly allocated read buffer
        // keeps an idle socket cheap; it grows for larger messages.
        .read_buffer_size(1024)
        .write_buffer_size(0);
    WebSocketContext::new(Role::Server, Some(config))
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(client_key: &str) -> String {
    tungstenite::handshake::derive_accept_key(client_key.as_bytes())
}

/// The connection's buffers seen as a stream: reads drain the input and
/// say `WouldBlock` when it is empty; writes append to the output.
pub struct Pipe<'a> {
    pub input: &'a mut BytesMut,
    pub output: &'a mut BytesMut,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.advance(n);
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One text frame holding `json`.
pub fn text_frame(json: &[u8]) -> Bytes {
    let frame = Frame::message(Bytes::copy_from_slice(json), OpCode::Data(Data::Text), true);
    let mut out = Vec::with_capacity(json.len() + 10);
    // Formatting into a Vec cannot fail.
    let _ = frame.format(&mut out);
    Bytes::from(out)
}

/// `{"type":"comment","comment":{…}}`, framed.
pub fn comment_frame(comment_json: &[u8]) -> Bytes {
    let mut json = Vec::with_capacity(comment_json.len() + 32);
    json.extend_from_slice(b"{\"type\":\"comment\",\"comment\":");
    json.extend_from_slice(comment_json);
    json.push(b'}');
    text_frame(&json)
}

/// `{"type":"delete","id":N}`, framed.
pub fn delete_frame(id: u64) -> Bytes {
    text_frame(format!("{{\"type\":\"delete\",\"id\":{id}}}").as_bytes())
}

/// `{"type":"reset","first_id":F}`, framed.
pub fn reset_frame(first_id: u64) -> Bytes {
    text_frame(format!("{{\"type\":\"reset\",\"first_id\":{first_id}}}").as_bytes())
}

/// A ping, sent as keep-alive.
pub fn ping_frame() -> Bytes {
    let mut out = Vec::with_capacity(2);
    let _ = Frame::ping(Bytes::new()).format(&mut out);
    Bytes::from(out)
}

/// A close frame with `code`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(4 + reason.len());
    let close = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = Frame::close(Some(close)).format(&mut out);
    Bytes::from(out)
}

/// The close code for a `tungstenite` read error: 1009 for size, 1007
/// for bad UTF-8, 1002 for the rest of the protocol.
pub fn close_code_for(err: &tungstenite::Error) -> u16 {
    match err {
        tungstenite::Error::Capacity(_) => 1009,
        tungstenite::Error::Utf8(_) => 1007,
        _ => 1002,
    }
}

/// A message a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Post {
        text: String,
        #[serde(rename = "ref", default)]
        reference: Option<String>,
    },
}

/// `{"type":"ack","ref":…,"comment":{…}}`.
pub fn ack_json(reference: Option<&str>, comment_json: &[u8]) -> Vec<u8> {
    let mut json = Vec::with_capacity(comment_json.len() + 48);
    json.extend_from_slice(b"{\"type\":\"ack\",\"ref\":");
    json.extend_from_slice(ref_json(reference).as_bytes());
    json.extend_from_slice(b",\"comment\":");
    json.extend_from_slice(comment_json);
    json.push(b'}');
    json
}

/// `{"type":"error","ref":…,"error":code,"message":text}`.
pub fn error_json(reference: Option<&str>, code: &str, message: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ErrorMessage<'a> {
        r#type: &'a str,
        r#ref: Option<&'a str>,
        error: &'a str,
        message: &'a str,
    }
    let body = ErrorMessage {
        r#type: "error",
        r#ref: reference,
        error: code,
        message,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

fn ref_json(reference: Option<&str>) -> String {
    serde_json::Value::from(reference).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_matches_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_small_text_frame_is_unmasked_with_a_short_header() {
        let frame = text_frame(b"{}");
        assert_eq!(&frame[..], &[0x81, 0x02, b'{', b'}']);
    }

    #[test]
    fn close_frames_carry_their_code() {
        let frame = close_frame(1001, "");
        assert_eq!(&frame[..], &[0x88, 0x02, 0x03, 0xE9]);
    }

    #[test]
    fn client_posts_parse_with_and_without_ref() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"post","text":"hi","ref":"r1"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Post { reference: Some(ref r), .. } if r == "r1"));
        let m: ClientMessage = serde_json::from_str(r#"{"type":"post","text":"hi"}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Post {
                reference: None,
                ..
            }
        ));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"shout"}"#).is_err());
    }

    #[test]
    fn acks_echo_the_ref() {
        let ack = ack_json(Some("r\"1"), b"{\"id\":1}");
        let v: serde_json::Value = serde_json::from_slice(&ack).unwrap();
        assert_eq!(v["ref"], "r\"1");
        assert_eq!(v["comment"]["id"], 1);
    }
}
