//! # livecomment-may: stackful coroutines (M:N)
//!
//! Each connection is a coroutine with a stack of its own, written as
//! plain blocking code, the way a goroutine would be: `read`, `write`,
//! `sleep`. may's reads and writes look blocking, but when the socket is
//! not ready they save the coroutine's registers, register the socket
//! with the worker's epoll, and switch to another ready coroutine.
//!
//! ```text
//!  coroutines (one stack each)      may workers (--workers N)   kernel
//!  ┌──────────────┐ ┌────────────┐
//!  │ accept_loop  │ │ conn  peer1│──┐   ┌──────────────┐
//!  └──────────────┘ └────────────┘  ├──▶│ worker 0     │──┐ epoll_wait
//!  ┌────────────┐ ┌──────────────┐  │   │ (run queue)  │  ├───────────▶ sockets
//!  │ conn peer2 │ │ viewer peer3 │──┤   ├──────────────┤  │
//!  └────────────┘ │  (wait_io)   │  ├──▶│ worker 1     │──┘
//!                 └──────────────┘──┘   └──────────────┘
//!     timer thread: io timeouts      alarm clock thread: viewers' deadlines
//! ```
//!
//! A ready coroutine runs on whichever worker picks it up (may steals
//! work between workers), so a coroutine may resume on another kernel
//! thread after any blocking call.
//!
//! ## Where a connection's state lives
//!
//! On its coroutine's stack: the [`Connection`], the socket and the
//! read buffer are locals of `serve_connection`. Besides the stack,
//! a connection owns one `Arc` (its waker) and, once it streams, a
//! place in the alarm clock's heap.
//!
//! ## Requests block; viewers wait for four things at once
//!
//! While a connection makes requests it is ordinary blocking code: the
//! wait step blocks in may's `read` with the request deadline as its
//! timeout, and a write to a full socket blocks in may's `write`.
//!
//! A viewer must instead wake for whichever comes first of four things:
//! events in its mailbox, bytes or a close from its client (WebSocket
//! frames, or the disconnect the contract says must free it within a
//! second), room in a socket it filled, and its deadline (the
//! keep-alive). A coroutine blocks in one call at a time, and the hub
//! cannot interrupt a may `read`. So once a connection streams, it stops
//! blocking in `read` and `write` and waits in may's `wait_io` instead,
//! which parks the coroutine until its socket reports any readiness
//! (epoll, edge-triggered) or its `WaitIoWaker` is called. That waker is
//! the connection's `std::task::Waker`: the hub calls it for new events
//! and the alarm clock (module `alarm`) at the deadline. Before each
//! wait the viewer looks at every source without blocking (mailbox, a
//! non-blocking read, the clock), so nothing that happened while it ran
//! is missed; a wake that comes while it runs is kept as a flag on the
//! socket and ends the next `wait_io` at once.
//!
//! This is readiness-style code, like the mio backend's, inside a
//! coroutine. The blocking-style alternative needs a second coroutine
//! per viewer blocked in `read` on a `dup` of the socket (Go's
//! `net/http` does that), which an earlier version of this glue did: it
//! cost two file descriptors per viewer (at most 9,950 viewers under
//! this machine's 20,000 cap) and about 8 KiB more memory each.
//!
//! ## How a comment's wake-up travels
//!
//! poster's coroutine → hub pushes the event to the viewer's mailbox →
//! the mailbox calls the waker → `IoWaker::wake` calls may's
//! `WaitIoWaker::wakeup` → may puts the viewer's coroutine on a run
//! queue → a worker resumes it inside `wait_io` → it drains the mailbox
//! and writes once.
//!
//! ## What can block what
//!
//! A coroutine that calls a *thread*-blocking function (std I/O, a
//! `std::sync::Mutex` held long, a long computation) holds its worker
//! and every coroutine queued on that worker waits. The core does no
//! I/O; its `parking_lot` locks are held for a few pointer moves; a
//! JWT check is microseconds (RS256: about 100). So nothing here blocks
//! a worker for long, but a burst of RS256 posts does delay the viewers
//! queued behind them on the same worker (the `cpu-hog` benchmark).
//!
//! A viewer whose client stops reading never blocks: its writes stop at
//! `WouldBlock`, its backlog stays in its mailbox, and the hub's
//! eviction wakes it like any event, so it closes at once.
//!
//! ## Why our `unsafe` spawns are sound
//!
//! may's `spawn` is `unsafe` because a coroutine breaks two assumptions
//! the compiler and std make about a thread. Every coroutine of this
//! crate is started by `spawn_coroutine`, and each one holds:
//!
//! 1. **No thread-local state across a blocking call.** After a may
//!    call (read, write, accept, wait_io, sleep) the coroutine may run
//!    on another thread, so a thread-local read before it and used after
//!    it would belong to the wrong thread. Our glue touches no
//!    thread-locals. The core uses none either. `tracing` keeps its
//!    current span per thread, so a span is entered only around
//!    non-blocking code (`Span::in_scope` around the core's calls), never
//!    held across a may call; the subscriber's own thread-locals are used
//!    within one call into it. `Instant::now()` reads the clock (vDSO),
//!    not a thread-local. `parking_lot`'s per-thread parking data is
//!    used only inside one lock call, which never yields to may.
//! 2. **No std blocking calls inside coroutines.** Sockets are may's,
//!    and the non-blocking reads and writes on them return `WouldBlock`
//!    rather than wait; waits are may's (`wait_io`, `sleep`, io
//!    timeouts). The alarm clock's lock is held for one heap push. The
//!    core does no I/O and its locks are held for microseconds.
//! 3. **The stack is large enough.** may stacks do not grow; running
//!    past the end hits a guard page (SIGSEGV) or, at the coroutine's
//!    end, may reports "stack overflow detected" and exits. The default
//!    size, [`DEFAULT_STACK_SIZE`], is more than twice the deepest use
//!    measured under the conformance suite (the README has the numbers);
//!    an odd `--stack-size` turns on may's measuring mode, which prints
//!    each coroutine's stack use when it ends.
//!
//! ## may pitfalls this glue works around
//!
//! - `may::config().set_stack_size` counts machine words, not bytes;
//!   `--stack-size` is in bytes and is converted.
//! - may pins its workers to cores by default, which would override
//!   `taskset` in benchmarks: pinning is turned off.
//! - may's timers keep one queue per distinct duration and can fire up
//!   to a millisecond early; timeouts are rounded (see `time_left`).
//! - `park_timeout` adds and removes a timer entry per park, and in may
//!   0.3.51 an early wake can free that entry while the timer thread
//!   still uses it (a crash under load): viewers, which wait and wake
//!   all the time, wait with no may timer and use our own alarm clock
//!   (module `alarm`).
//! - A `WaitIoWaker` wake-up resumes whatever may call the coroutine is
//!   blocked in on that socket, not only `wait_io`. So the waker is
//!   handed out (to the hub, to the clock) only once the connection
//!   streams, and from then on it never blocks in may's `read` or
//!   `write` again.
//! - may logs every socket it registers at `info` (see
//!   `quiet_may_logs`).
//! - There is no `TcpListener::from_std`: the listener is rebuilt from
//!   its raw file descriptor.
//!
//! ## Limitations
//!
//! - A refused connection (past `--max-connections`) still gets a
//!   coroutine for the few microseconds it takes to write its 503.
//! - An idle viewer costs about 16 KiB against tokio's 2 KiB (README),
//!   nearly all of it stack pages: those its request touched and the
//!   page may marks at the bottom of each stack. Stackful coroutines pay
//!   for the deepest call a connection ever made, for as long as it
//!   lives.
//!
//! The glue follows the steps of `livecomment_core::conn`:
//! `run` → `accept_loop` → `serve_connection` (`write_step`, then
//! `wait_step` and `read_step` for requests, `wait_step_streaming` and
//! `read_ready` for viewers).

