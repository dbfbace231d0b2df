//! HTTP/1.1 request heads in, response bytes out.
//!
//! Parsing is `httparse`'s; this module adds the contract's limits and
//! the framing rules a careful server needs (CONTRACT.md, "Errors"):
//!
//! - a head over `max_head` bytes or with more than `max_headers`
//!   headers is 431;
//! - `Content-Length` together with `Transfer-Encoding`, or two differing
//!   `Content-Length`s, is 400 (the caller then closes the connection,
//!   since the body's end can no longer be known).
//!
//! Only the headers the service uses are kept, as owned values, so a
//! [`Head`] outlives the read buffer it was parsed from.

use crate::error::ApiError;
use bytes::{BufMut, BytesMut};
use std::fmt::Write as _;

/// The parts of a request head the service looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path without the query, still percent-encoded.
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
    /// HTTP/1.0 closes by default; 1.1 keeps alive by default.
    pub keep_alive: bool,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub last_event_id: Option<String>,
    pub expect_continue: bool,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub websocket_key: Option<String>,
    pub websocket_version: Option<String>,
    pub upgrade_websocket: bool,
}

/// What a buffer holds so far.
#[derive(Debug)]
pub enum Parsed {
    /// A complete head, and how many bytes of the buffer it took.
    Complete(Box<Head>, usize),
    /// More bytes are needed.
    Partial,
}

/// Parses one request head from the start of `buf`.
///
/// Returns [`Parsed::Partial`] while the head is incomplete and still
/// within `max_head`; any violation of the limits or the grammar is an
/// error that ends the connection after its response.
pub fn parse_head(buf: &[u8], max_head: usize, max_headers: usize) -> Result<Parsed, ApiError> {
    // httparse wants a slot per header; one spare slot tells us when a
    // request has more than `max_headers`.
    let mut slots = vec![httparse::EMPTY_HEADER; max_headers + 1];
    let mut req = httparse::Request::new(&mut slots);

    let status = match req.parse(buf) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(ApiError::HeadersTooLarge),
        Err(_) => return Err(ApiError::BadRequest("malformed request head")),
    };
    let len = match status {
        httparse::Status::Complete(len) if len > max_head => {
            return Err(ApiError::HeadersTooLarge);
        }
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > max_head => {
            return Err(ApiError::HeadersTooLarge);
        }
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    if req.headers.len() > max_headers {
        return Err(ApiError::HeadersTooLarge);
    }

    let head = head_from(&req)?;
    Ok(Parsed::Complete(Box::new(head), len))
}

/// Copies what the service needs out of a parsed request and checks the
/// framing rules.
fn head_from(req: &httparse::Request<'_, '_>) -> Result<Head, ApiError> {
    let (method, target, version) = match (req.method, req.path, req.version) {
        (Some(m), Some(p), Some(v)) => (m, p, v),
        _ => return Err(ApiError::BadRequest("malformed request line")),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(ApiError::BadRequest(
            "request target must be an absolute path",
        ));
    }

    let mut head = Head {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        keep_alive: version == 1,
        ..Head::default()
    };
    let mut connection_upgrade = false;
    let mut upgrade_websocket = false;

    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ApiError::BadRequest("header value is not UTF-8"))?
            .trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if head.content_length.is_some_and(|prev| prev != n) {
                return Err(ApiError::BadRequest("conflicting Content-Length headers"));
            }
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.keep_alive = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("last-event-id") {
            head.last_event_id = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.websocket_key = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.websocket_version = Some(value.to_owned());
        }
    }

    if head.chunked && head.content_length.is_some() {
        return Err(ApiError::BadRequest(
            "Content-Length and Transfer-Encoding together",
        ));
    }
    head.upgrade_websocket = connection_upgrade && upgrade_websocket;
    Ok(head)
}

/// A `Content-Length` value: ASCII digits only (no sign, no spaces, no
/// list), so `+5`, ` 5` and `5, 5` are all refused.
fn parse_content_length(value: &str) -> Result<usize, ApiError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest("invalid Content-Length"));
    }
    value
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid Content-Length"))
}

/// Returns the value of `key` in a query string, percent-decoded.
/// An empty value counts as present (`?since=` is `Some("")`).
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

