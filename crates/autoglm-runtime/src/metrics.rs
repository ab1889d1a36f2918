//! Prometheus metrics and the health and readiness probes of one pipeline.
//!
//! ```text
//!  process(batch) ──► Tally (plain integers per route: no lock, no allocation per record)
//!                        │ committed ──► counters += tally, commits, last commit time, batch time
//!                        │ aborted   ──► tally dropped, aborts += 1 (the retry counts it again)
//!  follow_group ──► restore records and duration; first assignment restored ──► ready
//!  rebalance callback ──► assigned partitions;  every loop turn ──► heartbeat (health)
//!  librdkafka statistics ──► consumer lag per owned partition (see `group`)
//!
//!  Endpoint (its own task on `metrics.listen`):  GET /metrics · GET /health · GET /ready
//! ```
//!
//! Counters count what Kafka committed, so they agree with [`RunSummary`](crate::RunSummary):
//! a batch's counts reach the registry only when its transaction commits, and a batch that is
//! aborted and retried counts once, when it finally commits. Each pipeline has its own
//! registry (never the process-global one), so several pipelines can run in one process.
//! Labels are bounded: route and target names from the config, the guard's decision, the
//! error class, and for the lag alone the input topic and partition (bounded by the topics'
//! partition counts) — never a key or an error message.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `autoglm_pipeline_input_records_total` | counter | `route` |
//! | `autoglm_pipeline_emitted_records_total` | counter | `route`, `target` |
//! | `autoglm_pipeline_dead_lettered_records_total` | counter | `route`, `class` |
//! | `autoglm_pipeline_tombstones_skipped_total` | counter | `route` |
//! | `autoglm_pipeline_batch_duration_seconds` | histogram | — |
//! | `autoglm_pipeline_stage_duration_seconds` | histogram | `stage` |
//! | `autoglm_guard_decisions_total` | counter | `route`, `decision` |
//! | `autoglm_transaction_commits_total` | counter | — |
//! | `autoglm_transaction_aborts_total` | counter | — |
//! | `autoglm_transaction_commit_duration_seconds` | histogram | — |
//! | `autoglm_transaction_last_commit_timestamp_seconds` | gauge | — |
//! | `autoglm_restore_records_total` | counter | — |
//! | `autoglm_restore_duration_seconds` | histogram | — |
//! | `autoglm_route_throttled_seconds_total` | counter | `route` |
//! | `autoglm_consumer_assigned_partitions` | gauge | — |
//! | `autoglm_consumer_lag_records` | gauge | `topic`, `partition` |
//!
//! Beside them, the standard `process_*` metrics of the process (start time, resident memory,
//! CPU seconds, open file descriptors).
//!
//! `stage` splits a committed batch's way into its steps, in order (see [`Stage`]): `fill`,
//! `queue`, `route`, `guard`, `send`, `acks`, `commit` and `state_write`.
//!
//! `decision` is `accepted`, `duplicate`, `stale` or `snapshot_superseded`; `class` is
//! `poison`, or `fatal` for a registry lookup refused with a 4xx (transient failures are
//! retried, never dead-lettered, but the label exists so that the set is fixed).
//! When at least once (`event_queue.persistence: false`) the "transaction" metrics count the
//! offset commits and the failed batches.
//!
//! Probes: `/health` is 200 while the loop is alive — starting, restoring, processing or
//! waiting out a transient failure — and 503 once it stopped or showed no sign of life for
//! longer than the stall limit (a hang). `/ready` is 503 until the producer is initialised and
//! the first assignment from the group (possibly empty) has had its changelog tails restored,
//! then 200 until the loop stops.
//!
//! Failure behaviour: the endpoint runs off the hot path and never blocks it (a scrape reads
//! atomics). An address that cannot be bound stops `run` at start with a configuration error
//! naming `metrics.listen`. A failed accept is logged and the endpoint goes on; a client gets
//! [`CLIENT_TIMEOUT`] for its request, connections are closed after each response, and at
//! most [`MAX_CONNECTIONS`] are served at once. The endpoint stops when `run` returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autoglm_core::ErrorClass;
use autoglm_state::Decision;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument as _;

use crate::RestoreStats;

/// How long a client may take to send its request and receive the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed right away.
const MAX_CONNECTIONS: usize = 16;

