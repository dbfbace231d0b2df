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
//!   `mio::Waker` with the connection's token.
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

/// A scheduler that serves the live-comment service.
pub trait Runtime {
    /// The name used on the command line and in metrics.
    const NAME: &'static str;

    /// Serves connections from `listener` (already bound and listening,
    /// non-blocking) until the process exits. Returns only on a start-up
    /// failure, such as a missing kernel feature.
    fn run(
        service: Arc<Service>,
        listener: TcpListener,
        options: &RuntimeOptions,
    ) -> io::Result<()>;
}
