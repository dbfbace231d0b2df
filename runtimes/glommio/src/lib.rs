//! # livecomment-glommio: thread-per-core on io_uring
//!
//! Each of `--workers N` executors is a glommio `LocalExecutor` on a
//! kernel thread of its own, pinned to one CPU with `Placement::Fixed`.
//! A connection is a `!Send` future spawned with `spawn_local` onto the
//! executor that accepted it, and it stays there for its whole life:
//! glommio never moves a task to another thread, so there is no work
//! stealing. The executor's io_uring carries the waiting (accepts,
//! readiness polls, timer expiries, going to sleep); the bytes move with
//! plain non-blocking `recv` and `send`, tried first on every read and
//! write by glommio's `TcpStream`.
//!
//! ```text
//!  thread "glommio-0", on CPU a          thread "glommio-1", on CPU b
//!  ┌─ LocalExecutor 0 ───────────────┐     ┌─ LocalExecutor 1 ─────────┐
//!  │ listener 0 (the one `run` got)  │     │ listener 1 (bind_another, │
//!  │ tasks (spawn_local, !Send):     │     │  same port, SO_REUSEPORT) │
//!  │   accept_loop                   │     │ tasks: accept_loop,       │
//!  │   serve_connection peer1, …     │     │  serve_connection …       │
//!  │ task queue: one poll at a time  │     │ its own task queue,       │
//!  │ rings: main, latency, poll      │     │  rings and notifier       │
//!  │ notifier: wakes from other      │◀───▶│                           │
//!  │  threads (channel + eventfd)    │     │                           │
//!  └───────────────┬─────────────────┘     └─────────────┬─────────────┘
//!                  └────── one Arc<Service>, cloned ─────┘
//!         hub: stream map, a Mutex per stream and per mailbox;
//!         metrics and rate limits: shared by every executor thread
//! ```
//!
//! `◀───▶` is a wake of a task on the other executor: it goes through
//! the owner's notifier (see below). The thread that called `run` only
//! waits: for every executor to start, then for any one to stop.
//!
//! glommio also starts one helper thread per executor, pinned to the
//! same CPU: its pool for file operations and `spawn_blocking`, neither
//! of which this glue uses.
//!
//! ## Where a connection's state lives
//!
//! In its task: the heap block glommio allocates at `spawn_local`,
//! holding the `serve_connection` future. That future holds the core's
//! [`Connection`], glommio's `TcpStream` (the socket and the sources of
//! any polls it has armed) and the state of the `.await` it is stopped
//! at (for `wait_step`, the keep-alive `Timer`). The 8 KiB read buffer
//! is on the stack of one poll (`read_step`), not in the future. An idle
//! viewer also has one readiness poll armed in its executor's ring, a
//! timer entry in the executor's timer list, and its mailbox in the hub.
//!
//! ## How a viewer waits for three things at once
//!
//! glommio has no wait for bare readiness: its `poll_read` and
//! `poll_write` move bytes when they complete. So `wait_step` is one
//! `poll_fn` that, on every poll, tries in turn:
//!
//! 1. `read_step`, while the connection wants input: a `recv`; if the
//!    socket is empty, glommio arms an io_uring poll for it and keeps the
//!    task's waker with it;
//! 2. `try_write`, while output is pending: a `send`, or a poll for room;
//! 3. [`Connection::poll_events`] with the same waker, which the mailbox
//!    keeps until a publisher makes it non-empty;
//! 4. the deadline's `Timer`.
//!
//! The first that is ready ends the wait. All four hold the one task
//! waker, so any of them makes the task run again, and the next poll
//! looks at all four.
//!
//! ## How a comment's wake-up travels
//!
//! 1. The poster's task, on executor A, publishes: under the stream's
//!    lock the hub pushes the event to every mailbox and takes the waker
//!    of each viewer whose mailbox was empty; it wakes them after the
//!    lock is released.
//! 2. Each waker is a glommio task waker. Its `do_wake` (glommio's
//!    `task/raw.rs`) compares the calling thread's executor with the
//!    task's:
//!    - **same executor** (the viewer is also on A): the task is marked
//!      scheduled and pushed on A's task queue. No syscall, no lock.
//!    - **another thread** (a viewer on executor B, or the signal thread
//!      at shutdown): a clone of the waker is sent on B's notifier, a
//!      cross-thread channel, and B's `eventfd` is written if B has said
//!      it is about to sleep. B keeps a read of that `eventfd` armed in
//!      its ring, so the write ends B's wait in the kernel. The first
//!      wake that finds B's flag set clears it; until B says it is about
//!      to sleep again, further wakes cost a channel send, no syscall.
//! 3. Executor B takes the queued wakers on its next turn, and each
//!    becomes a same-executor wake. The viewer's task runs
//!    `poll_events`, which drains everything queued into one buffer, and
//!    `write_step` writes it with one `send`.
//!
//! ## What can block what
//!
//! - **Within an executor**, everything shares one thread and glommio
//!   cannot interrupt a poll. A slow request (an RSA token check, a
//!   large history page) or a blocking call delays every other
//!   connection of that executor. glommio's preemption timer works
//!   between task queues and through `yield_if_needed`; this glue uses
//!   one queue and never calls it, so a long poll runs to its end.
//! - **Nothing rebalances.** The kernel picks the listener, and so the
//!   executor, by a hash of the connection's addresses when it arrives.
//!   A busy executor's connections wait even while another is idle.
//! - **Across executors**, executors meet only in the shared
//!   [`Service`]. The hub's locks are `parking_lot` mutexes: a contended
//!   one parks the *thread*, and so the whole executor, not just the
//!   task. A stream's lock is held by a publisher for the whole fan-out
//!   to that stream's viewers; a subscribe, a viewer leaving (dropping a
//!   `Viewer` takes the stream lock) or a post to the same stream on
//!   another executor waits for it.
//!
//! ## How the hub is shared across executors, and what it costs
//!
//! `run` clones one `Arc<Service>` into every executor thread. So there
//! is one hub for the process: one stream map, one `parking_lot::Mutex`
//! per stream and one per mailbox, taken by whichever executor thread
//! needs them. A stream's viewers can be on any executor (the kernel
//! chooses by hash), so one stream's viewer slab mixes mailboxes whose
//! tasks live on different executors. Compared with a strictly
//! share-nothing design, with more than one executor this costs:
//!
//! - **A cross-core lock on a hot stream.** Posts, subscribes and leaves
//!   from every executor take the same mutex, and the stream's state
//!   moves between the cores' caches; contention stalls whole
//!   executors, as above.
//! - **A cross-thread wake per remote viewer.** The poster's executor
//!   does the whole fan-out: it pushes into mailboxes whose owners run
//!   on other cores (each push takes a lock the owner also takes), and
//!   every remote viewer it wakes is a send on that executor's notifier
//!   channel, plus an `eventfd` write when the owner sleeps. A local
//!   viewer costs a queue push.
//!
//! A share-nothing version would look like this:
//!
//! 1. Each executor owns a shard of the viewers: its own mailboxes, in
//!    `Rc`/`RefCell`, no locks, only same-executor wakers.
//! 2. Each stream still numbers, stores and records its comments in one
//!    place (a home executor, or a lock only publishers take), so ids
//!    stay in order.
//! 3. For each event, the hub forwards one copy per executor (an
//!    `Event` is two `Bytes`: a reference count bump) over a channel
//!    between executors, such as glommio's `shared_channel` or
//!    `channel_mesh`: E - 1 cross-core messages per comment, whatever
//!    the number of viewers.
//! 4. A task on each executor takes the events off its channel and fans
//!    them out to its local viewers.
//! 5. A viewer resuming on executor B needs its replay and its first
//!    live event to meet without a gap or a duplicate. With history in
//!    one place and live events arriving over a channel, that takes a
//!    hand-off protocol (for example: B notes the last id it forwarded
//!    for the stream, asks for the replay up to it, and drops overlaps).
//!
//! This project keeps the shared hub, for three reasons the code shows:
//!
//! - The contract's rules (ids strictly increasing per stream; resume
//!   with no gap and no duplicate) are enforced under one stream lock:
//!   `Hub::publish` numbers, records and fans out under it, and
//!   `Hub::subscribe` reads the replay and registers the mailbox under
//!   the same lock. A sharded hub needs the protocol of step 5 instead.
//! - The same hub serves all five backends, so the study compares
//!   schedulers over one core, not five hubs.
//! - With `--workers 1`, which `livecomment bench` passes by default,
//!   there is one executor: every lock is uncontended and every wake is
//!   a same-executor wake, so there is no cross-core traffic at all.
//!   The one exception is shutdown, whose wakes come from the signal
//!   thread.
//!
//! Read glommio's multi-executor figures with that in mind: they
//! measure this shared hub on glommio, not thread-per-core at its best.
//!
//! ## Hazards
//!
//! - **io_uring.** glommio needs it (Linux 5.8 or later, not turned off
//!   by `kernel.io_uring_disabled`, not blocked by a seccomp profile),
//!   and panics when it is missing. `check_io_uring` first sets up and
//!   closes a one-entry ring itself, so the failure becomes an error
//!   that names the cause.
//! - **Locked memory.** glommio refuses to start below 512 KiB of
//!   `RLIMIT_MEMLOCK`; `check_memlock` reads `/proc/self/limits` and
//!   says so in plain words. Each executor pins `IO_MEMORY` for its
//!   rings; glommio's default (10 MiB) is more than the whole 8 MiB
//!   allowed on these machines, so the glue asks for glommio's floor.
//!   Other start-up failures, some of which glommio reports by
//!   panicking, are caught in `run_executor` and returned by `run`.
//! - **Pinning.** Executor `i` is pinned to the `i % len`-th CPU this
//!   process may use (`Cpus_allowed_list`, so `taskset` and cgroups are
//!   respected). More workers than allowed CPUs share CPUs.
//! - **`!Send` tasks.** A connection's future never leaves its thread.
//!   Only `Send` things cross executors: the `Arc<Service>` and the
//!   `std::task::Waker`s held by mailboxes.
//! - **Out of file descriptors**, `accept` fails: the accept loop sleeps
//!   20 ms instead of spinning.
//!
//! ## Limitations
//!
//! - The hub is shared, not sharded: see above.
//! - No load balancing after accept.
//! - An executor that stops (a panic) stops the server: `run` returns
//!   its error and the process exits.
//!
//! The glue follows the steps of `livecomment_core::conn`:
//! `run` → `accept_loop` → `serve_connection` (`write_step`,
//! `wait_step`, `read_step`).

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};
use livecomment_core::{Connection, Runtime, RuntimeOptions, Service, net};
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Memory each executor registers with io_uring for its own buffered
/// (DMA) file I/O. The server does no file I/O through glommio, so this
/// is kept near glommio's floor (64 KiB): it is pinned, and pinned memory
/// counts against `ulimit -l` (8 MiB on these machines), once per ring.
const IO_MEMORY: usize = 64 << 10;

