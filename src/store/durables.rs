//! Durable subscriptions by id and by topic: which subscriptions a topic message is stored and
//! delivered for, in id order (the order their entries are written and delivered). A plain value
//! with no I/O; the store writer keeps one in step with the rows it commits (so that a batch
//! knows which topic SENDs to store), the router one in step with the subscriptions it serves.
//! Each thread owns its own: they agree once a change has committed and reached the router.

use super::DurableRow;
use std::collections::HashMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durables {
    topic_of: HashMap<u64, String>,
    subs_of: HashMap<String, Vec<u64>>,
}

impl Durables {
    pub fn from_rows(rows: &[DurableRow]) -> Durables {
        let mut durables = Durables::default();
        for row in rows {
            durables.insert(row.id, row.topic.clone());
        }
        durables
    }

    /// The topic subscription `id` reads.
    pub fn topic(&self, id: u64) -> Option<&String> {
        self.topic_of.get(&id)
    }

    /// The subscriptions of `topic`, in id order.
    pub fn subscribers(&self, topic: &str) -> &[u64] {
        self.subs_of.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Subscription `id` reads `topic` (a new one, or one re-pointed from another topic).
    pub fn insert(&mut self, id: u64, topic: String) {
        self.remove(id);
        let subs = self.subs_of.entry(topic.clone()).or_default();
        let at = subs.partition_point(|&s| s < id);
        subs.insert(at, id);
        self.topic_of.insert(id, topic);
    }

    /// Subscription `id` is gone; a topic left without any is dropped from the index.
    pub fn remove(&mut self, id: u64) {
        let Some(topic) = self.topic_of.remove(&id) else {
            return;
        };
        if let Some(subs) = self.subs_of.get_mut(&topic) {
            subs.retain(|&s| s != id);
            if subs.is_empty() {
                self.subs_of.remove(&topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_topic_in_id_order_and_by_id_through_every_change() {
        let rows: Vec<DurableRow> = [(5, "/topic/t"), (2, "/topic/t"), (9, "/topic/u")]
            .into_iter()
            .map(|(id, topic)| DurableRow {
                id,
                client_id: "c".to_string(),
                name: format!("n{id}"),
                topic: topic.to_string(),
            })
            .collect();
        let mut durables = Durables::from_rows(&rows);
        assert_eq!(durables.subscribers("/topic/t"), [2, 5]);
        assert_eq!(durables.subscribers("/topic/u"), [9]);
        assert_eq!(durables.subscribers("/topic/none"), [] as [u64; 0]);
        assert_eq!(durables.topic(5).map(String::as_str), Some("/topic/t"));

        // Inserted again under the same topic: still once.
        durables.insert(5, "/topic/t".to_string());
        assert_eq!(durables.subscribers("/topic/t"), [2, 5]);
        // Re-pointed: leaves the old topic, joins the new one in id order.
        durables.insert(5, "/topic/u".to_string());
        assert_eq!(durables.subscribers("/topic/t"), [2]);
        assert_eq!(durables.subscribers("/topic/u"), [5, 9]);
        assert_eq!(durables.topic(5).map(String::as_str), Some("/topic/u"));

        let saved = durables.clone();
        for id in [2, 5, 9, 9, 42] {
            durables.remove(id);
        }
        assert_eq!(durables, Durables::default());
        assert_eq!(durables.topic(5), None);
        assert_eq!(saved.subscribers("/topic/u"), [5, 9], "a clone is its own");
    }
}
