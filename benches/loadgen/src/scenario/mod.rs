//! The named scenarios and what they share.
//!
//! Every (runtime, scenario) pair gets a fresh server, so that ids start
//! at 1 on every stream, memory starts from the same place, and one
//! runtime's leftovers never reach the next. The steps shared by the
//! scenarios live here:
//!
//! 1. [`Env::start_server`]: the same `serve` flags for every runtime;
//! 2. [`connect_viewers`]: open the viewers and wait until every one has
//!    its response head (or has failed);
//! 3. [`Window`]: the measurement window — server CPU, RSS and context
//!    switches from `/proc`, this process's CPU, optionally `perf stat`;
//! 4. [`post_and_drain`]: post on the open-loop schedule, then wait until
//!    every viewer has the last id its stream got, and count loss.
//!
//! Each scenario file composes these and fills its [`Record`].

mod connect_storm;
mod cpu_hog;
mod fanout_hot;
mod idle;
mod many_streams;
mod post_heavy;
mod slow_viewers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::task::LocalSet;

use crate::args::{Plan, ScenarioName};
use crate::calibrate;
use crate::clock::Clock;
use crate::machine::Facts;
use crate::perf;
use crate::poster::{self, PostPlan, PostReport};
use crate::procfs::{self, ProcSample};
use crate::progress::Progress;
use crate::report::{Record, Results, quantile_ms};
use crate::server::{BIG_VIEWER_QUEUE, Jwt, Server, ServerConfig};
use crate::tokens::Credentials;
use crate::viewer::{Behaviour, Loss, Viewers};

/// How long to wait for every viewer's response head.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Viewers that may be connecting at once in the steady scenarios
/// (below the server's listen backlog, so no SYN is dropped).
const IN_FLIGHT: usize = 512;

/// What every scenario needs from the run.
pub struct Env<'a> {
    pub plan: &'a Plan,
    pub exe: &'a Path,
    pub clock: Clock,
    pub creds: Credentials,
    pub progress: &'a Progress,
    /// Attach `perf stat` to servers during windows.
    pub perf: bool,
    /// Where logs, data dirs and key files go.
    pub work_dir: PathBuf,
}

impl Env<'_> {
    /// Starts `serve` for `runtime` with the run's common settings.
    pub fn start_server(
        &self,
        runtime: &str,
        scenario: ScenarioName,
        jwt: Jwt,
        viewer_queue: u64,
    ) -> Result<Server> {
        self.progress.phase("starting the server");
        let config = self.server_config(runtime, scenario, jwt, viewer_queue);
        Server::start(self.exe, &config)
    }

    fn server_config(
        &self,
        runtime: &str,
        scenario: ScenarioName,
        jwt: Jwt,
        viewer_queue: u64,
    ) -> ServerConfig {
        ServerConfig {
            runtime: runtime.to_string(),
            workers: self.plan.workers,
            cpu: self.plan.server_cpu,
            jwt,
            viewer_queue,
            dir: self.work_dir.clone(),
            log_name: format!("{runtime}-{}", scenario.as_str()),
        }
    }

    pub fn hs256(&self) -> Jwt {
        Jwt::Hs256 {
            secret: self.creds.secret.clone(),
        }
    }

    /// A post plan against `server` starting from the run's defaults.
    pub fn post_plan(
        &self,
        server: &Server,
        streams: Vec<String>,
        tokens: Vec<String>,
    ) -> PostPlan {
        PostPlan {
            server: server.addr,
            clock: self.clock,
            streams: streams.into(),
            tokens: tokens.into(),
            rate: 100.0,
            duration: self.plan.sizes.duration(),
            connections: 2,
            text_len: 40,
        }
    }
}

