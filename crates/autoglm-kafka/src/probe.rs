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
            refusal(*code, reason).map(|what| ProbeError::Access {
                what,
                reason: reason.clone(),
            })
        });
        (access, errors.last().map(|(_, reason)| reason.clone()))
    }
}

/// Whether a client error event is a refusal that waiting cannot fix, and of what. A broker or
/// identity provider that is merely away also raises TLS and authentication events, and those
/// are waited out like any outage:
/// - TLS: only a certificate the client rejects (`certificate verify failed`) or one the broker
///   rejects (a TLS alert); a handshake cut by a restarting broker is not;
/// - OAUTHBEARER: only an answer of the token endpoint with an OAuth error (RFC 6749 §5.2,
///   `{"error":…}`: a wrong secret, a disabled client, an invalid scope); a provider that cannot
///   be reached or answers 5xx is not;
/// - SASL: a failed authentication (wrong password, a token the broker refuses).
fn refusal(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<&'static str> {
    match code? {
        RDKafkaErrorCode::SSL
            if reason.contains("certificate verify failed") || reason.contains(" alert ") =>
        {
            Some("TLS handshake")
        }
        RDKafkaErrorCode::Authentication
            if reason.contains("OAUTHBEARER token") && !reason.contains("\"error\"") =>
        {
            None
        }
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            Some("authentication")
        }
        _ => None,
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
        // In rounds of a second, so that a refusal (an event) ends the probe at once instead of
        // after the whole timeout.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let round = deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(Duration::from_secs(1));
            match client.client().fetch_metadata(None, round) {
                Ok(metadata) => {
                    return Ok(ClusterInfo {
                        orig_broker: metadata.orig_broker_name().to_owned(),
                        brokers: metadata
                            .brokers()
                            .iter()
                            .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
                            .collect(),
                        topic_count: metadata.topics().len(),
                    });
                }
                Err(source) => {
                    // The error events wait in the client's queue until it is polled.
                    client.poll(Duration::from_millis(50));
                    let (access, last_event) = client.context().verdict();
                    if let Some(access) = access {
                        return Err(access);
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(ProbeError::NoAnswer { source, last_event });
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_stop_and_outages_are_waited_out() {
        use RDKafkaErrorCode as C;
        // Lines seen in the security tests, and a TLS alert as OpenSSL words it.
        let refused = [
            (
                C::SSL,
                "sasl_ssl://127.0.0.1:39096/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified",
            ),
            (
                C::SSL,
                "ssl://127.0.0.1:39098/bootstrap: SSL handshake failed: error:0A00045C:SSL routines::tlsv13 alert certificate required",
            ),
            (
                C::Authentication,
                "sasl_ssl://127.0.0.1:39096/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
            ),
            (
                C::Authentication,
                "Failed to acquire SASL OAUTHBEARER token: {\"error\":\"unauthorized_client\",\"error_description\":\"Invalid client or Invalid client credentials\"}",
            ),
            (
                C::Authentication,
                "sasl_ssl://127.0.0.1:39097/bootstrap: SASL authentication error: {\"status\":\"invalid_token\"}",
            ),
        ];
        for (code, reason) in refused {
            assert!(refusal(Some(code), reason).is_some(), "{reason}");
        }
        let away = [
            (
                C::SSL,
                "sasl_ssl://127.0.0.1:39096/bootstrap: SSL handshake failed: Disconnected",
            ),
            (
                C::Authentication,
                "Failed to acquire SASL OAUTHBEARER token: Failed to retrieve OIDC token from \"http://127.0.0.1:38084/…/token\": Couldn't connect to server",
            ),
            (
                C::BrokerTransportFailure,
                "127.0.0.1:39092/bootstrap: Connect to ipv4#127.0.0.1:39092 failed: Connection refused",
            ),
        ];
        for (code, reason) in away {
            assert!(refusal(Some(code), reason).is_none(), "{reason}");
        }
    }
}
