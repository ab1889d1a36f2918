//! Record bytes to change events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use autoglm_core::{ChangeEvent, Op, Row, SourcePosition};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use serde_json::Value as Json;

use crate::avro_json::WriterSchema;
use crate::connect::EnvelopeRow;
use crate::envelope::{DebeziumEnvelope, Unread};
use crate::{CodecError, connect, envelope, wire};

/// How the source topic's values are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// Debezium's `before`/`after`/`op`/`source` envelope; a null value is the tombstone that
    /// follows a delete.
    Debezium,
    /// The value is the full row; a null value means the key was deleted.
    Upsert,
}

/// How the source topic's bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Avro in the Confluent wire format, schemas from the registry.
    Avro,
    /// JSON, with or without the Connect `schema`/`payload` wrapper.
    Json,
}

/// One decoded input record.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "events are the common case; boxing them costs an allocation per record"
)]
pub enum Decoded {
    /// A change.
    Event(ChangeEvent),
    /// A Debezium tombstone: the null value that follows a delete so that compaction can drop the
    /// key. The delete event before it already carried the change.
    Tombstone {
        /// The decoded key.
        key: Option<Row>,
    },
}

/// [`Decoder::decode_cached`] needs this writer schema id, which is not cached yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaMissing(pub u32);

/// An Avro datum (the bytes after the wire header) with its writer schema.
struct AvroDatum<'b> {
    id: u32,
    datum: &'b [u8],
    schema: Arc<WriterSchema>,
}

impl AvroDatum<'_> {
    /// The datum as JSON, read by `decode`; its errors name the schema id.
    fn to_json(
        &self,
        decode: impl FnOnce(&WriterSchema, &[u8]) -> Result<Json, apache_avro::Error>,
    ) -> Result<Json, CodecError> {
        decode(&self.schema, self.datum).map_err(|source| CodecError::Avro {
            id: self.id,
            source,
        })
    }
}

/// Decodes records; one per process, shared by every route. Schemas are fetched from the
/// registry once per id, parsed once and cached here.
pub struct Decoder {
    avro: Option<AvroDecoder>,
    schemas: Mutex<HashMap<u32, Arc<WriterSchema>>>,
    /// The Connect JSON schemas seen, parsed once each.
    connect_schemas: connect::Schemas,
    /// Events with an `after` row keep their `before` row too (see [`Decoder::after_only`]).
    before_with_after: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("registry", &self.avro.is_some())
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder; `registry` is needed for Avro.
    pub fn new(registry: Option<SrSettings>) -> Decoder {
        Decoder {
            avro: registry.map(AvroDecoder::new),
            schemas: Mutex::new(HashMap::new()),
            connect_schemas: connect::Schemas::default(),
            before_with_after: true,
        }
    }

    /// A decoder whose events that have an `after` row (creates, updates, snapshot reads) come
    /// without `before`; deletes keep theirs. For callers that read only
    /// [`ChangeEvent::row`]: a Debezium Avro `before` is then skipped unread, which saves a
    /// row's decode for most records.
    pub fn after_only(mut self) -> Decoder {
        self.before_with_after = false;
        self
    }

