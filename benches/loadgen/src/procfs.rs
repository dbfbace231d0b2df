//! What `/proc` says about the server, and `getrusage` about ourselves.
//!
//! - CPU time: `utime + stime` of `/proc/PID/stat`, which include threads
//!   that already exited. They tick at `CLK_TCK` (100 Hz here), so a
//!   sample is good to 10 ms.
//! - Memory: `VmRSS` of `/proc/PID/status`.
//! - Context switches: `/proc/PID/status` counts only the main thread,
//!   so the sample sums `voluntary_ctxt_switches` and
//!   `nonvoluntary_ctxt_switches` over `/proc/PID/task/*/status`; threads
//!   that exited drop out, so this reads low for a runtime that ends
//!   threads inside a window.

use std::fs;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// One look at a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    pub cpu_ms: f64,
    pub rss_kib: u64,
    pub threads: u64,
    pub ctx_switches: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Result<ProcSample> {
        let at = Instant::now();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let (cpu_ms, threads) = parse_stat(&stat)?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rss_kib = status_field(&status, "VmRSS:").unwrap_or(0);
        Ok(ProcSample {
            at,
            cpu_ms,
            rss_kib,
            threads,
            ctx_switches: task_ctx_switches(pid),
        })
    }
}

/// CPU milliseconds and thread count from a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Result<(f64, u64)> {
    // The command name (field 2) may hold spaces; fields after it are
    // counted from the last ')'. Field 3 (state) is index 0 there.
    let Some(close) = stat.rfind(')') else {
        bail!("malformed /proc stat line");
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        bail!("the process has exited");
    }
    let field = |n: usize| -> Result<u64> {
        let raw = fields.get(n - 3).context("short /proc stat line")?;
        raw.parse().context("non-numeric /proc stat field")
    };
    let ticks = field(14)? + field(15)?;
    let threads = field(20)?;
    Ok((ticks as f64 * 1000.0 / clock_ticks_per_sec(), threads))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// A `Name:  123 kB` style field of a status file, as a number.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Voluntary plus involuntary context switches of every live thread.
fn task_ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            status_field(&s, "voluntary_ctxt_switches:").unwrap_or(0)
                + status_field(&s, "nonvoluntary_ctxt_switches:").unwrap_or(0)
        })
        .sum()
}

/// Busy milliseconds of one CPU so far, from `/proc/stat` (user, nice,
/// system, irq, softirq and steal time of every process on it). Minus a
/// process's own CPU time, it shows how much others took from that CPU.
pub fn cpu_busy_ms(cpu: usize) -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<u64>();
    Some(busy as f64 * 1000.0 / clock_ticks_per_sec())
}

/// CPU milliseconds this process (every thread of the load generator)
/// has used so far.
pub fn self_cpu_ms() -> f64 {
    rusage_ms(libc::RUSAGE_SELF)
}

/// CPU milliseconds the calling thread has used so far.
pub fn thread_cpu_ms() -> f64 {
    rusage_ms(libc::RUSAGE_THREAD)
}

fn rusage_ms(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data; all-zero is a valid value to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable for the call.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    if rc != 0 {
        return 0.0;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "42 (live comment) S 1 42 42 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 7 0 100 1000 200 18446744073709551615";
        let (cpu_ms, threads) = parse_stat(line).unwrap();
        assert_eq!(threads, 7);
        assert!((cpu_ms - 300.0 * 1000.0 / clock_ticks_per_sec()).abs() < 1e-9);
    }

    #[test]
    fn cpu_zero_has_a_busy_time() {
        assert!(cpu_busy_ms(0).is_some());
        assert!(cpu_busy_ms(100_000).is_none());
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = ProcSample::read(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.threads >= 1);
    }
}
