//! Figures for the status endpoints and the admin command: per-destination counters kept as
//! messages move (`CounterTable`), and snapshots of them with each destination's depth,
//! in-flight and consumers summed from where its messages wait (`Tally`); both unit-tested.
//! Runs on the router thread only; the status thread asks through `RouterMsg::Stats` and waits
//! on its own channel.

use super::{Router, Source};
use std::collections::HashMap;
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

/// Every destination's `Counters`, kept as messages move (a value with no I/O).
#[derive(Default)]
pub(super) struct CounterTable {
    by_destination: HashMap<Arc<str>, Counters>,
}

impl CounterTable {
    /// Update `destination`'s counters (a destination first counted starts at zero).
    pub(super) fn count(&mut self, destination: &str, update: impl FnOnce(&mut Counters)) {
        match self.by_destination.get_mut(destination) {
            Some(c) => update(c),
            None => {
                let mut c = Counters::default();
                update(&mut c);
                self.by_destination.insert(Arc::from(destination), c);
            }
        }
    }

    /// The destination is gone (an admin deleted it): its totals with it.
    pub(super) fn forget(&mut self, destination: &str) {
        self.by_destination.remove(destination);
    }
}

/// The destinations of a snapshot, gathered from counters and from each place messages wait
/// (queues, durable subscriptions, subscriptions), one row per name.
#[derive(Default)]
struct Tally {
    rows: Vec<DestinationStats>,
    at: HashMap<String, usize>,
}

impl Tally {
    fn row(&mut self, name: &str) -> &mut DestinationStats {
        let i = match self.at.get(name) {
            Some(&i) => i,
            None => {
                self.rows.push(DestinationStats {
                    name: name.to_string(),
                    depth: 0,
                    in_flight: 0,
                    consumers: 0,
                    counters: Counters::default(),
                });
                self.at.insert(name.to_string(), self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    fn counters(&mut self, table: &CounterTable) {
        for (name, counters) in &table.by_destination {
            self.row(name).counters = *counters;
        }
    }

    fn add(&mut self, name: &str, depth: usize, in_flight: usize, consumers: usize) {
        let row = self.row(name);
        row.depth += depth;
        row.in_flight += in_flight;
        row.consumers += consumers;
    }

    /// The rows by name.
    fn finish(mut self) -> Vec<DestinationStats> {
        self.rows.sort_by(|a, b| a.name.cmp(&b.name));
        self.rows
    }
}

impl Router {
    /// Update `destination`'s counters.
    pub(super) fn count(&mut self, destination: &str, update: impl FnOnce(&mut Counters)) {
        self.counters.count(destination, update);
    }

    /// Count a delivered entry as consumed.
    pub(super) fn count_dequeued(&mut self, entry: &crate::queue::Entry) {
        if let Some(m) = entry.message().cloned() {
            self.count(&m.destination, |c| c.dequeued += 1);
        }
    }

    pub(super) fn stats(&self) -> Stats {
        let mut tally = Tally::default();
        tally.counters(&self.counters);
        for (name, dest) in &self.queues {
            tally.add(name, dest.queue.len(), 0, dest.consumers.len());
        }
        for durable in self.durables.values() {
            let active = usize::from(durable.active.is_some());
            tally.add(&durable.row.topic, durable.queue.len(), 0, active);
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
            tally.add(&name, sub.backlog.len(), sub.inflight.len(), topic_consumer);
        }
        Stats {
            connections: self.conns.len(),
            held_bytes: self.residency.held(),
            destinations: tally.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_per_destination_from_zero_until_forgotten() {
        let mut table = CounterTable::default();
        table.count("/queue/a", |c| c.enqueued += 2);
        table.count("/queue/a", |c| c.dequeued += 1);
        table.count("/topic/t", |c| c.dead_lettered += 1);
        let mut tally = Tally::default();
        tally.counters(&table);
        let rows = tally.finish();
        assert_eq!(rows.len(), 2);
        let a = Counters {
            enqueued: 2,
            dequeued: 1,
            ..Counters::default()
        };
        assert_eq!((rows[0].name.as_str(), rows[0].counters), ("/queue/a", a));
        table.forget("/queue/a");
        table.count("/queue/a", |c| c.redelivered += 1);
        assert_eq!(table.by_destination["/queue/a"].enqueued, 0);
        assert_eq!(table.by_destination["/queue/a"].redelivered, 1);
    }

    #[test]
    fn a_snapshot_has_one_row_per_destination_summed_and_by_name() {
        let mut table = CounterTable::default();
        table.count("/topic/t", |c| c.enqueued += 5);
        let mut tally = Tally::default();
        tally.counters(&table);
        // A topic's durable subscription and two subscribers, a queue with two consumers.
        tally.add("/topic/t", 3, 0, 1);
        tally.add("/queue/q", 4, 0, 2);
        tally.add("/topic/t", 1, 2, 1);
        tally.add("/topic/t", 0, 1, 1);
        let rows = tally.finish();
        let shape: Vec<(&str, usize, usize, usize, u64)> = rows
            .iter()
            .map(|d| {
                let n = (d.depth, d.in_flight, d.consumers);
                (d.name.as_str(), n.0, n.1, n.2, d.counters.enqueued)
            })
            .collect();
        assert_eq!(shape, [("/queue/q", 4, 0, 2, 0), ("/topic/t", 4, 3, 3, 5)]);
    }
}