/// The error classes, in [`class_index`] order.
const CLASSES: [ErrorClass; 3] = [ErrorClass::Transient, ErrorClass::Poison, ErrorClass::Fatal];

fn class_index(class: ErrorClass) -> usize {
    match class {
        ErrorClass::Transient => 0,
        ErrorClass::Poison => 1,
        ErrorClass::Fatal => 2,
    }
}

/// The registry and the probes of one pipeline. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("routes", &self.inner.routes.len())
            .field("local_addr", &self.inner.local_addr.get())
            .finish_non_exhaustive()
    }
}

/// A step of a batch's way, in order: what `autoglm_pipeline_stage_duration_seconds` splits
/// the end-to-end latency into. `fill` and `queue` count every batch processed, the others the
/// committed ones. The next batch is polled and prepared during `acks` and `state_write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// From the batch's first polled record until the batch closed (`flush_interval_ms` less
    /// the lead of the last batches, or full by `commit.max_records` or `.max_bytes`).
    Fill,
    /// From its close until its processing started: the wait for the batch before it.
    Queue,
    /// The transaction begun, and each record routed: forwarded, dead-lettered or kept.
    Route,
    /// The version guard's reads and decisions for the whole batch.
    Guard,
    /// Encoding what the mapping did not, and handing every record to the producer.
    Send,
    /// Until every record was acknowledged.
    Acks,
    /// The offsets sent and the transaction committed (the offset commit when at least once).
    Commit,
    /// The accepted versions written to the state store, after the commit.
    StateWrite,
}

impl Stage {
    const ALL: [Stage; 8] = [
        Stage::Fill,
        Stage::Queue,
        Stage::Route,
        Stage::Guard,
        Stage::Send,
        Stage::Acks,
        Stage::Commit,
        Stage::StateWrite,
    ];

    /// The `stage` label.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Stage::Fill => "fill",
            Stage::Queue => "queue",
            Stage::Route => "route",
            Stage::Guard => "guard",
            Stage::Send => "send",
            Stage::Acks => "acks",
            Stage::Commit => "commit",
            Stage::StateWrite => "state_write",
        }
    }
}

struct Inner {
    registry: Registry,
    routes: Vec<RouteCounters>,
    batch_seconds: Histogram,
    /// By [`Stage`], in its order.
    stage_seconds: Vec<Histogram>,
    commits: IntCounter,
    aborts: IntCounter,
    commit_seconds: Histogram,
    last_commit: Gauge,
    restore_records: IntCounter,
    restore_seconds: Histogram,
    assigned_partitions: IntGauge,
    consumer_lag: IntGaugeVec,
    probes: Probes,
    local_addr: OnceLock<SocketAddr>,
}

/// One route's counters, resolved once so that a commit adds to them without a label lookup.
struct RouteCounters {
    input: IntCounter,
    tombstones: IntCounter,
    /// In [`Decision::index`] order.
    decisions: [IntCounter; 4],
    /// In [`class_index`] order.
    dead_lettered: [IntCounter; 3],
    /// In the route's target order.
    emitted: Vec<IntCounter>,
    /// Seconds the route's partitions spent paused by its rate limit.
    throttled: prometheus::Counter,
}

