//! livecomment on glommio (thread-per-core on io_uring). Being written: see issue 3.

use livecomment_core::{Runtime, RuntimeOptions, Service};
use std::io;
use std::sync::Arc;

/// The glommio backend.
pub struct Glommio;

impl Runtime for Glommio {
    const NAME: &'static str = "glommio";

    fn run(_: Arc<Service>, _: std::net::TcpListener, _: &RuntimeOptions) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the glommio backend is being written",
        ))
    }
}
