//! What a scheduler must provide to run the service.
//!
//! The core is sans-I/O: a [`crate::Connection`] is fed bytes and handed
//! back bytes, and the hub wakes a viewer through a [`std::task::Waker`].
//! So the core never calls *into* a scheduler; a scheduler only needs to
//!
//! - accept connections and give each a task (a future, a coroutine, a
//!   thread, or a slot in an event loop) that runs the connection loop
//!   described in [`crate::conn`];
//! - provide a timer for [`crate::Connection::deadline`];
//! - provide a `Waker` that makes that task run again: a future's
//!   context waker, an unpark of a coroutine or thread, or a
//!   `mio::Waker` with the connection's token;
//! - if it cannot hold as many connections as memory allows, say how
//!   many it can ([`Runtime::connection_limit`]).
//!
//! Each runtime crate implements [`Runtime`] with the same steps, named
//! the same way (`run` → `accept_loop` → `serve_connection`, whose loop
//! does `write_step`, then `wait_step`), so two adapters can be read side
//! by side and differ only where their scheduling models differ.

use crate::service::Service;
use std::io;
use std::net::TcpListener;
use std::sync::Arc;

/// Settings every runtime honours the same way.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Worker threads, executors or event loops.
    pub workers: usize,
    /// Listen backlog for any extra listeners the runtime binds.
    pub backlog: u32,
    /// Coroutine stack size in bytes (stackful runtimes only).
    pub stack_size: Option<usize>,
}

/// A bound a runtime puts on open connections of its own accord, and
/// what sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// The most connections the runtime can hold.
    pub max: usize,
    /// What sets it, with the numbers, for the start-up log.
    pub reason: String,
}

/// A scheduler that serves the live-comment service.
pub trait Runtime {
    /// The name used on the command line and in metrics.
    const NAME: &'static str;

    /// The most connections this runtime can hold on this machine with
    /// `options`, when something other than memory and file descriptors
    /// bounds it (a kernel thread per connection does). Asked once at
    /// start-up: the binary lowers [`crate::Config::max_connections`] to
    /// it, so connections past it get the core's 503 instead of failing
    /// inside the runtime. The default: no bound of its own.
    fn connection_limit(_options: &RuntimeOptions) -> Option<ConnectionLimit> {
        None
    }

    /// Serves connections from `listener` (already bound and listening,
    /// non-blocking) until the process exits. Returns only on a start-up
    /// failure, such as a missing kernel feature.
    fn run(
        service: Arc<Service>,
        listener: TcpListener,
        options: &RuntimeOptions,
    ) -> io::Result<()>;
}