/// Decodes `%XX` escapes (and `+` as space, as in form-encoded queries).
/// Invalid escapes are kept literally: the value is then validated by
/// whoever uses it.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response being built: status line, headers, then a body.
///
/// Every response carries `Content-Length` (or is a stream that ends
/// with the connection), `Date` and `Server`.
pub struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: String::with_capacity(128),
            body: Vec::new(),
        }
    }

    /// A JSON body.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// A plain-text body.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body)
    }

    /// The contract's error response, with the headers each error needs.
    pub fn error(err: &ApiError) -> Self {
        let mut resp = Response::json(err.status(), err.body());
        match err {
            ApiError::InvalidToken => {
                resp = resp.header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
            }
            ApiError::MethodNotAllowed(allow) => resp = resp.header("Allow", allow),
            ApiError::RateLimited { retry_after } => {
                resp = resp.header("Retry-After", &retry_after.to_string());
            }
            _ => {}
        }
        resp
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        // `write!` into a String cannot fail.
        let _ = write!(self.headers, "{name}: {value}\r\n");
        self
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Appends the whole response to `out`. `close` adds
    /// `Connection: close`.
    pub fn encode(&self, close: bool, out: &mut BytesMut) {
        self.encode_head(close, Some(self.body.len()), out);
        out.put_slice(&self.body);
    }

    /// Appends only the status line and headers. `length` is the
    /// `Content-Length` to announce; `None` for a body that runs until
    /// the connection closes (an event stream) or a protocol switch.
    pub fn encode_head(&self, close: bool, length: Option<usize>, out: &mut BytesMut) {
        let mut head = String::with_capacity(160 + self.headers.len());
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: livecomment\r\n",
            self.status,
            reason(self.status),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        );
        head.push_str(&self.headers);
        if let Some(len) = length {
            let _ = write!(head, "Content-Length: {len}\r\n");
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.put_slice(head.as_bytes());
    }
}

/// The reason phrase for each status the service sends.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Parsed, ApiError> {
        parse_head(raw.as_bytes(), 8192, 64)
    }

    fn complete(raw: &str) -> Head {
        match parse(raw) {
            Ok(Parsed::Complete(head, len)) => {
                assert_eq!(len, raw.len());
                *head
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn a_simple_get_splits_path_and_query() {
        let head = complete("GET /streams/a/comments?since=3 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/streams/a/comments");
        assert_eq!(head.query.as_deref(), Some("since=3"));
        assert!(head.keep_alive);
    }

    #[test]
    fn a_half_head_is_partial() {
        assert!(matches!(parse("GET / HTTP/1.1\r\nHo"), Ok(Parsed::Partial)));
    }

    #[test]
    fn http_10_and_connection_close_do_not_keep_alive() {
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let raw = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(raw), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn differing_content_lengths_are_refused_but_equal_ones_pass() {
        let bad = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(parse(bad), Err(ApiError::BadRequest(_))));
        let ok = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(complete(ok).content_length, Some(3));
    }

    #[test]
    fn signed_or_spaced_content_length_is_refused() {
        for v in ["+3", "-1", "3 3", "0x3", ""] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n");
            assert!(parse(&raw).is_err(), "accepted {v:?}");
        }
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..65 {
            raw.push_str(&format!("X-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(parse(&raw).unwrap_err(), ApiError::HeadersTooLarge);
    }

    #[test]
    fn an_oversized_head_is_431_even_before_it_ends() {
        let raw = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert_eq!(parse(&raw).unwrap_err(), ApiError::HeadersTooLarge);
    }

    #[test]
    fn garbage_is_400() {
        assert!(matches!(
            parse("HELLO\r\n\r\n"),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param(Some("a=1&b=x%20y"), "b").as_deref(),
            Some("x y")
        );
        assert_eq!(query_param(Some("since="), "since").as_deref(), Some(""));
        assert_eq!(query_param(Some("a=1"), "b"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn websocket_upgrade_needs_both_headers() {
        let head = complete(
            "GET /streams/a/ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
        );
        assert!(head.upgrade_websocket);
        assert_eq!(head.websocket_key.as_deref(), Some("k"));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let mut out = BytesMut::new();
        Response::json(201, "{}").encode(true, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }

    proptest::proptest! {
        #[test]
        fn the_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse_head(&bytes, 1024, 16);
        }

        #[test]
        fn the_parser_never_panics_on_near_valid_heads(
            line in "[A-Z]{1,7} /[ -~]{0,40} HTTP/1\\.[01]\r\n",
            headers in proptest::collection::vec("[!-9;-~]{1,12}: [ -~]{0,30}\r\n", 0..20),
        ) {
            let raw = format!("{line}{}\r\n", headers.concat());
            let _ = parse_head(raw.as_bytes(), 8192, 64);
        }
    }
}
