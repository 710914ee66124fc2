//! Bounded memory: which entries keep their message in memory, and loading paged-out ones.
//! Runs on the router thread only. The budget and its decisions are `Residency`, a value with
//! no I/O (unit-tested); the router's methods here apply them to its queues and the pager.
//!
//! Rule: a new persistent message stays resident while the bytes held by pending entries
//! (`Router::held`: every entry's own size, and the message of each resident one) are under
//! `memory_limit`; past it, only its metadata is kept and the body waits in the store, so a deep
//! backlog's entries leave less room for bodies. Everything recovered starts paged out. When
//! paged entries come within `PAGE_WINDOW` of a queue's front and the queue has consumers, the
//! router asks the pager for up to `PAGE_BYTES` of them (one request in flight per queue); past
//! `memory_limit` only when the front entry itself is paged, so bodies stay within the limit
//! plus a page per queue.
//! Dispatch stops at a paged entry until its body arrives.
//! Non-persistent messages are never paged (the store does not have them).

use super::{Router, Source};
use crate::message::{Message, NON_PERSISTENT_BIT};
use crate::queue::{entry_weight, Entry, PagedMeta, Queue, Slot, ENTRY_BYTES};
use crate::store::{PageRequest, Paged};
use crossbeam_channel::TrySendError;
use std::collections::HashSet;
use std::sync::Arc;

/// How far from the front paged entries are loaded ahead of consumers.
const PAGE_WINDOW: usize = 512;
/// Bytes one page request loads at most (at least one message).
const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The bytes held by pending entries (`Entry::held_bytes`: each entry, and its message while
/// resident) against `memory_limit`, and the sources with a page request out.
pub(super) struct Residency {
    held: usize,
    limit: usize,
    paging: HashSet<Source>,
}

impl Residency {
    pub(super) fn new(limit: usize) -> Residency {
        Residency {
            held: 0,
            limit,
            paging: HashSet::new(),
        }
    }

    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Entries of `bytes` joined a queue.
    pub(super) fn hold(&mut self, bytes: usize) {
        self.held += bytes;
    }

    /// Entries of `bytes` left their queue (delivered, purged, moved) or their bodies were
    /// dropped.
    pub(super) fn release(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.held, "released {bytes} of {} held", self.held);
        self.held = self.held.saturating_sub(bytes);
    }

    /// Where a fresh message waits: resident while the budget allows, else paged out (its
    /// metadata only). A message the store does not have (non-persistent) stays resident.
    pub(super) fn slot(&self, message: Arc<Message>) -> Slot {
        let weight = message.weight();
        let stored = message.id & NON_PERSISTENT_BIT == 0;
        if stored && self.held + ENTRY_BYTES + weight > self.limit {
            return Slot::Paged(PagedMeta {
                id: message.id,
                priority: message.priority,
                expires: message.expires,
                weight: entry_weight(weight),
            });
        }
        Slot::Resident(message, entry_weight(weight))
    }

    /// The ids of `queue`'s paged entries to load for `source` now, if any: none while a
    /// request for it is out, and past the limit only when the front entry itself is paged
    /// (prefetching more for consumers without room would hold it all in memory).
    pub(super) fn page_ids(&self, source: &Source, queue: &Queue) -> Vec<u64> {
        if self.paging.contains(source) || queue.paged() == 0 {
            return Vec::new();
        }
        let front_paged = queue.front().is_some_and(|e| e.message().is_none());
        if self.held >= self.limit && !front_paged {
            return Vec::new();
        }
        queue
            .paged_near_front(PAGE_WINDOW, PAGE_BYTES)
            .iter()
            .map(|m| m.id)
            .collect()
    }

    /// A page request for `source` went out.
    pub(super) fn requested(&mut self, source: &Source) {
        self.paging.insert(source.clone());
    }

    /// `source`'s page request came back, or its queue is gone or emptied.
    pub(super) fn answered(&mut self, source: &Source) {
        self.paging.remove(source);
    }
}

impl Router {
    /// A fresh entry for a routed message: resident while memory allows, else paged out.
    pub(super) fn new_entry(&mut self, message: Arc<Message>) -> Entry {
        Entry {
            slot: self.residency.slot(message),
            seq: self.seq(),
            redeliveries: 0,
            redelivered: false,
        }
    }

    pub(super) fn queue_mut(&mut self, source: &Source) -> Option<&mut Queue> {
        match source {
            Source::Queue(name) => Some(&mut self.queues.get_mut(name)?.queue),
            Source::Durable(id) => Some(&mut self.durables.get_mut(id)?.queue),
            Source::Topic => None,
        }
    }

    pub(super) fn queue(&self, source: &Source) -> Option<&Queue> {
        match source {
            Source::Queue(name) => Some(&self.queues.get(name)?.queue),
            Source::Durable(id) => Some(&self.durables.get(id)?.queue),
            Source::Topic => None,
        }
    }

