//! A terminal viewer: follows one stream over WebSocket and prints it.
//!
//! ```text
//! cargo run --example watch -- http://127.0.0.1:8080 match-7 [--since N]
//! ```
//!
//! What it shows is the client's side of `GET /streams/{s}/ws`:
//!
//! - each message is one JSON object with a `type`: `comment` (printed as
//!   `[id] name-or-author: text`), `delete` and `reset`;
//! - the **resume point** is the id of the last comment seen. When the
//!   connection drops (the server restarts, shuts down with close code
//!   1001, or evicts a viewer that fell behind) the viewer reconnects
//!   with `?since=` that id, and the server replays everything after it
//!   that it still retains: nothing is missed or printed twice. If the
//!   resume point has left the history, a `reset` says where it starts.
//!
//! It connects without a token, so the socket is read-only. Without
//! `--since` it starts with new comments only; until it has seen one, a
//! reconnect also starts with new comments only. Plain `http://` only:
//! the client is built without TLS.

use std::process::exit;
use std::time::Duration;

use serde_json::Value;
use tungstenite::Message;

/// The first pause before reconnecting; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(8);

fn main() {
    let (base, stream, mut since) = parse_args();
    let mut retry = FIRST_RETRY;
    loop {
        match follow(&base, &stream, &mut since, &mut retry) {
            Ok(()) => eprintln!("-- disconnected"),
            Err(tungstenite::Error::Http(response)) => {
                eprintln!("-- the server refused: HTTP {}", response.status());
                exit(1);
            }
            Err(err) => eprintln!("-- {err}"),
        }
        let resume = since.map_or("new comments".into(), |id| format!("after {id}"));
        eprintln!("-- reconnecting in {retry:?}, resuming {resume}");
        std::thread::sleep(retry);
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// Connects once and prints messages until the connection ends.
/// `since` is the resume point, advanced by every comment shown.
fn follow(
    base: &str,
    stream: &str,
    since: &mut Option<u64>,
    retry: &mut Duration,
) -> Result<(), tungstenite::Error> {
    let mut url = format!("{base}/streams/{stream}/ws");
    if let Some(id) = since {
        url += &format!("?since={id}");
    }
    let (mut socket, _) = tungstenite::connect(&url)?;
    eprintln!("-- watching {stream}");
    *retry = FIRST_RETRY;

    loop {
        let message = match socket.read() {
            Ok(message) => message,
            // The closing handshake finished: a normal end.
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(err) => return Err(err),
        };
        match message {
            Message::Text(text) => show(&text, since),
            Message::Close(Some(frame)) => eprintln!("-- closed by the server: {}", frame.code),
            // Pings are answered by tungstenite itself.
            _ => {}
        }
    }
}

/// Prints one server message and moves the resume point past comments.
fn show(text: &str, since: &mut Option<u64>) {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        eprintln!("-- not JSON: {text}");
        return;
    };
    match message["type"].as_str() {
        Some("comment") => {
            let comment = &message["comment"];
            let id = comment["id"].as_u64().unwrap_or_default();
            let who = comment["name"].as_str().or(comment["author"].as_str());
            let body = comment["text"].as_str().unwrap_or_default();
            println!(
                "[{id}] {}: {}",
                who.unwrap_or("?"),
                body.replace('\n', "\n    ")
            );
            *since = Some(id);
        }
        Some("delete") => println!("-- [{}] deleted by a moderator", message["id"]),
        Some("reset") => println!(
            "-- earlier comments expired; history now starts at {}",
            message["first_id"]
        ),
        _ => eprintln!("-- unexpected message: {text}"),
    }
}

/// `BASE STREAM [--since N]`, with BASE turned into a `ws://` URL.
fn parse_args() -> (String, String, Option<u64>) {
    let usage = "usage: watch http://HOST:PORT STREAM [--since N]";
    let mut positional = Vec::new();
    let mut since = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--since" {
            let id = args.next().and_then(|n| n.parse().ok());
            since = Some(id.unwrap_or_else(|| fail(usage)));
        } else {
            positional.push(arg);
        }
    }
    let [base, stream] = <[String; 2]>::try_from(positional).unwrap_or_else(|_| fail(usage));
    let Some(host) = base.strip_prefix("http://") else {
        fail("the base URL must start with http:// (this client has no TLS)");
    };
    let base = format!("ws://{}", host.trim_end_matches('/'));
    (base, stream, since)
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    exit(2)
}
