//! A WebSocket client for the suite, on `tungstenite`'s blocking client.
//!
//! [`WsClient`] wraps a `tungstenite::WebSocket` over a plain
//! `std::net::TcpStream`. Every read runs under the socket's read
//! timeout, set to what is left of a deadline, so a missing frame fails
//! the test instead of hanging it. `tungstenite` answers the server's
//! pings and close frames by itself, as a browser would.
//!
//! Some tests must send what no well-behaved client would (invalid
//! UTF-8, an unmasked frame, a reserved opcode). For those, the
//! handshake is done by `tungstenite` and the broken frame is written
//! straight to the socket underneath with [`WsClient::send_raw`], built
//! by [`masked_frame`] or [`unmasked_frame`].

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::PATIENCE;
use super::http::Response;
use super::server::Server;

/// An open WebSocket to the server.
pub struct WsClient {
    socket: WebSocket<TcpStream>,
}

/// What the socket carried next.
#[derive(Debug)]
pub enum WsNext {
    /// A text message.
    Text(String),
    /// Any other message: binary, ping or pong.
    Other(Message),
    /// The server's close frame, already answered.
    Close(Option<CloseFrame>),
    /// The TCP connection ended without a close frame (or after one).
    Ended,
    /// The deadline passed first.
    TimedOut,
}

impl Server {
    /// Opens a WebSocket at `target` (a path with optional query); panics
    /// unless the server answers 101.
    pub fn ws(&self, target: &str) -> WsClient {
        self.ws_with(target, &[])
            .unwrap_or_else(|response| panic!("WebSocket {target} refused: {response}"))
    }

    /// Opens a WebSocket at `target` with extra request headers; a
    /// refusal returns the server's HTTP response instead.
    pub fn ws_with(&self, target: &str, headers: &[(&str, &str)]) -> Result<WsClient, Response> {
        WsClient::connect(self.addr(), target, headers)
    }
}

impl WsClient {
    /// Connects and does the opening handshake.
    pub fn connect(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, Response> {
        let url = format!("ws://{addr}{target}");
        let mut request = url.as_str().into_client_request().expect("a WebSocket URL");
        for (name, value) in headers {
            let name: tungstenite::http::HeaderName = name.parse().expect("a header name");
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(value).unwrap());
        }

        let stream = TcpStream::connect_timeout(&addr, PATIENCE)
            .unwrap_or_else(|err| panic!("connecting to {addr}: {err}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();

        match tungstenite::client::client(request, stream) {
            Ok((socket, _)) => Ok(WsClient { socket }),
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(http_response(&response))
            }
            Err(err) => panic!("WebSocket handshake for {target}: {err}"),
        }
    }

    /// Sends one text message.
    pub fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .unwrap_or_else(|err| panic!("sending a text message: {err}"));
    }

    /// Sends `{"type":"post","text":text,"ref":reference}`.
    pub fn post(&mut self, text: &str, reference: &str) {
        let message = json!({ "type": "post", "text": text, "ref": reference });
        self.send_text(&message.to_string());
    }

    /// Sends any message, e.g. a ping.
    pub fn send(&mut self, message: Message) {
        self.socket
            .send(message)
            .unwrap_or_else(|err| panic!("sending a message: {err}"));
    }