mod alarm;

use alarm::{Alarm, Clock};
use livecomment_core::{Connection, Runtime, RuntimeOptions, Service};
use may::coroutine;
use may::io::{WaitIo, WaitIoWaker};
use may::net::{TcpListener, TcpStream};
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};
use tracing::Span;

/// Stack of a connection coroutine, in bytes, unless `--stack-size`
/// says otherwise. Measured under the conformance suite (every request
/// kind, every JWT algorithm), the deepest use was 20,176 bytes in a
/// release build and 97,640 in a debug build; these leave a margin of
/// over 2.4x. Only touched pages become resident, so the unused part
/// costs address space, not memory.
pub const DEFAULT_STACK_SIZE: usize = if cfg!(debug_assertions) {
    256 * 1024
} else {
    48 * 1024
};

/// Read buffer size; it lives on the coroutine's stack during a read.
const READ_BUF: usize = 4096;

/// The may backend.
pub struct May;

impl Runtime for May {
    const NAME: &'static str = "may";

    fn run(
        service: Arc<Service>,
        listener: std::net::TcpListener,
        options: &RuntimeOptions,
    ) -> io::Result<()> {
        // The scheduler starts on first use, so configure it first.
        let stack = options.stack_size.unwrap_or(DEFAULT_STACK_SIZE);
        may::config()
            .set_workers(options.workers.max(1))
            .set_stack_size(stack_words(stack));
        may::config().set_worker_pin(false);
        quiet_may_logs();

        // SAFETY: `into_raw_fd` hands over sole ownership of a valid,
        // listening socket; nothing else will use or close that fd.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let clock = Clock::start()?;
        let accept = spawn_coroutine("accept", None, move || {
            accept_loop(service, listener, clock)
        })?;
        accept
            .join()
            .map_err(|_| io::Error::other("the accept loop panicked"))
    }
}

