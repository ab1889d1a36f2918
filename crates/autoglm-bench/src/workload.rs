//! The bench's input: Debezium (MySQL connector) change events of a wide CRM `customers` row,
//! Avro-encoded in the Confluent wire format, or JSON as Debezium's JSON converter writes it
//! (see [`Input`]).
//!
//! ```text
//!  creates: each key once, op=c, version 1            (the state fills with `creates` keys)
//!  updates: a random key each, op=u with `before`;    ~3% go back one version (stale),
//!           ~2% repeat the current one (duplicate),   the rest are the next version
//! ```
//!
//! The row has 16 columns: strings, three Connect decimals (Avro `bytes` + `decimal`), a Debezium
//! date, two `timestamp-millis` and a Debezium micro-timestamp; `bench/autoglm-bench.yaml` maps it
//! onto 15 target fields (renames, decimals, dates and timestamps reformatted, two columns
//! dropped, one constant). Generation is deterministic (seeded).

use std::time::Duration;

use anyhow::{Context as _, bail};
use autoglm_codec::AvroTarget;
use autoglm_kafka::ClientSettings;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value as Json, json};

use crate::Progress;

/// The source schema: a Debezium envelope around the wide row.
pub const SOURCE_SCHEMA: &str =
    include_str!("../../../bench/schemas/crm.customers_wide-value.avsc");
/// The source schema as Kafka Connect's JSON converter writes it in every record.
pub const SOURCE_CONNECT_SCHEMA: &str =
    include_str!("../../../bench/schemas/crm.customers_wide-value.connect.json");
/// Columns of the source row.
pub const ROW_FIELDS: usize = 16;
/// Fields of the target record.
pub const TARGET_FIELDS: usize = 15;

/// 2026-11-24T00:00:00Z, in ms: the bench's "now" inside the rows.
const T0_MS: i64 = 1_795_478_400_000;
const CITIES: [&str; 8] = [
    "Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Suzhou", "Nanjing", "Wuhan",
];

/// How the source records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Input {
    /// Avro in the Confluent wire format (Debezium's Avro converter).
    Avro,
    /// JSON in Connect's `schema`/`payload` wrapper, decimals as base64 bytes: Debezium's JSON
    /// converter as it comes (`schemas.enable=true`). The key is wrapped too.
    Json,
    /// JSON without the wrapper (`schemas.enable=false`), decimals as strings
    /// (`decimal.handling.mode=string`).
    JsonPlain,
}

impl Input {
    /// The route's `source.encoding` (and its target's `format`).
    pub fn encoding(self) -> &'static str {
        match self {
            Input::Avro => "avro",
            Input::Json | Input::JsonPlain => "json",
        }
    }

    /// The name in run and topic names.
    pub fn label(self) -> &'static str {
        match self {
            Input::Avro => "avro",
            Input::Json => "json",
            Input::JsonPlain => "json-plain",
        }
    }
}

/// Writes changes as [`Input`] says.
#[derive(Debug)]
pub struct Encoder {
    pub avro: AvroTarget,
    connect_value: Json,
    connect_key: Json,
}

impl Encoder {
    pub fn new(avro: AvroTarget) -> anyhow::Result<Encoder> {
        Ok(Encoder {
            avro,
            connect_value: serde_json::from_str(SOURCE_CONNECT_SCHEMA)
                .context("bench/schemas/crm.customers_wide-value.connect.json")?,
            connect_key: json!({
                "type": "struct", "optional": false, "name": "crm.public.customers_wide.Key",
                "fields": [{"type": "int64", "optional": false, "field": "id"}]
            }),
        })
    }

    /// The key and value bytes of one change.
    pub async fn encode(
        &self,
        input: Input,
        id: i64,
        event: serde_json::Map<String, Json>,
    ) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let key = json!({ "id": id });
        Ok(match input {
            Input::Avro => (
                key.to_string().into_bytes(),
                self.avro.encode(&event).await?,
            ),
            Input::Json => (
                autoglm_codec::connect_wrap(&key, &self.connect_key),
                autoglm_codec::connect_wrap(&Json::Object(event), &self.connect_value),
            ),
            Input::JsonPlain => (key.to_string().into_bytes(), serde_json::to_vec(&event)?),
        })
    }
}

