//! The replay itself: DLQ records back to their source partitions, one transaction per batch
//! with the replay group's offsets (the module docs of [`super`] say why and how).
//!
//! ```text
//!  init_transactions (aborts a dead replay's open transaction) ─► committed marks ─► assign
//!  poll ─► Verdict: replayed before | other route | left by the filter | unreplayable | replay
//!     replay: begin (once per batch) ─► send the copy ─► Cursor::pass
//!  every 500 records or 0.5 s, and at the end: send_offsets_to_transaction(marks) ─► commit
//! ```
//!
//! Failure behaviour: an error aborts the open transaction (the broker's transaction timeout
//! does, if the abort fails) and stops the run; the batches committed before stay committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use autoglm_kafka::ClientSettings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::Value as Json;

use super::super::{REQUEST_TIMEOUT, ToolError, blocking, kafka, partitions, reader_config};
use super::{
    Cursor, DeadLetter, ERROR_RULE, Filter, METADATA_MAX, Mark, Origin, PAYLOAD_OMITTED, POLL,
    REPLAY_OFFSET, REPLAY_PARTITION, REPLAY_TOPIC, SOURCE_PARTITION, SOURCE_TOPIC, STALL,
    list_table,
};
use crate::pipeline::Pipeline;

/// Records per replay transaction.
const BATCH_RECORDS: usize = 500;
/// How long a replay transaction may collect records.
const BATCH_AGE: Duration = Duration::from_millis(500);
/// How long one blocking transaction call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// What `dlq replay` should do.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The route whose DLQ is replayed.
    pub route: String,
    /// Which records.
    pub filter: Filter,
    /// List what would be replayed; send and commit nothing.
    pub dry_run: bool,
}

/// Records replayed into one source partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceCount {
    /// The source topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Records replayed into it.
    pub records: u64,
}

/// The mark committed for one DLQ partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Committed {
    /// The DLQ partition.
    pub partition: i32,
    /// The committed offset: the first record left for later, or the end.
    pub offset: i64,
    /// Ranges above it that were dealt with (`12-15,18`), empty without any.
    pub done_above: String,
}

/// A DLQ record the replay did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Passed {
    /// The DLQ partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// Why.
    pub reason: String,
}

/// What a replay did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// The route.
    pub route: String,
    /// Its DLQ topic.
    pub dlq_topic: String,
    /// The replay's consumer group (and transactional id).
    pub group: String,
    /// Nothing was sent or committed.
    pub dry_run: bool,
    /// DLQ records read.
    pub read: u64,
    /// Records replayed (sent to their source partition), or that would be.
    pub replayed: u64,
    /// Records `--since`/`--where` passed over; a later replay can still take them.
    pub skipped_by_filter: u64,
    /// Records an earlier replay took.
    pub replayed_before: u64,
    /// Records of other routes (a shared DLQ topic).
    pub other_routes: u64,
    /// Records without the headers that say where they came from, or without their value:
    /// never replayable.
    pub unreplayable: Vec<Passed>,
    /// Replayed records dead-lettered at the `encode` stage (rule `encode` or `size`): the guard
    /// had accepted their version already, so their replays are dropped as duplicates.
    pub encode_stage: u64,
    /// Records replayed per source partition.
    pub to_source: Vec<SourceCount>,
    /// The marks committed (or that would be), per DLQ partition that moved.
    pub committed: Vec<Committed>,
    /// Partitions this run stopped early (metadata full), at the record it stopped at.
    pub stopped: Vec<Passed>,
    /// Transactions committed.
    pub transactions: u64,
    /// With `--dry-run`: the records that would be replayed.
    #[serde(skip)]
    pub would_replay: Vec<DeadLetter>,
}

impl ReplayReport {
    fn count_source(&mut self, topic: &str, partition: i32) {
        match self
            .to_source
            .iter_mut()
            .find(|s| s.topic == topic && s.partition == partition)
        {
            Some(count) => count.records += 1,
            None => self.to_source.push(SourceCount {
                topic: topic.to_owned(),
                partition,
                records: 1,
            }),
        }
    }

