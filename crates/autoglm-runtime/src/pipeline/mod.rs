//! The pipeline: a configured processor, and the stages a batch goes through, one module each.
//!
//! ```text
//!  poll ──► prepare (all cores) ──► transact ──► commit ──► state write
//!   │ Polled        │ Prepared        │ Outgoing    │ offsets     (VersionGuard::commit)
//!   └─ Changes ─► rebalance (restore, forget) between transactions
//! ```
//!
//! `consume` is the loop that drives them; this module builds the pipeline (clients, routes,
//! registry), checks what it needs at start (rights, changelog topics, target schemas) and
//! stops it. Data flows one way: no stage calls back into an earlier one.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autoglm_codec::{
    ClientCredentials, CodecError, Compatibility, Decoder, RegistryClient, RegistryTls,
};
use autoglm_config::Config;
use autoglm_core::{Classify, ErrorClass, chain};
use autoglm_kafka::{ClientSettings, ProbeError, classify, is_fencing};
use autoglm_state::{RocksBackend, RocksOptions, StateError, VersionGuard};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::acks::{AckingProducer, Acks};
use crate::group::GroupContext;
use crate::metrics::{Endpoint, Metrics};
use crate::rights::{self, Finding, Verdict};
use crate::route::RouteRuntime;
use crate::traces::Traces;
use poll::Member;
use sizes::SizeLimits;

mod commit;
mod consume;
mod marks;
mod output;
mod poll;
mod prepare;
mod rebalance;
mod sizes;
mod transact;

/// How long closing the Kafka clients at the end of a run may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one blocking transaction call (init, send offsets, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the connection probe at start may take to get the cluster's metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one Schema Registry request may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot be turned into a running pipeline.
    #[error("configuration: {0}")]
    Config(String),
    /// A Kafka error that retrying cannot fix (fenced, authorization, …).
    #[error("kafka ({class}){}", kafka_reason(.source))]
    Kafka {
        /// The error's class.
        class: ErrorClass,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The cluster refused this principal: its credentials, its certificates, or a right it
    /// lacks. The message names which.
    #[error("kafka access: {0}")]
    Access(String),
    /// The state changelog holds a record open-autoglm did not write.
    #[error("state changelog: {0}")]
    Changelog(String),
    /// The schema registry refused to serve the processor (credentials, URL).
    #[error("schema registry")]
    Registry(#[source] CodecError),
    /// The state store failed.
    #[error("state store")]
    State(#[from] StateError),
    /// The schema registry could not register or check a target schema.
    #[error("target schema of {topic}")]
    Schema {
        /// The target topic.
        topic: String,
        /// The registry's error.
        #[source]
        source: CodecError,
    },
}

impl RunError {
    /// Whether this is the producer being fenced ([`is_fencing`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, RunError::Kafka { source, .. }
            if source.rdkafka_error_code().is_some_and(is_fencing))
    }

    /// Whether retrying can help.
    pub fn class(&self) -> ErrorClass {
        match self {
            RunError::Config(_) | RunError::Changelog(_) | RunError::Access(_) => ErrorClass::Fatal,
            RunError::Kafka { class, .. } => *class,
            RunError::State(e) => e.class(),
            RunError::Schema { source, .. } | RunError::Registry(source) => source.class(),
        }
    }
}

/// What an error means for the processor, for the errors librdkafka names only in its own words:
/// being fenced ([`is_fencing`]), a right missing, a batch refused as too large.
fn kafka_reason(error: &KafkaError) -> &'static str {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(code) if is_fencing(code) => {
            ": fenced: another instance took over this transactional id, or the broker ended \
             this instance's open transaction (it stalled past transaction.timeout.ms)"
        }
        Some(C::GroupAuthorizationFailed) => {
            ": the principal lacks READ on the group kafka.group_id, or DESCRIBE on the group \
             `<group_id>-restore` that the state restore uses (docs/security.md)"
        }
        Some(C::TopicAuthorizationFailed) => {
            ": the principal lacks READ on a source topic, or READ/WRITE on a changelog \
             (docs/security.md)"
        }
        Some(C::MessageSizeTooLarge) => {
            ": a topic refused a record batch as too large. The processor reads each written \
             topic's max.message.bytes at start, dead-letters a record above it and keeps its \
             batches below the smallest: restart it to read a limit lowered since; if it cannot \
             read them (no DESCRIBE_CONFIGS on the topic), grant that, or set \
             kafka.properties batch.size and message.max.bytes below the topic's limit"
        }
        _ => "",
    }
}

