//! # livecomment-tokio: work-stealing futures (M:N)
//!
//! Each connection is a future spawned onto tokio's multi-thread
//! runtime. `--workers N` kernel threads each run a queue of ready
//! tasks and steal from each other when idle; a task is a few hundred
//! bytes on the heap, so an idle viewer costs little more than its
//! [`Connection`].
//!
//! A comment's wake-up travels: poster's task → hub pushes to the
//! viewer's mailbox → the mailbox calls the task's `Waker` (the one the
//! viewer's `poll_fn` registered) → tokio puts the task on a run queue
//! → a worker polls it, it drains the mailbox and writes once.
//!
//! The hazard of this model: a task that blocks (a slow syscall, a long
//! computation) holds its worker thread, and every task queued behind it
//! on that worker waits until another worker steals it.
//!
//! The glue follows the steps of `livecomment_core::conn`:
//! `run` → `accept_loop` → `serve_connection` (`write_step`, `wait_step`).

use livecomment_core::{Connection, Runtime, RuntimeOptions, Service};
use std::future::poll_fn;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// The tokio backend.
pub struct Tokio;

impl Runtime for Tokio {
    const NAME: &'static str = "tokio";

    fn run(
        service: Arc<Service>,
        listener: std::net::TcpListener,
        options: &RuntimeOptions,
    ) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.workers.max(1))
            .thread_name("tokio-worker")
            .enable_all()
            .build()?;
        runtime.block_on(accept_loop(service, listener))
    }
}

/// Accepts connections forever, one task each.
async fn accept_loop(service: Arc<Service>, listener: std::net::TcpListener) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let span = tracing::debug_span!("conn", runtime = "tokio", %peer);
                tokio::spawn(serve_connection(service.clone(), stream, peer).instrument(span));
            }
            Err(err) => {
                // Out of file descriptors, most likely: back off instead
                // of spinning; connections will close and free some.
                tracing::warn!(cause = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Drives one connection until it is done or the socket fails.
async fn serve_connection(service: Arc<Service>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut conn = Connection::new(service, Instant::now());
    loop {
        if let Err(err) = write_step(&stream, &mut conn) {
            tracing::debug!(%peer, cause = %err, "write failed");
            return;
        }
        if conn.is_done() {
            return;
        }
        if let Err(err) = wait_step(&stream, &mut conn).await {
            tracing::debug!(%peer, cause = %err, "connection failed");
            return;
        }
    }
}

/// Writes as much output as the socket takes without waiting.
fn write_step(stream: &TcpStream, conn: &mut Connection) -> io::Result<()> {
    while !conn.output().is_empty() {
        match stream.try_write(conn.output()) {
            Ok(n) => conn.consume(n),
            Err(err) if err.kind() == ErrorKind::WouldBlock => break,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// What ended a wait.
enum Woke {
    Readable,
    Writable,
    Events,
    Deadline,
}

/// Waits for the socket, the viewer's mailbox or the deadline, and
/// feeds whichever came first to the connection.
async fn wait_step(stream: &TcpStream, conn: &mut Connection) -> io::Result<()> {
    let wants_read = conn.wants_read();
    let wants_write = !conn.output().is_empty();
    let deadline = conn.deadline();

    let woke = tokio::select! {
        ready = stream.readable(), if wants_read => { ready?; Woke::Readable }
        ready = stream.writable(), if wants_write => { ready?; Woke::Writable }
        () = poll_fn(|cx| match conn.poll_events(cx.waker()) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }) => Woke::Events,
        () = sleep_until(deadline) => Woke::Deadline,
    };

    match woke {
        Woke::Readable => read_step(stream, conn),
        Woke::Writable | Woke::Events => Ok(()),
        Woke::Deadline => {
            conn.on_deadline(Instant::now());
            Ok(())
        }
    }
}

/// Reads what the socket has into the connection.
fn read_step(stream: &TcpStream, conn: &mut Connection) -> io::Result<()> {
    // On the stack of this synchronous call, not in the task: an idle
    // connection's future does not carry a read buffer.
    let mut buf = [0u8; 8192];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => {
                conn.closed_by_peer();
                return Ok(());
            }
            Ok(n) => {
                conn.received(&buf[..n], Instant::now());
                if n < buf.len() || !conn.wants_read() {
                    return Ok(());
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