    /// As one JSON object (`--json`); a dry run lists the records it would replay.
    pub fn to_json(&self) -> Json {
        let mut json = serde_json::to_value(self).unwrap_or(Json::Null);
        if self.dry_run {
            json["would_replay"] = self.would_replay.iter().map(DeadLetter::to_json).collect();
        }
        json
    }

    /// As text: the counts, per source partition, the marks committed, and warnings.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        out.push_str(&format!(
            "dlq replay of route {}: DLQ topic {}, group {}{}\n",
            self.route,
            self.dlq_topic,
            self.group,
            if self.dry_run {
                " (dry run: nothing sent, nothing committed)"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "read {} · {verb} {} · skipped by filter {} · replayed before {} · other routes {} · unreplayable {} · transactions {}\n",
            self.read,
            self.replayed,
            self.skipped_by_filter,
            self.replayed_before,
            self.other_routes,
            self.unreplayable.len(),
            self.transactions,
        ));
        if self.dry_run && !self.would_replay.is_empty() {
            out.push_str(&list_table(&self.would_replay));
        }
        if !self.to_source.is_empty() {
            out.push_str(&format!("{verb} into (source topic partition: records)\n"));
            for s in &self.to_source {
                out.push_str(&format!("  {} {}: {}\n", s.topic, s.partition, s.records));
            }
        }
        if !self.committed.is_empty() {
            out.push_str(&format!(
                "offsets {} (DLQ partition: next offset [replayed above it])\n",
                if self.dry_run {
                    "to commit"
                } else {
                    "committed"
                }
            ));
            for c in &self.committed {
                let above = if c.done_above.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", c.done_above)
                };
                out.push_str(&format!("  {}: {}{above}\n", c.partition, c.offset));
            }
        }
        for p in &self.unreplayable {
            out.push_str(&format!(
                "unreplayable {}:{}: {}\n",
                p.partition, p.offset, p.reason
            ));
        }
        for p in &self.stopped {
            out.push_str(&format!(
                "stopped partition {} at {}: {}\n",
                p.partition, p.offset, p.reason
            ));
        }
        if self.encode_stage > 0 {
            out.push_str(&format!(
                "note: {} of these were dead-lettered at the encode stage (rule encode or size), after the version guard \
                 had accepted their version: the route drops their replays as duplicates \
                 (docs/operations.md)\n",
                self.encode_stage
            ));
        }
        out
    }
}

/// The headers of a replayed copy: the dead letter's, less the `autoglm.*` ones (the reason,
/// the route, the DLQ write's lineage), and where in the DLQ it was replayed from.
pub fn replay_headers(letter: &DeadLetter) -> Vec<(String, Option<Vec<u8>>)> {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = letter
        .headers
        .iter()
        .filter(|(key, _)| !key.starts_with("autoglm."))
        .cloned()
        .collect();
    headers.push((
        REPLAY_TOPIC.to_owned(),
        Some(letter.topic.clone().into_bytes()),
    ));
    headers.push((
        REPLAY_PARTITION.to_owned(),
        Some(letter.partition.to_string().into_bytes()),
    ));
    headers.push((
        REPLAY_OFFSET.to_owned(),
        Some(letter.offset.to_string().into_bytes()),
    ));
    headers
}

/// The replay group and transactional id of a route.
pub fn replay_group(group_id: &str, route: &str) -> String {
    format!("{group_id}-dlq-replay-{route}")
}

/// Sends the dead letters of a route that `options` selects back to their source partitions,
/// exactly once (see the module docs), and reports what it did.
pub async fn replay(
    pipeline: &Pipeline,
    options: ReplayOptions,
) -> Result<ReplayReport, ToolError> {
    let route = super::super::route(pipeline, &options.route)?;
    let group = replay_group(&pipeline.config().kafka.group_id, &route.name);
    let job = Replay {
        settings: pipeline.client_settings().clone(),
        report: ReplayReport {
            route: route.name.clone(),
            dlq_topic: route.dlq_topic.clone(),
            group,
            dry_run: options.dry_run,
            ..ReplayReport::default()
        },
        filter: options.filter,
    };
    blocking(move || job.run()).await
}