    /// Writes `bytes` to the socket as they are, bypassing `tungstenite`.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.socket.get_mut();
        stream.write_all(bytes).expect("writing raw bytes");
        stream.flush().unwrap();
    }

    /// Waits until `deadline` for the next message.
    pub fn next(&mut self, deadline: Instant) -> WsNext {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return WsNext::TimedOut;
        }
        self.socket.get_mut().set_read_timeout(Some(left)).unwrap();
        match self.socket.read() {
            Ok(Message::Text(text)) => WsNext::Text(text.as_str().to_string()),
            Ok(Message::Close(frame)) => WsNext::Close(frame),
            Ok(other) => WsNext::Other(other),
            Err(tungstenite::Error::Io(err)) if is_timeout(&err) => WsNext::TimedOut,
            Err(err) if is_end(&err) => WsNext::Ended,
            Err(err) => panic!("reading from the WebSocket: {err}"),
        }
    }

    /// The next text message, parsed as JSON, skipping pings and pongs;
    /// panics on anything else or if none comes within [`PATIENCE`].
    pub fn next_json(&mut self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.next(deadline) {
                WsNext::Text(text) => {
                    return serde_json::from_str(&text).unwrap_or_else(|err| {
                        panic!("a text message is not JSON ({err}): {text}")
                    });
                }
                WsNext::Other(Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("waiting for a JSON message: {other:?}"),
            }
        }
    }

    /// The next message, which must be exactly
    /// `{"type":"comment","comment":{…}}`; returns the comment.
    pub fn next_comment(&mut self) -> Value {
        let message = self.next_json();
        assert_eq!(message["type"], "comment", "expected a comment: {message}");
        assert_eq!(
            message.as_object().unwrap().len(),
            2,
            "a comment message has type and comment only: {message}"
        );
        let comment = message["comment"].clone();
        assert!(comment["id"].is_u64(), "a comment with an id: {message}");
        comment
    }

    /// The ids of the next `count` comment messages.
    pub fn next_comment_ids(&mut self, count: usize) -> Vec<u64> {
        let comments = (0..count).map(|_| self.next_comment());
        comments
            .map(|comment| comment["id"].as_u64().unwrap())
            .collect()
    }

    /// Reads until the server's close frame, which must come within
    /// [`PATIENCE`] with no text before it; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.next(deadline) {
                WsNext::Close(Some(frame)) => return frame.code.into(),
                WsNext::Other(Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("expected a close frame with a code, got {other:?}"),
            }
        }
    }

    /// Checks that nothing but pings and pongs arrives for `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            match self.next(deadline) {
                WsNext::TimedOut => return,
                WsNext::Other(Message::Ping(_) | Message::Pong(_)) => {}
                other => panic!("expected nothing for {wait:?}, got {other:?}"),
            }
        }
    }

    /// Reads until the connection ends, for at most `timeout`, and
    /// returns the text messages that came before the end.
    pub fn texts_until_end(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut texts = Vec::new();
        loop {
            match self.next(deadline) {
                WsNext::Text(text) => texts.push(text),
                WsNext::Other(_) => {}
                WsNext::Close(_) | WsNext::Ended => return texts,
                WsNext::TimedOut => panic!("the WebSocket was still open after {timeout:?}"),
            }
        }
    }

    /// Starts the closing handshake and waits for the server's answer.
    pub fn close(mut self) {
        self.socket.close(None).expect("sending a close frame");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.next(deadline) {
                WsNext::Close(_) | WsNext::Ended => return,
                WsNext::TimedOut => panic!("the server never answered our close frame"),
                _ => {}
            }
        }
    }
}

/// A client frame as RFC 6455 requires it: `first_byte` (FIN, RSV and
/// opcode), the mask bit with the payload length, a masking key, and
/// the masked payload.
pub fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = frame_head(first_byte, 0x80, payload.len());
    frame.extend_from_slice(&key);
    let masked = payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]);
    frame.extend(masked);
    frame
}

/// A client frame without a mask, which RFC 6455 forbids (section 5.1).
pub fn unmasked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_head(first_byte, 0, payload.len());
    frame.extend_from_slice(payload);
    frame
}

/// The first byte of a final text frame.
pub const FIN_TEXT: u8 = 0x81;

fn frame_head(first_byte: u8, mask_bit: u8, len: usize) -> Vec<u8> {
    let mut head = vec![first_byte];
    if len < 126 {
        head.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        head.push(mask_bit | 126);
        head.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        head.push(mask_bit | 127);
        head.extend_from_slice(&(len as u64).to_be_bytes());
    }
    head
}

/// The handshake's refusal as the suite's own [`Response`].
fn http_response(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> Response {
    let headers = response.headers().iter().map(|(name, value)| {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        (name.as_str().to_string(), value)
    });
    Response {
        status: response.status().as_u16(),
        headers: headers.collect(),
        body: response.body().clone().unwrap_or_default(),
    }
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Whether a read error only means the connection is gone.
fn is_end(err: &tungstenite::Error) -> bool {
    use tungstenite::error::ProtocolError;
    match err {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => true,
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        tungstenite::Error::Io(err) => matches!(
            err.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}
