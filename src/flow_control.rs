//! Producer flow control: the two gates a SEND passes before it goes to the store, so a broker
//! whose store falls behind, or whose queue is full, slows its producers down instead of
//! growing its memory.
//!
//! - The store backlog: the weight (bodies, headers, per-message overhead) of SENDs handed to
//!   the store writer and not yet routed. Session readers take budget before handing a SEND
//!   over (`admit`) and wait while it is spent. What they took is an `Admission`, which travels
//!   with the SEND (the session, the store writer's batch, the router's inbox) and gives the
//!   budget back when it is dropped: after the router routed the batch, or wherever the SEND
//!   ended on the way (refused, failed, never handed over). One owner at a time, and no path
//!   that can forget it; the budget bounds the writer's queue and the router's inbox together.
//!   One message larger than the whole budget still passes when nothing else is pending, so
//!   nothing waits for ever.
//! - Full queues: the router marks a queue full when it holds `max_queue_depth` waiting
//!   messages and clears the mark when it drops below; a SEND to a full queue waits.
//!
//! A waiting reader stops reading its socket, so TCP pushes back on that producer alone;
//! producers of other queues go on. Waits are bounded ticks that recheck shutdown. Runs on the
//! threads that call it (session readers, and whichever thread drops an `Admission`); calls
//! nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Weight (bodies, headers and per-message overhead) of SENDs that may wait for the store writer (a few batches' worth).
pub const STORE_BACKLOG_BYTES: usize = 16 * 1024 * 1024;
/// How long one wait lasts before shutdown is checked again.
const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    /// Weight of the SENDs admitted and not yet routed (their `Admission`s are alive).
    pending: usize,
    /// Queues at their depth limit.
    full: HashSet<Arc<str>>,
}

/// The gates, shared by every session, the store writer and the router.
pub struct FlowControl {
    state: Mutex<State>,
    changed: Condvar,
    capacity: usize,
    /// SENDs that had to wait at least once, for /metrics.
    waits: AtomicU64,
}

impl FlowControl {
    pub fn new(capacity: usize) -> FlowControl {
        FlowControl {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            capacity,
            waits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wait until `destination` is not full and `bytes` fit in the store backlog, then take
    /// them. None when `stopping` said so while waiting (nothing was taken).
    pub fn admit(
        self: &Arc<Self>,
        destination: &str,
        bytes: usize,
        stopping: impl Fn() -> bool,
    ) -> Option<Admission> {
        let mut state = self.lock();
        let mut counted = false;
        loop {
            let room = state.pending == 0 || state.pending + bytes <= self.capacity;
            if room && !state.full.contains(destination) {
                state.pending += bytes;
                return Some(Admission {
                    flow: Some(self.clone()),
                    bytes,
                });
            }
            if !counted {
                self.waits.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            if stopping() {
                return None;
            }
            state = match self.changed.wait_timeout(state, TICK) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// An `Admission` of `bytes` ended.
    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut state = self.lock();
        state.pending = state.pending.saturating_sub(bytes);
        drop(state);
        self.changed.notify_all();
    }

    /// The router's view of a queue: full (at its depth limit) or not.
    pub fn set_full(&self, queue: &Arc<str>, full: bool) {
        let mut state = self.lock();
        if full {
            state.full.insert(queue.clone());
        } else {
            state.full.remove(queue);
            drop(state);
            self.changed.notify_all();
        }
    }

    /// SENDs that waited at least once since start.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Body bytes waiting for the store now.
    pub fn pending(&self) -> usize {
        self.lock().pending
    }
}

/// The budget one or more SENDs took at the gate, given back when dropped.
#[derive(Default)]
pub struct Admission {
    /// None for an empty one (`Admission::default`).
    flow: Option<Arc<FlowControl>>,
    bytes: usize,
}

impl Admission {
    /// Take `other`'s budget into this one (a transaction's SENDs, a batch's).
    pub fn join(&mut self, mut other: Admission) {
        if self.flow.is_none() {
            self.flow = other.flow.take();
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(flow) = &self.flow {
            flow.release(self.bytes);
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Admission({} bytes)", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_admits_until_full_and_an_oversized_message_when_empty() {
        let flow = Arc::new(FlowControl::new(100));
        let mut first = flow.admit("/queue/a", 60, || false).expect("room");
        let second = flow.admit("/queue/a", 40, || false).expect("room");
        // Full: a waiting admit gives up only when told to stop, and takes nothing.
        assert!(flow.admit("/queue/a", 1, || true).is_none());
        assert_eq!(flow.pending(), 100);
        assert_eq!(flow.waits(), 1);
        first.join(second);
        assert_eq!((first.bytes(), flow.pending()), (100, 100));
        drop(first);
        assert_eq!(flow.pending(), 0);
        let big = flow.admit("/queue/a", 500, || false);
        assert_eq!(flow.pending(), 500);
        drop(big);
        assert_eq!(flow.pending(), 0);
    }

    #[test]
    fn a_full_queue_holds_only_its_own_producers() {
        let flow = Arc::new(FlowControl::new(1000));
        let queue: Arc<str> = Arc::from("/queue/full");
        flow.set_full(&queue, true);
        let other = flow.admit("/queue/other", 1, || false);
        assert!(other.is_some());
        assert!(flow.admit("/queue/full", 1, || true).is_none());
        let waiter = {
            let flow = flow.clone();
            std::thread::spawn(move || flow.admit("/queue/full", 1, || false))
        };
        flow.set_full(&queue, false);
        let admitted = waiter.join().unwrap();
        assert!(admitted.is_some());
        assert_eq!(flow.pending(), 2);
    }
}
