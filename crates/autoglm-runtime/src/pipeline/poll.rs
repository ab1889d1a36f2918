//! Stage 1, poll: records from the consumer into a batch, until the batch is full or its first
//! record is old enough (the close rule), and what the group changed meanwhile.
//!
//! Data flow: consumer ─► [`Polled`] (records, prepared so far, when it started and closed) ─►
//! prepare; [`Changes`] ─► rebalance. A rebalance happens inside `recv`; the records of revoked
//! partitions are dropped here, prepared or not. An aborted batch is read again through
//! [`rewind`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use autoglm_core::ErrorClass;
use autoglm_kafka::classify;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::prepare::Prepared;
use super::{RunError, now_ms};
use crate::group::{Changes, GroupContext, Partition};
use crate::throttle::Throttling;

/// The processor's consumer: a static group member that reports rebalances.
pub(super) type Member = StreamConsumer<GroupContext>;

/// The records of one batch, polled from partitions this instance owns.
#[derive(Default)]
pub(super) struct Polled {
    pub(super) batch: Vec<OwnedMessage>,
    /// What the parallel pass made of the batch's first `prepared.len()` records.
    pub(super) prepared: Vec<Prepared>,
    /// When the batch's first record arrived.
    pub(super) started: Option<Instant>,
    /// The batch's keys and values, in bytes.
    pub(super) bytes: usize,
    /// When a poll that waits ([`Wait::Cadence`]) closed the batch.
    pub(super) closed: Option<Instant>,
}

impl Polled {
    /// Drops the records of `revoked` partitions, prepared or not.
    pub(super) fn retain_owned(&mut self, revoked: &HashSet<Partition>) {
        if revoked.is_empty() {
            return;
        }
        let owned: Vec<bool> = self
            .batch
            .iter()
            .map(|m| !revoked.contains(&(m.topic().to_owned(), m.partition())))
            .collect();
        let mut keep = owned.iter().copied();
        self.batch.retain(|_| keep.next().unwrap_or(false));
        let mut keep = owned.iter().copied();
        self.prepared.retain(|_| keep.next().unwrap_or(false));
        self.bytes = self.batch.iter().map(size).sum();
    }

    /// Adds a polled record.
    fn push(&mut self, msg: OwnedMessage) {
        self.started.get_or_insert_with(Instant::now);
        self.bytes += size(&msg);
        self.batch.push(msg);
    }

    /// Whether the batch is full by `limits`.
    fn is_full(&self, limits: &Limits) -> bool {
        self.batch.len() >= limits.records || self.bytes >= limits.bytes
    }
}

/// How old a batch's first record may get before the batch closes: the flush interval less
/// `lead`, what the last batches took from closing to their commit, so that a batch commits
/// about `flush_interval_ms` after its first record, as configured. (Closed at the full interval,
/// a batch committed one processing time later: at 45k records/s, p50 end to end 125–146 ms
/// against 83–89 ms now, in `make bench`'s latency phase.) Never below half the interval, which
/// bounds the transactions per second.
pub(super) fn closing_age(flush: Duration, lead: Duration) -> Duration {
    flush.saturating_sub(lead).max(flush / 2)
}

pub(super) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A record's key and value, in bytes: what a batch's size counts.
fn size(msg: &OwnedMessage) -> usize {
    msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)
}

/// When a batch closes: `commit.max_records`, `commit.max_bytes`, or its first record `flush`
/// old.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `event_queue.flush_interval_ms`; the loop's polls get the closing age instead (see
    /// `closing_age`).
    pub(super) flush: Duration,
    pub(super) records: usize,
    pub(super) bytes: usize,
}

/// How long a poll waits for records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Until the batch's first record is the closing age old (see `closing_age`), or up to a
    /// second for a first record.
    Cadence,
    /// Not at all: only records already in the local queue are taken.
    Never,
}

