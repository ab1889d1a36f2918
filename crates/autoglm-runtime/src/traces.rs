//! Trace export: a span per transaction and, with `tracing.record_spans`, a span per input
//! record that continues the record's own trace.
//!
//! ```text
//!  input record ─ traceparent/tracestate ─► TraceContextPropagator::extract ─► parent
//!                                                                               │
//!  transaction span "autoglm.transaction" ◄──── link ──── record span "autoglm.record"
//!  (a `tracing` span; tracing-opentelemetry)              (the SDK's tracer; sampled)
//!      records, partitions, routes, counts,                route, topic/partition/offset,
//!      outcome (committed / aborted: why)                  version, decision, targets, outcome
//!                                                               │ inject
//!                                                               ▼
//!                                          output and DLQ records: traceparent = record span
//!  spans ─► BatchSpanProcessor (its own thread, bounded queue) ─► OTLP/HTTP protobuf ─► collector
//! ```
//!
//! Off (no endpoint anywhere, the default) nothing here runs: no exporter, no layer, no span;
//! per record one branch, and the output records carry their input's `traceparent` and
//! `tracestate` unchanged, copied as bytes. With export on, the cost is one span per transaction.
//! Record spans cost per record, on the loop's task: the parent's parsing and a sampler call
//! (0.5 µs without a `traceparent`, 1.7 µs with an unsampled one), and for a sampled record the
//! span, its attributes and link, two header strings and the hand-off to the export thread (4–5
//! µs; criterion, 2 busy shared cores; docs/configuration.md). Attributes are built only once
//! the span is sampled.
//!
//! Sampling is `ParentBased(TraceIdRatioBased(tracing.sampling_ratio))`: a record whose
//! `traceparent` says sampled is always traced, one that says not sampled never is (its
//! `traceparent` goes on unchanged), and a record without one starts a new trace at the ratio.
//! Transaction spans are roots, sampled at the ratio.
//!
//! The standard `OTEL_*` environment variables win over the config's keys, as `AUTOGLM__…`
//! overrides do: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` over
//! `tracing.otlp_endpoint`, `OTEL_TRACES_SAMPLER` (with its `_ARG`, as the SDK reads them) over
//! the ratio, `OTEL_TRACES_SAMPLER_ARG` alone over `tracing.sampling_ratio`, `OTEL_SERVICE_NAME`
//! or a `service.name` in `OTEL_RESOURCE_ATTRIBUTES` over `tracing.service_name`.
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn export off; the exporter's own
//! variables (`OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `OTEL_BSP_*`) work as the SDK defines.
//!
//! Failure behaviour: traces never stop or slow the sync. A collector that is down or slow costs
//! spans, not records: the processor's queue is bounded (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048) and
//! drops spans when full, and the SDK logs export failures (target `opentelemetry_sdk`). A setting
//! that cannot work (an endpoint that is not a URI, `OTEL_EXPORTER_OTLP_PROTOCOL` other than
//! `http/protobuf`: only that is built in) stops `autoglm run` at start, naming it. On exit (SIGTERM, idle,
//! a fatal error) [`Traces::shutdown`] exports what is queued, the last transaction's spans too,
//! within [`SHUTDOWN_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders, OwnedMessage};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Directive, filter_fn};
use tracing_subscriber::registry::LookupSpan;

use autoglm_config::TracingConfig;

use crate::route::RouteRuntime;

/// The `tracing` target of the transaction spans: the only spans exported, and spans the log
/// output leaves out ([`unlogged`]).
pub const TARGET: &str = "autoglm::traces";

/// How long the export of the queued spans may take at exit.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The W3C trace context headers, as Kafka header keys.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The trace export cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// An `OTEL_*` variable holds a value this processor cannot use.
    #[error("{variable}: {reason}")]
    Environment {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The OTLP exporter refused its settings (an endpoint, a protocol).
    #[error("tracing: the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The trace export of one process: off, or a tracer provider with its batch span processor.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Traces {
    export: Option<Arc<Export>>,
}

