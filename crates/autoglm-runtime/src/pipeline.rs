//! The poll → process → commit loop.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autoglm_codec::{
    ClientCredentials, CodecError, Compatibility, Decoded, Decoder, RegistryClient, RegistryTls,
    SchemaMissing,
};
use autoglm_config::{Config, DeleteMode};
use autoglm_core::{ChangeEvent, Classify, ErrorClass, Row, chain};
use autoglm_kafka::{ClientSettings, ProbeError, classify, is_fencing};
use autoglm_state::{
    Change, Decision, GuardInput, KvBackend, RocksBackend, RocksOptions, StateError, VersionGuard,
    WriteRequest,
};
use foldhash::HashMapExt as _;
use rayon::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::acks::{AckingProducer, Acks, Kind, Ticket, Undelivered, Written};
use crate::group::{Changes, GroupContext, Partition};
use crate::metrics::{Endpoint, Metrics, Stage, Tally};
use crate::restore::restore;
use crate::rights::{self, Finding, Verdict};
use crate::route::RouteRuntime;
use crate::throttle::{Throttle, Throttling, resume_on_time};
use crate::traces::{self, Decided, Propagated, RecordSpans, Traces};

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
    #[error("kafka ({class}){}", fenced_reason(.source))]
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

/// What being fenced means ([`is_fencing`]), for the errors that say so only in librdkafka's
/// words.
fn fenced_reason(error: &KafkaError) -> &'static str {
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
            ErrorClass::Fatal => BatchError::Fatal(e.into()),
            _ => BatchError::Transient(Transient(e.to_string())),
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

/// One record on its way through a batch.
struct Work {
    /// Index into the batch, set when the batch is processed (the batch may have lost records
    /// of revoked partitions since it was prepared).
    at: usize,
    route: usize,
    event: ChangeEvent,
    state_key: Vec<u8>,
    /// The output records' key.
    output_key: Vec<u8>,
    change: Change,
    /// The mapped row (`after`, or `before` for deletes written as records); `None` for a
    /// delete written as a tombstone.
    mapped: Option<Mapped>,
}

/// A mapped row, as the parallel pass left it.
enum Mapped {
    /// Encoded for each of the route's targets, in order. The row itself is gone: the batch
    /// holds only the bytes.
    Encoded(Vec<Result<Vec<u8>, CodecError>>),
    /// A target's schema id was not known yet: the batch encodes the row, which registers it.
    Row(Row),
}

/// Below this many records per thread, splitting a batch's decode and encode across threads
/// costs more than it saves.
const PARALLEL_MIN_RECORDS: usize = 64;

/// What the parallel pass of a batch made of one input record.
#[allow(
    clippy::large_enum_variant,
    reason = "work is the common case; boxing it costs an allocation per record"
)]
enum Prepared {
    /// No route reads the record's topic.
    Unrouted,
    /// Benchmark baseline: copy the record to the route's first target.
    PassThrough(usize),
    /// A Debezium tombstone of this route.
    Tombstone(usize),
    /// A truncate event of this route: not propagated.
    Truncate(usize),
    /// The record's writer schema is not fetched yet: decode it on the async path.
    SchemaMissing(usize),
    /// The registry could not answer: retry the batch.
    Transient(String),
    /// The registry refused to serve the processor.
    Fatal(CodecError),
    /// Poison: to this route's dead-letter topic.
    DeadLetter(usize, Poison),
    /// Decoded, keyed, versioned and mapped.
    Work(Work),
}

/// Changelog checkpoints: `(topic, partition, next offset)`.
type Checkpoints = Vec<(String, i32, i64)>;

