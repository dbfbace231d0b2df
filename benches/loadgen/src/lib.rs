//! The comparison harness: a load generator that runs `livecomment serve`
//! on each runtime in turn, drives the same scenarios against it, and
//! writes the figures as JSON, Markdown tables and SVG charts.
//!
//! It is a *client*. It talks HTTP to a server process over loopback and
//! knows nothing of the server's code: it does not depend on
//! `livecomment-core` or any runtime crate, so a bug in the core cannot
//! hide itself from the measurement.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`args`] | the command line (`BenchArgs`) and the sizes of each scenario |
//! | `clock` | one time base shared by posters and viewers |
//! | `machine` | CPU pinning, the open-files limit, machine facts for the report |
//! | `procfs` | the server's CPU time, RSS and context switches from `/proc` |
//! | `perf` | syscall and context-switch counts from `perf stat`, when it works |
//! | `server` | starting `livecomment serve` pinned to its CPU, reading its readiness line, killing it |
//! | `tokens` | the HS256 secret, the RS256 key pair, minting tokens |
//! | `http` | request bytes, a response parser for pipelined replies, a tiny blocking GET |
//! | `sse` | the viewer's decoder: response head, chunked bodies, events by byte search |
//! | `ws` | the WebSocket viewer's decoder: the 101, then frames, by the same byte search |
//! | `viewer` | thousands of SSE viewers as tasks on one thread: loss and latency per event |
//! | `poster` | open-loop posters on kernel threads: a fixed schedule, never waiting for replies |
//! | `calibrate` | a blaster that shows how many events per second the viewers can absorb |
//! | `scenario` | the named scenarios, one file each, and what they share |
//! | `report` | `results.json`, `results.md` and the charts |
//! | `progress` | progress bars |
//!
//! # How a run goes
//!
//! 1. The harness pins itself to the load CPU and raises its open-files
//!    limit to the hard cap (20,000 here).
//! 2. Unless told not to, it runs the calibration blaster.
//! 3. For every runtime and scenario it starts a fresh server pinned to
//!    the server CPU, with the same settings for every runtime, connects
//!    the viewers, opens a measurement window (server CPU, RSS, context
//!    switches, optionally `perf stat`), posts on a fixed schedule, closes
//!    the window, waits for the viewers to drain, counts loss, and kills
//!    the server. A runtime whose `serve` fails is recorded as a failure
//!    and the run goes on.
//! 4. It writes `results.json`, `results.md` and the charts into `--out`.
//!
//! # What makes the figures honest
//!
//! - *Open loop.* Each post has a scheduled time `start + k × interval`
//!   and carries that time in its text (`t=<unix nanos>`). A poster never
//!   waits for a reply before the next send, so a slow server cannot slow
//!   the offered load down and hide its own latency (no coordinated
//!   omission).
//! - *Exact loss.* Every viewer tracks the next id it expects on its
//!   stream; a jump is a gap, and at the end every viewer must have seen
//!   the last id the posters got a 201 for.
//! - *Separate CPUs.* Server and load generator are pinned apart, and the
//!   load generator reports its own CPU use, so a saturated client shows.
//!
//! # Limitations
//!
//! - Viewers all use one transport per run (`--transport sse|ws`); a
//!   mix of SSE and WebSocket viewers in one scenario is not offered.
//! - One harness process holds every client socket, so a scenario is
//!   kept under the 20,000 open-files cap (about 19,000 connections).
//!   Larger runs would need several load processes.
//! - `/proc` CPU times tick at 10 ms; windows of a few seconds keep that
//!   error near one percent.

pub mod args;
mod calibrate;
mod clock;
mod http;
mod machine;
mod perf;
mod poster;
mod procfs;
mod progress;
mod report;
mod scenario;
mod server;
mod sse;
mod tokens;
pub mod viewer;
mod ws;

use std::path::Path;

use anyhow::{Context, Result};

pub use args::BenchArgs;

/// Runs the comparison described by `args`, starting `server_exe serve`
/// for every runtime, and writes the results into `args.out`.
pub fn run(args: BenchArgs, server_exe: &Path) -> Result<()> {
    if let Some(json) = &args.report_only {
        return report::rerender(json, &args.out);
    }

    let plan = args::Plan::from_args(&args)?;
    let facts = machine::Facts::gather(&plan);
    machine::pin_current_thread(plan.load_cpu).context("pinning the load generator")?;
    machine::raise_open_files_limit();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the load generator's tokio runtime")?;
    let results = runtime.block_on(scenario::run_plan(&plan, server_exe, facts))?;

    report::write_all(&results, &plan.out)?;
    println!("results written to {}", plan.out.display());
    Ok(())
}
