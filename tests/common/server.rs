//! Starting `livecomment serve` for one test, and running the CLI.
//!
//! Each test owns its server: port 0, two workers, a random HS256 secret
//! and a fresh data directory, so tests run in parallel without sharing
//! anything. The server is killed when the [`Server`] is dropped, and
//! its stdout and stderr are drained by threads into the test's output,
//! so a chatty server never blocks on a full pipe and a failing test
//! shows the server's logs.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{Conn, Request, Response};
use super::metrics::Metrics;
use super::sse::SseStream;
use super::tokens::{claims, hs256, random_secret};
use super::{PATIENCE, poll_until};

const BINARY: &str = env!("CARGO_BIN_EXE_livecomment");

/// How long `serve` may take to print its readiness line.
const STARTUP: Duration = Duration::from_secs(20);

/// A running `livecomment serve`, killed on drop.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    runtime: String,
    secret: Option<String>,
    data_dir: PathBuf,
    _owned_dir: Option<TempDir>,
}

impl Server {
    /// Starts a server with a random HS256 secret and its own data dir.
    pub fn start(runtime: &str, extra_args: &[&str]) -> Server {
        let secret = random_secret();
        let dir = TempDir::new("data");
        let mut args = vec!["--jwt-secret", secret.as_str()];
        args.extend_from_slice(extra_args);
        let mut server = Server::launch(runtime, dir.path(), &args);
        server.secret = Some(secret);
        server._owned_dir = Some(dir);
        server
    }

    /// Starts a server given no `--jwt-secret`, on a data dir the caller
    /// owns (so it can outlive the server, or hold key files).
    pub fn start_without_secret(runtime: &str, data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::launch(runtime, data_dir, extra_args)
    }

    fn launch(runtime: &str, data_dir: &Path, extra_args: &[&str]) -> Server {
        let mut child = Command::new(BINARY)
            .args(["serve", "--runtime", runtime, "--listen", "127.0.0.1:0"])
            .args(["--workers", "2", "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env_remove("LIVECOMMENT_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("spawning {BINARY}: {err}"));
        forward_lines(child.stderr.take().unwrap(), format!("[{runtime} stderr]"));
        let first_line = read_first_line(child.stdout.take().unwrap(), runtime);

        let Some(line) = first_line else {
            let status = child.wait();
            panic!("serve ended before printing its address: {status:?} (stderr above)");
        };
        let addr = parse_listening_line(&line);
        let data_dir = data_dir.to_path_buf();
        let runtime = runtime.to_string();
        Server {
            child,
            addr,
            runtime,
            secret: None,
            data_dir,
            _owned_dir: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The HS256 secret this server was started with.
    pub fn secret(&self) -> &str {
        self.secret
            .as_deref()
            .expect("a server started with Server::start")
    }

    /// A valid token for `sub`, expiring in an hour.
    pub fn token(&self, sub: &str) -> String {
        hs256(self.secret(), &claims(sub))
    }

    /// A new connection to the server.
    pub fn connect(&self) -> Conn {
        Conn::open(self.addr)
    }

    /// Sends `request` on a new connection and reads the response.
    pub fn send(&self, request: Request) -> Response {
        self.connect()
            .exchange(&request.header("Connection", "close"))
    }

    pub fn get(&self, target: &str) -> Response {
        self.send(Request::get(target))
    }

    /// Posts `text` to `stream` with `token`.
    pub fn post_comment(&self, stream: &str, token: &str, text: &str) -> Response {
        self.send(Request::comment(stream, token, text))
    }

    /// `GET /streams/{stream}`, which must succeed.
    pub fn stream_info(&self, stream: &str) -> Value {
        let response = self.get(&format!("/streams/{stream}"));
        assert_eq!(response.status, 200, "stream info: {response}");
        response.json()
    }

    /// Waits until `GET /streams/{stream}` counts `viewers` viewers.
    pub fn wait_for_viewers(&self, stream: &str, viewers: u64) {
        let mut last = Value::Null;
        let counted = poll_until(PATIENCE, || {
            last = self.stream_info(stream)["viewers"].clone();
            last == viewers
        });
        assert!(
            counted,
            "{stream} still had {last} viewer(s), not {viewers}, after {PATIENCE:?}"
        );
    }

    /// Opens an SSE stream at `target` (a path with optional query).
    pub fn sse(&self, target: &str) -> SseStream {
        SseStream::open(self.addr, target, &[])
    }

    /// Opens an SSE stream at `target` sending extra request headers.
    pub fn sse_with(&self, target: &str, headers: &[(&str, &str)]) -> SseStream {
        SseStream::open(self.addr, target, headers)
    }

    /// Fetches and returns `/metrics`.
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200, "metrics: {response}");
        Metrics::new(response.text())
    }

    /// Sends a signal (`"TERM"`, `"INT"`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {timeout:?} after the signal"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the readiness line on a thread, then keeps draining stdout.
fn read_first_line(stdout: ChildStdout, runtime: &str) -> Option<String> {
    let (first_tx, first_rx) = mpsc::channel();
    let prefix = format!("[{runtime} stdout]");
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let _ = first_tx.send(first);
        for line in lines.map_while(Result::ok) {
            eprintln!("{prefix} {line}");
        }
    });
    match first_rx.recv_timeout(STARTUP) {
        Ok(line) => line,
        Err(_) => panic!("serve printed nothing on stdout within {STARTUP:?}"),
    }
}

/// Forwards each line of `pipe` to the test's stderr until it closes.
fn forward_lines(pipe: impl Read + Send + 'static, prefix: String) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("{prefix} {line}");
        }
    });
}

/// `livecomment listening on http://127.0.0.1:43817` → the address.
fn parse_listening_line(line: &str) -> SocketAddr {
    let addr = line.strip_prefix("livecomment listening on http://");
    let addr = addr.unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
    addr.parse()
        .unwrap_or_else(|_| panic!("unparsable address in {line:?}"))
}

/// Runs `livecomment ARGS` to completion (at most 10 s) and returns its
/// output. `LIVECOMMENT_JWT_SECRET` is cleared unless `env` sets it.
pub fn run_livecomment(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("LIVECOMMENT_JWT_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning livecomment");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("livecomment {args:?} ran for more than 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let salt = &random_secret()[..8];
        let unique = format!("livecomment-test-{label}-{}-{n}-{salt}", std::process::id());
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
