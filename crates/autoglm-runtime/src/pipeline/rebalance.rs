//! Stage 5, rebalance: what the group changed, applied to the state between transactions.
//! Lost partitions forget their changelog checkpoint, assigned ones restore their changelog
//! tail (checked against the marks the group's last commits carry, `marks`), and the guard
//! forgets what it cached.
//!
//! Data flow: [`Changes`] (from poll), the group's committed marks ─► the state store and the
//! guard ─► the count of changelog records restored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use autoglm_state::{KvBackend, RocksBackend, VersionGuard, WriteRequest};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;

use super::marks::Mark;
use super::poll::Member;
use super::{Pipeline, RunError};
use crate::group::{Changes, Partition};
use crate::restore::restore;

/// How long reading the group's committed offsets may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(30);

impl Pipeline {
    /// Applies what the group changed: lost partitions forget their changelog checkpoint (their
    /// next assignment restores the whole partition), assigned partitions restore their
    /// changelog tail, and the guard forgets the entries it cached, which another instance may
    /// have changed since. Returns the changelog records replayed.
    pub(super) async fn follow_group(
        &self,
        consumer: &Arc<Member>,
        guard: &mut VersionGuard<RocksBackend>,
        changes: Changes,
    ) -> Result<u64, RunError> {
        if changes.is_empty() {
            return Ok(0);
        }
        // Forgotten first: a restore that fails half-way has written some entries already.
        guard.forget_cached();
        let backend = guard.backend();
        let changelog_of = |(topic, partition): &Partition| {
            self.routes
                .iter()
                .find(|r| r.matches(topic))
                .map(|r| (r.changelog_topic.clone(), *partition))
        };
        let lost: Vec<Partition> = changes.lost.iter().filter_map(changelog_of).collect();
        if !lost.is_empty() {
            tracing::warn!(partitions = ?lost, "partitions lost; their next assignment restores them whole");
            backend
                .write(WriteRequest {
                    puts: Vec::new(),
                    checkpoints: lost.into_iter().map(|(t, p)| (t, p, 0)).collect(),
                })
                .await?;
        }
        let mut assigned = changes.assigned;
        assigned.sort();
        assigned.dedup();
        let mut restored = 0;
        if !assigned.is_empty() {
            // Each changelog partition must reach the end the group's last commit saw.
            let mut ends = self.committed_ends(consumer, &assigned).await?;
            for partition in assigned.iter().filter_map(changelog_of) {
                ends.entry(partition).or_insert(0);
            }
            let _restoring = self.metrics.restoring();
            let stats = restore(
                &self.settings,
                &self.config.kafka.group_id,
                backend,
                &mut ends,
            )
            .await?;
            self.marks.note_ends(ends);
            self.metrics.restored(&stats);
            restored = stats.records;
        }
        if changes.rebalanced {
            self.metrics.assignment_restored();
        }
        Ok(restored)
    }
}

impl Pipeline {
    /// Reads the marks the group committed with `inputs`' offsets, checks their layouts
    /// ([`Marks::check`](super::marks::Marks::check)), and returns the changelog end each
    /// requires, by changelog partition.
    async fn committed_ends(
        &self,
        consumer: &Arc<Member>,
        inputs: &[Partition],
    ) -> Result<HashMap<Partition, i64>, RunError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in inputs {
            list.add_partition(topic, *partition);
        }
        let c = Arc::clone(consumer);
        let committed =
            tokio::task::spawn_blocking(move || c.committed_offsets(list, COMMITTED_TIMEOUT))
                .await
                .map_err(|e| RunError::Config(format!("committed offsets task: {e}")))??;
        let mut ends: HashMap<Partition, i64> = HashMap::new();
        for (index, route) in self.routes.iter().enumerate() {
            let marks = (committed.elements().into_iter())
                .filter(|e| route.matches(e.topic()))
                .filter_map(|e| Some((e.partition(), Mark::from_metadata(e.metadata())?)));
            let route = (index, route.name.as_str(), route.changelog_topic.as_str());
            for (partition, end) in self.marks.check(route, marks)? {
                let slot = ends.entry(partition).or_insert(end);
                *slot = (*slot).max(end);
            }
        }
        Ok(ends)
    }
}

#[cfg(test)]
mod tests {
    use autoglm_state::RocksOptions;

    use super::super::test_pipeline;
    use super::*;

    /// Assigned partitions restore from the broker: the integration tests cover them
    /// (`tests/group.rs`). Lost ones only touch the store.
    #[tokio::test]
    async fn a_lost_partition_forgets_its_changelog_checkpoint_and_only_its_own() {
        let pipeline = test_pipeline();
        let changelog = pipeline.routes[0].changelog_topic.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = RocksBackend::open(dir.path(), RocksOptions::default()).expect("open");
        backend
            .write(WriteRequest {
                puts: Vec::new(),
                checkpoints: vec![(changelog.clone(), 0, 42), (changelog.clone(), 1, 17)],
            })
            .await
            .expect("write");
        let mut guard = VersionGuard::new(backend.clone(), 0);
        let changes = Changes {
            lost: vec![("in.accounts".to_owned(), 0), ("unread".to_owned(), 1)],
            revoked: [("in.accounts".to_owned(), 0)].into(),
            ..Changes::default()
        };
        let consumer = Arc::new(
            (pipeline.settings)
                .member_consumer(
                    "unit",
                    "unit-0",
                    crate::group::GroupContext::new(
                        pipeline.metrics.assigned_partitions(),
                        pipeline.metrics.consumer_lag(),
                    ),
                )
                .expect("consumer"),
        );
        let restored = pipeline
            .follow_group(&consumer, &mut guard, changes)
            .await
            .expect("follow");
        assert_eq!(restored, 0);
        assert_eq!(
            backend.checkpoint(&changelog, 0).await.expect("read"),
            Some(0)
        );
        assert_eq!(
            backend.checkpoint(&changelog, 1).await.expect("read"),
            Some(17)
        );
        drop(guard);
        backend.close().await.expect("close");
    }
}
