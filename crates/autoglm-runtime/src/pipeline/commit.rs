//! Stage 4, commit: the batch's input offsets, with the transaction (exactly once) or as a
//! synchronous offset commit (at least once); and the transaction calls around it.
//!
//! Data flow: the batch's records ─► [`next_offsets`], each with its route's mark (`marks`)
//! ─► the broker. A step librdkafka calls retriable is called again
//! ([`again_while_retriable`]); a failed batch is aborted ([`abort`]).

use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMapExt as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::poll::Member;
use super::{BatchError, Pipeline, RunError, TXN_TIMEOUT, Transient};
use crate::acks::AckingProducer;

impl Pipeline {
    /// Commits the input offsets of `batch` (the last record of each partition + 1): with the
    /// open transaction, which it then commits, or, at least once, synchronously. Tells the
    /// consumer's context the committed positions (the lag gauge).
    pub(super) async fn commit_offsets(
        &self,
        batch: &[OwnedMessage],
        consumer: &Arc<Member>,
        producer: &Arc<AckingProducer>,
        exactly_once: bool,
    ) -> Result<(), BatchError> {
        let offsets = next_offsets(batch, |topic, partition| self.mark(topic, partition))?;
        let positions: Vec<_> = offsets
            .elements()
            .iter()
            .filter_map(|e| Some(((e.topic().to_owned(), e.partition()), e.offset().to_raw()?)))
            .collect();
        let commit_seconds = self.metrics.commit_seconds();
        if exactly_once {
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| BatchError::Transient(Transient("no group metadata yet".into())))?;
            let p = Arc::clone(producer);
            blocking(move || {
                again_while_retriable("send_offsets_to_transaction", || {
                    p.send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT)
                })?;
                fail::fail_point!("after_send_offsets");
                commit_seconds.observe_closure_duration(|| {
                    again_while_retriable("commit_transaction", || {
                        p.commit_transaction(TXN_TIMEOUT)
                    })
                })
            })
            .await?;
        } else {
            let c = Arc::clone(consumer);
            blocking(move || {
                commit_seconds.observe_closure_duration(|| c.commit(&offsets, CommitMode::Sync))
            })
            .await?;
        }
        fail::fail_point!("after_commit");
        consumer.context().committed(positions);
        Ok(())
    }
}

impl Pipeline {
    /// The commit metadata of input partition `partition` of `topic`: its route's mark
    /// (`marks`).
    fn mark(&self, topic: &str, partition: i32) -> Option<String> {
        let (index, route) = (self.routes.iter().enumerate()).find(|(_, r)| r.matches(topic))?;
        let mark = self.marks.mark(index, &route.changelog_topic, partition);
        Some(mark.to_metadata())
    }
}

/// Offsets to commit: the last record of each partition + 1, each with its `metadata`.
fn next_offsets(
    batch: &[OwnedMessage],
    metadata: impl Fn(&str, i32) -> Option<String>,
) -> Result<TopicPartitionList, BatchError> {
    // foldhash, not SipHash: one lookup per record.
    let mut next: foldhash::HashMap<(&str, i32), i64> = foldhash::HashMap::new();
    for msg in batch {
        let slot = next.entry((msg.topic(), msg.partition())).or_insert(0);
        *slot = (*slot).max(msg.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        let mut element = list.add_partition(topic, partition);
        element.set_offset(Offset::Offset(offset))?;
        if let Some(metadata) = metadata(topic, partition) {
            element.set_metadata(metadata);
        }
    }
    Ok(list)
}

/// Calls a transaction step again for as long as librdkafka calls its error retriable: the step
/// goes on in the background (a commit that timed out may still commit), and only the same call
/// may follow it. Aborting instead fails, and would leave the producer waiting for a commit
/// call that never comes. Any other outcome is returned.
fn again_while_retriable(
    what: &str,
    step: impl Fn() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut attempt = 0u32;
    loop {
        match step() {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && !e.txn_requires_abort() && !e.is_fatal() =>
            {
                attempt += 1;
                tracing::warn!(attempt, error = %e, "{what} did not finish in time; calling it again");
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

pub(super) async fn abort(producer: &Arc<AckingProducer>) -> Result<(), RunError> {
    let p = Arc::clone(producer);
    match blocking(move || p.abort_transaction(TXN_TIMEOUT)).await {
        Ok(()) => Ok(()),
        Err(BatchError::Fatal(e)) => Err(e),
        Err(BatchError::Transient(Transient(reason))) => {
            tracing::warn!(%reason, "abort failed; the broker aborts the transaction on timeout");
            Ok(())
        }
    }
}

/// Runs a blocking librdkafka call off the async executor.
async fn blocking<F>(f: F) -> Result<(), BatchError>
where
    F: FnOnce() -> Result<(), KafkaError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(BatchError::from),
        Err(e) => Err(BatchError::Fatal(RunError::Config(format!(
            "blocking task: {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            topic.to_owned(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn the_offsets_committed_are_each_partitions_last_record_plus_one_with_its_metadata() {
        let batch = [
            at("a", 0, 5),
            at("a", 1, 9),
            at("a", 0, 7),
            at("b", 0, 3),
            at("a", 0, 6),
        ];
        let metadata = |topic: &str, partition| (topic == "a").then(|| format!("m{partition}"));
        let list = next_offsets(&batch, metadata).ok().expect("offsets");
        let mut offsets: Vec<_> = list
            .elements()
            .iter()
            .map(|e| {
                (
                    e.topic().to_owned(),
                    e.partition(),
                    e.offset(),
                    e.metadata().to_owned(),
                )
            })
            .collect();
        offsets.sort_by_key(|(t, p, _, _)| (t.clone(), *p));
        assert_eq!(
            offsets,
            [
                ("a".to_owned(), 0, Offset::Offset(8), "m0".to_owned()),
                ("a".to_owned(), 1, Offset::Offset(10), "m1".to_owned()),
                ("b".to_owned(), 0, Offset::Offset(4), String::new()),
            ]
        );
    }

    #[test]
    fn a_retriable_transaction_step_is_called_again_and_other_outcomes_return() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let result = again_while_retriable("step", || {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
            ))
        });
        assert!(result.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
