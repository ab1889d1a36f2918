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

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use prometheus::IntGauge;
use rdkafka::ClientContext;
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
}

impl GroupContext {
    /// A context that keeps `assigned_partitions` at the member's partition count.
    pub fn new(assigned_partitions: IntGauge) -> GroupContext {
        GroupContext {
            changes: Mutex::default(),
            owned: Mutex::default(),
            assigned_partitions,
        }
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
}

impl ClientContext for GroupContext {}

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