/// Why a record is dead-lettered (the DLQ headers).
struct Poison {
    class: ErrorClass,
    message: String,
    rule: String,
    field: String,
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
        Ok(Pipeline {
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
        let backend = RocksBackend::open(&state_path, rocks)?;
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

        // The producer first: init_transactions aborts this instance's own open transaction
        // (after a kill), which would otherwise hold back the changelog's committed end that
        // the restore of an assigned partition reads up to.
        let producer: Arc<AckingProducer> = if exactly_once {
            let producer: Arc<AckingProducer> = Arc::new(
                self.settings
                    .transactional_config(&self.config.transactional_id())
                    .create_with_context(Acks::default())?,
            );
            self.retry_transient("init_transactions", &options.shutdown, || {
                let p = Arc::clone(&producer);
                async move {
                    tokio::task::spawn_blocking(move || p.init_transactions(TXN_TIMEOUT))
                        .await
                        .map_err(|e| RunError::Config(format!("init_transactions task: {e}")))?
                        .map_err(|e| self.access_error(e))
                }
            })
            .await?;
            producer
        } else {
            Arc::new(
                self.settings
                    .producer_config()
                    .create_with_context(Acks::default())?,
            )
        };
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
            .consume(&consumer, &producer, &mut guard, &options)
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

    /// The poll loop: batch after batch until cancelled, idle for `exit_when_idle`, or a
    /// fatal error.
    async fn consume(
        &self,
        consumer: &Arc<Member>,
        producer: &Arc<AckingProducer>,
        guard: &mut VersionGuard<RocksBackend>,
        options: &RunOptions,
    ) -> Result<RunSummary, RunError> {
        let exactly_once = self.config.exactly_once();
        let limits = Limits {
            flush: Duration::from_millis(self.config.event_queue.flush_interval_ms),
            records: self.config.commit.max_records,
            bytes: self.config.commit.max_bytes,
        };
        let mut summary = RunSummary::default();
        let mut last_record = Instant::now();
        let mut failures = Failures::default();
        let mut tally = self.metrics.tally();
        // How old a batch's first record is when the batch closes (`closing_age`), and what the
        // last batches took from closing to their commit. In microseconds: an atomic, because
        // the loop's future must be `Send`.
        let close_age = AtomicU64::new(micros(limits.flush));
        let mut lead = Duration::ZERO;
        let throttling = Arc::new(Throttling::new(
            Throttle::new(self.config.routes.iter().map(|r| r.rate_limit)),
            Arc::clone(&self.routes),
            self.metrics.clone(),
        ));
        // Paused routes resume on time, while this loop is busy with a transaction too.
        let _resumer = (!throttling.is_off()).then(|| {
            let stop = options.shutdown.child_token();
            tokio::spawn(resume_on_time(
                Arc::clone(&throttling),
                Arc::clone(consumer),
                stop.clone(),
            ));
            stop.drop_guard()
        });
        let poll = async |into: &mut Polled, wait, changes: &mut Changes| {
            let shutdown = &options.shutdown;
            let limits = Limits {
                flush: Duration::from_micros(close_age.load(Ordering::Relaxed)),
                ..limits
            };
            poll_batch(consumer, into, wait, limits, shutdown, changes, &throttling).await
        };
        // The next batch: records polled, the first of them maybe prepared already. And the
        // records polled beyond it, if any.
        let mut next = Polled::default();
        let mut later = Polled::default();
        // The group changes of the polls beside the last state write.
        let mut filled = None;
        loop {
            self.metrics.beat();
            if options.shutdown.is_cancelled() {
                break;
            }
            // Records polled ahead are input: never idle with them in hand.
            if let Some(idle) = options.exit_when_idle
                && next.batch.is_empty()
                && later.batch.is_empty()
                && last_record.elapsed() >= idle
            {
                tracing::info!(idle_secs = idle.as_secs(), "no input for a while; stopping");
                break;
            }
            // Polls run only here and beside the state write, with no transaction open: a
            // revocation never meets one (see `group`).
            let changes = match filled.take() {
                Some(changes) => changes,
                None => {
                    let mut changes = Changes::default();
                    poll(&mut next, Wait::Cadence, &mut changes).await?;
                    changes
                }
            };
            // A newly assigned partition may hold input, and its restore (which may wait for a
            // stalled owner's transaction, up to 25 s) is not idleness: the idle clock starts
            // again once the partitions are ready. An instance that took a stalled one's
            // partitions once stopped right after their restore, with their input unread.
            let assigned = !changes.assigned.is_empty();
            summary.restored += self.follow_group(guard, changes).await?;
            if assigned {
                last_record = Instant::now();
            }
            let mut current = std::mem::take(&mut next);
            next = std::mem::take(&mut later);
            if current.batch.is_empty() {
                continue;
            }
            self.prepare_rest(&mut current);
            // What the consumer holds already is the batch after this one. It is prepared
            // while this one's records are acknowledged, when the cores would idle.
            let mut changes = Changes::default();
            poll(&mut next, Wait::Never, &mut changes).await?;
            current.retain_owned(&changes.revoked);
            summary.restored += self.follow_group(guard, changes).await?;
            if current.batch.is_empty() {
                continue;
            }
            last_record = Instant::now();
            let Polled {
                batch,
                prepared,
                started,
                closed,
                ..
            } = current;
            if let (Some(started), Some(closed)) = (started, closed) {
                self.metrics.stage(Stage::Fill, closed - started);
                self.metrics.stage(Stage::Queue, closed.elapsed());
            }
            // Span::none() and no record spans unless traces are exported.
            let transaction = self.traces.transaction(&batch, &self.routes, exactly_once);
            let mut spans = self.traces.records(&transaction, SystemTime::now());
            match self
                .process(
                    &batch,
                    prepared,
                    &mut next,
                    consumer,
                    producer,
                    guard,
                    exactly_once,
                    &mut tally,
                    &mut spans,
                )
                .instrument(transaction.clone())
                .await
            {
                Ok((batch_summary, checkpoints)) => {
                    traces::committed(&transaction, &batch_summary);
                    spans.finish("committed", None);
                    drop(transaction);
                    summary.records += batch_summary.records;
                    summary.emitted += batch_summary.emitted;
                    summary.dropped += batch_summary.dropped;
                    summary.dead_lettered += batch_summary.dead_lettered;
                    summary.tombstones += batch_summary.tombstones;
                    summary.commits += 1;
                    self.metrics.committed(&mut tally, started);
                    if let Some(closed) = closed {
                        lead = (lead * 3 + closed.elapsed()) / 4;
                        let age = closing_age(limits.flush, lead);
                        close_age.store(micros(age), Ordering::Relaxed);
                    }
                    failures = Failures::default();
                    // Kafka has committed: now, and only now, the state follows. The next batch
                    // is filled and prepared meanwhile. `join!` polls the write first, so it is
                    // on its way before the prepare takes the cores. This batch's records go
                    // first: three batches at once would raise the peak memory.
                    drop(batch);
                    let write = async {
                        let started = Instant::now();
                        let written = guard.commit(checkpoints).await;
                        (written, started.elapsed())
                    };
                    let ((written, writing), polled) = tokio::join!(write, async {
                        let mut changes = Changes::default();
                        poll(&mut next, Wait::Cadence, &mut changes).await?;
                        self.prepare_rest(&mut next);
                        // The batch after it, taken now rather than when the next one starts.
                        let mut after = Changes::default();
                        poll(&mut later, Wait::Never, &mut after).await?;
                        // Only what this second poll revoked. A partition the first poll
                        // revoked was dropped from `next` then, and if it was assigned again,
                        // what `next` holds of it since was read from its committed offset.
                        // Dropping that too skipped those records, and the batch after
                        // committed offsets past them: a session timeout that revoked and
                        // re-assigned a partition within one poll lost 236 records in a chaos
                        // run.
                        next.retain_owned(&after.revoked);
                        changes.merge(after);
                        Ok::<_, RunError>(changes)
                    });
                    if let Err(e) = written {
                        guard.abort();
                        return Err(e.into());
                    }
                    self.metrics.stage(Stage::StateWrite, writing);
                    fail::fail_point!("after_state_write");
                    filled = Some(polled?);
                }
                Err(BatchError::Fatal(e)) => {
                    let reason = chain(&e).to_string();
                    traces::failed(&transaction, "failed", &reason);
                    spans.finish("failed", Some(&reason));
                    guard.abort();
                    return Err(e);
                }
                Err(BatchError::Transient(Transient(reason))) => {
                    traces::failed(&transaction, "aborted", &reason);
                    spans.finish("aborted", Some(&reason));
                    // Abort, rewind to the batch's first offsets and poll again: the records
                    // come back for the partitions this instance still owns.
                    guard.abort();
                    if exactly_once {
                        abort(producer).await?;
                    }
                    // The records polled ahead too: their partitions may not be in this batch.
                    rewind(
                        consumer,
                        batch.iter().chain(&next.batch).chain(&later.batch),
                    )?;
                    next = Polled::default();
                    later = Polled::default();
                    drop(transaction);
                    summary.retries += 1;
                    self.metrics.aborted(&mut tally);
                    let wait = failures.next(self, &reason);
                    tokio::select! {
                        () = options.shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        tracing::info!(?summary, "pipeline stopped");
        Ok(summary)
    }

    /// Applies what the group changed: lost partitions forget their changelog checkpoint (their
    /// next assignment restores the whole partition), assigned partitions restore their
    /// changelog tail, and the guard forgets the entries it cached, which another instance may
    /// have changed since. Returns the changelog records replayed.
    async fn follow_group(
        &self,
        guard: &mut VersionGuard<RocksBackend>,
        changes: Changes,
    ) -> Result<u64, RunError> {
        if changes.is_empty() {
            return Ok(0);
        }
        // Forgotten first: a restore that fails half-way has written some entries already.
        guard.forget_cached();
        let backend = guard.backend();
        let changelog_of = |(topic, partition): &Partition| {
            self.routes
                .iter()
                .find(|r| r.matches(topic))
                .map(|r| (r.changelog_topic.clone(), *partition))
        };
        let lost: Vec<Partition> = changes.lost.iter().filter_map(changelog_of).collect();
        if !lost.is_empty() {
            tracing::warn!(partitions = ?lost, "partitions lost; their next assignment restores them whole");
            backend
                .write(WriteRequest {
                    puts: Vec::new(),
                    checkpoints: lost.into_iter().map(|(t, p)| (t, p, 0)).collect(),
                })
                .await?;
        }
        let mut assigned: Vec<Partition> =
            changes.assigned.iter().filter_map(changelog_of).collect();
        assigned.sort();
        assigned.dedup();
        let mut restored = 0;
        if !assigned.is_empty() {
            let _restoring = self.metrics.restoring();
            let stats = restore(
                &self.settings,
                &self.config.kafka.group_id,
                backend,
                &assigned,
            )
            .await?;
            self.metrics.restored(&stats);
            restored = stats.records;
        }
        if changes.rebalanced {
            self.metrics.assignment_restored();
        }
        Ok(restored)
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

    /// Decodes, keys, versions and maps one record without waiting (the parallel pass).
    fn prepare(&self, msg: &OwnedMessage) -> Prepared {
        let Some(route_index) = self.routes.iter().position(|r| r.matches(msg.topic())) else {
            return Prepared::Unrouted;
        };
        if self.pass_through {
            return Prepared::PassThrough(route_index);
        }
        let route = &self.routes[route_index];
        match self
            .decoder
            .decode_cached(route.envelope, route.encoding, msg.key(), msg.payload())
        {
            Ok(decoded) => self.prepare_decoded(route_index, decoded),
            Err(SchemaMissing(_)) => Prepared::SchemaMissing(route_index),
        }
    }

    /// Keys, versions and maps one decoded record.
    fn prepare_decoded(
        &self,
        route_index: usize,
        decoded: Result<Decoded, CodecError>,
    ) -> Prepared {
        let route = &self.routes[route_index];
        let poison = |class, message: String, rule: &str, field: &str| {
            Prepared::DeadLetter(
                route_index,
                Poison {
                    class,
                    message,
                    rule: rule.to_owned(),
                    field: field.to_owned(),
                },
            )
        };
        let event = match decoded {
            Ok(Decoded::Event(event)) => event,
            Ok(Decoded::Tombstone { .. }) => return Prepared::Tombstone(route_index),
            Err(e) if e.class() == ErrorClass::Transient => {
                return Prepared::Transient(format!("decode: {e}"));
            }
            Err(e) if e.class() == ErrorClass::Fatal => return Prepared::Fatal(e),
            Err(e) => return poison(e.class(), e.to_string(), "decode", ""),
        };
        if event.op == autoglm_core::Op::Truncate {
            return Prepared::Truncate(route_index);
        }
        let keyed = route
            .entity_key(&event)
            .and_then(|key| Ok((key, route.change(&event)?)));
        let (entity_key, change) = match keyed {
            Ok(kv) => kv,
            Err(e) => return poison(ErrorClass::Poison, e.to_string(), e.rule, ""),
        };
        let mut event = event;
        // Mapped: the batch keeps only what its output needs, not the decoded rows.
        let source_row = if event.op.is_delete() {
            (route.delete == DeleteMode::Record)
                .then(|| event.before.take())
                .flatten()
        } else {
            event.after.take()
        };
        event.before = None;
        event.key = None;
        // As fields in name order: the encoders walk them without a map being built.
        let fields = match source_row
            .map(|row| route.mapping.apply_sorted(row))
            .transpose()
        {
            Ok(fields) => fields,
            Err(e) => return poison(e.class(), e.to_string(), e.rule(), e.field()),
        };
        // Encoded here, on all cores, for every target: most records are accepted, and the few
        // the guard drops cost less than encoding on the batch's critical path would.
        let mapped = fields.map(|fields| {
            let encoded: Option<Vec<_>> = route
                .targets
                .iter()
                .map(|target| target.encode_fields_cached(&fields))
                .collect();
            encoded.map_or_else(
                || Mapped::Row(fields.into_iter().collect()),
                Mapped::Encoded,
            )
        });
        Prepared::Work(Work {
            at: 0,
            route: route_index,
            state_key: autoglm_state::state_key(&route.name, &entity_key),
            output_key: route.output_key(&entity_key),
            change,
            mapped,
            event,
        })
    }

    /// Decodes, keys, versions and maps every record of `batch`, on all cores (the records are
    /// independent).
    fn prepare_batch(&self, batch: &[OwnedMessage]) -> Vec<Prepared> {
        batch
            .par_iter()
            .with_min_len(PARALLEL_MIN_RECORDS)
            .map(|msg| self.prepare(msg))
            .collect()
    }

    /// Prepares the records of `polled` not prepared yet.
    fn prepare_rest(&self, polled: &mut Polled) {
        let rest = self.prepare_batch(&polled.batch[polled.prepared.len()..]);
        polled.prepared.extend(rest);
    }

    /// Processes one prepared batch in one transaction (or one offset commit, at least once),
    /// and prepares the rest of `next` while the broker acknowledges the batch's records.
    /// Returns, once Kafka committed, the changelog checkpoints for the state write that
    /// follows ([`VersionGuard::commit`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the clients and the state of one consume loop"
    )]
    async fn process(
        &self,
        batch: &[OwnedMessage],
        prepared: Vec<Prepared>,
        next: &mut Polled,
        consumer: &Arc<Member>,
        producer: &Arc<AckingProducer>,
        guard: &mut VersionGuard<RocksBackend>,
        exactly_once: bool,
        tally: &mut Tally,
        spans: &mut RecordSpans,
    ) -> Result<(RunSummary, Checkpoints), BatchError> {
        let started = Instant::now();
        if exactly_once {
            producer.begin_transaction()?;
        }
        fail::fail_point!("before_produce");
        let mut out = Output::new(producer);
        let ticket = out.ticket;
        let mut summary = RunSummary {
            records: batch.len() as u64,
            ..RunSummary::default()
        };

        // In input order, forward, dead-letter or keep each prepared record. Poison goes to the
        // DLQ right away.
        let mut work = Vec::with_capacity(batch.len());
        for (at, prepared) in prepared.into_iter().enumerate() {
            let msg = &batch[at];
            let prepared = match prepared {
                // A writer schema this process has not fetched yet: decode here, waiting for
                // the registry (once per schema id).
                Prepared::SchemaMissing(route_index) => {
                    let route = &self.routes[route_index];
                    let decoded = self
                        .decoder
                        .decode(route.envelope, route.encoding, msg.key(), msg.payload())
                        .await;
                    self.prepare_decoded(route_index, decoded)
                }
                other => other,
            };
            match prepared {
                Prepared::Unrouted | Prepared::SchemaMissing(_) => {}
                Prepared::PassThrough(route_index) => {
                    tally.input(route_index);
                    let route = &self.routes[route_index];
                    out.forward(route.targets[0].topic(), msg, OwnedHeaders::new())?;
                    summary.emitted += 1;
                    tally.emitted(route_index, 0);
                }
                Prepared::Tombstone(route_index) => {
                    tally.input(route_index);
                    spans.record(msg, &self.routes[route_index], Decided::Tombstone);
                    summary.tombstones += 1;
                    tally.tombstone(route_index);
                }
                Prepared::Truncate(route_index) => {
                    tally.input(route_index);
                    let route = &self.routes[route_index];
                    tracing::warn!(route = %route.name, "truncate events are not propagated");
                }
                Prepared::Transient(reason) => {
                    return Err(BatchError::Transient(Transient(reason)));
                }
                Prepared::Fatal(e) => return Err(BatchError::Fatal(RunError::Registry(e))),
                Prepared::DeadLetter(route_index, poison) => {
                    tally.input(route_index);
                    let route = &self.routes[route_index];
                    let trace = spans.record(
                        msg,
                        route,
                        Decided::DeadLettered {
                            class: poison.class.as_str(),
                            rule: &poison.rule,
                            message: &poison.message,
                        },
                    );
                    out.dead_letter(
                        route,
                        msg,
                        &poison.class,
                        &poison.message,
                        &poison.rule,
                        &poison.field,
                        trace.as_deref(),
                    )?;
                    summary.dead_lettered += 1;
                    tally.dead_letter(route_index, poison.class);
                }
                Prepared::Work(mut w) => {
                    w.at = at;
                    tally.input(w.route);
                    work.push(w);
                }
            }
        }

        // One multi_get for the whole batch; later records of a key see earlier ones.
        let inputs: Vec<GuardInput<'_>> = work
            .iter()
            .map(|w| GuardInput {
                key: &w.state_key,
                change: w.change,
                is_snapshot: w.event.is_snapshot(),
            })
            .collect();
        let guarded_at = Instant::now();
        let outcome = guard.process(&inputs, now_ms()).await?;
        drop(inputs);
        let decided_at = Instant::now();

        let mut changelog_partition: foldhash::HashMap<&[u8], (usize, i32)> =
            foldhash::HashMap::with_capacity(work.len());
        let mut outgoing = Vec::with_capacity(work.len());
        let mapped: Vec<Option<Mapped>> = work.iter_mut().map(|w| w.mapped.take()).collect();
        for (((w, decision), version), mapped) in work
            .iter()
            .zip(&outcome.decisions)
            .zip(&outcome.versions)
            .zip(mapped)
        {
            let msg = &batch[w.at];
            let route = &self.routes[w.route];
            // An unversioned delete takes the version of the row it deletes.
            let version = version.map_or_else(String::new, |v| route.version_label(v));
            tally.decision(w.route, *decision);
            if *decision != Decision::Accept {
                spans.record(
                    msg,
                    route,
                    Decided::Dropped {
                        decision: decision.as_str(),
                        version: &version,
                    },
                );
                summary.dropped += 1;
                if let Some(audit) = &route.audit_topic {
                    out.audit(audit, msg, decision.as_str(), &version)?;
                }
                continue;
            }
            changelog_partition.insert(&w.state_key, (w.route, msg.partition()));
            let trace = spans.record(msg, route, Decided::Accepted { version: &version });
            let encoded: Vec<Option<Result<Vec<u8>, CodecError>>> = match mapped {
                Some(Mapped::Encoded(encoded)) => encoded.into_iter().map(Some).collect(),
                Some(Mapped::Row(row)) => {
                    let mut encoded = Vec::with_capacity(route.targets.len());
                    for target in &route.targets {
                        encoded.push(Some(target.encode(&row).await));
                    }
                    encoded
                }
                // A delete written as a tombstone.
                None => route.targets.iter().map(|_| None).collect(),
            };
            for ((t, target), encoded) in route.targets.iter().enumerate().zip(encoded) {
                let payload = match encoded {
                    Some(Ok(bytes)) => Some(bytes),
                    Some(Err(e)) if e.class() == ErrorClass::Transient => {
                        return Err(BatchError::Transient(Transient(format!("encode: {e}"))));
                    }
                    Some(Err(e)) => {
                        let message = e.to_string();
                        spans.dead_lettered_last(target.topic(), e.class().as_str(), &message);
                        out.dead_letter(
                            route,
                            msg,
                            &e.class(),
                            &message,
                            "encode",
                            target.topic(),
                            trace.as_deref(),
                        )?;
                        summary.dead_lettered += 1;
                        tally.dead_letter(w.route, e.class());
                        continue;
                    }
                    None => None,
                };
                outgoing.push(Outgoing {
                    topic: target.topic(),
                    key: &w.output_key,
                    payload,
                    source: msg,
                    op: w.event.op.as_str(),
                    version: version.clone(),
                    lineage: route.lineage_headers,
                    trace: trace.clone(),
                });
                summary.emitted += 1;
                tally.emitted(w.route, t);
            }
        }

        // The output records, and the state entries this batch accepted to the changelog (in
        // the same transaction), sent on all cores. Each key's records go out from one thread,
        // in input order: a key's records share a partition, and only their order matters
        // there.
        let pending = guard.pending_writes();
        let entries: Vec<ChangelogEntry<'_>> = pending
            .iter()
            .filter_map(|(key, entry)| {
                let &(route, partition) = changelog_partition.get(key)?;
                Some(ChangelogEntry {
                    route,
                    key,
                    entry,
                    partition,
                })
            })
            .collect();
        let shards = rayon::current_num_threads().max(1);
        let shard_of = |key: &[u8]| {
            let hash =
                std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::with_seed(0), key);
            (hash % shards as u64) as usize
        };
        let sent = (0..shards)
            .into_par_iter()
            .map(|shard| {
                let mut sent = 0;
                for o in outgoing.iter().filter(|o| shard_of(o.key) == shard) {
                    o.send(producer, ticket)?;
                    sent += 1;
                }
                for c in entries.iter().filter(|c| shard_of(c.key) == shard) {
                    c.send(producer, &self.routes[c.route], ticket)?;
                    sent += 1;
                }
                Ok::<usize, BatchError>(sent)
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        out.sent += sent;

        // Every record acknowledged before the commit, and the changelog's offsets known. The
        // wait matters for speed too: rust-rdkafka's commit_transaction flushes first, and its
        // flush polls in 100 ms steps while anything is in flight, which made every transaction
        // last at least 100 ms. With nothing in flight the commit starts at once.
        let sent_at = Instant::now();
        let (acked, preparing) = tokio::join!(out.wait_all(), async {
            let started = Instant::now();
            self.prepare_rest(next);
            started.elapsed()
        });
        // Per route and partition.
        let checkpoints = acked?;
        if exactly_once {
            drain_delivery_reports(producer).await;
        }
        fail::fail_point!("after_produce");
        let produced = Instant::now();
        let offsets = next_offsets(batch)?;
        let positions: Vec<_> = offsets
            .elements()
            .iter()
            .filter_map(|e| Some(((e.topic().to_owned(), e.partition()), e.offset().to_raw()?)))
            .collect();
        let commit_seconds = self.metrics.commit_seconds();
        if exactly_once {
            let metadata = consumer
                .group_metadata()
                .ok_or_else(|| BatchError::Transient(Transient("no group metadata yet".into())))?;
            let p = Arc::clone(producer);
            blocking(move || {
                again_while_retriable("send_offsets_to_transaction", || {
                    p.send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT)
                })?;
                fail::fail_point!("after_send_offsets");
                commit_seconds.observe_closure_duration(|| {
                    again_while_retriable("commit_transaction", || {
                        p.commit_transaction(TXN_TIMEOUT)
                    })
                })
            })
            .await?;
        } else {
            let c = Arc::clone(consumer);
            blocking(move || {
                commit_seconds.observe_closure_duration(|| c.commit(&offsets, CommitMode::Sync))
            })
            .await?;
        }
        fail::fail_point!("after_commit");
        consumer.context().committed(positions);
        let committed = produced.elapsed();
        for (stage, took) in [
            (Stage::Route, guarded_at - started),
            (Stage::Guard, decided_at - guarded_at),
            (Stage::Send, sent_at - decided_at),
            (Stage::Acks, produced - sent_at),
            (Stage::Commit, committed),
        ] {
            self.metrics.stage(stage, took);
        }
        tracing::debug!(
            records = summary.records,
            process_ms = (produced - started).as_secs_f64() * 1e3,
            route_ms = (guarded_at - started).as_secs_f64() * 1e3,
            guard_ms = (decided_at - guarded_at).as_secs_f64() * 1e3,
            send_ms = (sent_at - decided_at).as_secs_f64() * 1e3,
            acks_ms = (produced - sent_at).as_secs_f64() * 1e3,
            next_prepare_ms = preparing.as_secs_f64() * 1e3,
            commit_ms = committed.as_secs_f64() * 1e3,
            "batch committed"
        );
        let checkpoints = checkpoints
            .into_iter()
            .map(|((route, p), o)| (self.routes[route].changelog_topic.clone(), p, o))
            .collect();
        Ok((summary, checkpoints))
    }
}

/// An output record, decided and encoded, to be sent.
struct Outgoing<'b> {
    topic: &'b str,
    key: &'b [u8],
    /// `None`: a tombstone.
    payload: Option<Vec<u8>>,
    /// The input record it came from.
    source: &'b OwnedMessage,
    op: &'static str,
    version: String,
    /// Add the source topic, partition and offset headers.
    lineage: bool,
    /// The record span's context, when it was sampled; else the input's goes on.
    trace: Option<Arc<Propagated>>,
}

impl Outgoing<'_> {
    fn send(&self, producer: &AckingProducer, ticket: Ticket) -> Result<(), BatchError> {
        let source = self.source;
        let mut headers = OwnedHeaders::new();
        if self.lineage {
            headers = with_source(headers, source);
        }
        let headers = headers
            .insert(header("autoglm.version", &self.version))
            .insert(header("autoglm.op", self.op));
        let headers = with_trace_context(headers, source, self.trace.as_deref());
        let mut record = BaseRecord::with_opaque_to(self.topic, ticket.opaque(Kind::Output))
            .key(self.key)
            .headers(headers);
        // The source record's time travels with the change, as in Kafka Streams: a consumer
        // can tell how old a change is, and retention treats it like its source.
        if let Some(ms) = source.timestamp().to_millis() {
            record = record.timestamp(ms);
        }
        if let Some(payload) = &self.payload {
            record = record.payload(&payload[..]);
        }
        send(producer, record)
    }
}

/// A state entry a batch accepted, to its route's changelog, on its input record's partition.
struct ChangelogEntry<'b> {
    route: usize,
    key: &'b [u8],
    entry: &'b [u8],
    partition: i32,
}

impl ChangelogEntry<'_> {
    fn send(
        &self,
        producer: &AckingProducer,
        route: &RouteRuntime,
        ticket: Ticket,
    ) -> Result<(), BatchError> {
        let opaque = ticket.opaque(Kind::Changelog(self.route));
        let record = BaseRecord::with_opaque_to(&route.changelog_topic, opaque)
            .key(self.key)
            .payload(self.entry)
            .partition(self.partition);
        send(producer, record)
    }
}

/// Enqueues `record`. A record that cannot be enqueued fails the batch (it is retried), so
/// nothing is dropped silently.
fn send(
    producer: &AckingProducer,
    record: BaseRecord<'_, [u8], [u8], usize>,
) -> Result<(), BatchError> {
    producer.send(record).map_err(|(e, _)| BatchError::from(e))
}

/// Produces the batch's records and counts them for [`Acks`].
struct Output<'p> {
    producer: &'p AckingProducer,
    ticket: Ticket,
    sent: usize,
}

