//! How large a record each topic the pipeline writes takes, so that a record too large is
//! dead-lettered instead of failing its transaction for ever.
//!
//! The broker refuses a record batch larger than its topic's `max.message.bytes` (after
//! compression), and librdkafka refuses, when it is sent, a record larger than the producer's
//! `message.max.bytes`. Either refusal fails the whole transaction, and the retry meets the same
//! record. So at start the pipeline reads `max.message.bytes` of every topic it writes (targets,
//! dead-letter, audit and changelog topics: [`describe`]). A record whose size may exceed its
//! topic's limit, measured as an uncompressed batch of one ([`batch_bound`]), is not sent:
//! an output goes to the DLQ with the rule `size`; a dead letter or audit copy keeps its key and
//! headers and drops its value (`autoglm.error.payload: omitted …`).
//!
//! librdkafka's `batch.size` is one for all topics: the producer gets the smallest limit, so that
//! a batch of small records never outgrows a topic with a small limit (unless
//! `kafka.properties` sets `batch.size`).
//!
//! A principal without DESCRIBE_CONFIGS on a topic, or a topic that does not exist yet, gets
//! the producer's `message.max.bytes` alone; the broker may then still refuse a record, which
//! fails its batch (retried), as before.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Headers, OwnedHeaders};

use autoglm_kafka::ClientSettings;

/// librdkafka's default `message.max.bytes`.
const CLIENT_DEFAULT: usize = 1_000_000;

/// A record batch's fixed header, in the v2 format: base offset (8), length (4), leader epoch
/// (4), magic (1), CRC (4), attributes (2), last offset delta (4), first and max timestamps
/// (8 + 8), producer id (8), epoch (2), base sequence (4), record count (4).
const BATCH_HEADER: usize = 61;
/// The most a record's own fields take besides its key, value and headers: its length (5),
/// attributes (1), timestamp delta (10), offset delta (5), key and value lengths (5 + 5) and
/// header count (5), all varints at their longest.
const RECORD_FIELDS: usize = 36;
/// The most a header's two length varints take.
const HEADER_FIELDS: usize = 10;

/// The most an uncompressed batch of one record takes, by the v2 format. The broker compares
/// the (compressed) batch with `max.message.bytes`, so a record within this bound is never
/// refused as too large.
pub(super) fn batch_bound(key: usize, value: usize, headers: Option<&OwnedHeaders>) -> usize {
    let headers: usize = headers.map_or(0, |headers| {
        headers
            .iter()
            .map(|h| HEADER_FIELDS + h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    BATCH_HEADER + RECORD_FIELDS + key + value + headers
}

/// The largest batch each written topic takes.
#[derive(Debug, Clone)]
pub(super) struct SizeLimits {
    /// `max.message.bytes` of the topics that told it.
    topics: HashMap<String, usize>,
    /// The producer's `message.max.bytes`: no record may be larger, whatever the topic.
    client: usize,
}

impl SizeLimits {
    /// Limits with only the producer's `message.max.bytes` (`None`: librdkafka's default).
    pub(super) fn client_only(message_max_bytes: Option<&str>) -> SizeLimits {
        SizeLimits {
            topics: HashMap::new(),
            client: message_max_bytes
                .and_then(|v| v.parse().ok())
                .unwrap_or(CLIENT_DEFAULT),
        }
    }

    /// The largest batch `topic` takes.
    pub(super) fn of(&self, topic: &str) -> usize {
        self.topics
            .get(topic)
            .map_or(self.client, |&limit| limit.min(self.client))
    }

    /// Whether a record of `key` and `value` bytes may outgrow `topic`'s limit with its
    /// headers, which no header set of the pipeline's outputs reaches (`headers` ≤ 2 KiB): a
    /// cheap test first, before the headers are built and measured.
    pub(super) fn may_exceed(&self, topic: &str, key: usize, value: usize) -> bool {
        batch_bound(key, value, None) + 2_048 > self.of(topic)
    }

    /// The smallest limit of all: the producer's `batch.size`, when the config leaves it.
    pub(super) fn smallest(&self) -> usize {
        self.topics.values().fold(self.client, |a, &b| a.min(b))
    }
}

/// Reads `max.message.bytes` of `topics` from the broker. A topic it cannot describe (missing,
/// or no DESCRIBE_CONFIGS) is left to the producer's limit, and said once in the log.
pub(super) async fn describe(
    settings: &ClientSettings,
    topics: &[&str],
    message_max_bytes: Option<&str>,
    timeout: Duration,
) -> SizeLimits {
    let mut limits = SizeLimits::client_only(message_max_bytes);
    let admin: AdminClient<DefaultClientContext> = match settings.client_config().create() {
        Ok(admin) => admin,
        Err(error) => {
            tracing::warn!(%error, "cannot read the topics' max.message.bytes; the producer's limit applies");
            return limits;
        }
    };
    let resources: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = match admin.describe_configs(&resources, &options).await {
        Ok(results) => results,
        Err(error) => {
            tracing::warn!(%error, "cannot read the topics' max.message.bytes; the producer's limit applies");
            return limits;
        }
    };
    let mut unknown = Vec::new();
    for (topic, result) in topics.iter().zip(results) {
        let limit = result
            .map_err(|code| code.to_string())
            .and_then(|resource| {
                resource
                    .get("max.message.bytes")
                    .and_then(|entry| entry.value.as_deref())
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| "no max.message.bytes in its config".to_owned())
            });
        match limit {
            Ok(limit) => {
                limits.topics.insert((*topic).to_owned(), limit);
            }
            Err(reason) => unknown.push(format!("{topic} ({reason})")),
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(
            topics = %unknown.join(", "),
            "cannot read these topics' max.message.bytes (DESCRIBE_CONFIGS, or missing); the producer's message.max.bytes applies to them"
        );
    }
    limits
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Header;

    use super::*;

    #[test]
    fn a_topics_limit_is_its_own_below_the_producers() {
        let mut limits = SizeLimits::client_only(Some("50000"));
        limits.topics.insert("small".into(), 4_000);
        limits.topics.insert("large".into(), 10_000_000);
        assert_eq!(limits.of("small"), 4_000);
        assert_eq!(limits.of("large"), 50_000);
        assert_eq!(limits.of("unknown"), 50_000);
        assert_eq!(limits.smallest(), 4_000);
        assert_eq!(SizeLimits::client_only(None).of("t"), 1_000_000);
        assert_eq!(SizeLimits::client_only(Some("x")).of("t"), 1_000_000);
    }

    #[test]
    fn the_bound_counts_the_batch_the_record_and_every_header() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "autoglm.op",
                value: Some("c"),
            })
            .insert(Header::<&str> {
                key: "empty",
                value: None,
            });
        let bound = batch_bound(3, 100, Some(&headers));
        assert_eq!(bound, 61 + 36 + 3 + 100 + (10 + 10 + 1) + (10 + 5));
        assert_eq!(batch_bound(0, 0, None), 97);
    }

    #[test]
    fn only_records_near_the_limit_are_measured_with_their_headers() {
        let mut limits = SizeLimits::client_only(None);
        limits.topics.insert("t".into(), 4_000);
        assert!(!limits.may_exceed("t", 10, 1_000));
        assert!(limits.may_exceed("t", 10, 1_900));
        assert!(limits.may_exceed("t", 10, 20_000));
        assert!(!limits.may_exceed("other", 10, 20_000));
    }
}