/// Runs the calibration, then every runtime × scenario, and gathers the
/// results. A failing pair becomes a failed record; the run goes on.
pub async fn run_plan(plan: &Plan, exe: &Path, mut machine: Facts) -> Result<Results> {
    let runs = plan.runtimes.len() * plan.scenarios.len() + usize::from(plan.calibrate);
    let progress = Progress::new(runs as u64);
    let work_dir = plan.out.join("work");
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let mut env = Env {
        plan,
        exe,
        clock: Clock::new(),
        creds: Credentials::new()?,
        progress: &progress,
        perf: plan.perf && perf::probe().software,
        work_dir,
    };

    let calibration = if plan.calibrate {
        progress.run("calibration");
        let c = LocalSet::new().run_until(calibrate::run(&env)).await?;
        progress.finish_run(&format!(
            "calibration: the load generator absorbs {:.0} events/s (load cpu {:.0}%)",
            c.delivered_per_sec,
            c.load_cpu_util * 100.0
        ));
        Some(c)
    } else {
        None
    };

    let mut records = Vec::new();
    for runtime in &plan.runtimes {
        for &scenario in &plan.scenarios {
            progress.run(&format!("{runtime} / {}", scenario.as_str()));
            let record = run_one(&mut env, runtime, scenario).await;
            progress.finish_run(&record.summary());
            records.push(record);
        }
    }
    progress.finish();
    machine.load_average_end = Some(crate::machine::load_average());

    let example = Jwt::Hs256 {
        secret: "<random>".into(),
    };
    let server_args = env
        .server_config("R", ScenarioName::FanoutHot, example, BIG_VIEWER_QUEUE)
        .args()
        .into_iter()
        .map(|a| {
            if a.contains("/data-") {
                "<work dir>".into()
            } else {
                a
            }
        })
        .collect();
    Ok(Results {
        machine,
        sizes: plan.sizes.clone(),
        server_args,
        calibration,
        records,
    })
}

/// One runtime in one scenario, inside its own `LocalSet` so that every
/// viewer task (and socket) is gone when it returns.
async fn run_one(env: &mut Env<'_>, runtime: &str, scenario: ScenarioName) -> Record {
    let local = LocalSet::new();
    let outcome = local.run_until(run_scenario(env, runtime, scenario)).await;
    drop(local);
    match outcome {
        Ok(record) => record,
        Err(err) => Record::failed(runtime, scenario.as_str(), &err),
    }
}

async fn run_scenario(env: &mut Env<'_>, runtime: &str, scenario: ScenarioName) -> Result<Record> {
    match scenario {
        ScenarioName::Idle => idle::run(env, runtime).await,
        ScenarioName::FanoutHot => fanout_hot::run(env, runtime).await,
        ScenarioName::ManyStreams => many_streams::run(env, runtime).await,
        ScenarioName::PostHeavy => post_heavy::run(env, runtime).await,
        ScenarioName::CpuHog => cpu_hog::run(env, runtime).await,
        ScenarioName::SlowViewers => slow_viewers::run(env, runtime).await,
        ScenarioName::ConnectStorm => connect_storm::run(env, runtime).await,
    }
}

/// Opens one viewer per `(stream index, behaviour)` and waits until each
/// is streaming or has failed. Fails if none could stream.
pub async fn connect_viewers(
    env: &Env<'_>,
    server: &Server,
    streams: &[String],
    viewers: &[(usize, Behaviour)],
) -> Result<Viewers> {
    env.progress
        .phase(&format!("connecting {} viewers", viewers.len()));
    let mut pool = Viewers::new(server.addr, env.clock, IN_FLIGHT);
    pool.set_transport(env.plan.sizes.transport);
    for &(stream, behaviour) in viewers {
        pool.spawn(stream, &streams[stream], behaviour);
    }
    let streaming = pool.wait_settled(SETTLE_TIMEOUT).await;
    if streaming == 0 && !viewers.is_empty() {
        anyhow::bail!(
            "no viewer could open its stream: {}",
            pool.errors().first().cloned().unwrap_or_default()
        );
    }
    Ok(pool)
}

/// The measurement window (see the module doc).
pub struct Window {
    started: Instant,
    server: ProcSample,
    self_cpu_ms: f64,
    /// Busy time of the server CPU and of the load CPU (every process).
    cpus_busy_ms: (Option<f64>, Option<f64>),
    cpus: (usize, usize),
    delivered: u64,
    perf: Option<perf::Session>,
    perf_error: Option<String>,
}