/// How long ago `msg` was written, by its timestamp; zero if it has none or it is in the future.
fn age(msg: &impl Message) -> Duration {
    msg.timestamp()
        .to_millis()
        .and_then(|ts| u64::try_from(now_ms() - ts).ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// Polls records into `into` until its first record is `limits.flush` old (by its timestamp: a
/// record that already waited while the previous batch was processed does not wait a whole
/// interval again, which kept end-to-end latency at two intervals and more), it is full (by
/// records or bytes), or shutdown; with [`Wait::Never`], until the local queue is empty or the
/// batch is full. Records already in the local queue are always taken, deadline or not.
/// Rebalances happen inside `recv`; after each one the records of revoked partitions are
/// dropped unprocessed (their new owner reads them from the committed offsets). What the group
/// changed is added to `changes`.
pub(super) async fn poll_batch(
    consumer: &Member,
    into: &mut Polled,
    wait: Wait,
    limits: Limits,
    shutdown: &CancellationToken,
    changes: &mut Changes,
    throttling: &Throttling,
) -> Result<(), RunError> {
    let now = tokio::time::Instant::now();
    let cadence = |first: &OwnedMessage| now + limits.flush.saturating_sub(age(first));
    let mut deadline = match (wait, into.batch.first()) {
        (Wait::Never, _) => now,
        (Wait::Cadence, Some(first)) => cadence(first),
        // Wait up to a second for the first record.
        (Wait::Cadence, None) => now + Duration::from_secs(1),
    };
    let throttled = !throttling.is_off();
    while !into.is_full(&limits) {
        // A route paused by its rate limit resumes on time, however long this poll waits.
        let resume = throttled
            .then(|| throttling.resume_due(consumer))
            .flatten()
            .map(tokio::time::Instant::from_std);
        let wake = resume.map_or(deadline, |r| r.min(deadline));
        let received = tokio::select! {
            _ = shutdown.cancelled() => None,
            r = tokio::time::timeout_at(wake, consumer.recv()) => r.ok(),
        };
        let group = consumer.context().take();
        if !group.is_empty() {
            into.retain_owned(&group.revoked);
            changes.merge(group);
        }
        match received {
            None if wake < deadline && !shutdown.is_cancelled() => continue,
            None => break,
            Some(Ok(msg)) => {
                if throttled {
                    throttling.polled(consumer, msg.topic());
                }
                let msg = msg.detach();
                if into.batch.is_empty() && wait == Wait::Cadence {
                    deadline = cadence(&msg);
                }
                into.push(msg);
            }
            Some(Err(e)) if classify(&e) == ErrorClass::Fatal => return Err(e.into()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error; going on");
            }
        }
    }
    if wait == Wait::Cadence && !into.batch.is_empty() {
        into.closed = Some(Instant::now());
    }
    Ok(())
}

/// Seeks every partition of `batch` back to its first record, so the next poll reads the batch
/// again (an aborted transaction's input).
pub(super) fn rewind<'m>(
    consumer: &Member,
    batch: impl IntoIterator<Item = &'m OwnedMessage>,
) -> Result<(), RunError> {
    let mut first: HashMap<(&str, i32), i64> = HashMap::new();
    for msg in batch {
        let slot = first
            .entry((msg.topic(), msg.partition()))
            .or_insert(msg.offset());
        *slot = (*slot).min(msg.offset());
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in first {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    // A zero timeout makes the seek asynchronous: it never blocks the executor. A partition
    // revoked meanwhile cannot be sought, and needs not be. A partition still owned that cannot
    // be sought would skip records: stop instead (a restart resumes from the committed offsets).
    let sought = consumer.seek_partitions(list, Duration::ZERO)?;
    let owned = consumer.assignment()?;
    for element in sought.elements() {
        // An asynchronous seek reports "in progress": it was started.
        if let Err(e) = element.error()
            && e.rdkafka_error_code() != Some(RDKafkaErrorCode::InProgress)
            && owned
                .find_partition(element.topic(), element.partition())
                .is_some()
        {
            return Err(RunError::Kafka {
                class: ErrorClass::Fatal,
                source: e,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn record(partition: i32, offset: i64, bytes: usize, timestamp: Timestamp) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![b'v'; bytes]),
            Some(b"k".to_vec()),
            "in".to_owned(),
            timestamp,
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_revoked_partition_leaves_the_batch_with_its_prepared_records() {
        let mut polled = Polled::default();
        for offset in 0..6 {
            polled.push(record(
                (offset % 2) as i32,
                offset,
                9,
                Timestamp::NotAvailable,
            ));
        }
        assert_eq!(polled.bytes, 6 * 10);
        // The first four were prepared; each marks its own position.
        polled.prepared = (0..4).map(Prepared::PassThrough).collect();
        polled.retain_owned(&[("in".to_owned(), 1)].into());
        let offsets: Vec<i64> = polled.batch.iter().map(Message::offset).collect();
        assert_eq!(offsets, [0, 2, 4]);
        let kept: Vec<usize> = polled
            .prepared
            .iter()
            .map(|p| match p {
                Prepared::PassThrough(at) => *at,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(kept, [0, 2]);
        assert_eq!(polled.bytes, 3 * 10);
    }

    #[test]
    fn a_batch_is_full_by_records_or_by_bytes() {
        let limits = Limits {
            flush: Duration::from_millis(100),
            records: 3,
            bytes: 100,
        };
        let mut polled = Polled::default();
        polled.push(record(0, 0, 9, Timestamp::NotAvailable));
        polled.push(record(0, 1, 9, Timestamp::NotAvailable));
        assert!(!polled.is_full(&limits));
        polled.push(record(0, 2, 9, Timestamp::NotAvailable));
        assert!(polled.is_full(&limits));
        let mut polled = Polled::default();
        polled.push(record(0, 0, 99, Timestamp::NotAvailable));
        assert!(polled.is_full(&limits), "100 bytes");
    }

    #[test]
    fn a_records_age_comes_from_its_timestamp_and_is_never_negative() {
        let now = now_ms();
        let age_of = |timestamp| age(&record(0, 0, 1, timestamp));
        let five_seconds = age_of(Timestamp::CreateTime(now - 5_000));
        assert!(
            five_seconds >= Duration::from_secs(5) && five_seconds < Duration::from_secs(6),
            "{five_seconds:?}"
        );
        assert_eq!(age_of(Timestamp::CreateTime(now + 60_000)), Duration::ZERO);
        assert_eq!(age_of(Timestamp::NotAvailable), Duration::ZERO);
    }

    #[test]
    fn a_batch_closes_early_by_the_processing_time_but_never_before_half_the_interval() {
        let ms = Duration::from_millis;
        assert_eq!(closing_age(ms(100), ms(0)), ms(100));
        assert_eq!(closing_age(ms(100), ms(30)), ms(70));
        assert_eq!(closing_age(ms(100), ms(80)), ms(50));
        assert_eq!(closing_age(ms(100), ms(500)), ms(50));
    }
}