impl From<KafkaError> for RunError {
    fn from(source: KafkaError) -> RunError {
        RunError::Kafka {
            class: classify(&source),
            source,
        }
    }
}

/// The registry's certificates, read from their PEM files.
fn registry_tls(tls: &autoglm_config::TlsConfig) -> Result<RegistryTls, RunError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            RunError::Config(format!(
                "schema_registry.tls.{key}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let ca_pem = tls.ca.as_deref().map(|p| read("ca", p)).transpose()?;
    let identity_pem = match (&tls.certificate, &tls.key) {
        (Some(certificate), Some(key)) => {
            let mut pem = read("certificate", certificate)?;
            pem.push(b'\n');
            pem.extend(read("key", key)?);
            Some(pem)
        }
        _ => None,
    };
    Ok(RegistryTls {
        ca_pem,
        identity_pem,
    })
}

/// How long to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this long without any input record (demos, tests), counted from the last
    /// record or the last assignment of partitions, whichever is later (a restore is not
    /// idleness). `None`: run until cancelled.
    pub exit_when_idle: Option<Duration>,
    /// Cancelled on SIGTERM/ctrl-c: the open batch is committed, then the pipeline stops.
    pub shutdown: CancellationToken,
    /// Go on when a route's key fields or version source changed over existing state (the
    /// `layout` module); such a run is refused otherwise.
    pub accept_layout_change: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Input records read and committed.
    pub records: u64,
    /// Records written to target topics (one per target).
    pub emitted: u64,
    /// Records dropped by the version guard (stale, duplicate, superseded by the stream).
    pub dropped: u64,
    /// Records sent to a dead-letter topic.
    pub dead_lettered: u64,
    /// Debezium tombstones skipped (the delete before them carried the change).
    pub tombstones: u64,
    /// Committed transactions (or offset commits, at least once).
    pub commits: u64,
    /// Batches that were aborted and retried.
    pub retries: u64,
    /// Changelog records replayed into the state store at start (the tail after its checkpoint).
    pub restored: u64,
    /// Producers the broker fenced (their transaction timed out) that the run made again.
    pub new_producers: u64,
}

impl RunSummary {
    /// Adds what a committed batch did: its counts, and one commit.
    fn add_committed(&mut self, batch: &RunSummary) {
        self.records += batch.records;
        self.emitted += batch.emitted;
        self.dropped += batch.dropped;
        self.dead_lettered += batch.dead_lettered;
        self.tombstones += batch.tombstones;
        self.commits += 1;
    }
}

/// A transient failure inside one batch: abort, back off, retry the batch.
#[derive(Debug)]
struct Transient(String);

enum BatchError {
    Transient(Transient),
    Fatal(RunError),
}

impl From<KafkaError> for BatchError {
    fn from(e: KafkaError) -> BatchError {
        match classify(&e) {
            ErrorClass::Transient => BatchError::Transient(Transient(e.to_string())),
            ErrorClass::Fatal => BatchError::Fatal(e.into()),
            // A record batch the broker refused (too large, invalid): a retry would send the
            // same batch again, for ever. Stop, saying why (`kafka_reason`).
            ErrorClass::Poison => BatchError::Fatal(RunError::Kafka {
                class: ErrorClass::Fatal,
                source: e,
            }),
        }
    }
}

impl From<StateError> for BatchError {
    fn from(e: StateError) -> BatchError {
        match e.class() {
            ErrorClass::Transient => BatchError::Transient(Transient(e.to_string())),
            _ => BatchError::Fatal(e.into()),
        }
    }
}

/// What the registry says about one Avro target schema (see [`Pipeline::check_schemas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaCheck {
    /// The target topic.
    pub topic: String,
    /// Its registry subject, `<topic>-value`.
    pub subject: String,
    /// The registry's verdict.
    pub compatibility: Compatibility,
}

