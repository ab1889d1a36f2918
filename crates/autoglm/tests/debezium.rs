//! What Debezium really emits, read by the real binary: each test captures a PostgreSQL table
//! of its own with the Debezium connector in the stack's Kafka Connect, under one choice of
//! converter, `decimal.handling.mode` and `time.precision.mode`, and checks the ERP topic row
//! by row.
//!
//! The scenario: snapshot rows (`op=r`), inserts, updates (a negative decimal), a delete (and
//! its tombstone), `ADD COLUMN`, a column widened from `integer` to `bigint`, a change the
//! mapping cannot take (the column turned to `text`, a value that is not a number: one DLQ
//! record with its reason, and the pipeline goes on), and `TRUNCATE` (`op=t`: logged, not
//! propagated).

mod common;

use autoglm_demo::connect::Converter;
use autoglm_tests::{cdc_stack, stack};
use common::cdc::{Capture, CdcJob};
use serde_json::{Value as Json, json};

const TABLE: &str = "
    CREATE TABLE customers (
        id           bigint PRIMARY KEY,
        usr_name     text NOT NULL,
        email        text,
        credit_limit numeric(12, 2),
        birthday     date,
        seen_at      timestamp(6),
        visits       integer,
        version      bigint NOT NULL
    );
    ALTER TABLE customers REPLICA IDENTITY FULL;";

/// Every row's `seen_at`: 2025-04-05 02:30:00.123456 UTC, in microseconds.
const SEEN_AT_MICROS: i64 = 1_743_820_200_123_456;

/// The route's mapping for a capture: the decimal needs `input: base64` only when Debezium
/// writes its bytes without a schema; `time.precision.mode=connect` writes milliseconds.
fn capture(
    converter: Converter,
    decimal_handling_mode: &'static str,
    time_precision_mode: &'static str,
) -> Capture {
    let base64 = converter == Converter::JsonWithoutSchema && decimal_handling_mode == "precise";
    let decimal = if base64 {
        "{ scale: 2, input: base64 }"
    } else {
        "{ scale: 2 }"
    };
    let unit = if time_precision_mode == "connect" {
        "epoch_millis"
    } else {
        "epoch_micros"
    };
    let mapping = format!(
        "{{ rename: {{ usr_name: user_name, email: email_address }}, fields: {{ \
           id: {{ type: long, required: true }}, \
           credit_limit: {{ type: {{ decimal: {decimal} }} }}, \
           birthday: {{ type: date, input: {{ unit: epoch_days }}, output: iso8601 }}, \
           seen_at: {{ type: timestamp, input: {{ unit: {unit} }}, output: epoch_micros }}, \
           visits: {{ type: long }} }} }}"
    );
    Capture {
        converter,
        decimal_handling_mode,
        time_precision_mode,
        mapping,
        version: "{ column: version }",
    }
}

/// The ERP row for a CRM row, as the route maps it.
struct Expect {
    seen_at: i64,
}

impl Expect {
    fn row(&self, id: i64, credit: &str, visits: i64, version: i64, tier: Option<Json>) -> Json {
        let mut row = json!({
            "id": id, "user_name": format!("user{id}"), "email_address": format!("u{id}@crm.example"),
            "credit_limit": credit, "birthday": "1990-01-02", "seen_at": self.seen_at,
            "visits": visits, "version": version,
        });
        if let Some(tier) = tier {
            row["tier"] = tier;
        }
        row
    }
}