    /// Decodes one record, fetching the writer schemas it names from the registry first when
    /// this decoder has not seen them yet.
    pub async fn decode(
        &self,
        envelope: Envelope,
        encoding: Encoding,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Decoded, CodecError> {
        loop {
            match self.decode_cached(envelope, encoding, key, value) {
                Ok(decoded) => return decoded,
                // Cached from now on (or an error), so the loop ends.
                Err(SchemaMissing(id)) => {
                    self.writer_schema(id).await?;
                }
            }
        }
    }

    /// Decodes one record with the writer schemas already cached, without waiting: what the
    /// pipeline runs on its worker threads. [`SchemaMissing`] names a schema id that
    /// [`decode`](Self::decode) must fetch first.
    pub fn decode_cached(
        &self,
        envelope: Envelope,
        encoding: Encoding,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<Result<Decoded, CodecError>, SchemaMissing> {
        let mut key = match key
            .map(|bytes| self.decode_key(encoding, bytes))
            .transpose()?
        {
            Some(Err(e)) => return Ok(Err(e)),
            Some(Ok(row)) => Some(row),
            None => None,
        };
        let Some(value) = value else {
            return Ok(Ok(match envelope {
                Envelope::Debezium => Decoded::Tombstone { key },
                Envelope::Upsert => Decoded::Event(ChangeEvent {
                    op: Op::Delete,
                    before: None,
                    after: None,
                    key,
                    source: SourcePosition::default(),
                    ts_ms: None,
                }),
            }));
        };
        let tree = match encoding {
            Encoding::Json => {
                // Straight into the envelope's fields, the wrapper's schema parsed once per
                // distinct schema. Where that cannot read the record, the reference path (a
                // tree of it all) does, or says why it is poison.
                if envelope == Envelope::Debezium
                    && let Some(event) = self.debezium_json(value, &mut key)
                {
                    return Ok(Ok(Decoded::Event(event)));
                }
                self.unwrap_json(value)
            }
            Encoding::Avro => match self.avro_datum(value)? {
                Err(e) => Err(e),
                Ok(avro) if envelope == Envelope::Debezium => {
                    // Straight into the envelope's fields, with no JSON tree for the envelope
                    // or its `source`. Otherwise the tree says why: from apache-avro, since the
                    // fast path either cannot read this datum or it reads an invalid envelope
                    // (poison), and retrying it would only cost the common fallback a third
                    // decode.
                    if let Some(event) = self.debezium_fast(&avro, &mut key) {
                        return Ok(Ok(Decoded::Event(event)));
                    }
                    avro.to_json(WriterSchema::decode_with_apache_avro)
                }
                Ok(avro) => avro.to_json(WriterSchema::decode),
            },
        };
        Ok(tree
            .and_then(|tree| envelope::parse_envelope(envelope, key, tree))
            .map(|mut event| {
                if !self.before_with_after && event.after.is_some() {
                    event.before = None;
                }
                Decoded::Event(event)
            }))
    }

    /// A Debezium Avro envelope read by serde straight into its fields; `None` where that path
    /// cannot read the datum or the envelope is invalid.
    fn debezium_fast(&self, avro: &AvroDatum<'_>, key: &mut Option<Row>) -> Option<ChangeEvent> {
        self.debezium_fields(
            key,
            || avro.schema.decode_fast_as(avro.datum),
            || avro.schema.decode_fast_as(avro.datum),
        )
    }

    /// A Debezium JSON envelope, with or without the Connect wrapper, read by serde straight
    /// into its fields; `None` where that path cannot read the record or the envelope is
    /// invalid.
    fn debezium_json(&self, value: &[u8], key: &mut Option<Row>) -> Option<ChangeEvent> {
        if !connect::looks_wrapped(value) {
            return self.debezium_fields(
                key,
                || serde_json::from_slice(value).ok(),
                || serde_json::from_slice(value).ok(),
            );
        }
        self.debezium_fields(
            key,
            || {
                let (schema, payload) = self
                    .connect_schemas
                    .read::<DebeziumEnvelope<Unread>>(value)?;
                payload.convert_after(|row| schema.convert_row(EnvelopeRow::After, row))
            },
            || {
                let (schema, payload) = self.connect_schemas.read::<DebeziumEnvelope>(value)?;
                payload
                    .convert_after(|row| schema.convert_row(EnvelopeRow::After, row))?
                    .convert_before(|row| schema.convert_row(EnvelopeRow::Before, row))
            },
        )
    }

    /// The event of an envelope read by `lean` (`before` skipped), when `before` is not wanted
    /// and there is an `after`; else by `whole`.
    fn debezium_fields(
        &self,
        key: &mut Option<Row>,
        lean: impl FnOnce() -> Option<DebeziumEnvelope<Unread>>,
        whole: impl FnOnce() -> Option<DebeziumEnvelope>,
    ) -> Option<ChangeEvent> {
        if !self.before_with_after {
            // A delete (no `after`) is read again, whole.
            let lean = lean()?;
            if lean.has_after() {
                return lean.into_event(key);
            }
        }
        whole()?.into_event(key)
    }

    /// A JSON value, its Connect wrapper (if any) unwrapped.
    fn unwrap_json(&self, bytes: &[u8]) -> Result<Json, CodecError> {
        match self.connect_schemas.unwrap(bytes) {
            Some(payload) => Ok(payload),
            None => serde_json::from_slice(bytes)
                .map(connect::unwrap)
                .map_err(CodecError::Json),
        }
    }

    fn decode_key(
        &self,
        encoding: Encoding,
        bytes: &[u8],
    ) -> Result<Result<Row, CodecError>, SchemaMissing> {
        let tree = match encoding {
            Encoding::Avro if bytes.first() == Some(&0) => {
                match self
                    .avro_datum(bytes)?
                    .and_then(|avro| avro.to_json(WriterSchema::decode))
                {
                    Ok(tree) => tree,
                    Err(e) => return Ok(Err(e)),
                }
            }
            _ => match self.unwrap_json(bytes) {
                Ok(tree) => tree,
                // A plain string key, such as Kafka Connect's StringConverter writes. Bytes
                // that are not text are poison: read lossily, two such keys could become one
                // entity.
                Err(_) => match std::str::from_utf8(bytes) {
                    Ok(text) => Json::String(text.to_owned()),
                    Err(e) => {
                        return Ok(Err(CodecError::Shape {
                            expected: "record key",
                            reason: format!(
                                "its {} bytes are neither JSON nor UTF-8 text ({e})",
                                bytes.len()
                            ),
                        }));
                    }
                },
            },
        };
        Ok(Ok(match tree {
            Json::Object(row) => row,
            other => Row::from_iter([("key".to_owned(), other)]),
        }))
    }

    /// The datum of a Confluent-framed Avro record and its cached writer schema.
    fn avro_datum<'b>(
        &self,
        bytes: &'b [u8],
    ) -> Result<Result<AvroDatum<'b>, CodecError>, SchemaMissing> {
        let id = match wire::schema_id(bytes) {
            Ok(id) => id,
            Err(e) => return Ok(Err(e)),
        };
        let Some(datum) = bytes.get(wire::WIRE_HEADER_LEN..) else {
            return Ok(Err(CodecError::WireFormat(
                "shorter than the 5-byte header",
            )));
        };
        let schema = self.cached_schema(id).ok_or(SchemaMissing(id))?;
        Ok(Ok(AvroDatum { id, datum, schema }))
    }