    /// Add an entry to a queue or durable subscription, keeping the memory count.
    pub(super) fn push_entry(&mut self, source: &Source, entry: Entry) {
        let bytes = entry.held_bytes();
        let queue = match source {
            Source::Queue(name) => &mut self.queues.entry(name.clone()).or_default().queue,
            _ => match self.queue_mut(source) {
                Some(queue) => queue,
                None => return,
            },
        };
        queue.push(entry);
        self.residency.hold(bytes);
    }

    pub(super) fn pop_entry(&mut self, source: &Source) -> Option<Entry> {
        let entry = self.queue_mut(source)?.pop_front()?;
        self.residency.release(entry.held_bytes());
        Some(entry)
    }

    /// Ask the pager for paged entries near the front of `source`, unless a request is out.
    pub(super) fn request_page(&mut self, source: &Source) {
        if !self.has_consumers(source) {
            return;
        }
        let Some(queue) = self.queue(source) else {
            return;
        };
        let ids = self.residency.page_ids(source, queue);
        if ids.is_empty() {
            return;
        }
        let request = PageRequest {
            key: source.clone(),
            ids,
        };
        match self.pager.try_send(request) {
            Ok(()) => self.residency.requested(source),
            // The pager is busy: try again on the next retry tick.
            Err(TrySendError::Full(_)) => {
                self.blocked.insert(source.clone());
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub(super) fn has_consumers(&self, source: &Source) -> bool {
        match source {
            Source::Queue(name) => self
                .queues
                .get(name)
                .is_some_and(|d| !d.consumers.is_empty()),
            Source::Durable(id) => self.durables.get(id).is_some_and(|d| d.active.is_some()),
            Source::Topic => false,
        }
    }

    /// Bodies arrived: give them to their entries and deliver.
    pub(super) fn paged_in(&mut self, paged: Paged<Source>) {
        self.residency.answered(&paged.key);
        let messages = match paged.messages {
            Ok(messages) => messages,
            Err(e) => {
                log::error!("could not load message bodies: {e}; will retry");
                self.blocked.insert(paged.key);
                return;
            }
        };
        let Some(queue) = self.queue_mut(&paged.key) else {
            return;
        };
        let (added, missing) = queue.page_in(&messages, &paged.ids);
        self.residency.hold(added);
        self.residency
            .release(missing.iter().map(Entry::held_bytes).sum::<usize>());
        for entry in missing {
            log::debug!(
                "message {} left the store before it was paged in",
                entry.id()
            );
        }
        self.dispatch(&paged.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: Slot, seq: u64) -> Entry {
        Entry {
            slot,
            seq,
            redeliveries: 0,
            redelivered: false,
        }
    }

    fn message(id: u64) -> Arc<Message> {
        Arc::new(Message::test(id, "/queue/a", &[0; 1000]))
    }

    #[test]
    fn a_message_stays_resident_while_the_budget_allows() {
        let mut residency = Residency::new(10_000);
        assert!(matches!(residency.slot(message(1)), Slot::Resident(..)));
        residency.hold(9_000);
        let Slot::Paged(meta) = residency.slot(message(2)) else {
            panic!("past the budget a stored message waits in the store");
        };
        assert_eq!(meta.id, 2);
        assert_eq!(meta.weight, entry_weight(message(2).weight()));
        let transient = message(NON_PERSISTENT_BIT | 3);
        assert!(
            matches!(residency.slot(transient), Slot::Resident(..)),
            "the store does not have a non-persistent message"
        );
        residency.release(9_000);
        assert_eq!(residency.held(), 0);
        assert!(matches!(residency.slot(message(4)), Slot::Resident(..)));
    }

    #[test]
    fn pages_are_asked_for_once_at_a_time_and_past_the_limit_only_for_the_front() {
        let source = Source::Queue(Arc::from("/queue/a"));
        let mut residency = Residency::new(1 << 20);
        let mut queue = Queue::default();
        assert!(
            residency.page_ids(&source, &queue).is_empty(),
            "nothing paged"
        );
        queue.push(entry(Slot::Resident(message(1), 1000), 1));
        let paged = |id| {
            Slot::Paged(PagedMeta {
                id,
                priority: 4,
                expires: 0,
                weight: 1000,
            })
        };
        queue.push(entry(paged(2), 2));
        queue.push(entry(paged(3), 3));
        assert_eq!(residency.page_ids(&source, &queue), [2, 3]);
        residency.requested(&source);
        assert!(
            residency.page_ids(&source, &queue).is_empty(),
            "one request out"
        );
        let other = Source::Durable(7);
        assert_eq!(residency.page_ids(&other, &queue), [2, 3], "per source");
        residency.answered(&source);
        assert_eq!(residency.page_ids(&source, &queue), [2, 3]);
        // Past the limit: the front is resident, so consumers can go on without loading more.
        residency.hold(1 << 20);
        assert!(residency.page_ids(&source, &queue).is_empty());
        queue.pop_front();
        assert_eq!(
            residency.page_ids(&source, &queue),
            [2, 3],
            "the front is paged"
        );
    }
}
