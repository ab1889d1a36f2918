//! `autoglm dlq list | show | replay`: a route's dead letters, and sending them back through
//! the route after a config fix.
//!
//! ```text
//!  list / show:  DLQ topic ──read_committed, assigned partitions, nothing committed──► table, JSON lines
//!
//!  replay:
//!  DLQ topic ──► consumer in group <group_id>-dlq-replay-<route> (assigned, read_committed)
//!     │ this route's records (autoglm.route), chosen by --since / --where
//!     ▼  one transaction per batch, transactional.id <group_id>-dlq-replay-<route>:
//!     ├─► the original key, bytes and timestamp, the original headers less autoglm.*, and
//!     │   autoglm.replay.{topic,partition,offset} ──► the source topic, into the partition the
//!     │   original came from (autoglm.source.topic / .partition)
//!     └─► the replay marks (offset + metadata) ──► send_offsets_to_transaction ──► commit
//!
//!  autoglm run (the instance that owns that partition) reads the copy like any input record:
//!  decode ─► key + version ─► version guard ─► map ─► output (or the DLQ again)
//! ```
//!
//! **Why through the source topic.** The state of a partition belongs to whichever running
//! instance owns that input partition; the tool never writes state. A copy in the same
//! partition meets the same owner, the same state and the same per-key order as any later
//! record of its key, and the route's version guard decides as it decides for every record: a
//! version older than the stored one is dropped as stale (counted in
//! `autoglm_guard_decisions_total{decision="stale"}`, written to the audit topic if the route
//! has one), never emitted. The copy differs from the original only in its offset and headers,
//! which the pipeline does not decide on (it reads `traceparent` only): the bytes, and so the
//! Debezium envelope, `op`, `source.snapshot`, positions and versions, are the original's.
//!
//! **Exactly once.** The copies and the replay group's offsets commit in one transaction. A
//! replay that dies mid-way leaves an open transaction; the next replay's `init_transactions`
//! (same transactional id) aborts it, then reads the committed offsets and resumes after the
//! last committed batch. Two replays of one route at once fence each other the same way.
//!
//! **Filters and the replay marks.** A record that `--since`/`--where` passes over must stay
//! reachable by a later replay with another filter, so the committed offset of a DLQ partition
//! is the first record left for later (or the end), and the records above it that *were*
//! replayed are listed in the offset's commit metadata as ranges (`autoglm-replay/1 12-15,18`).
//! A later replay reads from the committed offset and skips those ranges. The metadata is
//! bounded (the broker's `offset.metadata.max.bytes`, 4096 by default): a partition whose
//! ranges would pass [`METADATA_MAX`] stops there for this run and the report says so.
//! Records of other routes (a shared DLQ topic) and records without the source headers are
//! passed over for good.
//!
//! Replaying twice emits nothing new: the group is past every record the first replay sent.
//! And were the group reset, the guard drops each re-sent version, accepted the first time, as
//! a duplicate.
//!
//! Failure behaviour: every failure is a [`ToolError`]. A record the broker refuses (a source
//! partition that no longer exists, rights) aborts the open transaction and stops the replay;
//! the batches committed before it stay committed.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autoglm_codec::{Decoded, Encoding, Envelope};
use autoglm_kafka::ClientSettings;
use base64::Engine as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{Value as Json, json};

use super::{REQUEST_TIMEOUT, ToolError, blocking, kafka, partitions, reader_config, rfc3339_ms};
use crate::pipeline::Pipeline;

/// Header: the error class of a dead letter (`poison`, …).
pub const ERROR_CLASS: &str = "autoglm.error.class";
/// Header: what went wrong.
pub const ERROR_MESSAGE: &str = "autoglm.error.message";
/// Header: the rule that failed (`decode`, `key_fields`, `version`, `fields.x.type`, `encode`).
pub const ERROR_RULE: &str = "autoglm.error.rule";
/// Header: the field the rule failed on (the target topic for `encode`).
pub const ERROR_FIELD: &str = "autoglm.error.field";
/// Header: the route that dead-lettered the record.
pub const ROUTE: &str = "autoglm.route";
/// Header: the topic the original record was read from.
pub const SOURCE_TOPIC: &str = "autoglm.source.topic";
/// Header: its partition.
pub const SOURCE_PARTITION: &str = "autoglm.source.partition";
/// Header: its offset.
pub const SOURCE_OFFSET: &str = "autoglm.source.offset";
/// Header: its timestamp (ms since the epoch).
pub const SOURCE_TIMESTAMP: &str = "autoglm.source.timestamp";
/// Header of a replayed copy: the DLQ topic it was replayed from.
pub const REPLAY_TOPIC: &str = "autoglm.replay.topic";
/// Header of a replayed copy: its DLQ partition.
pub const REPLAY_PARTITION: &str = "autoglm.replay.partition";
/// Header of a replayed copy: its DLQ offset.
pub const REPLAY_OFFSET: &str = "autoglm.replay.offset";

/// Longest commit metadata a replay writes; the broker refuses more than
/// `offset.metadata.max.bytes` (4096 by default).
pub const METADATA_MAX: usize = 3000;
/// The replay marks' format tag, the start of their commit metadata.
const MARK_FORMAT: &str = "autoglm-replay/1";
/// Records per replay transaction.
const BATCH_RECORDS: usize = 500;
/// How long a replay transaction may collect records.
const BATCH_AGE: Duration = Duration::from_millis(500);
/// How long one poll waits.
const POLL: Duration = Duration::from_millis(200);
/// A read that makes no progress for this long stops with an error instead of hanging.
const STALL: Duration = Duration::from_secs(60);
/// How long one blocking transaction call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// One record of a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The DLQ topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// When it was dead-lettered (ms since the epoch).
    pub timestamp_ms: Option<i64>,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub value: Option<Vec<u8>>,
    /// Every header, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Where a dead letter's original was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The source topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: Option<i64>,
    /// Its timestamp (ms since the epoch).
    pub timestamp_ms: Option<i64>,
}

