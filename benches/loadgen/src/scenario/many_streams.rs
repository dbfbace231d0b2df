//! `many-streams`: many streams with a few viewers each. Posts go
//! round-robin over the streams, so every post reaches only its own
//! stream's viewers: the hub's per-stream bookkeeping is what is
//! measured, more than raw fan-out.

use anyhow::Result;

use super::{Env, connect_viewers, note_viewer_failures, post_and_drain, stream_names};
use crate::args::ScenarioName;
use crate::report::Record;
use crate::server::BIG_VIEWER_QUEUE;
use crate::viewer::Behaviour;

pub async fn run(env: &mut Env<'_>, runtime: &str) -> Result<Record> {
    let sizes = &env.plan.sizes;
    let scenario = ScenarioName::ManyStreams;
    let server = env.start_server(runtime, scenario, env.hs256(), BIG_VIEWER_QUEUE)?;

    let streams = stream_names("s", sizes.streams);
    let layout: Vec<(usize, Behaviour)> = (0..sizes.streams)
        .flat_map(|s| std::iter::repeat_n((s, Behaviour::Reader), sizes.viewers_per_stream))
        .collect();
    let viewers = connect_viewers(env, &server, &streams, &layout).await?;

    let mut plan = env.post_plan(&server, streams, env.creds.hs256_tokens(64)?);
    plan.rate = sizes.streams_rate;
    plan.connections = 4;
    let measured = post_and_drain(env, &server, &viewers, plan, &[]).await?;

    let mut record = Record::new(runtime, scenario.as_str());
    record.viewers = viewers.streaming();
    record.streams = sizes.streams;
    record.offered_posts_per_sec = Some(sizes.streams_rate);
    record.offered_events_per_sec = Some(sizes.streams_rate * sizes.viewers_per_stream as f64);
    measured.fill(&mut record);
    note_viewer_failures(&mut record, &viewers);
    viewers.shutdown();
    drop(server);
    Ok(record)
}