/// One change: which key, which version, and whether the version guard will accept it.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub id: u64,
    pub version: i64,
    pub create: bool,
    /// Newer than every version of the key before it: the processor emits it.
    pub accepted: bool,
}

/// `creates` creates (keys `0..creates`, in order), then `updates` updates over those keys.
#[derive(Debug)]
pub struct Workload {
    rng: fastrand::Rng,
    versions: Vec<i64>,
    creates: u64,
    remaining: u64,
    seq: i64,
}

impl Workload {
    pub fn new(creates: u64, updates: u64) -> anyhow::Result<Workload> {
        if creates == 0 {
            bail!("a workload needs at least one key");
        }
        Ok(Workload {
            rng: fastrand::Rng::with_seed(42),
            versions: Vec::with_capacity(usize::try_from(creates)?),
            creates,
            remaining: creates + updates,
            seq: 0,
        })
    }

    /// Records in the workload.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// The entity id and the Debezium envelope of one change.
    pub fn event(&mut self, change: Change) -> (i64, serde_json::Map<String, Json>) {
        self.seq += 1;
        let id = i64::try_from(change.id).unwrap_or(i64::MAX);
        let (op, before) = if change.create {
            ("c", Json::Null)
        } else {
            ("u", row(id, change.version - 1))
        };
        let seq = self.seq;
        let event = json!({
            "before": before, "after": row(id, change.version), "op": op, "ts_ms": T0_MS + seq,
            "source": {
                "version": "3.1.0.Final", "connector": "mysql", "name": "crm",
                "ts_ms": T0_MS + seq, "snapshot": "false", "db": "crm", "table": "customers",
                "server_id": 223_344, "file": format!("mysql-bin.{:06}", 3 + seq / 1_000_000),
                "pos": 154 + seq % 1_000_000 * 600, "row": 0
            }
        });
        let Json::Object(event) = event else {
            unreachable!("json! of an object literal is an object")
        };
        (id, event)
    }
}

impl Iterator for Workload {
    type Item = Change;

    fn next(&mut self) -> Option<Change> {
        self.remaining = self.remaining.checked_sub(1)?;
        let created = self.versions.len() as u64;
        if created < self.creates {
            self.versions.push(1);
            return Some(Change {
                id: created,
                version: 1,
                create: true,
                accepted: true,
            });
        }
        let id = self.rng.u64(0..created);
        let slot = self.versions.get_mut(usize::try_from(id).ok()?)?;
        let (version, accepted) = match self.rng.u8(0..100) {
            0..3 if *slot > 1 => (*slot - 1, false), // stale
            3..5 => (*slot, false),                  // duplicate
            _ => {
                *slot += 1;
                (*slot, true)
            }
        };
        Some(Change {
            id,
            version,
            create: false,
            accepted,
        })
    }
}

/// The CRM row of customer `id` at `version`; the balance, timestamps and discount move with
/// the version.
fn row(id: i64, version: i64) -> Json {
    let hash = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    json!({
        "id": id,
        "usr_name": format!("customer {id:07} of the east region"),
        "Email": format!("customer.{id}@example.com"),
        "phone": format!("+86 138 {:04} {:04}", id / 10_000 % 10_000, id % 10_000),
        "tax_id": format!("91310000MA1F{:06}", id % 1_000_000),
        "credit_limit": format!("{}.{:02}", 1000 + id % 9000, id % 100),
        "balance": format!("{}.{:02}", (id * 37 + version * 101) % 1_000_000, version % 100),
        "discount_rate": format!("0.{:04}", (id + version) % 10_000),
        "city": CITIES[(id % 8) as usize],
        "password_hash": format!("$2b$12$KIXQ4vGQ{hash:045x}"),
        "region": "cn-east",
        "birth_date": 3650 + id % 15_000,
        "created_at": T0_MS - 86_400_000 * (id % 1000),
        "updated_at": T0_MS + version * 60_000,
        "last_login_at": (T0_MS + version * 60_000 - 5_000) * 1000,
        "version": version
    })
}

/// An encoded input record.
#[derive(Debug)]
pub struct Encoded {
    pub key: String,
    pub payload: Vec<u8>,
    pub accepted: bool,
}