/// may logs every socket it adds to or removes from epoll at `info`,
/// through the `log` crate: two lines per connection at the binary's
/// default level. Unless logging was turned up past `info`, cap `log`
/// (which only may and its generator use in this process) at `warn`.
fn quiet_may_logs() {
    if log::max_level() == log::LevelFilter::Info {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// may counts stack sizes in machine words. An odd byte count stays
/// odd, which makes may paint the stack and print its use at the end.
fn stack_words(bytes: usize) -> usize {
    let words = bytes / size_of::<usize>();
    if bytes % 2 == 1 { words | 1 } else { words }
}

/// Starts a coroutine; the one place this crate calls may's `spawn`.
fn spawn_coroutine<F>(
    name: &str,
    stack_bytes: Option<usize>,
    f: F,
) -> io::Result<coroutine::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let mut builder = coroutine::Builder::new().name(name.to_owned());
    if let Some(bytes) = stack_bytes {
        builder = builder.stack_size(stack_words(bytes));
    }
    // may panics (rather than erring) when it cannot map a new stack,
    // e.g. at `vm.max_map_count`; the accept loop must survive that.
    let spawned = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: every closure given here is one of this crate's
        // coroutines, which hold no thread-local state across blocking
        // calls, make no std blocking calls, and fit their stacks with a
        // measured margin; the crate doc ("Why our `unsafe` spawns are
        // sound") gives the argument in full.
        unsafe { builder.spawn(f) }
    }));
    spawned.unwrap_or_else(|_| Err(io::Error::other("cannot allocate a coroutine stack")))
}

