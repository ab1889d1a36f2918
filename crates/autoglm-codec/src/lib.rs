//! Codecs: bytes from a CDC topic in, [`ChangeEvent`]s out; aligned rows in, bytes out.
//!
//! ```text
//!  key/value bytes ─► wire header? ──yes─► registry lookup (cached by id) ─► Avro ─────────┐
//!                       │                                                                 ├─► JSON tree ─► envelope ─► ChangeEvent
//!                       └──no──► JSON (with or without the Connect schema/payload) ───────┘
//!
//!  Debezium Avro: serde reads the envelope's fields straight from the datum (no tree for the
//!  envelope or its `source`); an envelope that path cannot take goes the tree path above.
//!  With [`Decoder::after_only`] (the pipeline's), `before` is skipped unread beside an `after`
//!  row; a delete is read again, whole.
//!
//! [`Decoder::decode_cached`] and [`AvroTarget::encode_fields_cached`] never wait: once a schema
//! is cached they run on any thread. [`Decoder::decode`] and [`AvroTarget::encode`] first fetch
//! or register what is missing.
//!
//!  Row (JSON map, or its fields in name order) ─► Avro datum, written field by field under
//!  the target schema, matched to it in one merge (no intermediate Value) ─► Confluent wire
//!  format (or JSON bytes)
//! ```
//!
//! [`RegistryClient`] asks the registry, registering nothing, whether a target schema is
//! compatible with its subject ([`AvroTarget::check_compatibility`], `autoglm schemas check`).
//!
//! Debezium logical types become plain JSON values on the way in: decimals become strings with
//! their scale (`"1234.50"`), `io.debezium.time.*` and Avro date/time types stay integers in their
//! own unit, so the mapping stage decides how to present them.
//!
//! Failure behaviour: bytes are parsed, never indexed. A short wire header, an unknown schema id,
//! invalid JSON or a value that is not an envelope is a [`CodecError`] of class
//! [`ErrorClass::Poison`](autoglm_core::ErrorClass) (the record goes to the dead-letter topic); a
//! registry that does not answer is [`Transient`](autoglm_core::ErrorClass) (retried, never skipped).

mod avro_json;
mod connect;
mod decoder;
mod encoder;
mod envelope;
mod error;
#[cfg(test)]
mod hostile;
mod registry;
mod registry_auth;
#[cfg(test)]
mod round_trips;
mod wire;

pub use autoglm_core::ChangeEvent;
pub use avro_json::WriterSchema;
pub use connect::wrap as connect_wrap;
pub use decoder::{Decoded, Decoder, Encoding, Envelope, SchemaMissing};
pub use encoder::{AvroTarget, json_to_avro};
pub use envelope::{BeforeRow, DebeziumEnvelope, Unread, parse_envelope};
pub use error::CodecError;
pub use registry::{Compatibility, RegistryClient};
pub use registry_auth::{BearerTokens, ClientCredentials, RegistryTls};
pub use wire::{WIRE_HEADER_LEN, schema_id};
