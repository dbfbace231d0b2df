//! The hub: streams, their history and ids, their viewers, and fan-out.
//!
//! # Shared state
//!
//! ```text
//! Hub ── shards[hash(name) % N]: RwLock<HashMap<name, Arc<Stream>>>
//!          Stream ── Mutex<StreamState>
//!                      last_id, history: VecDeque<Event>,
//!                      viewers: Slab<Arc<Mailbox>>
//!                                    Mailbox ── Mutex<Queue>
//!                                                 events: Vec<Bytes>, waker
//! ```
//!
//! - The stream map is written only when a stream is first posted to or
//!   watched; lookups take a shard's read lock.
//! - A stream's mutex is held by a publisher while it numbers, stores and
//!   fans out one comment, and by a new viewer while it reads the history
//!   to replay and registers itself. Both happen under the same lock, so
//!   a viewer sees every comment exactly once: each is either in its
//!   replay or pushed to its mailbox, never both, never neither.
//! - A mailbox's mutex is held by the publisher pushing an event and by
//!   the viewer's connection draining it; each holds it for a few
//!   pointer moves. The lock order is always stream, then mailbox.
//!
//! # Fan-out: encode once, write many
//!
//! A comment is encoded once per transport into [`Bytes`]; every
//! mailbox gets a reference-counted clone, not a copy. The viewer's task
//! is woken only when its mailbox goes from empty to non-empty, and when
//! it runs it drains *everything* queued into one buffer and writes it
//! with one call. Under load, events pile up between wake and run, so a
//! busy server makes fewer, larger writes instead of falling behind.
//!
//! # Slow viewers
//!
//! 1. A publisher pushing to a mailbox whose queued bytes would pass the
//!    bound (`viewer_queue`) marks it evicted, drops its queue, removes
//!    it from the stream and wakes its task. The publisher never waits.
//! 2. The viewer's connection, woken, sees the eviction and closes
//!    without writing anything more.
//! 3. The client reconnects with `Last-Event-ID` and its replay comes
//!    from history, so it loses nothing still retained.
//!
//! Events already drained into the connection's output buffer are not
//! counted against the bound; connections drain only when that buffer is
//! empty, so a viewer holds at most twice the bound.

use crate::comment::Comment;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::sse;
use crate::store::{Broker, Store};
use crate::ws;
use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

const SHARDS: usize = 64;

/// How a viewer receives events; each transport has its own encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

/// One event, encoded once for every transport.
#[derive(Debug, Clone)]
pub struct Event {
    pub sse: Bytes,
    pub ws: Bytes,
}

impl Event {
    fn for_transport(&self, transport: Transport) -> &Bytes {
        match transport {
            Transport::Sse => &self.sse,
            Transport::WebSocket => &self.ws,
        }
    }
}

/// A retained comment: its id, its JSON, and its encoded event.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub json: Bytes,
    pub event: Event,
}

/// A page of history (`GET /streams/{s}/comments`).
#[derive(Debug, Default)]
pub struct Page {
    pub comments: Vec<Bytes>,
    /// The oldest retained id, 0 when nothing is retained.
    pub first_id: u64,
    /// The newest id ever assigned in the stream, 0 when none.
    pub last_id: u64,
}

/// What a new viewer gets before live events.
#[derive(Debug, Default)]
pub struct Replay {
    /// Set when the resume point is older than the retained history:
    /// the first id still retained.
    pub reset: Option<u64>,
    /// Retained comments after the resume point, in order.
    pub entries: Vec<Entry>,
}

/// Limits the hub applies.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Comments retained per stream.
    pub history: usize,
    /// A viewer's queued bytes beyond which it is evicted.
    pub viewer_queue: usize,
}

/// All streams of this node.
pub struct Hub {
    config: HubConfig,
    hasher: RandomState,
    shards: Vec<RwLock<HashMap<Box<str>, Arc<Stream>>>>,
    store: Box<dyn Store>,
    broker: Box<dyn Broker>,
    metrics: Arc<Metrics>,
    /// Set once at shutdown; new viewers are refused after it.
    closed: AtomicBool,
}