/// Accepts connections forever, one coroutine each.
fn accept_loop(service: Arc<Service>, listener: TcpListener, clock: Arc<Clock>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let (service, clock) = (service.clone(), clock.clone());
                let serve = move || serve_connection(service, stream, peer, clock);
                if let Err(err) = spawn_coroutine("conn", None, serve) {
                    // Out of memory for stacks: the socket is dropped.
                    tracing::warn!(%peer, cause = %err, "cannot start a coroutine");
                }
            }
            Err(err) => {
                // Out of file descriptors, most likely: back off instead
                // of spinning; connections will close and free some.
                tracing::warn!(cause = %err, "accept failed");
                coroutine::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Drives one connection until it is done or the socket fails.
fn serve_connection(
    service: Arc<Service>,
    mut stream: TcpStream,
    peer: SocketAddr,
    clock: Arc<Clock>,
) {
    let span = tracing::debug_span!("conn", runtime = "may", %peer);
    let _ = stream.set_nodelay(true);
    let waker = Waker::from(Arc::new(IoWaker(stream.waker())));
    let mut conn = Connection::new(service, Instant::now());
    // Set once the connection streams events; from then on it never
    // blocks in a read or a write, only in `wait_io`.
    let mut streaming: Option<Streaming> = None;

    loop {
        if streaming.is_none() && conn.is_viewer() {
            streaming = Some(Streaming {
                alarm: Alarm::new(clock.clone()),
                readable: true,
            });
        }
        if let Err(err) = write_step(&mut stream, &mut conn, streaming.is_some()) {
            tracing::debug!(%peer, cause = %err, "write failed");
            break;
        }
        if conn.is_done() {
            break;
        }
        let waited = match streaming.as_mut() {
            Some(streaming) => wait_step_streaming(&stream, &mut conn, &waker, streaming, &span),
            None => wait_step(&mut stream, &mut conn, &span),
        };
        if let Err(err) = waited {
            tracing::debug!(%peer, cause = %err, "connection failed");
            break;
        }
    }
}

/// Writes the output: straight to the socket while it has room (no
/// timer, no extra syscall). When it is full, a request blocks this
/// coroutine (not its worker) in may's `write` until the deadline; a
/// streaming connection returns and waits for room in its wait step,
/// along with everything else it waits for.
fn write_step(stream: &mut TcpStream, conn: &mut Connection, streaming: bool) -> io::Result<()> {
    while !conn.output().is_empty() {
        let written = match stream.inner().write(conn.output()) {
            Err(err) if err.kind() == ErrorKind::WouldBlock && streaming => return Ok(()),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                stream.set_write_timeout(Some(time_left(conn.deadline())))?;
                stream.write(conn.output())
            }
            done => done,
        };
        match written {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => conn.consume(n),
            Err(err) if is_timeout(&err) => {
                conn.on_deadline(Instant::now());
                if conn.is_done() {
                    return Ok(());
                }
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// A request: waits for bytes from the client or the deadline and feeds
/// whichever came first to the connection.
fn wait_step(stream: &mut TcpStream, conn: &mut Connection, span: &Span) -> io::Result<()> {
    if conn.wants_read() {
        return read_step(stream, conn, span);
    }
    // Nothing to read or write (should not last): sleep to the deadline.
    coroutine::sleep(time_left(conn.deadline()));
    conn.on_deadline(Instant::now());
    Ok(())
}

/// Reads what the socket has into the connection, blocking this
/// coroutine in may's `read` at most until the deadline.
fn read_step(stream: &mut TcpStream, conn: &mut Connection, span: &Span) -> io::Result<()> {
    let mut buf = [0u8; READ_BUF];
    stream.set_read_timeout(Some(time_left(conn.deadline())))?;
    match stream.read(&mut buf) {
        Ok(0) => conn.closed_by_peer(),
        Ok(n) => span.in_scope(|| conn.received(&buf[..n], Instant::now())),
        Err(err) if is_timeout(&err) => conn.on_deadline(Instant::now()),
        Err(err) => return Err(err),
    }
    Ok(())
}

/// A streaming connection (an SSE or WebSocket viewer) waits for four
/// things at once: events in its mailbox, bytes or a close from its
/// client, room in a full socket, and its deadline. One call waits for
/// all of them: may's `wait_io` parks the coroutine until the socket
/// reports any readiness or the connection's `WaitIoWaker` is called,
/// and that waker is the one the hub calls for new events and the
/// alarm clock calls at the deadline.
///
/// Every source is looked at before the wait, so nothing that happened
/// since the last wait is missed: a wake-up that comes while the
/// coroutine runs is kept as a flag and ends the next `wait_io` at once.
fn wait_step_streaming(
    stream: &TcpStream,
    conn: &mut Connection,
    waker: &Waker,
    streaming: &mut Streaming,
    span: &Span,
) -> io::Result<()> {
    if conn.poll_events(waker) {
        return Ok(());
    }
    if streaming.readable && conn.wants_read() {
        if read_ready(stream, conn, span)? {
            return Ok(());
        }
        streaming.readable = false;
    }
    let now = Instant::now();
    match conn.deadline() {
        Some(at) if at <= now => {
            conn.on_deadline(now);
            return Ok(());
        }
        Some(at) => streaming.alarm.arm(at, waker),
        None => {}
    }
    let events = stream.wait_io();
    streaming.readable |= events & READ_EVENTS != 0;
    Ok(())
}

/// What a streaming connection keeps between waits.
struct Streaming {
    /// Wakes the connection at its deadline.
    alarm: Alarm,
    /// Whether the socket may have bytes (or a close) to read: set by a
    /// readiness event, cleared when a read finds nothing. Without it,
    /// every wake that only brought events would cost a `read` syscall.
    readable: bool,
}

/// The epoll events (which `wait_io` returns) that mean a read would
/// not find the socket empty: data, the peer's close, an error.
const READ_EVENTS: usize =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as usize;

/// Reads without waiting; `true` when bytes or the client's close were
/// fed to the connection, `false` when the socket had nothing.
fn read_ready(stream: &TcpStream, conn: &mut Connection, span: &Span) -> io::Result<bool> {
    let mut buf = [0u8; READ_BUF];
    match stream.inner().read(&mut buf) {
        Ok(0) => conn.closed_by_peer(),
        Ok(n) => span.in_scope(|| conn.received(&buf[..n], Instant::now())),
        Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
        Err(err) if err.kind() == ErrorKind::Interrupted => {}
        Err(err) => return Err(err),
    }
    Ok(true)
}

/// Time until `deadline` for a may timer: whole milliseconds, rounded
/// up, plus one.
///
/// may's timers keep one queue per distinct duration, in nanoseconds,
/// and fire up to a millisecond early; in our tests a park of under a
/// millisecond was sometimes not woken by its timer at all. Whole
/// milliseconds let connections share queues and the extra one puts
/// the wake-up after the deadline.
fn time_left(deadline: Option<Instant>) -> Duration {
    let left = deadline.map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    });
    let millis = left.as_millis().min(3_600_000) as u64;
    Duration::from_millis(millis + 1)
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

/// The hub's (and the alarm clock's) `Waker` for a connection: ends its
/// coroutine's `wait_io`. A wake while the coroutine is not waiting sets
/// a flag on the socket, so the next `wait_io` returns at once and no
/// wake is lost.
struct IoWaker(WaitIoWaker);

impl Wake for IoWaker {
    fn wake(self: Arc<Self>) {
        self.0.wakeup();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wakeup();
    }
}
