//! Smoke tests against the real local stack: Kafka transactions are honoured by a `read_committed`
//! reader, and the registry round-trips an Avro record in the Confluent wire format.

use std::time::Duration;

use apache_avro::Decimal;
use apache_avro::types::Value;
use autoglm_tests::{create_topic, repo_root, stack, unique};
use futures::StreamExt as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::get_schema_by_subject;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Reads every record of the single-partition `topic` up to its end offset and returns the values.
async fn read_all(consumer: StreamConsumer, topic: &str, expected_at_least: usize) -> Vec<String> {
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut values = Vec::new();
    let mut stream = consumer.stream();
    // Read until `expected_at_least` records have arrived, then drain whatever else is there
    // until the stream has been quiet for a while.
    loop {
        let wait = if values.len() < expected_at_least {
            TIMEOUT
        } else {
            Duration::from_secs(3)
        };
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(msg))) => {
                values.push(String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned())
            }
            Ok(Some(Err(e))) => panic!("consume error: {e}"),
            Ok(None) => break,
            Err(_) if values.len() >= expected_at_least => break,
            Err(_) => panic!(
                "timed out after {} of {expected_at_least} records: {values:?}",
                values.len()
            ),
        }
    }
    values
}

#[tokio::test]
async fn read_committed_sees_committed_records_once_and_aborted_never() {
    let stack = stack().await;
    let topic = unique("smoke-txn");
    create_topic(&stack, &topic, 1).await;

    let producer = stack
        .kafka()
        .transactional_producer(&unique("smoke-txn-id"))
        .expect("producer");
    let producer =
        tokio::task::spawn_blocking(move || producer.init_transactions(TIMEOUT).map(|()| producer))
            .await
            .expect("join")
            .expect("init_transactions");

    let batches = [
        (["committed-1", "committed-2"], true),
        (["aborted-1", "aborted-2"], false),
        (["committed-3", "committed-4"], true),
    ];
    for (values, commit) in batches {
        producer.begin_transaction().expect("begin");
        for value in values {
            producer
                .send(
                    FutureRecord::to(&topic).key("k").payload(value),
                    Timeout::After(TIMEOUT),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("send {value}: {e}"));
        }
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || {
            if commit {
                producer.commit_transaction(TIMEOUT)
            } else {
                producer.abort_transaction(TIMEOUT)
            }
        })
        .await
        .expect("join")
        .expect("commit/abort");
    }

    let committed = read_all(
        stack
            .kafka()
            .read_committed_consumer(&unique("smoke-rc"))
            .expect("consumer"),
        &topic,
        4,
    )
    .await;
    assert_eq!(
        committed,
        ["committed-1", "committed-2", "committed-3", "committed-4"],
        "read_committed must see each committed record exactly once and no aborted one"
    );

    // The aborted transaction really wrote its records: a read_uncommitted reader sees them.
    let everything = read_all(
        stack
            .kafka()
            .read_uncommitted_consumer(&unique("smoke-ru"))
            .expect("consumer"),
        &topic,
        6,
    )
    .await;
    assert_eq!(everything.len(), 6, "{everything:?}");
    assert!(
        everything.iter().any(|v| v == "aborted-1"),
        "{everything:?}"
    );
}

#[tokio::test]
async fn registry_round_trips_an_avro_record_in_the_confluent_wire_format() {
    let stack = stack().await;
    let topic = unique("smoke-avro");
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.clone(),
        false,
        SuppliedSchema::new(None, SchemaType::Avro, customer_schema()),
    );
    let record = Value::Record(vec![
        ("id".to_owned(), Value::Long(42)),
        ("user_name".to_owned(), Value::String("ada".to_owned())),
        (
            "email_address".to_owned(),
            Value::Union(1, Box::new(Value::String("ada@example.com".to_owned()))),
        ),
        ("tax_id".to_owned(), Value::Union(0, Box::new(Value::Null))),
        (
            "credit_limit".to_owned(),
            Value::Union(1, Box::new(Value::Decimal(Decimal::from(vec![0x30, 0x39])))),
        ),
        (
            "updated_at".to_owned(),
            Value::TimestampMillis(1_764_000_000_000),
        ),
        ("version".to_owned(), Value::Long(7)),
    ]);

    let encoder = AvroEncoder::new(stack.registry());
    let bytes = encoder
        .encode_value(record.clone(), &strategy)
        .await
        .expect("encode registers the schema");

    // Confluent wire format: magic byte 0, then the schema id, big-endian.
    assert_eq!(bytes[0], 0, "magic byte");
    let wire_id = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
    let registered = get_schema_by_subject(&stack.registry(), &strategy)
        .await
        .expect("the subject is registered");
    assert_eq!(wire_id, registered.id, "the wire id is the registry's id");

    let decoded = AvroDecoder::new(stack.registry())
        .decode(Some(&bytes))
        .await
        .expect("decode");
    assert_eq!(decoded.value, record);
    assert_eq!(
        decoded.name.map(|n| n.fullname(None)),
        Some("erp.Customer".to_owned())
    );
}

/// The ERP customer schema from `schemas/`.
fn customer_schema() -> String {
    let path = repo_root().join("schemas/erp.customers-value.avsc");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
