//! Open-loop posters.
//!
//! Post `k` of a plan is due at `start + k / rate`, whatever happened to
//! the posts before it: that is what makes the load *open*. It carries
//! its due time in its text (`t=<unix nanos>`), so a viewer's latency
//! runs from when the post *should* have left, and a server that makes
//! posters wait pays for the wait in the figures (no coordinated
//! omission).
//!
//! # Threads, not tasks
//!
//! Each keep-alive connection has two kernel threads, both pinned (by
//! inheritance) to the load CPU:
//!
//! 1. a *writer* that sleeps until the next post it owns is due (posts
//!    `k ≡ c mod connections`), with timer slack lowered to 1 µs so it
//!    wakes within microseconds rather than tokio's 1 ms timer tick;
//!    posts already due when it wakes are sent together in one write
//!    (pipelining). It never waits for a reply.
//! 2. a *reader* that parses the pipelined replies in order, counts 201s
//!    per stream (the last id a viewer must see), 429s and other
//!    statuses, and records each reply's latency from its due time.
//!
//! The writer tells the reader what it sent through a channel: the due
//! time and the stream of each request, in order.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::clock::Clock;
use crate::http::{self, Responses};
use crate::viewer::latency_histogram;

/// At most this many due posts go out in one write.
const MAX_BATCH: usize = 64;

/// How long a reader waits for the last replies after its writer ends.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// A send later than this after its due time counts as late.
const LATE: Duration = Duration::from_millis(1);

/// Socket timeouts; a server that stops answering for this long ends the
/// poster with an error instead of hanging the run.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What to post, where, and how fast.
#[derive(Debug, Clone)]
pub struct PostPlan {
    pub server: SocketAddr,
    pub clock: Clock,
    /// Post `k` goes to `streams[k % len]`.
    pub streams: Arc<Vec<String>>,
    /// Post `k` carries `tokens[k % len]`: one token per user.
    pub tokens: Arc<Vec<String>>,
    /// Posts per second, all connections together.
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    /// Length of the comment text (`t=…` plus padding).
    pub text_len: usize,
}

