//! Kafka clients for Open-AutoGLM, built on rust-rdkafka (librdkafka compiled from source).
//!
//! ```text
//!   ClientSettings ──► read_committed consumer ──► (pipeline) ──► transactional producer
//!        │                                                               │
//!        └── probe(): metadata round-trip for `autoglm check`            └── classify(): retry / DLQ / stop
//! ```
//!
//! Failure behaviour: every librdkafka error is mapped by [`classify`] onto an
//! [`autoglm_core::ErrorClass`]; the runtime retries transient ones, dead-letters poison records and
//! stops in order on fatal ones (fencing, authorization, configuration).

mod classify;
mod client;
mod probe;

pub use classify::{classify, is_fencing};
pub use client::{ClientSettings, SettingsError};
pub use probe::{ClusterInfo, ProbeError, probe};