impl Metrics {
    /// Registers the metrics of `routes` (`(name, [target topic, …])`, in config order). The
    /// loop is taken as hung (`/health` 503) after `stall_after` without a sign of life.
    pub(crate) fn new<'a>(
        routes: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>,
        stall_after: Duration,
    ) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let input = counter_vec(
            "autoglm_pipeline_input_records_total",
            "Input records of committed batches",
            &["route"],
        )?;
        let emitted = counter_vec(
            "autoglm_pipeline_emitted_records_total",
            "Records committed to target topics (one per target)",
            &["route", "target"],
        )?;
        let dead_lettered = counter_vec(
            "autoglm_pipeline_dead_lettered_records_total",
            "Records committed to the dead-letter topic, by error class",
            &["route", "class"],
        )?;
        let tombstones = counter_vec(
            "autoglm_pipeline_tombstones_skipped_total",
            "Debezium tombstones skipped (the delete before them carried the change)",
            &["route"],
        )?;
        let decisions = counter_vec(
            "autoglm_guard_decisions_total",
            "Version guard decisions of committed batches",
            &["route", "decision"],
        )?;
        let throttled = prometheus::CounterVec::new(
            Opts::new(
                "autoglm_route_throttled_seconds_total",
                "Seconds the route's partitions spent paused by its rate_limit",
            ),
            &["route"],
        )?;
        registry.register(Box::new(throttled.clone()))?;
        let routes = routes
            .into_iter()
            .map(|(route, targets)| RouteCounters {
                throttled: throttled.with_label_values(&[route]),
                input: input.with_label_values(&[route]),
                tombstones: tombstones.with_label_values(&[route]),
                decisions: Decision::ALL.map(|d| decisions.with_label_values(&[route, d.as_str()])),
                dead_lettered: CLASSES
                    .map(|c| dead_lettered.with_label_values(&[route, c.as_str()])),
                emitted: targets
                    .into_iter()
                    .map(|target| emitted.with_label_values(&[route, target]))
                    .collect(),
            })
            .collect();

        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(histogram.clone()))?;
            Ok::<_, prometheus::Error>(histogram)
        };
        let batch_seconds = histogram(
            "autoglm_pipeline_batch_duration_seconds",
            "From a committed batch's first polled record to its commit and state write",
            prometheus::exponential_buckets(0.005, 2.0, 14)?,
        )?;
        let stages = HistogramVec::new(
            HistogramOpts::new(
                "autoglm_pipeline_stage_duration_seconds",
                "Each step of a batch, from its first polled record to its state write",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
            &["stage"],
        )?;
        registry.register(Box::new(stages.clone()))?;
        let stage_seconds = Stage::ALL
            .iter()
            .map(|stage| stages.get_metric_with_label_values(&[stage.as_str()]))
            .collect::<Result<_, _>>()?;
        let commits = counter(
            "autoglm_transaction_commits_total",
            "Committed transactions (offset commits when at least once)",
        )?;
        let aborts = counter(
            "autoglm_transaction_aborts_total",
            "Batches aborted after a transient failure and retried",
        )?;
        let commit_seconds = histogram(
            "autoglm_transaction_commit_duration_seconds",
            "Latency of the commit call (commit_transaction; the offset commit when at least once)",
            prometheus::exponential_buckets(0.001, 2.0, 16)?,
        )?;
        let last_commit = Gauge::new(
            "autoglm_transaction_last_commit_timestamp_seconds",
            "Unix time of the last commit",
        )?;
        registry.register(Box::new(last_commit.clone()))?;
        let restore_records = counter(
            "autoglm_restore_records_total",
            "Changelog records replayed into the state store",
        )?;
        let restore_seconds = histogram(
            "autoglm_restore_duration_seconds",
            "Wall time of each restore of newly assigned partitions",
            prometheus::exponential_buckets(0.01, 4.0, 10)?,
        )?;
        let assigned_partitions = IntGauge::new(
            "autoglm_consumer_assigned_partitions",
            "Input partitions assigned to this instance",
        )?;
        registry.register(Box::new(assigned_partitions.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "autoglm_consumer_lag_records",
                "Records of an assigned input partition past this instance's last committed \
                 offset, up to the last stable offset (from librdkafka's statistics, every \
                 statistics.interval.ms)",
            ),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        // process_start_time_seconds (a restart is a change of it), resident memory against
        // the container's limit, CPU seconds, open file descriptors.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                routes,
                batch_seconds,
                stage_seconds,
                commits,
                aborts,
                commit_seconds,
                last_commit,
                restore_records,
                restore_seconds,
                assigned_partitions,
                consumer_lag,
                probes: Probes::new(stall_after),
                local_addr: OnceLock::new(),
            }),
        })
    }

    /// The metrics in the Prometheus text format, as `GET /metrics` serves them.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut text = String::new();
        TextEncoder::new().encode_utf8(&self.inner.registry.gather(), &mut text)?;
        Ok(text)
    }

    /// The address the endpoint listens on, once `run` has bound it (with port `0`, the port
    /// the system picked).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr.get().copied()
    }

    /// An empty tally for one batch.
    pub(crate) fn tally(&self) -> Tally {
        Tally {
            routes: self
                .inner
                .routes
                .iter()
                .map(|r| RouteTally {
                    emitted: vec![0; r.emitted.len()],
                    ..RouteTally::default()
                })
                .collect(),
        }
    }

    /// A batch committed: adds its tally (and empties it), counts the commit.
    pub(crate) fn committed(&self, tally: &mut Tally, batch_started: Option<Instant>) {
        fn add(counter: &IntCounter, n: &mut u64) {
            if *n > 0 {
                counter.inc_by(*n);
                *n = 0;
            }
        }
        for (counters, counts) in self.inner.routes.iter().zip(&mut tally.routes) {
            add(&counters.input, &mut counts.input);
            add(&counters.tombstones, &mut counts.tombstones);
            for (c, n) in counters.decisions.iter().zip(&mut counts.decisions) {
                add(c, n);
            }
            for (c, n) in counters.dead_lettered.iter().zip(&mut counts.dead_lettered) {
                add(c, n);
            }
            for (c, n) in counters.emitted.iter().zip(&mut counts.emitted) {
                add(c, n);
            }
        }
        self.inner.commits.inc();
        self.inner.last_commit.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        if let Some(started) = batch_started {
            self.inner
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// A batch spent `took` in `stage`.
    pub(crate) fn stage(&self, stage: Stage, took: Duration) {
        if let Some(histogram) = self.inner.stage_seconds.get(stage as usize) {
            histogram.observe(took.as_secs_f64());
        }
    }

    /// A batch was aborted (to be retried): its tally is dropped, the abort counted.
    pub(crate) fn aborted(&self, tally: &mut Tally) {
        tally.clear();
        self.inner.aborts.inc();
    }

    /// The histogram of commit call latencies, to time the call where it runs.
    /// Route `route` was paused by its rate limit for `paused`.
    pub(crate) fn throttled(&self, route: usize, paused: Duration) {
        if let Some(r) = self.inner.routes.get(route) {
            r.throttled.inc_by(paused.as_secs_f64());
        }
    }

    pub(crate) fn commit_seconds(&self) -> Histogram {
        self.inner.commit_seconds.clone()
    }

    /// A restore finished.
    pub(crate) fn restored(&self, stats: &RestoreStats) {
        self.inner.restore_records.inc_by(stats.records);
        self.inner
            .restore_seconds
            .observe(stats.elapsed.as_secs_f64());
    }

    /// The gauge the rebalance callback keeps at the assignment's size.
    pub(crate) fn assigned_partitions(&self) -> IntGauge {
        self.inner.assigned_partitions.clone()
    }

    /// The consumer-lag gauge, per topic and partition (kept by the group context).
    pub(crate) fn consumer_lag(&self) -> IntGaugeVec {
        self.inner.consumer_lag.clone()
    }

    /// The loop is alive.
    pub(crate) fn beat(&self) {
        self.inner.probes.beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Keeps `/health` at 200 while a restore (which can take minutes) runs.
    pub(crate) fn restoring(&self) -> Restoring<'_> {
        self.inner.probes.restoring.fetch_add(1, Ordering::Relaxed);
        Restoring(&self.inner.probes)
    }

    /// The producer is initialised (its transactions, when exactly once).
    pub(crate) fn producer_ready(&self) {
        self.inner
            .probes
            .producer_ready
            .store(true, Ordering::Relaxed);
    }

    /// The group's first assignment has been restored.
    pub(crate) fn assignment_restored(&self) {
        self.inner
            .probes
            .assignment_restored
            .store(true, Ordering::Relaxed);
    }

    /// The loop has stopped: neither healthy nor ready, no partitions.
    pub(crate) fn stopped(&self) {
        self.inner.probes.stopped.store(true, Ordering::Relaxed);
        self.inner.assigned_partitions.set(0);
    }

    /// `/health`: `Ok(text)` for 200, `Err(reason)` for 503.
    fn health(&self, now_ms: i64) -> Result<&'static str, String> {
        let p = &self.inner.probes;
        if p.stopped.load(Ordering::Relaxed) {
            return Err("stopped".to_owned());
        }
        if p.restoring.load(Ordering::Relaxed) > 0 {
            return Ok("ok: restoring state");
        }
        let silent_ms = now_ms.saturating_sub(p.beat_ms.load(Ordering::Relaxed));
        if silent_ms > p.stall_after_ms {
            return Err(format!(
                "stalled: no sign of life from the processing loop for {} s",
                silent_ms / 1000
            ));
        }
        Ok("ok")
    }

    /// `/ready`: `Ok(text)` for 200, `Err(reason)` for 503.
    fn ready(&self) -> Result<&'static str, &'static str> {
        let p = &self.inner.probes;
        if p.stopped.load(Ordering::Relaxed) {
            Err("not ready: stopped")
        } else if !p.producer_ready.load(Ordering::Relaxed) {
            Err("not ready: the producer is not initialised yet")
        } else if !p.assignment_restored.load(Ordering::Relaxed) {
            Err("not ready: waiting for the first partition assignment and its restore")
        } else {
            Ok("ready")
        }
    }

    /// The answer to one request.
    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let line = |s: &str| format!("{s}\n");
        match path {
            "/metrics" => match self.render() {
                Ok(body) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, line(&e.to_string())),
            },
            "/health" => match self.health(now_ms()) {
                Ok(s) => text(StatusCode::OK, line(s)),
                Err(s) => text(StatusCode::SERVICE_UNAVAILABLE, line(&s)),
            },
            "/ready" => match self.ready() {
                Ok(s) => text(StatusCode::OK, line(s)),
                Err(s) => text(StatusCode::SERVICE_UNAVAILABLE, line(s)),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /health or /ready\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What `/health` and `/ready` answer from.
struct Probes {
    /// Unix ms of the loop's last sign of life.
    beat_ms: AtomicI64,
    /// Restores running.
    restoring: AtomicUsize,
    producer_ready: AtomicBool,
    assignment_restored: AtomicBool,
    stopped: AtomicBool,
    stall_after_ms: i64,
}

impl Probes {
    fn new(stall_after: Duration) -> Probes {
        Probes {
            beat_ms: AtomicI64::new(now_ms()),
            restoring: AtomicUsize::new(0),
            producer_ready: AtomicBool::new(false),
            assignment_restored: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stall_after_ms: i64::try_from(stall_after.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// A restore in progress (see [`Metrics::restoring`]); ends when dropped.
pub(crate) struct Restoring<'a>(&'a Probes);

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        self.0.restoring.fetch_sub(1, Ordering::Relaxed);
        self.0.beat_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// One batch's counts, added to the registry only when the batch commits.
#[derive(Debug)]
pub(crate) struct Tally {
    /// In route order.
    routes: Vec<RouteTally>,
}

#[derive(Debug, Default)]
struct RouteTally {
    input: u64,
    tombstones: u64,
    decisions: [u64; 4],
    dead_lettered: [u64; 3],
    emitted: Vec<u64>,
}

impl Tally {
    /// An input record of `route`.
    pub(crate) fn input(&mut self, route: usize) {
        if let Some(r) = self.routes.get_mut(route) {
            r.input += 1;
        }
    }

    /// A Debezium tombstone skipped.
    pub(crate) fn tombstone(&mut self, route: usize) {
        if let Some(r) = self.routes.get_mut(route) {
            r.tombstones += 1;
        }
    }

    /// The guard's decision on a record.
    pub(crate) fn decision(&mut self, route: usize, decision: Decision) {
        if let Some(n) = self
            .routes
            .get_mut(route)
            .and_then(|r| r.decisions.get_mut(decision.index()))
        {
            *n += 1;
        }
    }

    /// A record dead-lettered.
    pub(crate) fn dead_letter(&mut self, route: usize, class: ErrorClass) {
        if let Some(n) = self
            .routes
            .get_mut(route)
            .and_then(|r| r.dead_lettered.get_mut(class_index(class)))
        {
            *n += 1;
        }
    }

    /// A record written to the route's `target`-th target.
    pub(crate) fn emitted(&mut self, route: usize, target: usize) {
        if let Some(n) = self
            .routes
            .get_mut(route)
            .and_then(|r| r.emitted.get_mut(target))
        {
            *n += 1;
        }
    }

    fn clear(&mut self) {
        for r in &mut self.routes {
            r.input = 0;
            r.tombstones = 0;
            r.decisions = [0; 4];
            r.dead_lettered = [0; 3];
            r.emitted.fill(0);
        }
    }
}

/// The HTTP endpoint of one run. It stops when [`stop`](Endpoint::stop)ped or dropped.
#[derive(Debug)]
pub(crate) struct Endpoint {
    task: JoinHandle<()>,
    stop: DropGuard,
}

impl Endpoint {
    /// Binds `addr` and serves `metrics` on it from a task of its own.
    pub(crate) async fn start(addr: SocketAddr, metrics: Metrics) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let _ = metrics.inner.local_addr.set(bound);
        tracing::info!(addr = %bound, "serving /metrics, /health and /ready");
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            accept(listener, metrics, stop.clone())
                .instrument(tracing::info_span!("metrics_endpoint", addr = %bound)),
        );
        Ok(Endpoint {
            task,
            stop: stop.drop_guard(),
        })
    }

    /// Stops accepting, closes open connections and waits for the task to end.
    pub(crate) async fn stop(self) {
        let Endpoint { task, stop } = self;
        drop(stop);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "metrics endpoint task");
        }
    }
}

async fn accept(listener: TcpListener, metrics: Metrics, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                connections.spawn(connection(stream, metrics.clone()).in_current_span());
            }
            Ok((_, peer)) => tracing::debug!(%peer, "too many connections; closed"),
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    connections.shutdown().await;
}

