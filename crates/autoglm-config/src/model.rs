//! The configuration's shape. Defaults live here, in one place.

use std::collections::BTreeMap;
use std::net::{AddrParseError, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use autoglm_codec::{Encoding, Envelope};
use autoglm_mapping::MappingSpec;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::security::{OAuthConfig, SecurityConfig, TlsConfig};

/// The whole configuration (`open-autoglm-config.yaml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Kafka cluster and the consumer group.
    pub kafka: KafkaConfig,
    /// The Confluent-compatible Schema Registry; needed by Avro routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry: Option<RegistryConfig>,
    /// Origin document: processing guarantee, state path, commit cadence, retries, compression.
    #[serde(default)]
    pub event_queue: EventQueue,
    /// Origin document: how many times a transient failure is retried (overrides
    /// `event_queue.max_retry_attempts` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Origin document: exponential backoff between retries.
    #[serde(default)]
    pub backoff: Backoff,
    /// Origin document: regex rename rules applied by every route, before its own rules
    /// (`pattern: target_name`, whole-name match, first match wins).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub mapping_rules: IndexMap<String, String>,
    /// Origin document: `error`, `warn`, `info`, `debug` or `trace`, or a `tracing` filter.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Transactions: how many records at most before a commit.
    #[serde(default)]
    pub commit: CommitConfig,
    /// The version state store.
    #[serde(default)]
    pub state: StateConfig,
    /// How long SIGTERM may take to drain: the open batch commits and the group is left. Past
    /// it the process exits non-zero; the broker or the next start aborts what was open.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Prometheus metrics and health probes over HTTP while `run` runs; absent: no server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// The origin document's allowed APIs per service: the topics this processor may write
    /// (targets, DLQ and audit topics). Each entry is a topic name, or a prefix ending in `*`.
    /// A route writing elsewhere is a config error. Absent: no restriction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_targets: Option<Vec<String>>,
    /// OpenTelemetry trace export (OTLP over HTTP): a span per transaction and, if asked, per
    /// record. Without an endpoint (here or in `OTEL_EXPORTER_OTLP_ENDPOINT`) nothing is exported.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// The sync routes.
    pub routes: Vec<Route>,
}

/// Connection and group settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// The consumer group every instance joins.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// This instance's stable id; the transactional id is `<group_id>-<instance_id>`.
    /// A number is taken as text (`AUTOGLM__KAFKA__INSTANCE_ID=1`, a StatefulSet ordinal).
    #[serde(default = "default_instance_id", deserialize_with = "text_or_number")]
    pub instance_id: String,
    /// TLS and authentication, typed (`docs/security.md`).
    #[serde(default, skip_serializing_if = "SecurityConfig::is_unset")]
    pub security: SecurityConfig,
    /// SASL password for a `sasl.username` set in `properties`, kept out of logs and
    /// `print-config`. Prefer `security.sasl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<Secret>,
    /// Raw librdkafka properties (tuning). Keys the processor or `security` owns are rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The registry's address and credentials.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:38081/apis/ccompat/v7`.
    pub url: String,
    /// Basic-auth user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// TLS to the registry: a CA to trust besides the system's, and a client certificate and
    /// key for mutual TLS. Needs an https URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// An OAuth2 bearer token by the client-credentials grant, fetched and refreshed by the
    /// processor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthConfig>,
}

/// The origin document's `event_queue` block, mapped onto Kafka.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventQueue {
    /// `true`: exactly once (transactions); `false`: at least once.
    pub persistence: bool,
    /// The RocksDB directory of the version state.
    pub storage_path: PathBuf,
    /// The transaction commit cadence.
    pub flush_interval_ms: u64,
    /// Attempts for a transient failure before the processor waits (it never skips).
    pub max_retry_attempts: u32,
    /// lz4 for produced record batches (unless `kafka.properties` sets `compression.type`) and
    /// in RocksDB.
    pub enable_compression: bool,
}

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue {
            persistence: true,
            storage_path: PathBuf::from("data/state"),
            flush_interval_ms: 100,
            max_retry_attempts: 5,
            enable_compression: false,
        }
    }
}

/// Exponential backoff between retries of a transient failure.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// The first wait, e.g. `1s`.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// The longest wait, e.g. `10s`.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

