//! The origin document's CRM → ERP customer sync.
//!
//! - [`crm`] and [`connect`]: the real source, as `make demo` runs it. The CRM `customers` table
//!   in PostgreSQL, written with the origin document's optimistic lock, and the Debezium
//!   connector in Kafka Connect that captures it.
//! - [`scenario`]: a synthetic Debezium (PostgreSQL) change stream of the same table, with the
//!   cases a real stream has and some it should not (poison records), Avro-encoded by
//!   [`produce`]. The tests use it where they need exact control of the input.
//! - [`read_committed`] and [`latest`]: the results, read back.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use autoglm_codec::{AvroTarget, Decoded, Decoder, Encoding, Envelope};
use autoglm_kafka::ClientSettings;
use futures::StreamExt as _;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::{Value as Json, json};

pub mod connect;
pub mod crm;

/// The CRM source schema (a Debezium envelope), from `schemas/`.
pub const CRM_SCHEMA: &str = include_str!("../../../schemas/crm.customers-value.avsc");

/// One input record of the stream.
#[derive(Debug, Clone)]
pub struct DemoRecord {
    /// What this record shows.
    pub note: &'static str,
    /// The record key (JSON `{"id": …}`).
    pub key: Json,
    /// The value: an envelope to encode, a tombstone, or raw bytes.
    pub value: DemoValue,
}

/// A record value.
#[derive(Debug, Clone)]
pub enum DemoValue {
    /// A Debezium envelope, encoded with the CRM schema.
    Envelope(Json),
    /// The null value after a delete.
    Tombstone,
    /// Bytes as they are (a broken producer).
    Raw(Vec<u8>),
}

/// The time the scenario's changes start at: an hour before this process first asked, on the
/// minute. Recent, because the records are stamped with it and a broker deletes records older
/// than its retention (7 days by default): a fixed date once made a replay vanish between two
/// runs. The same for the whole process, so that two calls of [`scenario`] agree.
pub fn t0_ms() -> i64 {
    static T0: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        (now - 3_600_000) / 60_000 * 60_000
    });
    *T0
}

/// A CRM customer row.
pub fn customer(
    id: i64,
    name: &str,
    email: &str,
    tax_id: &str,
    credit: &str,
    version: i64,
) -> Json {
    json!({
        "id": id, "usr_name": name, "Email": email, "tax_id": tax_id,
        "credit_limit": credit, "password_hash": "x9f…", "region": "cn-east",
        "updated_at": t0_ms() + version * 60_000, "version": version
    })
}

/// A Debezium envelope around `before`/`after`.
pub fn envelope(
    op: &str,
    before: Option<Json>,
    after: Option<Json>,
    lsn: i64,
    snapshot: bool,
) -> Json {
    json!({
        "before": before, "after": after, "op": op, "ts_ms": t0_ms() + lsn,
        "source": {
            "version": "3.1.0.Final", "connector": "postgresql", "name": "crm",
            "ts_ms": t0_ms() + lsn, "snapshot": if snapshot { "true" } else { "false" },
            "db": "crm", "schema": "public", "table": "customers",
            "lsn": lsn, "sequence": format!("[\"{}\",\"{lsn}\"]", lsn - 1)
        }
    })
}

fn record(note: &'static str, id: i64, value: DemoValue) -> DemoRecord {
    DemoRecord {
        note,
        key: json!({"id": id}),
        value,
    }
}