impl<'p> Output<'p> {
    /// Starts a batch: delivery reports of earlier ones no longer count.
    fn new(producer: &'p AckingProducer) -> Output<'p> {
        Output {
            producer,
            ticket: producer.context().begin(),
            sent: 0,
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the DLQ headers: the reason in four parts, the origin, the trace context"
    )]
    fn dead_letter(
        &mut self,
        route: &RouteRuntime,
        msg: &OwnedMessage,
        class: &ErrorClass,
        message: &str,
        rule: &str,
        field: &str,
        trace: Option<&Propagated>,
    ) -> Result<(), BatchError> {
        tracing::warn!(route = %route.name, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), %message, "record dead-lettered");
        let headers = OwnedHeaders::new()
            .insert(header("autoglm.error.class", class.as_str()))
            .insert(header("autoglm.error.message", message))
            .insert(header("autoglm.error.rule", rule))
            .insert(header("autoglm.error.field", field))
            .insert(header("autoglm.route", &route.name));
        let mut headers = with_trace_context(with_source(headers, msg), msg, trace);
        // The record's own time: `autoglm dlq replay` gives it back to the replayed copy.
        if let Some(ms) = msg.timestamp().to_millis() {
            headers = headers.insert(header("autoglm.source.timestamp", &ms.to_string()));
        }
        self.forward(&route.dlq_topic, msg, headers)
    }

