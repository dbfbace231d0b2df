//! # livecomment-mio: a readiness event loop per worker, no tasks
//!
//! The floor of the study: what serving the core costs with no
//! scheduler at all. There are no tasks, futures or coroutines. Each of
//! `--workers N` kernel threads runs one [`mio::Poll`] loop that owns a
//! [`Slab`] of connections, each a socket beside the core's
//! [`Connection`], which is already the state machine; the loop only
//! turns readiness events, timer expiries and hub wake-ups into calls on
//! it.
//!
//! ```text
//!  thread "main"                         thread "mio-worker-1" …
//!  ┌─ EventLoop 0 ──────────────────┐     ┌─ EventLoop 1 ─────────┐
//!  │ Poll (epoll, edge-triggered)   │     │ the same, with its own│
//!  │ listener 0 (the given one)     │     │ listener 1, bound by  │
//!  │ conns: Slab<Slot>              │     │ bind_another on the   │
//!  │   key ─▶ TcpStream+Connection  │     │ same port             │
//!  │ timers: min-heap of deadlines  │     └───────────────────────┘
//!  │ ready: Mutex<Vec<key>> + eventfd ◀── wakes from any thread
//!  └────────────────────────────────┘
//!        the kernel spreads new connections over the listeners
//!        (SO_REUSEPORT); a connection never leaves its loop
//! ```
//!
//! ## Where a connection's state lives
//!
//! In its `Slot`, in the slab of the loop that accepted it: the
//! socket, the [`Connection`], the readiness the kernel last reported
//! (`readable`, `writable`), the interest registered with epoll, the
//! deadline armed in the timer heap, and, for a viewer, its [`Waker`].
//! The slab key is the connection's [`Token`]. Nothing else: there is
//! no stack or future per connection, so an idle viewer costs its slot,
//! its `Connection` and its mailbox.
//!
//! ## One loop turn
//!
//! 1. `poll` blocks until a socket is ready, a wake-up arrives or the
//!    earliest deadline passes (the poll timeout). It does not block at
//!    all while the ready list is non-empty.
//! 2. Each socket event records the readiness in its slot and calls
//!    `serve_connection`; the listener's event runs `accept_loop`.
//! 3. Deadlines that passed call `serve_connection` with `Deadline`.
//! 4. One batch of the ready list calls `serve_connection` with `Events`.
//!
//! `serve_connection` runs the core's loop until it would block:
//! `write_step` (write until `WouldBlock` or done), close when done,
//! `read_step` (read until `WouldBlock`), `Connection::poll_events` for
//! a viewer, and again while any of them made progress. Then
//! `wait_step` registers what it waits for: `WRITABLE` interest only
//! while output is pending (a `reregister`, so an idle viewer gets no
//! writable events), and its deadline in the heap.
//!
//! ## How a comment's wake-up travels from poster to viewer
//!
//! 1. The poster's connection, on whichever loop, publishes; the hub
//!    pushes the event to the viewer's mailbox and, as it went from
//!    empty to non-empty, calls the [`Waker`] the viewer registered.
//! 2. That waker is a `ViewerWaker` (`std::task::Wake`): it pushes
//!    `(key, generation)` onto its loop's ready list and, only if the
//!    list was empty, calls [`mio::Waker::wake`] (one `eventfd` write).
//!    Many wakes between two turns cost one syscall, and a wake from the
//!    loop's own thread costs none: the loop drains the list before it
//!    polls again.
//! 3. The viewer's loop returns from `poll`, takes the list, and calls
//!    `serve_connection`, which calls `poll_events` (drains every queued
//!    event into one buffer) and `write_step` (one write).
//!
//! ## What can block what
//!
//! Everything on a loop shares one thread. A slow request (a JWT check
//! with RSA, a large history page) delays every other connection of
//! that loop, and nothing moves them elsewhere: there is no stealing.
//! A client that floods a socket is read at most `READ_BUDGET` buffers
//! per turn, then queued behind the others. Loops never wait for each
//! other: they meet only in the hub, under its short locks.
//!
//! ## Why a listener per loop, not one acceptor
//!
//! With `SO_REUSEPORT` each loop accepts for itself: no hand-off of new
//! sockets between threads (a channel and a wake-up per connection), no
//! thread that exists only to accept, and a connection's whole life on
//! one thread. The cost: the kernel balances by a hash of the address,
//! not by load, so a busy loop's connections are not helped by an idle
//! one. For this study, where loops stay balanced, that is the fair
//! floor.
//!
//! ## Hazards
//!
//! - Edge-triggered readiness: an event is reported once per change.
//!   Stopping a read or write early without remembering that the socket
//!   is still ready would hang the connection, so the slot keeps the
//!   readiness and every step runs until `WouldBlock`.
//! - Slab keys are reused. A wake-up or timer for a closed connection
//!   could reach the next one in its slot; each carries the slot's
//!   generation and is dropped when it does not match.
//! - The timer heap deletes lazily: a later deadline does not push a new
//!   entry, the armed one fires and re-arms, so a busy keep-alive
//!   connection keeps at most one entry, not one per request.
//! - Out of file descriptors, `accept` fails: the loop stops accepting
//!   for 20 ms instead of spinning, and retries.
//!
//! ## Limitations
//!
//! A loop that fails after start-up (its `poll` returns an error) stops
//! with its connections; it is logged, and the others go on. If it is
//! the first loop, `run` returns the error and the process exits.

