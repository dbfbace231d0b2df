//! # livecomment-threads: a kernel thread per connection (1:1)
//!
//! The oldest model, kept as the baseline: every connection gets a
//! kernel thread of its own, running plain blocking `std::net` code.
//! There is no user-space scheduler at all; the kernel decides which
//! thread runs, on every CPU the process may use.
//!
//! ```text
//!  accept threads (--workers N)          connection threads, 1:1
//!  ┌──────────────┐  spawn   ┌───────────────┐ ┌───────────────┐
//!  │ accept_loop  │─────────▶│ conn  peer1   │ │ conn  peer2   │ ...
//!  │ (blocking    │          └───────────────┘ └───────────────┘
//!  │  accept)     │          ┌───────────────┐┌──────────┐
//!  └──────────────┘          │ viewer peer3  ││ watcher  │ (viewers only)
//!                            └───────────────┘└──────────┘
//!            every thread is scheduled by the kernel, on any CPU
//! ```
//!
//! `--workers N` sets the number of accept threads (they block in
//! `accept` on the same listening socket; the kernel hands each new
//! connection to one of them). It does not bound the threads that run
//! connections: that is `--max-connections`.
//!
//! ## Where a connection's state lives
//!
//! On its thread's stack: the [`Connection`], the socket and the read
//! buffer are locals of `serve_connection`. A viewer shares its socket
//! (an `Arc<TcpStream>`) and an `Arc<Watch>` with its watcher thread.
//!
//! ## How a viewer waits for three things at once
//!
//! A viewer must wake for whichever comes first: events in its mailbox,
//! the client closing the socket, or its deadline (the keep-alive). A
//! thread blocks in one call at a time, so:
//!
//! - the connection thread blocks in `thread::park_timeout(deadline)`;
//!   the hub's `Waker` for it is `Unparker`, which unparks it;
//! - its watcher thread blocks in `read` on the same socket; at end of
//!   file (or any error) it sets a flag and unparks the connection.
//!
//! A read with a timeout would instead wake every idle viewer
//! periodically to look at its mailbox, and a viewer blocked in `read`
//! cannot be woken by the hub. (Go's `net/http` does the same: a
//! background read per connection.) The price is a second thread per
//! viewer; the README has the measured memory per idle viewer.
//!
//! ## How a comment's wake-up travels
//!
//! poster's thread → hub pushes the event to the viewer's mailbox → the
//! mailbox calls the waker → `Unparker::wake` → `Thread::unpark` (a
//! futex wake) → the kernel runs the viewer's thread, which returns
//! from `park_timeout`, drains its mailbox and writes once.
//!
//! ## What can block what, and the costs
//!
//! Nothing blocks anyone else: a thread stuck in a slow syscall or a
//! long computation holds only itself, and the kernel preempts it. The
//! costs are elsewhere:
//!
//! - **Memory.** Each thread has a stack (mapped at its full size,
//!   resident only where touched: see [`DEFAULT_STACK_SIZE`]), a kernel
//!   stack (16 KiB on x86-64, not in the process's RSS) and kernel
//!   task structures. A viewer has two threads.
//! - **Context switches.** Every wake-up is a kernel context switch
//!   (futex wake, schedule, switch of address-space-sized state), a few
//!   microseconds each, and fan-out to N viewers is N of them. Under
//!   load, thousands of runnable threads also make the scheduler's
//!   queues and caches work harder than a few workers would.
//! - **Limits.** Thread count is bounded by `--max-connections` (past
//!   it the core answers 503, written by the accept thread: a refused
//!   connection never gets a thread) plus one watcher per viewer. The
//!   machine bounds it too, and one of its limits is fatal: every
//!   thread takes four memory mappings, and when `vm.max_map_count`
//!   runs out std aborts the process from inside the new thread. So
//!   [`Threads::connection_limit`] computes at start-up how many
//!   connections the machine can hold (the [`budget`] module: mappings
//!   left under `vm.max_map_count`, tasks left under `pid_max`,
//!   `threads-max` and `RLIMIT_NPROC`, less reserves, two threads per
//!   connection), and the binary lowers `--max-connections` to it with
//!   a warning. With the defaults (65,530 mappings) that is about 7,500
//!   connections. A spawn that fails anyway (a cgroup's `pids.max`,
//!   which is not read, or another process taking the last pids) drops
//!   that connection and the accept loop backs off for 20 ms.
//!
//! A viewer whose client stops reading blocks in `write`; the hub
//! cannot interrupt it, so that write is bounded by [`STALL_CHECK`]: a
//! stalled viewer looks at its mailbox once a second, notices its
//! eviction, and closes. Idle viewers are never woken this way.
//!
//! The glue follows the steps of `livecomment_core::conn`:
//! `run` → `accept_loop` → `serve_connection` (`write_step`,
//! `wait_step`, `read_step`). The [`budget`] module holds the start-up
//! arithmetic of the limits above.

