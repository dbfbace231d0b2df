//! Listening sockets, set up the same way for every runtime.
//!
//! `socket2` gives what `std::net::TcpListener::bind` does not: a listen
//! backlog sized for connection storms (the kernel default of 128 drops
//! SYNs when thousands of viewers arrive at once), `SO_REUSEADDR` for
//! quick restarts, and `SO_REUSEPORT` so thread-per-core runtimes can
//! give each worker its own listener on the same port, with the kernel
//! spreading connections between them.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

/// Binds a non-blocking listener on `addr` with the given backlog.
/// `SO_REUSEPORT` is always set, so [`bind_another`] can add listeners
/// on the same port.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Another listener on the very address `first` is bound to (its port
/// resolved, if it was 0), for a worker of its own.
pub fn bind_another(first: &TcpListener, backlog: u32) -> io::Result<TcpListener> {
    bind(first.local_addr()?, backlog)
}

/// Sets the options every accepted connection gets: no Nagle delay, so
/// a small event goes out at once instead of waiting for an ACK.
pub fn tune_stream(stream: &std::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}
