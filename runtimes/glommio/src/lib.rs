//! # livecomment-glommio: thread-per-core on io_uring
//!
//! (crate doc written below, once the glue works)

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
