//! The viewer's decoder for `text/event-stream` responses.
//!
//! It is built to be cheap per event, because one thread decodes every
//! viewer's stream:
//!
//! 1. the response head is parsed once (status 200 or the viewer fails;
//!    a chunked body goes through a [`Dechunker`] first);
//! 2. events are found by a byte search for the blank line that ends
//!    them (`\n\n`), straight out of the read buffer; only an event cut
//!    by the end of a read is copied, into a small carry buffer;
//! 3. inside an event only three things are looked for: the `id:` line
//!    (loss is counted from ids), `"text":"t=` in the data line (the
//!    post's scheduled send time, for latency), and `event: reset`.
//!
//! The server ends lines with `\n` (CONTRACT.md shows no `\r`); a server
//! that sent `\r\n\r\n` between events would need a second terminator
//! search here.

use std::sync::LazyLock;

use anyhow::{Result, bail};
use memchr::memmem::Finder;

use crate::http::{BodyKind, Dechunker, parse_head};

static EVENT_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
static ID_LINE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\nid: "));
static SENT_AT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"text\":\"t="));
static RESET: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\nevent: reset"));

/// Response heads larger than this are refused (the server's are small).
const MAX_HEAD: usize = 16 * 1024;

/// What one event told the viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field: a comment's id.
    pub id: Option<u64>,
    /// The `t=` stamp at the start of the comment text (Unix nanos).
    pub sent_nanos: Option<u64>,
    /// An `event: reset` (history no longer holds the resume point).
    pub reset: bool,
}

enum Phase {
    /// Collecting the response head.
    Head(Vec<u8>),
    /// Streaming events; chunked bodies are dechunked first.
    Body(Option<Dechunker>),
}

/// Decodes one viewer's response, head then events.
pub struct SseDecoder {
    phase: Phase,
    carry: Vec<u8>,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder {
            phase: Phase::Head(Vec::new()),
            carry: Vec::new(),
        }
    }
}

impl SseDecoder {
    /// Whether the head has been read and was `200`.
    pub fn is_streaming(&self) -> bool {
        matches!(self.phase, Phase::Body(_))
    }

    /// Feeds bytes read from the socket; calls `on_event` for each
    /// complete event. Fails on a non-200 status or malformed framing.
    pub fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent)) -> Result<()> {
        let body = match &mut self.phase {
            Phase::Body(_) => input,
            Phase::Head(head) => {
                head.extend_from_slice(input);
                let Some(parsed) = parse_head(head)? else {
                    if head.len() > MAX_HEAD {
                        bail!("response head over {MAX_HEAD} bytes");
                    }
                    return Ok(());
                };
                if parsed.status != 200 {
                    bail!("status {}", parsed.status);
                }
                let chunked = (parsed.body == BodyKind::Chunked).then(Dechunker::default);
                let rest = head.split_off(parsed.len);
                self.phase = Phase::Body(chunked);
                return self.feed_body(&rest, on_event);
            }
        };
        self.feed_body(body, on_event)
    }

    fn feed_body(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent)) -> Result<()> {
        let Phase::Body(chunked) = &mut self.phase else {
            return Ok(());
        };
        match chunked {
            None => scan(&mut self.carry, input, on_event),
            Some(dechunker) => {
                let carry = &mut self.carry;
                if dechunker
                    .feed(input, |data| scan(carry, data, on_event))?
                    .is_some()
                {
                    bail!("event stream ended");
                }
            }
        }
        Ok(())
    }
}