impl DeadLetter {
    fn from_message(msg: &impl Message) -> DeadLetter {
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        DeadLetter {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The last value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .map(String::from_utf8_lossy)
    }

    /// The route that dead-lettered it.
    pub fn route(&self) -> Option<Cow<'_, str>> {
        self.header(ROUTE)
    }

    /// Where its original was read, if the headers say so.
    pub fn origin(&self) -> Option<Origin> {
        let number = |name| self.header(name).and_then(|v| v.trim().parse::<i64>().ok());
        Some(Origin {
            topic: self.header(SOURCE_TOPIC)?.into_owned(),
            partition: i32::try_from(number(SOURCE_PARTITION)?).ok()?,
            offset: number(SOURCE_OFFSET),
            timestamp_ms: number(SOURCE_TIMESTAMP),
        })
    }

    /// `partition:offset`, as `dlq show` takes it.
    pub fn at(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    /// The record as one JSON object (`dlq list --json`): where, when, why, from where, the
    /// key and every header; the value's size only.
    pub fn to_json(&self) -> Json {
        let headers: serde_json::Map<String, Json> = self
            .headers
            .iter()
            .map(|(key, value)| {
                let value = value
                    .as_deref()
                    .map_or(Json::Null, |v| String::from_utf8_lossy(v).into());
                (key.clone(), value)
            })
            .collect();
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "timestamp": self.timestamp_ms.map(rfc3339_ms),
            "route": self.route(),
            "class": self.header(ERROR_CLASS),
            "rule": self.header(ERROR_RULE),
            "field": self.header(ERROR_FIELD),
            "message": self.header(ERROR_MESSAGE),
            "source": self.origin(),
            "key": Rendered::plain(self.key.as_deref()),
            "value_bytes": self.value.as_ref().map(Vec::len),
            "headers": headers,
        })
    }
}

/// Which reason header a `--where` condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    Class,
    Rule,
    Field,
}

impl Reason {
    fn header(self) -> &'static str {
        match self {
            Reason::Class => ERROR_CLASS,
            Reason::Rule => ERROR_RULE,
            Reason::Field => ERROR_FIELD,
        }
    }
}

/// Which dead letters a command takes: `--since` and `--where`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records dead-lettered at or after this time (ms since the epoch).
    since_ms: Option<i64>,
    /// Per reason header, the values any one of which selects a record. Conditions on
    /// different headers must all hold.
    conditions: BTreeMap<Reason, Vec<String>>,
}

impl Filter {
    /// Parses `--where` conditions (`rule=R`, `class=C`, `field=F`; `autoglm.error.rule=R`
    /// too) and `--since` (an RFC 3339 time, or a duration like `1h` or `2d 4h` before `now`).
    pub fn parse(
        wheres: &[String],
        since: Option<&str>,
        now: SystemTime,
    ) -> Result<Filter, ToolError> {
        let mut filter = Filter {
            since_ms: since.map(|s| parse_since(s, now)).transpose()?,
            ..Filter::default()
        };
        for condition in wheres {
            let bad = |why: &str| ToolError::Usage(format!("--where {condition:?}: {why}"));
            let (name, value) = condition
                .split_once('=')
                .ok_or_else(|| bad("expected NAME=VALUE, NAME one of rule, class, field"))?;
            let reason = match name.trim().trim_start_matches("autoglm.error.") {
                "class" => Reason::Class,
                "rule" => Reason::Rule,
                "field" => Reason::Field,
                _ => return Err(bad("NAME is one of rule, class, field")),
            };
            filter
                .conditions
                .entry(reason)
                .or_default()
                .push(value.to_owned());
        }
        Ok(filter)
    }

    /// Whether `letter` is taken.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        if let Some(since) = self.since_ms
            && letter.timestamp_ms.is_none_or(|t| t < since)
        {
            return false;
        }
        self.conditions.iter().all(|(reason, values)| {
            let got = letter.header(reason.header());
            values.iter().any(|v| got.as_deref() == Some(v.as_str()))
        })
    }

    /// The earliest time it takes, if it has one.
    pub fn since_ms(&self) -> Option<i64> {
        self.since_ms
    }
}

/// `--since`: an RFC 3339 time (`2025-06-01T10:00:00Z`, `2025-06-01T18:00:00+08:00`), or a
/// duration before `now` (`90s`, `1h`, `2d 4h`). Milliseconds since the epoch.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, ToolError> {
    let text = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    let ago = humantime::parse_duration(text).map_err(|e| {
        ToolError::Usage(format!(
            "--since {text:?}: neither an RFC 3339 time (2025-06-01T10:00:00Z) nor a duration (1h, 2d 4h): {e}"
        ))
    })?;
    let at = now.checked_sub(ago).unwrap_or(UNIX_EPOCH);
    let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A DLQ record by `PARTITION:OFFSET` (as `dlq list` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// The DLQ partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

impl std::str::FromStr for RecordRef {
    type Err = ToolError;

    fn from_str(text: &str) -> Result<RecordRef, ToolError> {
        let bad = || {
            ToolError::Usage(format!(
                "record {text:?}: expected PARTITION:OFFSET, as `dlq list` prints it (0:42)"
            ))
        };
        let (partition, offset) = text.split_once([':', '@', '/']).ok_or_else(bad)?;
        let partition = partition.trim().parse().map_err(|_| bad())?;
        let offset = offset.trim().parse().map_err(|_| bad())?;
        if partition < 0 || offset < 0 {
            return Err(bad());
        }
        Ok(RecordRef { partition, offset })
    }
}

/// Key or value bytes, shown as what they decode to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum Rendered {
    /// No bytes (a null key or value).
    Null,
    /// Avro in the Confluent wire format, decoded with the writer schema from the registry.
    Avro {
        /// The writer schema's registry id.
        schema_id: u32,
        /// The datum as JSON.
        json: Json,
    },
    /// JSON.
    Json {
        /// The value.
        json: Json,
    },
    /// UTF-8 text that is not JSON.
    Text {
        /// The text.
        text: String,
    },
    /// Anything else.
    Base64 {
        /// The bytes, base64 (standard alphabet, padded).
        base64: String,
    },
}

