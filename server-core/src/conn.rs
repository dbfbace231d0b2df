//! One client connection as a state machine that does no I/O.
//!
//! The runtime glue owns the socket and the timer; the [`Connection`]
//! owns everything else. The glue's loop is the same on every scheduler:
//!
//! 1. **write**: while [`Connection::output`] is non-empty, write it and
//!    report progress with [`Connection::consume`];
//! 2. **finish**: when [`Connection::is_done`], close the socket;
//! 3. **wait** for whichever comes first:
//!    - the socket is readable (only while [`Connection::wants_read`]):
//!      pass the bytes to [`Connection::received`], or call
//!      [`Connection::closed_by_peer`] on end of file;
//!    - the waker given to [`Connection::poll_events`] fires: call it
//!      again; it moves queued events into the output;
//!    - [`Connection::deadline`] passes: call [`Connection::on_deadline`].
//!
//! Requests are answered in order (pipelining), at most
//! [`OUTPUT_HIGH_WATER`] bytes ahead of what the socket has taken.
//!
//! ```text
//!        ┌──────────── keep-alive ─────────────┐
//!        ▼                                     │
//!     ┌──────┐ head ┌──────┐ body ┌─────────┐  │
//!  ──▶│ Head │─────▶│ Body │─────▶│ respond │──┘
//!     └──────┘      └──────┘      └─────────┘
//!        │ events / ws request         │ error / close
//!        ▼                             ▼
//!  ┌───────────┐ evicted / peer gone ┌─────────┐  flushed  ┌────────┐
//!  │ Sse or Ws │────────────────────▶│ Closing │──────────▶│ Closed │
//!  └───────────┘                     └─────────┘           └────────┘
//! ```

use crate::auth::Claims;
use crate::comment;
use crate::error::ApiError;
use crate::http::{Head, Parsed, Response, parse_head};
use crate::hub::{Drained, Replay, Status, Viewer};
use crate::service::{Outcome, Prepared, Service};
use crate::sse;
use crate::ws;
use bytes::{Buf, BufMut, BytesMut};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;
use tungstenite::Message;
use tungstenite::protocol::WebSocketContext;

/// Stop answering pipelined requests while this much output is unwritten.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Output capacity kept between responses; more is given back.
const OUTPUT_KEEP: usize = 16 * 1024;

/// One client connection.
pub struct Connection {
    service: Arc<Service>,
    input: BytesMut,
    output: BytesMut,
    phase: Phase,
    deadline: Option<Instant>,
    /// Requests answered so far; an idle keep-alive connection that
    /// times out is closed quietly, a new one gets a 408.
    answered: u64,
}

enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// The head is accepted; waiting for its body. Boxed: rare and
    /// large, it would otherwise bloat every idle connection.
    Body(Box<(Head, Prepared)>),
    /// Streaming events to a viewer.
    Sse { viewer: Viewer },
    /// A WebSocket session: a viewer that may also post.
    WebSocket(Box<WsSession>),
    /// Write what is in the output, then close.
    Closing,
    /// Close now, dropping any output.
    Closed,
}

/// What a WebSocket connection keeps beyond its buffers.
struct WsSession {
    /// `tungstenite`'s protocol state: reassembly, control frames, close.
    ctx: WebSocketContext,
    viewer: Viewer,
    /// Set when the client connected with a valid token.
    claims: Option<Claims>,
    stream: String,
}

impl Connection {
    /// A new connection, counted in the service's metrics until dropped.
    /// Past the connection limit, it answers 503 and closes.
    pub fn new(service: Arc<Service>, now: Instant) -> Self {
        service.metrics().connection_opened();
        let deadline = Some(now + service.config().head_timeout);
        let over_limit = service.metrics().connections() > service.config().max_connections as i64;
        let mut conn = Connection {
            service,
            input: BytesMut::new(),
            output: BytesMut::new(),
            phase: Phase::Head,
            deadline,
            answered: 0,
        };
        if over_limit {
            conn.refuse(ApiError::Unavailable("too many connections"), true, now);
        }
        conn
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`Connection::output`] were written. When the output
    /// empties, requests held back by the high-water mark are answered.
    pub fn consume(&mut self, n: usize) {
        self.output.advance(n.min(self.output.len()));
        if self.output.is_empty() {
            if self.output.capacity() > OUTPUT_KEEP {
                self.output = BytesMut::new();
            }
            if matches!(self.phase, Phase::Head | Phase::Body(_)) && !self.input.is_empty() {
                self.process(Instant::now());
            }
        }
    }

