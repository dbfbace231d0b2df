//! livecomment on may (stackful coroutines, M:N). Being written: see issue 3.

use livecomment_core::{Runtime, RuntimeOptions, Service};
use std::io;
use std::sync::Arc;

/// The may backend.
pub struct May;

impl Runtime for May {
    const NAME: &'static str = "may";

    fn run(_: Arc<Service>, _: std::net::TcpListener, _: &RuntimeOptions) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the may backend is being written",
        ))
    }
}