pub mod budget;

use livecomment_core::{Connection, ConnectionLimit, Runtime, RuntimeOptions, Service};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Stack of a connection thread, in bytes, unless `--stack-size` says
/// otherwise. Measured under the conformance suite (every request kind,
/// every JWT algorithm), the deepest use was 18,559 bytes in a release
/// build and 95,183 in a debug build; glibc also carves the thread's
/// static TLS out of this size. Only touched pages become resident.
pub const DEFAULT_STACK_SIZE: usize = if cfg!(debug_assertions) {
    256 * 1024
} else {
    64 * 1024
};

/// Stack of a viewer's watcher thread: it only reads into a small
/// buffer (measured: under 1 KiB). 16 KiB is glibc's minimum.
const WATCHER_STACK_SIZE: usize = 16 * 1024;

/// How long a viewer blocked in `write` waits before looking at its
/// mailbox again (to notice its eviction).
pub const STALL_CHECK: Duration = Duration::from_secs(1);

/// Read buffer size; it lives on the thread's stack during a read.
const READ_BUF: usize = 4096;

/// The watcher's read buffer, on its stack.
const WATCHER_BUF: usize = 2048;

/// Bytes a watcher may hold for its viewer before it stops reading.
const INBOX_LIMIT: usize = 64 * 1024;

/// The threads backend.
pub struct Threads;

impl Runtime for Threads {
    const NAME: &'static str = "threads";

    /// What this machine's memory mappings and tasks allow, two threads
    /// a connection, besides the accept threads: see [`budget`].
    fn connection_limit(options: &RuntimeOptions) -> Option<ConnectionLimit> {
        budget::connection_limit(&budget::Machine::read(), options.workers.max(1))
    }

    fn run(
        service: Arc<Service>,
        listener: TcpListener,
        options: &RuntimeOptions,
    ) -> io::Result<()> {
        listener.set_nonblocking(false)?;
        let stack = options.stack_size.unwrap_or(DEFAULT_STACK_SIZE);
        for n in 1..options.workers.max(1) {
            let (service, listener) = (service.clone(), listener.try_clone()?);
            thread::Builder::new()
                .name(format!("accept-{n}"))
                .spawn(move || accept_loop(service, listener, stack))?;
        }
        accept_loop(service, listener, stack);
        Ok(())
    }
}

/// Accepts connections forever, one thread each.
fn accept_loop(service: Arc<Service>, listener: TcpListener, stack: usize) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, most likely: back off instead
                // of spinning; connections will close and free some.
                tracing::warn!(cause = %err, "accept failed");
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };

        // Past --max-connections the connection already holds its 503:
        // write it here rather than spend a thread on it.
        let conn = Connection::new(service.clone(), Instant::now());
        if !conn.output().is_empty() {
            refuse(stream, conn);
            continue;
        }

        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(stack)
            .spawn(move || serve_connection(stream, conn, peer));
        if let Err(err) = spawned {
            // Out of threads or memory: the connection is dropped.
            tracing::warn!(%peer, cause = %err, "cannot start a thread");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes a refused connection's answer without waiting, then closes.
fn refuse(stream: TcpStream, conn: Connection) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&stream).write(conn.output());
    }
}