/// What a window measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub secs: f64,
    pub delivered: u64,
    pub server_cpu_ms: f64,
    pub load_cpu_ms: f64,
    /// CPU taken by other processes on the server CPU and the load CPU.
    pub others_ms: (Option<f64>, Option<f64>),
    pub server: ProcSample,
    pub proc_ctx_switches: u64,
    pub perf: Option<perf::Counts>,
    pub perf_error: Option<String>,
}

impl Window {
    /// Starts counting. With perf on, perf attaches first (which takes
    /// about 150 ms, before the window's own clock starts).
    pub fn open(env: &Env<'_>, server: &Server, viewers: &Viewers) -> Result<Window> {
        let (perf, perf_error) = if env.perf {
            match perf::Session::start(server.pid, &env.work_dir) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        } else {
            (None, None)
        };
        let cpus = (env.plan.server_cpu, env.plan.load_cpu);
        Ok(Window {
            started: Instant::now(),
            server: server.sample()?,
            self_cpu_ms: procfs::self_cpu_ms(),
            cpus_busy_ms: (procfs::cpu_busy_ms(cpus.0), procfs::cpu_busy_ms(cpus.1)),
            cpus,
            delivered: viewers.delivered(),
            perf,
            perf_error,
        })
    }

    pub fn close(self, server: &Server, viewers: &Viewers) -> Result<Figures> {
        let now = server.sample()?;
        let secs = self.started.elapsed().as_secs_f64();
        let load_cpu_ms = procfs::self_cpu_ms() - self.self_cpu_ms;
        let server_cpu_ms = now.cpu_ms - self.server.cpu_ms;
        let others = |cpu: usize, before: Option<f64>, ours: f64| {
            Some((procfs::cpu_busy_ms(cpu)? - before? - ours).max(0.0))
        };
        let others_ms = (
            others(self.cpus.0, self.cpus_busy_ms.0, server_cpu_ms),
            others(self.cpus.1, self.cpus_busy_ms.1, load_cpu_ms),
        );
        let delivered = viewers.delivered() - self.delivered;
        let (perf, perf_error) = match self.perf.map(perf::Session::finish) {
            Some(Ok(counts)) => (Some(counts), None),
            Some(Err(e)) => (None, Some(format!("{e:#}"))),
            None => (None, self.perf_error),
        };
        Ok(Figures {
            secs,
            delivered,
            server_cpu_ms,
            load_cpu_ms,
            others_ms,
            proc_ctx_switches: now.ctx_switches.saturating_sub(self.server.ctx_switches),
            server: now,
            perf,
            perf_error,
        })
    }
}

impl Figures {
    /// Writes the window's figures into `record`.
    pub fn fill(&self, record: &mut Record) {
        record.window_secs = Some(self.secs);
        record.delivered = self.delivered;
        record.delivered_per_sec = Some(self.delivered as f64 / self.secs);
        record.server_cpu_ms = Some(self.server_cpu_ms);
        record.server_cpu_util = Some(self.server_cpu_ms / 1000.0 / self.secs);
        record.load_cpu_util = Some(self.load_cpu_ms / 1000.0 / self.secs);
        let util = |ms: Option<f64>| ms.map(|ms| ms / 1000.0 / self.secs);
        record.server_cpu_others_util = util(self.others_ms.0);
        record.load_cpu_others_util = util(self.others_ms.1);
        if let Some(u) = record.server_cpu_others_util.filter(|u| *u > 0.05) {
            record.notes.push(format!(
                "other processes used {:.0} % of the server CPU during the window",
                u * 100.0
            ));
        }
        record.server_rss_kib = Some(self.server.rss_kib);
        record.server_threads = Some(self.server.threads);
        if self.delivered > 0 {
            let per_event = |n: u64| n as f64 / self.delivered as f64;
            record.server_cpu_ms_per_1k = Some(self.server_cpu_ms * 1000.0 / self.delivered as f64);
            record.proc_ctx_switches_per_event = Some(per_event(self.proc_ctx_switches));
            if let Some(p) = self.perf {
                record.syscalls_per_event = Some(per_event(p.syscalls));
                record.ctx_switches_per_event = Some(per_event(p.ctx_switches));
            }
        }
        if let Some(e) = &self.perf_error {
            record.notes.push(format!("perf: {e}"));
        }
        if record.load_cpu_util.is_some_and(|u| u > 0.9) {
            record
                .notes
                .push("the load generator was near 100 % CPU: figures may be client-bound".into());
        }
    }
}