/// The demo stream: creates, updates, an out-of-order stale update, an exact replay, a delete with
/// its tombstone followed by a late update, a snapshot row older than the stream, and two bad
/// records (a tax id that fails its check, and bytes that are not Avro).
pub fn scenario() -> Vec<DemoRecord> {
    use DemoValue::{Envelope as E, Raw, Tombstone};
    let alice = |v, email: &str| customer(1, "alice", email, "91310000MA1FL0000X", "1500.00", v);
    let bob = |v| {
        customer(
            2,
            "bob",
            "bob@example.com",
            "91310000MA1FL0001Y",
            "300.50",
            v,
        )
    };
    let carol = |v| {
        customer(
            3,
            "carol",
            "carol@example.com",
            "91310000MA1FL0002Z",
            "0.99",
            v,
        )
    };
    vec![
        record(
            "create alice v1",
            1,
            E(envelope(
                "c",
                None,
                Some(alice(1, "alice@example.com")),
                100,
                false,
            )),
        ),
        record(
            "create bob v1",
            2,
            E(envelope("c", None, Some(bob(1)), 101, false)),
        ),
        record(
            "create carol v1",
            3,
            E(envelope("c", None, Some(carol(1)), 102, false)),
        ),
        record(
            "update alice v2 (new e-mail)",
            1,
            E(envelope(
                "u",
                Some(alice(1, "alice@example.com")),
                Some(alice(2, "alice@new.example.com")),
                103,
                false,
            )),
        ),
        record(
            "stale: alice v1 arrives late",
            1,
            E(envelope(
                "u",
                None,
                Some(alice(1, "alice@old.example.com")),
                104,
                false,
            )),
        ),
        record(
            "update bob v2",
            2,
            E(envelope("u", Some(bob(1)), Some(bob(2)), 105, false)),
        ),
        record(
            "duplicate: bob v2 replayed",
            2,
            E(envelope("u", Some(bob(1)), Some(bob(2)), 105, false)),
        ),
        record(
            "delete carol (v1)",
            3,
            E(envelope("d", Some(carol(1)), None, 106, false)),
        ),
        record("tombstone after the delete", 3, Tombstone),
        record(
            "late: carol v1 update after the delete",
            3,
            E(envelope("u", None, Some(carol(1)), 107, false)),
        ),
        record(
            "snapshot: alice v1 read by a snapshot",
            1,
            E(envelope(
                "r",
                None,
                Some(alice(1, "alice@example.com")),
                99,
                true,
            )),
        ),
        record(
            "bad: tax id fails its check",
            4,
            E(envelope(
                "c",
                None,
                Some(customer(
                    4,
                    "dave",
                    "dave@example.com",
                    "not-a-tax-id",
                    "10.00",
                    1,
                )),
                108,
                false,
            )),
        ),
        record("bad: 3 bytes that are not Avro", 5, Raw(vec![0, 1, 2])),
        record(
            "create erin v1 (after the bad ones)",
            6,
            E(envelope(
                "c",
                None,
                Some(customer(
                    6,
                    "erin",
                    "erin@example.com",
                    "91310000MA1FL0003W",
                    "42.00",
                    1,
                )),
                109,
                false,
            )),
        ),
    ]
}

