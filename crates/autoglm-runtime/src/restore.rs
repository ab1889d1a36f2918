//! State restore: replay the tail of the changelog into RocksDB before processing.
//!
//! ```text
//!  per changelog partition: checkpoint (RocksDB) ──► read_committed to the end ──► WriteBatch
//!                           (or the beginning)        (the log end)               state + new checkpoint
//! ```
//!
//! The store only ever holds committed state and its checkpoint is written in the same batch,
//! so "store + tail after the checkpoint" is exact: a restart after a kill replays the records
//! between the last state write and the last Kafka commit, never the whole changelog, and a
//! partition that comes back from another instance replays what that instance wrote.
//!
//! The end is the log end (the high watermark read uncommitted), not the last stable offset,
//! and the read_committed consumer gets past it only once every transaction below it has
//! ended: a restore waits for the previous owner's last transaction. That transaction may still
//! commit after this instance took the partition — an owner stalled past its session (a frozen
//! VM, SIGSTOP) whose offsets the group accepted before its session expired commits when it
//! wakes, and the input offsets this instance resumes from then follow that commit. A restore
//! that stopped at the last stable offset missed that transaction's state entries, and later
//! exact replays of its versions were emitted a second time.
//!
//! Within a partition the changelog is in commit order, so the last record of a key wins. A
//! key belongs to one input partition and thus to one changelog partition (routes over several
//! topics need them co-partitioned: same partition count and key partitioner).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autoglm_kafka::ClientSettings;
use autoglm_state::{KvBackend, StateEntry, WriteRequest};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::RunError;

/// Records per state write while restoring.
const WRITE_BATCH: usize = 20_000;
/// Records between two looks at the consumer's position.
const POSITION_EVERY: u64 = 1_024;
/// How often restore progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Changelog partitions that had a tail to replay.
    pub partitions: usize,
    /// Changelog records replayed.
    pub records: u64,
    /// Wall time of the restore.
    pub elapsed: Duration,
}

struct Tail {
    start: i64,
    end: i64,
    /// Next offset to checkpoint.
    next: i64,
}

/// Replays each `(changelog topic, partition)` of `ends` from its checkpoint to its end into
/// `backend`. `ends` holds the end each partition must reach at least (what the group's last
/// commit saw, `pipeline::marks`); on return, the log end each one had.
pub async fn restore<B: KvBackend>(
    settings: &ClientSettings,
    group_id: &str,
    backend: &B,
    ends: &mut HashMap<(String, i32), i64>,
) -> Result<RestoreStats, RunError> {
    let started = Instant::now();
    let consumer = Arc::new(settings.restore_consumer(group_id)?);
    let log_end = Arc::new(settings.log_end_client()?);
    let mut tails: HashMap<(String, i32), Tail> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), end) in ends.iter_mut() {
        let known = Known {
            checkpoint: backend.checkpoint(topic, *partition).await?.unwrap_or(0),
            committed_end: *end,
        };
        let (low, high) = watermarks(&log_end, topic, *partition).await?;
        let start = tail_start(topic, *partition, known, (low, high))?;
        *end = high;
        if start >= high {
            continue;
        }
        assignment.add_partition_offset(topic, *partition, Offset::Offset(start))?;
        tails.insert(
            (topic.clone(), *partition),
            Tail {
                start,
                end: high,
                next: start,
            },
        );
    }
    let mut stats = RestoreStats {
        partitions: tails.len(),
        ..RestoreStats::default()
    };
    if tails.is_empty() {
        stats.elapsed = started.elapsed();
        return Ok(stats);
    }
    let total: i64 = tails.values().map(|t| t.end - t.start).sum();
    tracing::info!(
        partitions = tails.len(),
        records = total,
        "restoring state from the changelog tail"
    );
    consumer.assign(&assignment)?;

    let mut puts: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut last_log = Instant::now();
    let mut last_progress = Instant::now();
    while !tails.is_empty() {
        // position() copies the whole assignment: ask for it when the stream pauses, near a
        // tail's end, or every POSITION_EVERY records, not for every record.
        let mut check_position = stats.records.is_multiple_of(POSITION_EVERY);
        match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            Ok(Ok(msg)) => {
                let key = msg.key().ok_or_else(|| corrupt(&msg, "no key"))?.to_vec();
                let value = match msg.payload() {
                    Some(bytes) => {
                        StateEntry::decode(bytes).map_err(|e| corrupt(&msg, &e.to_string()))?;
                        Some(bytes.to_vec())
                    }
                    None => None,
                };
                puts.push((key, value));
                stats.records += 1;
                last_progress = Instant::now();
                if let Some(tail) = tails.get_mut(&(msg.topic().to_owned(), msg.partition())) {
                    tail.next = msg.offset() + 1;
                    // The last record may be followed by a commit marker.
                    check_position |= tail.next + 1 >= tail.end;
                }
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_timeout) => check_position = true,
        }
        // A partition is done once the consumer's position passed its end (transaction
        // markers included, which are never delivered).
        if check_position {
            let position = consumer.position()?;
            for ((topic, partition), tail) in &mut tails {
                if let Some(Offset::Offset(at)) = position
                    .find_partition(topic, *partition)
                    .map(|p| p.offset())
                {
                    tail.next = tail.next.max(at);
                }
            }
        }
        let done: Vec<(String, i32)> = tails
            .iter()
            .filter(|(_, tail)| tail.next >= tail.end)
            .map(|(key, _)| key.clone())
            .collect();
        if puts.len() >= WRITE_BATCH || !done.is_empty() {
            let checkpoints = tails
                .iter()
                .map(|((t, p), tail)| (t.clone(), *p, tail.next))
                .collect();
            backend
                .write(WriteRequest {
                    puts: std::mem::take(&mut puts),
                    checkpoints,
                })
                .await?;
            for key in done {
                tails.remove(&key);
            }
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            let percent = (stats.records as f64 / total.max(1) as f64 * 100.0).min(100.0);
            tracing::info!(
                records = stats.records,
                percent = format!("{percent:.0}"),
                "restoring state"
            );
            if last_progress.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(
                    partitions = ?tails.keys().collect::<Vec<_>>(),
                    "restore waits: an open transaction on the changelog holds back the committed end"
                );
            }
        }
    }
    stats.elapsed = started.elapsed();
    tracing::info!(
        partitions = stats.partitions,
        records = stats.records,
        elapsed_ms = stats.elapsed.as_millis() as u64,
        "state restored"
    );
    Ok(stats)
}

