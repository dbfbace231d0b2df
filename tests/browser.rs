//! The demo page at `GET /`, used in a real browser.
//!
//! Each runtime's server is driven by `tests/browser/page-test.mjs`:
//! Debian's headless Chromium (`/usr/bin/chromium`) under
//! `playwright-core`, which opens the page, checks that it watches the
//! default stream and shows the viewer count, pastes a token, posts
//! through the form, sees the comment arrive and a moderator's delete,
//! and looks at it on a phone-sized screen. Screenshots land in
//! `target/browser-<runtime>.png` and `target/browser-<runtime>-phone.png`.
//!
//! The browser and the npm package are installed by `scripts/test.sh`;
//! when they are missing this test fails and says so, rather than
//! passing without having looked.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The script's own deadline is 90 s; this one only catches a hung node.
const NODE_DEADLINE: Duration = Duration::from_secs(120);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Panics with what to run when the browser or the npm package is missing.
fn require_setup() {
    let playwright = browser_dir().join("node_modules/playwright-core");
    let missing = [
        (!Path::new(CHROMIUM).exists()).then_some(CHROMIUM),
        (!playwright.exists()).then_some("tests/browser/node_modules/playwright-core"),
    ];
    let missing: Vec<_> = missing.into_iter().flatten().collect();
    assert!(
        missing.is_empty(),
        "the browser test needs {missing:?}: run scripts/test.sh, which installs \
         Debian's chromium and runs `npm ci` in tests/browser"
    );
}

/// Runs `node page-test.mjs ARGS` to completion, within [`NODE_DEADLINE`].
fn run_page_test(args: &[&str]) -> Output {
    let child = Command::new("node")
        .arg(browser_dir().join("page-test.mjs"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("running node (run scripts/test.sh to install it): {err}"));
    let pid = child.id();
    let (done, output) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(NODE_DEADLINE) {
        Ok(output) => output.expect("waiting for node"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("node page-test.mjs ran for more than {NODE_DEADLINE:?}");
        }
    }
}

conformance! {
    /// In Chromium, the page watches the default stream, counts its
    /// viewers, posts with a pasted token, shows the comment and a
    /// moderator's delete, and fits a phone's screen.
    fn demo_page_watches_and_posts_in_a_real_browser(rt) {
        require_setup();
        let server = Server::start(rt, &[]);
        let claims = json!({
            "sub": "alice", "name": "Alice", "role": "moderator", "exp": now_secs() + 3600,
        });
        let token = hs256(server.secret(), &claims);
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        let screenshot = target.join(format!("browser-{rt}.png"));

        let url = format!("http://{}", server.addr());
        let output = run_page_test(&[&url, &token, screenshot.to_str().unwrap()]);

        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "page-test.mjs: {stderr}{stdout}");
        assert!(stdout.contains("browser test passed"), "{stdout}");
        assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());

        let history = server.get("/streams/demo/comments").json();
        let comments = history["comments"].as_array().unwrap();
        assert_eq!(comments.len(), 1, "the page's comment, the deleted one gone: {history}");
        assert_eq!(comments[0]["author"], "alice");
    }
}