/// Transaction sizing besides the time cadence.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// A transaction commits after this many input records, or after
    /// `event_queue.flush_interval_ms`, whichever comes first.
    pub max_records: usize,
    /// A transaction also commits once its input keys and values reach this many bytes, so that
    /// large records cannot make a batch huge: the processor holds up to three batches at once
    /// (one in its transaction, two polled ahead). A batch takes at least one record, however
    /// large.
    pub max_bytes: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            // The batch's records, rows and output are held until the commit: 10,000 records of
            // 500 bytes put the peak RSS 35 MiB higher, for 4% more throughput in `make bench`.
            max_records: 5_000,
            // Far above the usual 5,000 records of 0.5–1 KiB: a bound for large records only.
            max_bytes: 16 << 20,
        }
    }
}

/// The version state store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// How long a delete's versioned tombstone blocks late updates, e.g. `7d`.
    #[serde(with = "humantime_serde")]
    pub tombstone_retention: Duration,
    /// RocksDB block cache.
    pub block_cache_bytes: usize,
    /// RocksDB row cache: single entries, for point reads that would miss the block cache; 0
    /// turns it off.
    pub row_cache_bytes: usize,
    /// Bloom filter bits per key of the state; 0 turns the filter off.
    pub bloom_filter_bits_per_key: u32,
    /// No bloom filter on RocksDB's last level, where most keys live: the filter's memory goes
    /// to data blocks, and a read of a key the state lacks costs a block read there.
    pub optimize_filters_for_hits: bool,
    /// Committed state entries the version guard keeps in memory, so that a key changed again
    /// soon is decided without a RocksDB read; 0 turns the cache off.
    pub cache_entries: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            tombstone_retention: Duration::from_secs(7 * 24 * 3600),
            block_cache_bytes: 64 << 20,
            row_cache_bytes: 0,
            bloom_filter_bits_per_key: 10,
            optimize_filters_for_hits: false,
            // About 130 bytes each: 4 MiB. 65,536 took the peak RSS with 1 million keys in the
            // state past 256 MiB (257.7).
            cache_entries: 32_768,
        }
    }
}

/// The HTTP endpoint of `/metrics`, `/health` and `/ready`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` to listen on, e.g. `0.0.0.0:9464`; port `0` takes any free port.
    pub listen: String,
}

impl MetricsConfig {
    /// The listen address (validation has checked that it parses).
    pub fn listen_addr(&self) -> Result<SocketAddr, AddrParseError> {
        self.listen.trim().parse()
    }
}

/// Trace export. The standard `OTEL_*` environment variables, where set, win over these keys
/// (docs/configuration.md says which).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://collector:4318`; spans go to
    /// `<otlp_endpoint>/v1/traces`. Absent: no export (unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces sampled, 0 to 1 (`ParentBased(TraceIdRatioBased)`): a record
    /// whose `traceparent` says sampled is always traced, one that says not sampled never.
    pub sampling_ratio: f64,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// A span per input record, child of its `traceparent`, whose context the output and
    /// dead-letter records carry on. Off: only a span per transaction.
    pub record_spans: bool,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_name: "autoglm".to_owned(),
            record_spans: false,
        }
    }
}

/// One sync route: a source topic (or pattern) to one or more target topics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name; labels metrics and keys the state.
    pub name: String,
    /// Where the changes come from.
    pub source: Source,
    /// Source fields that identify the entity (read from the row, or from the record key).
    pub key_fields: Vec<String>,
    /// Which change is newer: `{ column: version }`, `log_position`, `source_timestamp` or
    /// `{ hlc: { … } }`.
    #[serde(with = "serde_yaml::with::singleton_map")]
    pub version: VersionSource,
    /// How a source row becomes a target row.
    #[serde(default)]
    pub mapping: MappingSpec,
    /// Where aligned records go.
    pub targets: Vec<Target>,
    /// Where records that cannot be processed go, with the reason in headers.
    pub dlq_topic: String,
    /// Where stale and duplicate versions go, if anywhere (otherwise they are only counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_topic: Option<String>,
    /// How a delete is written to the targets.
    #[serde(default)]
    pub delete: DeleteMode,
    /// Whether each output record carries the `autoglm.source.topic`, `.partition` and
    /// `.offset` headers of the input record it came from. Off saves their cost per record
    /// (three headers to build, send, store and parse); `autoglm.version`, `autoglm.op` and
    /// `traceparent` stay.
    #[serde(default = "default_true")]
    pub lineage_headers: bool,
    /// The origin document's per-service maximum QPS: at most this many input records per
    /// second, with bursts. Absent: as fast as it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// A route's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The sustained rate, in input records per second.
    pub records_per_second: u32,
    /// How many records may go at once after a quiet spell; default: one second's worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The burst, defaulting to one second's worth of records.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.records_per_second)
    }
}