/// The glommio backend.
pub struct Glommio;

impl Runtime for Glommio {
    const NAME: &'static str = "glommio";

    fn run(
        service: Arc<Service>,
        listener: std::net::TcpListener,
        options: &RuntimeOptions,
    ) -> io::Result<()> {
        check_memlock()?;
        check_io_uring()?;
        let workers = options.workers.max(1);
        let cpus = allowed_cpus();

        // One listener per executor, all on the same port (SO_REUSEPORT):
        // the kernel spreads new connections over them.
        let mut listeners = Vec::with_capacity(workers);
        for _ in 1..workers {
            listeners.push(net::bind_another(&listener, options.backlog)?);
        }
        listeners.insert(0, listener);

        let (notes, news) = mpsc::channel();
        for (shard, listener) in listeners.into_iter().enumerate() {
            let cpu = cpus[shard % cpus.len()];
            let (service, notes) = (service.clone(), notes.clone());
            std::thread::Builder::new()
                .name(format!("glommio-{shard}"))
                .spawn(move || run_executor(shard, cpu, service, listener, notes))?;
        }
        drop(notes);

        // Start-up: every executor reports once; the first failure wins.
        for _ in 0..workers {
            match news.recv() {
                Ok(Note::Started) => {}
                Ok(Note::Failed(err)) => return Err(err),
                Ok(Note::Stopped(shard)) => return Err(stopped(shard)),
                Err(_) => return Err(io::Error::other("every glommio executor stopped")),
            }
        }
        tracing::info!(executors = workers, "glommio executors running");

        // Executors never return; if one does (a panic), so does `run`.
        match news.recv() {
            Ok(Note::Stopped(shard)) => Err(stopped(shard)),
            _ => Err(io::Error::other("every glommio executor stopped")),
        }
    }
}

