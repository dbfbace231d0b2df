//! `post-heavy`: many users post to one stream watched by few viewers.
//! Each post carries its user's HS256 token, which the server verifies,
//! so request parsing, JWT checks and publishing dominate, not fan-out.
//! The reply latency (due time to 201) is reported beside the delivery
//! latency.

use anyhow::Result;

use super::{Env, connect_viewers, note_viewer_failures, post_and_drain};
use crate::args::ScenarioName;
use crate::report::Record;
use crate::server::BIG_VIEWER_QUEUE;
use crate::viewer::Behaviour;

pub async fn run(env: &mut Env<'_>, runtime: &str) -> Result<Record> {
    let sizes = &env.plan.sizes;
    let scenario = ScenarioName::PostHeavy;
    let server = env.start_server(runtime, scenario, env.hs256(), BIG_VIEWER_QUEUE)?;

    let streams = vec!["heavy".to_string()];
    let layout = vec![(0, Behaviour::Reader); sizes.heavy_viewers];
    let viewers = connect_viewers(env, &server, &streams, &layout).await?;

    let mut plan = env.post_plan(&server, streams, env.creds.hs256_tokens(sizes.heavy_users)?);
    plan.rate = sizes.heavy_rate;
    plan.connections = sizes.heavy_connections;
    let measured = post_and_drain(env, &server, &viewers, plan, &[]).await?;

    let mut record = Record::new(runtime, scenario.as_str());
    record.viewers = viewers.streaming();
    record.streams = 1;
    record.offered_posts_per_sec = Some(sizes.heavy_rate);
    record.offered_events_per_sec = Some(sizes.heavy_rate * viewers.streaming() as f64);
    measured.fill(&mut record);
    note_viewer_failures(&mut record, &viewers);
    viewers.shutdown();
    drop(server);
    Ok(record)
}
