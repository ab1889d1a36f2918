//! Stage 2, prepare: each record of a batch decoded, routed, keyed, versioned, mapped and
//! encoded for its targets, on all cores and without waiting (the records are independent).
//!
//! Data flow: [`Polled`] records ─► one [`Prepared`] per record ─► transact. A record whose writer
//! schema is not fetched yet stays [`Prepared::SchemaMissing`] until [`Pipeline::decode_waiting`]
//! decodes it, waiting for the registry, before the batch's transaction begins. Poison becomes
//! [`Prepared::DeadLetter`] with the reason for the DLQ headers.

use autoglm_codec::{CodecError, Decoded, SchemaMissing};
use autoglm_config::DeleteMode;
use autoglm_core::{ChangeEvent, Classify, ErrorClass, Row};
use autoglm_state::Change;
use rayon::prelude::*;
use rdkafka::message::{Message, OwnedMessage};

use super::Pipeline;
use super::poll::Polled;

/// One record on its way through a batch.
pub(super) struct Work {
    /// Index into the batch, set when the batch is processed (the batch may have lost records
    /// of revoked partitions since it was prepared).
    pub(super) at: usize,
    pub(super) route: usize,
    pub(super) event: ChangeEvent,
    pub(super) state_key: Vec<u8>,
    /// The output records' key.
    pub(super) output_key: Vec<u8>,
    pub(super) change: Change,
    /// The mapped row (`after`, or `before` for deletes written as records); `None` for a
    /// delete written as a tombstone.
    pub(super) mapped: Option<Mapped>,
}

/// A mapped row, as the parallel pass left it.
pub(super) enum Mapped {
    /// Encoded for each of the route's targets, in order. The row itself is gone: the batch
    /// holds only the bytes.
    Encoded(Vec<Result<Vec<u8>, CodecError>>),
    /// A target's schema id was not known yet: the batch encodes the row, which registers it.
    Row(Row),
}

/// Below this many records per thread, splitting a batch's decode and encode across threads
/// costs more than it saves.
const PARALLEL_MIN_RECORDS: usize = 64;

/// What the parallel pass of a batch made of one input record.
#[allow(
    clippy::large_enum_variant,
    reason = "work is the common case; boxing it costs an allocation per record"
)]
pub(super) enum Prepared {
    /// No route reads the record's topic.
    Unrouted,
    /// Benchmark baseline: copy the record to the route's first target.
    PassThrough(usize),
    /// A Debezium tombstone of this route.
    Tombstone(usize),
    /// A truncate event of this route: not propagated.
    Truncate(usize),
    /// The record's writer schema is not fetched yet: decode it on the async path.
    SchemaMissing(usize),
    /// The registry could not answer: retry the batch.
    Transient(String),
    /// The registry refused to serve the processor.
    Fatal(CodecError),
    /// Poison: to this route's dead-letter topic.
    DeadLetter(usize, Poison),
    /// Decoded, keyed, versioned and mapped.
    Work(Work),
}

/// Why a record is dead-lettered (the DLQ headers).
pub(super) struct Poison {
    pub(super) class: ErrorClass,
    pub(super) message: String,
    pub(super) rule: String,
    pub(super) field: String,
}

impl Pipeline {
    /// Decodes, keys, versions and maps one record without waiting (the parallel pass).
    fn prepare(&self, msg: &OwnedMessage) -> Prepared {
        let Some(route_index) = self.routes.iter().position(|r| r.matches(msg.topic())) else {
            return Prepared::Unrouted;
        };
        if self.pass_through {
            return Prepared::PassThrough(route_index);
        }
        let route = &self.routes[route_index];
        match self
            .decoder
            .decode_cached(route.envelope, route.encoding, msg.key(), msg.payload())
        {
            Ok(decoded) => self.prepare_decoded(route_index, decoded),
            Err(SchemaMissing(_)) => Prepared::SchemaMissing(route_index),
        }
    }

