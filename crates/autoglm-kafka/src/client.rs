//! Client settings shared by every consumer and producer the processor creates.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

/// librdkafka properties that [`ClientSettings`] owns. A pass-through property may not set them,
/// because the exactly-once guarantees depend on their values.
const OWNED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "transactional.id",
    "isolation.level",
    "enable.auto.commit",
    "group.id",
    "group.instance.id",
];

/// A pass-through property conflicts with a setting the processor owns.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The property is set by the processor itself.
    #[error(
        "librdkafka property `{key}` is managed by open-autoglm and cannot be overridden: {reason}"
    )]
    OwnedProperty {
        /// The rejected property.
        key: String,
        /// Which typed setting owns it.
        reason: &'static str,
    },
}

/// `key`, unless the processor owns that property.
fn not_owned(key: String) -> Result<String, SettingsError> {
    if OWNED_PROPERTIES.contains(&key.as_str()) {
        return Err(SettingsError::OwnedProperty {
            key,
            reason: "set it through the typed configuration instead",
        });
    }
    Ok(key)
}

/// Where the cluster is and how to talk to it.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    bootstrap_servers: String,
    client_id: String,
    /// Raw librdkafka properties (security, tuning), applied before the owned ones.
    extra: Vec<(String, String)>,
    /// Properties only producers take (compression), applied after `extra`.
    producer_extra: Vec<(String, String)>,
    /// Defaults of the processor's group member only, below the pass-through properties.
    member_defaults: Vec<(String, String)>,
}

impl ClientSettings {
    /// Settings for the cluster at `bootstrap_servers` (a comma-separated `host:port` list).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: "open-autoglm".to_owned(),
            extra: Vec::new(),
            producer_extra: Vec::new(),
            member_defaults: Vec::new(),
        }
    }

    /// The client id reported to the broker (shows up in broker logs and quotas).
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Adds a raw librdkafka property, for example `security.protocol` or `linger.ms`.
    pub fn with_property(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, SettingsError> {
        let key = not_owned(key.into())?;
        self.extra.push((key, value.into()));
        Ok(self)
    }

    /// Adds a property that only producers take, such as `compression.type`.
    pub fn with_producer_property(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, SettingsError> {
        let key = not_owned(key.into())?;
        self.producer_extra.push((key, value.into()));
        Ok(self)
    }

    /// A default for the processor's group member ([`member_consumer`](Self::member_consumer))
    /// that a pass-through property of the same key replaces.
    pub fn with_member_default(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.member_defaults.push((key.into(), value.into()));
        self
    }

    /// The bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// A librdkafka config with the connection settings and the pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id);
        config
    }

    /// An idempotent, transactional producer. `init_transactions` is left to the caller, because it
    /// blocks and must run off the async executor.
    pub fn transactional_producer(
        &self,
        transactional_id: &str,
    ) -> Result<FutureProducer, KafkaError> {
        self.transactional_config(transactional_id).create()
    }

    /// The config of [`transactional_producer`](Self::transactional_producer), for a producer
    /// with a context of its own (`create_with_context`).
    pub fn transactional_config(&self, transactional_id: &str) -> ClientConfig {
        let mut config = self.producer_config();
        config
            .set("transactional.id", transactional_id)
            // A crashed or paused instance's open transaction holds back the committed end of
            // its partitions (the next owner's restore and reads wait for it) until the broker
            // aborts it: keep that short, as Kafka Streams does (10 s). Commits come every
            // flush_interval_ms, far below it. Delivery must time out before the transaction.
            .set("transaction.timeout.ms", "15000")
            .set("message.timeout.ms", "10000");
        config
    }

    /// An idempotent producer without transactions, for at-least-once output.
    pub fn idempotent_producer(&self) -> Result<FutureProducer, KafkaError> {
        self.producer_config().create()
    }

    /// The config of [`idempotent_producer`](Self::idempotent_producer), for a producer with a
    /// context of its own.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        for (key, value) in &self.producer_extra {
            config.set(key, value);
        }
        config.set("enable.idempotence", "true");
        config
    }

    /// A consumer in `group_id` that only sees committed records and never commits on its own:
    /// offsets are committed through the producer's transaction.
    pub fn read_committed_consumer(&self, group_id: &str) -> Result<StreamConsumer, KafkaError> {
        self.consumer(group_id, "read_committed")
    }

    /// The processor's consumer: [`read_committed_consumer`](Self::read_committed_consumer) as
    /// the static group member `member_id` (`group.instance.id`). A restarted instance takes its
    /// partitions back at once instead of waiting for the broker to expire its old session, so a
    /// crash costs a restart, not a rebalance.
    /// `context` hears the group's rebalances.
    pub fn member_consumer<C: ConsumerContext + 'static>(
        &self,
        group_id: &str,
        member_id: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, KafkaError> {
        self.member_config(group_id, member_id)
            .create_with_context(context)
    }

    fn member_config(&self, group_id: &str, member_id: &str) -> ClientConfig {
        let mut config = self.consumer_config(group_id, "read_committed");
        config.set("group.instance.id", member_id);
        // Defaults a pass-through value replaces.
        for (key, value) in [
            // A static member does not leave the group when it closes: its partitions move
            // only when its session expires. 10 s (the broker's minimum is 6 s) bounds that
            // stall after a scale-in or a crash without restart; a restart within it takes the
            // partitions back without any rebalance.
            ("session.timeout.ms", "10000"),
            // A member hears of a rebalance on its next heartbeat, and a cooperative rebalance
            // takes two rounds: with librdkafka's 3 s interval a scale-out took 6.6 s to settle
            // (`make bench`, 2 and 3 instances). One second is still a tenth of the session.
            ("heartbeat.interval.ms", "1000"),
            // librdkafka prefetches up to 64 MiB by default, a quarter of the memory budget.
            // 8 MiB still holds three batches, over 150 ms of input at full speed, if the
            // fetcher resumes soon after the queue drains: librdkafka's 1 s
            // fetch.queue.backoff.ms would starve it (pass-through throughput fell to a third
            // in `make bench`). 16 MiB took the peak RSS with 1 million keys to 252–281 MiB
            // once the state write overlapped the next batch's prepare; 8 MiB, 240–250.
            ("queued.max.messages.kbytes", "8192"),
            ("fetch.queue.backoff.ms", "10"),
        ] {
            set_default(&mut config, key, value);
        }
        for (key, value) in &self.member_defaults {
            set_default(&mut config, key, value);
        }
        config
    }

    /// Like [`read_committed_consumer`](Self::read_committed_consumer), but also sees records of
    /// open and aborted transactions. Only for verification tools and tests.
    pub fn read_uncommitted_consumer(&self, group_id: &str) -> Result<StreamConsumer, KafkaError> {
        self.consumer(group_id, "read_uncommitted")
    }

    /// A consumer for reading assigned partitions to their end (state restore): it only sees
    /// committed records and never commits. Compare its position with the high watermark of
    /// [`log_end_client`](Self::log_end_client) to know when a partition is read: transaction
    /// markers are never delivered. Its group, `<group_id>-restore`, never commits, but
    /// librdkafka looks up its coordinator: a principal needs DESCRIBE on it, which a prefixed
    /// ACL on the processor's group grants.
    pub fn restore_consumer(&self, group_id: &str) -> Result<StreamConsumer, KafkaError> {
        self.restore_config(group_id).create()
    }

    /// A client whose `fetch_watermarks` gives the log end: the high watermark, past the records
    /// of open transactions. A `read_committed` client is told the last stable offset instead,
    /// which stops short of an open transaction that may still commit.
    pub fn log_end_client(&self) -> Result<BaseConsumer, KafkaError> {
        let mut config = self.client_config();
        config.set("isolation.level", "read_uncommitted");
        config.create()
    }

    fn restore_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", format!("{group_id}-restore"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        // Resume fetching 10 ms after the store caught up, not librdkafka's 1 s; a pass-through
        // value wins, as for the member.
        set_default(&mut config, "fetch.queue.backoff.ms", "10");
        config
    }

    fn consumer(&self, group_id: &str, isolation: &str) -> Result<StreamConsumer, KafkaError> {
        self.consumer_config(group_id, isolation).create()
    }

    fn consumer_config(&self, group_id: &str, isolation: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("isolation.level", isolation)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky");
        config
    }
}