/// Drives one connection until it is done or the socket fails.
fn serve_connection(stream: TcpStream, mut conn: Connection, peer: SocketAddr) {
    // A thread never migrates between tasks, so the span can stay
    // entered for the whole connection.
    let span = tracing::debug_span!("conn", runtime = "threads", %peer);
    let _entered = span.enter();
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut timeouts = Timeouts::default();
    let mut watch: Option<Watcher> = None;

    loop {
        if let Err(err) = write_step(&stream, &mut conn, &waker, &mut timeouts) {
            tracing::debug!(cause = %err, "write failed");
            break;
        }
        if conn.is_done() {
            break;
        }
        if conn.is_viewer() && watch.is_none() {
            match start_watcher(&stream) {
                Ok(started) => watch = Some(started),
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot watch a viewer");
                    break;
                }
            }
        }
        if let Err(err) = wait_step(&stream, &mut conn, &waker, watch.as_ref(), &mut timeouts) {
            tracing::debug!(cause = %err, "connection failed");
            break;
        }
    }

    // Wakes the watcher (its read ends) and sends the FIN now: the
    // watcher's reference would otherwise keep the socket open.
    let _ = stream.shutdown(Shutdown::Both);
}

/// Writes the whole output, blocking this thread while the socket is
/// full, but never past the deadline; a viewer looks at its mailbox
/// every [`STALL_CHECK`] while stuck.
fn write_step(
    stream: &TcpStream,
    conn: &mut Connection,
    waker: &Waker,
    timeouts: &mut Timeouts,
) -> io::Result<()> {
    while !conn.output().is_empty() {
        let limit = conn.is_viewer().then_some(STALL_CHECK);
        timeouts.write(stream, time_left(conn.deadline(), limit))?;
        match (&*stream).write(conn.output()) {
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

/// Waits for whichever comes first (the socket, the viewer's mailbox,
/// the deadline) and feeds it to the connection.
fn wait_step(
    stream: &TcpStream,
    conn: &mut Connection,
    waker: &Waker,
    watch: Option<&Watcher>,
    timeouts: &mut Timeouts,
) -> io::Result<()> {
    // A viewer: its mailbox and its watcher wake it; its watcher reads.
    if let Some(watch) = watch {
        watch.deliver(conn);
        let events = conn.poll_events(waker);
        if events || !conn.output().is_empty() || conn.is_done() {
            return Ok(());
        }
        if watch.shared.peer_gone.load(Ordering::Acquire) {
            // Whatever came with the close goes in first.
            watch.deliver(conn);
            conn.closed_by_peer();
            return Ok(());
        }
        match conn.deadline() {
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    thread::park_timeout(left);
                }
            }
            None => thread::park(),
        }
        conn.on_deadline(Instant::now());
        return Ok(());
    }

    // A request: block in `read` until bytes arrive or the deadline.
    if conn.wants_read() {
        return read_step(stream, conn, timeouts);
    }
    // Nothing to read or write (should not last): sleep to the deadline.
    thread::sleep(time_left(conn.deadline(), None));
    conn.on_deadline(Instant::now());
    Ok(())
}

/// Reads what the socket has into the connection, waiting for it at
/// most until the deadline.
fn read_step(stream: &TcpStream, conn: &mut Connection, timeouts: &mut Timeouts) -> io::Result<()> {
    let mut buf = [0u8; READ_BUF];
    timeouts.read(stream, time_left(conn.deadline(), None))?;
    match (&*stream).read(&mut buf) {
        Ok(0) => conn.closed_by_peer(),
        Ok(n) => conn.received(&buf[..n], Instant::now()),
        Err(err) if is_timeout(&err) => conn.on_deadline(Instant::now()),
        Err(err) => return Err(err),
    }
    Ok(())
}

/// Time until `deadline` (capped at `limit`), at least 1 ms: std takes
/// a zero timeout as an error.
fn time_left(deadline: Option<Instant>, limit: Option<Duration>) -> Duration {
    let left = deadline.map_or(Duration::MAX, |at| {
        at.saturating_duration_since(Instant::now())
    });
    left.min(limit.unwrap_or(Duration::MAX))
        .clamp(Duration::from_millis(1), Duration::from_secs(3600))
}

/// A blocking socket reports its timeout as `WouldBlock` (EAGAIN).
fn is_timeout(err: &io::Error) -> bool {
    matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
}

/// The socket's timeouts as last set, so that an unchanged one (a
/// viewer's [`STALL_CHECK`] on every write) costs no `setsockopt`.
#[derive(Default)]
struct Timeouts {
    read: Option<Duration>,
    write: Option<Duration>,
}

impl Timeouts {
    fn read(&mut self, stream: &TcpStream, timeout: Duration) -> io::Result<()> {
        if self.read != Some(timeout) {
            stream.set_read_timeout(Some(timeout))?;
            self.read = Some(timeout);
        }
        Ok(())
    }

    fn write(&mut self, stream: &TcpStream, timeout: Duration) -> io::Result<()> {
        if self.write != Some(timeout) {
            stream.set_write_timeout(Some(timeout))?;
            self.write = Some(timeout);
        }
        Ok(())
    }
}

/// The hub's `Waker` for a connection thread: unparks it. A thread's
/// unpark keeps a token, so a wake that comes before the park is not
/// lost: the next `park_timeout` returns at once.
struct Unparker(Thread);

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
    /// WebSocket client's frames (an SSE connection ignores them).
    inbox: Mutex<Vec<u8>>,
    /// Set by the watcher when the client closed its side (or the
    /// socket failed); read by the connection before it parks.
    peer_gone: AtomicBool,
    /// The connection thread, to unpark after new bytes or the close.
    viewer: Thread,
}

