//! What a run produces: `results.json` (one [`Record`] per runtime and
//! scenario, with the machine facts and the calibration), `results.md`
//! (tables), and SVG charts.
//!
//! `--report-only FILE` re-renders the Markdown and the charts from a
//! saved `results.json`, so `docs/results.md` can be regenerated without
//! running the benchmark again.

mod charts;
mod markdown;

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::Sizes;
use crate::machine::Facts;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Facts,
    pub sizes: Sizes,
    /// The `serve` flags every runtime got (secret elided).
    pub server_args: Vec<String>,
    pub calibration: Option<Calibration>,
    pub records: Vec<Record>,
}

/// How fast the viewers absorb events from an in-process blaster that
/// writes pre-encoded events as fast as it can.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub viewers: usize,
    pub delivered_per_sec: f64,
    pub load_cpu_util: f64,
    pub window_secs: f64,
    pub lost: u64,
}

/// One runtime in one scenario. Figures that do not apply (or could not
/// be measured) are `null`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub runtime: String,
    pub scenario: String,
    pub ok: bool,
    pub error: Option<String>,

    // The headline figures.
    pub delivered_per_sec: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_p999_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub lost: Option<u64>,
    pub server_cpu_ms_per_1k: Option<f64>,
    pub rss_kib_per_viewer: Option<f64>,
    /// From `perf stat` (null when perf does not work).
    pub syscalls_per_event: Option<f64>,
    pub ctx_switches_per_event: Option<f64>,
    /// From `/proc/PID/task/*/status` (live threads only).
    pub proc_ctx_switches_per_event: Option<f64>,

    // The load.
    pub viewers: usize,
    pub streams: usize,
    pub offered_posts_per_sec: Option<f64>,
    pub offered_events_per_sec: Option<f64>,
    pub delivered: u64,
    pub window_secs: Option<f64>,

    // Correctness.
    pub duplicates: u64,
    pub resets: u64,
    pub viewers_failed: usize,
    pub viewers_dropped: usize,
    pub caught_up: Option<bool>,

    // Posting.
    pub posts_sent: u64,
    pub posts_created: u64,
    pub posts_rate_limited: u64,
    pub posts_other_status: u64,
    pub posts_unanswered: u64,
    pub post_reply_p99_ms: Option<f64>,
    pub poster_late_sends: u64,
    pub poster_max_lag_ms: Option<f64>,

    // The server and the load generator.
    pub server_cpu_ms: Option<f64>,
    pub server_cpu_util: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub server_threads: Option<u64>,
    pub load_cpu_util: Option<f64>,
    /// Share of the server CPU / load CPU that *other* processes used
    /// during the window (from `/proc/stat`): noise from outside.
    pub server_cpu_others_util: Option<f64>,
    pub load_cpu_others_util: Option<f64>,

    // Scenario-specific.
    pub evictions: Option<f64>,
    pub slow_viewers: Option<usize>,
    pub connect_per_sec: Option<f64>,
    pub connect_total_ms: Option<f64>,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    pub server_cpu_ms_per_1k_connects: Option<f64>,
    pub baseline_latency_p50_ms: Option<f64>,
    pub baseline_latency_p99_ms: Option<f64>,
    pub hog_posts_per_sec: Option<f64>,
    pub idle_server_cpu_ms_per_sec: Option<f64>,

    /// `[percentile, ms]` points of the latency distribution, for charts.
    pub latency_percentiles: Vec<[f64; 2]>,
    pub notes: Vec<String>,
}

impl Record {
    pub fn new(runtime: &str, scenario: &str) -> Record {
        Record {
            runtime: runtime.to_string(),
            scenario: scenario.to_string(),
            ok: true,
            ..Record::default()
        }
    }

    pub fn failed(runtime: &str, scenario: &str, error: &anyhow::Error) -> Record {
        Record {
            ok: false,
            error: Some(format!("{error:#}")),
            ..Record::new(runtime, scenario)
        }
    }

    /// Fills the latency figures from a nanosecond histogram.
    pub fn set_latency(&mut self, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        self.latency_p50_ms = Some(quantile_ms(h, 0.5));
        self.latency_p99_ms = Some(quantile_ms(h, 0.99));
        self.latency_p999_ms = Some(quantile_ms(h, 0.999));
        self.latency_max_ms = Some(ms(h.max()));
        self.latency_percentiles = percentile_points(h);
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        let head = format!("{:<8} {:<14}", self.runtime, self.scenario);
        if let Some(err) = &self.error {
            let first = err.lines().next().unwrap_or_default();
            return format!("{head} FAILED: {first}");
        }
        let mut parts = Vec::new();
        if let Some(v) = self.delivered_per_sec {
            parts.push(format!("{v:.0} ev/s"));
        }
        if let (Some(p50), Some(p99)) = (self.latency_p50_ms, self.latency_p99_ms) {
            parts.push(format!("p50 {p50:.2} ms p99 {p99:.2} ms"));
        }
        if let Some(lost) = self.lost {
            parts.push(format!("lost {lost}"));
        }
        if let Some(cpu) = self.server_cpu_ms_per_1k {
            parts.push(format!("{cpu:.1} cpu-ms/1k"));
        }
        if let Some(kib) = self.rss_kib_per_viewer {
            parts.push(format!("{kib:.1} KiB/viewer"));
        }
        if let Some(rate) = self.connect_per_sec {
            parts.push(format!("{rate:.0} connects/s"));
        }
        if let Some(ev) = self.evictions {
            parts.push(format!("{ev:.0} evicted"));
        }
        if let Some(util) = self.load_cpu_util {
            parts.push(format!("load cpu {:.0}%", util * 100.0));
        }
        format!("{head} {}", parts.join(", "))
    }
}

pub fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    ms(h.value_at_quantile(q))
}

/// Points every tenth of a "nine" (90 %, 99 %, 99.9 %, …) up to what the
/// sample size supports, then the maximum.
fn percentile_points(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    let n = h.len() as f64;
    let mut points = Vec::new();
    for tenth in 0..=60 {
        let nines = f64::from(tenth) / 10.0;
        let q = 1.0 - 10f64.powf(-nines);
        if (1.0 - q) * n < 1.0 {
            break;
        }
        points.push([q * 100.0, quantile_ms(h, q)]);
    }
    points.push([100.0, ms(h.max())]);
    points
}

/// Writes results.json, results.md and the charts into `out`.
pub fn write_all(results: &Results, out: &Path) -> Result<()> {
    fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(results)?;
    fs::write(out.join("results.json"), json).context("writing results.json")?;
    render(results, out)
}

/// Re-renders results.md and the charts from a saved results.json.
pub fn rerender(json: &Path, out: &Path) -> Result<()> {
    let text = fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let results: Results = serde_json::from_str(&text).context("parsing results.json")?;
    fs::create_dir_all(out)?;
    render(&results, out)
}

fn render(results: &Results, out: &Path) -> Result<()> {
    let charts = charts::draw_all(results, out).context("drawing charts")?;
    let md = markdown::render(results, &charts);
    fs::write(out.join("results.md"), md).context("writing results.md")?;
    Ok(())
}