struct Stream {
    name: Box<str>,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    last_id: u64,
    /// Highest id dropped from history by the retention bound.
    dropped_up_to: u64,
    history: VecDeque<Entry>,
    viewers: Slab<Arc<Mailbox>>,
}

impl Hub {
    pub fn new(
        config: HubConfig,
        store: Box<dyn Store>,
        broker: Box<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Hub {
            config,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            store,
            broker,
            metrics,
            closed: AtomicBool::new(false),
        }
    }

    /// Whether the store can take writes.
    pub fn healthy(&self) -> bool {
        self.store.healthy()
    }

    fn shard(&self, name: &str) -> &RwLock<HashMap<Box<str>, Arc<Stream>>> {
        &self.shards[self.hasher.hash_one(name) as usize % SHARDS]
    }

    fn find(&self, name: &str) -> Option<Arc<Stream>> {
        self.shard(name).read().get(name).cloned()
    }

    fn find_or_create(&self, name: &str) -> Arc<Stream> {
        if let Some(stream) = self.find(name) {
            return stream;
        }
        let mut map = self.shard(name).write();
        map.entry(name.into())
            .or_insert_with(|| {
                Arc::new(Stream {
                    name: name.into(),
                    state: Mutex::new(StreamState::default()),
                })
            })
            .clone()
    }

    /// Numbers, stores and fans out a new comment; returns its entry.
    ///
    /// 1. Under the stream's lock: ask the broker for the id, build and
    ///    encode the comment once, make it durable in the store.
    /// 2. Append it to history, dropping the oldest past the bound.
    /// 3. Push it to every viewer's mailbox, evicting any past its
    ///    bound, and collect the wakers of viewers that were idle.
    /// 4. Release the lock, then wake those viewers.
    pub fn publish(
        &self,
        stream: &str,
        author: &str,
        name: Option<&str>,
        text: &str,
        ts: u64,
    ) -> Result<Entry, ApiError> {
        let stream = self.find_or_create(stream);
        let mut state = stream.state.lock();

        let id = self
            .broker
            .next_id(&stream.name, state.last_id)
            .map_err(|err| unavailable("broker", &err))?;
        let comment = Comment {
            id,
            stream: stream.name.to_string(),
            author: author.to_owned(),
            name: name.map(str::to_owned),
            text: text.to_owned(),
            ts,
        };
        self.store
            .append(&comment)
            .map_err(|err| unavailable("store", &err))?;
        let json = sse::comment_json(&comment);
        let entry = Entry {
            id,
            event: Event {
                sse: sse::comment_event(&json, id),
                ws: ws::comment_frame(&json),
            },
            json,
        };
        state.last_id = id;

        state.history.push_back(entry.clone());
        while state.history.len() > self.config.history {
            if let Some(old) = state.history.pop_front() {
                state.dropped_up_to = old.id;
            }
        }

        let wakers = self.fan_out(&mut state, &entry.event);
        drop(state);
        for waker in wakers {
            waker.wake();
        }
        self.metrics.comment_posted();
        Ok(entry)
    }

    /// Removes a comment from history and tells every viewer.
    /// `Err(NotFound)` when the stream or the id is not retained.
    pub fn delete(&self, stream: &str, id: u64) -> Result<(), ApiError> {
        let stream = self.find(stream).ok_or(ApiError::NotFound)?;
        let mut state = stream.state.lock();
        let pos = state
            .history
            .binary_search_by_key(&id, |e| e.id)
            .map_err(|_| ApiError::NotFound)?;
        self.store
            .delete(&stream.name, id)
            .map_err(|err| unavailable("store", &err))?;
        state.history.remove(pos);

        let event = Event {
            sse: sse::delete_event(&stream.name, id),
            ws: ws::delete_frame(id),
        };
        let wakers = self.fan_out(&mut state, &event);
        drop(state);
        for waker in wakers {
            waker.wake();
        }
        Ok(())
    }

