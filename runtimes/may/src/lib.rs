//! # livecomment-may: stackful coroutines (M:N)
//!
//! Each connection is a coroutine with a stack of its own, written as
//! plain blocking code, the way a goroutine would be: `read`, `write`,
//! `park`. may's reads and writes look blocking, but when the socket is
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
//!  └────────────┘ │  + watcher   │  ├──▶│ worker 1     │──┘
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
//! read buffer are locals of `serve_connection`. A viewer also has a
//! second, tiny coroutine, its *watcher*, and shares with it only an
//! `Arc<Watch>` (a flag and the connection coroutine's handle).
//!
//! ## How a viewer waits for three things at once
//!
//! A viewer must wake for whichever comes first: events in its mailbox,
//! the client closing the socket, or its deadline (the keep-alive). A
//! coroutine blocks in one call at a time, so:
//!
//! - the connection coroutine blocks in `park()`; the hub's `Waker` for
//!   it is `Unparker`, which unparks it, and the alarm clock (module
//!   `alarm`) unparks it at its deadline;
//! - its watcher blocks in `read` on a clone of the socket; at end of
//!   file (or any error) it sets a flag and unparks the connection.
//!
//! The alternative, a read with a timeout in the connection coroutine,
//! would either wake every idle viewer periodically to look at its
//! mailbox, or leave the hub unable to wake a viewer blocked in `read`.
//! Go's `net/http` solves the same problem the same way (a background
//! read per connection). The watcher costs one more coroutine per
//! viewer, with a small stack of its own (see the README for the
//! measured memory per idle viewer).
//!
//! ## How a comment's wake-up travels
//!
//! poster's coroutine → hub pushes the event to the viewer's mailbox →
//! the mailbox calls the waker → `Unparker::wake` unparks the viewer's
//! coroutine → may puts it on a run queue → a worker resumes it inside
//! `park` → it drains the mailbox and writes once.
//!
//! ## What can block what
//!
//! A coroutine that calls a *thread*-blocking function (std I/O, a
//! `std::sync::Mutex` held long, a long computation) holds its worker
//! and every coroutine queued on that worker waits. The core does no
//! I/O; its `parking_lot` locks are held for a few pointer moves; a
//! JWT check is microseconds. So nothing here blocks a worker for long.
//!
//! A viewer whose client stops reading blocks in `write`. While it is
//! stuck there the hub cannot interrupt it, so the write is bounded by
//! [`STALL_CHECK`]: a stalled viewer looks at its mailbox once a second,
//! notices its eviction, and closes. Idle viewers (nothing to write) are
//! never woken this way.
//!
//! ## Why our `unsafe` spawns are sound
//!
//! may's `spawn` is `unsafe` because a coroutine breaks two assumptions
//! the compiler and std make about a thread. Every coroutine of this
//! crate is started by `spawn_coroutine`, and each one holds:
//!
//! 1. **No thread-local state across a blocking call.** After a may
//!    call (read, write, accept, park, sleep) the coroutine may run on
//!    another thread, so a thread-local read before it and used after
//!    it would belong to the wrong thread. Our glue touches no
//!    thread-locals. The core uses none either. `tracing` keeps its
//!    current span per thread, so a span is entered only around
//!    non-blocking code (`Span::in_scope` around the core's calls), never
//!    held across a may call; the subscriber's own thread-locals are used
//!    within one call into it. `Instant::now()` reads the clock (vDSO),
//!    not a thread-local. `parking_lot`'s per-thread parking data is
//!    used only inside one lock call, which never yields to may.
//! 2. **No std blocking calls inside coroutines.** Sockets are may's,
//!    waits are may's (`park`, `park_timeout`, `sleep`). The core does no I/O and
//!    its locks are held for microseconds.
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
//!   still uses it (a crash under load): viewers, which park and wake
//!   all the time, use a park with no timeout and our own alarm clock
//!   instead (module `alarm`).
//! - `TcpStream::set_read_timeout` also sets `SO_RCVTIMEO` on the
//!   socket, refuses a zero duration, and `try_clone` copies it: the
//!   watcher clears it on its copy.
//! - may logs every socket it registers at `info` (see
//!   `quiet_may_logs`).
//! - There is no `TcpListener::from_std`: the listener is rebuilt from
//!   its raw file descriptor.
//!
//! ## Limitations
//!
//! - A refused connection (past `--max-connections`) still gets a
//!   coroutine for the few microseconds it takes to write its 503.
//! - A viewer costs two file descriptors (the watcher reads a `dup` of
//!   the socket, because a may socket serves one blocked coroutine), so
//!   one process holds at most half as many viewers as its open-files
//!   limit allows: `connection_limit` lowers `--max-connections` to
//!   that (9,950 under this machine's cap of 20,000), and connections
//!   past it get the core's 503.
//! - An idle viewer costs about 24 KiB against tokio's 2 KiB (README),
//!   mostly stack pages: those its request touched, the page may marks
//!   at the bottom of each stack, and the watcher's two pages. One
//!   coroutine per viewer would be possible with may's `WaitIo` (wait
//!   for socket readiness or an explicit wake-up) plus a shared timer
//!   for keep-alives, at the price of readiness-style code.
//!
//! The glue follows the steps of `livecomment_core::conn`:
//! `run` → `accept_loop` → `serve_connection` (`write_step`,
//! `wait_step`, `read_step`).