use livecomment_core::{Connection, Runtime, RuntimeOptions, Service, net};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

/// The mio backend.
pub struct Mio;

impl Runtime for Mio {
    const NAME: &'static str = "mio";

    fn run(
        service: Arc<Service>,
        listener: std::net::TcpListener,
        options: &RuntimeOptions,
    ) -> io::Result<()> {
        // Every listener and loop is made before any runs, so that what
        // can fail fails here, as a start-up error.
        let workers = options.workers.max(1);
        let mut listeners = Vec::with_capacity(workers);
        for _ in 1..workers {
            listeners.push(net::bind_another(&listener, options.backlog)?);
        }
        listeners.insert(0, listener);
        let mut loops = listeners
            .into_iter()
            .map(|listener| EventLoop::new(service.clone(), listener))
            .collect::<io::Result<Vec<_>>>()?;

        // The first loop runs on the calling thread, the others on
        // threads of their own.
        let first = loops.remove(0);
        for (i, event_loop) in loops.into_iter().enumerate() {
            std::thread::Builder::new()
                .name(format!("mio-worker-{}", i + 1))
                .spawn(move || {
                    if let Err(err) = event_loop.run() {
                        tracing::error!(cause = %err, "event loop failed");
                    }
                })?;
        }
        first.run()
    }
}

/// The listener's token; slab keys never reach it.
const LISTENER: Token = Token(usize::MAX);
/// The token of the loop's `mio::Waker`.
const WAKER: Token = Token(usize::MAX - 1);
/// Readiness events taken per `poll`.
const EVENTS: usize = 1024;
/// The loop's one read buffer, shared by all its connections.
const READ_BUFFER: usize = 64 * 1024;
/// Reads per connection per turn before others get their turn.
const READ_BUDGET: usize = 16;
/// How long accepting pauses after it fails (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// One worker: a poll, a listener and the connections it accepted.
/// Owned and used by one thread; only `ready` is shared.
struct EventLoop {
    service: Arc<Service>,
    poll: Poll,
    listener: TcpListener,
    /// Set while accepting is paused after a failure: when to retry.
    accept_paused: Option<Instant>,
    conns: Slab<Slot>,
    /// Given to each new connection, so stale wakes and timers for a
    /// reused slab key can be told apart.
    next_generation: u64,
    /// `(deadline, key, generation)`, earliest first; see `wait_step`.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    ready: Arc<ReadyList>,
    /// The batch of the ready list being served; kept for its capacity.
    woken: Vec<(usize, u64)>,
    buf: Box<[u8]>,
}

/// A connection and what the loop knows about its socket.
struct Slot {
    stream: TcpStream,
    conn: Connection,
    peer: SocketAddr,
    generation: u64,
    /// Made when the connection becomes a viewer; given to its mailbox.
    waker: Option<Waker>,
    /// What the socket is registered for.
    interest: Interest,
    /// The deadline this slot has in the timer heap, if any.
    timer: Option<Instant>,
    /// Readiness reported by the kernel and not yet used up (a read or
    /// write returned `WouldBlock` since).
    readable: bool,
    writable: bool,
}

/// Why `serve_connection` runs.
enum Woke {
    Opened,
    Socket { readable: bool, writable: bool },
    Events,
    Deadline,
}

