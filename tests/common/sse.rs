//! A Server-Sent Events reader for a live stream.
//!
//! It sends `GET` on its own connection, checks for a 200, then parses
//! the body as it arrives (chunked or close-delimited) into events
//! (`id:`, `event:`, `data:` lines ended by a blank line) and comments
//! (`: keep-alive`). It keeps every `data:` line separately so tests can
//! check that comment text never splits an event over several lines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::PATIENCE;
use super::http::{Conn, ReadEnd, Request, Response};

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data_lines: Vec<String>,
}

impl SseEvent {
    /// The event type, `message` when none was given.
    pub fn kind(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    /// The data, parsed as JSON; it must be on a single `data:` line.
    pub fn json(&self) -> Value {
        assert_eq!(self.data_lines.len(), 1, "data must be one line: {self:?}");
        serde_json::from_str(&self.data_lines[0])
            .unwrap_or_else(|err| panic!("data is not JSON ({err}): {self:?}"))
    }
}

/// What the stream carried next.
#[derive(Debug)]
pub enum SseItem {
    Event(SseEvent),
    /// A comment line, without its leading `:` and one space.
    Comment(String),
}

/// The result of waiting for the next item.
#[derive(Debug)]
pub enum Next {
    Item(SseItem),
    Closed,
    TimedOut,
}

/// Where the chunked decoder is.
enum Chunk {
    Size,
    Data(usize),
    Crlf,
}

/// A live SSE response being read.
pub struct SseStream {
    conn: Conn,
    head: Response,
    chunk: Option<Chunk>,
    text: Vec<u8>,
    building: Option<SseEvent>,
    ended: bool,
}

impl SseStream {
    /// Opens `target` and reads the response head, which must be a 200.
    pub fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut request = Request::get(target).header("Accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut conn = Conn::open(addr);
        conn.send(request.to_bytes());
        let head = conn.read_head(Instant::now() + PATIENCE);
        assert_eq!(head.status, 200, "GET {target}: {head}");
        let chunk = head.is_chunked().then_some(Chunk::Size);
        SseStream {
            conn,
            head,
            chunk,
            text: Vec::new(),
            building: None,
            ended: false,
        }
    }

    /// The response status line and headers.
    pub fn head(&self) -> &Response {
        &self.head
    }

    /// Waits until `deadline` for the next event or comment.
    pub fn next(&mut self, deadline: Instant) -> Next {
        loop {
            while let Some(line) = self.take_line() {
                if let Some(item) = self.parse_line(line) {
                    return Next::Item(item);
                }
            }
            if self.ended {
                return Next::Closed;
            }
            match self.read_more(deadline) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => self.ended = true,
                Err(ReadEnd::TimedOut) => return Next::TimedOut,
            }
        }
    }

    /// The next event, skipping comments; panics if none comes in time.
    pub fn next_event(&mut self) -> SseEvent {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.next(deadline) {
                Next::Item(SseItem::Event(event)) => return event,
                Next::Item(SseItem::Comment(_)) => {}
                other => panic!("waiting for an SSE event: {other:?}"),
            }
        }
    }

    /// The next event, which must be a `comment` whose `id:` line matches
    /// the id in its JSON; returns that JSON.
    pub fn next_comment(&mut self) -> Value {
        let event = self.next_event();
        assert_eq!(
            event.kind(),
            "comment",
            "expected a comment event: {event:?}"
        );
        let comment = event.json();
        let id = event
            .id
            .as_deref()
            .expect("a comment event carries an id: line");
        assert_eq!(
            id,
            comment["id"].to_string(),
            "id: line and JSON id differ: {event:?}"
        );
        comment
    }

    /// The ids of the next `count` comment events.
    pub fn next_comment_ids(&mut self, count: usize) -> Vec<u64> {
        let comments = (0..count).map(|_| self.next_comment());
        comments
            .map(|comment| comment["id"].as_u64().unwrap())
            .collect()
    }

    /// Reads until the server ends the stream, returning the events
    /// dispatched before the end; panics if it is still open at `timeout`.
    pub fn expect_end(&mut self, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            match self.next(deadline) {
                Next::Item(SseItem::Event(event)) => events.push(event),
                Next::Item(SseItem::Comment(_)) => {}
                Next::Closed => return events,
                Next::TimedOut => panic!("the SSE stream was still open after {timeout:?}"),
            }
        }
    }

    /// Takes one complete line off the decoded body, if there is one.
    fn take_line(&mut self) -> Option<String> {
        let at = self.text.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.text.drain(..=at).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(String::from_utf8(line).expect("SSE lines are UTF-8"))
    }

    /// Applies one line; returns an item when the line completes one.
    fn parse_line(&mut self, line: String) -> Option<SseItem> {
        if line.is_empty() {
            return self.building.take().map(SseItem::Event);
        }
        if let Some(comment) = line.strip_prefix(':') {
            let comment = comment.strip_prefix(' ').unwrap_or(comment);
            return Some(SseItem::Comment(comment.to_string()));
        }
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        let event = self.building.get_or_insert_with(SseEvent::default);
        match field {
            "id" => event.id = Some(value),
            "event" => event.event = Some(value),
            "data" => event.data_lines.push(value),
            _ => {}
        }
        None
    }

    /// Reads more of the body into `text`, undoing chunked framing.
    fn read_more(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let Some(chunk) = &self.chunk else {
            let bytes = self.conn.read_up_to(usize::MAX, deadline)?;
            self.text.extend_from_slice(&bytes);
            return Ok(());
        };
        match *chunk {
            Chunk::Size => {
                let line = String::from_utf8(self.conn.read_line(deadline)?).unwrap();
                let size = line.split(';').next().unwrap().trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                if size == 0 {
                    return Err(ReadEnd::Closed);
                }
                self.chunk = Some(Chunk::Data(size));
            }
            Chunk::Data(left) => {
                let bytes = self.conn.read_up_to(left, deadline)?;
                self.text.extend_from_slice(&bytes);
                let left = left - bytes.len();
                self.chunk = Some(if left == 0 {
                    Chunk::Crlf
                } else {
                    Chunk::Data(left)
                });
            }
            Chunk::Crlf => {
                let line = self.conn.read_line(deadline)?;
                assert!(line.is_empty(), "a chunk not followed by CRLF");
                self.chunk = Some(Chunk::Size);
            }
        }
        Ok(())
    }
}