/// The connection's handle on its watcher.
struct Watcher {
    shared: Arc<Watch>,
    /// The watcher thread, unparked when its full inbox was emptied.
    thread: Thread,
}

impl Watcher {
    /// Gives what the watcher read to the connection.
    fn deliver(&self, conn: &mut Connection) {
        let bytes = std::mem::take(&mut *lock(&self.shared.inbox));
        if bytes.is_empty() {
            return;
        }
        conn.received(&bytes, Instant::now());
        if bytes.len() >= INBOX_LIMIT {
            self.thread.unpark();
        }
    }
}

/// Starts the watcher of a viewer: a thread blocked in `read` on the
/// socket, which hands what the client sends to the viewer and tells it
/// when the client leaves. It ends then, or when the viewer shuts the
/// socket down.
fn start_watcher(stream: &Arc<TcpStream>) -> io::Result<Watcher> {
    // The read timeout of the request phase would wake the watcher.
    stream.set_read_timeout(None)?;
    let shared = Arc::new(Watch {
        inbox: Mutex::new(Vec::new()),
        peer_gone: AtomicBool::new(false),
        viewer: thread::current(),
    });
    let (socket, theirs) = (stream.clone(), shared.clone());
    let handle = thread::Builder::new()
        .name("watcher".into())
        .stack_size(WATCHER_STACK_SIZE)
        .spawn(move || {
            let mut buf = [0u8; WATCHER_BUF];
            while let Ok(n @ 1..) = (&*socket).read(&mut buf) {
                let backlog = {
                    let mut inbox = lock(&theirs.inbox);
                    inbox.extend_from_slice(&buf[..n]);
                    inbox.len()
                };
                theirs.viewer.unpark();
                // A client that sends faster than its viewer takes it
                // in waits here, in the kernel's buffers.
                if backlog >= INBOX_LIMIT {
                    thread::park_timeout(STALL_CHECK);
                }
            }
            theirs.peer_gone.store(true, Ordering::Release);
            theirs.viewer.unpark();
        })?;
    Ok(Watcher {
        shared,
        thread: handle.thread().clone(),
    })
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (the watcher only appends bytes).
fn lock(inbox: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    inbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