/// Creates `topics` (each with `partitions`), deleting them first if they exist.
pub async fn recreate_topics(
    settings: &ClientSettings,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config().create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin.delete_topics(topics, &options).await?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    // Deletion is asynchronous on the broker; retry creation until the old topic is gone.
    for attempt in 0..60 {
        let results = admin.create_topics(&new, &options).await?;
        let pending: Vec<_> = results
            .into_iter()
            .filter_map(|r| r.err())
            .filter(|(_, code)| {
                *code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists || attempt < 59
            })
            .collect();
        if pending.is_empty() {
            return await_leaders(settings, topics, partitions).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("topics {topics:?} could not be recreated")
}

/// Waits (up to 30 s) until the broker's metadata shows every one of `topics` with `partitions`
/// partitions, each with a leader. The controller answers CreateTopics before the broker has
/// the new topics: a client that asked at once was told they do not exist.
async fn await_leaders(
    settings: &ClientSettings,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseProducer, Producer as _};
    let client: BaseProducer = settings.client_config().create()?;
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: Vec<&str> = topics
                .iter()
                .filter(|topic| {
                    let ready = client
                        .client()
                        .fetch_metadata(Some(topic), Duration::from_secs(5))
                        .is_ok_and(|metadata| {
                            metadata.topics().iter().any(|t| {
                                t.error().is_none()
                                    && t.partitions().len() == partitions as usize
                                    && t.partitions().iter().all(|p| p.leader() >= 0)
                            })
                        });
                    !ready
                })
                .map(String::as_str)
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("topics {waiting:?} were created but have no leaders after 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await?
}

/// Deletes a consumer group (its committed offsets); a group that does not exist is already
/// gone, and a coordinator still loading, or a member of the last run still in the group, is
/// waited for (up to 30 s).
pub async fn delete_group(settings: &ClientSettings, group: &str) -> anyhow::Result<()> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let admin: AdminClient<DefaultClientContext> = settings.client_config().create()?;
    // A broker that has just started loads its group coordinator for a few seconds. Its
    // refusal used to pass unnoticed: the group kept the last run's offsets, which point at
    // the end of the recreated topics, and the demo's processor then read nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let results = admin.delete_groups(&[group], &AdminOptions::new()).await?;
        match results.into_iter().next() {
            None | Some(Ok(_) | Err((_, Code::GroupIdNotFound))) => return Ok(()),
            Some(Err((
                _,
                Code::CoordinatorLoadInProgress
                | Code::CoordinatorNotAvailable
                | Code::NotCoordinator
                // The last run's processor is a static member: it does not leave the group when
                // it stops, but stays until its session times out (10 s).
                | Code::NonEmptyGroup,
            ))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(Err((_, code))) => anyhow::bail!("cannot delete consumer group {group}: {code}"),
        }
    }
}

/// Produces `records` to `topic`, Avro-encoding envelopes with the CRM schema (registered under
/// `<topic>-value`), all to the partition the key hashes to.
pub async fn produce(
    settings: &ClientSettings,
    registry: SrSettings,
    topic: &str,
    records: &[DemoRecord],
) -> anyhow::Result<()> {
    let avro = AvroTarget::new(registry, topic, CRM_SCHEMA)?;
    let producer: FutureProducer = settings
        .client_config()
        .set("enable.idempotence", "true")
        .create()?;
    for r in records {
        let key = r.key.to_string();
        let payload = match &r.value {
            DemoValue::Envelope(json) => {
                let Json::Object(row) = json else {
                    anyhow::bail!("envelope is not an object")
                };
                Some(
                    avro.encode(row)
                        .await
                        .with_context(|| format!("encode {}", r.note))?,
                )
            }
            DemoValue::Tombstone => None,
            DemoValue::Raw(bytes) => Some(bytes.clone()),
        };
        let mut record = FutureRecord::to(topic).key(&key);
        if let Some(payload) = &payload {
            record = record.payload(payload);
        }
        // Stamped with the change's own time, as a source connector does.
        if let DemoValue::Envelope(json) = &r.value
            && let Some(ts) = json["ts_ms"].as_i64()
        {
            record = record.timestamp(ts);
        }
        producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("produce {}", r.note))?;
    }
    Ok(())
}

/// A record read back from an output topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Partition and offset.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// The key, as text.
    pub key: String,
    /// The decoded value (`None` for a tombstone).
    pub value: Option<Json>,
    /// The headers, as text.
    pub headers: BTreeMap<String, String>,
    /// The record's timestamp (ms since the epoch).
    pub timestamp: Option<i64>,
}

/// Reads every record of `topic` with a `read_committed` consumer in a fresh group, until
/// `quiet` passes without a new record. Values are decoded as Avro (via the registry) when they
/// carry the wire header, else as JSON, else shown as bytes.
pub async fn read_committed(
    settings: &ClientSettings,
    registry: Option<SrSettings>,
    topic: &str,
    quiet: Duration,
) -> anyhow::Result<Vec<Received>> {
    read(settings, registry, topic, quiet, true).await
}

/// Like [`read_committed`], but also returns records of aborted and open transactions: proof
/// that an abort really happened.
pub async fn read_uncommitted(
    settings: &ClientSettings,
    registry: Option<SrSettings>,
    topic: &str,
    quiet: Duration,
) -> anyhow::Result<Vec<Received>> {
    read(settings, registry, topic, quiet, false).await
}

