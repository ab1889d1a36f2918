use autoglm_core::{Classify, ErrorClass};

/// A record could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value is too short for the Confluent wire format, or its magic byte is not 0.
    #[error("not in the Confluent wire format: {0}")]
    WireFormat(&'static str),
    /// The registry does not know the schema id.
    #[error("schema id {id} is unknown to the schema registry")]
    UnknownSchema {
        /// The id from the wire header.
        id: u32,
        /// The registry's answer.
        #[source]
        source: schema_registry_converter::error::SRCError,
    },
    /// The registry refused the lookup (400, 401, 403, …): wrong credentials or URL. Retrying
    /// cannot help and dead-lettering would send every record away: stop.
    #[error("schema registry refused the lookup of schema id {id}")]
    RegistryRefused {
        /// The id from the wire header.
        id: u32,
        /// The registry's answer.
        #[source]
        source: schema_registry_converter::error::SRCError,
    },
    /// The registry could not be reached or answered with a server error.
    #[error("schema registry unavailable")]
    RegistryUnavailable(#[source] schema_registry_converter::error::SRCError),
    /// The Avro body does not match its writer schema.
    #[error("avro body does not match schema {id}")]
    Avro {
        /// The schema id.
        id: u32,
        /// The decoder's complaint.
        #[source]
        source: apache_avro::Error,
    },
    /// The bytes are not valid JSON.
    #[error("invalid JSON")]
    Json(#[source] serde_json::Error),
    /// The value parsed, but is not what the route says it is.
    #[error("not a {expected}: {reason}")]
    Shape {
        /// `Debezium envelope`, `upsert row`, …
        expected: &'static str,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A Schema Registry request failed: no answer, or an error answer.
    #[error("schema registry {request}: {reason}")]
    Registry {
        /// Method and full URL (credentials stripped), e.g. `GET http://…/subjects/x-value/versions`.
        request: String,
        /// The HTTP status, when the registry answered.
        status: Option<u16>,
        /// What failed: `cannot connect`, `HTTP 401 Unauthorized: …`, …
        reason: String,
        /// The HTTP client's error, when there was no answer.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The registry URL or client settings cannot be used.
    #[error("schema registry url `{url}` is not usable")]
    RegistrySettings {
        /// The URL (credentials stripped).
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A row value cannot be written under the target schema.
    #[error("field `{path}`: {reason}")]
    Encode {
        /// Dotted path of the field in the target schema.
        path: String,
        /// What is wrong, with the (truncated) value.
        reason: String,
    },
}

impl Classify for CodecError {
    fn class(&self) -> ErrorClass {
        match self {
            CodecError::RegistryUnavailable(_) => ErrorClass::Transient,
            // No answer, a server error, a timeout or throttling may pass; a 4xx will not.
            CodecError::Registry { status, .. } => match status {
                None | Some(408 | 429 | 500..) => ErrorClass::Transient,
                Some(_) => ErrorClass::Fatal,
            },
            CodecError::RegistrySettings { .. } | CodecError::RegistryRefused { .. } => {
                ErrorClass::Fatal
            }
            _ => ErrorClass::Poison,
        }
    }
}

/// A value cut to at most `max` characters, for error messages and dead-letter headers.
pub(crate) fn truncated(value: &serde_json::Value, max: usize) -> String {
    let text = value.to_string();
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