/// The first delivery failure of a replay transaction.
#[derive(Default)]
struct Deliveries {
    failure: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, msg)) = result {
            let mut failure = self
                .failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            failure.get_or_insert_with(|| {
                format!("{} partition {}: {error}", msg.topic(), msg.partition())
            });
        }
    }
}

type ReplayProducer = ThreadedProducer<Deliveries>;

/// One replay run.
struct Replay {
    settings: ClientSettings,
    report: ReplayReport,
    filter: Filter,
}

/// What a replay does with one dead letter.
enum Verdict {
    /// An earlier replay took it.
    Before,
    /// Another route's.
    OtherRoute,
    /// The filter passes over it: left for a later replay.
    Left,
    /// It cannot go back, for the reason given: its headers do not say where it came from, or
    /// it holds no value (its input was too large for the DLQ topic).
    Unreplayable(String),
    /// Back to where it came from.
    Replay(Origin),
}

/// A replay's open transaction.
#[derive(Default)]
struct Batch {
    open: bool,
    records: usize,
    started: Option<Instant>,
}

impl Replay {
    fn run(mut self) -> Result<ReplayReport, ToolError> {
        let topic = self.report.dlq_topic.clone();
        let group = self.report.group.clone();
        // The producer first: init_transactions aborts an earlier replay's open transaction,
        // whose offsets would otherwise keep the committed ones below unstable.
        let producer: Option<ReplayProducer> = if self.report.dry_run {
            None
        } else {
            let producer: ReplayProducer = self
                .settings
                .transactional_config(&group)
                .create_with_context(Deliveries::default())
                .map_err(kafka("creating the replay producer"))?;
            producer
                .init_transactions(TXN_TIMEOUT)
                .map_err(kafka(format!("init_transactions as {group}")))?;
            Some(producer)
        };
        let consumer: BaseConsumer = reader_config(&self.settings, Some(&group))
            .create()
            .map_err(kafka("creating the replay consumer"))?;
        let mut cursors = self.cursors(&consumer, &topic)?;
        let mut committed: BTreeMap<i32, Mark> =
            cursors.iter().map(|(p, c)| (*p, c.mark())).collect();
        let mut assignment = TopicPartitionList::new();
        for (partition, cursor) in &cursors {
            if !cursor.is_finished() {
                assignment
                    .add_partition_offset(&topic, *partition, Offset::Offset(cursor.read_to))
                    .map_err(kafka("assignment"))?;
            }
        }
        consumer
            .assign(&assignment)
            .map_err(kafka(format!("assigning {topic}")))?;
        let mut batch = Batch::default();
        let result = self.replay_all(
            &consumer,
            producer.as_ref(),
            &mut cursors,
            &mut committed,
            &mut batch,
        );
        if result.is_err()
            && batch.open
            && let Some(producer) = &producer
            && let Err(e) = producer.abort_transaction(TXN_TIMEOUT)
        {
            tracing::warn!(error = %e, "abort failed; the broker aborts the replay transaction on timeout");
        }
        result?;
        self.report.committed = committed
            .iter()
            .filter(|(p, mark)| cursors.get(p).is_some_and(|c| c.start != **mark))
            .map(|(p, mark)| Committed {
                partition: *p,
                offset: mark.next,
                done_above: mark.ranges(),
            })
            .collect();
        self.report
            .to_source
            .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(self.report)
    }

