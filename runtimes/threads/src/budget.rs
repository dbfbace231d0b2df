//! How many connections this machine can give threads to, computed
//! once at start-up.
//!
//! A viewer is two threads (its connection thread and its watcher), and
//! every thread costs the process memory mappings and the machine a
//! task. Running out of tasks is survivable: `clone` fails, the spawn
//! returns an error and that one connection is dropped. Running out of
//! mappings is not: std maps each new thread's signal stack *inside*
//! the new thread, and when that `mmap` fails it aborts the whole
//! process. So the bound has to hold before the limit is reached, and
//! the accept thread enforces it the way it enforces
//! `--max-connections`: the binary lowers that setting to
//! [`connection_limit`], and the core answers 503 past it.
//!
//! What the bound counts:
//!
//! 1. Mappings: `vm.max_map_count`, less the lines of `/proc/self/maps`
//!    now, less [`MAPPINGS_RESERVE`], at [`MAPPINGS_PER_THREAD`] per
//!    thread.
//! 2. Tasks: each of `kernel.pid_max`, `kernel.threads-max` and the
//!    soft `RLIMIT_NPROC`, less the threads alive on the machine now,
//!    less [`THREADS_RESERVE`].
//!
//! Each allows some number of threads; the accept threads come out of
//! it, and what is left is divided by [`THREADS_PER_CONNECTION`]. The
//! smallest wins. A limit whose file is missing or unparsable (or
//! `unlimited`) is not applied; with none applied there is no bound.

use livecomment_core::ConnectionLimit;
use std::fs;

/// Mappings a thread adds to `/proc/self/maps`: its stack and the guard
/// page below it, and std's signal stack and its guard page.
///
/// Measured with `livecomment serve --runtime threads --workers 1` in a
/// release build: 1,000 and then 3,000 idle SSE viewers (a raw-socket
/// script) added 8,028 and 24,028 lines to `/proc/PID/maps`, so 8 per
/// viewer, 4 per thread. A small program that parks N std threads gave
/// the same 4.0 with 16 KiB, 64 KiB and 256 KiB stacks: the count does
/// not depend on `--stack-size`.
pub const MAPPINGS_PER_THREAD: usize = 4;

/// Threads of a viewer: the connection thread and its watcher. A
/// request connection needs only one; the bound assumes every
/// connection may become a viewer.
pub const THREADS_PER_CONNECTION: usize = 2;

/// Mappings kept free for what is not a live thread:
///
/// - glibc keeps the stacks of exited threads mapped for reuse, up to
///   40 MiB of them, two mappings each; with 16 KiB watcher stacks (and
///   a 4 KiB guard) that is at most 4,096 (1,730 were left after 1,000
///   viewers closed);
/// - 1,024 for whatever else the process maps later: malloc's arenas
///   and large blocks, the hub's growing tables, and the moment between
///   a connection's end (when the core stops counting it) and its
///   threads' exit.
pub const MAPPINGS_RESERVE: usize = 2 * (40 << 20) / (super::WATCHER_STACK_SIZE + 4096) + 1024;

/// Tasks kept free for the rest of the machine (other processes, and
/// `pid_max`'s first 300 pids, which the kernel does not hand out again
/// once it wraps around) and this process's own helpers.
pub const THREADS_RESERVE: usize = 512;

/// What the machine allows and what is in use, as read at start-up.
/// `None`: unknown, so the limits needing it are not applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Machine {
    /// `vm.max_map_count`: mappings one process may have.
    pub max_map_count: Option<usize>,
    /// Mappings this process has now (lines of `/proc/self/maps`).
    pub mappings: Option<usize>,
    /// `kernel.pid_max`: pids are below it, machine-wide.
    pub pid_max: Option<usize>,
    /// `kernel.threads-max`: tasks the machine may have.
    pub threads_max: Option<usize>,
    /// Soft `RLIMIT_NPROC`: tasks this user may have.
    pub nproc: Option<usize>,
    /// Tasks alive on the machine now (`/proc/loadavg`). It stands for
    /// this user's count under `RLIMIT_NPROC` too: never less than it.
    pub threads: Option<usize>,
}

impl Machine {
    /// Reads the limits from `/proc`.
    pub fn read() -> Self {
        Machine {
            max_map_count: read_number("/proc/sys/vm/max_map_count"),
            mappings: fs::read_to_string("/proc/self/maps")
                .ok()
                .map(|maps| maps.lines().count()),
            pid_max: read_number("/proc/sys/kernel/pid_max"),
            threads_max: read_number("/proc/sys/kernel/threads-max"),
            nproc: read_nproc(),
            threads: read_threads(),
        }
    }
}

