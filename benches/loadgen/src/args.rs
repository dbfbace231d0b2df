//! The harness's command line and the sizes of each scenario.
//!
//! `BenchArgs` is what a user types; [`Plan`] is what the harness runs:
//! the runtimes and scenarios to cover, the CPUs to use, and [`Sizes`]
//! resolved from the `--quick` or full preset plus any explicit overrides.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::viewer::Transport;

/// The runtimes `serve --runtime` knows, in report order.
pub const ALL_RUNTIMES: [&str; 5] = ["tokio", "may", "glommio", "mio", "threads"];

/// Flags of `livecomment bench` (and of `lc-bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Small sizes: every runtime and scenario within a few minutes.
    #[arg(long)]
    pub quick: bool,

    /// Runtime to compare; repeat or comma-separate [default: all five].
    /// Any name is accepted and passed to `serve --runtime`.
    #[arg(long = "runtime", value_delimiter = ',', value_name = "R")]
    pub runtimes: Vec<String>,

    /// Scenario to run; repeat or comma-separate [default: all].
    #[arg(long = "scenario", value_delimiter = ',', value_name = "S")]
    pub scenarios: Vec<ScenarioName>,

    /// Directory for results.json, results.md, the charts and server logs.
    #[arg(long, default_value = "bench-results", value_name = "DIR")]
    pub out: PathBuf,

    /// CPU the server is pinned to.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub server_cpu: usize,

    /// CPU the load generator (this process) is pinned to.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub load_cpu: usize,

    /// How viewers receive events: Server-Sent Events or WebSocket. The
    /// calibration blaster always speaks SSE.
    #[arg(long, value_enum, default_value_t = Transport::Sse, value_name = "T")]
    pub transport: Transport,

    /// `--workers` passed to every server.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers: usize,

    /// Do not attach `perf stat` to the server (it adds a little cost to
    /// every syscall the server makes while it counts).
    #[arg(long)]
    pub no_perf: bool,

    /// Skip the calibration blaster.
    #[arg(long)]
    pub no_calibration: bool,

    /// Only re-render results.md and the charts from this results.json.
    #[arg(long, value_name = "FILE")]
    pub report_only: Option<PathBuf>,

    #[command(flatten)]
    pub sizes: SizeArgs,
}

/// Explicit sizes; each overrides the `--quick` or full preset.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SizeArgs {
    /// Seconds of posting in each scenario's measurement window.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Viewers of the hot stream (fanout-hot, and the calibration).
    #[arg(long, value_name = "N")]
    pub viewers: Option<usize>,

    /// Posts per second on the hot stream (fanout-hot).
    #[arg(long, value_name = "R")]
    pub post_rate: Option<f64>,

    /// Idle viewers (idle).
    #[arg(long, value_name = "N")]
    pub idle_viewers: Option<usize>,

    /// Streams (many-streams).
    #[arg(long, value_name = "N")]
    pub streams: Option<usize>,

    /// Posts per second, summed over all posters (post-heavy).
    #[arg(long, value_name = "R")]
    pub heavy_rate: Option<f64>,

    /// RS256 posts per second on the hog stream (cpu-hog).
    #[arg(long, value_name = "R")]
    pub hog_rate: Option<f64>,

    /// Viewers opened in the storm (connect-storm).
    #[arg(long, value_name = "N")]
    pub storm_viewers: Option<usize>,
}

/// The named scenarios, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioName {
    /// Idle viewers: memory per viewer.
    Idle,
    /// One stream, thousands of viewers, a fixed post rate.
    FanoutHot,
    /// Many streams with a few viewers each.
    ManyStreams,
    /// Many posters, a JWT verified per post, few viewers.
    PostHeavy,
    /// RS256 posters on one stream; latency measured on another.
    CpuHog,
    /// A tenth of the viewers stop reading and must be evicted.
    SlowViewers,
    /// Thousands of viewers connecting at once.
    ConnectStorm,
}

impl ScenarioName {
    pub const ALL: [ScenarioName; 7] = [
        ScenarioName::Idle,
        ScenarioName::FanoutHot,
        ScenarioName::ManyStreams,
        ScenarioName::PostHeavy,
        ScenarioName::CpuHog,
        ScenarioName::SlowViewers,
        ScenarioName::ConnectStorm,
    ];

    /// The kebab-case name used on the command line and in the results.
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Idle => "idle",
            ScenarioName::FanoutHot => "fanout-hot",
            ScenarioName::ManyStreams => "many-streams",
            ScenarioName::PostHeavy => "post-heavy",
            ScenarioName::CpuHog => "cpu-hog",
            ScenarioName::SlowViewers => "slow-viewers",
            ScenarioName::ConnectStorm => "connect-storm",
        }
    }
}

/// Every size the scenarios use, after presets and overrides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sizes {
    /// How viewers read (SSE unless `--transport ws`).
    #[serde(default)]
    pub transport: Transport,
    pub duration_secs: f64,
    pub fanout_viewers: usize,
    pub fanout_rate: f64,
    pub idle_viewers: usize,
    pub streams: usize,
    pub viewers_per_stream: usize,
    pub streams_rate: f64,
    pub heavy_rate: f64,
    pub heavy_users: usize,
    pub heavy_viewers: usize,
    pub heavy_connections: usize,
    /// `None`: chosen at run time from the measured RS256 verify cost.
    pub hog_rate: Option<f64>,
    pub probe_viewers: usize,
    pub probe_rate: f64,
    pub slow_viewers_total: usize,
    pub slow_rate: f64,
    pub storm_viewers: usize,
    pub storm_in_flight: usize,
    pub calibration_viewers: usize,
}

