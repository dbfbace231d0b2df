//! `connect-storm`: thousands of viewers connect at once.
//!
//! 1. Start N viewers together; at most `storm_in_flight` are between
//!    `connect` and their response head at any moment (the listen
//!    backlog is 4,096; going past it would measure SYN retries, not
//!    the server).
//! 2. The storm ends when every viewer streams or has failed: connects/s
//!    = N / that time; each viewer's connect-to-head time goes into a
//!    histogram; the server's CPU per 1,000 connects is counted.
//! 3. Then a few posts at a low rate check that every viewer is really
//!    served: their latency and loss are reported like the others.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Env, Window, note_viewer_failures, post_and_drain};
use crate::args::ScenarioName;
use crate::report::{Record, quantile_ms};
use crate::server::BIG_VIEWER_QUEUE;
use crate::viewer::{Behaviour, Viewers};

/// How long the storm may take before the run gives up waiting.
const STORM_TIMEOUT: Duration = Duration::from_secs(60);

/// Posts per second after the storm.
const CHECK_RATE: f64 = 20.0;

pub async fn run(env: &mut Env<'_>, runtime: &str) -> Result<Record> {
    let sizes = &env.plan.sizes;
    let scenario = ScenarioName::ConnectStorm;
    let server = env.start_server(runtime, scenario, env.hs256(), BIG_VIEWER_QUEUE)?;
    let n = sizes.storm_viewers;

    env.progress.phase(&format!("storm of {n} viewers"));
    let mut viewers = Viewers::new(server.addr, env.clock, sizes.storm_in_flight);
    viewers.set_transport(sizes.transport);
    let window = Window::open(env, &server, &viewers)?;
    let started = Instant::now();
    for _ in 0..n {
        viewers.spawn(0, "storm", Behaviour::Reader);
    }
    let streaming = viewers.wait_settled(STORM_TIMEOUT).await;
    let storm = started.elapsed();
    let figures = window.close(&server, &viewers)?;

    let mut record = Record::new(runtime, scenario.as_str());
    record.viewers = streaming;
    record.streams = 1;
    record.connect_total_ms = Some(storm.as_secs_f64() * 1000.0);
    record.connect_per_sec = Some(streaming as f64 / storm.as_secs_f64());
    let connect = viewers.take_connect_latency();
    if !connect.is_empty() {
        record.connect_p50_ms = Some(quantile_ms(&connect, 0.5));
        record.connect_p99_ms = Some(quantile_ms(&connect, 0.99));
    }
    if streaming > 0 {
        record.server_cpu_ms_per_1k_connects =
            Some(figures.server_cpu_ms * 1000.0 / streaming as f64);
    }

    let mut plan = env.post_plan(&server, vec!["storm".into()], env.creds.hs256_tokens(4)?);
    plan.rate = CHECK_RATE;
    plan.connections = 1;
    let measured = post_and_drain(env, &server, &viewers, plan, &[]).await?;
    record.offered_posts_per_sec = Some(CHECK_RATE);
    measured.fill(&mut record);
    note_viewer_failures(&mut record, &viewers);
    viewers.shutdown();
    drop(server);
    Ok(record)
}