    /// The decoder with `schema` cached as `id`, as if fetched from the registry (tests and
    /// fuzz targets).
    pub fn with_schema(self, id: u32, schema: WriterSchema) -> Decoder {
        self.schemas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::new(schema));
        self
    }

    fn cached_schema(&self, id: u32) -> Option<Arc<WriterSchema>> {
        self.schemas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// The writer schema of `id`: from this decoder's cache, else from the registry (which
    /// `schema_registry_converter` caches too), parsed once.
    async fn writer_schema(&self, id: u32) -> Result<Arc<WriterSchema>, CodecError> {
        if let Some(schema) = self.cached_schema(id) {
            return Ok(schema);
        }
        let avro = self.avro.as_ref().ok_or(CodecError::Shape {
            expected: "JSON value",
            reason: "an Avro record, but no schema registry is configured".to_owned(),
        })?;
        let fetched = avro
            .get_schema(id)
            .await
            .map_err(|e| registry_error(avro, id, e))?;
        let schema =
            Arc::new(
                WriterSchema::parse(&fetched.raw).map_err(|e| CodecError::Shape {
                    expected: "resolvable Avro schema",
                    reason: format!("schema {id}: {e}"),
                })?,
            );
        self.schemas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&schema));
        Ok(schema)
    }
}

/// 404: the registry answered and does not know the id (poison). Another 4xx: it refused the
/// request — credentials, URL — (fatal). Anything else: it could not answer (transient); the
/// cached error is dropped so that the retry asks again.
fn registry_error(avro: &AvroDecoder, id: u32, error: SRCError) -> CodecError {
    if error.retriable || !error.error.contains("status 4") {
        avro.remove_errors_from_cache();
        CodecError::RegistryUnavailable(error)
    } else if error.error.contains("status 404") {
        CodecError::UnknownSchema { id, source: error }
    } else {
        CodecError::RegistryRefused { id, source: error }
    }
}

#[cfg(test)]
mod tests {
    use autoglm_core::{Classify, ErrorClass};

    use super::*;

    fn class_of(message: &str, retriable: bool) -> ErrorClass {
        let avro = AvroDecoder::new(SrSettings::new("http://127.0.0.1:9".to_owned()));
        registry_error(&avro, 7, SRCError::new(message, None, retriable)).class()
    }

    #[test]
    fn an_unknown_id_is_poison_a_refusal_is_fatal_an_outage_is_transient() {
        let failed = "HTTP request to schema registry failed with status";
        assert_eq!(
            class_of(&format!("{failed} 404 Not Found"), false),
            ErrorClass::Poison
        );
        assert_eq!(
            class_of(&format!("{failed} 401 Unauthorized"), false),
            ErrorClass::Fatal
        );
        assert_eq!(
            class_of(&format!("{failed} 403 Forbidden"), false),
            ErrorClass::Fatal
        );
        assert_eq!(
            class_of(&format!("{failed} 503 Service Unavailable"), true),
            ErrorClass::Transient
        );
        assert_eq!(
            class_of(&format!("{failed} 500 Internal Server Error"), false),
            ErrorClass::Transient
        );
        assert_eq!(
            class_of("error sending request", true),
            ErrorClass::Transient
        );
    }
}
