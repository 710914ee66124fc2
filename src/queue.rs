//! One destination's pending messages, in delivery order: higher priority first, then arrival.
//!
//! A plain data structure (no locks, no I/O): recovery builds a recovered backlog's queues, then
//! the router thread owns them and all others. A message put back after a NACK or a lost
//! consumer keeps its arrival number, so it returns to its old place.
//! An entry either holds its message (`Slot::Resident`) or only what ordering, expiry and memory
//! accounting need (`Slot::Paged`): its body and headers stay in the store until it nears the
//! front. The queue keeps count of the bytes its entries hold (`Entry::held_bytes`).

use crate::message::Message;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// What a paged-out entry keeps in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedMeta {
    pub id: u64,
    pub priority: u8,
    pub expires: i64,
    /// The message's weight once loaded (`entry_weight`).
    pub weight: u32,
}

/// The message itself, or just its metadata while the body waits in the store.
#[derive(Clone, Debug)]
pub enum Slot {
    /// The message and its `Message::weight`, computed once: the memory count reads it each
    /// time the entry moves.
    Resident(Arc<Message>, u32),
    Paged(PagedMeta),
}

impl Slot {
    pub fn resident(message: Arc<Message>) -> Slot {
        let weight = entry_weight(message.weight());
        Slot::Resident(message, weight)
    }
}

/// A message's weight as an entry keeps it (u32: bodies are bounded by `max_frame`, and a deep
/// backlog is mostly entries).
pub fn entry_weight(weight: usize) -> u32 {
    u32::try_from(weight).unwrap_or(u32::MAX)
}

/// A message waiting in a queue or a durable subscription, with its delivery history.
#[derive(Clone, Debug)]
pub struct Entry {
    pub slot: Slot,
    /// Arrival order within the router; lower is older.
    pub seq: u64,
    /// How many times it was delivered and not acknowledged.
    pub redeliveries: u32,
    /// It may have been delivered before (also true for everything recovered from the store).
    pub redelivered: bool,
}

impl Entry {
    pub fn id(&self) -> u64 {
        match &self.slot {
            Slot::Resident(m, _) => m.id,
            Slot::Paged(p) => p.id,
        }
    }

    pub fn priority(&self) -> u8 {
        match &self.slot {
            Slot::Resident(m, _) => m.priority,
            Slot::Paged(p) => p.priority,
        }
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        let expires = match &self.slot {
            Slot::Resident(m, _) => m.expires,
            Slot::Paged(p) => p.expires,
        };
        expires > 0 && expires <= now_ms
    }

    /// Bytes this entry holds in memory: the entry itself, and its message while resident. A
    /// deep backlog is mostly paged entries, so they count too.
    pub fn held_bytes(&self) -> usize {
        match &self.slot {
            Slot::Resident(_, weight) => ENTRY_BYTES + *weight as usize,
            Slot::Paged(_) => ENTRY_BYTES,
        }
    }

    /// The message's weight, resident or not.
    pub fn weight(&self) -> usize {
        match &self.slot {
            Slot::Resident(_, weight) => *weight as usize,
            Slot::Paged(p) => p.weight as usize,
        }
    }

    pub fn message(&self) -> Option<&Arc<Message>> {
        match &self.slot {
            Slot::Resident(m, _) => Some(m),
            Slot::Paged(_) => None,
        }
    }
}

/// What an entry costs in memory before its message.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Priority levels: STOMP's 0 to 9 (higher first; above 9 counts as 9).
const LEVELS: usize = 10;

/// Pending entries: one deque per priority level, each in arrival order. Entries arrive in
/// order and leave from the front, so this costs an entry's size and nothing per node (a deep
/// backlog is mostly these entries); a put-back entry is inserted at its old place, near the
/// front.
#[derive(Default, Debug)]
pub struct Queue {
    /// Index 0 holds priority 9, index 9 priority 0.
    levels: [VecDeque<Entry>; LEVELS],
    len: usize,
    /// Bytes held by resident entries.
    bytes: usize,
    /// Entries that have an expiry time, so sweeps skip queues without any.
    expiring: usize,
    /// Entries paged out.
    paged: usize,
}

