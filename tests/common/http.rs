//! A raw HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Tests need to send exact bytes (half a head, two requests in one write,
//! a head without its body), so this client builds nothing it is not told
//! to. It reads a response by its framing (`Content-Length`, chunked, or
//! until the server closes) and every read has a deadline.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// One client connection, with the bytes read but not yet consumed.
pub struct Conn {
    stream: TcpStream,
    unread: Vec<u8>,
}

/// What a read that did not produce bytes ran into.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    /// The server closed the connection (EOF or reset).
    Closed,
    /// The deadline passed first.
    TimedOut,
}

impl Conn {
    /// Connects to `addr`; panics if that takes longer than [`PATIENCE`].
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE)
            .unwrap_or_else(|err| panic!("connecting to {addr}: {err}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        Conn {
            stream,
            unread: Vec::new(),
        }
    }

    /// Writes all of `bytes`; panics if the server refuses them.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.try_send(bytes)
            .unwrap_or_else(|err| panic!("sending: {err}"));
    }

    /// Writes all of `bytes`, reporting failure instead of panicking.
    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.stream.write_all(bytes.as_ref())
    }

    /// Sends one request and reads its response, keeping the connection.
    pub fn exchange(&mut self, request: &Request) -> Response {
        self.send(request.to_bytes());
        self.read_response()
    }

    /// Reads one whole response; panics if it does not come in time.
    pub fn read_response(&mut self) -> Response {
        self.read_response_within(PATIENCE)
    }

    /// Reads one whole response, allowing it `timeout` to arrive.
    pub fn read_response_within(&mut self, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        let mut response = self.read_head(deadline);
        response.body = self.read_body(&response, deadline);
        response
    }

    /// Reads a status line and headers, leaving the body unread.
    pub fn read_head(&mut self, deadline: Instant) -> Response {
        let end = loop {
            if let Some(at) = find(&self.unread, b"\r\n\r\n") {
                break at;
            }
            self.fill_or_panic(deadline, "a response head");
        };
        let head: Vec<u8> = self.unread.drain(..end + 4).collect();
        Response::parse_head(&head)
    }

    /// Checks that the server closes the connection without sending more.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => break,
                Err(ReadEnd::TimedOut) => panic!("the server kept the connection open"),
            }
        }
        let extra = String::from_utf8_lossy(&self.unread);
        assert!(
            self.unread.is_empty(),
            "bytes after the response: {extra:?}"
        );
    }

    /// True if the server closed the connection, false if it stays open
    /// for `wait` without sending anything.
    pub fn closes_within(&mut self, wait: Duration) -> bool {
        match self.fill(Instant::now() + wait) {
            Ok(()) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&self.unread)
            ),
            Err(end) => end == ReadEnd::Closed,
        }
    }

    /// Reads one line ending in CRLF (or LF), without the line ending.
    pub fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadEnd> {
        loop {
            if let Some(at) = find(&self.unread, b"\n") {
                let mut line: Vec<u8> = self.unread.drain(..=at).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            self.fill(deadline)?;
        }
    }

    /// Reads exactly `len` bytes.
    pub fn read_exact(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, ReadEnd> {
        while self.unread.len() < len {
            self.fill(deadline)?;
        }
        Ok(self.unread.drain(..len).collect())
    }

    /// Takes up to `max` bytes of what has been read and not consumed
    /// yet, reading more first only if there was nothing.
    pub fn read_up_to(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, ReadEnd> {
        if self.unread.is_empty() {
            self.fill(deadline)?;
        }
        let len = max.min(self.unread.len());
        Ok(self.unread.drain(..len).collect())
    }

    /// Reads one chunk of a chunked body; an empty chunk is the last one.
    pub fn read_chunk(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadEnd> {
        let size_line = String::from_utf8(self.read_line(deadline)?).unwrap();
        let size_hex = size_line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        if size == 0 {
            while !self.read_line(deadline)?.is_empty() {}
            return Ok(Vec::new());
        }
        let data = self.read_exact(size, deadline)?;
        let crlf = self.read_line(deadline)?;
        assert!(
            crlf.is_empty(),
            "chunk of {size} bytes not followed by CRLF"
        );
        Ok(data)
    }

    fn read_body(&mut self, response: &Response, deadline: Instant) -> Vec<u8> {
        let bodiless = response.status < 200 || response.status == 204 || response.status == 304;
        if bodiless {
            return Vec::new();
        }
        if response.is_chunked() {
            return self.read_chunked_body(deadline);
        }
        if let Some(len) = response.content_length() {
            return self
                .read_exact(len, deadline)
                .expect("a body of Content-Length bytes");
        }
        self.read_until_closed(deadline)
    }

    fn read_chunked_body(&mut self, deadline: Instant) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let chunk = self.read_chunk(deadline).expect("a chunk of the body");
            if chunk.is_empty() {
                return body;
            }
            body.extend_from_slice(&chunk);
        }
    }

    fn read_until_closed(&mut self, deadline: Instant) -> Vec<u8> {
        loop {
            match self.fill(deadline) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => return std::mem::take(&mut self.unread),
                Err(ReadEnd::TimedOut) => panic!("a close-delimited body never ended"),
            }
        }
    }

    fn fill_or_panic(&mut self, deadline: Instant, what: &str) {
        if let Err(end) = self.fill(deadline) {
            let so_far = String::from_utf8_lossy(&self.unread);
            panic!("waiting for {what}: {end:?} after {so_far:?}");
        }
    }

    /// Reads once into `unread`, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::TimedOut);
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(n) => {
                self.unread.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(err) if is_timeout(&err) => Err(ReadEnd::TimedOut),
            Err(err) if err.kind() == ErrorKind::Interrupted => Ok(()),
            Err(_) => Err(ReadEnd::Closed),
        }
    }
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A request to send: method, target, headers and body, nothing implied
/// except `Host` and, when a body is set, `Content-Length`.
#[derive(Clone)]
pub struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        let headers = vec![("Host".to_string(), "livecomment.test".to_string())];
        Request {
            method: method.into(),
            target: target.into(),
            headers,
            body: None,
        }
    }

    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    pub fn post(target: &str) -> Request {
        Request::new("POST", target)
    }

    /// `POST /streams/{stream}/comments` with `{"text": text}`.
    pub fn comment(stream: &str, token: &str, text: &str) -> Request {
        let body = serde_json::json!({ "text": text }).to_string();
        Request::post(&format!("/streams/{stream}/comments"))
            .bearer(token)
            .json(&body)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn bearer(self, token: &str) -> Request {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    /// Sets a body with `Content-Type: application/json`.
    pub fn json(self, body: &str) -> Request {
        self.body("application/json", body.as_bytes())
    }

    /// Sets a body with the given `Content-Type`.
    pub fn body(self, content_type: &str, body: &[u8]) -> Request {
        self.header("Content-Type", content_type).raw_body(body)
    }

    /// Sets a body and its `Content-Length`, and no `Content-Type`.
    pub fn raw_body(mut self, body: &[u8]) -> Request {
        self.body = Some(body.to_vec());
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            out += &format!("{name}: {value}\r\n");
        }
        if let Some(body) = &self.body {
            out += &format!("Content-Length: {}\r\n", body.len());
        }
        out += "\r\n";
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(self.body.as_deref().unwrap_or_default());
        bytes
    }
}