    /// Whether the glue should read from the socket. Viewers keep
    /// reading, so a closed socket is noticed at once.
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::Head | Phase::Body(_) => {
                let cap = self.service.config().max_head + self.service.config().max_body;
                self.input.len() <= cap
            }
            Phase::Sse { .. } | Phase::WebSocket(_) => true,
            Phase::Closing | Phase::Closed => false,
        }
    }

    /// Whether the socket should be closed now.
    pub fn is_done(&self) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Closing => self.output.is_empty(),
            _ => false,
        }
    }

    /// When [`Connection::on_deadline`] is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether this connection is streaming events to a viewer.
    pub fn is_viewer(&self) -> bool {
        self.viewer().is_some()
    }

    fn viewer(&self) -> Option<&Viewer> {
        match &self.phase {
            Phase::Sse { viewer } => Some(viewer),
            Phase::WebSocket(session) => Some(&session.viewer),
            _ => None,
        }
    }

    /// Bytes arrived from the client.
    pub fn received(&mut self, data: &[u8], now: Instant) {
        match self.phase {
            Phase::Head | Phase::Body(_) => {
                self.input.extend_from_slice(data);
                self.process(now);
            }
            Phase::WebSocket(_) => {
                self.input.extend_from_slice(data);
                self.read_frames();
            }
            // An SSE viewer has nothing more to say; what it sends is ignored.
            Phase::Sse { .. } | Phase::Closing | Phase::Closed => {}
        }
    }

    /// The client closed its side. A request already read is still
    /// answered; a viewer is dropped at once.
    pub fn closed_by_peer(&mut self) {
        self.phase = match self.phase {
            Phase::Head if self.input.is_empty() && !self.output.is_empty() => Phase::Closing,
            Phase::Closing => Phase::Closing,
            _ => Phase::Closed,
        };
        self.deadline = None;
    }

    /// The deadline passed: a request that did not arrive in time gets
    /// 408; a viewer gets a keep-alive comment; a client that will not
    /// take its last response is dropped.
    pub fn on_deadline(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| now < d) {
            return;
        }
        match self.phase {
            Phase::Head if self.input.is_empty() && self.answered > 0 => {
                self.phase = Phase::Closed;
                self.deadline = None;
            }
            Phase::Head | Phase::Body(_) => self.refuse(ApiError::Timeout, true, now),
            Phase::Sse { .. } | Phase::WebSocket(_) => {
                if self.output.is_empty() {
                    match self.phase {
                        Phase::Sse { .. } => self.output.put_slice(sse::KEEPALIVE),
                        _ => self.output.put_slice(&ws::ping_frame()),
                    }
                }
                self.deadline = Some(now + self.service.config().keepalive);
            }
            Phase::Closing | Phase::Closed => {
                self.phase = Phase::Closed;
                self.deadline = None;
            }
        }
    }

    /// For a viewer: moves queued events into the output and returns
    /// `true` when there is something new to write or the connection
    /// must close. Otherwise `waker` is registered and fires when events
    /// arrive. Drains only once the previous output is fully written, so
    /// a slow client's backlog stays in its mailbox, where it counts
    /// toward eviction.
    pub fn poll_events(&mut self, waker: &Waker) -> bool {
        let Some(viewer) = self.viewer() else {
            return false;
        };
        let mailbox = viewer.mailbox().clone();
        let ended = if self.output.is_empty() {
            match mailbox.drain_into(&mut self.output, waker) {
                Drained::Events(n) => {
                    self.service.metrics().events_delivered(n as u64);
                    return true;
                }
                Drained::Empty => return false,
                Drained::Ended(status) => status,
            }
        } else {
            match mailbox.watch(waker) {
                None => return false,
                Some(status) => status,
            }
        };
        self.end_stream(ended);
        true
    }

    fn end_stream(&mut self, status: Status) {
        if status != Status::Evicted && matches!(self.phase, Phase::WebSocket(_)) {
            self.output
                .put_slice(&ws::close_frame(1001, "server shutting down"));
        }
        self.phase = match status {
            // Whatever is unwritten would only delay the reconnect.
            Status::Evicted => Phase::Closed,
            Status::Closed | Status::Open => Phase::Closing,
        };
        self.deadline = Some(Instant::now() + self.service.config().head_timeout);
    }

    /// Answers every complete request in the input, in order.
    fn process(&mut self, now: Instant) {
        while self.output.len() < OUTPUT_HIGH_WATER {
            match &self.phase {
                Phase::Head => {
                    if self.input.is_empty() || !self.next_head(now) {
                        break;
                    }
                }
                Phase::Body(pending) => {
                    let len = pending.1.body_len;
                    if self.input.len() < len {
                        break;
                    }
                    let body = self.input.split_to(len);
                    if let Phase::Body(pending) = std::mem::replace(&mut self.phase, Phase::Head) {
                        let (head, req) = *pending;
                        self.finish(&head, req, &body, now);
                    }
                }
                _ => break,
            }
        }
        if self.input.is_empty() && self.input.capacity() > 0 {
            self.input = BytesMut::new();
        }
    }

    /// Parses one head. Returns whether one was complete.
    fn next_head(&mut self, now: Instant) -> bool {
        let config = self.service.config();
        let head = match parse_head(&self.input, config.max_head, config.max_headers) {
            Ok(Parsed::Complete(head, len)) => {
                self.input.advance(len);
                *head
            }
            Ok(Parsed::Partial) => return false,
            Err(err) => {
                self.refuse(err, true, now);
                return false;
            }
        };
        self.service.metrics().request();
        tracing::debug!(method = %head.method, path = %head.path, "request");

        let req = match self.service.prepare(&head) {
            Ok(req) => req,
            Err(err) => {
                // The body, if any, is left unread: the framing is lost.
                let close =
                    !head.keep_alive || head.chunked || head.content_length.unwrap_or(0) > 0;
                self.refuse(err, close, now);
                return true;
            }
        };
        if req.body_len == 0 {
            self.finish(&head, req, &[], now);
            return true;
        }
        if head.expect_continue && self.input.len() < req.body_len {
            self.output.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        self.deadline = Some(now + config.head_timeout);
        self.phase = Phase::Body(Box::new((head, req)));
        true
    }

    /// Runs a complete request and queues its response.
    fn finish(&mut self, head: &Head, req: Prepared, body: &[u8], now: Instant) {
        let keep_alive = head.keep_alive && !self.service.is_draining();
        match self.service.handle(head, req, body) {
            Ok(Outcome::Respond(resp)) => self.respond(&resp, head, keep_alive, now),
            Ok(Outcome::Sse { viewer, replay }) => self.start_sse(viewer, replay, now),
            Ok(Outcome::WebSocket {
                viewer,
                replay,
                claims,
                accept,
                stream,
            }) => {
                let session = WsSession {
                    ctx: ws::server_context(),
                    viewer,
                    claims,
                    stream,
                };
                self.start_websocket(session, &accept, replay, now);
            }
            Err(err) => self.refuse(err, !keep_alive, now),
        }
    }

    fn respond(&mut self, resp: &Response, head: &Head, keep_alive: bool, now: Instant) {
        if head.method == "HEAD" {
            resp.encode_head(!keep_alive, Some(resp.body_len()), &mut self.output);
        } else {
            resp.encode(!keep_alive, &mut self.output);
        }
        self.after_response(keep_alive, now);
    }

    /// Queues an error response; `close` ends the connection after it.
    fn refuse(&mut self, err: ApiError, close: bool, now: Instant) {
        self.service.metrics().refused(&err);
        tracing::debug!(code = err.code(), "request refused");
        Response::error(&err).encode(close, &mut self.output);
        self.after_response(!close, now);
    }

    fn after_response(&mut self, keep_alive: bool, now: Instant) {
        self.answered += 1;
        self.deadline = Some(now + self.service.config().head_timeout);
        if keep_alive {
            self.phase = Phase::Head;
        } else {
            self.phase = Phase::Closing;
            self.input.clear();
        }
    }

    /// Sends the event-stream head and the replay, then goes live.
    fn start_sse(&mut self, viewer: Viewer, replay: Replay, now: Instant) {
        Response::new(200)
            .header("Content-Type", sse::CONTENT_TYPE)
            .header("Cache-Control", "no-cache")
            .header("X-Accel-Buffering", "no")
            .encode_head(true, None, &mut self.output);
        if let Some(first_id) = replay.reset {
            self.output.put_slice(&sse::reset_event(first_id));
        }
        for entry in &replay.entries {
            self.output.put_slice(&entry.event.sse);
        }
        self.service
            .metrics()
            .events_delivered(replay.entries.len() as u64);

        self.input = BytesMut::new();
        self.answered += 1;
        self.deadline = Some(now + self.service.config().keepalive);
        self.phase = Phase::Sse { viewer };
    }
}