    /// Each DLQ partition's cursor: its committed mark (or its log start) and its committed end.
    fn cursors(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
    ) -> Result<BTreeMap<i32, Cursor>, ToolError> {
        let partitions = partitions(consumer, topic)?;
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            list.add_partition(topic, *partition);
        }
        let committed = consumer
            .committed_offsets(list, REQUEST_TIMEOUT)
            .map_err(kafka(format!("committed offsets of {}", self.report.group)))?;
        let mut cursors = BTreeMap::new();
        for partition in partitions {
            // A read_committed client is told the last stable offset.
            let (low, end) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .map_err(kafka(format!("end offsets of {topic}")))?;
            let mark = match committed.find_partition(topic, partition) {
                Some(element) => match element.offset() {
                    Offset::Offset(next) => Mark::parse(next, element.metadata()),
                    _ => Mark::start(low),
                },
                None => Mark::start(low),
            };
            cursors.insert(partition, Cursor::new(mark.at_least(low), end));
        }
        Ok(cursors)
    }

    fn replay_all(
        &mut self,
        consumer: &BaseConsumer,
        producer: Option<&ReplayProducer>,
        cursors: &mut BTreeMap<i32, Cursor>,
        committed: &mut BTreeMap<i32, Mark>,
        batch: &mut Batch,
    ) -> Result<(), ToolError> {
        let topic = self.report.dlq_topic.clone();
        let mut sources: HashMap<String, usize> = HashMap::new();
        let mut progress = Instant::now();
        loop {
            if cursors.values().all(Cursor::is_finished) {
                return self.commit(consumer, producer, cursors, committed, batch);
            }
            let look;
            match consumer.poll(POLL) {
                Some(Ok(msg)) => {
                    progress = Instant::now();
                    let Some(cursor) = cursors.get_mut(&msg.partition()) else {
                        continue;
                    };
                    if cursor.is_finished() {
                        continue;
                    }
                    // Written after the replay began: the next replay takes it.
                    if msg.offset() >= cursor.end {
                        cursor.stop();
                        continue;
                    }
                    look = msg.offset() + 2 >= cursor.end;
                    let letter = DeadLetter::from_message(&msg);
                    drop(msg);
                    self.take(letter, cursor, producer, batch, &mut sources, consumer)?;
                }
                Some(Err(e)) => return Err(kafka(format!("reading {topic}"))(e)),
                None => look = true,
            }
            if look {
                let position = consumer.position().map_err(kafka("position"))?;
                for (partition, cursor) in cursors.iter_mut() {
                    if let Some(Offset::Offset(at)) = position
                        .find_partition(&topic, *partition)
                        .map(|p| p.offset())
                    {
                        cursor.advance(at);
                    }
                }
            }
            let full = batch.records >= BATCH_RECORDS
                || batch.started.is_some_and(|s| s.elapsed() >= BATCH_AGE);
            if full {
                self.commit(consumer, producer, cursors, committed, batch)?;
            }
            if progress.elapsed() > STALL {
                return Err(ToolError::Stalled(format!(
                    "reading {topic} made no progress for {} s; nothing after the last commit was sent",
                    STALL.as_secs()
                )));
            }
        }
    }

    /// Decides one dead letter: replayed before, another route's, left by the filter,
    /// unreplayable, or replayed now.
    fn take(
        &mut self,
        letter: DeadLetter,
        cursor: &mut Cursor,
        producer: Option<&ReplayProducer>,
        batch: &mut Batch,
        sources: &mut HashMap<String, usize>,
        consumer: &BaseConsumer,
    ) -> Result<(), ToolError> {
        let offset = letter.offset;
        let verdict = if cursor.replayed_before(offset) {
            Verdict::Before
        } else if letter.route().as_deref() != Some(self.report.route.as_str()) {
            Verdict::OtherRoute
        } else if !self.filter.matches(&letter) {
            Verdict::Left
        } else {
            match replayable(&letter) {
                Ok(origin) => Verdict::Replay(origin),
                Err(reason) => Verdict::Unreplayable(reason),
            }
        };
        if !matches!(verdict, Verdict::Left) && !cursor.can_pass(offset) {
            self.report.stopped.push(Passed {
                partition: letter.partition,
                offset,
                reason: format!(
                    "the replayed ranges above the first skipped record would pass {METADATA_MAX} \
                     bytes of commit metadata: replay the skipped records (or all, without a \
                     filter), then this again"
                ),
            });
            cursor.stop();
            return Ok(());
        }
        let report = &mut self.report;
        match verdict {
            Verdict::Before => report.replayed_before += 1,
            Verdict::OtherRoute => report.other_routes += 1,
            Verdict::Left => {
                report.read += 1;
                report.skipped_by_filter += 1;
                cursor.leave(offset);
                return Ok(());
            }
            Verdict::Unreplayable(reason) => report.unreplayable.push(Passed {
                partition: letter.partition,
                offset,
                reason,
            }),
            Verdict::Replay(origin) => {
                let count = match sources.get(&origin.topic) {
                    Some(count) => *count,
                    None => {
                        let count = partitions(consumer, &origin.topic).map_or(0, |p| p.len());
                        sources.insert(origin.topic.clone(), count);
                        count
                    }
                };
                if usize::try_from(origin.partition).map_or(true, |p| p >= count) {
                    return Err(ToolError::Replay(format!(
                        "DLQ record {} came from {} partition {}, which does not exist; the \
                         batches before it are committed, its own is not",
                        letter.at(),
                        origin.topic,
                        origin.partition
                    )));
                }
                report.replayed += 1;
                report.count_source(&origin.topic, origin.partition);
                if matches!(
                    letter.header(ERROR_RULE).as_deref(),
                    Some("encode" | "size")
                ) {
                    report.encode_stage += 1;
                }
                match producer {
                    Some(producer) => {
                        if !batch.open {
                            producer
                                .begin_transaction()
                                .map_err(kafka("begin_transaction"))?;
                            batch.open = true;
                            batch.started = Some(Instant::now());
                        }
                        send(producer, &letter, &origin)?;
                        batch.records += 1;
                    }
                    None => report.would_replay.push(letter),
                }
            }
        }
        report.read += 1;
        cursor.pass(offset);
        Ok(())
    }

    /// Commits the open batch with every mark that moved (an offsets-only transaction when
    /// nothing was sent). With `--dry-run`, only notes the marks.
    fn commit(
        &mut self,
        consumer: &BaseConsumer,
        producer: Option<&ReplayProducer>,
        cursors: &BTreeMap<i32, Cursor>,
        committed: &mut BTreeMap<i32, Mark>,
        batch: &mut Batch,
    ) -> Result<(), ToolError> {
        let topic = &self.report.dlq_topic;
        let moved: Vec<(i32, Mark)> = cursors
            .iter()
            .map(|(p, c)| (*p, c.mark()))
            .filter(|(p, mark)| committed.get(p) != Some(mark))
            .collect();
        let Some(producer) = producer else {
            committed.extend(moved);
            return Ok(());
        };
        if moved.is_empty() && !batch.open {
            return Ok(());
        }
        if !batch.open {
            producer
                .begin_transaction()
                .map_err(kafka("begin_transaction"))?;
            batch.open = true;
        }
        if !moved.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (partition, mark) in &moved {
                let mut element = offsets.add_partition(topic, *partition);
                element
                    .set_offset(Offset::Offset(mark.next))
                    .map_err(kafka("offsets"))?;
                element.set_metadata(mark.metadata());
            }
            let metadata = consumer.group_metadata().ok_or_else(|| {
                ToolError::Replay(format!("no group metadata for {}", self.report.group))
            })?;
            producer
                .send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT)
                .map_err(kafka("send_offsets_to_transaction"))?;
        }
        // Test builds: a crash here leaves the copies and the offsets in an open transaction.
        fail::fail_point!("dlq_replay_before_commit");
        if let Err(e) = producer.commit_transaction(TXN_TIMEOUT) {
            let failure = producer
                .context()
                .failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            return Err(match failure {
                Some(failure) => ToolError::Replay(format!(
                    "a replayed record was refused ({failure}); the transaction is aborted"
                )),
                None => kafka("commit_transaction")(e),
            });
        }
        *batch = Batch::default();
        self.report.transactions += 1;
        committed.extend(moved);
        Ok(())
    }
}

