//! Producer flow control: the two gates a SEND passes before it goes to the store, so a broker
//! whose store falls behind, or whose queue is full, slows its producers down instead of
//! growing its memory.
//!
//! - The store backlog: the weight (bodies, headers, per-message overhead) of SENDs handed to
//!   the store writer and not yet routed. Session readers take budget before handing a SEND
//!   over (`admit`) and wait while it is spent; the router gives it back once it has routed
//!   the batch (the store writer, for a batch that failed), so the budget bounds the writer's
//!   queue and the router's inbox together. One message larger than the whole budget still
//!   passes when nothing else is pending, so nothing waits for ever.
//! - Full queues: the router marks a queue full when it holds `max_queue_depth` waiting
//!   messages and clears the mark when it drops below; a SEND to a full queue waits.
//!
//! A waiting reader stops reading its socket, so TCP pushes back on that producer alone;
//! producers of other queues go on. Waits are bounded ticks that recheck shutdown. Runs on the
//! threads that call it (session readers, the store writer, the router); calls nothing.

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
    /// Bytes handed to the store writer, not yet committed.
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
    /// them. False when `stopping` said so while waiting (nothing was taken).
    pub fn admit(&self, destination: &str, bytes: usize, stopping: impl Fn() -> bool) -> bool {
        let mut state = self.lock();
        let mut counted = false;
        loop {
            let room = state.pending == 0 || state.pending + bytes <= self.capacity;
            if room && !state.full.contains(destination) {
                state.pending += bytes;
                return true;
            }
            if !counted {
                self.waits.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            if stopping() {
                return false;
            }
            state = match self.changed.wait_timeout(state, TICK) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// The store writer finished (committed or failed) SENDs of `bytes` body bytes.
    pub fn committed(&self, bytes: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_admits_until_full_and_an_oversized_message_when_empty() {
        let flow = FlowControl::new(100);
        assert!(flow.admit("/queue/a", 60, || false));
        assert!(flow.admit("/queue/a", 40, || false));
        // Full: a waiting admit gives up only when told to stop, and takes nothing.
        assert!(!flow.admit("/queue/a", 1, || true));
        assert_eq!(flow.pending(), 100);
        assert_eq!(flow.waits(), 1);
        flow.committed(100);
        assert!(flow.admit("/queue/a", 500, || false));
        assert_eq!(flow.pending(), 500);
    }

    #[test]
    fn a_full_queue_holds_only_its_own_producers() {
        let flow = Arc::new(FlowControl::new(1000));
        let queue: Arc<str> = Arc::from("/queue/full");
        flow.set_full(&queue, true);
        assert!(flow.admit("/queue/other", 1, || false));
        assert!(!flow.admit("/queue/full", 1, || true));
        let waiter = {
            let flow = flow.clone();
            std::thread::spawn(move || flow.admit("/queue/full", 1, || false))
        };
        flow.set_full(&queue, false);
        assert!(waiter.join().unwrap());
        assert_eq!(flow.pending(), 2);
    }
}
