//! Thousands of viewers as tasks on the load generator's thread.
//!
//! Each viewer is a `spawn_local` task on the harness's current-thread
//! tokio runtime: it binds a socket to its source address, connects,
//! sends `GET /streams/{s}/events`, and decodes what arrives.
//!
//! # Shared state
//!
//! Every viewer task and the scenario code share one [`Board`] through an
//! `Rc`. Only tasks of this one thread touch it, one at a time, so plain
//! `Cell`/`RefCell` suffice; a `RefCell` borrow never spans an `.await`.
//! A viewer writes its own [`Track`] (by index) and the common latency
//! histogram; the scenario reads them between awaits.
//!
//! # Reading cheaply
//!
//! Viewers do not own read buffers: after `readable().await` a viewer
//! reads with `try_read` into one thread-local scratch buffer and decodes
//! in place, so ten thousand idle viewers cost their sockets and a few
//! hundred bytes each. The clock is read once per read, not per event.
//!
//! # Source addresses
//!
//! Viewer `n` binds to `127.0.0.{1 + n % 254}` before connecting, so the
//! 28,000 ephemeral ports are available per address rather than once,
//! and sockets left in TIME_WAIT by one scenario do not starve the next.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::clock::{Clock, duration_nanos};
use crate::http;
use crate::sse::{SseDecoder, SseEvent};
use crate::ws::WsDecoder;

/// Size of the thread-local read buffer shared by all viewers.
const SCRATCH_BYTES: usize = 256 * 1024;

/// Reads one viewer makes per wake-up before letting others run.
const READS_PER_WAKE: usize = 8;

/// Receive buffer of a slow viewer, so that it backs up quickly.
const SLOW_RCVBUF: u32 = 4 * 1024;

/// The MSS a slow viewer announces. The server's kernel sizes its send
/// buffer from the MSS (on loopback up to megabytes with the default
/// 64 KiB MSS); a small MSS keeps that buffer at tens of kilobytes, so
/// the server's own queue passes its bound within a second or two.
const SLOW_MSS: libc::c_int = 536;

/// Keep at most this many connection errors' messages for the report.
const KEPT_ERRORS: usize = 5;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// How a viewer receives events. Both decoders yield the same
/// [`SseEvent`] values (the comment's id, the `t=` stamp of its text), so
/// loss and latency are counted the same way for both.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server-Sent Events: `GET /streams/{s}/events`.
    #[default]
    Sse,
    /// WebSocket: `GET /streams/{s}/ws`, read-only (no token).
    Ws,
}

impl Transport {
    fn request(self, stream: &str) -> Vec<u8> {
        match self {
            Transport::Sse => http::events_request(stream),
            Transport::Ws => http::ws_request(stream),
        }
    }

    fn decoder(self) -> Decoder {
        match self {
            Transport::Sse => Decoder::Sse(SseDecoder::default()),
            Transport::Ws => Decoder::Ws(WsDecoder::default()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::Ws => "WebSocket",
        }
    }
}

/// A viewer's decoder, for its transport.
enum Decoder {
    Sse(SseDecoder),
    Ws(WsDecoder),
}

impl Decoder {
    fn is_streaming(&self) -> bool {
        match self {
            Decoder::Sse(d) => d.is_streaming(),
            Decoder::Ws(d) => d.is_streaming(),
        }
    }

    fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent)) -> Result<()> {
        match self {
            Decoder::Sse(d) => d.feed(input, on_event),
            Decoder::Ws(d) => d.feed(input, on_event),
        }
    }
}

/// What a viewer does once its stream is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads everything as it arrives.
    Reader,
    /// Stops reading after the response head (and has a tiny receive
    /// buffer), so the server's queue for it grows until eviction.
    Slow,
}

/// Where one viewer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Streaming,
    /// The server ended the stream.
    Closed,
    /// Connecting failed, the status was not 200, or reading failed.
    Failed,
}

/// What one viewer has seen, for loss accounting.
#[derive(Debug, Clone)]
pub struct Track {
    /// Index of its stream in the scenario's stream list.
    pub stream: usize,
    pub behaviour: Behaviour,
    pub state: State,
    /// Whether the response head ever arrived.
    pub streamed: bool,
    /// The next id this viewer expects (streams start at 1).
    pub next_id: u64,
    /// Ids skipped over: lost events.
    pub gaps: u64,
    /// Ids seen again or out of order.
    pub duplicates: u64,
    pub resets: u64,
}

/// Everything the viewers of one scenario share (see the module doc).
pub struct Board {
    clock: Clock,
    tracks: RefCell<Vec<Track>>,
    latency: RefCell<Histogram<u64>>,
    connect: RefCell<Histogram<u64>>,
    delivered: Cell<u64>,
    streaming: Cell<usize>,
    failed: Cell<usize>,
    stopping: Cell<bool>,
    errors: RefCell<Vec<String>>,
}

/// A nanosecond histogram from 1 µs to 100 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("constant bounds are valid")
}