impl Rendered {
    /// JSON, else text, else base64 (no registry).
    pub fn plain(bytes: Option<&[u8]>) -> Rendered {
        let Some(bytes) = bytes else {
            return Rendered::Null;
        };
        if let Ok(json) = serde_json::from_slice::<Json>(bytes) {
            return Rendered::Json { json };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
                Rendered::Text {
                    text: text.to_owned(),
                }
            }
            _ => Rendered::Base64 {
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    /// For a table cell or a line: text as it is, JSON compact, base64 marked.
    pub fn short(&self) -> String {
        match self {
            Rendered::Null => "null".to_owned(),
            Rendered::Avro { json, .. } | Rendered::Json { json } => match json {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            },
            Rendered::Text { text } => text.clone(),
            Rendered::Base64 { base64 } => format!("base64:{base64}"),
        }
    }

    /// Whole, for `dlq show`: JSON pretty-printed.
    fn long(&self) -> String {
        match self {
            Rendered::Avro { json, .. } | Rendered::Json { json } => {
                serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string())
            }
            other => other.short(),
        }
    }

    fn format(&self) -> String {
        match self {
            Rendered::Null => "null".to_owned(),
            Rendered::Avro { schema_id, .. } => format!("avro, schema id {schema_id}"),
            Rendered::Json { .. } => "json".to_owned(),
            Rendered::Text { .. } => "text".to_owned(),
            Rendered::Base64 { .. } => "bytes, base64".to_owned(),
        }
    }
}

/// Shortens `text` to `max` characters, with an ellipsis.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `dlq list` as a table: one row per record.
pub fn list_table(letters: &[DeadLetter]) -> String {
    let mut table = super::table([
        "RECORD", "TIME", "KEY", "CLASS", "RULE", "FIELD", "SOURCE", "MESSAGE",
    ]);
    for letter in letters {
        let source = letter.origin().map_or_else(
            || "-".to_owned(),
            |o| match o.offset {
                Some(offset) => format!("{} {}:{offset}", o.topic, o.partition),
                None => format!("{} {}", o.topic, o.partition),
            },
        );
        let header = |name| {
            letter
                .header(name)
                .map_or_else(String::new, Cow::into_owned)
        };
        table.add_row([
            letter.at(),
            letter.timestamp_ms.map_or_else(String::new, rfc3339_ms),
            clip(&Rendered::plain(letter.key.as_deref()).short(), 24),
            header(ERROR_CLASS),
            header(ERROR_RULE),
            header(ERROR_FIELD),
            source,
            clip(&header(ERROR_MESSAGE).replace('\n', " "), 80),
        ]);
    }
    super::render(&mut table)
}

/// `dlq list --json`: one JSON object per line.
pub fn list_json(letters: &[DeadLetter]) -> String {
    letters
        .iter()
        .map(|l| format!("{}\n", l.to_json()))
        .collect()
}

/// Reads the dead letters of `route` that `filter` takes, from the beginning of its DLQ topic
/// (or `--since`), up to the end it has when the read starts: at most `limit` of them, the
/// earliest first. Read committed, in no consumer group; nothing is committed.
pub async fn list(
    pipeline: &Pipeline,
    route: &str,
    filter: &Filter,
    limit: Option<usize>,
) -> Result<Vec<DeadLetter>, ToolError> {
    let route = super::route(pipeline, route)?;
    let settings = pipeline.client_settings().clone();
    let topic = route.dlq_topic.clone();
    let name = route.name.clone();
    let filter = filter.clone();
    let group = inspect_group(&pipeline.config().kafka.group_id);
    blocking(move || {
        let consumer: BaseConsumer = reader_config(&settings, Some(&group))
            .create()
            .map_err(kafka("creating the DLQ reader"))?;
        let mut tails = Tails::default();
        for partition in partitions(&consumer, &topic)? {
            let (low, end) = consumer
                .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
                .map_err(kafka(format!("end offsets of {topic}")))?;
            tails.add(partition, low, end);
        }
        if let Some(since) = filter.since_ms() {
            tails.seek_to_time(&consumer, &topic, since)?;
        }
        let mut letters = Vec::new();
        let mut taken: HashMap<i32, usize> = HashMap::new();
        tails.read(&consumer, &topic, |letter| {
            let ours = letter.route().as_deref() == Some(name.as_str());
            if !ours || !filter.matches(&letter) {
                return Read::More;
            }
            let count = taken.entry(letter.partition).or_default();
            *count += 1;
            letters.push(letter);
            // The first `limit` of each partition hold the first `limit` overall.
            if limit.is_some_and(|limit| *count >= limit) {
                Read::PartitionDone
            } else {
                Read::More
            }
        })?;
        letters.sort_by_key(|l| (l.timestamp_ms, l.partition, l.offset));
        if let Some(limit) = limit {
            letters.truncate(limit);
        }
        Ok(letters)
    })
    .await
}

/// One dead letter, whole, with its key and value decoded where they can be.
#[derive(Debug, Clone)]
pub struct Shown {
    /// The record.
    pub letter: DeadLetter,
    /// Its key.
    pub key: Rendered,
    /// Its value.
    pub value: Rendered,
}

impl Shown {
    /// As one JSON object: [`DeadLetter::to_json`] with the key and value decoded.
    pub fn to_json(&self) -> Json {
        let mut json = self.letter.to_json();
        json["key"] = serde_json::to_value(&self.key).unwrap_or(Json::Null);
        json["value"] = serde_json::to_value(&self.value).unwrap_or(Json::Null);
        json
    }

