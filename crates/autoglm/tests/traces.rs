//! Traces, end to end: records with known `traceparent` headers (sampled, not sampled, none, a
//! poison one, a stale one) go through the real binary, which exports to the stack's Jaeger with
//! `sampling_ratio: 1.0` and `record_spans: true`; the test reads the output and dead-letter
//! records' headers and asks Jaeger's query API for the traces they name.
//!
//! It fails, never skips, when Jaeger is not running (`make up` starts it).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use autoglm_demo::read_committed;
use autoglm_tests::{Jaeger, jaeger, stack, unique};
use common::{Job, Names, spawn_autoglm, terminate};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::Value as Json;

/// A W3C trace id and span id, random.
fn ids() -> (String, String) {
    (
        format!("{:032x}", fastrand::u128(1..)),
        format!("{:016x}", fastrand::u64(1..)),
    )
}

/// `(trace id, span id, flags)` of a `traceparent` value.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00", "traceparent {value:?}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// One span of Jaeger's v1-compatible JSON (`/api/traces/<id>`).
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    operation: String,
    /// `(refType, traceID, spanID)`: CHILD_OF is the parent, FOLLOWS_FROM a link.
    references: Vec<(String, String, String)>,
    tags: BTreeMap<String, Json>,
    service: String,
}

impl Span {
    fn tag(&self, key: &str) -> &Json {
        self.tags
            .get(key)
            .unwrap_or_else(|| panic!("span {} has no tag {key}: {:?}", self.operation, self.tags))
    }