    /// Keys, versions and maps one decoded record.
    pub(super) fn prepare_decoded(
        &self,
        route_index: usize,
        decoded: Result<Decoded, CodecError>,
    ) -> Prepared {
        let route = &self.routes[route_index];
        let poison = |class, message: String, rule: &str, field: &str| {
            Prepared::DeadLetter(
                route_index,
                Poison {
                    class,
                    message,
                    rule: rule.to_owned(),
                    field: field.to_owned(),
                },
            )
        };
        let event = match decoded {
            Ok(Decoded::Event(event)) => event,
            Ok(Decoded::Tombstone { .. }) => return Prepared::Tombstone(route_index),
            Err(e) if e.class() == ErrorClass::Transient => {
                return Prepared::Transient(format!("decode: {e}"));
            }
            Err(e) if e.class() == ErrorClass::Fatal => return Prepared::Fatal(e),
            Err(e) => return poison(e.class(), e.to_string(), "decode", ""),
        };
        if event.op == autoglm_core::Op::Truncate {
            return Prepared::Truncate(route_index);
        }
        let keyed = route
            .entity_key(&event)
            .and_then(|key| Ok((key, route.change(&event)?)));
        let (entity_key, change) = match keyed {
            Ok(kv) => kv,
            Err(e) => return poison(ErrorClass::Poison, e.to_string(), e.rule, ""),
        };
        let mut event = event;
        // Mapped: the batch keeps only what its output needs, not the decoded rows.
        let source_row = if event.op.is_delete() {
            (route.delete == DeleteMode::Record)
                .then(|| event.before.take())
                .flatten()
        } else {
            event.after.take()
        };
        event.before = None;
        event.key = None;
        // As fields in name order: the encoders walk them without a map being built.
        let fields = match source_row
            .map(|row| route.mapping.apply_sorted(row))
            .transpose()
        {
            Ok(fields) => fields,
            Err(e) => return poison(e.class(), e.to_string(), e.rule(), e.field()),
        };
        // Encoded here, on all cores, for every target: most records are accepted, and the few
        // the guard drops cost less than encoding on the batch's critical path would.
        let mapped = fields.map(|fields| {
            let encoded: Option<Vec<_>> = route
                .targets
                .iter()
                .map(|target| target.encode_fields_cached(&fields))
                .collect();
            encoded.map_or_else(
                || Mapped::Row(fields.into_iter().collect()),
                Mapped::Encoded,
            )
        });
        Prepared::Work(Work {
            at: 0,
            route: route_index,
            state_key: autoglm_state::state_key(&route.name, &entity_key),
            output_key: route.output_key(&entity_key),
            change,
            mapped,
            event,
        })
    }

    /// Decodes, keys, versions and maps every record of `batch`, on all cores (the records are
    /// independent).
    fn prepare_batch(&self, batch: &[OwnedMessage]) -> Vec<Prepared> {
        batch
            .par_iter()
            .with_min_len(PARALLEL_MIN_RECORDS)
            .map(|msg| self.prepare(msg))
            .collect()
    }

    /// Decodes the records whose writer schema was not fetched yet, waiting for the registry
    /// (once per schema id): the one step of the prepare that waits, on the loop's task. Stops
    /// at the first record that fails the batch (a registry that does not answer).
    pub(super) async fn decode_waiting(
        &self,
        batch: &[OwnedMessage],
        mut prepared: Vec<Prepared>,
    ) -> Vec<Prepared> {
        for (msg, slot) in batch.iter().zip(prepared.iter_mut()) {
            if let Prepared::SchemaMissing(route_index) = *slot {
                let route = &self.routes[route_index];
                let decoded = self
                    .decoder
                    .decode(route.envelope, route.encoding, msg.key(), msg.payload())
                    .await;
                *slot = self.prepare_decoded(route_index, decoded);
                // The batch fails there: the records after it wait for its retry.
                if matches!(slot, Prepared::Transient(_) | Prepared::Fatal(_)) {
                    break;
                }
            }
        }
        prepared
    }

