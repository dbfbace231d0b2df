//! `fanout-hot`: one stream, thousands of viewers, a fixed post rate.
//! Every post is delivered to every viewer, so the server's fan-out
//! (encode once, write many) is what is measured.

use anyhow::Result;

use super::{Env, connect_viewers, note_viewer_failures, post_and_drain};
use crate::args::ScenarioName;
use crate::report::Record;
use crate::server::BIG_VIEWER_QUEUE;
use crate::viewer::Behaviour;

pub async fn run(env: &mut Env<'_>, runtime: &str) -> Result<Record> {
    let sizes = &env.plan.sizes;
    let scenario = ScenarioName::FanoutHot;
    let server = env.start_server(runtime, scenario, env.hs256(), BIG_VIEWER_QUEUE)?;

    let streams = vec!["hot".to_string()];
    let layout = vec![(0, Behaviour::Reader); sizes.fanout_viewers];
    let viewers = connect_viewers(env, &server, &streams, &layout).await?;

    let mut plan = env.post_plan(&server, streams, env.creds.hs256_tokens(16)?);
    plan.rate = sizes.fanout_rate;
    let measured = post_and_drain(env, &server, &viewers, plan, &[]).await?;

    let mut record = Record::new(runtime, scenario.as_str());
    record.viewers = viewers.streaming();
    record.streams = 1;
    record.offered_posts_per_sec = Some(sizes.fanout_rate);
    record.offered_events_per_sec = Some(sizes.fanout_rate * viewers.streaming() as f64);
    measured.fill(&mut record);
    note_viewer_failures(&mut record, &viewers);
    viewers.shutdown();
    drop(server);
    Ok(record)
}