fn default_true() -> bool {
    true
}

/// The source of a route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// One topic…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// …or every topic matching this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// `debezium` or `upsert`.
    pub envelope: Envelope,
    /// `avro` or `json`.
    pub encoding: Encoding,
}

/// Where a route's versions come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionSource {
    /// A numeric column, as in optimistic locking: `version: { column: version }`.
    Column(String),
    /// The source log position: PostgreSQL `source.lsn`/`source.sequence`, or the MySQL binlog
    /// file, position and row.
    LogPosition,
    /// The source database's commit timestamp, `source.ts_ms`.
    SourceTimestamp,
    /// A hybrid logical clock column plus a region, ties broken by region priority.
    Hlc(HlcVersion),
}

/// Hybrid-logical-clock versions for multi-region writers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HlcVersion {
    /// Column with the physical time in milliseconds.
    pub physical_column: String,
    /// Column with the logical counter.
    pub logical_column: String,
    /// Column with the writer's region.
    pub region_column: String,
    /// Regions from the lowest to the highest priority; an unknown region ranks lowest.
    pub region_priority: Vec<String>,
}

/// One output topic of a route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The topic.
    pub topic: String,
    /// `avro` (Confluent wire format, schema registered under `<topic>-value`) or `json`.
    pub format: Encoding,
    /// The Avro schema file (`schemas/…avsc`); required for `avro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<PathBuf>,
}

/// How deletes reach the targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// A record with the key and a null value (what compacted topics and Kafka Connect sinks expect).
    #[default]
    Tombstone,
    /// The mapped `before` row, with the header `autoglm.op: d`.
    Record,
}

impl KafkaConfig {
    /// Client settings for this cluster: the raw properties, then the typed security settings
    /// (validation has refused any overlap) and the legacy `sasl_password`.
    pub fn client_settings(
        &self,
        client_id: impl Into<String>,
    ) -> Result<autoglm_kafka::ClientSettings, autoglm_kafka::SettingsError> {
        let mut settings =
            autoglm_kafka::ClientSettings::new(&self.bootstrap_servers).with_client_id(client_id);
        for (key, value) in &self.properties {
            settings = settings.with_property(key, value)?;
        }
        for (key, value) in self.security.librdkafka_properties() {
            settings = settings.with_property(key, value)?;
        }
        if let Some(password) = &self.sasl_password {
            settings = settings.with_property("sasl.password", password.expose())?;
        }
        Ok(settings)
    }
}

impl Config {
    /// The number of attempts for a transient failure: `retries` if set, else
    /// `event_queue.max_retry_attempts`.
    pub fn retry_attempts(&self) -> u32 {
        self.retries.unwrap_or(self.event_queue.max_retry_attempts)
    }

    /// Whether output is exactly once (`event_queue.persistence`).
    pub fn exactly_once(&self) -> bool {
        self.event_queue.persistence
    }

    /// This instance's transactional id.
    pub fn transactional_id(&self) -> String {
        format!("{}-{}", self.kafka.group_id, self.kafka.instance_id)
    }

    /// Resolves relative paths against the config file's folder.
    pub(crate) fn with_base_dir(mut self, base: &Path) -> Config {
        let absolute = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        absolute(&mut self.event_queue.storage_path);
        self.kafka.security.tls = self.kafka.security.tls.map(|t| t.with_base_dir(base));
        if let Some(registry) = &mut self.schema_registry {
            registry.tls = registry.tls.take().map(|t| t.with_base_dir(base));
        }
        for route in &mut self.routes {
            for target in &mut route.targets {
                if let Some(schema) = &mut target.schema {
                    absolute(schema);
                }
            }
        }
        self
    }
}

fn text_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(u64),
    }
    TextOrNumber::deserialize(deserializer)
        .map(|id| match id {
            TextOrNumber::Text(text) => text,
            TextOrNumber::Number(n) => n.to_string(),
        })
        .map_err(|_| serde::de::Error::custom("instance_id: expected a string or a whole number"))
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_log_level() -> String {
    "info".to_owned()
}

fn default_group_id() -> String {
    "open-autoglm".to_owned()
}

fn default_instance_id() -> String {
    "0".to_owned()
}