struct Export {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    record_spans: bool,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("export", &self.export.is_some())
            .field("record_spans", &self.record_spans())
            .finish()
    }
}

/// What the config and the environment ask for, once export is on. `None` fields are left to
/// the SDK, which reads them from the environment.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// The full traces URL from `tracing.otlp_endpoint`; `None`: an `OTEL_EXPORTER_OTLP_*`
    /// variable names it.
    endpoint: Option<String>,
    /// The ratio of `ParentBased(TraceIdRatioBased)`; `None`: `OTEL_TRACES_SAMPLER` names the
    /// sampler.
    ratio: Option<f64>,
    /// `service.name`; `None`: the environment names it.
    service_name: Option<String>,
    /// `service.instance.id`; `None`: `OTEL_RESOURCE_ATTRIBUTES` names it.
    instance_id: Option<String>,
}

/// Decides, from the config and `env` (a variable's value, `None` when unset or empty), whether
/// to export and with what; `Ok(None)`: off.
fn plan(
    config: &TracingConfig,
    instance_id: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Plan>, TracesError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(TracesError::Environment {
                variable: "OTEL_TRACES_EXPORTER",
                reason: format!("{other:?}: only `otlp` (or `none`) is built in"),
            });
        }
    }
    // Only HTTP/protobuf is built in; the SDK would ignore another protocol and post protobuf to
    // an endpoint that expects something else.
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = env(variable)
            && protocol.trim() != "http/protobuf"
        {
            return Err(TracesError::Environment {
                variable,
                reason: format!("{protocol:?}: only `http/protobuf` is built in"),
            });
        }
    }
    let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let endpoint = match (&config.otlp_endpoint, from_env) {
        (_, true) => None,
        (Some(base), false) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
        (None, false) => return Ok(None),
    };
    let ratio = if env("OTEL_TRACES_SAMPLER").is_some() {
        None
    } else if let Some(arg) = env("OTEL_TRACES_SAMPLER_ARG") {
        match arg.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => Some(ratio),
            _ => {
                return Err(TracesError::Environment {
                    variable: "OTEL_TRACES_SAMPLER_ARG",
                    reason: format!("{arg:?} is not a sampling ratio between 0 and 1"),
                });
            }
        }
    } else {
        Some(config.sampling_ratio)
    };
    let resource_attributes = env("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let names = |key: &str| {
        resource_attributes
            .split(',')
            .any(|pair| pair.split_once('=').is_some_and(|(k, _)| k.trim() == key))
    };
    let service_name = (env("OTEL_SERVICE_NAME").is_none() && !names("service.name"))
        .then(|| config.service_name.clone());
    let instance_id = (!names("service.instance.id")).then(|| instance_id.to_owned());
    Ok(Some(Plan {
        endpoint,
        ratio,
        service_name,
        instance_id,
    }))
}

impl Traces {
    /// No export.
    pub fn off() -> Traces {
        Traces::default()
    }

