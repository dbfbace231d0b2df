//! `echo/<runtime>`: a 64-byte loopback TCP round trip to an echo server
//! written for each runtime.
//!
//! Measures: what a runtime adds to one request/response on a warm
//! keep-alive connection — readiness or completion notification, waking
//! the connection's task (or loop), a read and a write. The client is the
//! same blocking std socket on the benchmark thread for every case, so
//! differences come from the server side.
//!
//! Does not measure: many connections at once, throughput, our HTTP
//! parsing or the hub (the load generator does that against the real
//! server). Client and server threads are not pinned.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;

use criterion::{Criterion, criterion_group, criterion_main};

const MESSAGE: [u8; 64] = [b'x'; 64];

/// Runs one echo round trip per iteration against `addr`.
fn bench_echo(c: &mut Criterion, name: &str, addr: SocketAddr) {
    let mut client = TcpStream::connect(addr).expect("connecting to the echo server");
    client.set_nodelay(true).expect("TCP_NODELAY");
    let mut reply = [0u8; 64];
    c.bench_function(&format!("echo/{name}"), |b| {
        b.iter(|| {
            client.write_all(&MESSAGE).expect("echo write");
            client.read_exact(&mut reply).expect("echo read");
        })
    });
}

fn echo_tokio(c: &mut Criterion) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = common::tokio_runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(common::any_loopback()))
        .expect("binding");
    let addr = listener.local_addr().expect("local addr");
    rt.spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    bench_echo(c, "tokio", addr);
}

fn echo_may(c: &mut Criterion) {
    common::may_init();
    let listener = may::net::TcpListener::bind(common::any_loopback()).expect("binding");
    let addr = listener.local_addr().expect("local addr");
    common::may_go(move || {
        while let Ok((mut conn, _)) = listener.accept() {
            let _ = conn.set_nodelay(true);
            common::may_go(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    bench_echo(c, "may", addr);
}

fn echo_glommio(c: &mut Criterion) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = mpsc::channel();
    // The executor thread runs until the benchmark process exits.
    let _executor = common::glommio_builder()
        .spawn(move || async move {
            let listener =
                glommio::net::TcpListener::bind(common::any_loopback()).expect("binding");
            let _ = tx.send(listener.local_addr().expect("local addr"));
            while let Ok(mut conn) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                glommio::spawn_local(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                })
                .detach();
            }
        })
        .expect("starting a glommio executor");
    let addr = rx.recv().expect("echo server address");
    bench_echo(c, "glommio", addr);
}

fn echo_threads(c: &mut Criterion) {
    let listener = std::net::TcpListener::bind(common::any_loopback()).expect("binding");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    bench_echo(c, "threads", addr);
}

fn echo_mio(c: &mut Criterion) {
    let mut listener = mio::net::TcpListener::bind(common::any_loopback()).expect("binding");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || mio_echo_loop(&mut listener));
    bench_echo(c, "mio", addr);
}

/// A readiness loop: accept, and echo whatever is readable. Replies are
/// small, so a write that would block is not retried (it never happens
/// with one 64-byte message in flight).
fn mio_echo_loop(listener: &mut mio::net::TcpListener) {
    use mio::{Events, Interest, Poll, Token};
    const LISTENER: Token = Token(usize::MAX);
    let mut poll = Poll::new().expect("mio poll");
    let mut events = Events::with_capacity(64);
    poll.registry()
        .register(listener, LISTENER, Interest::READABLE)
        .expect("registering the listener");
    let mut conns: HashMap<Token, mio::net::TcpStream> = HashMap::new();
    let mut next = 0;
    let mut buf = [0u8; 4096];
    loop {
        if poll.poll(&mut events, None).is_err() {
            return;
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((mut conn, _)) = listener.accept() {
                    let token = Token(next);
                    next += 1;
                    let _ = conn.set_nodelay(true);
                    let _ = poll
                        .registry()
                        .register(&mut conn, token, Interest::READABLE);
                    conns.insert(token, conn);
                }
                continue;
            }
            let Some(conn) = conns.get_mut(&event.token()) else {
                continue;
            };
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let _ = conn.write_all(&buf[..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
}

criterion_group!(
    benches,
    echo_tokio,
    echo_may,
    echo_glommio,
    echo_threads,
    echo_mio
);
criterion_main!(benches);