/// What an executor thread tells `run`.
enum Note {
    Started,
    Failed(io::Error),
    Stopped(usize),
}

/// Sent when an executor thread ends, even by a panic.
struct StopNotice(usize, mpsc::Sender<Note>);

impl Drop for StopNotice {
    fn drop(&mut self) {
        let _ = self.1.send(Note::Stopped(self.0));
    }
}

fn stopped(shard: usize) -> io::Error {
    io::Error::other(format!("glommio executor {shard} stopped unexpectedly"))
}

/// Body of executor thread `shard`: builds its executor pinned to `cpu`
/// and runs its accept loop forever.
fn run_executor(
    shard: usize,
    cpu: usize,
    service: Arc<Service>,
    listener: std::net::TcpListener,
    notes: mpsc::Sender<Note>,
) {
    let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(&format!("glommio-{shard}"))
        .io_memory(IO_MEMORY);
    // glommio panics on some start-up failures instead of returning one.
    let failure = match panic::catch_unwind(AssertUnwindSafe(|| builder.make())) {
        Ok(Ok(executor)) => Ok(executor),
        Ok(Err(err)) => Err(startup_error(shard, cpu, &err.to_string())),
        Err(_) => Err(startup_error(shard, cpu, "glommio panicked (see above)")),
    };
    let executor = match failure {
        Ok(executor) => executor,
        Err(err) => {
            let _ = notes.send(Note::Failed(err));
            return;
        }
    };
    let _stop = StopNotice(shard, notes.clone());
    let _ = notes.send(Note::Started);
    executor.run(accept_loop(service, listener, shard));
}