impl Sizes {
    /// Small enough that every runtime and scenario fit in five minutes
    /// on a 2-core machine.
    fn quick() -> Sizes {
        Sizes {
            transport: Transport::Sse,
            duration_secs: 2.0,
            fanout_viewers: 500,
            fanout_rate: 200.0,
            idle_viewers: 1_000,
            streams: 200,
            viewers_per_stream: 2,
            streams_rate: 1_000.0,
            heavy_rate: 2_000.0,
            heavy_users: 100,
            heavy_viewers: 4,
            heavy_connections: 4,
            hog_rate: None,
            probe_viewers: 100,
            probe_rate: 100.0,
            slow_viewers_total: 200,
            slow_rate: 400.0,
            storm_viewers: 2_000,
            storm_in_flight: 512,
            calibration_viewers: 500,
        }
    }

    /// The sizes the issue names for the full comparison.
    fn full() -> Sizes {
        Sizes {
            transport: Transport::Sse,
            duration_secs: 10.0,
            fanout_viewers: 2_500,
            fanout_rate: 400.0,
            idle_viewers: 10_000,
            streams: 1_000,
            viewers_per_stream: 4,
            streams_rate: 2_000.0,
            heavy_rate: 20_000.0,
            heavy_users: 1_000,
            heavy_viewers: 10,
            heavy_connections: 8,
            hog_rate: None,
            probe_viewers: 1_000,
            probe_rate: 200.0,
            slow_viewers_total: 1_000,
            slow_rate: 400.0,
            storm_viewers: 10_000,
            storm_in_flight: 1_024,
            calibration_viewers: 2_500,
        }
    }

    fn apply(&mut self, o: &SizeArgs) {
        if let Some(d) = o.duration {
            self.duration_secs = d;
        }
        if let Some(v) = o.viewers {
            self.fanout_viewers = v;
            self.calibration_viewers = v;
        }
        if let Some(r) = o.post_rate {
            self.fanout_rate = r;
        }
        if let Some(v) = o.idle_viewers {
            self.idle_viewers = v;
        }
        if let Some(s) = o.streams {
            self.streams = s;
        }
        if let Some(r) = o.heavy_rate {
            self.heavy_rate = r;
        }
        if o.hog_rate.is_some() {
            self.hog_rate = o.hog_rate;
        }
        if let Some(v) = o.storm_viewers {
            self.storm_viewers = v;
        }
    }

    /// The measurement window.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }

    /// How long viewers may take to catch up after posting stops.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64((self.duration_secs * 0.5).clamp(2.0, 10.0))
    }

    /// The largest number of client sockets any scenario opens at once.
    fn max_sockets(&self) -> usize {
        [
            self.fanout_viewers,
            self.idle_viewers,
            self.streams * self.viewers_per_stream,
            self.probe_viewers,
            self.slow_viewers_total,
            self.storm_viewers,
            self.calibration_viewers,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// What the harness will run, resolved from [`BenchArgs`].
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub runtimes: Vec<String>,
    pub scenarios: Vec<ScenarioName>,
    pub out: PathBuf,
    pub server_cpu: usize,
    pub load_cpu: usize,
    pub workers: usize,
    pub perf: bool,
    pub calibrate: bool,
    pub sizes: Sizes,
}

/// Client sockets one process may hold: the open-files cap is 20,000 and
/// the harness needs a few hundred descriptors of its own.
const MAX_CLIENT_SOCKETS: usize = 19_000;

impl Plan {
    pub fn from_args(args: &BenchArgs) -> Result<Plan> {
        let mut sizes = if args.quick {
            Sizes::quick()
        } else {
            Sizes::full()
        };
        sizes.apply(&args.sizes);
        sizes.transport = args.transport;
        if sizes.max_sockets() > MAX_CLIENT_SOCKETS {
            bail!(
                "a scenario would open {} client sockets; one load process holds at most {}",
                sizes.max_sockets(),
                MAX_CLIENT_SOCKETS
            );
        }
        if args.server_cpu == args.load_cpu {
            bail!("--server-cpu and --load-cpu must differ");
        }

        let runtimes = if args.runtimes.is_empty() {
            ALL_RUNTIMES.iter().map(|r| r.to_string()).collect()
        } else {
            args.runtimes.clone()
        };
        let scenarios = if args.scenarios.is_empty() {
            ScenarioName::ALL.to_vec()
        } else {
            args.scenarios.clone()
        };

        Ok(Plan {
            quick: args.quick,
            runtimes,
            scenarios,
            out: args.out.clone(),
            server_cpu: args.server_cpu,
            load_cpu: args.load_cpu,
            workers: args.workers,
            perf: !args.no_perf,
            calibrate: !args.no_calibration,
            sizes,
        })
    }
}
