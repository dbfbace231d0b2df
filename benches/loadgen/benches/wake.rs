//! `wake/<runtime>`: ping-pong between two units of concurrency; one
//! iteration is a round trip, so two wake-ups (each side wakes the other
//! and waits to be woken).
//!
//! Measures: wake-to-run latency of each scheduler when nothing else is
//! runnable — tokio tasks over `tokio::sync::mpsc` on one worker, may
//! coroutines over may's channels on one worker, glommio local tasks over
//! a local channel, kernel threads over `std::sync::mpsc`, and two mio
//! event loops (one per thread) waking each other with `mio::Waker`.
//!
//! Does not measure: wakes under load, fairness, or I/O readiness. The
//! kernel-thread and mio cases cross threads (on this 2-core machine the
//! two threads may sit on different cores); the task cases stay on one.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

fn wake_tokio(c: &mut Criterion) {
    let rt = common::tokio_runtime();
    c.bench_function("wake/tokio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                tokio::spawn(async move {
                    let (ping_tx, mut ping_rx) = tokio::sync::mpsc::channel::<u64>(1);
                    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<u64>(1);
                    tokio::spawn(async move {
                        while let Some(n) = ping_rx.recv().await {
                            if pong_tx.send(n).await.is_err() {
                                break;
                            }
                        }
                    });
                    let started = Instant::now();
                    for i in 0..iters {
                        let _ = ping_tx.send(i).await;
                        let _ = pong_rx.recv().await;
                    }
                    started.elapsed()
                })
                .await
                .unwrap_or(Duration::ZERO)
            })
        })
    });
}

fn wake_may(c: &mut Criterion) {
    common::may_init();
    c.bench_function("wake/may", |b| {
        b.iter_custom(|iters| {
            let timed = common::may_go(move || {
                let (ping_tx, ping_rx) = may::sync::mpsc::channel::<u64>();
                let (pong_tx, pong_rx) = may::sync::mpsc::channel::<u64>();
                let echo = common::may_go(move || {
                    while let Ok(n) = ping_rx.recv() {
                        if pong_tx.send(n).is_err() {
                            break;
                        }
                    }
                });
                let started = Instant::now();
                for i in 0..iters {
                    let _ = ping_tx.send(i);
                    let _ = pong_rx.recv();
                }
                let elapsed = started.elapsed();
                drop(ping_tx);
                let _ = echo.join();
                elapsed
            });
            timed.join().unwrap_or(Duration::ZERO)
        })
    });
}

fn wake_glommio(c: &mut Criterion) {
    use glommio::channels::local_channel;
    let ex = common::glommio_executor();
    c.bench_function("wake/glommio", |b| {
        b.iter_custom(|iters| {
            ex.run(async move {
                let (ping_tx, ping_rx) = local_channel::new_bounded::<u64>(1);
                let (pong_tx, pong_rx) = local_channel::new_bounded::<u64>(1);
                let echo = glommio::spawn_local(async move {
                    while let Some(n) = ping_rx.recv().await {
                        if pong_tx.send(n).await.is_err() {
                            break;
                        }
                    }
                });
                let started = Instant::now();
                for i in 0..iters {
                    let _ = ping_tx.send(i).await;
                    let _ = pong_rx.recv().await;
                }
                let elapsed = started.elapsed();
                drop(ping_tx);
                echo.await;
                elapsed
            })
        })
    });
}

fn wake_threads(c: &mut Criterion) {
    c.bench_function("wake/threads", |b| {
        b.iter_custom(|iters| {
            let (ping_tx, ping_rx) = std::sync::mpsc::sync_channel::<u64>(1);
            let (pong_tx, pong_rx) = std::sync::mpsc::sync_channel::<u64>(1);
            let echo = std::thread::spawn(move || {
                while let Ok(n) = ping_rx.recv() {
                    if pong_tx.send(n).is_err() {
                        break;
                    }
                }
            });
            let started = Instant::now();
            for i in 0..iters {
                let _ = ping_tx.send(i);
                let _ = pong_rx.recv();
            }
            let elapsed = started.elapsed();
            drop(ping_tx);
            let _ = echo.join();
            elapsed
        })
    });
}

/// One side of the mio ping-pong: its own `Poll`, and a `Waker` the other
/// side uses to wake it.
struct Loop {
    poll: mio::Poll,
    waker: Arc<mio::Waker>,
    events: mio::Events,
}

const WAKE: mio::Token = mio::Token(0);

impl Loop {
    fn new() -> Loop {
        let poll = mio::Poll::new().expect("mio poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).expect("mio waker"));
        Loop {
            poll,
            waker,
            events: mio::Events::with_capacity(8),
        }
    }

    /// Blocks until this loop has been woken.
    fn wait(&mut self) {
        loop {
            let _ = self.poll.poll(&mut self.events, None);
            if self.events.iter().any(|e| e.token() == WAKE) {
                return;
            }
        }
    }
}

fn wake_mio(c: &mut Criterion) {
    c.bench_function("wake/mio", |b| {
        b.iter_custom(|iters| {
            let mut ours = Loop::new();
            let mut theirs = Loop::new();
            let wake_ours = Arc::clone(&ours.waker);
            let wake_theirs = Arc::clone(&theirs.waker);
            let round = Arc::new(AtomicU64::new(0));
            let seen = Arc::clone(&round);
            let echo = std::thread::spawn(move || {
                for _ in 0..iters {
                    theirs.wait();
                    seen.fetch_add(1, Ordering::Release);
                    let _ = wake_ours.wake();
                }
            });
            let started = Instant::now();
            for _ in 0..iters {
                let _ = wake_theirs.wake();
                ours.wait();
            }
            let elapsed = started.elapsed();
            let _ = echo.join();
            debug_assert_eq!(round.load(Ordering::Acquire), iters);
            elapsed
        })
    });
}

criterion_group!(
    benches,
    wake_tokio,
    wake_may,
    wake_glommio,
    wake_threads,
    wake_mio
);
criterion_main!(benches);
