//! `spawn/<runtime>`: start an empty unit of concurrency and wait for it
//! to finish, once per iteration.
//!
//! Measures: the scheduler's cost of creating, scheduling, running and
//! joining a task — a tokio task on a one-worker runtime, a may
//! coroutine on one worker, a glommio local task, a kernel thread.
//!
//! Does not measure: anything of our server, I/O, or contention between
//! workers. mio has no tasks (an event loop keeps per-connection state in
//! a table), so it has no case here.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

fn spawn_tokio(c: &mut Criterion) {
    let rt = common::tokio_runtime();
    c.bench_function("spawn/tokio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async move {
                // Measure from inside a task, so spawner and spawned share
                // the worker, as a server's accept loop and its connections do.
                tokio::spawn(async move {
                    let started = Instant::now();
                    for i in 0..iters {
                        let handle = tokio::spawn(async move { black_box(i) });
                        let _ = handle.await;
                    }
                    started.elapsed()
                })
                .await
                .unwrap_or(Duration::ZERO)
            })
        })
    });
}

fn spawn_may(c: &mut Criterion) {
    common::may_init();
    c.bench_function("spawn/may", |b| {
        b.iter_custom(|iters| {
            let timed = common::may_go(move || {
                let started = Instant::now();
                for i in 0..iters {
                    let _ = common::may_go(move || black_box(i)).join();
                }
                started.elapsed()
            });
            timed.join().unwrap_or(Duration::ZERO)
        })
    });
}

fn spawn_glommio(c: &mut Criterion) {
    let ex = common::glommio_executor();
    c.bench_function("spawn/glommio", |b| {
        b.iter_custom(|iters| {
            ex.run(async move {
                let started = Instant::now();
                for i in 0..iters {
                    glommio::spawn_local(async move { black_box(i) }).await;
                }
                started.elapsed()
            })
        })
    });
}

fn spawn_threads(c: &mut Criterion) {
    c.bench_function("spawn/threads", |b| {
        b.iter(|| {
            let handle = std::thread::spawn(|| black_box(1));
            handle.join().ok()
        })
    });
}

criterion_group!(
    benches,
    spawn_tokio,
    spawn_may,
    spawn_glommio,
    spawn_threads
);
criterion_main!(benches);