/// What posting and draining measured.
pub struct Measured {
    pub figures: Figures,
    pub latency: Histogram<u64>,
    pub posts: PostReport,
    pub loss: Loss,
    /// The last id of each stream once posting ended.
    pub last_ids: Vec<u64>,
    pub caught_up: bool,
}

impl Measured {
    pub fn fill(&self, record: &mut Record) {
        self.figures.fill(record);
        record.set_latency(&self.latency);
        fill_posts(record, &self.posts);
        fill_loss(record, &self.loss, self.caught_up);
    }
}

/// Opens a window, posts `plan`, waits for the viewers to drain, closes
/// the window and counts loss. The window covers posting and draining,
/// so CPU and deliveries are counted over the same span.
///
/// `prior_ids[s]` is how many comments stream `s` already had before this
/// plan (empty: none), so that the last id a viewer must see is known.
pub async fn post_and_drain(
    env: &Env<'_>,
    server: &Server,
    viewers: &Viewers,
    plan: PostPlan,
    prior_ids: &[u64],
) -> Result<Measured> {
    let _ = viewers.take_latency();
    let window = Window::open(env, server, viewers)?;
    env.progress.phase(&format!(
        "posting {:.0}/s for {:.1} s",
        plan.rate,
        plan.duration.as_secs_f64()
    ));
    let posting = poster::start(plan, Instant::now())?;
    let posts = posting.finish().await?;

    env.progress.phase("draining");
    let last_ids: Vec<u64> = posts
        .created_per_stream
        .iter()
        .enumerate()
        .map(|(s, n)| n + prior_ids.get(s).copied().unwrap_or(0))
        .collect();
    let caught_up = viewers
        .wait_caught_up(&last_ids, env.plan.sizes.drain_timeout())
        .await;
    let figures = window.close(server, viewers)?;
    Ok(Measured {
        figures,
        latency: viewers.take_latency(),
        loss: viewers.loss(&last_ids),
        last_ids,
        posts,
        caught_up,
    })
}

pub fn fill_posts(record: &mut Record, posts: &PostReport) {
    record.posts_sent += posts.sent;
    record.posts_created += posts.created;
    record.posts_rate_limited += posts.rate_limited;
    record.posts_other_status += posts.other_status;
    record.posts_unanswered += posts.unanswered;
    record.poster_late_sends += posts.late_sends;
    record.poster_max_lag_ms = Some(posts.max_lag.as_secs_f64() * 1000.0);
    if !posts.reply_latency.is_empty() {
        record.post_reply_p99_ms = Some(quantile_ms(&posts.reply_latency, 0.99));
    }
    if posts.created < posts.sent {
        record.notes.push(format!(
            "{} of {} posts not created ({} rate-limited, {} other status, {} unanswered)",
            posts.sent - posts.created,
            posts.sent,
            posts.rate_limited,
            posts.other_status,
            posts.unanswered
        ));
    }
    for e in &posts.errors {
        record.notes.push(format!("poster: {e}"));
    }
}

pub fn fill_loss(record: &mut Record, loss: &Loss, caught_up: bool) {
    record.lost = Some(loss.lost);
    record.duplicates = loss.duplicates;
    record.resets = loss.resets;
    record.viewers_dropped = loss.dropped;
    record.caught_up = Some(caught_up);
    if !caught_up {
        record
            .notes
            .push("viewers had not caught up when the drain timed out".into());
    }
}

/// Notes about viewers that could not connect.
pub fn note_viewer_failures(record: &mut Record, viewers: &Viewers) {
    record.viewers_failed = viewers.failed();
    if viewers.failed() > 0 {
        record.notes.push(format!(
            "{} viewers failed: {}",
            viewers.failed(),
            viewers.errors().join("; ")
        ));
    }
}

/// `n` stream names `prefix-0` … `prefix-{n-1}`.
pub fn stream_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}