/// The most connections `machine` can hold, with `workers` accept
/// threads besides, and the limit that sets it; `None` if no limit
/// could be applied.
pub fn connection_limit(machine: &Machine, workers: usize) -> Option<ConnectionLimit> {
    let mut limits = Vec::new();

    // 1. Mappings.
    if let (Some(max), Some(used)) = (machine.max_map_count, machine.mappings) {
        let free = max.saturating_sub(used.saturating_add(MAPPINGS_RESERVE));
        let reason = format!(
            "vm.max_map_count is {max}, the process has {used} mappings, \
             {MAPPINGS_RESERVE} are kept free and a thread takes {MAPPINGS_PER_THREAD}"
        );
        limits.push((free / MAPPINGS_PER_THREAD, reason));
    }

    // 2. Tasks, machine-wide and per user.
    if let Some(alive) = machine.threads {
        let tasks = [
            ("kernel.pid_max", machine.pid_max),
            ("kernel.threads-max", machine.threads_max),
            ("RLIMIT_NPROC", machine.nproc),
        ];
        for (name, max) in tasks {
            let Some(max) = max else { continue };
            let free = max.saturating_sub(alive.saturating_add(THREADS_RESERVE));
            let reason = format!(
                "{name} is {max}, {alive} threads are alive on the machine \
                 and {THREADS_RESERVE} are kept free"
            );
            limits.push((free, reason));
        }
    }

    // The smallest, in connections.
    let (threads, reason) = limits.into_iter().min_by_key(|(threads, _)| *threads)?;
    let max = threads.saturating_sub(workers) / THREADS_PER_CONNECTION;
    Some(ConnectionLimit {
        max,
        reason: format!("{reason}; a viewer takes {THREADS_PER_CONNECTION} threads"),
    })
}

/// A file holding one number, such as a sysctl.
fn read_number(path: &str) -> Option<usize> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The soft `RLIMIT_NPROC`, from `/proc/self/limits` (the row "Max
/// processes", first column); `unlimited` does not parse, as it should.
fn read_nproc() -> Option<usize> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let row = limits
        .lines()
        .find(|row| row.starts_with("Max processes"))?;
    row.split_whitespace().nth(2)?.parse().ok()
}

/// Tasks alive on the machine: the fourth field of `/proc/loadavg`
/// reads "running/total".
fn read_threads() -> Option<usize> {
    let loadavg = fs::read_to_string("/proc/loadavg").ok()?;
    let (_, total) = loadavg.split_whitespace().nth(3)?.split_once('/')?;
    total.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine this was written on, a fresh server's mappings and
    /// the machine's threads.
    fn this_machine() -> Machine {
        Machine {
            max_map_count: Some(65_530),
            mappings: Some(45),
            pid_max: Some(32_768),
            threads_max: Some(192_739),
            nproc: Some(96_369),
            threads: Some(104),
        }
    }

    #[test]
    fn mappings_bind_with_the_default_max_map_count() {
        let limit = connection_limit(&this_machine(), 2).expect("limits were given");
        let threads = (65_530 - 45 - MAPPINGS_RESERVE) / MAPPINGS_PER_THREAD;
        assert_eq!(limit.max, (threads - 2) / 2);
        assert!(limit.reason.starts_with("vm.max_map_count is 65530"));
    }

    #[test]
    fn the_reserve_is_the_stack_cache_and_a_thousand_more() {
        assert_eq!(MAPPINGS_RESERVE, 4096 + 1024);
    }

    #[test]
    fn pid_max_binds_when_mappings_are_plenty() {
        let machine = Machine {
            max_map_count: Some(1 << 20),
            ..this_machine()
        };
        let limit = connection_limit(&machine, 1).expect("limits were given");
        assert_eq!(limit.max, (32_768 - 104 - THREADS_RESERVE - 1) / 2);
        assert!(limit.reason.starts_with("kernel.pid_max is 32768"));
    }

    #[test]
    fn a_low_rlimit_nproc_binds() {
        let machine = Machine {
            nproc: Some(1_000),
            ..this_machine()
        };
        let limit = connection_limit(&machine, 4).expect("limits were given");
        assert_eq!(limit.max, (1_000 - 104 - THREADS_RESERVE - 4) / 2);
        assert!(limit.reason.starts_with("RLIMIT_NPROC"));
    }

    #[test]
    fn a_limit_already_exceeded_allows_no_connection() {
        let machine = Machine {
            mappings: Some(70_000),
            ..this_machine()
        };
        let limit = connection_limit(&machine, 8).expect("limits were given");
        assert_eq!(limit.max, 0);
    }

    #[test]
    fn an_unknown_use_skips_its_limits() {
        let machine = Machine {
            mappings: None,
            threads: None,
            ..this_machine()
        };
        assert_eq!(connection_limit(&machine, 1), None);
    }

    #[test]
    fn nothing_read_means_no_bound() {
        assert_eq!(connection_limit(&Machine::default(), 1), None);
    }

    #[test]
    fn reading_this_machine_does_not_panic() {
        // Whatever /proc holds here, reading it and computing a bound
        // must not fail.
        let _ = connection_limit(&Machine::read(), 1);
    }
}
