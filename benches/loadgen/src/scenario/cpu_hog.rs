//! `cpu-hog`: what a CPU-heavy handler does to everyone else's tail.
//!
//! The server checks RS256 tokens, whose signature check costs tens of
//! microseconds of CPU per post. Posters on a `hog` stream keep the
//! server busy with those checks while a light poster on a `probe`
//! stream, watched by many viewers, measures delivery latency. A runtime
//! that runs the check inline on the worker that also serves the viewers
//! shows it in the probe's tail; one that preempts (kernel threads) or
//! isolates it does not.
//!
//! 1. Generate the RSA key pair (once per run) and start the server with
//!    `--jwt-alg RS256 --jwt-public-key FILE`.
//! 2. Baseline: the probe alone for half a window.
//! 3. Hog: probe and hog together for a window; the record's latency is
//!    the probe's here, beside the baseline's.
//!
//! Unless `--hog-rate` is given, the hog rate is chosen so that signature
//! checks alone would take half of one CPU, from the check's cost
//! measured in this process with the same `jsonwebtoken` code.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Env, connect_viewers, fill_posts, note_viewer_failures, post_and_drain};
use crate::args::ScenarioName;
use crate::poster;
use crate::report::{Record, quantile_ms};
use crate::server::{BIG_VIEWER_QUEUE, Jwt};
use crate::viewer::Behaviour;

/// Share of one CPU the hog's signature checks should take.
const HOG_SHARE: f64 = 0.5;

/// Bounds on the automatic hog rate.
const HOG_RATE_RANGE: (f64, f64) = (100.0, 20_000.0);

/// Users posting to the hog stream (one token each).
const HOG_USERS: usize = 32;

pub async fn run(env: &mut Env<'_>, runtime: &str) -> Result<Record> {
    env.progress.phase("generating the RSA key pair");
    let public_key = env.creds.rsa_public_key(&env.work_dir)?;
    let tokens = env.creds.rs256_tokens(HOG_USERS + 1)?;
    let (hog_rate, verify_cost) = hog_rate(env, &public_key, &tokens[0])?;

    let sizes = &env.plan.sizes;
    let scenario = ScenarioName::CpuHog;
    let jwt = Jwt::Rs256 { public_key };
    let server = env.start_server(runtime, scenario, jwt, BIG_VIEWER_QUEUE)?;

    let streams = vec!["probe".to_string()];
    let layout = vec![(0, Behaviour::Reader); sizes.probe_viewers];
    let viewers = connect_viewers(env, &server, &streams, &layout).await?;

    env.progress.phase("baseline: the probe alone");
    let mut probe = env.post_plan(&server, streams.clone(), tokens[..1].to_vec());
    probe.rate = sizes.probe_rate;
    probe.connections = 1;
    probe.duration = sizes.duration() / 2;
    let baseline = post_and_drain(env, &server, &viewers, probe.clone(), &[]).await?;

    let mut hog = env.post_plan(&server, vec!["hog".into()], tokens[1..].to_vec());
    hog.rate = hog_rate;
    hog.connections = 4;
    probe.duration = sizes.duration();
    let hogging = poster::start(hog, Instant::now())?;
    let measured = post_and_drain(env, &server, &viewers, probe, &baseline.last_ids).await?;
    let hog_posts = hogging.finish().await?;

    let mut record = Record::new(runtime, scenario.as_str());
    record.viewers = viewers.streaming();
    record.streams = 2;
    record.offered_posts_per_sec = Some(sizes.probe_rate + hog_rate);
    record.offered_events_per_sec = Some(sizes.probe_rate * viewers.streaming() as f64);
    record.hog_posts_per_sec = Some(hog_rate);
    measured.fill(&mut record);
    if !baseline.latency.is_empty() {
        record.baseline_latency_p50_ms = Some(quantile_ms(&baseline.latency, 0.5));
        record.baseline_latency_p99_ms = Some(quantile_ms(&baseline.latency, 0.99));
    }
    fill_posts(&mut record, &hog_posts);
    record.notes.push(format!(
        "RS256 check costs {:.0} µs here; hog rate {hog_rate:.0}/s",
        verify_cost.as_secs_f64() * 1e6
    ));
    note_viewer_failures(&mut record, &viewers);
    viewers.shutdown();
    drop(server);
    Ok(record)
}

/// The hog rate (given, or from the measured check cost) and that cost.
fn hog_rate(env: &Env<'_>, public_key: &std::path::Path, token: &str) -> Result<(f64, Duration)> {
    let cost = verify_cost(public_key, token)?;
    let rate = env.plan.sizes.hog_rate.unwrap_or_else(|| {
        (HOG_SHARE / cost.as_secs_f64()).clamp(HOG_RATE_RANGE.0, HOG_RATE_RANGE.1)
    });
    Ok((rate, cost))
}

/// The mean time of one RS256 token check, as the server would do it.
fn verify_cost(public_key: &std::path::Path, token: &str) -> Result<Duration> {
    const ROUNDS: u32 = 20;
    let pem = std::fs::read(public_key).context("reading the RSA public key")?;
    let key = DecodingKey::from_rsa_pem(&pem).context("loading the RSA public key")?;
    let validation = Validation::new(Algorithm::RS256);
    let started = Instant::now();
    for _ in 0..ROUNDS {
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .context("checking an RS256 token")?;
    }
    Ok(started.elapsed() / ROUNDS)
}
