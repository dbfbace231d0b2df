//! `slow-viewers`: a tenth of the viewers stop reading after the
//! response head (with a 4 KiB receive buffer, so they back up fast).
//!
//! What must hold, per CONTRACT.md:
//! 1. the reading viewers keep their latency and lose nothing;
//! 2. each slow viewer's queue passes its bound and the server evicts it
//!    (counted from `/metrics`, `livecomment_viewer_evictions_total`);
//! 3. the poster is never slowed (its reply latency stays low).
//!
//! The queue bound is 256 KiB here and comments are long (400 bytes of
//! text), so a slow viewer passes its bound within a second or two.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Env, connect_viewers, note_viewer_failures, post_and_drain};
use crate::args::ScenarioName;
use crate::http::metric_sum;
use crate::report::Record;
use crate::server::Server;
use crate::viewer::Behaviour;

/// The viewer queue bound in this scenario.
const SLOW_VIEWER_QUEUE: u64 = 256 * 1024;

/// Text length of each comment here.
const TEXT_LEN: usize = 400;

const EVICTIONS: &str = "livecomment_viewer_evictions_total";

pub async fn run(env: &mut Env<'_>, runtime: &str) -> Result<Record> {
    let sizes = &env.plan.sizes;
    let scenario = ScenarioName::SlowViewers;
    let server = env.start_server(runtime, scenario, env.hs256(), SLOW_VIEWER_QUEUE)?;

    let streams = vec!["slow".to_string()];
    let layout: Vec<(usize, Behaviour)> = (0..sizes.slow_viewers_total)
        .map(|i| {
            (
                0,
                if i % 10 == 9 {
                    Behaviour::Slow
                } else {
                    Behaviour::Reader
                },
            )
        })
        .collect();
    let slow = layout.iter().filter(|v| v.1 == Behaviour::Slow).count();
    let viewers = connect_viewers(env, &server, &streams, &layout).await?;

    let mut plan = env.post_plan(&server, streams, env.creds.hs256_tokens(16)?);
    plan.rate = sizes.slow_rate;
    plan.text_len = TEXT_LEN;
    let measured = post_and_drain(env, &server, &viewers, plan, &[]).await?;
    let evictions = wait_for_evictions(&server, slow).await;

    let mut record = Record::new(runtime, scenario.as_str());
    record.viewers = viewers.streaming();
    record.streams = 1;
    record.slow_viewers = Some(slow);
    record.offered_posts_per_sec = Some(sizes.slow_rate);
    record.offered_events_per_sec = Some(sizes.slow_rate * (layout.len() - slow) as f64);
    measured.fill(&mut record);
    match evictions {
        Ok(n) => {
            record.evictions = Some(n);
            if n < slow as f64 {
                record
                    .notes
                    .push(format!("only {n} of {slow} slow viewers were evicted"));
            }
        }
        Err(e) => record.notes.push(format!("evictions unknown: {e:#}")),
    }
    note_viewer_failures(&mut record, &viewers);
    viewers.shutdown();
    drop(server);
    Ok(record)
}

/// Reads the eviction counter until it reaches `slow` or a second passes
/// (the last evictions may trail the last post slightly).
async fn wait_for_evictions(server: &Server, slow: usize) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let metrics = server.metrics()?;
        let n = metric_sum(&metrics, EVICTIONS)
            .ok_or_else(|| anyhow::anyhow!("/metrics has no {EVICTIONS}"))?;
        if n >= slow as f64 || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