async fn connection(stream: TcpStream, metrics: Metrics) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = metrics.respond(request.method(), request.uri().path());
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CLIENT_TIMEOUT, serving).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "connection failed"),
        Err(_) => tracing::debug!("connection timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(
            [
                ("customers", vec!["erp.customers", "erp.audit"]),
                ("orders", vec!["erp.orders"]),
            ],
            Duration::from_secs(60),
        )
        .expect("metrics")
    }

    /// `name{labels} value` lines of the rendered text.
    fn samples(m: &Metrics) -> Vec<String> {
        m.render()
            .expect("render")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    fn sample(m: &Metrics, series: &str) -> String {
        let prefix = format!("{series} ");
        samples(m)
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no sample {series}"))
    }

    #[test]
    fn rendered_names_and_types_are_pinned() {
        let text = metrics().render().expect("render");
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter(|l| l.starts_with("autoglm_"))
            .collect();
        assert_eq!(
            types,
            [
                "autoglm_consumer_assigned_partitions gauge",
                "autoglm_guard_decisions_total counter",
                "autoglm_pipeline_batch_duration_seconds histogram",
                "autoglm_pipeline_dead_lettered_records_total counter",
                "autoglm_pipeline_emitted_records_total counter",
                "autoglm_pipeline_input_records_total counter",
                "autoglm_pipeline_stage_duration_seconds histogram",
                "autoglm_pipeline_tombstones_skipped_total counter",
                "autoglm_restore_duration_seconds histogram",
                "autoglm_restore_records_total counter",
                "autoglm_route_throttled_seconds_total counter",
                "autoglm_transaction_aborts_total counter",
                "autoglm_transaction_commit_duration_seconds histogram",
                "autoglm_transaction_commits_total counter",
                "autoglm_transaction_last_commit_timestamp_seconds gauge",
            ]
        );
        // The process's own (which of them exist depends on the platform and its limits).
        for process in [
            "process_start_time_seconds gauge",
            "process_resident_memory_bytes gauge",
            "process_cpu_seconds_total counter",
        ] {
            assert!(
                text.contains(&format!("# TYPE {process}")),
                "{process}:\n{text}"
            );
        }
        // Every labelled series exists from the start, at zero.
        assert!(text.contains(
            "autoglm_guard_decisions_total{decision=\"snapshot_superseded\",route=\"orders\"} 0"
        ));
        assert!(text.contains(
            "autoglm_pipeline_emitted_records_total{route=\"customers\",target=\"erp.audit\"} 0"
        ));
        assert!(text.contains(
            "autoglm_pipeline_dead_lettered_records_total{class=\"poison\",route=\"orders\"} 0"
        ));
    }

    #[test]
    fn a_batch_counts_when_it_commits_and_not_when_it_aborts() {
        let m = metrics();
        let mut tally = m.tally();
        tally.input(0);
        tally.decision(0, Decision::Accept);
        tally.emitted(0, 1);
        tally.input(1);
        tally.dead_letter(1, ErrorClass::Poison);
        m.aborted(&mut tally);
        assert_eq!(sample(&m, "autoglm_transaction_aborts_total"), "1");
        assert_eq!(
            sample(
                &m,
                "autoglm_pipeline_input_records_total{route=\"customers\"}"
            ),
            "0",
            "an aborted batch adds nothing"
        );

        for _ in 0..2 {
            tally.input(0);
            tally.decision(0, Decision::Accept);
            tally.emitted(0, 1);
            tally.input(0);
            tally.decision(0, Decision::Stale);
            tally.input(1);
            tally.tombstone(1);
            tally.input(1);
            tally.dead_letter(1, ErrorClass::Poison);
            // Out of range: ignored, never a panic.
            tally.emitted(0, 7);
            tally.input(9);
            m.committed(&mut tally, Some(Instant::now()));
        }
        let expect = [
            (
                "autoglm_pipeline_input_records_total{route=\"customers\"}",
                "4",
            ),
            (
                "autoglm_pipeline_input_records_total{route=\"orders\"}",
                "4",
            ),
            (
                "autoglm_guard_decisions_total{decision=\"accepted\",route=\"customers\"}",
                "2",
            ),
            (
                "autoglm_guard_decisions_total{decision=\"stale\",route=\"customers\"}",
                "2",
            ),
            (
                "autoglm_pipeline_emitted_records_total{route=\"customers\",target=\"erp.audit\"}",
                "2",
            ),
            (
                "autoglm_pipeline_emitted_records_total{route=\"customers\",target=\"erp.customers\"}",
                "0",
            ),
            (
                "autoglm_pipeline_tombstones_skipped_total{route=\"orders\"}",
                "2",
            ),
            (
                "autoglm_pipeline_dead_lettered_records_total{class=\"poison\",route=\"orders\"}",
                "2",
            ),
            ("autoglm_transaction_commits_total", "2"),
            ("autoglm_pipeline_batch_duration_seconds_count", "2"),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&m, series), value, "{series}");
        }
        let last: f64 = sample(&m, "autoglm_transaction_last_commit_timestamp_seconds")
            .parse()
            .expect("number");
        assert!(last > 1.7e9, "a unix time: {last}");
    }

    #[test]
    fn ready_waits_for_the_producer_and_the_first_assignment() {
        let m = metrics();
        assert!(m.ready().is_err());
        m.assignment_restored();
        assert!(m.ready().is_err(), "the producer is not initialised yet");
        m.producer_ready();
        assert_eq!(m.ready(), Ok("ready"));
        m.stopped();
        assert_eq!(m.ready(), Err("not ready: stopped"));
    }

    #[test]
    fn health_fails_when_the_loop_stalls_or_stops_but_not_while_restoring() {
        let m = metrics();
        let now = now_ms();
        assert_eq!(m.health(now), Ok("ok"));
        let later = now + 61_000;
        let stalled = m.health(later).expect_err("stalled");
        assert!(stalled.starts_with("stalled"), "{stalled}");
        {
            let _restoring = m.restoring();
            assert_eq!(m.health(later), Ok("ok: restoring state"));
        }
        m.beat();
        assert_eq!(m.health(now_ms()), Ok("ok"));
        m.stopped();
        assert_eq!(m.health(now_ms()), Err("stopped".to_owned()));
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_three_paths_and_stops() {
        let m = metrics();
        let endpoint = Endpoint::start("127.0.0.1:0".parse().expect("addr"), m.clone())
            .await
            .expect("bind");
        let addr = m.local_addr().expect("bound");
        assert_ne!(addr.port(), 0);
        let client = reqwest::Client::new();
        let get = |path: &str| {
            let request = client.get(format!("http://{addr}{path}"));
            async move {
                let response = request.send().await.expect("request");
                let status = response.status().as_u16();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                (status, content_type, response.text().await.expect("body"))
            }
        };
        let (status, content_type, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(
            body.contains("autoglm_transaction_commits_total 0"),
            "{body}"
        );
        assert_eq!(get("/health").await.0, 200);
        let (status, _, body) = get("/ready").await;
        assert_eq!(
            (status, body.trim()),
            (503, "not ready: the producer is not initialised yet")
        );
        m.producer_ready();
        m.assignment_restored();
        assert_eq!(get("/ready").await.0, 200);
        assert_eq!(get("/nope").await.0, 404);
        let post = client
            .post(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("post");
        assert_eq!(post.status().as_u16(), 405);

        endpoint.stop().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed once stopped"
        );
    }
}