impl PostPlan {
    fn total(&self) -> u64 {
        (self.rate * self.duration.as_secs_f64()).floor() as u64
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

/// Totals of a finished plan.
#[derive(Debug, Clone)]
pub struct PostReport {
    pub sent: u64,
    pub created: u64,
    pub rate_limited: u64,
    pub other_status: u64,
    pub unanswered: u64,
    /// 201s per stream: with a fresh server, the last id of each stream.
    pub created_per_stream: Vec<u64>,
    /// Due time to reply, per post.
    pub reply_latency: Histogram<u64>,
    pub late_sends: u64,
    pub max_lag: Duration,
    pub errors: Vec<String>,
}

/// One request sent, as the writer tells the reader.
struct Sent {
    due_nanos: u64,
    stream: usize,
}

struct WriterReport {
    sent: u64,
    late: u64,
    max_lag: Duration,
    error: Option<String>,
}

struct ReaderReport {
    created: u64,
    rate_limited: u64,
    other_status: u64,
    unanswered: u64,
    created_per_stream: Vec<u64>,
    reply_latency: Histogram<u64>,
    error: Option<String>,
}

/// Posting in progress.
pub struct Posting {
    connections: Vec<(JoinHandle<WriterReport>, JoinHandle<ReaderReport>)>,
    streams: usize,
}

/// Opens the connections and starts posting at `start` (normally now).
pub fn start(plan: PostPlan, start: Instant) -> Result<Posting> {
    let plan = Arc::new(plan);
    let mut connections = Vec::new();
    for c in 0..plan.connections.max(1) {
        let stream = TcpStream::connect(plan.server).context("connecting a poster")?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let reading = stream.try_clone()?;
        let (tx, rx) = mpsc::channel();

        let writer_plan = Arc::clone(&plan);
        let writer = std::thread::Builder::new()
            .name(format!("poster-w{c}"))
            .spawn(move || write_posts(stream, c, &writer_plan, start, tx))?;
        let reader_plan = Arc::clone(&plan);
        let reader = std::thread::Builder::new()
            .name(format!("poster-r{c}"))
            .spawn(move || read_replies(reading, &reader_plan, rx))?;
        connections.push((writer, reader));
    }
    Ok(Posting {
        connections,
        streams: plan.streams.len(),
    })
}

impl Posting {
    /// Whether every writer and reader has ended.
    pub fn is_finished(&self) -> bool {
        self.connections
            .iter()
            .all(|(w, r)| w.is_finished() && r.is_finished())
    }

    /// Waits (without blocking the viewers' thread) for every connection
    /// to finish, then adds up their reports.
    pub async fn finish(self) -> Result<PostReport> {
        while !self.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut report = PostReport {
            sent: 0,
            created: 0,
            rate_limited: 0,
            other_status: 0,
            unanswered: 0,
            created_per_stream: vec![0; self.streams],
            reply_latency: latency_histogram(),
            late_sends: 0,
            max_lag: Duration::ZERO,
            errors: Vec::new(),
        };
        for (writer, reader) in self.connections {
            let w = writer
                .join()
                .map_err(|_| anyhow::anyhow!("poster writer panicked"))?;
            let r = reader
                .join()
                .map_err(|_| anyhow::anyhow!("poster reader panicked"))?;
            report.add(w, r);
        }
        Ok(report)
    }
}

impl PostReport {
    fn add(&mut self, w: WriterReport, r: ReaderReport) {
        self.sent += w.sent;
        self.late_sends += w.late;
        self.max_lag = self.max_lag.max(w.max_lag);
        self.created += r.created;
        self.rate_limited += r.rate_limited;
        self.other_status += r.other_status;
        self.unanswered += r.unanswered;
        for (total, n) in self.created_per_stream.iter_mut().zip(r.created_per_stream) {
            *total += n;
        }
        let _ = self.reply_latency.add(&r.reply_latency);
        self.errors.extend(w.error.into_iter().chain(r.error));
    }
}

/// Lowers this thread's timer slack to 1 µs so sleeps end on time.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only
    // changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
}

/// The writer thread of connection `conn` (see the module doc).
fn write_posts(
    mut stream: TcpStream,
    conn: usize,
    plan: &PostPlan,
    start: Instant,
    tx: Sender<Sent>,
) -> WriterReport {
    tighten_timer_slack();
    let total = plan.total();
    let step = plan.connections.max(1) as u64;
    let interval = plan.interval();
    let due_at = |k: u64| start + interval.mul_f64(k as f64);
    let mut report = WriterReport {
        sent: 0,
        late: 0,
        max_lag: Duration::ZERO,
        error: None,
    };

    let mut k = conn as u64;
    let mut batch = Vec::new();
    while k < total {
        let now = Instant::now();
        let due = due_at(k);
        if due > now {
            std::thread::sleep(due - now);
        }

        let woke = Instant::now();
        let lag = woke.saturating_duration_since(due);
        report.max_lag = report.max_lag.max(lag);
        batch.clear();
        let mut in_batch = 0;
        while k < total && due_at(k) <= woke && in_batch < MAX_BATCH {
            let stream_index = (k % plan.streams.len() as u64) as usize;
            let due_nanos = plan.clock.nanos_at(due_at(k));
            batch.extend(request(plan, k, stream_index, due_nanos));
            let _ = tx.send(Sent {
                due_nanos,
                stream: stream_index,
            });
            if woke.saturating_duration_since(due_at(k)) > LATE {
                report.late += 1;
            }
            in_batch += 1;
            k += step;
        }
        if let Err(e) = stream.write_all(&batch) {
            report.error = Some(format!("posting: {e}"));
            break;
        }
        report.sent += in_batch as u64;
    }
    report
}

/// The bytes of post `k`: its stream, its user's token, and its due time.
fn request(plan: &PostPlan, k: u64, stream_index: usize, due_nanos: u64) -> Vec<u8> {
    let token = &plan.tokens[(k % plan.tokens.len() as u64) as usize];
    let mut text = format!("t={due_nanos} ");
    while text.len() < plan.text_len {
        text.push('x');
    }
    http::post_request(&plan.streams[stream_index], token, &text)
}

/// The reader thread of one connection (see the module doc).
fn read_replies(mut stream: TcpStream, plan: &PostPlan, rx: Receiver<Sent>) -> ReaderReport {
    let mut report = ReaderReport {
        created: 0,
        rate_limited: 0,
        other_status: 0,
        unanswered: 0,
        created_per_stream: vec![0; plan.streams.len()],
        reply_latency: latency_histogram(),
        error: None,
    };
    let mut pending: VecDeque<Sent> = VecDeque::new();
    let mut responses = Responses::default();
    let mut writer_done_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        writer_done_at = writer_done_at.or_else(|| drain_sent(&rx, &mut pending));
        if let Some(done) = writer_done_at
            && (pending.is_empty() || done.elapsed() > REPLY_GRACE)
        {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                report.error = Some("server closed a poster connection".into());
                break;
            }
            Ok(n) => responses.push(&buf[..n]),
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                report.error = Some(format!("reading replies: {e}"));
                break;
            }
        }
        drain_sent(&rx, &mut pending);
        if let Err(e) = take_replies(&mut responses, &mut pending, plan, &mut report) {
            report.error = Some(format!("{e:#}"));
            break;
        }
    }
    drain_sent(&rx, &mut pending);
    report.unanswered = pending.len() as u64;
    report
}

/// Moves what the writer sent into `pending`; returns now if the writer
/// has finished (its channel is closed).
fn drain_sent(rx: &Receiver<Sent>, pending: &mut VecDeque<Sent>) -> Option<Instant> {
    loop {
        match rx.try_recv() {
            Ok(sent) => pending.push_back(sent),
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => return Some(Instant::now()),
        }
    }
}

/// Matches complete replies with the requests they answer.
fn take_replies(
    responses: &mut Responses,
    pending: &mut VecDeque<Sent>,
    plan: &PostPlan,
    report: &mut ReaderReport,
) -> Result<()> {
    while let Some(status) = responses.next_status()? {
        let sent = pending
            .pop_front()
            .context("a reply arrived for no request")?;
        match status {
            201 => {
                report.created += 1;
                report.created_per_stream[sent.stream] += 1;
            }
            429 => report.rate_limited += 1,
            _ => report.other_status += 1,
        }
        let now = plan.clock.now_nanos();
        report
            .reply_latency
            .saturating_record(now.saturating_sub(sent.due_nanos));
    }
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
