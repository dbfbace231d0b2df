//! Viewers' deadlines, kept off may's own timers.
//!
//! A viewer parks until a comment arrives or its deadline (the next
//! keep-alive) passes. may's `park_timeout` would do both, but it adds a
//! timer entry on every park and takes it out again on every early wake,
//! and a viewer of a busy stream wakes early hundreds of times a second.
//! Besides the cost, may 0.3.51 frees that entry in the parked coroutine
//! while its timer thread may still be using it: under load (the
//! `cpu-hog` benchmark, the server on one CPU with all its threads) the
//! process died in `Park::remove_timeout_handle` with a SIGSEGV or a
//! corrupted heap, every run.
//!
//! So viewers wait with no timeout, and one kernel thread, the alarm
//! clock, wakes each at its deadline:
//!
//! 1. Before it waits, a viewer [`arms`](Alarm::arm) its alarm for its
//!    deadline, unless an alarm it armed before is still pending and
//!    rings no later: deadlines only move later while comments flow, so
//!    a viewer arms about once per keep-alive period, not once per wake.
//! 2. The clock keeps the alarms in a heap, sleeps until the earliest,
//!    pops every alarm that is due and wakes its viewer.
//! 3. An alarm that rings early (its viewer's deadline has since moved
//!    later) costs one spurious wake: the viewer finds its deadline not
//!    reached, arms again and waits.
//!
//! A viewer's alarm is its `Waker`, the same one the hub calls for new
//! events: it ends the viewer's `wait_io`. The clock is a plain thread,
//! not a coroutine, so nothing it does can hold up a may worker;
//! coroutines take its lock only to push one entry.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

/// The alarm clock every viewer of this server shares.
pub struct Clock {
    /// Pending alarms, earliest first. Pushed by viewers, popped by the
    /// clock thread; the lock is held for a heap operation, never across
    /// an unpark or a may call.
    alarms: Mutex<BinaryHeap<Reverse<Ring>>>,
    /// Signalled when an alarm is set earlier than every pending one.
    earlier: Condvar,
}

/// One pending alarm.
struct Ring {
    at: Instant,
    viewer: Waker,
}

impl Clock {
    /// Starts the clock thread.
    pub fn start() -> io::Result<Arc<Clock>> {
        let clock = Arc::new(Clock {
            alarms: Mutex::new(BinaryHeap::new()),
            earlier: Condvar::new(),
        });
        let theirs = clock.clone();
        std::thread::Builder::new()
            .name("may-alarms".into())
            .spawn(move || theirs.run())?;
        Ok(clock)
    }

    fn set(&self, at: Instant, viewer: &Waker) {
        let mut alarms = self.lock();
        let earliest = alarms.peek().is_none_or(|Reverse(next)| at < next.at);
        let viewer = viewer.clone();
        alarms.push(Reverse(Ring { at, viewer }));
        drop(alarms);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// The clock thread: rings every due alarm, then sleeps until the
    /// next one or until an earlier one is set.
    fn run(&self) {
        let mut due = Vec::new();
        let mut alarms = self.lock();
        loop {
            let now = Instant::now();
            while let Some(Reverse(next)) = alarms.peek()
                && next.at <= now
            {
                if let Some(Reverse(ring)) = alarms.pop() {
                    due.push(ring.viewer);
                }
            }
            if !due.is_empty() {
                drop(alarms);
                due.drain(..).for_each(Waker::wake);
                alarms = self.lock();
                continue;
            }
            alarms = match alarms.peek().map(|Reverse(next)| next.at - now) {
                Some(wait) => match self.earlier.wait_timeout(alarms, wait) {
                    Ok((alarms, _)) => alarms,
                    Err(poisoned) => poisoned.into_inner().0,
                },
                None => self
                    .earlier
                    .wait(alarms)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// The heap stays consistent even if a holder panicked (every change
    /// is one push or pop), so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, BinaryHeap<Reverse<Ring>>> {
        self.alarms.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PartialEq for Ring {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Ring {}

impl PartialOrd for Ring {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ring {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

/// A viewer's handle on the clock: remembers the alarm it armed last.
pub struct Alarm {
    clock: Arc<Clock>,
    armed: Option<Instant>,
}

impl Alarm {
    pub fn new(clock: Arc<Clock>) -> Alarm {
        Alarm { clock, armed: None }
    }

    /// Makes sure `viewer` is woken at `at` or earlier (step 1).
    pub fn arm(&mut self, at: Instant, viewer: &Waker) {
        let pending = self
            .armed
            .is_some_and(|armed| armed > Instant::now() && armed <= at);
        if !pending {
            self.clock.set(at, viewer);
            self.armed = Some(at);
        }
    }
}