    /// Pushes `event` to every mailbox of the stream; returns the wakers
    /// to call once the stream lock is released.
    fn fan_out(&self, state: &mut StreamState, event: &Event) -> Vec<Waker> {
        let bound = self.config.viewer_queue;
        let mut wakers = Vec::new();
        state.viewers.retain(|_, mailbox| {
            let bytes = event.for_transport(mailbox.transport);
            match mailbox.push(bytes, bound) {
                Pushed::Queued(waker) => {
                    wakers.extend(waker);
                    true
                }
                Pushed::Evicted(waker) => {
                    wakers.extend(waker);
                    self.metrics.viewer_evicted();
                    tracing::warn!("slow viewer evicted");
                    false
                }
            }
        });
        wakers
    }

    /// Registers a viewer of `stream` and returns what it must be sent
    /// before live events: the replay after `resume` (when given).
    pub fn subscribe(
        &self,
        stream: &str,
        resume: Option<u64>,
        transport: Transport,
    ) -> Result<(Viewer, Replay), ApiError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable("the server is shutting down"));
        }
        let stream = self.find_or_create(stream);
        let mut state = stream.state.lock();

        let replay = match resume {
            Some(after) => replay_after(&state, after),
            None => Replay::default(),
        };
        let mailbox = Arc::new(Mailbox::new(transport));
        let key = state.viewers.insert(mailbox.clone());
        drop(state);

        self.metrics.viewer_joined();
        let viewer = Viewer {
            stream,
            key,
            mailbox,
            metrics: self.metrics.clone(),
        };
        Ok((viewer, replay))
    }

    /// Retained comments with ids > `since`, at most `limit`.
    pub fn history(&self, stream: &str, since: u64, limit: usize) -> Page {
        let Some(stream) = self.find(stream) else {
            return Page::default();
        };
        let state = stream.state.lock();
        let start = state.history.partition_point(|e| e.id <= since);
        Page {
            comments: state
                .history
                .range(start..)
                .take(limit)
                .map(|e| e.json.clone())
                .collect(),
            first_id: state.history.front().map_or(0, |e| e.id),
            last_id: state.last_id,
        }
    }

    /// `(last_id, viewers)` of a stream; zeros for one never used.
    pub fn info(&self, stream: &str) -> (u64, usize) {
        match self.find(stream) {
            Some(stream) => {
                let state = stream.state.lock();
                (state.last_id, state.viewers.len())
            }
            None => (0, 0),
        }
    }

    /// Shutdown: refuses new viewers and closes every mailbox, waking its
    /// connection so it ends the stream.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::Release);
        for shard in &self.shards {
            let streams: Vec<Arc<Stream>> = shard.read().values().cloned().collect();
            for stream in streams {
                let viewers: Vec<Arc<Mailbox>> = {
                    let mut state = stream.state.lock();
                    state.viewers.drain().collect()
                };
                for mailbox in viewers {
                    mailbox.close(Status::Closed);
                }
            }
        }
    }
}

fn unavailable(what: &str, err: &crate::store::Unavailable) -> ApiError {
    tracing::warn!(cause = %err, "{what} unavailable");
    ApiError::Unavailable("storage is unavailable; try again")
}

/// What a viewer resuming after `after` must receive first.
fn replay_after(state: &StreamState, after: u64) -> Replay {
    let reset = (after < state.dropped_up_to).then(|| {
        state
            .history
            .front()
            .map_or(state.dropped_up_to + 1, |e| e.id)
    });
    let start = state.history.partition_point(|e| e.id <= after);
    Replay {
        reset,
        entries: state.history.range(start..).cloned().collect(),
    }
}

/// Why a mailbox stopped taking events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    /// Fell behind past its bound.
    Evicted,
    /// The server is shutting down.
    Closed,
}

/// A viewer's queue of encoded events, filled by publishers and drained
/// by the viewer's connection.
pub struct Mailbox {
    transport: Transport,
    queue: Mutex<Queue>,
}

struct Queue {
    events: Vec<Bytes>,
    bytes: usize,
    status: Status,
    /// Set by a viewer that found the queue empty; taken by the push
    /// that makes it non-empty, or by eviction and shutdown.
    waker: Option<Waker>,
}

enum Pushed {
    /// Queued; the waker, if the viewer was waiting.
    Queued(Option<Waker>),
    /// Past the bound: evicted; the waker to tell the viewer.
    Evicted(Option<Waker>),
}