/// Enqueues the replayed copy of `letter`, waiting while the producer's queue is full.
fn send(producer: &ReplayProducer, letter: &DeadLetter, origin: &Origin) -> Result<(), ToolError> {
    let mut headers = OwnedHeaders::new();
    for (key, value) in replay_headers(letter) {
        headers = headers.insert(Header {
            key: &key,
            value: value.as_deref(),
        });
    }
    let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&origin.topic)
        .partition(origin.partition)
        .headers(headers);
    if let Some(key) = &letter.key {
        record = record.key(&key[..]);
    }
    if let Some(value) = &letter.value {
        record = record.payload(&value[..]);
    }
    if let Some(ms) = origin.timestamp_ms {
        record = record.timestamp(ms);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(kafka(format!("sending the copy of {}", letter.at()))(e)),
        }
    }
}

/// Where `letter`'s original goes back to, or why it cannot: it does not say where it was read,
/// or it holds no value (the original was too large for the DLQ topic). Sending that empty
/// value would delete its key on an upsert topic.
fn replayable(letter: &DeadLetter) -> Result<Origin, String> {
    let origin = letter
        .origin()
        .ok_or_else(|| format!("no {SOURCE_TOPIC} / {SOURCE_PARTITION} headers"))?;
    match letter.header(PAYLOAD_OMITTED) {
        Some(omitted) => Err(format!(
            "it holds no value ({omitted}); the original is at {} {}:{} while the topic \
             retains it",
            origin.topic,
            origin.partition,
            origin
                .offset
                .map_or_else(|| "?".to_owned(), |o| o.to_string())
        )),
        None => Ok(origin),
    }
}