impl EventLoop {
    fn new(service: Arc<Service>, listener: std::net::TcpListener) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let ready = Arc::new(ReadyList {
            woken: Mutex::new(Vec::new()),
            waker: mio::Waker::new(poll.registry(), WAKER)?,
        });
        Ok(EventLoop {
            service,
            poll,
            listener,
            accept_paused: None,
            conns: Slab::new(),
            next_generation: 0,
            timers: BinaryHeap::new(),
            ready,
            woken: Vec::new(),
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
        })
    }

    /// Turns the loop forever; returns only if `poll` fails.
    fn run(mut self) -> io::Result<()> {
        LOOP_THREAD.set(Arc::as_ptr(&self.ready) as usize);
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_loop(),
                    // The ready list is served below, on every turn.
                    WAKER => {}
                    Token(key) => {
                        let failed = event.is_error();
                        let woke = Woke::Socket {
                            readable: event.is_readable() || event.is_read_closed() || failed,
                            writable: event.is_writable() || event.is_write_closed() || failed,
                        };
                        self.serve_connection(key, woke);
                    }
                }
            }

            let now = Instant::now();
            if self.accept_paused.is_some_and(|until| until <= now) {
                self.accept_paused = None;
                self.accept_loop();
            }
            self.fire_timers(now);
            self.serve_woken();
        }
    }

    /// No wait while wake-ups are queued; else until the earliest
    /// deadline (or the end of an accept pause), or forever.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.lock().is_empty() {
            return Some(Duration::ZERO);
        }
        let timer = self.timers.peek().map(|Reverse((at, ..))| *at);
        let next = match (timer, self.accept_paused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Accepts until the listener would block (it is edge-triggered).
    fn accept_loop(&mut self) {
        if self.accept_paused.is_some() {
            return;
        }
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.open_connection(stream, peer),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(err) => {
                    // Out of file descriptors, most likely: back off
                    // instead of spinning; connections will close and
                    // free some.
                    tracing::warn!(cause = %err, "accept failed");
                    self.accept_paused = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Gives a new socket a slot and runs its connection once (it may
    /// already have a 503 to send).
    fn open_connection(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(err) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            tracing::warn!(%peer, cause = %err, "cannot register a connection");
            return;
        }
        self.next_generation += 1;
        entry.insert(Slot {
            stream,
            conn: Connection::new(self.service.clone(), Instant::now()),
            peer,
            generation: self.next_generation,
            waker: None,
            interest: Interest::READABLE,
            timer: None,
            // epoll reports a socket that is readable when registered.
            readable: false,
            writable: true,
        });
        self.serve_connection(key, Woke::Opened);
    }

    /// Runs the connection until it would block, then registers what
    /// it waits for; removes it when it is done or its socket failed.
    fn serve_connection(&mut self, key: usize, woke: Woke) {
        let EventLoop {
            poll,
            conns,
            timers,
            ready,
            buf,
            ..
        } = self;
        let Some(slot) = conns.get_mut(key) else {
            return;
        };
        let span = tracing::debug_span!("conn", runtime = "mio", peer = %slot.peer).entered();

        match woke {
            Woke::Opened | Woke::Events => {}
            Woke::Socket { readable, writable } => {
                slot.readable |= readable;
                slot.writable |= writable;
            }
            Woke::Deadline => {
                slot.timer = None;
                slot.conn.on_deadline(Instant::now());
            }
        }

        let open = loop {
            if let Err(err) = write_step(slot) {
                break Err(err);
            }
            if slot.conn.is_done() {
                break Ok(false);
            }
            if slot.readable && slot.conn.wants_read() {
                match read_step(slot, buf) {
                    Ok(true) => continue,
                    // Read its budget: the others' turn; back next turn.
                    Ok(false) => ready.push(key, slot.generation),
                    Err(err) => break Err(err),
                }
            }
            if slot.conn.is_viewer() {
                let generation = slot.generation;
                let waker = slot
                    .waker
                    .get_or_insert_with(|| viewer_waker(ready, key, generation));
                if slot.conn.poll_events(waker) {
                    continue;
                }
            }
            break wait_step(slot, key, poll.registry(), timers).map(|()| true);
        };

        match open {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) => tracing::debug!(cause = %err, "connection failed"),
        }
        drop(span);
        // Dropping the socket closes it, which also takes it out of
        // epoll; dropping the connection unregisters its viewer.
        conns.remove(key);
    }

    /// Serves every connection whose deadline has passed. Lazy
    /// deletion: an entry that no longer matches its slot is skipped.
    fn fire_timers(&mut self, now: Instant) {
        // Entries pushed while firing wait for the next turn.
        let mut budget = self.timers.len();
        while let Some(&Reverse((at, key, generation))) = self.timers.peek() {
            if at > now || budget == 0 {
                return;
            }
            budget -= 1;
            self.timers.pop();
            let armed = self
                .conns
                .get(key)
                .is_some_and(|slot| slot.generation == generation && slot.timer == Some(at));
            if armed {
                self.serve_connection(key, Woke::Deadline);
            }
        }
    }

    /// Serves one batch of woken connections: what was queued when the
    /// turn began. What is queued meanwhile makes the next poll return
    /// at once.
    fn serve_woken(&mut self) {
        let mut woken = std::mem::take(&mut self.woken);
        std::mem::swap(&mut *self.ready.lock(), &mut woken);
        for &(key, generation) in &woken {
            if self
                .conns
                .get(key)
                .is_some_and(|slot| slot.generation == generation)
            {
                self.serve_connection(key, Woke::Events);
            }
        }
        woken.clear();
        self.woken = woken;
    }
}

/// Writes until the output is empty or the socket would block.
fn write_step(slot: &mut Slot) -> io::Result<()> {
    while slot.writable && !slot.conn.output().is_empty() {
        match slot.stream.write(slot.conn.output()) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => slot.conn.consume(n),
            Err(err) if err.kind() == ErrorKind::WouldBlock => slot.writable = false,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Records what the connection waits for: `WRITABLE` interest only
/// while output is pending, and its deadline in the timer heap.
///
/// A deadline earlier than the armed one pushes a new entry; a later
/// one does not: the armed entry fires, `Connection::on_deadline` finds
/// nothing due, and this step arms the real deadline then.
fn wait_step(
    slot: &mut Slot,
    key: usize,
    registry: &Registry,
    timers: &mut BinaryHeap<Reverse<(Instant, usize, u64)>>,
) -> io::Result<()> {
    let interest = if slot.conn.output().is_empty() {
        Interest::READABLE
    } else {
        Interest::READABLE | Interest::WRITABLE
    };
    if interest != slot.interest {
        registry.reregister(&mut slot.stream, Token(key), interest)?;
        slot.interest = interest;
    }

    if let Some(at) = slot.conn.deadline()
        && slot.timer.is_none_or(|armed| at < armed)
    {
        timers.push(Reverse((at, key, slot.generation)));
        slot.timer = Some(at);
    }
    Ok(())
}

/// Reads until the socket would block, the connection wants no more,
/// or the budget is spent. Returns `false` in the last case: the socket
/// may hold more.
fn read_step(slot: &mut Slot, buf: &mut [u8]) -> io::Result<bool> {
    for _ in 0..READ_BUDGET {
        if !slot.conn.wants_read() {
            return Ok(true);
        }
        match slot.stream.read(buf) {
            Ok(0) => {
                slot.readable = false;
                slot.conn.closed_by_peer();
                return Ok(true);
            }
            Ok(n) => slot.conn.received(&buf[..n], Instant::now()),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                slot.readable = false;
                return Ok(true);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(false)
}

thread_local! {
    /// The address of the `ReadyList` of the loop this thread runs, or
    /// 0: a wake from the loop's own thread needs no syscall.
    static LOOP_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// The connections of one loop that were woken since it last looked,
/// and the `mio::Waker` that interrupts its `poll`.
///
/// Written by any thread (publishers, the shutdown thread, the loop
/// itself); taken by the loop once per turn. Invariant: while the list
/// is non-empty, either its loop is running (not blocked in `poll`) or
/// a `mio::Waker::wake` is pending, because a push that finds the list
/// empty from another thread wakes the loop, and the loop does not
/// block while the list is non-empty (`poll_timeout`).
struct ReadyList {
    woken: Mutex<Vec<(usize, u64)>>,
    waker: mio::Waker,
}

impl ReadyList {
    fn lock(&self) -> MutexGuard<'_, Vec<(usize, u64)>> {
        // A panic while holding this lock leaves a valid Vec.
        self.woken.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a connection; wakes the loop only if the list was empty
    /// and the caller is not the loop itself.
    fn push(&self, key: usize, generation: u64) {
        let was_empty = {
            let mut woken = self.lock();
            woken.push((key, generation));
            woken.len() == 1
        };
        let own_thread = LOOP_THREAD.get() == self as *const ReadyList as usize;
        if was_empty
            && !own_thread
            && let Err(err) = self.waker.wake()
        {
            tracing::warn!(cause = %err, "cannot wake an event loop");
        }
    }
}

/// The `std::task::Waker` a viewer gives its mailbox: it queues the
/// viewer's slot on its loop's ready list.
struct ViewerWaker {
    ready: Arc<ReadyList>,
    key: usize,
    generation: u64,
}

impl Wake for ViewerWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.key, self.generation);
    }
}

fn viewer_waker(ready: &Arc<ReadyList>, key: usize, generation: u64) -> Waker {
    Waker::from(Arc::new(ViewerWaker {
        ready: ready.clone(),
        key,
        generation,
    }))
}
