//! Just enough HTTP/1.1 for a load generator.
//!
//! - request bytes for a post and for an event stream;
//! - [`Responses`]: a parser for pipelined replies on a keep-alive
//!   connection, yielding each status in order and skipping bodies;
//! - [`Dechunker`]: `Transfer-Encoding: chunked` bodies, used by the SSE
//!   decoder when a server streams events in chunks;
//! - [`get`]: one blocking GET (for `/metrics`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The bytes of `POST /streams/{stream}/comments` with a JSON body whose
/// text is `text` (which must need no JSON escaping).
pub fn post_request(stream: &str, token: &str, text: &str) -> Vec<u8> {
    let body = format!("{{\"text\":\"{text}\"}}");
    format!(
        "POST /streams/{stream}/comments HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\
         Authorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// The bytes of `GET /streams/{stream}/events`.
pub fn events_request(stream: &str) -> Vec<u8> {
    format!(
        "GET /streams/{stream}/events HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\
         Accept: text/event-stream\r\n\
         \r\n"
    )
    .into_bytes()
}

/// The WebSocket upgrade a viewer sends for `stream`. The key is fixed:
/// it only has to be 16 bytes in base64, and the accept value that the
/// server derives from it is not checked (the status is).
pub fn ws_request(stream: &str) -> Vec<u8> {
    format!(
        "GET /streams/{stream}/ws HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: bGl2ZWNvbW1lbnQtYmVuY2g=\r\n\
         Sec-WebSocket-Version: 13\r\n\
         \r\n"
    )
    .into_bytes()
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(usize),
    Chunked,
    /// Until the connection closes (or, for a stream, forever).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub status: u16,
    pub body: BodyKind,
    /// Bytes the head took, blank line included.
    pub len: usize,
}

/// Parses a response head at the start of `buf`; `None` if incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).context("malformed response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.context("response without status")?;

    let mut body = BodyKind::UntilClose;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).context("non-ASCII Content-Length")?;
            body = BodyKind::Length(text.trim().parse().context("bad Content-Length")?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && memchr::memmem::find(&h.value.to_ascii_lowercase(), b"chunked").is_some()
        {
            body = BodyKind::Chunked;
        }
    }
    if matches!(status, 204 | 304) || (100..200).contains(&status) {
        body = BodyKind::Length(0);
    }
    Ok(Some(Head { status, body, len }))
}

/// Pipelined responses on one connection, in order.
#[derive(Default)]
pub struct Responses {
    buf: Vec<u8>,
    start: usize,
}

impl Responses {
    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The status of the next complete response, consuming it; `None`
    /// until one has fully arrived.
    pub fn next_status(&mut self) -> Result<Option<u16>> {
        let pending = &self.buf[self.start..];
        let Some(head) = parse_head(pending)? else {
            return Ok(None);
        };
        let rest = &pending[head.len..];
        let body_len = match head.body {
            BodyKind::Length(n) if rest.len() >= n => n,
            BodyKind::Length(_) => return Ok(None),
            BodyKind::Chunked => match Dechunker::default().feed(rest, |_| ())? {
                Some(n) => n,
                None => return Ok(None),
            },
            BodyKind::UntilClose => bail!("reply to a post has no length"),
        };
        self.start += head.len + body_len;
        Ok(Some(head.status))
    }
}

/// Where a [`Dechunker`] is inside a chunked body.
#[derive(Debug, Clone, Copy, Default)]
enum ChunkState {
    /// Reading the hex size line (and any extension) up to its LF.
    #[default]
    Size,
    /// `n` data bytes still to come.
    Data(u64),
    /// The CRLF after a chunk's data, up to its LF.
    DataEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer,
    Done,
}

/// Streams the payload out of a `Transfer-Encoding: chunked` body.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    size: u64,
    size_digits: usize,
    in_extension: bool,
    line_len: usize,
}