/// Finds complete events in `carry` + `data`, leaving a trailing partial
/// event in `carry`.
fn scan(carry: &mut Vec<u8>, mut data: &[u8], on_event: &mut impl FnMut(SseEvent)) {
    if !carry.is_empty() {
        let end = if carry.last() == Some(&b'\n') && data.first() == Some(&b'\n') {
            Some(1)
        } else {
            EVENT_END.find(data).map(|p| p + 2)
        };
        let Some(end) = end else {
            carry.extend_from_slice(data);
            return;
        };
        carry.extend_from_slice(&data[..end]);
        on_event(decode_event(carry));
        carry.clear();
        data = &data[end..];
    }

    let mut start = 0;
    while let Some(p) = EVENT_END.find(&data[start..]) {
        let end = start + p + 2;
        on_event(decode_event(&data[start..end]));
        start = end;
    }
    carry.extend_from_slice(&data[start..]);
}

/// Reads the id, the send stamp and the reset flag out of one event.
fn decode_event(event: &[u8]) -> SseEvent {
    let id = if let Some(rest) = event.strip_prefix(b"id: ") {
        parse_digits(rest)
    } else {
        ID_LINE
            .find(event)
            .and_then(|p| parse_digits(&event[p + 5..]))
    };
    let sent_nanos = SENT_AT
        .find(event)
        .and_then(|p| parse_digits(&event[p + SENT_AT.needle().len()..]));
    let reset = event.starts_with(b"event: reset") || RESET.find(event).is_some();
    SseEvent {
        id,
        sent_nanos,
        reset,
    }
}

/// The decimal number at the start of `bytes` (at most 19 digits).
pub(crate) fn parse_digits(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    bytes[..digits].iter().try_fold(0u64, |n, b| {
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";

    fn comment(id: u64, t: u64) -> Vec<u8> {
        format!(
            "id: {id}\nevent: comment\ndata: {{\"id\":{id},\"stream\":\"s\",\"author\":\"a\",\
             \"name\":null,\"text\":\"t={t} pad\",\"ts\":1}}\n\n"
        )
        .into_bytes()
    }

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |e| out.push(e)).unwrap();
        }
        out
    }

    #[test]
    fn events_are_decoded_whatever_the_read_boundaries() {
        let mut stream = HEAD.to_vec();
        stream.extend(comment(1, 111));
        stream.extend(b": keep-alive\n\n");
        stream.extend(comment(2, 222));
        for split in 0..stream.len() {
            let events = decode_all(&[&stream[..split], &stream[split..]]);
            let ids: Vec<_> = events.iter().filter_map(|e| e.id).collect();
            assert_eq!(ids, [1, 2], "split at {split}");
            assert_eq!(events[0].sent_nanos, Some(111));
            assert_eq!(events.last().unwrap().sent_nanos, Some(222));
        }
    }

    #[test]
    fn chunked_streams_are_dechunked_before_scanning() {
        let mut head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let body = [comment(7, 1), comment(8, 2)].concat();
        let (a, b) = body.split_at(30);
        head.extend(format!("{:x}\r\n", a.len()).as_bytes());
        head.extend(a);
        head.extend(format!("\r\n{:x}\r\n", b.len()).as_bytes());
        head.extend(b);
        head.extend(b"\r\n");
        let ids: Vec<_> = decode_all(&[&head]).iter().filter_map(|e| e.id).collect();
        assert_eq!(ids, [7, 8]);
    }

    #[test]
    fn a_refused_viewer_fails_on_the_status() {
        let mut d = SseDecoder::default();
        let err = d.feed(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            &mut |_| (),
        );
        assert!(err.is_err());
    }

    #[test]
    fn reset_events_are_flagged() {
        let mut stream = HEAD.to_vec();
        stream.extend(b"event: reset\ndata: {\"first_id\":5}\n\n");
        let events = decode_all(&[&stream]);
        assert_eq!(events.len(), 1);
        assert!(events[0].reset);
        assert_eq!(events[0].id, None);
    }

    #[test]
    fn digits_parse_without_overflow() {
        assert_eq!(parse_digits(b"42\n"), Some(42));
        assert_eq!(parse_digits(b"x"), None);
        assert_eq!(parse_digits(b"99999999999999999999"), None);
    }
}