    fn audit(
        &mut self,
        topic: &str,
        msg: &OwnedMessage,
        decision: &str,
        version: &str,
    ) -> Result<(), BatchError> {
        let headers = OwnedHeaders::new()
            .insert(header("autoglm.decision", decision))
            .insert(header("autoglm.version", version))
            .insert(header("autoglm.source.topic", msg.topic()));
        self.forward(topic, msg, headers)
    }

    /// Copies the input record's key and original bytes to `topic` with `headers`.
    fn forward(
        &mut self,
        topic: &str,
        msg: &OwnedMessage,
        headers: OwnedHeaders,
    ) -> Result<(), BatchError> {
        let mut record =
            BaseRecord::with_opaque_to(topic, self.ticket.opaque(Kind::Output)).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        send(self.producer, record)?;
        self.sent += 1;
        Ok(())
    }

    /// Waits until every record sent is acknowledged and returns the changelog checkpoints;
    /// the first failure fails the batch.
    async fn wait_all(&self) -> Result<Written, BatchError> {
        let acks = self.producer.context();
        acks.wait(self.sent)
            .await
            .map_err(|Undelivered { error, topic }| {
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
                    BatchError::Fatal(RunError::Access(format!(
                        "the principal lacks WRITE on topic {topic:?} (and DESCRIBE): {error}"
                    )))
                } else {
                    BatchError::from(error)
                }
            })
    }
}