    /// Prepares the records of `polled` not prepared yet.
    pub(super) fn prepare_rest(&self, polled: &mut Polled) {
        let rest = self.prepare_batch(&polled.batch[polled.prepared.len()..]);
        polled.prepared.extend(rest);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::super::test_pipeline;
    use super::*;

    fn record(topic: &str, key: Option<&str>, value: Option<&str>, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            value.map(|v| v.as_bytes().to_vec()),
            key.map(|k| k.as_bytes().to_vec()),
            topic.to_owned(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    fn account(id: u32, rev: u32) -> OwnedMessage {
        let value = format!(r#"{{"id":{id},"rev":{rev},"name":"n{id}"}}"#);
        record(
            "in.accounts",
            Some(&id.to_string()),
            Some(&value),
            i64::from(id),
        )
    }

    #[test]
    fn a_row_is_keyed_versioned_mapped_and_encoded_for_its_target() {
        let pipeline = test_pipeline();
        let Prepared::Work(work) = pipeline.prepare(&account(7, 3)) else {
            panic!("not work");
        };
        assert_eq!(work.route, 0);
        assert_eq!(work.output_key, b"7");
        assert_eq!(
            work.state_key,
            autoglm_state::state_key("accounts", br#"[7]"#)
        );
        assert!(
            work.event.after.is_none(),
            "the batch keeps the bytes, not the row"
        );
        let Some(Mapped::Encoded(encoded)) = work.mapped else {
            panic!("not encoded");
        };
        let bytes = encoded[0].as_ref().expect("encoded");
        let row: serde_json::Value = serde_json::from_slice(bytes).expect("json");
        assert_eq!(
            row,
            serde_json::json!({"id": 7, "rev": 3, "display_name": "n7"})
        );
    }

    #[test]
    fn poison_is_dead_lettered_with_the_rule_that_refused_it() {
        let pipeline = test_pipeline();
        let cases = [
            (
                record("in.accounts", Some("1"), Some("{not json"), 0),
                "decode",
            ),
            // No `id` in the row, and no key to take it from.
            (
                record("in.accounts", None, Some(r#"{"rev":1}"#), 1),
                "key_fields",
            ),
            (
                record("in.accounts", Some("1"), Some(r#"{"id":1,"rev":"x"}"#), 2),
                "version",
            ),
        ];
        for (msg, rule) in cases {
            match pipeline.prepare(&msg) {
                Prepared::DeadLetter(0, poison) => {
                    assert_eq!(poison.rule, rule, "{}", poison.message);
                    assert_eq!(poison.class, ErrorClass::Poison);
                }
                _ => panic!("offset {}: not dead-lettered", msg.offset()),
            }
        }
    }

    #[test]
    fn a_delete_has_no_row_to_write_and_other_topics_are_not_read() {
        let pipeline = test_pipeline();
        // Upsert: a null value deletes its key; the target gets a tombstone.
        let Prepared::Work(delete) = pipeline.prepare(&record("in.accounts", Some("1"), None, 0))
        else {
            panic!("not work");
        };
        assert!(delete.event.op.is_delete());
        assert!(delete.mapped.is_none());
        assert_eq!(delete.output_key, b"1");
        assert!(matches!(
            pipeline.prepare(&record("elsewhere", Some("1"), Some("{}"), 0)),
            Prepared::Unrouted
        ));
        assert!(matches!(
            test_pipeline().pass_through().prepare(&account(1, 1)),
            Prepared::PassThrough(0)
        ));
    }

    #[test]
    fn the_parallel_pass_keeps_input_order_and_prepares_only_the_rest() {
        let pipeline = test_pipeline();
        let mut polled = Polled::default();
        for id in 0..1_000 {
            polled.batch.push(account(id, 1));
        }
        polled.prepared = pipeline.prepare_batch(&polled.batch[..10]);
        pipeline.prepare_rest(&mut polled);
        assert_eq!(polled.prepared.len(), 1_000);
        for (id, prepared) in polled.prepared.iter().enumerate() {
            let Prepared::Work(work) = prepared else {
                panic!("record {id}: not work");
            };
            assert_eq!(work.output_key, id.to_string().as_bytes());
        }
    }
}