/// Turns glommio's start-up error into one that names the likely cause
/// and the fix.
fn startup_error(shard: usize, cpu: usize, err: &str) -> io::Error {
    io::Error::other(format!(
        "cannot start glommio executor {shard} on CPU {cpu}: {err}; glommio needs \
         io_uring (Linux 5.8 or later, not turned off by sysctl kernel.io_uring_disabled, \
         not blocked by a seccomp profile such as docker's default) and at least \
         512 KiB of locked memory (`ulimit -l`); fix that or use --runtime tokio"
    ))
}

/// Creates and closes a one-entry io_uring, so that a kernel without
/// io_uring, or a sysctl or seccomp filter that refuses it, gets an
/// error that says so; glommio itself panics in that case.
fn check_io_uring() -> io::Result<()> {
    // `struct io_uring_params` is 120 bytes of integers; zero asks for
    // the defaults.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(2) reads and writes exactly one
    // `io_uring_params` (120 bytes, 8-aligned), which `params` is; it
    // returns a new file descriptor or -1 and touches nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let why = match err.raw_os_error() {
            Some(libc::ENOSYS) => "this kernel has no io_uring (glommio needs Linux 5.8 or later)",
            Some(libc::EPERM | libc::EACCES) => {
                "io_uring is refused to this process: sysctl kernel.io_uring_disabled \
                 is set, or a seccomp profile (docker's default, many sandboxes) blocks it"
            }
            Some(libc::ENOMEM) => "not enough locked memory for an io_uring (`ulimit -l`)",
            _ => "io_uring could not be set up",
        };
        return Err(io::Error::other(format!(
            "cannot start glommio: {why} ({err}); use --runtime tokio"
        )));
    }
    // SAFETY: `fd` is the ring just created; this is its only owner, and
    // dropping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(())
}

/// glommio refuses to start below this `RLIMIT_MEMLOCK` (its own check).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 << 10;

/// Checks the locked-memory limit up front, so a low `ulimit -l` gets a
/// message that says so instead of glommio's `MemLockLimit(65536/524288)`.
fn check_memlock() -> io::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max locked memory"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse::<u64>().ok());
    match soft {
        Some(have) if have < GLOMMIO_MIN_MEMLOCK => Err(io::Error::other(format!(
            "cannot start glommio: locked memory is limited to {} KiB (`ulimit -l`) and \
             glommio needs at least {} KiB for its io_uring rings; raise the limit \
             (`ulimit -l 8192`, LimitMEMLOCK= in a systemd unit, `--ulimit memlock=` \
             for docker) or use --runtime tokio",
            have / 1024,
            GLOMMIO_MIN_MEMLOCK / 1024,
        ))),
        // "unlimited", or no /proc: let glommio decide.
        _ => Ok(()),
    }
}