    /// As text: where, why, from where, every header, the key and the value.
    pub fn to_text(&self) -> String {
        let l = &self.letter;
        let mut out = String::new();
        let mut line = |name: &str, value: &str| {
            out.push_str(format!("{name:<10} {value}").trim_end());
            out.push('\n');
        };
        line("record", &format!("{} {}", l.topic, l.at()));
        if let Some(ms) = l.timestamp_ms {
            line("time", &rfc3339_ms(ms));
        }
        for (name, header) in [
            ("route", ROUTE),
            ("class", ERROR_CLASS),
            ("rule", ERROR_RULE),
            ("field", ERROR_FIELD),
            ("message", ERROR_MESSAGE),
        ] {
            if let Some(value) = l.header(header) {
                line(name, &value);
            }
        }
        if let Some(o) = l.origin() {
            let offset = o.offset.map_or_else(String::new, |x| format!(":{x}"));
            let time = o
                .timestamp_ms
                .map_or_else(String::new, |t| format!(" at {}", rfc3339_ms(t)));
            line(
                "source",
                &format!("{} {}{offset}{time}", o.topic, o.partition),
            );
        }
        line("headers", "");
        for (key, value) in &l.headers {
            let value = value.as_deref().map_or_else(
                || "null".to_owned(),
                |v| String::from_utf8_lossy(v).into_owned(),
            );
            line("", &format!("{key}: {value}"));
        }
        line(
            "key",
            &format!("({}) {}", self.key.format(), self.key.long()),
        );
        line("value", &format!("({})", self.value.format()));
        out.push_str(&self.value.long());
        out.push('\n');
        out
    }
}

/// The DLQ record of `route` at `at`, whole. Its value is decoded as the route's source would
/// be: Avro through the registry (with the wire header), else JSON, else text, else base64.
pub async fn show(pipeline: &Pipeline, route: &str, at: RecordRef) -> Result<Shown, ToolError> {
    let route = super::route(pipeline, route)?;
    let settings = pipeline.client_settings().clone();
    let topic = route.dlq_topic.clone();
    let group = inspect_group(&pipeline.config().kafka.group_id);
    let letter = blocking(move || read_one(&settings, &group, &topic, at)).await?;
    let key = render(pipeline, letter.key.as_deref()).await;
    let value = render(pipeline, letter.value.as_deref()).await;
    Ok(Shown { letter, key, value })
}

/// Avro through the registry when the bytes carry the wire header and the config has a
/// registry; else [`Rendered::plain`].
async fn render(pipeline: &Pipeline, bytes: Option<&[u8]>) -> Rendered {
    if let Some(bytes) = bytes
        && pipeline.registry().is_some()
        && let Ok(id) = autoglm_codec::schema_id(bytes)
        && let Ok(Decoded::Event(event)) = pipeline
            .decoder()
            .decode(Envelope::Upsert, Encoding::Avro, None, Some(bytes))
            .await
    {
        // As an upsert row, the datum is the whole value (a Debezium envelope included).
        let json = event.after.map_or(Json::Null, Json::Object);
        return Rendered::Avro {
            schema_id: id,
            json,
        };
    }
    Rendered::plain(bytes)
}

fn read_one(
    settings: &ClientSettings,
    group: &str,
    topic: &str,
    at: RecordRef,
) -> Result<DeadLetter, ToolError> {
    let consumer: BaseConsumer = reader_config(settings, Some(group))
        .create()
        .map_err(kafka("creating the DLQ reader"))?;
    if !partitions(&consumer, topic)?.contains(&at.partition) {
        return Err(ToolError::NotFound(format!(
            "{topic} has no partition {}",
            at.partition
        )));
    }
    let (low, end) = consumer
        .fetch_watermarks(topic, at.partition, REQUEST_TIMEOUT)
        .map_err(kafka(format!("end offsets of {topic}")))?;
    let missing = || {
        ToolError::NotFound(format!(
            "{topic} has no committed record at {}:{} (its partition holds {low}..{end}; a \
             transaction marker, an aborted record, or one removed by retention)",
            at.partition, at.offset
        ))
    };
    if at.offset < low || at.offset >= end {
        return Err(missing());
    }
    let mut tails = Tails::default();
    tails.add(at.partition, at.offset, end);
    let mut found = None;
    tails.read(&consumer, topic, |letter| {
        if letter.offset == at.offset {
            found = Some(letter);
        }
        Read::PartitionDone
    })?;
    found.ok_or_else(missing)
}

/// What a reader callback wants next.
enum Read {
    /// The next record.
    More,
    /// Nothing more of this record's partition.
    PartitionDone,
}

/// Partitions read from a start offset to the committed end they had when the read began.
#[derive(Default)]
struct Tails {
    /// Per partition: `(start, end)`.
    ranges: BTreeMap<i32, (i64, i64)>,
}

impl Tails {
    fn add(&mut self, partition: i32, start: i64, end: i64) {
        if start < end {
            self.ranges.insert(partition, (start, end));
        }
    }

