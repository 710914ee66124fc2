//! Bounded memory: which entries keep their message in memory, and loading paged-out ones.
//! Runs on the router thread only.
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
use std::sync::Arc;

/// How far from the front paged entries are loaded ahead of consumers.
const PAGE_WINDOW: usize = 512;
/// Bytes one page request loads at most (at least one message).
const PAGE_BYTES: usize = 4 * 1024 * 1024;

impl Router {
    /// A fresh entry for a routed message: resident while memory allows, else paged out.
    pub(super) fn new_entry(&mut self, message: Arc<Message>) -> Entry {
        let weight = message.weight();
        let stored = message.id & NON_PERSISTENT_BIT == 0;
        let slot = if stored && self.held + ENTRY_BYTES + weight > self.memory_limit {
            Slot::Paged(PagedMeta {
                id: message.id,
                priority: message.priority,
                expires: message.expires,
                weight: entry_weight(weight),
            })
        } else {
            Slot::Resident(message, entry_weight(weight))
        };
        Entry {
            slot,
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
        self.held += bytes;
    }

    pub(super) fn pop_entry(&mut self, source: &Source) -> Option<Entry> {
        let entry = self.queue_mut(source)?.pop_front()?;
        self.held -= entry.held_bytes();
        Some(entry)
    }

    /// Ask the pager for paged entries near the front of `source`, unless a request is out.
    pub(super) fn request_page(&mut self, source: &Source) {
        if self.paging.contains(source) {
            return;
        }
        let Some(queue) = self.queue(source) else {
            return;
        };
        if queue.paged() == 0 || !self.has_consumers(source) {
            return;
        }
        // Past the memory limit, load only what the front needs to move on: prefetching more
        // for consumers without room would hold it all in memory.
        let front_paged = queue.front().is_some_and(|e| e.message().is_none());
        if self.held >= self.memory_limit && !front_paged {
            return;
        }
        let ids: Vec<u64> = queue
            .paged_near_front(PAGE_WINDOW, PAGE_BYTES)
            .iter()
            .map(|m| m.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let request = PageRequest {
            key: source.clone(),
            ids,
        };
        match self.pager.try_send(request) {
            Ok(()) => {
                self.paging.insert(source.clone());
            }
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
        self.paging.remove(&paged.key);
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
        self.held += added;
        self.held -= missing.iter().map(Entry::held_bytes).sum::<usize>();
        for entry in missing {
            log::debug!(
                "message {} left the store before it was paged in",
                entry.id()
            );
        }
        self.dispatch(&paged.key);
    }
}