/// The log start and the log end of a partition (see the module doc).
async fn watermarks(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), RunError> {
    let consumer = Arc::clone(consumer);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))
    })
    .await
    .map_err(|e| RunError::Config(format!("watermark task: {e}")))?
    .map_err(RunError::from)
}

/// What says how far a changelog partition reached: the store's checkpoint, and the end the
/// group's last commit saw (0 when neither is known).
#[derive(Debug, Clone, Copy)]
struct Known {
    checkpoint: i64,
    committed_end: i64,
}

/// Where a partition's restore starts: at the store's checkpoint, or at the changelog's first
/// offset if compaction removed the records before it (each superseded by a later one, which the
/// restore reads). A checkpoint or a committed end past the changelog's end means the topic is
/// not the one the state was built from: deleted and created again, or truncated by an unclean
/// leader election. Restoring from it would leave the store ahead of the changelog, and a
/// rebuild from it alone would forget keys and accept their old versions again: stop, and say
/// how to go on.
fn tail_start(
    topic: &str,
    partition: i32,
    known: Known,
    (low, high): (i64, i64),
) -> Result<i64, RunError> {
    let who = if known.checkpoint > high {
        format!(
            "the state store has applied {topic} partition {partition} up to offset {}",
            known.checkpoint
        )
    } else if known.committed_end > high {
        format!(
            "the group's last commit of input partition {partition} saw {topic} partition \
             {partition} reach offset {}",
            known.committed_end
        )
    } else {
        return Ok(known.checkpoint.max(low));
    };
    Err(RunError::Changelog(format!(
        "{who}, but that topic now ends at offset {high}: it was deleted and created again, or \
         truncated. The state and the changelog no longer agree, and the changelog alone no \
         longer holds every key's last version. To go on, stop every instance, delete the \
         topic and every instance's state directory (event_queue.storage_path), and replay \
         the sources from their beginning (a new kafka.group_id, or the group's offsets reset \
         to the earliest); or restore the topic"
    )))
}

fn corrupt(msg: &rdkafka::message::BorrowedMessage<'_>, reason: &str) -> RunError {
    RunError::Changelog(format!(
        "record {}/{}@{} is not a state entry ({reason}); only open-autoglm may write to this topic",
        msg.topic(),
        msg.partition(),
        msg.offset()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(checkpoint: i64) -> Known {
        Known {
            checkpoint,
            committed_end: 0,
        }
    }

    #[test]
    fn a_restore_starts_at_the_checkpoint_or_where_compaction_left_the_log() {
        let start = |c, log| tail_start("c", 0, checkpoint(c), log).ok();
        assert_eq!(start(0, (0, 10)), Some(0));
        assert_eq!(start(7, (0, 10)), Some(7));
        assert_eq!(start(10, (0, 10)), Some(10), "nothing to replay");
        assert_eq!(
            start(3, (5, 10)),
            Some(5),
            "compacted before the checkpoint"
        );
        let committed = Known {
            checkpoint: 0,
            committed_end: 10,
        };
        assert_eq!(
            tail_start("c", 0, committed, (0, 10)).ok(),
            Some(0),
            "a new store replays the whole changelog the group's commits saw"
        );
    }

    #[test]
    fn a_checkpoint_past_the_changelogs_end_stops_the_run_naming_the_topic() {
        let error =
            tail_start("g-accounts-changelog", 2, checkpoint(42), (0, 0)).expect_err("a new topic");
        assert_eq!(error.class(), autoglm_core::ErrorClass::Fatal);
        let message = error.to_string();
        assert!(
            message.contains("g-accounts-changelog partition 2 up to offset 42"),
            "{message}"
        );
        assert!(message.contains("storage_path"), "{message}");
    }

    /// No store at all (a new instance, a deleted directory): the group's last commit still
    /// says how far the changelog reached.
    #[test]
    fn a_committed_end_past_the_changelogs_end_stops_a_new_store_too() {
        let known = Known {
            checkpoint: 0,
            committed_end: 42,
        };
        let error = tail_start("g-accounts-changelog", 2, known, (0, 3)).expect_err("truncated");
        assert_eq!(error.class(), autoglm_core::ErrorClass::Fatal);
        let message = error.to_string();
        assert!(
            message.contains(
                "the group's last commit of input partition 2 saw g-accounts-changelog partition 2 reach offset 42, but that topic now ends at offset 3"
            ),
            "{message}"
        );
    }
}