    /// The export `config` and the `OTEL_*` environment ask for; `instance_id` (the
    /// transactional id) becomes `service.instance.id`. Call it outside an async runtime: it
    /// builds the exporter's blocking HTTP client.
    pub fn new(config: &TracingConfig, instance_id: &str) -> Result<Traces, TracesError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let Some(plan) = plan(config, instance_id, &env)? else {
            return Ok(Traces::off());
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = plan.endpoint {
            exporter = exporter.with_endpoint(endpoint);
        }
        let exporter = exporter.build().map_err(TracesError::Exporter)?;
        let mut resource = Resource::builder();
        if let Some(name) = plan.service_name {
            resource = resource.with_service_name(name);
        }
        if let Some(id) = plan.instance_id {
            resource = resource.with_attribute(KeyValue::new("service.instance.id", id));
        }
        let mut provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build());
        if let Some(ratio) = plan.ratio {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let provider = provider.build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("autoglm")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Traces {
            export: Some(Arc::new(Export {
                provider,
                tracer,
                record_spans: config.record_spans,
            })),
        })
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.export.is_some()
    }

    /// Whether each input record gets a span of its own.
    pub fn record_spans(&self) -> bool {
        self.export.as_ref().is_some_and(|e| e.record_spans)
    }

    /// The `tracing` layer that exports the transaction spans (and the warnings and errors
    /// logged inside them, as span events); `None` when off. Add it to the subscriber.
    pub fn layer<S>(&self) -> Option<impl Layer<S>>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let export = self.export.as_ref()?;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(export.tracer.clone())
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_filter(filter_fn(exported)),
        )
    }

    /// Exports what is queued and stops the export, within [`SHUTDOWN_TIMEOUT`]. Call it once,
    /// when the pipeline has stopped, outside an async runtime.
    pub fn shutdown(&self) {
        if let Some(export) = &self.export
            && let Err(error) = export.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(%error, "trace export: the last spans may be lost");
        }
    }

    /// A span for the transaction of `batch` (Span::none() when off), with the records, the
    /// partitions and the routes they belong to; the outcome is recorded by [`committed`] or
    /// [`failed`].
    pub(crate) fn transaction(
        &self,
        batch: &[OwnedMessage],
        routes: &[RouteRuntime],
        exactly_once: bool,
    ) -> tracing::Span {
        if self.export.is_none() {
            return tracing::Span::none();
        }
        let mut partitions: Vec<(&str, i32)> =
            batch.iter().map(|m| (m.topic(), m.partition())).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let listed = partitions
            .iter()
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect::<Vec<_>>()
            .join(",");
        let read = routes
            .iter()
            .filter(|r| partitions.iter().any(|(topic, _)| r.matches(topic)))
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        tracing::info_span!(
            target: TARGET,
            "autoglm.transaction",
            messaging.system = "kafka",
            autoglm.records = count(batch.len()),
            autoglm.partitions = listed,
            autoglm.partition_count = count(partitions.len()),
            autoglm.routes = read,
            autoglm.exactly_once = exactly_once,
            autoglm.emitted = Empty,
            autoglm.dropped = Empty,
            autoglm.dead_lettered = Empty,
            autoglm.tombstones = Empty,
            autoglm.outcome = Empty,
            autoglm.abort_reason = Empty,
        )
    }

    /// The record spans of one transaction, all starting at `started`, each linked to the
    /// transaction's span. Records nothing unless `tracing.record_spans` is on.
    pub(crate) fn records(&self, transaction: &tracing::Span, started: SystemTime) -> RecordSpans {
        let tracer = self
            .export
            .as_ref()
            .filter(|e| e.record_spans)
            .map(|e| e.tracer.clone());
        // Linked only when exported: a link to a span that was not sampled leads nowhere.
        let transaction = match &tracer {
            Some(_) => transaction.context().span().span_context().clone(),
            None => SpanContext::empty_context(),
        };
        let transaction = if transaction.is_sampled() {
            transaction
        } else {
            SpanContext::empty_context()
        };
        RecordSpans {
            tracer,
            transaction,
            started,
            open: Vec::new(),
            last_sampled: false,
        }
    }
}

/// Whether the trace layer takes `meta`: the transaction spans, and the warnings and errors
/// inside them (not the SDK's own, which would feed back into it).
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    if meta.is_span() {
        meta.target() == TARGET
    } else {
        *meta.level() <= tracing::Level::WARN && !meta.target().starts_with("opentelemetry")
    }
}

/// The log filter's directive that leaves the exported transaction spans out of the log output,
/// so that the log lines stay as they are with export off. Add it to the log layer's
/// `EnvFilter`. (A `filter_fn` combined with the `EnvFilter` lost events: the last error line of
/// `check` went missing at the info level.)
pub fn unlogged() -> Directive {
    format!("{TARGET}=off")
        .parse()
        .expect("the traces target is a valid directive")
}

