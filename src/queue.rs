//! One destination's pending messages, in delivery order: higher priority first, then arrival.
//!
//! A plain data structure owned by the router thread (no locks, no I/O). A message put back after
//! a NACK or a lost consumer keeps its arrival number, so it returns to its old place.
//! An entry either holds its message (`Slot::Resident`) or only what ordering, expiry and memory
//! accounting need (`Slot::Paged`): its body and headers stay in the store until it nears the
//! front. The queue keeps count of the bytes its resident entries hold.

use crate::message::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a paged-out entry keeps in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedMeta {
    pub id: u64,
    pub priority: u8,
    pub expires: i64,
    /// The message's `weight()` once loaded.
    pub weight: usize,
}

/// The message itself, or just its metadata while the body waits in the store.
#[derive(Clone, Debug)]
pub enum Slot {
    Resident(Arc<Message>),
    Paged(PagedMeta),
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
            Slot::Resident(m) => m.id,
            Slot::Paged(p) => p.id,
        }
    }

    pub fn priority(&self) -> u8 {
        match &self.slot {
            Slot::Resident(m) => m.priority,
            Slot::Paged(p) => p.priority,
        }
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        let expires = match &self.slot {
            Slot::Resident(m) => m.expires,
            Slot::Paged(p) => p.expires,
        };
        expires > 0 && expires <= now_ms
    }

    /// Bytes held in memory for the message (0 while paged out).
    pub fn resident_bytes(&self) -> usize {
        match &self.slot {
            Slot::Resident(m) => m.weight(),
            Slot::Paged(_) => 0,
        }
    }

    /// The message's weight, resident or not.
    pub fn weight(&self) -> usize {
        match &self.slot {
            Slot::Resident(m) => m.weight(),
            Slot::Paged(p) => p.weight,
        }
    }

    pub fn message(&self) -> Option<&Arc<Message>> {
        match &self.slot {
            Slot::Resident(m) => Some(m),
            Slot::Paged(_) => None,
        }
    }
}

/// Pending entries keyed by (inverted priority, arrival).
#[derive(Default, Debug)]
pub struct Queue {
    pending: BTreeMap<(u8, u64), Entry>,
    /// Bytes held by resident entries.
    bytes: usize,
    /// Entries that have an expiry time, so sweeps skip queues without any.
    expiring: usize,
    /// Entries paged out.
    paged: usize,
}

impl Queue {
    fn key(entry: &Entry) -> (u8, u64) {
        (9 - entry.priority().min(9), entry.seq)
    }

    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.resident_bytes();
        if entry.is_expired(i64::MAX) {
            self.expiring += 1;
        }
        if entry.message().is_none() {
            self.paged += 1;
        }
        self.pending.insert(Self::key(&entry), entry);
    }

    fn forget(&mut self, entry: &Entry) {
        self.bytes -= entry.resident_bytes();
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
        for entry in self.pending.values().take(window) {
            if let Slot::Paged(meta) = &entry.slot {
                if !out.is_empty() && bytes + meta.weight > max_bytes {
                    break;
                }
                bytes += meta.weight;
                out.push(*meta);
            }
        }
        out
    }

    /// Give loaded messages to their paged entries; returns the bytes now resident. Entries
    /// whose message did not come back (removed meanwhile) are returned for the caller to drop.
    pub fn page_in(
        &mut self,
        loaded: &std::collections::HashMap<u64, Arc<Message>>,
        ids: &[u64],
    ) -> (usize, Vec<Entry>) {
        let mut added = 0;
        let mut missing = Vec::new();
        let keys: Vec<(u8, u64)> = self
            .pending
            .iter()
            .filter(|(_, e)| matches!(e.slot, Slot::Paged(p) if ids.contains(&p.id)))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(entry) = self.pending.get_mut(&key) else {
                continue;
            };
            match loaded.get(&entry.id()) {
                Some(message) => {
                    entry.slot = Slot::Resident(message.clone());
                    added += message.weight();
                    self.paged -= 1;
                }
                None => {
                    if let Some(entry) = self.pending.remove(&key) {
                        self.forget(&entry);
                        missing.push(entry);
                    }
                }
            }
        }
        self.bytes += added;
        (added, missing)
    }

    /// The next entry to deliver, without removing it.
    pub fn front(&self) -> Option<&Entry> {
        self.pending.values().next()
    }

    pub fn pop_front(&mut self) -> Option<Entry> {
        let (_, entry) = self.pending.pop_first()?;
        self.forget(&entry);
        Some(entry)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Pending entries in delivery order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.pending.values()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes of the resident pending messages (bodies and headers).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Remove and return every entry whose message has expired.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<Entry> {
        if self.expiring == 0 {
            return Vec::new();
        }
        let keys: Vec<(u8, u64)> = self
            .pending
            .iter()
            .filter(|(_, e)| e.is_expired(now_ms))
            .map(|(k, _)| *k)
            .collect();
        let mut expired = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(entry) = self.pending.remove(&key) {
                self.forget(&entry);
                expired.push(entry);
            }
        }
        expired
    }

    /// Remove everything (used when a durable subscription is deleted).
    pub fn drain(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        self.expiring = 0;
        self.paged = 0;
        std::mem::take(&mut self.pending).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, priority: u8) -> Entry {
        let message = Message {
            id: seq,
            destination: Arc::from("/queue/q"),
            persistent: true,
            priority,
            expires: if seq == 3 { 1 } else { 0 },
            timestamp: 0,
            original_destination: None,
            headers: Vec::new(),
            body: vec![0; 10],
        };
        Entry {
            slot: Slot::Resident(Arc::new(message)),
            seq,
            redeliveries: 0,
            redelivered: false,
        }
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
        assert_eq!(q.bytes(), resident + added);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front().map(|e| e.seq)).collect();
        assert_eq!(order, vec![1, 2, 4]);
        assert_eq!(q.bytes(), 0);
    }
}
