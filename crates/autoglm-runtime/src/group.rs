//! What the consumer group told this instance: partitions assigned, revoked and lost.
//!
//! ```text
//!  recv() ──► librdkafka rebalance event ──► GroupContext (same task, inside recv)
//!                                               │ revoked / lost / assigned partitions
//!  poll loop ◄── take() after every recv ◄──────┘
//!     revoked: drop the batch's records of those partitions (another instance owns them now)
//!     lost:    forget their changelog checkpoints (the next assignment restores them whole)
//!     assigned: restore their changelog tails before any of their records is processed
//! ```
//!
//! Rebalance callbacks run inside `recv()`, and the pipeline only polls between transactions,
//! so a revocation never meets an open transaction: the batch before it was committed (or
//! aborted) already, and the records polled since are dropped unprocessed. The group uses
//! cooperative-sticky assignment (incremental: a rebalance moves only the partitions that
//! change owner); the exactly-once fencing comes from `send_offsets_to_transaction` with the
//! consumer's group metadata, which the broker refuses for a stale generation or a member whose
//! session expired. It checks the membership when the offsets are sent, not when the transaction
//! commits: an instance stalled between the two (past its session, within
//! `transaction.timeout.ms`) still commits when it wakes, after its partitions moved on. The
//! next owner stays consistent with that late commit because its input offsets are fetched
//! stable (they wait for the transaction) and its restore reads the changelog to the log end
//! (it waits too; see `restore`).
//!
//! The context also keeps the consumer-lag gauge: librdkafka's statistics (every
//! `statistics.interval.ms`) give each owned partition's last stable offset, and the lag is that
//! minus the offset this instance last committed for it ([`GroupContext::committed`]), or,
//! before its first commit, the group's committed offset fetched at assignment (for a group
//! that never committed, the position the consumer read to). librdkafka's own
//! `consumer_lag` cannot serve: offsets committed through the transactional producer never reach
//! the consumer's bookkeeping.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use prometheus::{IntGauge, IntGaugeVec};
use rdkafka::ClientContext;
use rdkafka::Statistics;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;

/// A topic partition.
pub(crate) type Partition = (String, i32);

/// Changes since the poll loop last asked.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Newly assigned partitions.
    pub assigned: Vec<Partition>,
    /// Partitions revoked (including lost ones).
    pub revoked: HashSet<Partition>,
    /// Partitions lost without a clean revoke (session expired, fenced).
    pub lost: Vec<Partition>,
    /// A rebalance completed with an assignment (possibly empty: librdkafka reports every one).
    pub rebalanced: bool,
}

impl Changes {
    /// Adds `later`, the changes that followed these: a partition `later` revokes is no longer
    /// newly assigned, unless `later` assigns it again.
    pub(crate) fn merge(&mut self, later: Changes) {
        self.assigned.retain(|p| !later.revoked.contains(p));
        self.assigned.extend(later.assigned);
        self.lost.extend(later.lost);
        self.revoked.extend(later.revoked);
        self.rebalanced |= later.rebalanced;
    }

    /// `owned` as if newly assigned: for a restore of all of them.
    pub(crate) fn owning(owned: Vec<Partition>) -> Changes {
        Changes {
            assigned: owned,
            ..Changes::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.assigned.is_empty()
            && self.revoked.is_empty()
            && self.lost.is_empty()
            && !self.rebalanced
    }
}

/// The consumer context of the processor's group member.
///
/// The callbacks ask librdkafka nothing that needs its main thread: they also run while the
/// consumer closes (inside its `Drop`), when the group's queue is served by the very thread
/// that waits for the answer. `consumer.assignment()` there never returned.
#[derive(Debug)]
pub struct GroupContext {
    changes: Mutex<Changes>,
    /// The partitions this member owns, as the rebalance events tell it.
    owned: Mutex<HashSet<Partition>>,
    /// Kept at the size of `owned` after every rebalance.
    assigned_partitions: IntGauge,
    /// The next offset to read of each owned partition, as this instance last committed it.
    committed: Mutex<HashMap<Partition, i64>>,
    /// Records behind each owned partition's last stable offset, by topic and partition.
    lag: IntGaugeVec,
}

impl GroupContext {
    /// A context that keeps `assigned_partitions` at the member's partition count and `lag` per
    /// owned partition.
    pub fn new(assigned_partitions: IntGauge, lag: IntGaugeVec) -> GroupContext {
        GroupContext {
            changes: Mutex::default(),
            owned: Mutex::default(),
            assigned_partitions,
            committed: Mutex::default(),
            lag,
        }
    }

    /// The partitions this member owns, as the rebalance events told it.
    pub(crate) fn owned(&self) -> Vec<Partition> {
        let owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        owned.iter().cloned().collect()
    }

    /// Notes the offsets a batch committed (the next offset to read, per partition).
    pub(crate) fn committed(&self, offsets: impl IntoIterator<Item = (Partition, i64)>) {
        self.committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(offsets);
    }