mod alarm;

use alarm::{Alarm, Clock};
use livecomment_core::{Connection, ConnectionLimit, Runtime, RuntimeOptions, Service};
use may::coroutine::{self, Coroutine};
use may::net::{TcpListener, TcpStream};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// Stack of a viewer's watcher, in bytes: it only reads into a small
/// buffer. Measured: 1,296 bytes, 4,816 with `RUST_LOG=trace` (may's
/// own log lines are formatted on it).
const WATCHER_STACK_SIZE: usize = 16 * 1024;

/// How long a viewer blocked in `write` waits before looking at its
/// mailbox again (to notice its eviction).
pub const STALL_CHECK: Duration = Duration::from_secs(1);

/// Read buffer size; it lives on the coroutine's stack during a read.
const READ_BUF: usize = 4096;

/// File descriptors of a viewer: its socket and the watcher's `dup`.
const FDS_PER_VIEWER: usize = 2;

/// File descriptors kept for the process's own use (listener, epoll
/// instances, log files, the refused connections' brief sockets).
const FD_RESERVE: usize = 100;

/// The watcher's read buffer, on its stack.
const WATCHER_BUF: usize = 2048;

/// Bytes a watcher may hold for its viewer before it stops reading.
const INBOX_LIMIT: usize = 64 * 1024;

/// The may backend.
pub struct May;

impl Runtime for May {
    const NAME: &'static str = "may";