impl Queue {
    /// Index into `levels` of `priority`.
    fn level(priority: u8) -> usize {
        LEVELS - 1 - usize::from(priority.min(9))
    }

    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.held_bytes();
        if entry.is_expired(i64::MAX) {
            self.expiring += 1;
        }
        if entry.message().is_none() {
            self.paged += 1;
        }
        self.len += 1;
        let level = &mut self.levels[Self::level(entry.priority())];
        if level.back().is_none_or(|last| last.seq < entry.seq) {
            level.push_back(entry);
        } else {
            let at = level.partition_point(|e| e.seq < entry.seq);
            level.insert(at, entry);
        }
    }

    fn forget(&mut self, entry: &Entry) {
        self.len -= 1;
        self.bytes -= entry.held_bytes();
        if entry.is_expired(i64::MAX) {
            self.expiring -= 1;
        }
        if entry.message().is_none() {
            self.paged -= 1;
        }
    }

    /// How many entries are paged out.
    pub fn paged(&self) -> usize {
        self.paged
    }

    /// The first `max` paged entries among the first `window` entries, in delivery order, with
    /// their total weight bounded by `max_bytes` (but at least one): what to load next.
    pub fn paged_near_front(&self, window: usize, max_bytes: usize) -> Vec<PagedMeta> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.iter().take(window) {
            if let Slot::Paged(meta) = &entry.slot {
                let weight = meta.weight as usize;
                if !out.is_empty() && bytes + weight > max_bytes {
                    break;
                }
                bytes += weight;
                out.push(*meta);
            }
        }
        out
    }

    /// Give loaded messages to their paged entries; returns the bytes now resident. Entries
    /// whose message did not come back (removed meanwhile) leave the queue and are returned for
    /// the caller to drop (and to stop counting).
    /// The entries asked for were near the front: the search walks from there and stops once
    /// it has seen them all.
    pub fn page_in(
        &mut self,
        loaded: &std::collections::HashMap<u64, Arc<Message>>,
        ids: &[u64],
    ) -> (usize, Vec<Entry>) {
        let mut wanted: HashSet<u64> = ids.iter().copied().collect();
        let mut added = 0;
        let mut gone = Vec::new();
        'levels: for (level, entries) in self.levels.iter_mut().enumerate() {
            for (at, entry) in entries.iter_mut().enumerate() {
                if wanted.is_empty() {
                    break 'levels;
                }
                let Slot::Paged(meta) = &entry.slot else {
                    continue;
                };
                if !wanted.remove(&meta.id) {
                    continue;
                }
                match loaded.get(&meta.id) {
                    Some(message) => {
                        entry.slot = Slot::resident(message.clone());
                        added += entry.weight();
                        self.paged -= 1;
                    }
                    None => gone.push((level, at)),
                }
            }
        }
        self.bytes += added;
        // Back to front, so the positions of those still to remove stay valid.
        let mut missing = Vec::with_capacity(gone.len());
        for (level, at) in gone.into_iter().rev() {
            if let Some(entry) = self.levels[level].remove(at) {
                self.forget(&entry);
                missing.push(entry);
            }
        }
        missing.reverse();
        (added, missing)
    }

    /// The next entry to deliver, without removing it.
    pub fn front(&self) -> Option<&Entry> {
        self.levels.iter().find_map(VecDeque::front)
    }

    pub fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.levels.iter_mut().find_map(VecDeque::pop_front)?;
        self.forget(&entry);
        Some(entry)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Pending entries in delivery order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.levels.iter().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the pending entries hold (`Entry::held_bytes`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Remove and return every entry whose message has expired.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<Entry> {
        if self.expiring == 0 {
            return Vec::new();
        }
        let mut expired = Vec::new();
        for level in 0..LEVELS {
            if !self.levels[level].iter().any(|e| e.is_expired(now_ms)) {
                continue;
            }
            let entries = std::mem::take(&mut self.levels[level]);
            let (gone, kept): (VecDeque<Entry>, VecDeque<Entry>) =
                entries.into_iter().partition(|e| e.is_expired(now_ms));
            self.levels[level] = kept;
            expired.extend(gone);
        }
        for entry in &expired {
            self.forget(entry);
        }
        expired
    }

    /// Drop every entry and the room they took; returns the bytes they held.
    pub fn clear(&mut self) -> usize {
        let held = self.bytes;
        *self = Queue::default();
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, priority: u8) -> Entry {
        let message = Message {
            id: seq,
            destination: Arc::from("/queue/q"),
            kind: crate::message::Kind::Queue,
            persistent: true,
            priority,
            expires: if seq == 3 { 1 } else { 0 },
            timestamp: 0,
            original_destination: None,
            headers: Vec::new(),
            body: vec![0; 10],
        };
        Entry {
            slot: Slot::resident(Arc::new(message)),
            seq,
            redeliveries: 0,
            redelivered: false,
        }
    }

    #[test]
    fn an_entry_stays_small() {
        // A backlog of a million messages is a million of these.
        assert!(
            std::mem::size_of::<Entry>() <= 48,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn every_entry_holds_bytes_and_a_resident_one_its_message_too() {
        let mut q = Queue::default();
        let resident = entry(1, 4);
        let weight = resident.weight();
        q.push(resident);
        q.push(Entry {
            slot: Slot::Paged(PagedMeta {
                id: 2,
                priority: 4,
                expires: 0,
                weight: 100,
            }),
            seq: 2,
            redeliveries: 0,
            redelivered: true,
        });
        assert_eq!(q.bytes(), 2 * ENTRY_BYTES + weight);
        assert_eq!(q.clear(), 2 * ENTRY_BYTES + weight);
        assert_eq!((q.len(), q.bytes(), q.paged()), (0, 0, 0));
    }

    #[test]
    fn priority_then_arrival() {
        let mut q = Queue::default();
        for (seq, prio) in [(1, 4), (2, 9), (3, 4), (4, 0), (5, 9)] {
            q.push(entry(seq, prio));
        }
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front().map(|e| e.seq)).collect();
        assert_eq!(order, vec![2, 5, 1, 3, 4]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn put_back_keeps_place_and_expiry_removes() {
        let mut q = Queue::default();
        for seq in 1..=4 {
            q.push(entry(seq, 4));
        }
        let first = q.pop_front().unwrap();
        q.push(first);
        assert_eq!(q.front().map(|e| e.seq), Some(1));
        let expired: Vec<u64> = q.take_expired(10).iter().map(|e| e.seq).collect();
        assert_eq!(expired, vec![3]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn paged_entries_keep_order_and_page_in() {
        let mut q = Queue::default();
        q.push(entry(1, 4));
        for seq in 2..=4 {
            let meta = PagedMeta {
                id: seq,
                priority: 4,
                expires: 0,
                weight: 100,
            };
            q.push(Entry {
                slot: Slot::Paged(meta),
                seq,
                redeliveries: 0,
                redelivered: true,
            });
        }
        let resident = q.bytes();
        let wanted: Vec<u64> = q.paged_near_front(10, 150).iter().map(|m| m.id).collect();
        assert_eq!(wanted, vec![2]);
        let wanted: Vec<u64> = q.paged_near_front(10, 1000).iter().map(|m| m.id).collect();
        assert_eq!(wanted, vec![2, 3, 4]);
        let loaded: std::collections::HashMap<u64, Arc<Message>> =
            [(2, entry(2, 4)), (4, entry(4, 4))]
                .into_iter()
                .filter_map(|(id, e)| Some((id, e.message()?.clone())))
                .collect();
        let (added, missing) = q.page_in(&loaded, &[2, 3, 4]);
        assert_eq!(missing.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
        let gone: usize = missing.iter().map(Entry::held_bytes).sum();
        assert_eq!(gone, ENTRY_BYTES);
        assert_eq!(q.bytes(), resident + added - gone);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front().map(|e| e.seq)).collect();
        assert_eq!(order, vec![1, 2, 4]);
        assert_eq!(q.bytes(), 0);
    }
}