/// A count as a signed integer: tracing-opentelemetry exports unsigned values as text.
fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Records the outcome of a committed transaction on its span.
pub(crate) fn committed(span: &tracing::Span, summary: &crate::RunSummary) {
    if span.is_none() {
        return;
    }
    span.record("autoglm.emitted", count(summary.emitted));
    span.record("autoglm.dropped", count(summary.dropped));
    span.record("autoglm.dead_lettered", count(summary.dead_lettered));
    span.record("autoglm.tombstones", count(summary.tombstones));
    span.record("autoglm.outcome", "committed");
    span.set_status(Status::Ok);
}

/// Records the outcome of a transaction that did not commit: `aborted` (retried) or `failed`
/// (the run stops), and why.
pub(crate) fn failed(span: &tracing::Span, outcome: &'static str, reason: &str) {
    if span.is_none() {
        return;
    }
    span.record("autoglm.outcome", outcome);
    span.record("autoglm.abort_reason", reason);
    span.set_status(Status::error(format!("{outcome}: {reason}")));
}

/// What happened to a record, for its span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Decided<'a> {
    /// Written to the route's targets (at this version).
    Accepted { version: &'a str },
    /// Dropped by the version guard (`duplicate`, `stale`, `snapshot_superseded`).
    Dropped {
        decision: &'static str,
        version: &'a str,
    },
    /// Sent to the dead-letter topic before any decision.
    DeadLettered {
        class: &'a str,
        rule: &'a str,
        message: &'a str,
    },
    /// A Debezium tombstone, skipped (the delete before it carried the change).
    Tombstone,
}

/// The trace context an output or dead-letter record carries: its record span's.
#[derive(Debug)]
pub(crate) struct Propagated {
    traceparent: String,
    tracestate: Option<String>,
}

impl Injector for Propagated {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

impl Propagated {
    /// Adds `traceparent` (and `tracestate`) to `headers`.
    pub(crate) fn insert_into(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let headers = headers.insert(Header {
            key: TRACEPARENT,
            value: Some(self.traceparent.as_str()),
        });
        match &self.tracestate {
            Some(state) => headers.insert(Header {
                key: TRACESTATE,
                value: Some(state.as_str()),
            }),
            None => headers,
        }
    }
}

/// Reads the W3C trace context headers of a Kafka record, for the propagator.
struct KafkaHeaders<'m, H>(Option<&'m H>);

impl<H: Headers> Extractor for KafkaHeaders<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        let header = self.0?.iter().find(|h| h.key == key)?;
        std::str::from_utf8(header.value?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map_or_else(Vec::new, |h| h.iter().map(|h| h.key).collect())
    }
}

/// The record spans of one transaction; when record spans are off, empty and free.
pub(crate) struct RecordSpans {
    tracer: Option<SdkTracer>,
    /// The transaction span's context, when it is sampled: every record span links to it.
    transaction: SpanContext,
    started: SystemTime,
    /// Sampled spans, ended by [`RecordSpans::finish`].
    open: Vec<opentelemetry_sdk::trace::Span>,
    /// Whether the last call of [`RecordSpans::record`] opened a span.
    last_sampled: bool,
}

