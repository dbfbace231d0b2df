//! Syscall and context-switch counts from `perf stat`, where it works.
//!
//! Hardware counters (`instructions`) are often missing in a VM, but the
//! `raw_syscalls:sys_enter` tracepoint and the `context-switches`
//! software event usually work; [`probe`] finds out which. A session
//! attaches to the server with `perf stat -p PID` for one measurement
//! window and is stopped with SIGINT, after which perf writes its counts.
//!
//! Counting syscalls through a tracepoint adds a little to each syscall
//! the server makes; every runtime pays the same, and `--no-perf` turns
//! it off.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const EVENTS: &str = "raw_syscalls:sys_enter,context-switches";

/// What `perf` can count on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Support {
    /// Syscalls and context switches can be counted.
    pub software: bool,
    /// Hardware counters (instructions) work too.
    pub hardware: bool,
}

impl Support {
    pub fn describe(self) -> String {
        match (self.software, self.hardware) {
            (true, true) => "perf stat works, hardware counters included".into(),
            (true, false) => "perf stat counts syscalls and context switches; \
                              hardware counters (instructions) are not supported here"
                .into(),
            (false, _) => "perf stat unavailable: syscall counts are null; \
                           context switches come from /proc"
                .into(),
        }
    }
}

/// Runs `perf stat` on `true` to see which events count.
pub fn probe() -> Support {
    let counts = |events: &str| -> bool {
        let Ok(out) = Command::new("perf")
            .args(["stat", "-x", ",", "-e", events, "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
        else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stderr);
        out.status.success() && !text.is_empty() && parse_counts(&text).iter().all(Option::is_some)
    };
    Support {
        software: counts(EVENTS),
        hardware: counts("instructions"),
    }
}

/// Counts over one window.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub syscalls: u64,
    pub ctx_switches: u64,
}

/// A `perf stat -p PID` child counting until [`Session::finish`].
pub struct Session {
    child: Child,
    out: PathBuf,
}

impl Session {
    /// Attaches to `pid`, writing counts to a file in `dir`. Waits briefly
    /// so that perf has opened its counters before the window starts.
    pub fn start(pid: u32, dir: &Path) -> Result<Session> {
        let out = dir.join(format!("perf-{pid}.csv"));
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                EVENTS,
                "-p",
                &pid.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf stat")?;
        std::thread::sleep(Duration::from_millis(150));
        Ok(Session { child, out })
    }

    /// Stops perf and reads its counts.
    pub fn finish(mut self) -> Result<Counts> {
        let pid = libc::pid_t::try_from(self.child.id()).context("perf pid out of range")?;
        // SAFETY: plain kill(2) on our own child, which we have not reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        self.child.wait().context("waiting for perf")?;

        let text = fs::read_to_string(&self.out).context("reading perf output")?;
        let _ = fs::remove_file(&self.out);
        match parse_counts(&text)[..] {
            [Some(syscalls), Some(ctx_switches)] => Ok(Counts {
                syscalls,
                ctx_switches,
            }),
            _ => bail!("perf counted nothing (too many threads to attach to?)"),
        }
    }
}

/// The counts in `perf stat -x ,` output, one per event line, in order;
/// `None` for `<not counted>` or `<not supported>`.
fn parse_counts(text: &str) -> Vec<Option<u64>> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| l.split(',').nth(2).is_some_and(|e| !e.is_empty()))
        .map(|l| l.split(',').next().and_then(|v| v.trim().parse().ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_lines_parse_in_order() {
        let text = "# started on Wed\n\n\
                    109,,raw_syscalls:sys_enter,943958,100.00,,\n\
                    <not counted>,,context-switches,0,100.00,,\n";
        assert_eq!(parse_counts(text), vec![Some(109), None]);
    }
}
