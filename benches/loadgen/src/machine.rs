//! The machine: CPU pinning, the open-files limit, and the facts a
//! report must carry to be read later (kernel, CPUs, limits, settings).

use std::fs;
use std::io;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::args::Plan;
use crate::perf;

/// A CPU set holding exactly `cpu`.
fn single_cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu < libc::CPU_SETSIZE as usize {
        // SAFETY: CPU_SET indexes the bit array; it is unsafe only
        // because an out-of-range CPU would write past it, and `cpu` is
        // checked.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pins the calling thread to `cpu`; threads it spawns later inherit the
/// mask, so calling this first pins the whole load generator.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    set_affinity(cpu)
}

/// Pins the calling thread (or, in a forked child before `exec`, the new
/// process) to `cpu`. Async-signal-safe: one syscall, no allocation.
pub fn set_affinity(cpu: usize) -> io::Result<()> {
    let set = single_cpu_set(cpu);
    // SAFETY: `set` is a valid cpu_set_t that outlives the call, and the
    // size passed is its size; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft open-files limit to the hard one (20,000 here), for
/// this process and the servers it starts.
pub fn raise_open_files_limit() {
    let Some((_, hard)) = rlimit(libc::RLIMIT_NOFILE) else {
        return;
    };
    let want = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: `want` is a valid rlimit for the duration of the call.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) };
}

/// The (soft, hard) limit of `resource`.
fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call.
    let rc = unsafe { libc::getrlimit(resource, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// What the report says about the machine and the settings of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Facts {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub open_files_limit: Option<u64>,
    pub locked_memory_kib: Option<u64>,
    pub ephemeral_ports: String,
    pub somaxconn: String,
    pub perf: String,
    pub server_cpu: usize,
    pub load_cpu: usize,
    pub workers: usize,
    pub quick: bool,
    pub git_commit: Option<String>,
    pub started_unix_secs: u64,
    /// `/proc/loadavg` when the run started and when it ended: a busy
    /// machine (other builds, tests) makes every figure noisier.
    pub load_average_start: String,
    pub load_average_end: Option<String>,
}

impl Facts {
    /// Reads the facts; call before pinning (the CPU count reads the
    /// whole machine, not the pinned mask).
    pub fn gather(plan: &Plan) -> Facts {
        Facts {
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model: cpu_model(),
            cpus: online_cpus(),
            memory_gib: memory_gib(),
            open_files_limit: rlimit(libc::RLIMIT_NOFILE).map(|(_, hard)| hard),
            locked_memory_kib: rlimit(libc::RLIMIT_MEMLOCK).map(|(_, hard)| hard / 1024),
            ephemeral_ports: read_trimmed("/proc/sys/net/ipv4/ip_local_port_range")
                .replace('\t', "-"),
            somaxconn: read_trimmed("/proc/sys/net/core/somaxconn"),
            perf: perf::probe().describe(),
            server_cpu: plan.server_cpu,
            load_cpu: plan.load_cpu,
            workers: plan.workers,
            quick: plan.quick,
            git_commit: git_commit(),
            started_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            load_average_start: load_average(),
            load_average_end: None,
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    read_trimmed("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn cpu_model() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(0)
}

fn memory_gib() -> f64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
