//! The records a transaction produces, and their headers: outputs ([`Outgoing`]), state
//! entries to the changelog ([`ChangelogEntry`]), and dead-letter and audit copies of an input
//! record ([`Output`], which also counts what was sent, for the acks).
//!
//! Headers: an output carries `autoglm.version` and `autoglm.op`, and with lineage on, the
//! input's `autoglm.source.topic`, `.partition` and `.offset`. A dead letter carries the reason
//! in four parts (`autoglm.error.class`, `.message`, `.rule`, `.field`), the route, the source
//! headers and the input's timestamp. Every record carries the W3C trace context on.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;

use autoglm_core::ErrorClass;

use super::sizes::{SizeLimits, batch_bound};
use super::{BatchError, RunError};
use crate::acks::{AckingProducer, Kind, Ticket, Undelivered, Written};
use crate::route::RouteRuntime;
use crate::traces::Propagated;

/// An output record, decided and encoded, to be sent.
pub(super) struct Outgoing<'b> {
    pub(super) topic: &'b str,
    pub(super) key: &'b [u8],
    /// `None`: a tombstone.
    pub(super) payload: Option<Vec<u8>>,
    /// The input record it came from.
    pub(super) source: &'b OwnedMessage,
    pub(super) op: &'static str,
    pub(super) version: String,
    /// Add the source topic, partition and offset headers.
    pub(super) lineage: bool,
    /// The record span's context, when it was sampled; else the input's goes on.
    pub(super) trace: Option<Arc<Propagated>>,
}

impl Outgoing<'_> {
    /// Its headers: the version and op, with lineage the input's place, and the trace context.
    fn headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new();
        if self.lineage {
            headers = with_source(headers, self.source);
        }
        let headers = headers
            .insert(header("autoglm.version", &self.version))
            .insert(header("autoglm.op", self.op));
        with_trace_context(headers, self.source, self.trace.as_deref())
    }

    /// Why `limits` say its topic cannot take it, if they do.
    pub(super) fn too_large(&self, limits: &SizeLimits) -> Option<String> {
        let value = self.payload.as_ref().map_or(0, Vec::len);
        // The input's trace context goes on as it came, however long: counted in the cheap test.
        if !limits.may_exceed(
            self.topic,
            self.key.len(),
            value + trace_context_len(self.source),
        ) {
            return None;
        }
        let bound = batch_bound(self.key.len(), value, Some(&self.headers()));
        let limit = limits.of(self.topic);
        (bound > limit).then(|| {
            format!(
                "the output record takes up to {bound} bytes as a record batch; topic {} takes \
                 {limit} (max.message.bytes, or the producer's message.max.bytes)",
                self.topic
            )
        })
    }

    pub(super) fn send(&self, producer: &AckingProducer, ticket: Ticket) -> Result<(), BatchError> {
        let source = self.source;
        let mut record = BaseRecord::with_opaque_to(self.topic, ticket.opaque(Kind::Output))
            .key(self.key)
            .headers(self.headers());
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
pub(super) struct ChangelogEntry<'b> {
    pub(super) route: usize,
    pub(super) key: &'b [u8],
    pub(super) entry: &'b [u8],
    pub(super) partition: i32,
}

impl ChangelogEntry<'_> {
    pub(super) fn send(
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

/// Produces the batch's records and counts them for [`Acks`](crate::acks::Acks).
pub(super) struct Output<'p> {
    pub(super) producer: &'p AckingProducer,
    pub(super) ticket: Ticket,
    pub(super) sent: usize,
    /// What the written topics take.
    pub(super) limits: Arc<SizeLimits>,
}