/// What draining a mailbox found.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// This many events were appended to the output.
    Events(usize),
    /// Nothing queued; the waker is registered.
    Empty,
    /// The mailbox is closed: evicted or shut down.
    Ended(Status),
}

impl Mailbox {
    fn new(transport: Transport) -> Self {
        Mailbox {
            transport,
            queue: Mutex::new(Queue {
                events: Vec::new(),
                bytes: 0,
                status: Status::Open,
                waker: None,
            }),
        }
    }

    fn push(&self, event: &Bytes, bound: usize) -> Pushed {
        let mut q = self.queue.lock();
        if q.status != Status::Open {
            return Pushed::Queued(None);
        }
        if q.bytes + event.len() > bound {
            q.status = Status::Evicted;
            q.events = Vec::new();
            q.bytes = 0;
            return Pushed::Evicted(q.waker.take());
        }
        let was_empty = q.events.is_empty();
        q.events.push(event.clone());
        q.bytes += event.len();
        Pushed::Queued(if was_empty { q.waker.take() } else { None })
    }

    fn close(&self, status: Status) {
        let waker = {
            let mut q = self.queue.lock();
            q.status = status;
            q.events = Vec::new();
            q.bytes = 0;
            q.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Moves every queued event into `out` (one buffer, one write).
    /// With nothing queued, registers `waker` for the next push.
    pub fn drain_into(&self, out: &mut BytesMut, waker: &Waker) -> Drained {
        let mut q = self.queue.lock();
        if q.status != Status::Open {
            return Drained::Ended(q.status);
        }
        if q.events.is_empty() {
            register(&mut q.waker, waker);
            return Drained::Empty;
        }
        out.reserve(q.bytes);
        let count = q.events.len();
        for event in q.events.drain(..) {
            out.extend_from_slice(&event);
        }
        q.bytes = 0;
        if q.events.capacity() > 256 {
            // A burst grew the vector; give the memory back.
            q.events = Vec::new();
        }
        Drained::Events(count)
    }

    /// Without draining: registers `waker` and says whether the mailbox
    /// has ended. Used while the output buffer is still being written.
    pub fn watch(&self, waker: &Waker) -> Option<Status> {
        let mut q = self.queue.lock();
        if q.status != Status::Open {
            return Some(q.status);
        }
        register(&mut q.waker, waker);
        None
    }
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(old) if old.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// A registered viewer. Dropping it unregisters the viewer at once, so
/// counts and memory follow the connection, not the next write.
pub struct Viewer {
    stream: Arc<Stream>,
    key: usize,
    mailbox: Arc<Mailbox>,
    metrics: Arc<Metrics>,
}

impl Viewer {
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let mut state = self.stream.state.lock();
        if state
            .viewers
            .get(self.key)
            .is_some_and(|m| Arc::ptr_eq(m, &self.mailbox))
        {
            state.viewers.remove(self.key);
        }
        drop(state);
        self.metrics.viewer_left();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalBroker, MemoryStore};
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    fn hub(history: usize, viewer_queue: usize) -> Hub {
        Hub::new(
            HubConfig {
                history,
                viewer_queue,
            },
            Box::new(MemoryStore),
            Box::new(LocalBroker),
            Arc::new(Metrics::default()),
        )
    }

    fn post(hub: &Hub, stream: &str, text: &str) -> u64 {
        hub.publish(stream, "alice", None, text, 0).unwrap().id
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter::default());
        (c.clone(), Waker::from(c))
    }

    fn drained_ids(viewer: &Viewer, waker: &Waker) -> Vec<u64> {
        let mut out = BytesMut::new();
        viewer.mailbox().drain_into(&mut out, waker);
        std::str::from_utf8(&out)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|id| id.parse().unwrap())
            .collect()
    }

    #[test]
    fn ids_count_from_one_per_stream() {
        let hub = hub(10, 1 << 20);
        assert_eq!(post(&hub, "a", "x"), 1);
        assert_eq!(post(&hub, "a", "x"), 2);
        assert_eq!(post(&hub, "b", "x"), 1);
        assert_eq!(hub.info("a"), (2, 0));
    }

