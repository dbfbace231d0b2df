//! Calibration: how many events per second can the viewers absorb?
//!
//! A trivial "server" in this process, on a kernel thread pinned to the
//! server CPU, accepts the same viewers the scenarios use and writes
//! pre-encoded SSE events to them as fast as it can: each round encodes
//! a batch of events once (ids continue from the last round) and writes
//! that batch to every viewer in turn with blocking writes. Nothing in it
//! costs more than a `write` per viewer per batch, so the viewers (the
//! load generator's single thread) are the bottleneck, and the delivered
//! rate is the ceiling of what the harness can measure. The report
//! compares it with the best server figure (the goal is 1.5× or more).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::clock::Clock;
use crate::machine;
use crate::procfs;
use crate::report::Calibration;
use crate::scenario::Env;
use crate::viewer::{Behaviour, Viewers};

/// Events encoded per round (one write per viewer per round).
const BATCH: u64 = 64;

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                      Cache-Control: no-cache\r\n\r\n";

pub async fn run(env: &Env<'_>) -> Result<Calibration> {
    let n = env.plan.sizes.calibration_viewers;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the blaster")?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let blaster = spawn_blaster(
        listener,
        n,
        env.plan.server_cpu,
        env.clock,
        Arc::clone(&stop),
    )?;

    env.progress
        .phase(&format!("calibration: connecting {n} viewers"));
    let mut viewers = Viewers::new(addr, env.clock, 512);
    for _ in 0..n {
        viewers.spawn(0, "calibration", Behaviour::Reader);
    }
    viewers.wait_settled(Duration::from_secs(30)).await;

    env.progress.phase("calibration: blasting");
    // The viewers run on this thread; the blaster's CPU is not theirs.
    let cpu0 = procfs::thread_cpu_ms();
    let delivered0 = viewers.delivered();
    let window = env.plan.sizes.duration();
    tokio::time::sleep(window).await;
    let delivered = viewers.delivered() - delivered0;
    let load_cpu_ms = procfs::thread_cpu_ms() - cpu0;
    let lost = viewers.loss(&[]).lost;

    if viewers.failed() > 0 {
        env.progress.println(&format!(
            "calibration: {} viewers failed: {}",
            viewers.failed(),
            viewers.errors().join("; ")
        ));
    }
    stop.store(true, Ordering::Relaxed);
    viewers.shutdown();
    tokio::task::yield_now().await;
    let _ = blaster.join();

    let secs = window.as_secs_f64();
    Ok(Calibration {
        viewers: n,
        delivered_per_sec: delivered as f64 / secs,
        load_cpu_util: load_cpu_ms / 1000.0 / secs,
        window_secs: secs,
        lost,
    })
}

fn spawn_blaster(
    listener: TcpListener,
    n: usize,
    cpu: usize,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let handle = std::thread::Builder::new()
        .name("blaster".into())
        .spawn(move || {
            let _ = machine::pin_current_thread(cpu);
            let Ok(conns) = accept_viewers(&listener, n) else {
                return;
            };
            blast(conns, clock, &stop);
        })?;
    Ok(handle)
}

/// Accepts `n` viewers, reads each request head and answers with the
/// SSE response head.
fn accept_viewers(listener: &TcpListener, n: usize) -> std::io::Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    let mut buf = [0u8; 1024];
    while conns.len() < n {
        let (mut stream, _) = listener.accept()?;
        let mut head = Vec::new();
        while memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
            let read = stream.read(&mut buf)?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(&buf[..read]);
        }
        stream.write_all(HEAD)?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        conns.push(stream);
    }
    Ok(conns)
}

/// Writes batch after batch to every viewer until told to stop or a
/// viewer goes away.
fn blast(mut conns: Vec<TcpStream>, clock: Clock, stop: &AtomicBool) {
    let mut next_id = 1;
    while !stop.load(Ordering::Relaxed) {
        let batch = encode_batch(next_id, clock.now_nanos());
        next_id += BATCH;
        for conn in &mut conns {
            if conn.write_all(&batch).is_err() {
                return;
            }
        }
    }
}

/// `BATCH` comment events with ids from `first`, shaped like the
/// server's, stamped `t=now`.
fn encode_batch(first: u64, now: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH as usize * 200);
    for id in first..first + BATCH {
        let _ = write!(
            out,
            "id: {id}\nevent: comment\ndata: {{\"id\":{id},\"stream\":\"calibration\",\
             \"author\":\"bench-0\",\"name\":\"Bench\",\"text\":\"t={now} xxxxxxxxxxxxxxxxxxxxxxxxxxxxx\",\
             \"ts\":{}}}\n\n",
            now / 1_000_000
        );
    }
    out
}
