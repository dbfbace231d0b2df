//! livecomment on threads (a kernel thread per connection, 1:1). Being written: see issue 3.

use livecomment_core::{Runtime, RuntimeOptions, Service};
use std::io;
use std::sync::Arc;

/// The threads backend.
pub struct Threads;

impl Runtime for Threads {
    const NAME: &'static str = "threads";

    fn run(_: Arc<Service>, _: std::net::TcpListener, _: &RuntimeOptions) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the threads backend is being written",
        ))
    }
}
