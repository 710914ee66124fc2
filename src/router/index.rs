//! The destination index: where a topic message goes (the topic's current subscriptions, in
//! the order they subscribed, and its durable subscriptions, in id order) and which durable
//! subscription a (client-id, name) names. A self-contained value with no I/O, owned by the
//! router thread; the one place a wildcard subscription would be matched (as NATS's sublist
//! does for subjects). Queues keep their consumers with their messages (`QueueDest`).

use crate::store::{DurableRow, Durables};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub(super) struct Index {
    /// Topic -> its non-durable subscriptions (router subscription keys).
    topic_subs: HashMap<Arc<str>, Vec<u64>>,
    /// Durable subscriptions by topic (ids ascending) and by id.
    durables: Durables,
    /// (client-id, name) -> durable subscription id.
    durable_names: HashMap<(String, String), u64>,
}

impl Index {
    pub(super) fn subscribe(&mut self, topic: &Arc<str>, key: u64) {
        self.topic_subs.entry(topic.clone()).or_default().push(key);
    }

    pub(super) fn unsubscribe(&mut self, topic: &str, key: u64) {
        if let Some(keys) = self.topic_subs.get_mut(topic) {
            keys.retain(|&k| k != key);
            if keys.is_empty() {
                self.topic_subs.remove(topic);
            }
        }
    }

    /// The topic's current subscriptions, in the order they subscribed.
    pub(super) fn subscribers(&self, topic: &str) -> &[u64] {
        self.topic_subs.get(topic).map_or(&[], Vec::as_slice)
    }

    /// The topic's durable subscriptions, in id order (the order their entries are stored).
    pub(super) fn durables_of(&self, topic: &str) -> &[u64] {
        self.durables.subscribers(topic)
    }

    /// The durable subscription `(client-id, name)` names.
    pub(super) fn durable(&self, names: &(String, String)) -> Option<u64> {
        self.durable_names.get(names).copied()
    }

    pub(super) fn add_durable(&mut self, row: &DurableRow) {
        self.durable_names
            .insert((row.client_id.clone(), row.name.clone()), row.id);
        self.durables.insert(row.id, row.topic.clone());
    }

    /// Durable subscription `row.id` now reads `row.topic` (same id, same names).
    pub(super) fn repoint_durable(&mut self, row: &DurableRow) {
        self.durables.insert(row.id, row.topic.clone());
    }

    pub(super) fn remove_durable(&mut self, row: &DurableRow) {
        self.durable_names
            .remove(&(row.client_id.clone(), row.name.clone()));
        self.durables.remove(row.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, client_id: &str, name: &str, topic: &str) -> DurableRow {
        DurableRow {
            id,
            client_id: client_id.to_string(),
            name: name.to_string(),
            topic: topic.to_string(),
        }
    }

    #[test]
    fn topic_subscribers_in_subscription_order_and_gone_when_none_is_left() {
        let mut index = Index::default();
        let topic: Arc<str> = Arc::from("/topic/t");
        for key in [7, 3, 9] {
            index.subscribe(&topic, key);
        }
        assert_eq!(index.subscribers("/topic/t"), [7, 3, 9]);
        assert_eq!(index.subscribers("/topic/other"), [] as [u64; 0]);
        index.unsubscribe("/topic/t", 3);
        assert_eq!(index.subscribers("/topic/t"), [7, 9]);
        index.unsubscribe("/topic/t", 7);
        index.unsubscribe("/topic/t", 9);
        index.unsubscribe("/topic/t", 9);
        assert!(index.topic_subs.is_empty(), "an empty topic stays indexed");
    }

    #[test]
    fn durables_by_topic_in_id_order_and_by_names() {
        let mut index = Index::default();
        let rows = [
            row(5, "c1", "a", "/topic/t"),
            row(2, "c2", "a", "/topic/t"),
            row(9, "c1", "b", "/topic/u"),
        ];
        for r in &rows {
            index.add_durable(r);
        }
        index.add_durable(&rows[0]);
        assert_eq!(index.durables_of("/topic/t"), [2, 5]);
        assert_eq!(index.durables_of("/topic/u"), [9]);
        let names = |c: &str, n: &str| (c.to_string(), n.to_string());
        assert_eq!(index.durable(&names("c1", "a")), Some(5));
        assert_eq!(index.durable(&names("c1", "b")), Some(9));
        assert_eq!(index.durable(&names("c3", "a")), None);

        let moved = row(5, "c1", "a", "/topic/u");
        index.repoint_durable(&moved);
        assert_eq!(index.durables_of("/topic/t"), [2]);
        assert_eq!(index.durables_of("/topic/u"), [5, 9]);
        assert_eq!(index.durable(&names("c1", "a")), Some(5));

        index.remove_durable(&rows[1]);
        index.remove_durable(&moved);
        index.remove_durable(&rows[2]);
        assert!(index.durables == Durables::default() && index.durable_names.is_empty());
    }
}