/// A response as read off the wire.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn parse_head(head: &[u8]) -> Response {
        let head = String::from_utf8_lossy(head);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap();
        assert_eq!(version, "HTTP/1.1", "status line {status_line:?}");
        let status = parts.next().and_then(|code| code.parse().ok());
        let status = status.unwrap_or_else(|| panic!("status line {status_line:?}"));
        let headers = lines
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(':').expect("a header line with a colon");
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        Response {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// The first header named `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).into_iter().next()
    }

    /// Every header named `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let named = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        named.map(|(_, value)| value.as_str()).collect()
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .map(|len| len.parse().expect("a numeric Content-Length"))
    }

    pub fn is_chunked(&self) -> bool {
        let encoding = self.header("transfer-encoding").unwrap_or("");
        encoding.to_ascii_lowercase().contains("chunked")
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    /// The body parsed as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {self}"))
    }

    /// Asserts the status, and the contract's error body with that code:
    /// `{"error":"<code>","message":"<human text>"}`.
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "expected {status} {code}, got {self}");
        let body = self.json();
        assert_eq!(body["error"], code, "error code in {self}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "error body without a message: {self}");
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "error Content-Type: {self}"
        );
    }

    /// Asserts a 201 and returns the comment it carries.
    pub fn expect_created(&self) -> serde_json::Value {
        assert_eq!(self.status, 201, "expected 201, got {self}");
        self.json()
    }
}

/// Shows a response the way it came, for assertion messages.
impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "HTTP {}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {value}")?;
        }
        write!(f, "\n{}", String::from_utf8_lossy(&self.body))
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