/// Encodes the whole workload in memory (for the open-loop latency runs).
pub async fn encode_all(avro: &AvroTarget, mut workload: Workload) -> anyhow::Result<Vec<Encoded>> {
    let mut progress = Progress::new("encode", workload.len());
    let mut out = Vec::with_capacity(usize::try_from(workload.len())?);
    while let Some(change) = workload.next() {
        let (id, event) = workload.event(change);
        out.push(Encoded {
            key: format!("{{\"id\":{id}}}"),
            payload: avro.encode(&event).await?,
            accepted: change.accepted,
        });
        progress.update(out.len() as u64);
    }
    Ok(out)
}

/// Produces the workload to `topic`, encoded as `input`, as fast as the broker takes it.
/// Returns the payload bytes.
pub async fn preload(
    settings: &ClientSettings,
    (encoder, input): (&Encoder, Input),
    topic: &str,
    mut workload: Workload,
) -> anyhow::Result<u64> {
    let producer: FutureProducer = settings
        .client_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut progress = Progress::new(&format!("preload {topic}"), workload.len());
    let mut bytes = 0;
    let mut sent = 0;
    let mut pending = Vec::with_capacity(10_000);
    while let Some(change) = workload.next() {
        let (id, event) = workload.event(change);
        let (key, payload) = encoder.encode(input, id, event).await?;
        bytes += payload.len() as u64;
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .context("enqueue")?,
        );
        sent += 1;
        if pending.len() == 10_000 {
            for delivery in pending.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
            progress.update(sent);
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_come_first_then_about_five_percent_of_updates_are_dropped() {
        let changes: Vec<Change> = Workload::new(1000, 100_000).expect("workload").collect();
        assert_eq!(changes.len(), 101_000);
        assert!(changes[..1000].iter().all(|c| c.create && c.accepted));
        assert_eq!(changes[999].id, 999);
        let dropped = changes[1000..].iter().filter(|c| !c.accepted).count();
        assert!((4000..6000).contains(&dropped), "{dropped} dropped");
    }

    /// The source schema's target, with a registry it never calls.
    fn source_target() -> AvroTarget {
        AvroTarget::new(
            schema_registry_converter::async_impl::schema_registry::SrSettings::new(
                "http://registry.invalid".into(),
            ),
            "bench",
            SOURCE_SCHEMA,
        )
        .expect("schema")
    }

    #[tokio::test]
    async fn json_records_decode_to_the_changes_the_avro_ones_carry() {
        let avro = source_target();
        let encoder = Encoder::new(avro).expect("connect schema");
        let decoder = autoglm_codec::Decoder::new(None);
        let mut workload = Workload::new(3, 3).expect("workload");
        while let Some(change) = workload.next() {
            let (id, event) = workload.event(change);
            let mut decoded = Vec::new();
            for input in [Input::Json, Input::JsonPlain] {
                let (key, value) = encoder
                    .encode(input, id, event.clone())
                    .await
                    .expect("encodes");
                let decoded_event = decoder
                    .decode(
                        autoglm_codec::Envelope::Debezium,
                        autoglm_codec::Encoding::Json,
                        Some(&key),
                        Some(&value),
                    )
                    .await
                    .expect("decodes");
                decoded.push(decoded_event);
            }
            let autoglm_codec::Decoded::Event(wrapped) = &decoded[0] else {
                panic!("an event")
            };
            assert_eq!(
                wrapped.after.as_ref(),
                event["after"].as_object(),
                "the wrapped row"
            );
            assert_eq!(
                wrapped.key.as_ref().map(|k| k["id"].clone()),
                Some(json!(id))
            );
            assert_eq!(decoded[0], decoded[1], "wrapped and plain read the same");
        }
    }

    #[test]
    fn records_encode_under_the_source_schema_in_300_to_600_bytes() {
        let avro = source_target();
        let mut workload = Workload::new(10, 10).expect("workload");
        let mut sizes = Vec::new();
        while let Some(change) = workload.next() {
            let (_, event) = workload.event(change);
            assert_eq!(
                event["after"].as_object().map(|r| r.len()),
                Some(ROW_FIELDS)
            );
            let mut datum = Vec::new();
            avro.write_datum(&event, &mut datum).expect("encodes");
            // + the Confluent wire header: magic byte and schema id.
            sizes.push(datum.len() + 5);
        }
        assert!(sizes.iter().all(|s| (300..=600).contains(s)), "{sizes:?}");
    }
}
