//! livecomment on mio (a readiness event loop per worker, no tasks). Being written: see issue 3.

use livecomment_core::{Runtime, RuntimeOptions, Service};
use std::io;
use std::sync::Arc;

/// The mio backend.
pub struct Mio;

impl Runtime for Mio {
    const NAME: &'static str = "mio";

    fn run(_: Arc<Service>, _: std::net::TcpListener, _: &RuntimeOptions) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the mio backend is being written",
        ))
    }
}