async fn read(
    settings: &ClientSettings,
    registry: Option<SrSettings>,
    topic: &str,
    quiet: Duration,
    committed: bool,
) -> anyhow::Result<Vec<Received>> {
    let group = format!(
        "autoglm-reader-{}",
        std::process::id() as u64 * 1_000_003 + rand_suffix()
    );
    let consumer = if committed {
        settings.read_committed_consumer(&group)?
    } else {
        settings.read_uncommitted_consumer(&group)?
    };
    // Assigned, not subscribed: a group join on a busy broker outlasted `quiet`, and the read
    // ended before the first record.
    let ends = partition_ends(&consumer, topic)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, _) in &ends {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let patience = quiet.max(Duration::from_secs(60));
    let deadline = tokio::time::Instant::now() + patience;
    let decoder = Decoder::new(registry);
    let mut out = Vec::new();
    let mut stream = consumer.stream();
    loop {
        let message = match tokio::time::timeout(quiet, stream.next()).await {
            Ok(Some(message)) => message?,
            Ok(None) => break,
            // Quiet, and at least as far as the ends seen at the start (or out of time).
            Err(_) if read_to(&consumer, topic, &ends) => break,
            Err(_) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("{topic}: not read to its ends {ends:?} within {patience:?}")
            }
            Err(_) => continue,
        };
        let value = match message.payload() {
            None => None,
            Some(bytes) => Some(
                match decoder
                    .decode(Envelope::Upsert, Encoding::Avro, None, Some(bytes))
                    .await
                {
                    Ok(Decoded::Event(e)) => Json::Object(e.after.unwrap_or_default()),
                    _ => serde_json::from_slice(bytes)
                        .unwrap_or_else(|_| Json::String(format!("<{} bytes>", bytes.len()))),
                },
            ),
        };
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Received {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            value,
            headers,
            timestamp: message.timestamp().to_millis(),
        });
    }
    Ok(out)
}

/// Each partition of `topic` and the offset a reader has read it all at: the high watermark
/// (the last stable offset for a `read_committed` consumer), or none when it is empty.
fn partition_ends(
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<Vec<(i32, Option<i64>)>> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()));
    partitions
        .map(|partition| {
            let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
            Ok((partition, (high > low).then_some(high)))
        })
        .collect()
}

/// Whether `consumer` has read each partition of `topic` up to its end in `ends`. Its position
/// passes transaction markers and aborted records.
fn read_to(consumer: &StreamConsumer, topic: &str, ends: &[(i32, Option<i64>)]) -> bool {
    let Ok(positions) = consumer.position() else {
        return false;
    };
    ends.iter().all(|(partition, end)| {
        let Some(end) = end else { return true };
        matches!(
            positions.find_partition(topic, *partition).map(|p| p.offset()),
            Some(Offset::Offset(at)) if at >= *end
        )
    })
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

/// The latest value per key of `records` (read in offset order), as a compacted topic keeps
/// them: a tombstone removes its key. A key is an integer id, as autoglm writes a one-field key,
/// or a JSON object with an integer `id`.
pub fn latest(records: &[Received]) -> anyhow::Result<BTreeMap<i64, Json>> {
    let mut out = BTreeMap::new();
    for r in records {
        let key: Json =
            serde_json::from_str(&r.key).with_context(|| format!("key {:?} is not JSON", r.key))?;
        let id = key
            .as_i64()
            .or_else(|| key["id"].as_i64())
            .with_context(|| format!("key {} is not an integer id", r.key))?;
        match &r.value {
            Some(value) => out.insert(id, value.clone()),
            None => out.remove(&id),
        };
    }
    Ok(out)
}

/// Waits until `topic` holds at least `count` records (the sum of its partitions' log ends), for
/// at most `timeout`: a source connector has then written what it was given. Returns the count.
pub async fn wait_for_records(
    settings: &ClientSettings,
    topic: &str,
    count: i64,
    timeout: Duration,
) -> anyhow::Result<i64> {
    let client = settings.log_end_client()?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let mut total = 0;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) =
                client.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
            total += high - low;
        }
        if total >= count {
            return Ok(total);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{topic} holds {total} records after {timeout:?}; expected {count}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(key: &str, value: Option<Json>) -> Received {
        Received {
            partition: 0,
            offset: 0,
            key: key.to_owned(),
            value,
            headers: BTreeMap::new(),
            timestamp: None,
        }
    }

    #[test]
    fn latest_keeps_the_last_value_per_id_and_tombstones_remove() {
        let records = [
            received("1", Some(json!({"v": 1}))),
            received(r#"{"id":2}"#, Some(json!({"v": 1}))),
            received("1", Some(json!({"v": 2}))),
            received(r#"{"id":2}"#, None),
            received("3", None),
        ];
        let latest = latest(&records).expect("latest");
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[&1], json!({"v": 2}));
    }

    #[test]
    fn latest_refuses_keys_without_an_integer_id() {
        let err = latest(&[received(r#"{"name":"x"}"#, None)]).expect_err("no id");
        assert!(err.to_string().contains("not an integer id"), "{err}");
    }
}