/// Sets `key` to `value` unless a pass-through property already set it.
fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_properties_cannot_be_overridden() {
        let err = ClientSettings::new("127.0.0.1:9")
            .with_property("isolation.level", "read_uncommitted")
            .expect_err("isolation.level is owned");
        assert!(err.to_string().contains("`isolation.level`"), "{err}");
    }

    #[test]
    fn pass_through_properties_reach_the_client_config() {
        let config = ClientSettings::new("127.0.0.1:9")
            .with_property("linger.ms", "5")
            .expect("linger.ms is free")
            .client_config();
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9"));
    }

    #[test]
    fn consumer_defaults_yield_to_pass_through_values() {
        let plain = ClientSettings::new("127.0.0.1:9");
        let member = plain.member_config("g", "g-0");
        assert_eq!(member.get("heartbeat.interval.ms"), Some("1000"));
        assert_eq!(member.get("session.timeout.ms"), Some("10000"));
        assert_eq!(member.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(member.get("group.instance.id"), Some("g-0"));
        assert_eq!(
            plain.restore_config("g").get("fetch.queue.backoff.ms"),
            Some("10")
        );

        let tuned = ClientSettings::new("127.0.0.1:9")
            .with_property("fetch.queue.backoff.ms", "200")
            .and_then(|s| s.with_property("heartbeat.interval.ms", "3000"))
            .expect("free properties");
        let member = tuned.member_config("g", "g-0");
        assert_eq!(member.get("heartbeat.interval.ms"), Some("3000"));
        assert_eq!(member.get("fetch.queue.backoff.ms"), Some("200"));
        assert_eq!(
            tuned.restore_config("g").get("fetch.queue.backoff.ms"),
            Some("200")
        );
        assert_eq!(tuned.restore_config("g").get("group.id"), Some("g-restore"));

        // A member default (a rate limit's fetch.wait.max.ms) reaches the member only, below a
        // pass-through value.
        let limited = plain.clone().with_member_default("fetch.wait.max.ms", "50");
        assert_eq!(
            limited.member_config("g", "g-0").get("fetch.wait.max.ms"),
            Some("50")
        );
        assert_eq!(limited.restore_config("g").get("fetch.wait.max.ms"), None);
        let chosen = ClientSettings::new("127.0.0.1:9")
            .with_property("fetch.wait.max.ms", "100")
            .expect("free property")
            .with_member_default("fetch.wait.max.ms", "50");
        assert_eq!(
            chosen.member_config("g", "g-0").get("fetch.wait.max.ms"),
            Some("100")
        );
    }
}