async fn sql(job: &CdcJob, statement: &str) {
    job.crm
        .client()
        .batch_execute(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

fn insert(id: i64, credit: &str, visits: i64) -> String {
    format!(
        "INSERT INTO customers (id, usr_name, email, credit_limit, birthday, seen_at, visits, version) \
         VALUES ({id}, 'user{id}', 'u{id}@crm.example', {credit}, '1990-01-02', \
                 '2025-04-05 02:30:00.123456', {visits}, 1)"
    )
}

async fn scenario(capture: Capture) {
    let stack = stack().await;
    let cdc = cdc_stack().await;
    let job = CdcJob::new(&stack, &cdc, &capture, TABLE).await;
    let expect = Expect {
        seen_at: if capture.time_precision_mode == "connect" {
            SEEN_AT_MICROS / 1000 * 1000
        } else {
            SEEN_AT_MICROS
        },
    };

    // Rows before the connector: its snapshot reads them (op=r).
    for (id, credit) in [(1, "1234.50"), (2, "0.00"), (3, "99999.99")] {
        sql(&job, &insert(id, credit, 10 * id)).await;
    }
    job.start_connector(3).await;

    sql(&job, &insert(4, "42.42", 40)).await;
    sql(
        &job,
        "UPDATE customers SET credit_limit = -0.01, version = 2 WHERE id = 1",
    )
    .await;
    sql(&job, "DELETE FROM customers WHERE id = 2").await;
    sql(&job, "ALTER TABLE customers ADD COLUMN tier text").await;
    sql(&job, &insert(5, "7.10", 50)).await;
    sql(
        &job,
        "UPDATE customers SET tier = 'gold', version = 2 WHERE id = 5",
    )
    .await;
    sql(&job, "UPDATE customers SET version = 2 WHERE id = 3").await;
    sql(
        &job,
        "ALTER TABLE customers ALTER COLUMN visits TYPE bigint",
    )
    .await;
    sql(
        &job,
        "UPDATE customers SET visits = 5000000000, version = 2 WHERE id = 4",
    )
    .await;
    sql(&job, "ALTER TABLE customers ALTER COLUMN visits TYPE text").await;
    // The mapping wants a number: this version goes to the DLQ, the pipeline goes on.
    sql(
        &job,
        "UPDATE customers SET visits = 'many', version = 3 WHERE id = 5",
    )
    .await;
    sql(
        &job,
        "UPDATE customers SET visits = '7', version = 3 WHERE id = 3",
    )
    .await;
    sql(&job, "TRUNCATE customers").await;

    // 3 snapshot rows, 9 row changes, a tombstone and the truncate.
    job.captured(3 + 9 + 1 + 1).await;
    job.run_to_idle(0).await;

    let log = std::fs::read_to_string(job.log(0)).expect("log");
    let want = [
        expect.row(1, "-0.01", 10, 2, None),
        // Events after ADD COLUMN carry it, null or not.
        expect.row(3, "99999.99", 7, 3, Some(Json::Null)),
        expect.row(4, "42.42", 5_000_000_000, 2, Some(Json::Null)),
        // Its version 3 went to the DLQ: the ERP keeps version 2.
        expect.row(5, "7.10", 50, 2, Some(json!("gold"))),
    ];
    let want: std::collections::BTreeMap<i64, Json> = want
        .into_iter()
        .map(|row| (row["id"].as_i64().expect("id"), row))
        .collect();
    let got = job.erp().await;
    assert_eq!(
        got,
        want,
        "the ERP topic differs from the CRM writes; see {}",
        job.dir().display()
    );
    let dead = job.dead_letters().await;
    assert_eq!(dead.len(), 1, "one record cannot be mapped: {dead:?}");
    let reason = &dead[0].headers["autoglm.error.message"];
    assert!(
        reason.contains("visits") || dead[0].headers["autoglm.error.rule"].contains("visits"),
        "the DLQ record names the field: {:?}",
        dead[0].headers
    );
    assert!(
        log.contains("truncate events are not propagated"),
        "the truncate is logged; see {}",
        job.log(0).display()
    );
    job.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_with_schema_precise_adaptive() {
    scenario(capture(Converter::JsonWithSchema, "precise", "adaptive")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_without_schema_precise_adaptive() {
    scenario(capture(Converter::JsonWithoutSchema, "precise", "adaptive")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_without_schema_string_connect() {
    scenario(capture(Converter::JsonWithoutSchema, "string", "connect")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_with_schema_double_connect() {
    scenario(capture(Converter::JsonWithSchema, "double", "connect")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn avro_precise_adaptive() {
    scenario(capture(Converter::Avro, "precise", "adaptive")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn avro_string_connect() {
    scenario(capture(Converter::Avro, "string", "connect")).await;
}

/// Without `REPLICA IDENTITY FULL`, PostgreSQL logs only the key of a deleted row: Debezium's
/// `before` holds the id, nulls in the nullable columns, and zeros or empty strings in the
/// `NOT NULL` ones. With a nullable version column the delete has no version, and deletes the
/// version the key holds; nothing goes to the DLQ. (A `NOT NULL` version column would read 0,
/// older than every version: docs/debezium.md says to use `FULL` or `log_position` then.)
#[tokio::test(flavor = "multi_thread")]
async fn deletes_without_replica_identity_full() {
    let stack = stack().await;
    let cdc = cdc_stack().await;
    let table = TABLE
        .replace("ALTER TABLE customers REPLICA IDENTITY FULL;", "")
        .replace("version      bigint NOT NULL", "version      bigint");
    let capture = capture(Converter::JsonWithSchema, "precise", "adaptive");
    let job = CdcJob::new(&stack, &cdc, &capture, &table).await;
    job.start_connector(0).await;
    for id in [1, 2] {
        sql(&job, &insert(id, "1.00", id)).await;
    }
    sql(&job, "UPDATE customers SET version = 2 WHERE id = 1").await;
    sql(&job, "DELETE FROM customers WHERE id = 1").await;
    // 2 inserts, an update, a delete and its tombstone.
    job.captured(5).await;
    job.run_to_idle(0).await;
    let expect = Expect {
        seen_at: SEEN_AT_MICROS,
    };
    let got = job.erp().await;
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        vec![2],
        "id 1 is deleted; see {}",
        job.dir().display()
    );
    assert_eq!(got[&2], expect.row(2, "1.00", 2, 1, None));
    let dead = job.dead_letters().await;
    assert!(dead.is_empty(), "nothing is dead-lettered: {dead:?}");
    job.cleanup().await;
}
