//! The viewer's decoder for a WebSocket stream (`GET /streams/{s}/ws`).
//!
//! As cheap per event as the SSE decoder, and yielding the same
//! [`SseEvent`] values, so loss and latency are counted the same way:
//!
//! 1. the response head is parsed once; anything but `101` fails the
//!    viewer;
//! 2. server frames are unmasked (RFC 6455 §5.1), so a frame is a 2-byte
//!    header, an optional 2- or 8-byte length, and the payload; only a
//!    frame cut by the end of a read is copied, into a carry buffer;
//! 3. in a text frame only three things are looked for: the comment's
//!    `"id":` (the first one in the frame is the comment's), `"text":"t=`
//!    (the post's scheduled send time) and `"type":"reset"`. Pings (the
//!    server's keep-alive) and other control frames are skipped; a close
//!    frame ends the stream.
//!
//! The client never answers pings: the server does not require it, and
//! a load generator that wrote on every socket would measure itself.

use std::sync::LazyLock;

use anyhow::{Result, bail};
use memchr::memmem::Finder;

use crate::http::parse_head;
use crate::sse::{SseEvent, parse_digits};

static COMMENT_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"id\":"));
static SENT_AT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"text\":\"t="));
static RESET: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\":\"reset\""));
static COMMENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\":\"comment\""));

/// Response heads larger than this are refused (the server's are small).
const MAX_HEAD: usize = 16 * 1024;

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_CLOSE: u8 = 0x8;

/// Decodes one viewer's upgrade response, then its frames.
#[derive(Default)]
pub struct WsDecoder {
    /// The response head while it is incomplete.
    head: Vec<u8>,
    open: bool,
    /// The start of a frame cut by the end of the last read.
    carry: Vec<u8>,
}

impl WsDecoder {
    /// Whether the `101` has been read.
    pub fn is_streaming(&self) -> bool {
        self.open
    }

    /// Feeds bytes read from the socket; calls `on_event` for each
    /// comment or reset. Fails on a non-101 status, a masked or
    /// malformed frame, or the server's close frame.
    pub fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent)) -> Result<()> {
        if self.open {
            return self.frames(input, on_event);
        }
        self.head.extend_from_slice(input);
        let Some(parsed) = parse_head(&self.head)? else {
            if self.head.len() > MAX_HEAD {
                bail!("response head over {MAX_HEAD} bytes");
            }
            return Ok(());
        };
        if parsed.status != 101 {
            bail!("status {}", parsed.status);
        }
        self.open = true;
        let rest = self.head.split_off(parsed.len);
        self.head = Vec::new();
        self.frames(&rest, on_event)
    }

    fn frames(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent)) -> Result<()> {
        if self.carry.is_empty() {
            let used = scan(input, on_event)?;
            self.carry.extend_from_slice(&input[used..]);
            return Ok(());
        }
        let mut carry = std::mem::take(&mut self.carry);
        carry.extend_from_slice(input);
        let used = scan(&carry, on_event)?;
        carry.drain(..used);
        self.carry = carry;
        Ok(())
    }
}

/// Decodes every complete frame at the start of `data`; returns how many
/// bytes they took.
fn scan(data: &[u8], on_event: &mut impl FnMut(SseEvent)) -> Result<usize> {
    let mut used = 0;
    while let Some((opcode, payload, len)) = frame(&data[used..])? {
        match opcode {
            OPCODE_TEXT => {
                if let Some(event) = decode_message(payload) {
                    on_event(event);
                }
            }
            OPCODE_CLOSE => bail!("the server closed the WebSocket"),
            _ => {}
        }
        used += len;
    }
    Ok(used)
}

/// The frame at the start of `data`: opcode, payload and total length,
/// or `None` if it is not all there yet.
fn frame(data: &[u8]) -> Result<Option<(u8, &[u8], usize)>> {
    let [first, second, rest @ ..] = data else {
        return Ok(None);
    };
    if second & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    let (len, header) = match second & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 4),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let Ok(len) = usize::try_from(len) else {
        bail!("a frame of {len} bytes");
    };
    let total = header + len;
    if data.len() < total {
        return Ok(None);
    }
    Ok(Some((first & 0x0f, &data[header..total], total)))
}

/// Reads the comment id, the send stamp and the reset flag out of one
/// JSON message; `None` for messages that are neither (acks, deletes).
fn decode_message(message: &[u8]) -> Option<SseEvent> {
    if RESET.find(message).is_some() {
        return Some(SseEvent {
            id: None,
            sent_nanos: None,
            reset: true,
        });
    }
    COMMENT.find(message)?;
    let id = COMMENT_ID
        .find(message)
        .and_then(|p| parse_digits(&message[p + COMMENT_ID.needle().len()..]));
    let sent_nanos = SENT_AT
        .find(message)
        .and_then(|p| parse_digits(&message[p + SENT_AT.needle().len()..]));
    Some(SseEvent {
        id,
        sent_nanos,
        reset: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                          Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";

    fn text_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x80 | OPCODE_TEXT];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    fn comment(id: u64, t: u64, pad: usize) -> Vec<u8> {
        let json = format!(
            "{{\"type\":\"comment\",\"comment\":{{\"id\":{id},\"stream\":\"s\",\"author\":\"a\",\
             \"name\":null,\"text\":\"t={t} {}\",\"ts\":1}}}}",
            "x".repeat(pad)
        );
        text_frame(json.as_bytes())
    }

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<SseEvent>> {
        let mut decoder = WsDecoder::default();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, &mut |e| out.push(e))?;
        }
        Ok(out)
    }

    #[test]
    fn comments_yield_their_id_and_send_stamp() {
        let mut bytes = HEAD.to_vec();
        bytes.extend(comment(1, 111, 0));
        bytes.extend(comment(2, 222, 300)); // a 16-bit length
        let events = decode_all(&[&bytes]).unwrap();
        let got: Vec<_> = events.iter().map(|e| (e.id, e.sent_nanos)).collect();
        assert_eq!(got, [(Some(1), Some(111)), (Some(2), Some(222))]);
    }

    #[test]
    fn frames_split_anywhere_across_reads_decode_the_same() {
        let mut bytes = HEAD.to_vec();
        for id in 1..=5 {
            bytes.extend(comment(id, id * 10, (id as usize) * 60));
        }
        let whole = decode_all(&[&bytes]).unwrap();
        for cut in 1..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decode_all(&[a, b]).unwrap(), whole, "cut at {cut}");
        }
        assert_eq!(whole.len(), 5);
    }

    #[test]
    fn pings_acks_and_deletes_are_skipped_and_resets_reported() {
        let mut bytes = HEAD.to_vec();
        bytes.extend([0x89, 0x00]); // ping
        bytes.extend(text_frame(br#"{"type":"delete","id":4}"#));
        bytes.extend(text_frame(br#"{"type":"reset","first_id":7}"#));
        let events = decode_all(&[&bytes]).unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].reset);
    }

    #[test]
    fn a_refused_upgrade_or_a_close_fails_the_viewer() {
        assert!(decode_all(&[b"HTTP/1.1 503 Service Unavailable\r\n\r\n"]).is_err());
        let mut closed = HEAD.to_vec();
        closed.extend([0x88, 0x02, 0x03, 0xe9]); // close 1001
        assert!(decode_all(&[&closed]).is_err());
    }
}