/// Loss over a set of viewers, once posting has ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loss {
    pub viewers: usize,
    pub lost: u64,
    pub duplicates: u64,
    pub resets: u64,
    /// Viewers whose stream ended or failed after it had opened.
    pub dropped: usize,
}

/// The viewers of one scenario.
pub struct Viewers {
    server: SocketAddr,
    transport: Transport,
    board: Rc<Board>,
    gate: Rc<Semaphore>,
    tasks: Vec<JoinHandle<()>>,
}

impl Viewers {
    /// Viewers of `server`; at most `in_flight` of them connect at once.
    pub fn new(server: SocketAddr, clock: Clock, in_flight: usize) -> Viewers {
        Viewers {
            server,
            transport: Transport::default(),
            board: Rc::new(Board {
                clock,
                tracks: RefCell::new(Vec::new()),
                latency: RefCell::new(latency_histogram()),
                connect: RefCell::new(latency_histogram()),
                delivered: Cell::new(0),
                streaming: Cell::new(0),
                failed: Cell::new(0),
                stopping: Cell::new(false),
                errors: RefCell::new(Vec::new()),
            }),
            gate: Rc::new(Semaphore::new(in_flight.max(1))),
            tasks: Vec::new(),
        }
    }

    /// The transport of the viewers spawned from now on.
    pub fn set_transport(&mut self, transport: Transport) {
        self.transport = transport;
    }

