//! Figures for the status endpoints and the admin command: per-destination counters kept as
//! messages move, and snapshots of them. Runs on the router thread only; the status thread asks
//! through `RouterMsg::Stats` and waits on its own channel.

use super::{Router, Source};
use std::sync::Arc;

/// Running totals of one destination since this broker became master.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub enqueued: u64,
    pub dequeued: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// One destination as the status endpoint shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationStats {
    pub name: String,
    /// Messages waiting (for a topic: in its durable subscriptions and subscriber backlogs).
    pub depth: usize,
    /// Delivered, not yet acknowledged.
    pub in_flight: usize,
    pub consumers: usize,
    pub counters: Counters,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    /// Bytes held by waiting messages (`Entry::held_bytes`), against `memory_limit`.
    pub held_bytes: usize,
    pub destinations: Vec<DestinationStats>,
}

impl Router {
    /// Update `destination`'s counters.
    pub(super) fn count(&mut self, destination: &str, update: impl FnOnce(&mut Counters)) {
        match self.counters.get_mut(destination) {
            Some(c) => update(c),
            None => {
                let mut c = Counters::default();
                update(&mut c);
                self.counters.insert(Arc::from(destination), c);
            }
        }
    }

    /// Count a delivered entry as consumed.
    pub(super) fn count_dequeued(&mut self, entry: &crate::queue::Entry) {
        if let Some(m) = entry.message().cloned() {
            self.count(&m.destination, |c| c.dequeued += 1);
        }
    }

    pub(super) fn stats(&self) -> Stats {
        let mut destinations: Vec<DestinationStats> = self
            .counters
            .iter()
            .map(|(name, counters)| DestinationStats {
                name: name.to_string(),
                depth: 0,
                in_flight: 0,
                consumers: 0,
                counters: *counters,
            })
            .collect();
        let mut add = |name: &str, depth: usize, in_flight: usize, consumers: usize| {
            let i = match destinations.iter().position(|d| d.name == name) {
                Some(i) => i,
                None => {
                    destinations.push(DestinationStats {
                        name: name.to_string(),
                        depth: 0,
                        in_flight: 0,
                        consumers: 0,
                        counters: Counters::default(),
                    });
                    destinations.len() - 1
                }
            };
            let d = &mut destinations[i];
            d.depth += depth;
            d.in_flight += in_flight;
            d.consumers += consumers;
        };
        for (name, dest) in &self.queues {
            add(name, dest.queue.len(), 0, dest.consumers.len());
        }
        for durable in self.durables.values() {
            let active = usize::from(durable.active.is_some());
            add(&durable.row.topic, durable.queue.len(), 0, active);
        }
        for sub in self.subs.values() {
            let name = match (&sub.source, &sub.topic) {
                (Source::Queue(name), _) | (Source::Topic, Some(name)) => name.to_string(),
                (Source::Durable(id), _) => match self.durables.get(id) {
                    Some(d) => d.row.topic.clone(),
                    None => continue,
                },
                (Source::Topic, None) => continue,
            };
            let topic_consumer = usize::from(sub.source == Source::Topic);
            add(&name, sub.backlog.len(), sub.inflight.len(), topic_consumer);
        }
        destinations.sort_by(|a, b| a.name.cmp(&b.name));
        Stats {
            connections: self.conns.len(),
            held_bytes: self.held,
            destinations,
        }
    }
}
