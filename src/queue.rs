//! One destination's pending messages, in delivery order: higher priority first, then arrival.
//!
//! A plain data structure owned by the router thread (no locks, no I/O). A message put back after
//! a NACK or a lost consumer keeps its arrival number, so it returns to its old place.

use crate::message::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A message waiting in a queue or a durable subscription, with its delivery history.
#[derive(Clone, Debug)]
pub struct Entry {
    pub message: Arc<Message>,
    /// Arrival order within the router; lower is older.
    pub seq: u64,
    /// How many times it was delivered and not acknowledged.
    pub redeliveries: u32,
    /// It may have been delivered before (also true for everything recovered from the store).
    pub redelivered: bool,
}

/// Pending entries keyed by (inverted priority, arrival).
#[derive(Default, Debug)]
pub struct Queue {
    pending: BTreeMap<(u8, u64), Entry>,
    bytes: usize,
}

impl Queue {
    fn key(entry: &Entry) -> (u8, u64) {
        (9 - entry.message.priority.min(9), entry.seq)
    }

    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.message.weight();
        self.pending.insert(Self::key(&entry), entry);
    }

    /// The next entry to deliver, without removing it.
    pub fn front(&self) -> Option<&Entry> {
        self.pending.values().next()
    }

    pub fn pop_front(&mut self) -> Option<Entry> {
        let (_, entry) = self.pending.pop_first()?;
        self.bytes -= entry.message.weight();
        Some(entry)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes of the pending messages (bodies and headers).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Remove and return every entry whose message has expired.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<Entry> {
        let keys: Vec<(u8, u64)> = self
            .pending
            .iter()
            .filter(|(_, e)| e.message.is_expired(now_ms))
            .map(|(k, _)| *k)
            .collect();
        let mut expired = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(entry) = self.pending.remove(&key) {
                self.bytes -= entry.message.weight();
                expired.push(entry);
            }
        }
        expired
    }

    /// Remove everything (used when a durable subscription is deleted).
    pub fn drain(&mut self) -> Vec<Entry> {
        self.bytes = 0;
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
            message: Arc::new(message),
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
}