/// Waits (at most a second) until the producer has released every delivery report: a report
/// is counted inside its callback, a moment before librdkafka stops counting the record as in
/// flight.
async fn drain_delivery_reports(producer: &AckingProducer) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Adds the headers naming the input record `msg`: `autoglm.source.topic`, `.partition` and
/// `.offset`.
fn with_source(headers: OwnedHeaders, msg: &OwnedMessage) -> OwnedHeaders {
    headers
        .insert(header("autoglm.source.topic", msg.topic()))
        .insert(header(
            "autoglm.source.partition",
            &msg.partition().to_string(),
        ))
        .insert(header("autoglm.source.offset", &msg.offset().to_string()))
}

/// Adds the W3C trace context: the record span's (`trace`), or else the input record's
/// `traceparent` and `tracestate` as they were, if it had them (copied as bytes: nothing is
/// parsed or allocated).
fn with_trace_context(
    headers: OwnedHeaders,
    msg: &OwnedMessage,
    trace: Option<&Propagated>,
) -> OwnedHeaders {
    if let Some(trace) = trace {
        return trace.insert_into(headers);
    }
    let Some(input) = msg.headers() else {
        return headers;
    };
    let mut headers = headers;
    for key in ["traceparent", "tracestate"] {
        if let Some(value) = input.iter().find(|h| h.key == key).and_then(|h| h.value) {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    headers
}

/// Offsets to commit: the last record of each partition + 1.
fn next_offsets(batch: &[OwnedMessage]) -> Result<TopicPartitionList, BatchError> {
    // foldhash, not SipHash: one lookup per record.
    let mut next: foldhash::HashMap<(&str, i32), i64> = foldhash::HashMap::new();
    for msg in batch {
        let slot = next.entry((msg.topic(), msg.partition())).or_insert(0);
        *slot = (*slot).max(msg.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(list)
}

/// The processor's consumer: a static group member that reports rebalances.
type Member = StreamConsumer<GroupContext>;

/// The records of one batch, polled from partitions this instance owns.
#[derive(Default)]
struct Polled {
    batch: Vec<OwnedMessage>,
    /// What the parallel pass made of the batch's first `prepared.len()` records.
    prepared: Vec<Prepared>,
    /// When the batch's first record arrived.
    started: Option<Instant>,
    /// The batch's keys and values, in bytes.
    bytes: usize,
    /// When a poll that waits ([`Wait::Cadence`]) closed the batch.
    closed: Option<Instant>,
}

impl Polled {
    /// Drops the records of `revoked` partitions, prepared or not.
    fn retain_owned(&mut self, revoked: &HashSet<Partition>) {
        if revoked.is_empty() {
            return;
        }
        let owned: Vec<bool> = self
            .batch
            .iter()
            .map(|m| !revoked.contains(&(m.topic().to_owned(), m.partition())))
            .collect();
        let mut keep = owned.iter().copied();
        self.batch.retain(|_| keep.next().unwrap_or(false));
        let mut keep = owned.iter().copied();
        self.prepared.retain(|_| keep.next().unwrap_or(false));
        self.bytes = self.batch.iter().map(size).sum();
    }

    /// Adds a polled record.
    fn push(&mut self, msg: OwnedMessage) {
        self.started.get_or_insert_with(Instant::now);
        self.bytes += size(&msg);
        self.batch.push(msg);
    }

    /// Whether the batch is full by `limits`.
    fn is_full(&self, limits: &Limits) -> bool {
        self.batch.len() >= limits.records || self.bytes >= limits.bytes
    }
}

/// How old a batch's first record may get before the batch closes: the flush interval less
/// `lead`, what the last batches took from closing to their commit, so that a batch commits
/// about `flush_interval_ms` after its first record, as configured. (Closed at the full interval,
/// a batch committed one processing time later: at 45k records/s, p50 end to end 125–146 ms
/// against 83–89 ms now, in `make bench`'s latency phase.) Never below half the interval, which
/// bounds the transactions per second.
fn closing_age(flush: Duration, lead: Duration) -> Duration {
    flush.saturating_sub(lead).max(flush / 2)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A record's key and value, in bytes: what a batch's size counts.
fn size(msg: &OwnedMessage) -> usize {
    msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len)
}

/// When a batch closes: `commit.max_records`, `commit.max_bytes`, or its first record `flush`
/// old.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `event_queue.flush_interval_ms`; the loop's polls get the closing age instead (see
    /// `closing_age`).
    flush: Duration,
    records: usize,
    bytes: usize,
}

/// How long a poll waits for records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Until the batch's first record is the closing age old (see `closing_age`), or up to a
    /// second for a first record.
    Cadence,
    /// Not at all: only records already in the local queue are taken.
    Never,
}

/// How long ago `msg` was written, by its timestamp; zero if it has none or it is in the future.
fn age(msg: &impl Message) -> Duration {
    msg.timestamp()
        .to_millis()
        .and_then(|ts| u64::try_from(now_ms() - ts).ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// Polls records into `into` until its first record is `limits.flush` old (by its timestamp: a
/// record that already waited while the previous batch was processed does not wait a whole
/// interval again, which kept end-to-end latency at two intervals and more), it is full (by
/// records or bytes), or shutdown; with [`Wait::Never`], until the local queue is empty or the
/// batch is full. Records already in the local queue are always taken, deadline or not.
/// Rebalances happen inside `recv`; after each one the records of revoked partitions are
/// dropped unprocessed (their new owner reads them from the committed offsets). What the group
/// changed is added to `changes`.
async fn poll_batch(
    consumer: &Member,
    into: &mut Polled,
    wait: Wait,
    limits: Limits,
    shutdown: &CancellationToken,
    changes: &mut Changes,
    throttling: &Throttling,
) -> Result<(), RunError> {
    let now = tokio::time::Instant::now();
    let cadence = |first: &OwnedMessage| now + limits.flush.saturating_sub(age(first));
    let mut deadline = match (wait, into.batch.first()) {
        (Wait::Never, _) => now,
        (Wait::Cadence, Some(first)) => cadence(first),
        // Wait up to a second for the first record.
        (Wait::Cadence, None) => now + Duration::from_secs(1),
    };
    let throttled = !throttling.is_off();
    while !into.is_full(&limits) {
        // A route paused by its rate limit resumes on time, however long this poll waits.
        let resume = throttled
            .then(|| throttling.resume_due(consumer))
            .flatten()
            .map(tokio::time::Instant::from_std);
        let wake = resume.map_or(deadline, |r| r.min(deadline));
        let received = tokio::select! {
            _ = shutdown.cancelled() => None,
            r = tokio::time::timeout_at(wake, consumer.recv()) => r.ok(),
        };
        let group = consumer.context().take();
        if !group.is_empty() {
            into.retain_owned(&group.revoked);
            changes.merge(group);
        }
        match received {
            None if wake < deadline && !shutdown.is_cancelled() => continue,
            None => break,
            Some(Ok(msg)) => {
                if throttled {
                    throttling.polled(consumer, msg.topic());
                }
                let msg = msg.detach();
                if into.batch.is_empty() && wait == Wait::Cadence {
                    deadline = cadence(&msg);
                }
                into.push(msg);
            }
            Some(Err(e)) if classify(&e) == ErrorClass::Fatal => return Err(e.into()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error; going on");
            }
        }
    }
    if wait == Wait::Cadence && !into.batch.is_empty() {
        into.closed = Some(Instant::now());
    }
    Ok(())
}

/// Seeks every partition of `batch` back to its first record, so the next poll reads the batch
/// again (an aborted transaction's input).
fn rewind<'m>(
    consumer: &Member,
    batch: impl IntoIterator<Item = &'m OwnedMessage>,
) -> Result<(), RunError> {
    let mut first: HashMap<(&str, i32), i64> = HashMap::new();
    for msg in batch {
        let slot = first
            .entry((msg.topic(), msg.partition()))
            .or_insert(msg.offset());
        *slot = (*slot).min(msg.offset());
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in first {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    // A zero timeout makes the seek asynchronous: it never blocks the executor. A partition
    // revoked meanwhile cannot be sought, and needs not be. A partition still owned that cannot
    // be sought would skip records: stop instead (a restart resumes from the committed offsets).
    let sought = consumer.seek_partitions(list, Duration::ZERO)?;
    let owned = consumer.assignment()?;
    for element in sought.elements() {
        // An asynchronous seek reports "in progress": it was started.
        if let Err(e) = element.error()
            && e.rdkafka_error_code() != Some(RDKafkaErrorCode::InProgress)
            && owned
                .find_partition(element.topic(), element.partition())
                .is_some()
        {
            return Err(RunError::Kafka {
                class: ErrorClass::Fatal,
                source: e,
            });
        }
    }
    Ok(())
}

/// Consecutive failed batches: the backoff and the "still failing" alarm.
#[derive(Debug, Default)]
struct Failures {
    attempt: u32,
    last_alarm: Option<Instant>,
}

impl Failures {
    /// Counts one more failure, logs it and returns how long to wait.
    fn next(&mut self, pipeline: &Pipeline, reason: &str) -> Duration {
        self.attempt += 1;
        let attempt = self.attempt;
        let wait = pipeline.backoff(attempt);
        if attempt <= pipeline.config.retry_attempts() {
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %reason, "batch failed; aborted, rewound, retrying");
        } else if self
            .last_alarm
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_alarm = Some(Instant::now());
            tracing::error!(attempt, %reason, "still failing after the configured attempts; waiting, not skipping");
        }
        wait
    }
}

/// Calls a transaction step again for as long as librdkafka calls its error retriable: the step
/// goes on in the background (a commit that timed out may still commit), and only the same call
/// may follow it. Aborting instead fails, and would leave the producer waiting for a commit
/// call that never comes. Any other outcome is returned.
fn again_while_retriable(
    what: &str,
    step: impl Fn() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let mut attempt = 0u32;
    loop {
        match step() {
            Err(KafkaError::Transaction(e))
                if e.is_retriable() && !e.txn_requires_abort() && !e.is_fatal() =>
            {
                attempt += 1;
                tracing::warn!(attempt, error = %e, "{what} did not finish in time; calling it again");
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

async fn abort(producer: &Arc<AckingProducer>) -> Result<(), RunError> {
    let p = Arc::clone(producer);
    match blocking(move || p.abort_transaction(TXN_TIMEOUT)).await {
        Ok(()) => Ok(()),
        Err(BatchError::Fatal(e)) => Err(e),
        Err(BatchError::Transient(Transient(reason))) => {
            tracing::warn!(%reason, "abort failed; the broker aborts the transaction on timeout");
            Ok(())
        }
    }
}

/// Runs a blocking librdkafka call off the async executor.
async fn blocking<F>(f: F) -> Result<(), BatchError>
where
    F: FnOnce() -> Result<(), KafkaError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(BatchError::from),
        Err(e) => Err(BatchError::Fatal(RunError::Config(format!(
            "blocking task: {e}"
        )))),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_closes_early_by_the_processing_time_but_never_before_half_the_interval() {
        let ms = Duration::from_millis;
        assert_eq!(closing_age(ms(100), ms(0)), ms(100));
        assert_eq!(closing_age(ms(100), ms(30)), ms(70));
        assert_eq!(closing_age(ms(100), ms(80)), ms(50));
        assert_eq!(closing_age(ms(100), ms(500)), ms(50));
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