#[cfg(test)]
mod tests {
    use super::super::SOURCE_OFFSET;
    use super::super::tests::{letter, poison};
    use super::*;

    #[test]
    fn a_dead_letter_without_its_value_or_its_origin_is_never_replayed() {
        let origin = [
            (SOURCE_TOPIC, "in"),
            (SOURCE_PARTITION, "2"),
            (SOURCE_OFFSET, "40"),
        ];
        assert_eq!(
            replayable(&letter(1, &origin))
                .expect("replayable")
                .partition,
            2
        );
        let mut omitted = letter(2, &origin);
        omitted.value = None;
        omitted.headers.push((
            PAYLOAD_OMITTED.to_owned(),
            Some(b"omitted: too large".to_vec()),
        ));
        let reason = replayable(&omitted).expect_err("no value to replay");
        assert!(reason.contains("in 2:40"), "{reason}");
        let reason = replayable(&letter(3, &[(SOURCE_TOPIC, "in")])).expect_err("no origin");
        assert!(reason.contains(SOURCE_PARTITION), "{reason}");
    }

    #[test]
    fn a_replayed_copy_keeps_the_original_headers_less_autoglm_ones_and_names_its_dlq_record() {
        let headers = replay_headers(&poison(9, "decode"));
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["traceparent", REPLAY_TOPIC, REPLAY_PARTITION, REPLAY_OFFSET]
        );
        assert_eq!(headers[3].1.as_deref(), Some(&b"9"[..]));
    }

    #[test]
    fn the_report_says_what_was_replayed_where_and_what_was_committed() {
        let report = ReplayReport {
            route: "accounts".into(),
            dlq_topic: "dlq".into(),
            group: "g-dlq-replay-accounts".into(),
            read: 5,
            replayed: 2,
            skipped_by_filter: 1,
            replayed_before: 2,
            encode_stage: 1,
            to_source: vec![SourceCount {
                topic: "in".into(),
                partition: 2,
                records: 2,
            }],
            committed: vec![Committed {
                partition: 0,
                offset: 3,
                done_above: "5-6".into(),
            }],
            transactions: 1,
            ..ReplayReport::default()
        };
        let text = report.to_text();
        assert!(
            text.contains("read 5 · replayed 2 · skipped by filter 1 · replayed before 2"),
            "{text}"
        );
        assert!(text.contains("  in 2: 2\n"), "{text}");
        assert!(text.contains("  0: 3 [5-6]\n"), "{text}");
        assert!(text.contains("encode stage"), "{text}");
        let json = report.to_json();
        assert_eq!(json["replayed"], 2);
        assert_eq!(json["committed"][0]["done_above"], "5-6");
        assert!(json.get("would_replay").is_none());
    }
}
