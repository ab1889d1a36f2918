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
//! * `marks` — [`Mark`] and [`Cursor`]: what a replay commits per DLQ partition.
//! * `replay` — [`replay`]: the transactional copy back to the source.
//!
//! Failure behaviour: every failure is a [`ToolError`]. A record the broker refuses (a source
//! partition that no longer exists, rights) aborts the open transaction and stops the replay;
//! the batches committed before it stay committed.

mod marks;
mod replay;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autoglm_codec::{Decoded, Encoding, Envelope};
use autoglm_kafka::ClientSettings;
use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::{Value as Json, json};

pub use marks::{Cursor, METADATA_MAX, Mark};
pub use replay::{
    Committed, Passed, ReplayOptions, ReplayReport, SourceCount, replay, replay_group,
    replay_headers,
};

use super::{REQUEST_TIMEOUT, ToolError, blocking, kafka, partitions, reader_config, rfc3339_ms};
use crate::pipeline::Pipeline;

/// Header: the error class of a dead letter (`poison`, …).
pub const ERROR_CLASS: &str = "autoglm.error.class";
/// Header: what went wrong.
pub const ERROR_MESSAGE: &str = "autoglm.error.message";
/// Header: the rule that failed (`decode`, `key_fields`, `version`, `fields.x.type`, `encode`,
/// `size`).
pub const ERROR_RULE: &str = "autoglm.error.rule";
/// Header: the field the rule failed on (the target topic for `encode` and `size`).
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
/// Header: why a dead letter holds no value (the input was too large for the DLQ topic).
pub const PAYLOAD_OMITTED: &str = "autoglm.payload.omitted";
/// Header of a replayed copy: the DLQ topic it was replayed from.
pub const REPLAY_TOPIC: &str = "autoglm.replay.topic";
/// Header of a replayed copy: its DLQ partition.
pub const REPLAY_PARTITION: &str = "autoglm.replay.partition";
/// Header of a replayed copy: its DLQ offset.
pub const REPLAY_OFFSET: &str = "autoglm.replay.offset";

/// How long one poll waits.
const POLL: Duration = Duration::from_millis(200);
/// A read that makes no progress for this long stops with an error instead of hanging.
const STALL: Duration = Duration::from_secs(60);

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
/// earliest first. Read committed, assigned in [`inspect_group`]: nothing is committed.
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

/// The group `dlq list` and `show` read in. librdkafka assigns partitions only to a consumer
/// with a group; this one never commits or joins (it assigns), but librdkafka looks up its
/// coordinator, which needs DESCRIBE on it.
pub fn inspect_group(group_id: &str) -> String {
    format!("{group_id}-dlq-inspect")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn letter(offset: i64, headers: &[(&str, &str)]) -> DeadLetter {
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

    pub(super) fn poison(offset: i64, rule: &str) -> DeadLetter {
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