    /// Moves each start to the first record at or after `since_ms`.
    fn seek_to_time(
        &mut self,
        consumer: &BaseConsumer,
        topic: &str,
        since_ms: i64,
    ) -> Result<(), ToolError> {
        let mut times = TopicPartitionList::new();
        for partition in self.ranges.keys() {
            times
                .add_partition_offset(topic, *partition, Offset::Offset(since_ms))
                .map_err(kafka("offsets by time"))?;
        }
        let found = consumer
            .offsets_for_times(times, REQUEST_TIMEOUT)
            .map_err(kafka(format!("offsets of {topic} by time")))?;
        for element in found.elements() {
            let Some((start, end)) = self.ranges.get_mut(&element.partition()) else {
                continue;
            };
            match element.offset() {
                Offset::Offset(at) => *start = (*start).max(at),
                // No record that late.
                _ => *start = *end,
            }
        }
        self.ranges.retain(|_, (start, end)| start < end);
        Ok(())
    }

    /// Reads every partition from its start to its end, handing each record to `each`.
    fn read(
        mut self,
        consumer: &BaseConsumer,
        topic: &str,
        mut each: impl FnMut(DeadLetter) -> Read,
    ) -> Result<(), ToolError> {
        if self.ranges.is_empty() {
            return Ok(());
        }
        let mut assignment = TopicPartitionList::new();
        for (partition, (start, _)) in &self.ranges {
            assignment
                .add_partition_offset(topic, *partition, Offset::Offset(*start))
                .map_err(kafka("assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka(format!("assigning {topic}")))?;
        let mut progress = Instant::now();
        while !self.ranges.is_empty() {
            let look;
            match consumer.poll(POLL) {
                Some(Ok(msg)) => {
                    progress = Instant::now();
                    let partition = msg.partition();
                    let Some(&(_, end)) = self.ranges.get(&partition) else {
                        continue;
                    };
                    // Written after the read began.
                    if msg.offset() >= end {
                        self.ranges.remove(&partition);
                        continue;
                    }
                    // The last record may be followed by a commit marker.
                    look = msg.offset() + 2 >= end;
                    if let Read::PartitionDone = each(DeadLetter::from_message(&msg)) {
                        self.ranges.remove(&partition);
                    }
                }
                Some(Err(e)) => return Err(kafka(format!("reading {topic}"))(e)),
                None => look = true,
            }
            if look {
                let position = consumer.position().map_err(kafka("position"))?;
                self.ranges.retain(|partition, (_, end)| {
                    !matches!(
                        position.find_partition(topic, *partition).map(|p| p.offset()),
                        Some(Offset::Offset(at)) if at >= *end
                    )
                });
            }
            if progress.elapsed() > STALL {
                return Err(ToolError::Stalled(format!(
                    "reading {topic} made no progress for {} s (partitions {:?} left)",
                    STALL.as_secs(),
                    self.ranges.keys().collect::<Vec<_>>()
                )));
            }
        }
        Ok(())
    }
}

/// What a replay commits for one DLQ partition: every record below `next` is dealt with, and
/// so are the records in the `done` ranges above it (inclusive, ascending, disjoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The committed offset: the first record left for a later replay, or the end.
    pub next: i64,
    /// Offset ranges above `next` that were replayed (or passed over for good).
    pub done: Vec<(i64, i64)>,
}

impl Mark {
    /// A partition no replay has committed for: from `start` (the log start).
    pub fn start(start: i64) -> Mark {
        Mark {
            next: start,
            done: Vec::new(),
        }
    }

    /// The mark committed as offset `next` with `metadata`. Metadata a replay did not write
    /// (an offset reset by an admin tool) holds no ranges.
    pub fn parse(next: i64, metadata: &str) -> Mark {
        let ranges = metadata
            .strip_prefix(MARK_FORMAT)
            .map(str::trim)
            .filter(|rest| !rest.is_empty());
        let mut done = Vec::new();
        if let Some(ranges) = ranges {
            for piece in ranges.split(',') {
                let range = match piece.split_once('-') {
                    Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                    None => piece.parse().ok().map(|a| (a, a)),
                };
                match range {
                    Some((a, b)) if a <= b && a > next => done.push((a, b)),
                    Some(_) => {}
                    // Not written by a replay: trust none of it.
                    None => return Mark::start(next),
                }
            }
        }
        Mark { next, done }.normalized()
    }

    /// The commit metadata: the format tag and the ranges.
    pub fn metadata(&self) -> String {
        let mut out = MARK_FORMAT.to_owned();
        for (i, &(a, b)) in self.done.iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            if a == b {
                out.push_str(&a.to_string());
            } else {
                out.push_str(&format!("{a}-{b}"));
            }
        }
        out
    }

    /// Whether the record at `offset` was dealt with.
    pub fn contains(&self, offset: i64) -> bool {
        offset < self.next
            || self
                .done
                .binary_search_by(|&(a, b)| {
                    if b < offset {
                        std::cmp::Ordering::Less
                    } else if a > offset {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .is_ok()
    }

    /// The mark with nothing below `low` (the log start: retention removed the records below
    /// it).
    fn at_least(mut self, low: i64) -> Mark {
        self.next = self.next.max(low);
        self.normalized()
    }

    /// Ranges in order, touching ones merged, none below `next` and none starting at it
    /// (`next` moves past those).
    fn normalized(mut self) -> Mark {
        self.done.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(self.done.len());
        for (a, b) in self.done {
            match merged.last_mut() {
                Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged.retain(|&(_, b)| b >= self.next);
        while let Some(&(a, b)) = merged.first()
            && a <= self.next
        {
            self.next = self.next.max(b + 1);
            merged.remove(0);
        }
        self.done = merged;
        self
    }

    /// The mark's dealt-with ranges as text (`12-15,18`), empty without any.
    fn ranges(&self) -> String {
        self.metadata()
            .strip_prefix(MARK_FORMAT)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// The digits of `n` as text.
fn digits(n: i64) -> usize {
    n.to_string().len()
}

/// The text length of the range `a-b` (or `a`).
fn piece_len(a: i64, b: i64) -> usize {
    if a == b {
        digits(a)
    } else {
        digits(a) + 1 + digits(b)
    }
}

/// One DLQ partition's progress in a replay: what it read, replayed and left.
#[derive(Debug, Clone)]
pub struct Cursor {
    /// As committed when the replay began.
    start: Mark,
    /// The partition's committed end (its last stable offset) when the replay began.
    end: i64,
    /// The next offset to read.
    read_to: i64,
    /// The first record left for a later replay.
    pending_from: Option<i64>,
    /// Dealt-with ranges above `pending_from`.
    done: Vec<(i64, i64)>,
    /// A record was left since the last dealt-with one.
    gap: bool,
    /// The length of the metadata of [`Cursor::mark`], without the ranges of `start` above
    /// `read_to`.
    metadata_len: usize,
    /// `start.done[i..]`'s encoded length, each range with its separator, for each `i`.
    start_tail: Vec<usize>,
    /// Read to its end, or stopped.
    finished: bool,
}

impl Cursor {
    /// A partition whose committed mark is `start` and whose committed end is `end`.
    pub fn new(start: Mark, end: i64) -> Cursor {
        let mut start_tail = vec![0; start.done.len() + 1];
        for (i, &(a, b)) in start.done.iter().enumerate().rev() {
            start_tail[i] = start_tail[i + 1] + 1 + piece_len(a, b);
        }
        Cursor {
            read_to: start.next,
            finished: start.next >= end,
            start,
            end,
            pending_from: None,
            done: Vec::new(),
            gap: false,
            metadata_len: MARK_FORMAT.len(),
            start_tail,
        }
    }

    /// The encoded length of the ranges of `start` at and above `from` (the first one cut to
    /// start there): what a stop at `from` keeps of them.
    fn start_tail_len(&self, from: i64) -> usize {
        let i = self.start.done.partition_point(|&(_, b)| b < from);
        match self.start.done.get(i) {
            Some(&(a, b)) => 1 + piece_len(a.max(from), b) + self.start_tail[i + 1],
            None => 0,
        }
    }

    /// Whether an earlier replay dealt with the record at `offset`.
    pub fn replayed_before(&self, offset: i64) -> bool {
        self.start.contains(offset)
    }

    /// The metadata length once the record at `offset` is dealt with.
    fn metadata_len_after(&self, offset: i64) -> usize {
        if self.pending_from.is_none() {
            return self.metadata_len;
        }
        match self.done.last() {
            Some(&(a, b)) if !self.gap => {
                self.metadata_len - piece_len(a, b) + piece_len(a, offset)
            }
            // A new range, after a space or a comma.
            _ => self.metadata_len + 1 + digits(offset),
        }
    }

    /// Whether the record at `offset` can be dealt with in this run (its range fits the
    /// commit metadata).
    pub fn can_pass(&self, offset: i64) -> bool {
        // A stop at the next record keeps the ranges of `start` above it too.
        self.metadata_len_after(offset) + self.start_tail_len(offset + 1) <= METADATA_MAX
    }

    /// The record at `offset` was replayed, or is passed over for good.
    pub fn pass(&mut self, offset: i64) {
        self.metadata_len = self.metadata_len_after(offset);
        self.read_to = offset + 1;
        if self.pending_from.is_none() {
            return;
        }
        match self.done.last_mut() {
            Some(last) if !self.gap => last.1 = offset,
            _ => self.done.push((offset, offset)),
        }
        self.gap = false;
    }

    /// The record at `offset` is left for a later replay (the filter passed over it).
    pub fn leave(&mut self, offset: i64) {
        self.read_to = offset + 1;
        self.pending_from.get_or_insert(offset);
        self.gap = true;
    }

    /// The consumer's position passed `position` (transaction markers included).
    pub fn advance(&mut self, position: i64) {
        if self.finished {
            return;
        }
        self.read_to = self.read_to.max(position);
        if self.read_to >= self.end {
            self.finished = true;
        }
    }

    /// Nothing more of this partition in this run.
    pub fn stop(&mut self) {
        self.finished = true;
    }

    /// Whether this run is done with the partition.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The mark to commit now.
    pub fn mark(&self) -> Mark {
        let mut done = self.done.clone();
        // What an earlier replay did above what this one read still holds (mid-way, or
        // stopped early).
        let at = self.read_to;
        done.extend(
            self.start
                .done
                .iter()
                .filter(|&&(_, b)| b >= at)
                .map(|&(a, b)| (a.max(at), b)),
        );
        Mark {
            next: self.pending_from.unwrap_or(self.read_to),
            done,
        }
        .normalized()
    }
}

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
    /// Records without the headers that say where they came from: never replayable.
    pub unreplayable: Vec<Passed>,
    /// Replayed records dead-lettered at the `encode` stage: the guard had accepted their
    /// version already, so their replays are dropped as duplicates.
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
                "note: {} of these were dead-lettered at the encode stage, after the version guard \
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

/// The group `dlq list` and `show` read in. librdkafka assigns partitions only to a consumer
/// with a group; this one never commits or joins (it assigns), but librdkafka looks up its
/// coordinator, which needs DESCRIBE on it.
pub fn inspect_group(group_id: &str) -> String {
    format!("{group_id}-dlq-inspect")
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
    let route = super::route(pipeline, &options.route)?;
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
    /// Its headers do not say where it came from.
    Unreplayable,
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
            match letter.origin() {
                Some(origin) => Verdict::Replay(origin),
                None => Verdict::Unreplayable,
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
            Verdict::Unreplayable => report.unreplayable.push(Passed {
                partition: letter.partition,
                offset,
                reason: format!("no {SOURCE_TOPIC} / {SOURCE_PARTITION} headers"),
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
                if letter.header(ERROR_RULE).as_deref() == Some("encode") {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64, headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            topic: "dlq".into(),
            partition: 0,
            offset,
            timestamp_ms: Some(1_000 * offset),
            key: Some(b"7".to_vec()),
            value: Some(b"{\"id\":7}".to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn poison(offset: i64, rule: &str) -> DeadLetter {
        letter(
            offset,
            &[
                (ERROR_CLASS, "poison"),
                (ERROR_RULE, rule),
                (ERROR_FIELD, "score"),
                (ROUTE, "accounts"),
                (SOURCE_TOPIC, "in"),
                (SOURCE_PARTITION, "2"),
                (SOURCE_OFFSET, "40"),
                (SOURCE_TIMESTAMP, "123"),
                ("traceparent", "00-abc-def-01"),
            ],
        )
    }

    fn filter(wheres: &[&str], since: Option<&str>) -> Filter {
        let wheres: Vec<String> = wheres.iter().map(|w| (*w).to_owned()).collect();
        Filter::parse(&wheres, since, UNIX_EPOCH + Duration::from_secs(100)).expect("a filter")
    }

    #[test]
    fn where_conditions_on_one_header_are_alternatives_and_on_several_all_hold() {
        let a = poison(1, "fields.score.type");
        let b = poison(2, "decode");
        assert!(filter(&[], None).matches(&a));
        assert!(filter(&["rule=decode"], None).matches(&b));
        assert!(!filter(&["rule=decode"], None).matches(&a));
        let either = filter(&["rule=decode", "rule=fields.score.type"], None);
        assert!(either.matches(&a) && either.matches(&b));
        assert!(filter(&["class=poison", "field=score"], None).matches(&a));
        assert!(!filter(&["class=poison", "field=name"], None).matches(&a));
        assert!(filter(&["autoglm.error.rule=decode"], None).matches(&b));
        let err = Filter::parse(&["route=x".to_owned()], None, UNIX_EPOCH).expect_err("bad name");
        assert!(err.to_string().contains("rule, class, field"), "{err}");
        assert!(Filter::parse(&["rule".to_owned()], None, UNIX_EPOCH).is_err());
    }

    #[test]
    fn since_takes_rfc3339_times_with_offsets_and_durations_before_now() {
        let now = UNIX_EPOCH + Duration::from_secs(7_200);
        assert_eq!(parse_since("1h", now).ok(), Some(3_600_000));
        assert_eq!(parse_since("1h 30m", now).ok(), Some(1_800_000));
        assert_eq!(parse_since("3h", now).ok(), Some(0));
        assert_eq!(
            parse_since("2025-06-01T10:00:00.123Z", now).ok(),
            Some(1_748_772_000_123)
        );
        assert_eq!(
            parse_since("2025-06-01T18:00:00+08:00", now).ok(),
            Some(1_748_772_000_000)
        );
        assert!(parse_since("yesterday", now).is_err());
        // By the DLQ record's time: records without one are not taken.
        let since = filter(&[], Some("50s"));
        assert!(since.matches(&poison(50, "decode")));
        assert!(!since.matches(&poison(49, "decode")));
        let mut timeless = poison(60, "decode");
        timeless.timestamp_ms = None;
        assert!(!since.matches(&timeless));
    }

    #[test]
    fn record_references_are_partition_and_offset() {
        let at = |s: &str| s.parse::<RecordRef>();
        assert_eq!(
            at("2:17").ok(),
            Some(RecordRef {
                partition: 2,
                offset: 17
            })
        );
        assert_eq!(at("2@17").ok(), at("2:17").ok());
        assert!(at("17").is_err());
        assert!(at("a:1").is_err());
        assert!(at("-1:1").is_err());
    }

    #[test]
    fn a_dead_letter_names_its_origin_from_its_headers() {
        let l = poison(3, "decode");
        assert_eq!(
            l.origin(),
            Some(Origin {
                topic: "in".into(),
                partition: 2,
                offset: Some(40),
                timestamp_ms: Some(123)
            })
        );
        assert_eq!(l.route().as_deref(), Some("accounts"));
        assert_eq!(letter(1, &[(SOURCE_TOPIC, "in")]).origin(), None);
        let json = l.to_json();
        assert_eq!(json["rule"], "decode");
        assert_eq!(json["source"]["partition"], 2);
        assert_eq!(json["key"], json!({"format": "json", "json": 7}));
        assert_eq!(json["headers"]["traceparent"], "00-abc-def-01");
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
    fn bytes_render_as_json_text_or_base64() {
        assert_eq!(Rendered::plain(None), Rendered::Null);
        assert_eq!(
            Rendered::plain(Some(b"{\"a\":1}")),
            Rendered::Json {
                json: json!({"a": 1})
            }
        );
        assert_eq!(
            Rendered::plain(Some(b"{not json")),
            Rendered::Text {
                text: "{not json".into()
            }
        );
        assert_eq!(
            Rendered::plain(Some(&[0, 0, 0, 0, 1, 2])),
            Rendered::Base64 {
                base64: "AAAAAAEC".into()
            }
        );
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn marks_round_trip_through_the_commit_metadata() {
        let mark = Mark {
            next: 10,
            done: vec![(12, 15), (18, 18)],
        };
        assert_eq!(mark.metadata(), "autoglm-replay/1 12-15,18");
        assert_eq!(Mark::parse(10, &mark.metadata()), mark);
        assert_eq!(Mark::parse(10, "autoglm-replay/1"), Mark::start(10));
        // Metadata no replay wrote (an admin tool's reset) holds no ranges.
        assert_eq!(Mark::parse(10, ""), Mark::start(10));
        assert_eq!(Mark::parse(10, "autoglm-replay/1 12-x"), Mark::start(10));
        assert!(mark.contains(9) && mark.contains(13) && mark.contains(18));
        assert!(!mark.contains(10) && !mark.contains(16) && !mark.contains(19));
        // Retention removed the records below 13: the range from there on is below the mark.
        assert_eq!(
            mark.clone().at_least(13),
            Mark {
                next: 16,
                done: vec![(18, 18)]
            }
        );
        assert_eq!(mark.clone().at_least(5), mark);
    }

    /// Runs one replay over `records` (offset, rule) of a partition ending at `end`, taking
    /// `rule` only: what each cursor step does for a record.
    fn run(start: Mark, end: i64, records: &[(i64, &str)], rule: &str) -> (Mark, Vec<i64>) {
        let mut cursor = Cursor::new(start, end);
        let mut replayed = Vec::new();
        let from = cursor.read_to;
        for &(offset, r) in records.iter().filter(|(o, _)| *o >= from) {
            if cursor.replayed_before(offset) {
                cursor.pass(offset);
            } else if r == rule {
                replayed.push(offset);
                cursor.pass(offset);
            } else {
                cursor.leave(offset);
            }
        }
        cursor.advance(end);
        assert!(cursor.is_finished());
        (cursor.mark(), replayed)
    }

    #[test]
    fn a_replay_with_one_filter_leaves_the_others_records_reachable_and_none_twice() {
        // Offsets 0..10 alternate rules a and b; 10 is a commit marker.
        let records: Vec<(i64, &str)> = (0..10)
            .map(|o| (o, if o % 2 == 0 { "a" } else { "b" }))
            .collect();
        let (mark, replayed) = run(Mark::start(0), 11, &records, "a");
        assert_eq!(replayed, [0, 2, 4, 6, 8]);
        assert_eq!(
            mark,
            Mark {
                next: 1,
                done: vec![(2, 2), (4, 4), (6, 6), (8, 8)]
            }
        );
        // The same filter again takes nothing.
        let (again, replayed) = run(mark.clone(), 11, &records, "a");
        assert!(replayed.is_empty());
        assert_eq!(again, mark);
        // The other filter reaches the rest, and the partition is done: the mark is its end.
        let (done, replayed) = run(mark, 11, &records, "b");
        assert_eq!(replayed, [1, 3, 5, 7, 9]);
        assert_eq!(done, Mark::start(11));
        let (_, replayed) = run(done, 11, &records, "b");
        assert!(replayed.is_empty());
    }

    #[test]
    fn a_replay_stops_a_partition_before_its_marks_outgrow_the_metadata() {
        let mut cursor = Cursor::new(Mark::start(0), 1_000_000);
        let mut offset = 0;
        cursor.leave(offset);
        loop {
            offset += 2;
            if !cursor.can_pass(offset) {
                break;
            }
            cursor.pass(offset);
            offset += 1;
            cursor.leave(offset);
        }
        assert!(cursor.mark().metadata().len() <= METADATA_MAX);
        assert!(cursor.mark().metadata().len() > METADATA_MAX - 20);
        // Extending the last range never needs room a new one would.
        let mut cursor = Cursor::new(Mark::start(0), 10);
        cursor.leave(0);
        cursor.pass(1);
        assert!(cursor.can_pass(2));
        cursor.pass(2);
        assert_eq!(cursor.mark().metadata(), "autoglm-replay/1 1-2");
    }

    #[test]
    fn a_mark_mid_way_keeps_what_an_earlier_replay_did_above_what_this_one_read() {
        let start = Mark {
            next: 0,
            done: vec![(3, 3), (5, 6)],
        };
        let mut cursor = Cursor::new(start.clone(), 10);
        assert_eq!(cursor.mark(), start, "nothing read: the mark as committed");
        cursor.leave(0);
        cursor.pass(1);
        assert_eq!(
            cursor.mark(),
            Mark {
                next: 0,
                done: vec![(1, 1), (3, 3), (5, 6)]
            }
        );
        assert_eq!(
            Mark::parse(0, "autoglm-replay/1 3,4-6").done,
            [(3, 6)],
            "touching ranges merge"
        );
    }

    #[test]
    fn a_partition_stopped_early_keeps_what_an_earlier_replay_did_above_the_stop() {
        let start = Mark {
            next: 0,
            done: vec![(2, 5), (8, 8)],
        };
        // Record 0 left, 1 replayed now, 2 replayed before, then a stop at 3.
        let mut cursor = Cursor::new(start.clone(), 20);
        cursor.leave(0);
        cursor.pass(1);
        assert!(cursor.replayed_before(2));
        cursor.pass(2);
        cursor.stop();
        assert_eq!(
            cursor.mark(),
            Mark {
                next: 0,
                done: vec![(1, 5), (8, 8)]
            }
        );
        // Nothing left below the stop: the mark moves up to it, and past a range there.
        let mut clean = Cursor::new(start, 20);
        clean.pass(0);
        clean.pass(1);
        clean.stop();
        assert_eq!(
            clean.mark(),
            Mark {
                next: 6,
                done: vec![(8, 8)]
            }
        );
        // The ranges a stop keeps count against the metadata's size.
        let many: Vec<(i64, i64)> = (0..400)
            .map(|i| (1_000_000 + 2 * i, 1_000_000 + 2 * i))
            .collect();
        let mut full = Cursor::new(
            Mark {
                next: 0,
                done: many,
            },
            2_000_000,
        );
        full.leave(0);
        assert!(full.start_tail_len(6) > METADATA_MAX);
        assert!(!full.can_pass(5));
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

    #[test]
    fn the_list_table_has_a_row_per_record_with_its_reason() {
        let table = list_table(&[poison(3, "fields.score.type")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("RECORD"), "{table}");
        assert!(lines[1].contains("0:3") && lines[1].contains("fields.score.type"));
        assert!(lines[1].contains("in 2:40"), "{table}");
        assert_eq!(
            list_json(&[poison(3, "a"), poison(4, "b")]).lines().count(),
            2
        );
    }
}