impl Dechunker {
    /// Feeds body bytes, handing each run of payload to `on_data`.
    /// Returns how many bytes of `input` the body used once it ended (the
    /// last chunk and trailer read), else `None`.
    pub fn feed(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<Option<usize>> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Size => {
                    self.size_byte(input[i])?;
                    i += 1;
                }
                ChunkState::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    on_data(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if input[i] == b'\n' {
                        self.state = ChunkState::Size;
                    }
                    i += 1;
                }
                ChunkState::Trailer => {
                    self.trailer_byte(input[i]);
                    i += 1;
                }
                ChunkState::Done => return Ok(Some(i)),
            }
        }
        Ok(matches!(self.state, ChunkState::Done).then_some(i))
    }

    fn size_byte(&mut self, b: u8) -> Result<()> {
        match b {
            b'\n' => {
                if self.size_digits == 0 {
                    bail!("chunk size line without digits");
                }
                self.state = if self.size == 0 {
                    self.line_len = 0;
                    ChunkState::Trailer
                } else {
                    ChunkState::Data(self.size)
                };
                self.size = 0;
                self.size_digits = 0;
                self.in_extension = false;
            }
            _ if self.in_extension || b == b'\r' => {}
            b';' | b' ' | b'\t' => self.in_extension = true,
            _ => {
                let digit = (b as char).to_digit(16).context("bad chunk size")?;
                if self.size_digits >= 15 {
                    bail!("chunk size too large");
                }
                self.size = self.size * 16 + u64::from(digit);
                self.size_digits += 1;
            }
        }
        Ok(())
    }

    fn trailer_byte(&mut self, b: u8) {
        match b {
            b'\n' if self.line_len == 0 => self.state = ChunkState::Done,
            b'\n' => self.line_len = 0,
            b'\r' => {}
            _ => self.line_len += 1,
        }
    }
}

/// One blocking `GET path` with `Connection: close`; returns the status
/// and the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let head = parse_head(&raw)?.context("incomplete response")?;
    let rest = &raw[head.len..];
    let body = match head.body {
        BodyKind::Length(n) => rest.get(..n).context("short body")?.to_vec(),
        BodyKind::UntilClose => rest.to_vec(),
        BodyKind::Chunked => {
            let mut body = Vec::new();
            Dechunker::default().feed(rest, |d| body.extend_from_slice(d))?;
            body
        }
    };
    Ok((head.status, body))
}

/// The sum of every sample of metric `name` in Prometheus text (all
/// label sets); `None` if the metric is absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_responses_come_out_in_order() {
        let mut r = Responses::default();
        r.push(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 429 Too");
        assert_eq!(r.next_status().unwrap(), Some(201));
        assert_eq!(r.next_status().unwrap(), None);
        r.push(b" Many Requests\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.next_status().unwrap(), Some(429));
        assert_eq!(r.next_status().unwrap(), None);
    }

    #[test]
    fn chunked_replies_are_skipped_whole() {
        let mut r = Responses::default();
        r.push(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n");
        r.push(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.next_status().unwrap(), Some(201));
        assert_eq!(r.next_status().unwrap(), Some(400));
    }

    #[test]
    fn dechunker_streams_payload_across_splits() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\nnext";
        for split in 0..body.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            let first = d
                .feed(&body[..split], |p| out.extend_from_slice(p))
                .unwrap();
            let second = d
                .feed(&body[split..], |p| out.extend_from_slice(p))
                .unwrap();
            assert_eq!(out, b"hello, world");
            let used = first.or(second.map(|n| n + split)).unwrap();
            assert_eq!(&body[used..], b"next");
        }
    }

    #[test]
    fn metric_sum_adds_label_sets_and_ignores_prefixes() {
        let text = "# HELP x\n\
                    livecomment_viewer_evictions_total{runtime=\"tokio\"} 3\n\
                    livecomment_viewer_evictions_total{runtime=\"may\"} 4\n\
                    livecomment_viewer_evictions_total_other 100\n";
        assert_eq!(
            metric_sum(text, "livecomment_viewer_evictions_total"),
            Some(7.0)
        );
        assert_eq!(metric_sum(text, "absent"), None);
    }
}
