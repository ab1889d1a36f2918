//! A metadata round-trip that tells whether the cluster answers.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::ClientSettings;

/// What the cluster reported about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The broker that answered the metadata request.
    pub orig_broker: String,
    /// Every broker in the cluster, as `id@host:port`.
    pub brokers: Vec<String>,
    /// How many topics the cluster holds.
    pub topic_count: usize,
}

/// Fetches cluster metadata within `timeout`. librdkafka's metadata call blocks, so it runs on a
/// blocking thread.
pub async fn probe(
    settings: &ClientSettings,
    timeout: Duration,
) -> Result<ClusterInfo, KafkaError> {
    let config = settings.client_config();
    let joined = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(None, timeout)?;
        Ok(ClusterInfo {
            orig_broker: metadata.orig_broker_name().to_owned(),
            brokers: metadata
                .brokers()
                .iter()
                .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
                .collect(),
            topic_count: metadata.topics().len(),
        })
    })
    .await;
    joined.unwrap_or_else(|e| {
        Err(KafkaError::ClientCreation(format!(
            "probe task failed: {e}"
        )))
    })
}
