//! Set-up shared by the runtime micro-benchmarks: one way to build each
//! runtime, with the same shape the servers use (one worker).

#![allow(dead_code)]

use std::net::SocketAddr;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

/// glommio's registered I/O memory: small, because locked memory is
/// capped at 8 MiB on these machines.
pub const GLOMMIO_IO_MEMORY: usize = 512 << 10;

/// A tokio runtime with one worker thread, like `serve --workers 1`.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// A glommio executor on the calling thread.
pub fn glommio_executor() -> LocalExecutor {
    glommio_builder()
        .make()
        .expect("building a glommio executor")
}

pub fn glommio_builder() -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(GLOMMIO_IO_MEMORY)
}

/// may with one worker thread; call before the first coroutine.
pub fn may_init() {
    may::config().set_workers(1);
}

/// Spawns a may coroutine.
///
/// may's `spawn` is `unsafe` because a coroutine must not hold
/// thread-local state across a blocking call (it may resume on another
/// worker) and must fit its stack. The closures passed here touch no
/// thread-locals and use only channels and sockets with small frames,
/// far below may's default stack.
pub fn may_go<F, T>(f: F) -> may::coroutine::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: see the function doc: no thread-local state, small stack.
    unsafe { may::coroutine::spawn(f) }
}

/// A loopback address with a free port.
pub fn any_loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