impl<'p> Output<'p> {
    /// Starts a batch: delivery reports of earlier ones no longer count.
    pub(super) fn new(producer: &'p AckingProducer, limits: Arc<SizeLimits>) -> Output<'p> {
        Output {
            producer,
            ticket: producer.context().begin(),
            sent: 0,
            limits,
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the DLQ headers: the reason in four parts, the origin, the trace context"
    )]
    pub(super) fn dead_letter(
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
        self.copy(&route.dlq_topic, msg, headers)
    }

    pub(super) fn audit(
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
        self.copy(topic, msg, headers)
    }

    /// Copies the input record to `topic` with `headers`, as [`forward`](Self::forward) does;
    /// but a value `topic` cannot take is left out, and the copy says so and where the input
    /// is: `autoglm.payload.omitted` (why), `autoglm.source.topic`, `.partition` and `.offset`.
    fn copy(
        &mut self,
        topic: &str,
        msg: &OwnedMessage,
        headers: OwnedHeaders,
    ) -> Result<(), BatchError> {
        // Measured whole, headers and all: copies are rare, and their headers (an error
        // message, a trace state) have no fixed bound.
        let key = msg.key().map_or(0, <[u8]>::len);
        let value = msg.payload().map_or(0, <[u8]>::len);
        let bound = batch_bound(key, value, Some(&headers));
        let limit = self.limits.of(topic);
        if bound <= limit {
            return self.forward(topic, msg, headers);
        }
        tracing::warn!(
            topic,
            source_topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            bound,
            limit,
            "the input record is too large for this topic: its copy holds a reference, not its value"
        );
        let reason = format!(
            "omitted: the input record takes up to {bound} bytes as a record batch; topic \
             {topic} takes {limit} (max.message.bytes, or the producer's message.max.bytes)"
        );
        let mut headers = headers.insert(header("autoglm.payload.omitted", &reason));
        if !headers.iter().any(|h| h.key == "autoglm.source.offset") {
            headers = headers
                .insert(header(
                    "autoglm.source.partition",
                    &msg.partition().to_string(),
                ))
                .insert(header("autoglm.source.offset", &msg.offset().to_string()));
        }
        let mut record =
            BaseRecord::with_opaque_to(topic, self.ticket.opaque(Kind::Output)).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        send(self.producer, record)?;
        self.sent += 1;
        Ok(())
    }

    /// Copies the input record's key and original bytes to `topic` with `headers`
    /// (pass-through, and the copies that fit).
    pub(super) fn forward(
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
    pub(super) async fn wait_all(&self) -> Result<Written, BatchError> {
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

/// The bytes of the input's `traceparent` and `tracestate` values, which its outputs carry on.
fn trace_context_len(msg: &OwnedMessage) -> usize {
    msg.headers().map_or(0, |headers| {
        headers
            .iter()
            .filter(|h| h.key == "traceparent" || h.key == "tracestate")
            .map(|h| h.value.map_or(0, <[u8]>::len))
            .sum()
    })
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

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn input(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"v".to_vec()),
            Some(b"k".to_vec()),
            "crm.accounts".to_owned(),
            Timestamp::CreateTime(1),
            3,
            41,
            headers,
        )
    }

    fn pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|h| {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                (h.key.to_owned(), value.unwrap_or_default())
            })
            .collect()
    }

    #[test]
    fn lineage_names_the_input_record() {
        let headers = with_source(OwnedHeaders::new(), &input(None));
        assert_eq!(
            pairs(&headers),
            [
                ("autoglm.source.topic".into(), "crm.accounts".into()),
                ("autoglm.source.partition".into(), "3".into()),
                ("autoglm.source.offset".into(), "41".into()),
            ]
        );
    }

    #[test]
    fn the_inputs_trace_context_goes_on_as_it_was_and_nothing_else_of_its_headers() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let headers = OwnedHeaders::new()
            .insert(header("traceparent", traceparent))
            .insert(header("tracestate", "vendor=1"))
            .insert(header("secret", "not copied"));
        let out = with_trace_context(OwnedHeaders::new(), &input(Some(headers)), None);
        assert_eq!(
            pairs(&out),
            [
                ("traceparent".into(), traceparent.into()),
                ("tracestate".into(), "vendor=1".into()),
            ]
        );
        let none = with_trace_context(OwnedHeaders::new(), &input(None), None);
        assert_eq!(none.count(), 0);
    }

    #[test]
    fn a_long_trace_state_carried_on_counts_toward_the_size_limit() {
        let long = "v".repeat(50_000);
        let headers = OwnedHeaders::new().insert(header("tracestate", &long));
        let msg = input(Some(headers));
        assert_eq!(trace_context_len(&msg), 50_000);
        let output = Outgoing {
            topic: "out",
            key: b"k",
            payload: Some(vec![b'x'; 10]),
            source: &msg,
            op: "c",
            version: "1".to_owned(),
            lineage: true,
            trace: None,
        };
        let limits = SizeLimits::client_only(Some("20000"));
        let reason = output
            .too_large(&limits)
            .expect("too large with its trace state");
        assert!(reason.contains("topic out takes 20000"), "{reason}");
    }
}