    /// Starts one viewer of `stream` (its index `stream_index` in the
    /// scenario's list). Must be called inside a `LocalSet`.
    pub fn spawn(&mut self, stream_index: usize, stream: &str, behaviour: Behaviour) {
        let index = {
            let mut tracks = self.board.tracks.borrow_mut();
            tracks.push(Track {
                stream: stream_index,
                behaviour,
                state: State::Connecting,
                streamed: false,
                next_id: 1,
                gaps: 0,
                duplicates: 0,
                resets: 0,
            });
            tracks.len() - 1
        };
        let octet = 1 + (index % 254) as u8;
        let viewer = Viewer {
            index,
            server: self.server,
            source: Ipv4Addr::new(127, 0, 0, octet),
            request: self.transport.request(stream),
            transport: self.transport,
            behaviour,
            board: Rc::clone(&self.board),
            gate: Rc::clone(&self.gate),
        };
        self.tasks.push(tokio::task::spawn_local(viewer.run()));
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Viewers whose response head arrived.
    pub fn streaming(&self) -> usize {
        self.board.streaming.get()
    }

    pub fn failed(&self) -> usize {
        self.board.failed.get()
    }

    /// Comment events delivered so far (duplicates excluded).
    pub fn delivered(&self) -> u64 {
        self.board.delivered.get()
    }

    /// The first few connection errors, for the report.
    pub fn errors(&self) -> Vec<String> {
        self.board.errors.borrow().clone()
    }

    /// Waits until every viewer is streaming or has failed, or `timeout`
    /// passes; returns how many are streaming.
    pub async fn wait_settled(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.streaming() + self.failed() < self.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.streaming()
    }

    /// Takes the delivery latency histogram recorded so far, leaving an
    /// empty one.
    pub fn take_latency(&self) -> Histogram<u64> {
        self.board.latency.replace(latency_histogram())
    }

    /// Takes the connect-to-first-byte histogram.
    pub fn take_connect_latency(&self) -> Histogram<u64> {
        self.board.connect.replace(latency_histogram())
    }

    /// Waits until every reading viewer that streamed has seen the last
    /// id of its stream (`last_ids[stream]`), or `timeout` passes.
    pub async fn wait_caught_up(&self, last_ids: &[u64], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.behind(last_ids) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reading viewers still short of their stream's last id.
    fn behind(&self, last_ids: &[u64]) -> usize {
        let tracks = self.board.tracks.borrow();
        tracks
            .iter()
            .filter(|t| counts_for_loss(t) && t.state == State::Streaming)
            .filter(|t| t.next_id <= last_ids.get(t.stream).copied().unwrap_or(0))
            .count()
    }

    /// Loss over the reading viewers that streamed: every id up to
    /// `last_ids[stream]` not seen is lost.
    pub fn loss(&self, last_ids: &[u64]) -> Loss {
        let tracks = self.board.tracks.borrow();
        let mut loss = Loss::default();
        for t in tracks.iter().filter(|t| counts_for_loss(t)) {
            let last = last_ids.get(t.stream).copied().unwrap_or(0);
            loss.viewers += 1;
            loss.lost += t.gaps + last.saturating_sub(t.next_id - 1);
            loss.duplicates += t.duplicates;
            loss.resets += t.resets;
            if t.state != State::Streaming {
                loss.dropped += 1;
            }
        }
        loss
    }

    /// Stops every viewer: marks the board as stopping (so that the
    /// errors of closing sockets are not reported) and aborts the tasks,
    /// which closes their sockets.
    pub fn shutdown(self) {
        self.board.stopping.set(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn counts_for_loss(t: &Track) -> bool {
    t.behaviour == Behaviour::Reader && t.streamed
}

/// One viewer task's inputs.
struct Viewer {
    index: usize,
    server: SocketAddr,
    source: Ipv4Addr,
    request: Vec<u8>,
    transport: Transport,
    behaviour: Behaviour,
    board: Rc<Board>,
    gate: Rc<Semaphore>,
}

/// Why a read loop ended.
enum Ended {
    Eof,
}

impl Viewer {
    async fn run(self) {
        let outcome = self.connect_and_read().await;
        let board = &self.board;
        let state = match outcome {
            Ok(Ended::Eof) => State::Closed,
            Err(err) => {
                if !board.stopping.get() {
                    let mut errors = board.errors.borrow_mut();
                    if errors.len() < KEPT_ERRORS {
                        errors.push(format!("{err:#}"));
                    }
                }
                State::Failed
            }
        };
        let mut tracks = board.tracks.borrow_mut();
        let track = &mut tracks[self.index];
        if !track.streamed {
            board.failed.set(board.failed.get() + 1);
        }
        track.state = state;
    }

    async fn connect_and_read(&self) -> Result<Ended> {
        let permit = self.gate.acquire().await.context("viewer gate closed")?;
        let started = Instant::now();
        let mut stream = self.connect().await?;
        stream
            .write_all(&self.request)
            .await
            .context("sending the request")?;

        let mut decoder = self.transport.decoder();
        let mut permit = Some(permit);
        loop {
            stream.readable().await.context("waiting to read")?;
            if self.read_ready(&stream, &mut decoder)? {
                return Ok(Ended::Eof);
            }
            if permit.is_some() && decoder.is_streaming() {
                permit = None;
                self.mark_streaming(started.elapsed());
                if self.behaviour == Behaviour::Slow {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(self.source.into(), 0))
            .with_context(|| format!("binding to {}", self.source))?;
        if self.behaviour == Behaviour::Slow {
            socket.set_recv_buffer_size(SLOW_RCVBUF)?;
            set_mss(&socket, SLOW_MSS)?;
        }
        let stream = socket.connect(self.server).await.context("connecting")?;
        Ok(stream)
    }

    /// Reads what is ready (a few reads at most) and decodes it; returns
    /// `true` at end of stream.
    fn read_ready(&self, stream: &TcpStream, decoder: &mut Decoder) -> Result<bool> {
        SCRATCH.with_borrow_mut(|buf| {
            for _ in 0..READS_PER_WAKE {
                let n = match stream.try_read(buf) {
                    Ok(0) => return Ok(true),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e).context("reading"),
                };
                self.decode(decoder, &buf[..n])?;
                if n < buf.len() {
                    return Ok(false);
                }
            }
            Ok(false)
        })
    }

    /// Decodes one read's bytes, recording each event on the board.
    fn decode(&self, decoder: &mut Decoder, bytes: &[u8]) -> Result<()> {
        let board = &self.board;
        let now = board.clock.now_nanos();
        let mut tracks = board.tracks.borrow_mut();
        let track = &mut tracks[self.index];
        let mut latency = board.latency.borrow_mut();
        let mut delivered = 0;
        decoder.feed(bytes, &mut |event: SseEvent| {
            if record(track, event) {
                delivered += 1;
                if let Some(sent) = event.sent_nanos {
                    latency.saturating_record(now.saturating_sub(sent));
                }
            }
        })?;
        board.delivered.set(board.delivered.get() + delivered);
        Ok(())
    }

    fn mark_streaming(&self, connect_time: Duration) {
        let board = &self.board;
        board.streaming.set(board.streaming.get() + 1);
        board
            .connect
            .borrow_mut()
            .saturating_record(duration_nanos(connect_time));
        let mut tracks = board.tracks.borrow_mut();
        tracks[self.index].streamed = true;
        tracks[self.index].state = State::Streaming;
    }
}

/// Sets `TCP_MAXSEG` before connecting, so the SYN announces `mss`.
fn set_mss(socket: &TcpSocket, mss: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is owned by `socket` and open for the call; the
    // option value is a c_int that outlives the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Updates a track with one event; returns whether it was a new comment.
fn record(track: &mut Track, event: SseEvent) -> bool {
    if event.reset {
        track.resets += 1;
    }
    let Some(id) = event.id else {
        return false;
    };
    if id < track.next_id {
        track.duplicates += 1;
        return false;
    }
    track.gaps += id - track.next_id;
    track.next_id = id + 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track() -> Track {
        Track {
            stream: 0,
            behaviour: Behaviour::Reader,
            state: State::Streaming,
            streamed: true,
            next_id: 1,
            gaps: 0,
            duplicates: 0,
            resets: 0,
        }
    }

    fn comment(id: u64) -> SseEvent {
        SseEvent {
            id: Some(id),
            sent_nanos: None,
            reset: false,
        }
    }

    #[test]
    fn gaps_and_duplicates_are_counted_exactly() {
        let mut t = track();
        for id in [1, 2, 5, 5, 3, 6] {
            record(&mut t, comment(id));
        }
        assert_eq!(t.gaps, 2);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.next_id, 7);
    }
}
