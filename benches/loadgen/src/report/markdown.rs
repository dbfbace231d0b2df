//! `results.md`: the machine, the settings, the calibration, one table
//! per scenario, the failures, and how each figure was measured.

use std::fmt::Write;

use super::charts::Charts;
use super::{Record, Results};

/// What each scenario does, for the reader of the tables.
const SCENARIOS: [(&str, &str); 7] = [
    (
        "idle",
        "Viewers connect to one stream and receive nothing. Memory per viewer is \
         (server RSS with N viewers − RSS with none) / N.",
    ),
    (
        "fanout-hot",
        "One stream, many viewers, posts at a fixed rate: every post is delivered \
         to every viewer.",
    ),
    (
        "many-streams",
        "Many streams with a few viewers each; posts go round-robin over the streams.",
    ),
    (
        "post-heavy",
        "Many users post (a JWT verified per post) to one stream with few viewers.",
    ),
    (
        "cpu-hog",
        "The server checks RS256 tokens. Posts to a `hog` stream make the server \
         busy with signature checks while viewers of a `probe` stream measure \
         latency; the baseline is the probe alone, just before.",
    ),
    (
        "slow-viewers",
        "A tenth of the viewers stop reading (tiny receive buffer); the server must \
         evict them (`livecomment_viewer_evictions_total`) while the others keep \
         their latency and lose nothing. The viewer queue bound is 256 KiB here.",
    ),
    (
        "connect-storm",
        "Viewers connect as fast as the client can open them (a bounded number in \
         flight); then a few posts check that every one of them is served.",
    ),
];

pub fn render(results: &Results, charts: &Charts) -> String {
    let mut md = String::new();
    header(&mut md, results);
    calibration(&mut md, results);
    for (scenario, what) in SCENARIOS {
        let records: Vec<&Record> = results
            .records
            .iter()
            .filter(|r| r.scenario == scenario && r.ok)
            .collect();
        if records.is_empty() {
            continue;
        }
        let _ = writeln!(md, "## {scenario}\n\n{what}\n");
        scenario_table(&mut md, scenario, &records);
        if let Some(chart) = charts.latency.iter().find(|(s, _)| s == scenario) {
            let _ = writeln!(md, "![latency, {scenario}]({})\n", chart.1);
        }
    }
    overview_charts(&mut md, charts);
    failures(&mut md, results);
    notes(&mut md, results);
    method(&mut md);
    md
}