    fn text(&self, key: &str) -> String {
        match self.tag(key) {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn parent(&self) -> Option<(&str, &str)> {
        self.references
            .iter()
            .find(|(kind, _, _)| kind == "CHILD_OF")
            .map(|(_, trace, span)| (trace.as_str(), span.as_str()))
    }
}

fn spans_of(body: &Json) -> Vec<Span> {
    let mut spans = Vec::new();
    for trace in body["data"].as_array().into_iter().flatten() {
        for span in trace["spans"].as_array().into_iter().flatten() {
            let process = span["processID"].as_str().unwrap_or_default();
            spans.push(Span {
                trace_id: span["traceID"].as_str().unwrap_or_default().to_owned(),
                span_id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                operation: span["operationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                references: span["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                        (field("refType"), field("traceID"), field("spanID"))
                    })
                    .collect(),
                tags: span["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        (
                            t["key"].as_str().unwrap_or_default().to_owned(),
                            t["value"].clone(),
                        )
                    })
                    .collect(),
                service: trace["processes"][process]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    spans
}

/// Asks Jaeger for `path` until `ready` holds of its spans or 20 s pass; returns the last spans
/// and the HTTP status.
async fn query(jaeger: &Jaeger, path: &str, ready: impl Fn(&[Span]) -> bool) -> (Vec<Span>, u16) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client
            .get(format!("{}{path}", jaeger.query_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("jaeger at {} did not answer: {e}", jaeger.query_url));
        let status = response.status().as_u16();
        let body: Json = response.json().await.unwrap_or(Json::Null);
        let spans = spans_of(&body);
        if ready(&spans) || Instant::now() > deadline {
            return (spans, status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The spans of trace `trace_id`, once one named `operation` is there.
async fn trace(jaeger: &Jaeger, trace_id: &str, operation: &str) -> Vec<Span> {
    let (spans, status) = query(jaeger, &format!("/api/traces/{trace_id}"), |spans| {
        spans.iter().any(|s| s.operation == operation)
    })
    .await;
    assert!(
        spans.iter().any(|s| s.operation == operation),
        "jaeger has no {operation} span in trace {trace_id} (HTTP {status}): {spans:?}"
    );
    spans
}

async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &str,
    trace: &[(&str, &str)],
) {
    let mut headers = OwnedHeaders::new();
    for (k, v) in trace {
        headers = headers.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(headers),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

#[tokio::test]
async fn record_spans_continue_the_input_trace_and_output_records_carry_them_on() {
    let stack = stack().await;
    let jaeger = jaeger().await;
    let names = Names::fresh();
    let kafka = format!("bootstrap_servers: \"{}\"", stack.bootstrap);
    let job = Job::with_names(&stack, names, &kafka, "", "flush_interval_ms: 100", 100, 3).await;
    // A service name of this run's own: its transaction spans are found by it.
    let service = unique("autoglm-test");
    let config = job.dir().join("config.yaml");
    let mut yaml = std::fs::read_to_string(&config).expect("config");
    yaml.push_str(&format!(
        "tracing:\n  otlp_endpoint: {}\n  sampling_ratio: 1.0\n  service_name: {service}\n  record_spans: true\n",
        jaeger.otlp_endpoint
    ));
    std::fs::write(&config, yaml).expect("config");

    let (accepted_trace, accepted_parent) = ids();
    let (poison_trace, poison_parent) = ids();
    let (stale_trace, stale_parent) = ids();
    let (unsampled_trace, unsampled_parent) = ids();
    let accepted_tp = format!("00-{accepted_trace}-{accepted_parent}-01");
    let unsampled_tp = format!("00-{unsampled_trace}-{unsampled_parent}-00");
    let producer: FutureProducer = job
        .kafka()
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let row =
        |id: u64, rev: i64| serde_json::json!({"id": id, "rev": rev, "name": "n"}).to_string();
    produce(
        &producer,
        &job.source,
        "1",
        &row(1, 2),
        &[
            ("traceparent", &accepted_tp),
            ("tracestate", "autoglm-test=1"),
        ],
    )
    .await;
    produce(&producer, &job.source, "2", &row(2, 1), &[]).await;
    produce(
        &producer,
        &job.source,
        "3",
        "this is not json",
        &[(
            "traceparent",
            &format!("00-{poison_trace}-{poison_parent}-01"),
        )],
    )
    .await;
    // Older than key 1's version 2: dropped as stale, with a span that says so.
    produce(
        &producer,
        &job.source,
        "1",
        &row(1, 1),
        &[(
            "traceparent",
            &format!("00-{stale_trace}-{stale_parent}-01"),
        )],
    )
    .await;
    produce(
        &producer,
        &job.source,
        "4",
        &row(4, 1),
        &[("traceparent", &unsampled_tp)],
    )
    .await;

    // Spans leave the batch span processor only at exit (its timer would take 10 minutes): the
    // test sees them only if the exit exports what is queued.
    let child = job.start(0, &[("OTEL_BSP_SCHEDULE_DELAY", "600000")]);
    let status = job.exit_of(child, 0).await;
    assert!(
        status.success(),
        "run 0: {status}; see {}",
        job.log(0).display()
    );

    let output = read_committed(job.kafka(), None, &job.target, Duration::from_secs(3))
        .await
        .expect("read target");
    let by_key: BTreeMap<&str, &BTreeMap<String, String>> = output
        .iter()
        .map(|r| (r.key.as_str(), &r.headers))
        .collect();
    assert_eq!(
        by_key.keys().copied().collect::<Vec<_>>(),
        ["1", "2", "4"],
        "output: {output:?}; logs in {}",
        job.dir().display()
    );
    let dead = read_committed(job.kafka(), None, &job.dlq, Duration::from_secs(1))
        .await
        .expect("read dlq");
    assert_eq!(dead.len(), 1, "dead letters: {dead:?}");

    // The accepted record: its span is the child of the input's span, in the input's trace, and
    // the output record carries that span on, with the input's tracestate.
    let headers = by_key["1"];
    let (trace_id, span_id, flags) = parse_traceparent(&headers["traceparent"]);
    assert_eq!(trace_id, accepted_trace, "output keeps the input's trace");
    assert_ne!(
        span_id, accepted_parent,
        "output carries the record span, not the input's"
    );
    assert_eq!(flags, "01");
    assert_eq!(headers["tracestate"], "autoglm-test=1");
    let spans = trace(&jaeger, &accepted_trace, "autoglm.record").await;
    let record = spans
        .iter()
        .find(|s| s.span_id == span_id)
        .unwrap_or_else(|| panic!("no span {span_id} (the output's) in {spans:?}"));
    assert_eq!(record.operation, "autoglm.record");
    assert_eq!(record.service, service);
    assert_eq!(
        record.parent(),
        Some((accepted_trace.as_str(), accepted_parent.as_str())),
        "the record span's parent is the input's span: {record:?}"
    );
    assert_eq!(record.text("autoglm.route"), "accounts");
    assert_eq!(record.text("autoglm.decision"), "accepted");
    assert_eq!(record.text("autoglm.version"), "2");
    assert_eq!(record.text("autoglm.outcome"), "committed");
    assert_eq!(record.text("messaging.system"), "kafka");
    assert_eq!(record.text("messaging.destination.name"), job.source);
    assert!(
        record.text("autoglm.targets").contains(&job.target),
        "{record:?}"
    );
    let offset = output
        .iter()
        .find(|r| r.key == "1")
        .map(|r| r.headers["autoglm.source.offset"].clone())
        .expect("lineage header");
    assert_eq!(record.text("messaging.kafka.offset"), offset);
    assert_eq!(
        record.text("messaging.destination.partition.id"),
        by_key["1"]["autoglm.source.partition"]
    );

    // The transaction spans: found by the run's service name; the record span links to one.
    let (transactions, status) = query(
        &jaeger,
        &format!("/api/traces?service={service}&operation=autoglm.transaction&limit=100"),
        |spans| {
            spans
                .iter()
                .filter(|s| s.operation == "autoglm.transaction")
                .map(|s| s.tag("autoglm.records").as_i64().unwrap_or(0))
                .sum::<i64>()
                >= 5
        },
    )
    .await;
    let transactions: Vec<&Span> = transactions
        .iter()
        .filter(|s| s.operation == "autoglm.transaction")
        .collect();
    assert!(
        !transactions.is_empty(),
        "no transaction span of service {service} (HTTP {status})"
    );
    let records: i64 = transactions
        .iter()
        .map(|s| s.tag("autoglm.records").as_i64().unwrap_or(0))
        .sum();
    assert_eq!(
        records, 5,
        "every record in one committed transaction span: {transactions:?}"
    );
    for t in &transactions {
        assert_eq!(t.text("autoglm.outcome"), "committed", "{t:?}");
        assert_eq!(t.text("autoglm.routes"), "accounts", "{t:?}");
        assert_eq!(t.tag("autoglm.exactly_once"), &Json::Bool(true), "{t:?}");
        assert!(t.text("autoglm.partitions").contains(&job.source), "{t:?}");
        assert!(t.parent().is_none(), "a transaction span is a root: {t:?}");
    }
    let linked = record
        .references
        .iter()
        .find(|(kind, _, _)| kind == "FOLLOWS_FROM")
        .unwrap_or_else(|| panic!("the record span links to its transaction: {record:?}"));
    let transaction = transactions
        .iter()
        .find(|t| t.trace_id == linked.1 && t.span_id == linked.2)
        .unwrap_or_else(|| {
            panic!("the link {linked:?} names no transaction span: {transactions:?}")
        });
    let emitted = transaction.tag("autoglm.emitted").as_i64().unwrap_or(0);
    assert!(emitted >= 1, "{transaction:?}");

    // The record without a traceparent: a new trace, rooted at its record span.
    let (root_trace, root_span, _) = parse_traceparent(&by_key["2"]["traceparent"]);
    assert!(!by_key["2"].contains_key("tracestate"));
    let spans = trace(&jaeger, &root_trace, "autoglm.record").await;
    let root = spans
        .iter()
        .find(|s| s.span_id == root_span)
        .unwrap_or_else(|| panic!("no span {root_span} in {spans:?}"));
    assert!(root.parent().is_none(), "a new root: {root:?}");
    assert_eq!(root.text("autoglm.decision"), "accepted");

    // The poison record: its dead letter carries the record span, child of the input's span.
    let (dlq_trace, dlq_span, _) = parse_traceparent(&dead[0].headers["traceparent"]);
    assert_eq!(dlq_trace, poison_trace);
    let spans = trace(&jaeger, &poison_trace, "autoglm.record").await;
    let poison = spans
        .iter()
        .find(|s| s.span_id == dlq_span)
        .unwrap_or_else(|| panic!("no span {dlq_span} (the dead letter's) in {spans:?}"));
    assert_eq!(
        poison.parent(),
        Some((poison_trace.as_str(), poison_parent.as_str()))
    );
    assert_eq!(poison.text("autoglm.decision"), "dead_lettered");
    assert_eq!(poison.text("autoglm.dlq_topic"), job.dlq);
    assert_eq!(poison.text("autoglm.error.class"), "poison");
    assert_eq!(poison.text("otel.status_code"), "ERROR");

    // The stale record: no output, but a span that says why.
    let spans = trace(&jaeger, &stale_trace, "autoglm.record").await;
    let stale = spans
        .iter()
        .find(|s| s.operation == "autoglm.record")
        .expect("stale record span");
    assert_eq!(
        stale.parent(),
        Some((stale_trace.as_str(), stale_parent.as_str()))
    );
    assert_eq!(stale.text("autoglm.decision"), "stale");
    assert_eq!(stale.text("autoglm.version"), "1");

    // The record whose traceparent says "not sampled": not traced, its traceparent goes on as
    // it came.
    assert_eq!(by_key["4"]["traceparent"], unsampled_tp);
    let (spans, status) = query(&jaeger, &format!("/api/traces/{unsampled_trace}"), |_| true).await;
    assert!(
        spans.is_empty(),
        "an unsampled record left spans (HTTP {status}): {spans:?}"
    );

    // SIGTERM: the open batch commits, and its spans are exported before the process exits.
    let (term_trace, term_parent) = ids();
    let mut child = spawn_autoglm(
        &config,
        &job.log(1),
        600,
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    produce(
        &producer,
        &job.source,
        "5",
        &row(5, 1),
        &[("traceparent", &format!("00-{term_trace}-{term_parent}-01"))],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let output = read_committed(job.kafka(), None, &job.target, Duration::from_secs(2))
            .await
            .expect("read target");
        if output.iter().any(|r| r.key == "5") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run 1 wrote no output for key 5; see {}",
            job.log(1).display()
        );
    }
    let status = terminate(&mut child);
    assert!(
        status.success(),
        "run 1 after SIGTERM: {status}; see {}",
        job.log(1).display()
    );
    let spans = trace(&jaeger, &term_trace, "autoglm.record").await;
    let span = spans
        .iter()
        .find(|s| s.operation == "autoglm.record")
        .expect("the record span of the last batch before SIGTERM");
    assert_eq!(
        span.parent(),
        Some((term_trace.as_str(), term_parent.as_str()))
    );
    assert_eq!(span.text("autoglm.outcome"), "committed");
}