impl Connection {
    /// Answers 101, sends the replay as frames, then goes live. Bytes
    /// the client sent after its handshake are WebSocket frames already.
    fn start_websocket(&mut self, session: WsSession, accept: &str, replay: Replay, now: Instant) {
        Response::new(101)
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Accept", accept)
            .encode_head(false, None, &mut self.output);
        if let Some(first_id) = replay.reset {
            self.output.put_slice(&ws::reset_frame(first_id));
        }
        for entry in &replay.entries {
            self.output.put_slice(&entry.event.ws);
        }
        self.service
            .metrics()
            .events_delivered(replay.entries.len() as u64);

        self.answered += 1;
        self.deadline = Some(now + self.service.config().keepalive);
        self.phase = Phase::WebSocket(Box::new(session));
        if !self.input.is_empty() {
            self.read_frames();
        }
    }

    /// Feeds the input to `tungstenite` and acts on each whole message.
    /// Pings are answered and a client's close is returned by
    /// `tungstenite` itself; a broken frame closes with its code.
    fn read_frames(&mut self) {
        loop {
            let Phase::WebSocket(session) = &mut self.phase else {
                return;
            };
            let mut pipe = ws::Pipe {
                input: &mut self.input,
                output: &mut self.output,
            };
            let message = match session.ctx.read(&mut pipe) {
                Ok(message) => message,
                Err(tungstenite::Error::Io(err))
                    if err.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    let _ = session.ctx.flush(&mut pipe);
                    return;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.close_after_output();
                    return;
                }
                Err(err) => {
                    let code = ws::close_code_for(&err);
                    tracing::debug!(code, cause = %err, "closing WebSocket");
                    self.output.put_slice(&ws::close_frame(code, ""));
                    self.close_after_output();
                    return;
                }
            };
            match message {
                Message::Text(text) => self.client_message(text.as_bytes()),
                Message::Binary(_) => {
                    self.ws_error(None, &ApiError::BadRequest("send text frames"))
                }
                // Pings, pongs and close are handled inside `tungstenite`.
                _ => {}
            }
        }
    }

    /// A client's JSON message: today, a post.
    fn client_message(&mut self, text: &[u8]) {
        let Phase::WebSocket(session) = &self.phase else {
            return;
        };
        let (text, reference) = match serde_json::from_slice(text) {
            Ok(ws::ClientMessage::Post { text, reference }) => (text, reference),
            Err(_) => {
                let err = ApiError::BadRequest("expected {\"type\":\"post\",\"text\":…}");
                return self.ws_error(None, &err);
            }
        };
        let result = match &session.claims {
            Some(claims) if self.service.still_valid(claims) => comment::validate_text(&text)
                .and_then(|text| self.service.publish(&session.stream, claims, &text)),
            _ => Err(ApiError::InvalidToken),
        };
        match result {
            Ok(entry) => {
                let ack = ws::ack_json(reference.as_deref(), &entry.json);
                self.output.put_slice(&ws::text_frame(&ack));
            }
            Err(err) => self.ws_error(reference.as_deref(), &err),
        }
    }

    fn ws_error(&mut self, reference: Option<&str>, err: &ApiError) {
        self.service.metrics().refused(err);
        let message = match err {
            ApiError::InvalidToken => "connect with a valid token to post",
            other => other.message(),
        };
        let json = ws::error_json(reference, err.code(), message);
        self.output.put_slice(&ws::text_frame(&json));
    }

    fn close_after_output(&mut self) {
        self.phase = Phase::Closing;
        self.input.clear();
        self.deadline = Some(Instant::now() + self.service.config().head_timeout);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.service.metrics().connection_closed();
    }
}
