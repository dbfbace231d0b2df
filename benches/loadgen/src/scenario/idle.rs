//! `idle`: viewers that receive nothing. What each one costs the server
//! in memory, and what an idle server spends in CPU (keep-alive timers,
//! polling).
//!
//! 1. Start the server; wait a moment; read its RSS with no viewers.
//! 2. Open N viewers of one stream; wait until all are streaming, then a
//!    second for the server to settle; read the RSS again.
//! 3. RSS per viewer = (RSS with N − RSS with none) / N.
//! 4. Count the server's CPU over one window with nothing posted.

use std::time::Duration;

use anyhow::Result;

use super::{Env, connect_viewers, note_viewer_failures};
use crate::args::ScenarioName;
use crate::report::Record;
use crate::server::BIG_VIEWER_QUEUE;
use crate::viewer::Behaviour;

const SETTLE: Duration = Duration::from_millis(1000);

pub async fn run(env: &mut Env<'_>, runtime: &str) -> Result<Record> {
    let sizes = &env.plan.sizes;
    let scenario = ScenarioName::Idle;
    let server = env.start_server(runtime, scenario, env.hs256(), BIG_VIEWER_QUEUE)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty = server.sample()?;

    let streams = vec!["idle".to_string()];
    let layout = vec![(0, Behaviour::Reader); sizes.idle_viewers];
    let viewers = connect_viewers(env, &server, &streams, &layout).await?;
    env.progress.phase("letting the server settle");
    tokio::time::sleep(SETTLE).await;
    let full = server.sample()?;

    env.progress.phase("measuring idle CPU");
    tokio::time::sleep(sizes.duration()).await;
    let after = server.sample()?;

    let mut record = Record::new(runtime, scenario.as_str());
    let n = viewers.streaming();
    record.viewers = n;
    record.streams = 1;
    record.server_rss_kib = Some(full.rss_kib);
    record.server_threads = Some(full.threads);
    if n > 0 {
        let grown = full.rss_kib.saturating_sub(empty.rss_kib);
        record.rss_kib_per_viewer = Some(grown as f64 / n as f64);
    }
    let secs = after.at.duration_since(full.at).as_secs_f64();
    record.window_secs = Some(secs);
    record.server_cpu_ms = Some(after.cpu_ms - full.cpu_ms);
    record.idle_server_cpu_ms_per_sec = Some((after.cpu_ms - full.cpu_ms) / secs);
    record.notes.extend(
        (empty.rss_kib > 0).then(|| format!("server RSS with no viewers: {} KiB", empty.rss_kib)),
    );
    note_viewer_failures(&mut record, &viewers);
    viewers.shutdown();
    drop(server);
    Ok(record)
}