    /// Takes the changes since the last call.
    pub(crate) fn take(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn record(&self, f: impl FnOnce(&mut Changes)) {
        f(&mut self.changes.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Applies an assignment change to the owned partitions and the gauge. Both protocols fit:
    /// eager revokes everything and assigns everything, cooperative only the difference.
    fn own(&self, f: impl FnOnce(&mut HashSet<Partition>)) {
        let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut owned);
        self.assigned_partitions
            .set(i64::try_from(owned.len()).unwrap_or(i64::MAX));
    }

    /// Forgets the lag and the committed offsets of partitions this member gave up.
    fn forget(&self, partitions: &[Partition]) {
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (topic, partition) in partitions {
            committed.remove(&(topic.clone(), *partition));
            // Absent when no statistics came while it was owned.
            let _ = self
                .lag
                .remove_label_values(&[topic, &partition.to_string()]);
        }
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (topic, stats) in &statistics.topics {
            for (&partition, p) in &stats.partitions {
                let key = (topic.clone(), partition);
                if !owned.contains(&key) {
                    continue;
                }
                let position = committed
                    .get(&key)
                    .copied()
                    .unwrap_or(if p.committed_offset >= 0 {
                        p.committed_offset
                    } else {
                        p.app_offset
                    });
                if let Some(lag) = lag(p.ls_offset, position) {
                    self.lag
                        .with_label_values(&[topic, &partition.to_string()])
                        .set(lag);
                }
            }
        }
    }
}

/// Records between `position` (the next offset to read) and `end` (the last stable offset);
/// `None` while either is unknown (librdkafka's logical offsets are negative).
fn lag(end: i64, position: i64) -> Option<i64> {
    (end >= 0 && position >= 0).then(|| (end - position).max(0))
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = elements(list);
            // A flag read, not a request to librdkafka's main thread.
            let lost = consumer.assignment_lost();
            tracing::info!(?partitions, lost, "partitions revoked");
            self.own(|owned| {
                for p in &partitions {
                    owned.remove(p);
                }
            });
            self.forget(&partitions);
            self.record(|c| {
                // A partition revoked and assigned again is restored again.
                c.assigned.retain(|p| !partitions.contains(p));
                if lost {
                    c.lost.extend(partitions.iter().cloned());
                }
                c.revoked.extend(partitions);
            });
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = elements(list);
                tracing::info!(?partitions, "partitions assigned");
                self.own(|owned| owned.extend(partitions.iter().cloned()));
                self.record(|c| {
                    c.assigned.extend(partitions);
                    c.rebalanced = true;
                });
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

fn elements(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: i32) -> Partition {
        ("in".to_owned(), partition)
    }

    #[test]
    fn lag_is_the_distance_to_the_last_stable_offset() {
        assert_eq!(lag(120, 100), Some(20));
        assert_eq!(lag(100, 100), Some(0));
        // A commit seen before the statistics caught up with the log end.
        assert_eq!(lag(100, 105), Some(0));
        // OFFSET_INVALID (-1001): not fetched yet, or nothing committed.
        assert_eq!(lag(-1001, 100), None);
        assert_eq!(lag(100, -1001), None);
    }

    #[test]
    fn a_revoked_partition_leaves_the_lag_gauge() {
        use prometheus::core::Collector as _;

        let lag = IntGaugeVec::new(prometheus::Opts::new("lag", "lag"), &["topic", "partition"])
            .expect("gauge");
        let assigned = IntGauge::new("assigned", "assigned").expect("gauge");
        let context = GroupContext::new(assigned, lag.clone());
        context.own(|owned| owned.extend([p(0), p(1)]));
        context.committed([(p(0), 10), (p(1), 20)]);
        lag.with_label_values(&["in", "0"]).set(5);
        lag.with_label_values(&["in", "1"]).set(7);
        context.forget(&[p(0)]);
        let left: Vec<_> = lag.collect()[0]
            .get_metric()
            .iter()
            .flat_map(|m| m.get_label().iter().filter(|l| l.name() == "partition"))
            .map(|l| l.value().to_owned())
            .collect();
        assert_eq!(left, ["1"], "only partition 1 is left");
        let committed = context
            .committed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert_eq!(committed.keys().collect::<Vec<_>>(), [&p(1)]);
    }

    #[test]
    fn a_partition_revoked_later_is_assigned_only_if_assigned_again() {
        let mut changes = Changes {
            assigned: vec![p(0), p(1)],
            ..Changes::default()
        };
        changes.merge(Changes {
            assigned: vec![p(1)],
            revoked: [p(0), p(1)].into(),
            lost: vec![p(0), p(1)],
            rebalanced: true,
        });
        assert_eq!(changes.assigned, vec![p(1)]);
        assert_eq!(changes.revoked, [p(0), p(1)].into());
        assert_eq!(changes.lost, vec![p(0), p(1)]);
        assert!(changes.rebalanced);
    }
}
