//! One `livecomment serve` process per scenario.
//!
//! Every runtime gets the same flags (workers, limits, queue bound, rate
//! limit), differing only in `--runtime`. The child is pinned to the
//! server CPU between `fork` and `exec`, listens on a free loopback port,
//! and announces it with one line on stdout; its logs go to a file in
//! the output directory. A runtime that does not exist yet makes `serve`
//! exit at once: [`Server::start`] then fails with the end of the log.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::http;
use crate::procfs::ProcSample;

/// How long `serve` may take to print its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// What the readiness line starts with (docs/cli.md).
const READY_PREFIX: &str = "livecomment listening on http://";

/// Connections a server accepts: one process holds about 19,000 under
/// the 20,000 open-files cap.
pub const MAX_CONNECTIONS: usize = 19_000;

/// Queue bound for scenarios that must not evict: big enough that no
/// reading viewer ever reaches it.
pub const BIG_VIEWER_QUEUE: u64 = 64 << 20;

/// Posting limit high enough that the limiter never refuses a benchmark
/// post (each benchmark user posts far below it).
const RATE_LIMIT: u64 = 1_000_000;

/// How the server checks tokens.
#[derive(Debug, Clone)]
pub enum Jwt {
    Hs256 { secret: String },
    Rs256 { public_key: PathBuf },
}

/// The settings of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub runtime: String,
    pub workers: usize,
    pub cpu: usize,
    pub jwt: Jwt,
    pub viewer_queue: u64,
    /// Directory for the data dir and the log.
    pub dir: PathBuf,
    /// Name of this server's log file inside `dir`.
    pub log_name: String,
}

impl ServerConfig {
    /// The `serve` arguments, the same for every runtime.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--runtime".into(),
            self.runtime.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--workers".into(),
            self.workers.to_string(),
            "--max-connections".into(),
            MAX_CONNECTIONS.to_string(),
            "--viewer-queue".into(),
            self.viewer_queue.to_string(),
            "--rate-per-sec".into(),
            RATE_LIMIT.to_string(),
            "--rate-burst".into(),
            RATE_LIMIT.to_string(),
            "--data-dir".into(),
            self.data_dir().display().to_string(),
        ];
        match &self.jwt {
            Jwt::Hs256 { secret } => args.extend(["--jwt-secret".into(), secret.clone()]),
            Jwt::Rs256 { public_key } => args.extend([
                "--jwt-alg".into(),
                "RS256".into(),
                "--jwt-public-key".into(),
                public_key.display().to_string(),
            ]),
        }
        args
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join(format!("data-{}", self.log_name))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.log_name))
    }
}

/// How long a fresh server must stay up after its readiness line to be
/// taken as started (a backend that is not written yet exits at once).
const SURVIVE: Duration = Duration::from_millis(100);

/// A running server.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl Server {
    /// Starts `exe serve …` pinned to `config.cpu` and waits for its
    /// readiness line.
    pub fn start(exe: &Path, config: &ServerConfig) -> Result<Server> {
        fs::create_dir_all(&config.dir)?;
        let log_path = config.log_path();
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let cpu = config.cpu;

        let mut command = Command::new(exe);
        command
            .args(config.args())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: the closure runs in the forked child before exec and
        // only makes the sched_setaffinity syscall (async-signal-safe,
        // no allocation, no locks).
        unsafe { command.pre_exec(move || crate::machine::set_affinity(cpu)) };
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let pid = child.id();

        let ready = wait_ready(&mut child).and_then(|addr| {
            std::thread::sleep(SURVIVE);
            match child.try_wait() {
                Ok(Some(status)) => bail!("serve exited right after listening ({status})"),
                _ => Ok(addr),
            }
        });
        match ready {
            Ok(addr) => Ok(Server {
                child,
                addr,
                pid,
                data_dir: config.data_dir(),
                log_path,
            }),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = fs::remove_dir_all(config.data_dir());
                Err(err.context(log_excerpt(&log_path)))
            }
        }
    }

    /// CPU time, RSS and context switches of the server right now; if it
    /// has exited, the error quotes its log.
    pub fn sample(&self) -> Result<ProcSample> {
        ProcSample::read(self.pid)
            .with_context(|| format!("server gone: {}", log_excerpt(&self.log_path)))
    }

    /// The server's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (status, body) = http::get(self.addr, "/metrics", Duration::from_secs(5))?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Dropping a server kills it (SIGKILL: a graceful drain would take
/// seconds) and removes its data directory.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.data_dir);
    }
}

/// Reads the readiness line from the child's stdout on a helper thread,
/// which then keeps draining stdout so the child never blocks on it.
fn wait_ready(child: &mut Child) -> Result<SocketAddr> {
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        let read = lines.read_line(&mut first);
        let _ = tx.send(read.map(|_| first));
        let _ = std::io::copy(&mut lines, &mut std::io::sink());
    });

    let line = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) => line.context("reading the readiness line")?,
        Err(_) => bail!("no readiness line within {READY_TIMEOUT:?}"),
    };
    let Some(rest) = line.trim().strip_prefix(READY_PREFIX) else {
        let status = child.wait().ok().map(|s| s.to_string()).unwrap_or_default();
        bail!("serve exited before listening ({status})");
    };
    rest.trim_end_matches('/')
        .parse()
        .with_context(|| format!("bad address in readiness line {line:?}"))
}

/// The last few lines of a server log that are not part of a backtrace,
/// to explain a failure.
fn log_excerpt(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Stack backtrace:"))
        .filter(|l| !l.trim().is_empty() && !l.starts_with(char::is_whitespace))
        .collect();
    if lines.is_empty() {
        return format!("server log {} is empty", path.display());
    }
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