    /// A viewer holds two file descriptors (its socket and the watcher's
    /// `dup`), so past half the open-files limit a viewer could be
    /// accepted and then fail to start its watcher.
    fn connection_limit(_options: &RuntimeOptions) -> Option<ConnectionLimit> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let open_files: usize = limits
            .lines()
            .find_map(|line| line.strip_prefix("Max open files"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let max = open_files.saturating_sub(FD_RESERVE) / FDS_PER_VIEWER;
        let reason = format!(
            "a may viewer holds {FDS_PER_VIEWER} file descriptors and the open-files \
             limit is {open_files} ({FD_RESERVE} kept for the process itself)"
        );
        Some(ConnectionLimit { max, reason })
    }

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
    let waker = Waker::from(Arc::new(Unparker(coroutine::current())));
    let mut conn = Connection::new(service, Instant::now());
    let mut watch: Option<Watcher> = None;

    loop {
        if let Err(err) = write_step(&mut stream, &mut conn, &waker) {
            tracing::debug!(%peer, cause = %err, "write failed");
            break;
        }
        if conn.is_done() {
            break;
        }
        if conn.is_viewer() && watch.is_none() {
            match start_watcher(&stream, &clock) {
                Ok(started) => watch = Some(started),
                Err(err) => {
                    tracing::warn!(%peer, cause = %err, "cannot watch a viewer");
                    break;
                }
            }
        }
        if let Err(err) = wait_step(&mut stream, &mut conn, &waker, watch.as_mut(), &span) {
            tracing::debug!(%peer, cause = %err, "connection failed");
            break;
        }
    }

    // Wakes the watcher (its read ends) and sends the FIN now: the
    // watcher's copy of the socket would otherwise keep it open.
    let _ = stream.shutdown(Shutdown::Both);
}

/// Writes the whole output, blocking this coroutine (not its worker)
/// while the socket is full, but never past the deadline; a viewer
/// looks at its mailbox every [`STALL_CHECK`] while stuck.
fn write_step(stream: &mut TcpStream, conn: &mut Connection, waker: &Waker) -> io::Result<()> {
    while !conn.output().is_empty() {
        match write_some(stream, conn) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => conn.consume(n),
            Err(err) if is_timeout(&err) => {
                conn.on_deadline(Instant::now());
                // A stalled viewer: has it been evicted meanwhile?
                conn.poll_events(waker);
                if conn.is_done() {
                    return Ok(());
                }
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// One write: straight to the socket when it has room (no timer, no
/// extra syscall), else a blocking may write bounded by the deadline.
fn write_some(stream: &mut TcpStream, conn: &Connection) -> io::Result<usize> {
    match stream.inner().write(conn.output()) {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {
            let limit = conn.is_viewer().then_some(STALL_CHECK);
            stream.set_write_timeout(Some(time_left(conn.deadline(), limit)))?;
            stream.write(conn.output())
        }
        done => done,
    }
}

/// Waits for whichever comes first (the socket, the viewer's mailbox,
/// the deadline) and feeds it to the connection.
fn wait_step(
    stream: &mut TcpStream,
    conn: &mut Connection,
    waker: &Waker,
    watch: Option<&mut Watcher>,
    span: &Span,
) -> io::Result<()> {
    // A viewer: its mailbox and its watcher wake it; its watcher reads.
    if let Some(watch) = watch {
        watch.deliver(conn, span);
        let events = conn.poll_events(waker);
        if events || !conn.output().is_empty() || conn.is_done() {
            return Ok(());
        }
        if watch.shared.peer_gone.load(Ordering::Acquire) {
            // Whatever came with the close goes in first.
            watch.deliver(conn, span);
            conn.closed_by_peer();
            return Ok(());
        }
        match conn.deadline() {
            Some(at) if at > Instant::now() => {
                watch.alarm.arm(at, &watch.shared.viewer);
                coroutine::park();
            }
            Some(_) => {}
            None => coroutine::park(),
        }
        conn.on_deadline(Instant::now());
        return Ok(());
    }

    // A request: block in `read` until bytes arrive or the deadline.
    if conn.wants_read() {
        return read_step(stream, conn, span);
    }
    // Nothing to read or write (should not last): sleep to the deadline.
    coroutine::sleep(time_left(conn.deadline(), None));
    conn.on_deadline(Instant::now());
    Ok(())
}

/// Reads what the socket has into the connection, waiting for it at
/// most until the deadline.
fn read_step(stream: &mut TcpStream, conn: &mut Connection, span: &Span) -> io::Result<()> {
    let mut buf = [0u8; READ_BUF];
    stream.set_read_timeout(Some(time_left(conn.deadline(), None)))?;
    match stream.read(&mut buf) {
        Ok(0) => conn.closed_by_peer(),
        Ok(n) => span.in_scope(|| conn.received(&buf[..n], Instant::now())),
        Err(err) if is_timeout(&err) => conn.on_deadline(Instant::now()),
        Err(err) => return Err(err),
    }
    Ok(())
}

/// Time until `deadline` (capped at `limit`) for a may timer: whole
/// milliseconds, rounded up, plus one.
///
/// may's timers keep one queue per distinct duration, in nanoseconds,
/// and fire up to a millisecond early; in our tests a park of under a
/// millisecond was sometimes not woken by its timer at all. Whole
/// milliseconds let viewers share queues (every keep-alive is the same
/// 15 s) and the extra one puts the wake-up after the deadline.
fn time_left(deadline: Option<Instant>, limit: Option<Duration>) -> Duration {
    let left = deadline.map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    });
    let left = left.min(limit.unwrap_or(Duration::MAX));
    let millis = left.as_millis().min(3_600_000) as u64;
    Duration::from_millis(millis + 1)
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

/// The hub's `Waker` for a connection coroutine: unparks it. may's
/// unpark keeps a token, so a wake that comes before the park is not
/// lost: the next `park_timeout` returns at once.
struct Unparker(Coroutine);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// What a viewer shares with its watcher.
struct Watch {
    /// Bytes the watcher read and the connection has not taken yet: a
    /// WebSocket client's frames (an SSE connection ignores them). The
    /// lock is held for a copy, never across a may call.
    inbox: Mutex<Vec<u8>>,
    /// Set by the watcher when the client closed its side (or the
    /// socket failed); read by the connection before it parks.
    peer_gone: AtomicBool,
    /// The connection coroutine, to unpark after new bytes or the close.
    viewer: Coroutine,
}

/// The connection's handle on its watcher.
struct Watcher {
    shared: Arc<Watch>,
    /// The watcher coroutine, unparked when its full inbox was emptied.
    coroutine: Coroutine,
    /// Unparks the connection coroutine at its deadline (see `alarm`).
    alarm: Alarm,
}

impl Watcher {
    /// Gives what the watcher read to the connection.
    fn deliver(&self, conn: &mut Connection, span: &Span) {
        let bytes = std::mem::take(&mut *lock(&self.shared.inbox));
        if bytes.is_empty() {
            return;
        }
        span.in_scope(|| conn.received(&bytes, Instant::now()));
        if bytes.len() >= INBOX_LIMIT {
            self.coroutine.unpark();
        }
    }
}

/// Starts the watcher of a viewer: a coroutine blocked in `read` on a
/// copy of the socket, which hands what the client sends to the viewer
/// and tells it when the client leaves. It ends then, or when the viewer
/// shuts the socket down.
fn start_watcher(stream: &TcpStream, clock: &Arc<Clock>) -> io::Result<Watcher> {
    let mut socket = stream.try_clone()?;
    socket.set_read_timeout(None)?;
    let shared = Arc::new(Watch {
        inbox: Mutex::new(Vec::new()),
        peer_gone: AtomicBool::new(false),
        viewer: coroutine::current(),
    });
    let theirs = shared.clone();
    let handle = spawn_coroutine("watcher", Some(WATCHER_STACK_SIZE), move || {
        let mut buf = [0u8; WATCHER_BUF];
        while let Ok(n @ 1..) = socket.read(&mut buf) {
            let backlog = {
                let mut inbox = lock(&theirs.inbox);
                inbox.extend_from_slice(&buf[..n]);
                inbox.len()
            };
            theirs.viewer.unpark();
            // A client that sends faster than its viewer takes it in
            // waits here, in the kernel's buffers.
            if backlog >= INBOX_LIMIT {
                coroutine::park_timeout(STALL_CHECK);
            }
        }
        theirs.peer_gone.store(true, Ordering::Release);
        theirs.viewer.unpark();
    })?;
    Ok(Watcher {
        shared,
        coroutine: handle.coroutine().clone(),
        alarm: Alarm::new(clock.clone()),
    })
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (the watcher only appends bytes).
fn lock(inbox: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    inbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