fn header(md: &mut String, r: &Results) {
    let m = &r.machine;
    let _ = writeln!(
        md,
        "# Runtime comparison\n\n\
         Produced by `livecomment bench{}` (the harness in `benches/loadgen`). \
         Figures compare runtimes *within this run*; read them as ratios, not \
         as absolute capacity.\n",
        if m.quick { " --quick" } else { "" }
    );
    let _ = writeln!(md, "## Machine and settings\n\n| | |\n|---|---|");
    let rows = [
        ("kernel", m.kernel.clone()),
        ("CPU", format!("{} × {}", m.cpus, m.cpu_model)),
        ("memory", format!("{} GiB", m.memory_gib)),
        ("open files (hard)", opt_int(m.open_files_limit)),
        (
            "locked memory (hard)",
            format!("{} KiB", opt_int(m.locked_memory_kib)),
        ),
        ("ephemeral ports", m.ephemeral_ports.clone()),
        ("somaxconn", m.somaxconn.clone()),
        ("perf", m.perf.clone()),
        (
            "server CPU / load CPU",
            format!("{} / {}", m.server_cpu, m.load_cpu),
        ),
        ("server workers", m.workers.to_string()),
        (
            "commit",
            m.git_commit.clone().unwrap_or_else(|| "unknown".into()),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\nEvery server ran as:\n\n```\nlivecomment {}\n```\n",
        r.server_args.join(" ")
    );
    let s = &r.sizes;
    let _ = writeln!(
        md,
        "Viewers read over {}. Sizes: window {} s; fanout-hot {} viewers × {} posts/s; idle {} viewers; \
         many-streams {} streams × {} viewers at {} posts/s; post-heavy {} posts/s from \
         {} users over {} connections to {} viewers; cpu-hog {} probe viewers at {} posts/s; \
         slow-viewers {} viewers at {} posts/s; connect-storm {} viewers ({} in flight).\n",
        s.transport.as_str(),
        s.duration_secs,
        s.fanout_viewers,
        s.fanout_rate,
        s.idle_viewers,
        s.streams,
        s.viewers_per_stream,
        s.streams_rate,
        s.heavy_rate,
        s.heavy_users,
        s.heavy_connections,
        s.heavy_viewers,
        s.probe_viewers,
        s.probe_rate,
        s.slow_viewers_total,
        s.slow_rate,
        s.storm_viewers,
        s.storm_in_flight,
    );
}

fn calibration(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## Calibration\n");
    let Some(c) = &r.calibration else {
        let _ = writeln!(md, "Not run (`--no-calibration`).\n");
        return;
    };
    let best = r
        .records
        .iter()
        .filter_map(|r| r.delivered_per_sec.map(|v| (v, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let _ = writeln!(
        md,
        "An in-process blaster on the server CPU wrote pre-encoded events as fast \
         as it could to {} viewers: the load generator absorbed **{} events/s** \
         (load CPU {:.0} %, {} lost).",
        c.viewers,
        thousands(c.delivered_per_sec),
        c.load_cpu_util * 100.0,
        c.lost
    );
    if let Some((v, rec)) = best {
        let ratio = c.delivered_per_sec / v;
        let verdict = if ratio >= 1.5 {
            "the client had headroom (goal ≥ 1.5×)"
        } else {
            "below the 1.5× goal: the fastest figures may be bounded by the client"
        };
        let _ = writeln!(
            md,
            "The best server figure was {} events/s ({} in {}): {:.1}× — {verdict}.",
            thousands(v),
            rec.runtime,
            rec.scenario,
            ratio
        );
    }
    md.push('\n');
}

fn scenario_table(md: &mut String, scenario: &str, records: &[&Record]) {
    match scenario {
        "idle" => idle_table(md, records),
        "connect-storm" => storm_table(md, records),
        _ => delivery_table(md, scenario, records),
    }
    md.push('\n');
}

fn delivery_table(md: &mut String, scenario: &str, records: &[&Record]) {
    let best_cpu = records
        .iter()
        .filter_map(|r| r.server_cpu_ms_per_1k)
        .fold(f64::INFINITY, f64::min);
    let mut cols = vec![
        "runtime",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "lost",
        "CPU-ms/1k",
        "× best",
        "syscalls/ev",
        "ctx-sw/ev",
        "server CPU",
        "load CPU",
        "others on server CPU",
    ];
    match scenario {
        "slow-viewers" => cols.extend(["evicted/slow"]),
        "cpu-hog" => cols.extend(["baseline p99 ms", "hog posts/s"]),
        "post-heavy" => cols.extend(["posts 201", "reply p99 ms"]),
        _ => {}
    }
    table_head(md, &cols);
    for r in records {
        let mut cells = vec![
            r.runtime.clone(),
            opt(r.delivered_per_sec, 0),
            opt(r.latency_p50_ms, 2),
            opt(r.latency_p99_ms, 2),
            opt(r.latency_p999_ms, 2),
            opt(r.latency_max_ms, 1),
            r.lost.map(|l| l.to_string()).unwrap_or_else(|| "–".into()),
            opt(r.server_cpu_ms_per_1k, 1),
            opt(r.server_cpu_ms_per_1k.map(|v| v / best_cpu), 2),
            opt(r.syscalls_per_event, 2),
            opt(ctx_switches(r), 3),
            percent(r.server_cpu_util),
            percent(r.load_cpu_util),
            percent(r.server_cpu_others_util),
        ];
        match scenario {
            "slow-viewers" => cells.push(format!(
                "{}/{}",
                opt(r.evictions, 0),
                r.slow_viewers.unwrap_or(0)
            )),
            "cpu-hog" => {
                cells.push(opt(r.baseline_latency_p99_ms, 2));
                cells.push(opt(r.hog_posts_per_sec, 0));
            }
            "post-heavy" => {
                cells.push(r.posts_created.to_string());
                cells.push(opt(r.post_reply_p99_ms, 2));
            }
            _ => {}
        }
        table_row(md, &cells);
    }
}

/// Context switches per event: perf's count, else the /proc one.
fn ctx_switches(r: &Record) -> Option<f64> {
    r.ctx_switches_per_event.or(r.proc_ctx_switches_per_event)
}

fn idle_table(md: &mut String, records: &[&Record]) {
    table_head(
        md,
        &[
            "runtime",
            "viewers",
            "RSS KiB/viewer",
            "server RSS KiB",
            "server threads",
            "idle CPU ms/s",
        ],
    );
    for r in records {
        table_row(
            md,
            &[
                r.runtime.clone(),
                r.viewers.to_string(),
                opt(r.rss_kib_per_viewer, 2),
                r.server_rss_kib.map(|v| v.to_string()).unwrap_or_default(),
                r.server_threads.map(|v| v.to_string()).unwrap_or_default(),
                opt(r.idle_server_cpu_ms_per_sec, 2),
            ],
        );
    }
}

fn storm_table(md: &mut String, records: &[&Record]) {
    table_head(
        md,
        &[
            "runtime",
            "viewers",
            "connects/s",
            "all connected ms",
            "connect p50 ms",
            "connect p99 ms",
            "failed",
            "CPU-ms/1k connects",
            "then p99 ms",
            "lost",
        ],
    );
    for r in records {
        table_row(
            md,
            &[
                r.runtime.clone(),
                r.viewers.to_string(),
                opt(r.connect_per_sec, 0),
                opt(r.connect_total_ms, 0),
                opt(r.connect_p50_ms, 2),
                opt(r.connect_p99_ms, 2),
                r.viewers_failed.to_string(),
                opt(r.server_cpu_ms_per_1k_connects, 1),
                opt(r.latency_p99_ms, 2),
                r.lost.map(|l| l.to_string()).unwrap_or_else(|| "–".into()),
            ],
        );
    }
}

fn overview_charts(md: &mut String, charts: &Charts) {
    if charts.overview.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Overview charts\n");
    for (title, file) in &charts.overview {
        let _ = writeln!(md, "![{title}]({file})\n");
    }
}

fn failures(md: &mut String, r: &Results) {
    let failed: Vec<&Record> = r.records.iter().filter(|r| !r.ok).collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Failures\n");
    table_head(md, &["runtime", "scenario", "error"]);
    for f in failed {
        let err = f.error.clone().unwrap_or_default().replace('|', "\\|");
        table_row(md, &[f.runtime.clone(), f.scenario.clone(), err]);
    }
    md.push('\n');
}

fn notes(md: &mut String, r: &Results) {
    let noted: Vec<&Record> = r.records.iter().filter(|r| !r.notes.is_empty()).collect();
    if noted.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Notes from the run\n");
    for rec in noted {
        for n in &rec.notes {
            let _ = writeln!(md, "- {} / {}: {n}", rec.runtime, rec.scenario);
        }
    }
    md.push('\n');
}

fn method(md: &mut String) {
    md.push_str(
        "## How the figures are measured\n\n\
         - **delivered/s**: comment events received by all viewers during the window \
         (posting plus the drain until every viewer has the last id), divided by its length.\n\
         - **latency**: from each post's *scheduled* send time (carried in its text as \
         `t=<unix nanos>`) to the read that delivered the event, so a server that delays \
         posters is charged for it (no coordinated omission). Posters are open-loop: post k \
         is due at start + k/rate whatever happened before.\n\
         - **lost**: per viewer, ids skipped plus ids never received up to the last id \
         the posters got a 201 for; must be 0.\n\
         - **CPU-ms/1k**: server user+system CPU (`/proc/PID/stat`, 10 ms ticks) over the \
         window, per 1,000 delivered events; **× best** divides by the lowest in the table.\n\
         - **syscalls/ev, ctx-sw/ev**: `perf stat -e raw_syscalls:sys_enter,context-switches \
         -p PID` over the window, per delivered event; when perf is missing, context switches \
         come from `/proc/PID/task/*/status` (live threads only) and syscalls stay empty.\n\
         - **server CPU / load CPU**: share of one CPU used by the server and by the load \
         generator; a load CPU near 100 % means the client may be the bottleneck.\n\
         - **others on server CPU**: share of the server's CPU that other processes on the \
         machine used during the window (`/proc/stat` busy time minus the server's own); \
         anything but a few percent means the figures carry outside noise.\n\
         - **RSS KiB/viewer**: (`VmRSS` with N idle viewers − `VmRSS` with none) / N.\n",
    );
}

fn table_head(md: &mut String, cols: &[&str]) {
    let _ = writeln!(md, "| {} |", cols.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(cols.len()));
}

fn table_row(md: &mut String, cells: &[String]) {
    let _ = writeln!(md, "| {} |", cells.join(" | "));
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if decimals == 0 => thousands(v),
        Some(v) => format!("{v:.decimals$}"),
        None => "–".into(),
    }
}

fn opt_int(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "unknown".into())
}

fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0} %", v * 100.0))
        .unwrap_or_else(|| "–".into())
}

/// `1234567.8` as `1,234,568`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.0), "0");
    }
}