/// The CPUs this process may run on (`taskset` and cgroups narrow it),
/// in order; executor `i` is pinned to the `i % len`-th.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("");
    let mut cpus = Vec::new();
    for range in list.trim().split(',').filter(|r| !r.is_empty()) {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        if let (Ok(lo), Ok(hi)) = (lo.parse::<usize>(), hi.parse::<usize>()) {
            cpus.extend(lo..=hi);
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

/// Accepts connections on this executor's listener forever, one task each.
async fn accept_loop(service: Arc<Service>, listener: std::net::TcpListener, shard: usize) {
    // SAFETY: `into_raw_fd` hands over sole ownership of a bound,
    // listening TCP socket; glommio's listener takes that ownership and
    // closes the fd when dropped, and nothing else refers to it.
    let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let peer = stream
                    .peer_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                let span = tracing::debug_span!("conn", runtime = "glommio", shard, %peer);
                glommio::spawn_local(
                    serve_connection(service.clone(), stream, peer).instrument(span),
                )
                .detach();
            }
            Err(err) => {
                // Out of file descriptors, most likely: back off instead
                // of spinning; connections will close and free some.
                tracing::warn!(cause = %err, "accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Drives one connection until it is done or the socket fails.
async fn serve_connection(service: Arc<Service>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut conn = Connection::new(service, Instant::now());
    loop {
        if let Err(err) = write_step(&mut stream, &mut conn).await {
            tracing::debug!(%peer, cause = %err, "write failed");
            return;
        }
        if conn.is_done() {
            return;
        }
        if let Err(err) = wait_step(&mut stream, &mut conn).await {
            tracing::debug!(%peer, cause = %err, "connection failed");
            return;
        }
    }
}

/// Writes as much output as the socket takes without waiting. When it is
/// full, glommio arms a poll for room, which [`wait_step`] waits on.
async fn write_step(stream: &mut TcpStream, conn: &mut Connection) -> io::Result<()> {
    poll_fn(|cx| {
        while !conn.output().is_empty() {
            match try_write(stream, conn, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// What ended a wait.
enum Woke {
    /// Bytes (or end of file) were read and fed to the connection.
    Read,
    /// Output that was waiting for room was written.
    Written,
    Events,
    Deadline,
}

/// Waits for the socket, the viewer's mailbox or the deadline, and
/// feeds whichever came first to the connection.
///
/// glommio has no wait for bare readiness: its `poll_read`/`poll_write`
/// move the bytes when they complete. So the read (and a write that
/// waited for room) happen inside the wait, through [`read_step`].
async fn wait_step(stream: &mut TcpStream, conn: &mut Connection) -> io::Result<()> {
    let mut timer = conn
        .deadline()
        .map(|at| Timer::new(at.saturating_duration_since(Instant::now())));

    let woke = poll_fn(|cx| {
        if conn.wants_read()
            && let Poll::Ready(done) = read_step(stream, conn, cx)
        {
            return Poll::Ready(done.map(|()| Woke::Read));
        }
        if !conn.output().is_empty()
            && let Poll::Ready(done) = try_write(stream, conn, cx)
        {
            return Poll::Ready(done.map(|()| Woke::Written));
        }
        if conn.poll_events(cx.waker()) {
            return Poll::Ready(Ok(Woke::Events));
        }
        if let Some(timer) = timer.as_mut()
            && Pin::new(timer).poll(cx).is_ready()
        {
            return Poll::Ready(Ok(Woke::Deadline));
        }
        Poll::Pending
    })
    .await?;

    match woke {
        Woke::Read | Woke::Written | Woke::Events => Ok(()),
        Woke::Deadline => {
            conn.on_deadline(Instant::now());
            Ok(())
        }
    }
}

/// Reads what the socket has into the connection, or arms glommio's
/// poll for it and returns `Pending`.
fn read_step(
    stream: &mut TcpStream,
    conn: &mut Connection,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    // On the stack of this poll, not in the task: glommio's non-buffered
    // stream reads with a plain `recv` once its poll says readable, so
    // an idle connection's future does not carry a read buffer.
    let mut buf = [0u8; 8192];
    match Pin::new(stream).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(0)) => {
            conn.closed_by_peer();
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Ok(n)) => {
            conn.received(&buf[..n], Instant::now());
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        Poll::Pending => Poll::Pending,
    }
}

/// One write of the pending output, or `Pending` with a poll for room armed.
fn try_write(
    stream: &mut TcpStream,
    conn: &mut Connection,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    match Pin::new(stream).poll_write(cx, conn.output()) {
        Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
        Poll::Ready(Ok(n)) => {
            conn.consume(n);
            Poll::Ready(Ok(()))
        }
        Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        Poll::Pending => Poll::Pending,
    }
}