    #[test]
    fn a_resuming_viewer_gets_replay_then_live_with_no_gap_or_duplicate() {
        let hub = hub(100, 1 << 20);
        for _ in 0..5 {
            post(&hub, "s", "x");
        }
        let (viewer, replay) = hub.subscribe("s", Some(2), Transport::Sse).unwrap();
        let replayed: Vec<u64> = replay.entries.iter().map(|e| e.id).collect();
        assert_eq!(replayed, [3, 4, 5]);
        assert_eq!(replay.reset, None);

        post(&hub, "s", "x");
        let (_, waker) = counter();
        assert_eq!(drained_ids(&viewer, &waker), [6]);
    }

    #[test]
    fn a_resume_point_older_than_history_gets_a_reset() {
        let hub = hub(3, 1 << 20);
        for _ in 0..10 {
            post(&hub, "s", "x");
        }
        let (_viewer, replay) = hub.subscribe("s", Some(2), Transport::Sse).unwrap();
        assert_eq!(replay.reset, Some(8));
        let ids: Vec<u64> = replay.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, [8, 9, 10]);
    }

    #[test]
    fn a_viewer_is_woken_once_per_empty_to_non_empty_transition() {
        let hub = hub(100, 1 << 20);
        let (viewer, _) = hub.subscribe("s", None, Transport::Sse).unwrap();
        let (count, waker) = counter();
        assert_eq!(
            viewer.mailbox().drain_into(&mut BytesMut::new(), &waker),
            Drained::Empty
        );

        post(&hub, "s", "x");
        post(&hub, "s", "x");
        post(&hub, "s", "x");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(drained_ids(&viewer, &waker), [1, 2, 3]);
    }

    #[test]
    fn a_viewer_past_its_bound_is_evicted_and_others_keep_everything() {
        let hub = hub(100, 1000);
        let (slow, _) = hub.subscribe("s", None, Transport::Sse).unwrap();
        let (fast, _) = hub.subscribe("s", None, Transport::Sse).unwrap();
        let (count, waker) = counter();
        let _ = slow.mailbox().watch(&waker);

        let mut fast_ids = Vec::new();
        for _ in 0..20 {
            post(&hub, "s", &"y".repeat(100));
            fast_ids.extend(drained_ids(&fast, &waker));
        }
        assert_eq!(fast_ids, (1..=20).collect::<Vec<_>>());
        assert_eq!(
            slow.mailbox().drain_into(&mut BytesMut::new(), &waker),
            Drained::Ended(Status::Evicted)
        );
        assert!(count.0.load(Ordering::SeqCst) >= 1);
        assert_eq!(hub.info("s").1, 1);
    }

    #[test]
    fn dropping_a_viewer_unregisters_it() {
        let hub = hub(10, 1 << 20);
        let (viewer, _) = hub.subscribe("s", None, Transport::Sse).unwrap();
        assert_eq!(hub.info("s").1, 1);
        drop(viewer);
        assert_eq!(hub.info("s").1, 0);
    }

    #[test]
    fn delete_removes_from_history_and_tells_viewers() {
        let hub = hub(10, 1 << 20);
        post(&hub, "s", "x");
        post(&hub, "s", "x");
        let (viewer, _) = hub.subscribe("s", None, Transport::Sse).unwrap();
        hub.delete("s", 1).unwrap();
        assert_eq!(hub.delete("s", 1), Err(ApiError::NotFound));
        assert_eq!(hub.delete("nope", 1), Err(ApiError::NotFound));

        let page = hub.history("s", 0, 10);
        assert_eq!(page.comments.len(), 1);
        let mut out = BytesMut::new();
        let (_, waker) = counter();
        viewer.mailbox().drain_into(&mut out, &waker);
        assert!(out.starts_with(b"event: delete\n"));
    }

    #[test]
    fn close_all_ends_every_viewer_and_refuses_new_ones() {
        let hub = hub(10, 1 << 20);
        let (viewer, _) = hub.subscribe("s", None, Transport::Sse).unwrap();
        hub.close_all();
        let (_, waker) = counter();
        assert_eq!(
            viewer.mailbox().drain_into(&mut BytesMut::new(), &waker),
            Drained::Ended(Status::Closed)
        );
        assert!(hub.subscribe("s", None, Transport::Sse).is_err());
    }
}
