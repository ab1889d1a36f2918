//! A metadata round-trip that tells whether the cluster answers, and if not, why.
//!
//! A TLS or SASL failure does not come back from the metadata call itself (that only times out):
//! librdkafka reports it as a client error event. The probe's context keeps those events, so that
//! a wrong password, an untrusted CA or a refused token is named as such, and is not retried like
//! a broker that is merely away.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use crate::ClientSettings;

/// What the cluster reported about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The broker that answered the metadata request.
    pub orig_broker: String,
    /// Every broker in the cluster, as `id@host:port`.
    pub brokers: Vec<String>,
    /// How many topics the cluster holds (that this principal may describe).
    pub topic_count: usize,
}

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The connection was refused for its credentials or its TLS: retrying cannot help.
    #[error("{what} failed: {reason}")]
    Access {
        /// `authentication` or `TLS handshake`.
        what: &'static str,
        /// librdkafka's words (they never hold a secret).
        reason: String,
    },
    /// The cluster did not answer (it may be away): retrying may help.
    #[error("no answer: {source}{}", .last_event.as_ref().map(|e| format!(" (last client error: {e})")).unwrap_or_default())]
    NoAnswer {
        /// The metadata call's error.
        #[source]
        source: KafkaError,
        /// The last error event of the client, if any.
        last_event: Option<String>,
    },
}

impl ProbeError {
    /// Whether retrying cannot help (credentials, certificates).
    pub fn is_access(&self) -> bool {
        matches!(self, ProbeError::Access { .. })
    }
}

/// Keeps the client's error events.
#[derive(Debug, Default)]
struct Events {
    errors: Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for Events {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error event");
        if let Ok(mut errors) = self.errors.lock() {
            errors.push((error.rdkafka_error_code(), reason.to_owned()));
        }
    }
}

impl ProducerContext for Events {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, (): ()) {}
}

impl Events {
    /// The first access failure among the events, else the last event.
    fn verdict(&self) -> (Option<ProbeError>, Option<String>) {
        let Ok(errors) = self.errors.lock() else {
            return (None, None);
        };
        let access = errors.iter().find_map(|(code, reason)| {
            let what = match code {
                Some(
                    RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed,
                ) => "authentication",
                Some(RDKafkaErrorCode::SSL) => "TLS handshake",
                _ => return None,
            };
            Some(ProbeError::Access {
                what,
                reason: reason.clone(),
            })
        });
        (access, errors.last().map(|(_, reason)| reason.clone()))
    }
}

/// Fetches cluster metadata within `timeout`. librdkafka's metadata call blocks, so it runs on a
/// blocking thread.
pub async fn probe(
    settings: &ClientSettings,
    timeout: Duration,
) -> Result<ClusterInfo, ProbeError> {
    let config = settings.client_config();
    let joined = tokio::task::spawn_blocking(move || {
        // A producer, because polling it serves the client's own events (a consumer's poll
        // serves its fetch queue). It never sends a record.
        let client: BaseProducer<Events> =
            config
                .create_with_context(Events::default())
                .map_err(|source| ProbeError::NoAnswer {
                    source,
                    last_event: None,
                })?;
        match client.client().fetch_metadata(None, timeout) {
            Ok(metadata) => Ok(ClusterInfo {
                orig_broker: metadata.orig_broker_name().to_owned(),
                brokers: metadata
                    .brokers()
                    .iter()
                    .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
                    .collect(),
                topic_count: metadata.topics().len(),
            }),
            Err(source) => {
                // The error events wait in the client's queue until it is polled.
                for _ in 0..16 {
                    client.poll(Duration::from_millis(50));
                }
                let (access, last_event) = client.context().verdict();
                Err(access.unwrap_or(ProbeError::NoAnswer { source, last_event }))
            }
        }
    })
    .await;
    joined.unwrap_or_else(|e| {
        Err(ProbeError::NoAnswer {
            source: KafkaError::ClientCreation(format!("probe task failed: {e}")),
            last_event: None,
        })
    })
}