impl RecordSpans {
    /// Starts the span of `msg`, read by `route`, child of its `traceparent` (a new root
    /// without one), and returns the context its output and dead-letter records carry; `None`
    /// when off or not sampled (the record's own `traceparent` then goes on unchanged).
    pub(crate) fn record(
        &mut self,
        msg: &OwnedMessage,
        route: &RouteRuntime,
        decided: Decided<'_>,
    ) -> Option<Arc<Propagated>> {
        self.last_sampled = false;
        let tracer = self.tracer.as_ref()?;
        let parent = TraceContextPropagator::new().extract(&KafkaHeaders(msg.headers()));
        // Sampled first (the sampler reads only the parent and the trace id): a record that is
        // not sampled costs no attributes.
        let mut span = tracer
            .span_builder("autoglm.record")
            .with_kind(SpanKind::Consumer)
            .with_start_time(self.started)
            .start_with_context(tracer, &parent);
        let context = span.span_context().clone();
        if !context.is_sampled() {
            return None;
        }
        let mut attributes = Vec::with_capacity(12);
        attributes.extend([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", msg.topic().to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                msg.partition().to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", msg.offset()),
            KeyValue::new("autoglm.route", route.name.clone()),
        ]);
        match decided {
            Decided::Accepted { version } => {
                attributes.push(KeyValue::new("autoglm.decision", "accepted"));
                attributes.push(KeyValue::new("autoglm.version", version.to_owned()));
                let targets: Vec<opentelemetry::StringValue> = route
                    .targets
                    .iter()
                    .map(|t| t.topic().to_owned().into())
                    .collect();
                attributes.push(KeyValue::new(
                    "autoglm.targets",
                    Value::Array(targets.into()),
                ));
            }
            Decided::Dropped { decision, version } => {
                attributes.push(KeyValue::new("autoglm.decision", decision));
                attributes.push(KeyValue::new("autoglm.version", version.to_owned()));
            }
            Decided::DeadLettered {
                class,
                rule,
                message,
            } => {
                attributes.push(KeyValue::new("autoglm.decision", "dead_lettered"));
                attributes.push(KeyValue::new("autoglm.dlq_topic", route.dlq_topic.clone()));
                attributes.push(KeyValue::new("autoglm.error.class", class.to_owned()));
                attributes.push(KeyValue::new("autoglm.error.rule", rule.to_owned()));
                span.set_status(Status::error(message.to_owned()));
            }
            Decided::Tombstone => {
                attributes.push(KeyValue::new("autoglm.decision", "tombstone_skipped"));
            }
        }
        span.set_attributes(attributes);
        if self.transaction.is_valid() {
            span.add_link(self.transaction.clone(), Vec::new());
        }
        let mut propagated = Propagated {
            traceparent: String::new(),
            tracestate: None,
        };
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context(context),
            &mut propagated,
        );
        self.open.push(span);
        self.last_sampled = true;
        Some(Arc::new(propagated))
    }

    /// Marks the span of the last [`RecordSpans::record`] call, if it opened one: one of its
    /// targets' records went to the dead-letter topic (it could not be encoded for `target`).
    pub(crate) fn dead_lettered_last(&mut self, target: &str, class: &str, message: &str) {
        if !self.last_sampled {
            return;
        }
        if let Some(span) = self.open.last_mut() {
            span.add_event(
                "dead_lettered",
                vec![
                    KeyValue::new("autoglm.target", target.to_owned()),
                    KeyValue::new("autoglm.error.class", class.to_owned()),
                    KeyValue::new("autoglm.error.message", message.to_owned()),
                ],
            );
            span.set_status(Status::error(format!("encoding for {target}: {message}")));
        }
    }

    /// Ends every open span with the transaction's outcome: `committed`, or `aborted` /
    /// `failed` and why.
    pub(crate) fn finish(&mut self, outcome: &'static str, reason: Option<&str>) {
        for mut span in self.open.drain(..) {
            span.set_attribute(KeyValue::new("autoglm.outcome", outcome));
            if let Some(reason) = reason {
                span.set_status(Status::error(format!("{outcome}: {reason}")));
            }
            span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn config(endpoint: Option<&str>) -> TracingConfig {
        TracingConfig {
            otlp_endpoint: endpoint.map(str::to_owned),
            sampling_ratio: 0.5,
            service_name: "crm-sync".to_owned(),
            record_spans: true,
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        assert_eq!(plan(&config(None), "g-0", &env(&[])).expect("plan"), None);
        assert!(!Traces::off().is_on() && !Traces::off().record_spans());
    }

    #[test]
    fn the_config_alone_decides_when_the_environment_is_silent() {
        let plan = plan(&config(Some("http://127.0.0.1:4318/")), "g-0", &env(&[]))
            .expect("plan")
            .expect("on");
        assert_eq!(
            plan,
            Plan {
                endpoint: Some("http://127.0.0.1:4318/v1/traces".to_owned()),
                ratio: Some(0.5),
                service_name: Some("crm-sync".to_owned()),
                instance_id: Some("g-0".to_owned()),
            }
        );
    }

    #[test]
    fn otel_variables_win_over_the_config() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.instance.id=pod-7",
            ),
        ];
        let plan = plan(&config(Some("http://ignored:4318")), "g-0", &env(&vars))
            .expect("plan")
            .expect("on");
        assert_eq!(
            plan,
            Plan {
                endpoint: None,
                ratio: Some(0.01),
                service_name: None,
                instance_id: None,
            }
        );
        // An endpoint in the environment turns export on without one in the config.
        let vars = [(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )];
        assert!(plan_of(None, &vars).is_some());
        // A sampler named in the environment is the SDK's to build.
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.3"),
        ];
        assert_eq!(plan_of(None, &vars).expect("on").ratio, None);
        // service.name in OTEL_RESOURCE_ATTRIBUTES counts as naming the service.
        let vars = [("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing")];
        assert_eq!(
            plan_of(Some("http://c:4318"), &vars)
                .expect("on")
                .service_name,
            None
        );
    }

    fn plan_of(endpoint: Option<&str>, vars: &[(&str, &str)]) -> Option<Plan> {
        plan(&config(endpoint), "g-0", &env(vars)).expect("plan")
    }

    #[test]
    fn the_environment_can_turn_export_off_and_bad_values_are_named() {
        let on = Some("http://c:4318");
        assert_eq!(plan_of(on, &[("OTEL_SDK_DISABLED", "true")]), None);
        assert_eq!(plan_of(on, &[("OTEL_TRACES_EXPORTER", "none")]), None);
        let error = plan(
            &config(on),
            "g",
            &env(&[("OTEL_TRACES_EXPORTER", "zipkin")]),
        )
        .expect_err("zipkin");
        assert!(
            error.to_string().starts_with("OTEL_TRACES_EXPORTER: "),
            "{error}"
        );
        for variable in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            let error = plan(&config(on), "g", &env(&[(variable, "grpc")])).expect_err("grpc");
            assert!(error.to_string().starts_with(variable), "{error}");
        }
        assert!(plan_of(on, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_some());
        for bad in ["1.5", "-1", "half"] {
            let error =
                plan(&config(on), "g", &env(&[("OTEL_TRACES_SAMPLER_ARG", bad)])).expect_err(bad);
            assert!(
                error.to_string().starts_with("OTEL_TRACES_SAMPLER_ARG: "),
                "{error}"
            );
        }
    }

    #[test]
    fn the_trace_context_is_read_from_kafka_headers_and_written_back() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "other",
                value: Some("x"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            })
            .insert(Header {
                key: TRACESTATE,
                value: Some("vendor=v1"),
            });
        let extracted = TraceContextPropagator::new().extract(&KafkaHeaders(Some(&headers)));
        let span = extracted.span();
        let context = span.span_context();
        assert!(context.is_valid() && context.is_remote() && context.is_sampled());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        let mut propagated = Propagated {
            traceparent: String::new(),
            tracestate: None,
        };
        TraceContextPropagator::new().inject_context(&extracted, &mut propagated);
        assert_eq!(
            propagated.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(propagated.tracestate.as_deref(), Some("vendor=v1"));
        let written = propagated.insert_into(OwnedHeaders::new());
        let keys: Vec<&str> = written.iter().map(|h| h.key).collect();
        assert_eq!(keys, [TRACEPARENT, TRACESTATE]);
        // No header, or a malformed one: no parent (a new root when sampled).
        for headers in [
            None,
            Some(OwnedHeaders::new().insert(Header {
                key: TRACEPARENT,
                value: Some("00-zz-00f067aa0ba902b7-01"),
            })),
        ] {
            let extracted = TraceContextPropagator::new().extract(&KafkaHeaders(headers.as_ref()));
            assert!(!extracted.span().span_context().is_valid());
        }
    }
}