/// A configured pipeline, ready to run.
pub struct Pipeline {
    config: Config,
    settings: ClientSettings,
    routes: Arc<[RouteRuntime]>,
    decoder: Decoder,
    registry: Option<RegistryClient>,
    metrics: Metrics,
    /// Benchmark baseline: copy records unchanged (see [`Pipeline::pass_through`]).
    pass_through: bool,
    /// Span export (see [`Pipeline::with_traces`]); off by default.
    traces: Traces,
    /// How large a record each written topic takes, read from the broker at start.
    sizes: std::sync::RwLock<Arc<SizeLimits>>,
    /// What each input offset commit carries beside the offset.
    marks: marks::Marks,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("routes", &self.routes.len())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Compiles the routes of a validated config.
    pub fn new(config: Config) -> Result<Pipeline, RunError> {
        let mut settings = config
            .kafka
            .client_settings(format!("autoglm-{}", config.kafka.instance_id))
            .map_err(|e| RunError::Config(e.to_string()))?;
        if config.routes.iter().any(|r| r.rate_limit.is_some()) {
            // A resumed partition joins the next fetch request only when the one in flight
            // returns, and the broker holds an idle fetch up to fetch.wait.max.ms (librdkafka's
            // 500): a route limited to 400 records/s with a burst of 100 ran at 197 (rate_limit.rs).
            // 50 ms: 388–390.
            settings = settings.with_member_default("fetch.wait.max.ms", "50");
        }
        // The consumer-lag gauge comes from librdkafka's statistics (group.rs).
        settings = settings.with_member_default("statistics.interval.ms", "5000");
        if config.event_queue.enable_compression
            && !config.kafka.properties.contains_key("compression.type")
        {
            // lz4, not zstd: the full exactly-once pipeline ran ×1.20 faster in `make bench`,
            // for ×1.55 the bytes (docs/configuration.md).
            settings = settings
                .with_producer_property("compression.type", "lz4")
                .map_err(|e| RunError::Config(e.to_string()))?;
        }
        let registry_error = |e: CodecError| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            RunError::Config(format!("schema_registry.url: {e}{cause}"))
        };
        let registry = match &config.schema_registry {
            Some(r) => {
                let mut client =
                    RegistryClient::new(&r.url, REGISTRY_TIMEOUT).map_err(registry_error)?;
                if let Some(user) = &r.username {
                    client = client.with_basic_auth(user, r.password.as_ref().map(|p| p.expose()));
                }
                if let Some(tls) = &r.tls {
                    client = client
                        .with_tls(registry_tls(tls)?)
                        .map_err(registry_error)?;
                }
                if let Some(oauth) = &r.oauth {
                    client = client.with_bearer(ClientCredentials {
                        client_id: oauth.client_id.clone(),
                        client_secret: oauth.client_secret.expose().to_owned(),
                        token_endpoint: oauth.token_endpoint.clone(),
                        scope: oauth.scope.clone(),
                    });
                }
                Some(client)
            }
            None => None,
        };
        let sr_settings = registry
            .as_ref()
            .map(RegistryClient::sr_settings)
            .transpose()
            .map_err(registry_error)?;
        let routes = config
            .routes
            .iter()
            .map(|route| {
                RouteRuntime::compile(&config, route, sr_settings.as_ref())
                    .map_err(|e| RunError::Config(format!("route {}: {e}", route.name)))
            })
            .collect::<Result<Arc<[_]>, _>>()?;
        let metrics = Metrics::new(
            routes.iter().map(|r| {
                (
                    r.name.as_str(),
                    r.targets.iter().map(|t| t.topic()).collect(),
                )
            }),
            // Longer than any one turn of the loop: two transaction calls and a backoff.
            Duration::from_secs(120) + config.backoff.max_interval,
        )
        .map_err(|e| RunError::Config(format!("metrics: {e}")))?;
        let sizes = SizeLimits::client_only(
            config
                .kafka
                .properties
                .get("message.max.bytes")
                .map(String::as_str),
        );
        Ok(Pipeline {
            sizes: std::sync::RwLock::new(Arc::new(sizes)),
            marks: marks::Marks::new(&config)?,
            metrics,
            decoder: Decoder::new(sr_settings).after_only(),
            config,
            settings,
            routes,
            registry,
            pass_through: false,
            traces: Traces::off(),
        })
    }

    /// Exports a span per transaction through `traces` (and per record, if it says so); the
    /// output and dead-letter records of a sampled record span carry that span's context.
    pub fn with_traces(mut self, traces: Traces) -> Pipeline {
        self.traces = traces;
        self
    }

    /// This pipeline's metrics and probes (what `metrics.listen` serves).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Asks the registry, for every Avro target in config order, whether its schema may be
    /// registered under `<topic>-value` by the subject's compatibility level. Registers nothing:
    /// run it before [`register_schemas`](Self::register_schemas) or a deployment. An
    /// incompatible schema is a result, not an error; an unreachable or refusing registry is.
    pub async fn check_schemas(&self) -> Result<Vec<SchemaCheck>, RunError> {
        let mut checks = Vec::new();
        for route in self.routes.iter() {
            for target in &route.targets {
                if let crate::route::TargetRuntime::Avro { topic, avro } = target {
                    let registry = self.registry.as_ref().ok_or_else(|| {
                        RunError::Config("avro targets need `schema_registry`".to_owned())
                    })?;
                    let compatibility =
                        avro.check_compatibility(registry).await.map_err(|source| {
                            RunError::Schema {
                                topic: topic.clone(),
                                source,
                            }
                        })?;
                    checks.push(SchemaCheck {
                        topic: topic.clone(),
                        subject: avro.subject().to_owned(),
                        compatibility,
                    });
                }
            }
        }
        Ok(checks)
    }

    /// The benchmark baseline (`autoglm run --pass-through`): the same consumer, producer, poll
    /// loop and commits, but every record goes unchanged to its route's first target — no
    /// decoding, no version state, no mapping, no changelog.
    pub fn pass_through(mut self) -> Pipeline {
        self.pass_through = true;
        self
    }

    /// Registers every Avro target schema (topic-name strategy) and returns `(topic, id)` pairs.
    pub async fn register_schemas(&self) -> Result<Vec<(String, u32)>, RunError> {
        let mut ids = Vec::new();
        for route in self.routes.iter() {
            for target in &route.targets {
                if let crate::route::TargetRuntime::Avro { topic, avro } = target {
                    let id = avro.register().await.map_err(|source| RunError::Schema {
                        topic: topic.clone(),
                        source,
                    })?;
                    ids.push((topic.clone(), id));
                }
            }
        }
        Ok(ids)
    }

    /// Runs until cancelled, idle for `exit_when_idle`, or a fatal error.
    pub async fn run(self, options: RunOptions) -> Result<RunSummary, RunError> {
        self.metrics.beat();
        let endpoint = match &self.config.metrics {
            Some(m) => {
                let addr = m
                    .listen_addr()
                    .map_err(|e| RunError::Config(format!("metrics.listen: {e}")))?;
                let endpoint = Endpoint::start(addr, self.metrics.clone())
                    .await
                    .map_err(|e| RunError::Config(format!("metrics.listen: {addr}: {e}")))?;
                Some(endpoint)
            }
            None => None,
        };
        let state_path = self.config.event_queue.storage_path.clone();
        let rocks = RocksOptions {
            block_cache_bytes: self.config.state.block_cache_bytes,
            row_cache_bytes: self.config.state.row_cache_bytes,
            bloom_filter_bits_per_key: self.config.state.bloom_filter_bits_per_key,
            optimize_filters_for_hits: self.config.state.optimize_filters_for_hits,
            compression: self.config.event_queue.enable_compression,
            tombstone_retention_ms: Some(self.tombstone_retention_ms()),
            ..RocksOptions::default()
        };
        // A store RocksDB finds corrupt is never trusted: it is set aside and rebuilt.
        let (backend, _set_aside) = RocksBackend::open_or_set_aside(&state_path, rocks)?;
        let result = self.serve(&backend, options).await;
        self.metrics.stopped();
        // Close the store before returning: RocksDB's background jobs must be finished before
        // the process exits, or its static destructors race them (an abort at exit).
        if let Err(error) = backend.close().await {
            tracing::warn!(error = %chain(&error), "closing the state store");
        }
        if let Some(endpoint) = endpoint {
            endpoint.stop().await;
        }
        result
    }

    fn tombstone_retention_ms(&self) -> i64 {
        i64::try_from(self.config.state.tombstone_retention.as_millis()).unwrap_or(i64::MAX)
    }

    async fn serve(
        &self,
        backend: &RocksBackend,
        options: RunOptions,
    ) -> Result<RunSummary, RunError> {
        let exactly_once = self.config.exactly_once();
        let state_path = &self.config.event_queue.storage_path;
        let accept = options.accept_layout_change;
        let unvouched = crate::layout::check(state_path, &self.config, accept)?;
        (self.marks).set_unvouched(&self.config, (state_path, &unvouched), accept);
        let mut guard = VersionGuard::new(backend.clone(), self.tombstone_retention_ms())
            .with_cache(self.config.state.cache_entries);

        // The broker may be away at start (a bounce, a rolling restart): wait for it. Refused
        // credentials or certificates are not waited out: they stop the run here, before it
        // reads or writes anything.
        self.retry_transient("connecting to kafka", &options.shutdown, || async {
            match autoglm_kafka::probe(&self.settings, PROBE_TIMEOUT).await {
                Ok(_) => Ok(()),
                Err(e @ ProbeError::Access { .. }) => Err(RunError::Access(format!(
                    "{}: {e}",
                    self.settings.bootstrap_servers()
                ))),
                Err(ProbeError::NoAnswer { source, .. }) => Err(RunError::Kafka {
                    class: ErrorClass::Transient,
                    source,
                }),
            }
        })
        .await?;
        self.refuse_missing_rights().await?;
        self.retry_transient("changelog topic setup", &options.shutdown, || {
            self.ensure_changelogs()
        })
        .await?;
        self.retry_transient("target schema registration", &options.shutdown, || {
            self.register_schemas()
        })
        .await?;

        self.read_size_limits().await;
        // The producer first: init_transactions aborts this instance's own open transaction
        // (after a kill), which would otherwise hold back the changelog's committed end that
        // the restore of an assigned partition reads up to.
        let mut producer = self.producer(&options.shutdown).await?;
        self.metrics.producer_ready();
        let consumer: Arc<Member> = Arc::new(self.settings.member_consumer(
            &self.config.kafka.group_id,
            &self.config.transactional_id(),
            GroupContext::new(
                self.metrics.assigned_partitions(),
                self.metrics.consumer_lag(),
            ),
        )?);
        let subscriptions: Vec<String> =
            self.routes.iter().map(RouteRuntime::subscription).collect();
        let topics: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(
            routes = self.routes.len(),
            exactly_once,
            transactional_id = %self.config.transactional_id(),
            kafka = %self.config.kafka.bootstrap_servers,
            security = %self.config.kafka.security.describe(),
            state = %state_path.display(),
            "pipeline started"
        );

        let result = self
            .consume(&consumer, &mut producer, &mut guard, &options)
            .await;
        // Leave the group cleanly, after a fatal error too (a transaction it left open is
        // aborted by the broker when it times out). Closing the clients blocks (the consumer
        // serves its last rebalance, the producer flushes): on a thread of its own, not the
        // runtime's blocking pool, and bounded, so that a stuck close can hold neither the
        // process past its deadline nor the runtime's shutdown.
        consumer.unsubscribe();
        let (closed, close) = tokio::sync::oneshot::channel();
        let closing = move || {
            drop((consumer, producer));
            let _ = closed.send(());
        };
        if let Err(e) = std::thread::Builder::new()
            .name("autoglm-close".into())
            .spawn(closing)
        {
            tracing::warn!(error = %e, "no thread to close the Kafka clients on; they closed on the runtime");
        }
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::warn!(
                timeout_secs = CLOSE_TIMEOUT.as_secs(),
                "the Kafka clients did not close in time; going on (the broker expires the session)"
            );
        }
        result
    }

    /// Reads `max.message.bytes` of every topic the pipeline writes (see the `sizes` module):
    /// the dead-letter rule `size` and the producer's [`batch_size`](Self::batch_size) use them.
    async fn read_size_limits(&self) {
        let properties = &self.config.kafka.properties;
        let mut written: Vec<&str> = Vec::new();
        for route in self.routes.iter() {
            written.extend(route.targets.iter().map(|t| t.topic()));
            written.push(&route.dlq_topic);
            written.extend(route.audit_topic.as_deref());
            written.push(&route.changelog_topic);
        }
        written.sort_unstable();
        written.dedup();
        let limits = sizes::describe(
            &self.settings,
            &written,
            properties.get("message.max.bytes").map(String::as_str),
            PROBE_TIMEOUT,
        )
        .await;
        tracing::debug!(?limits, "record size limits");
        *self
            .sizes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(limits);
    }

    /// The producer's `batch.size`: the config's, or the smallest limit of the written topics.
    fn batch_size(&self) -> String {
        self.config
            .kafka
            .properties
            .get("batch.size")
            .cloned()
            .unwrap_or_else(|| self.size_limits().smallest().min(1_000_000).to_string())
    }

    /// A new producer: transactional, with its transactions initialised (which waits for the
    /// broker, and fences any earlier producer of this transactional id), or plain at least
    /// once.
    async fn producer(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Arc<AckingProducer>, RunError> {
        let batch_size = self.batch_size();
        if !self.config.exactly_once() {
            return Ok(Arc::new(
                self.settings
                    .producer_config()
                    .set("batch.size", &batch_size)
                    .create_with_context(Acks::default())?,
            ));
        }
        let producer: Arc<AckingProducer> = Arc::new(
            self.settings
                .transactional_config(&self.config.transactional_id())
                .set("batch.size", &batch_size)
                .create_with_context(Acks::default())?,
        );
        self.retry_transient("init_transactions", shutdown, || {
            let p = Arc::clone(&producer);
            async move {
                tokio::task::spawn_blocking(move || p.init_transactions(TXN_TIMEOUT))
                    .await
                    .map_err(|e| RunError::Config(format!("init_transactions task: {e}")))?
                    .map_err(|e| self.access_error(e))
            }
        })
        .await?;
        Ok(producer)
    }

    /// The size limits of the written topics, as last read.
    fn size_limits(&self) -> Arc<SizeLimits> {
        Arc::clone(
            &self
                .sizes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let b = &self.config.backoff;
        let factor = b
            .multiplier
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        b.initial_interval
            .mul_f64(factor.min(1e6))
            .min(b.max_interval)
    }

    /// The Kafka client settings (address, security).
    pub fn client_settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The config it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The compiled routes, in config order (the DLQ and state tools).
    pub(crate) fn routes(&self) -> &[RouteRuntime] {
        &self.routes
    }

    /// The decoder of source records (the DLQ tools show values with it).
    pub(crate) fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The registry client, when the config has a registry.
    pub fn registry(&self) -> Option<&RegistryClient> {
        self.registry.as_ref()
    }

    /// What the broker says of each right the config needs (KIP-430; `autoglm check`).
    pub async fn check_rights(
        &self,
        timeout: Duration,
    ) -> Result<Vec<Finding>, autoglm_rights::RightsError> {
        rights::check(
            &self.settings,
            rights::needs(&self.config, &self.routes),
            timeout,
        )
        .await
    }

    /// Stops the run, naming every right the principal lacks, before it reads or writes
    /// anything. A broker that cannot tell does not stop it: a missing right then stops the run
    /// when the broker first refuses it.
    async fn refuse_missing_rights(&self) -> Result<(), RunError> {
        let findings = match self.check_rights(PROBE_TIMEOUT).await {
            Ok(findings) => findings,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the broker for this principal's rights (KIP-430); going on");
                return Ok(());
            }
        };
        let missing: Vec<String> = findings
            .iter()
            .filter(|f| matches!(f.verdict, Verdict::Missing(_)))
            .map(|f| {
                let n = &f.need;
                format!("{} on {} {:?} ({})", n.operation, n.resource, n.name, n.why)
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(RunError::Access(format!(
            "the principal lacks {} (`autoglm check --config …` lists every right)",
            missing.join("; ")
        )))
    }

    /// A refused right named in ACL terms, with the resource it is refused on; other errors
    /// as they are.
    fn access_error(&self, error: KafkaError) -> RunError {
        use RDKafkaErrorCode as C;
        let id = self.config.transactional_id();
        let group = &self.config.kafka.group_id;
        let right = match error.rdkafka_error_code() {
            Some(C::TransactionalIdAuthorizationFailed) => {
                format!("WRITE on TransactionalId {id:?} (and DESCRIBE)")
            }
            Some(C::GroupAuthorizationFailed) => format!("READ on Group {group:?}"),
            Some(C::ClusterAuthorizationFailed) => "IDEMPOTENT_WRITE on the Cluster".to_owned(),
            Some(C::TopicAuthorizationFailed) => {
                "READ on the source topics, or WRITE on the targets, DLQ and changelogs".to_owned()
            }
            _ => return RunError::from(error),
        };
        RunError::Access(format!("the principal lacks {right}: {error}"))
    }

    /// Creates each route's compacted changelog topic if it is missing, partitioned like its
    /// source.
    async fn ensure_changelogs(&self) -> Result<(), RunError> {
        let admin: AdminClient<DefaultClientContext> = self.settings.client_config().create()?;
        let settings = self.settings.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            let consumer: rdkafka::consumer::BaseConsumer = settings.client_config().create()?;
            consumer.fetch_metadata(None, Duration::from_secs(10))
        })
        .await
        .map_err(|e| RunError::Config(format!("metadata task: {e}")))??;
        let partitions_of = |route: &RouteRuntime| {
            metadata
                .topics()
                .iter()
                .filter(|t| route.matches(t.name()))
                .map(|t| t.partitions().len())
                .max()
                .unwrap_or(1)
        };
        let existing: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        let missing: Vec<(String, i32)> = self
            .routes
            .iter()
            .filter(|r| !existing.contains(&r.changelog_topic.as_str()))
            .map(|r| {
                (
                    r.changelog_topic.clone(),
                    i32::try_from(partitions_of(r)).unwrap_or(1),
                )
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(name, partitions)| {
                NewTopic::new(name, *partitions, TopicReplication::Fixed(-1))
                    .set("cleanup.policy", "compact")
            })
            .collect();
        for result in admin
            .create_topics(
                &new_topics,
                &AdminOptions::new().operation_timeout(Some(TXN_TIMEOUT)),
            )
            .await?
        {
            match result {
                Ok(topic) => tracing::info!(%topic, "created changelog topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(RunError::Config(format!(
                        "cannot create changelog topic {topic}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs `step` until it succeeds, retrying transient failures with the configured backoff.
    /// After the configured attempts it keeps waiting and says so once a minute; it never gives
    /// up on a transient failure, only on shutdown or a non-transient error.
    async fn retry_transient<T, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut step: F,
    ) -> Result<T, RunError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RunError>>,
    {
        let mut attempt = 0u32;
        let mut last_alarm: Option<Instant> = None;
        loop {
            self.metrics.beat();
            let error = match step().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if error.class() != ErrorClass::Transient {
                return Err(error);
            }
            attempt += 1;
            let wait = self.backoff(attempt);
            if attempt <= self.config.retry_attempts() {
                tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, error = %chain(&error), "{what} failed; retrying");
            } else if last_alarm.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_alarm = Some(Instant::now());
                tracing::error!(attempt, error = %chain(&error), "{what} still failing after the configured attempts; waiting, not skipping");
            }
            tokio::select! {
                () = shutdown.cancelled() => return Err(error),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A pipeline for the stages' unit tests: one upsert JSON route (`accounts`, key `id`, version
/// `rev`, `name` renamed `display_name`) to a JSON target, and no registry. Building it reaches
/// no server.
#[cfg(test)]
fn test_pipeline() -> Pipeline {
    let yaml = r#"
kafka: { bootstrap_servers: "127.0.0.1:1", group_id: unit }
event_queue: { storage_path: /nonexistent/unit }
routes:
  - name: accounts
    source: { topic: in.accounts, envelope: upsert, encoding: json }
    key_fields: [id]
    version: { column: rev }
    mapping: { rename: { name: display_name } }
    targets: [ { topic: out.accounts, format: json } ]
    dlq_topic: in.accounts.dlq
"#;
    let config = autoglm_config::parse(
        yaml,
        "unit.yaml",
        std::path::Path::new("../.."),
        autoglm_config::Overrides::None,
    )
    .expect("valid config");
    Pipeline::new(config).expect("pipeline")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_the_broker_refuses_as_too_large_stops_the_run_saying_how_to_go_on() {
        let refused = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let BatchError::Fatal(error) = BatchError::from(refused) else {
            panic!("retried: the same batch would be refused again");
        };
        assert_eq!(error.class(), ErrorClass::Fatal);
        let message = error.to_string();
        assert!(message.contains("max.message.bytes"), "{message}");
        assert!(message.contains("restart"), "{message}");
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut);
        assert!(matches!(
            BatchError::from(timeout),
            BatchError::Transient(_)
        ));
    }

    #[test]
    fn fencing_errors_say_what_happened() {
        let stalled = RunError::from(KafkaError::MessageProduction(
            RDKafkaErrorCode::InvalidTransactionalState,
        ));
        assert!(
            stalled.to_string().starts_with("kafka (fatal): fenced: "),
            "{stalled}"
        );
        let outage = RunError::from(KafkaError::MessageProduction(
            RDKafkaErrorCode::AllBrokersDown,
        ));
        assert_eq!(outage.to_string(), "kafka (transient)");
    }
}
