//! Per-record cost of the codecs on the records `make bench` sends: a Debezium update envelope
//! of the CRM customer (`before` and `after` rows, a decimal, timestamps) decoded from Avro, and
//! the aligned ERP row encoded to Avro.
//!
//! Decoding is measured three ways, so that the choice in `WriterSchema` stays a measured one:
//! apache-avro through its `Value` (the reference), apache-avro's serde deserializer straight
//! into JSON, and `serde_avro_fast` straight into JSON (what the decoder uses).

use std::hint::black_box;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use autoglm_codec::{AvroTarget, WriterSchema};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::{Map, Value as Json, json};

const CRM: &str = include_str!("../../../schemas/crm.customers-value.avsc");
const ERP: &str = include_str!("../../../schemas/erp.customers-value.avsc");

fn object(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        _ => Map::new(),
    }
}

/// The envelope `make bench` preloads (see `autoglm-demo`'s `customer` and `envelope`).
fn envelope() -> Map<String, Json> {
    let row = json!({
        "id": 4242, "usr_name": "customer 0004242 of the east region",
        "Email": "customer.4242@example.com", "tax_id": "91310000MA1FL0000X",
        "credit_limit": "5242.42", "password_hash": "x9f…", "region": "cn-east",
        "updated_at": 1_795_600_000_000i64 + 7 * 60_000, "version": 7
    });
    object(json!({
        "before": row, "after": row, "op": "u", "ts_ms": 1_795_600_001_234i64,
        "source": {
            "version": "3.1.0.Final", "connector": "postgresql", "name": "crm",
            "ts_ms": 1_795_600_001_234i64, "snapshot": "false", "db": "crm", "schema": "public",
            "table": "customers", "lsn": 1234, "sequence": "[\"1233\",\"1234\"]"
        }
    }))
}

/// The aligned row the pipeline encodes for the ERP target.
fn aligned() -> Map<String, Json> {
    object(json!({
        "id": 4242, "user_name": "customer 0004242 of the east region",
        "email_address": "customer.4242@example.com", "tax_id": "91310000MA1FL0000X",
        "credit_limit": "5242.42", "updated_at": 1_795_600_420_000i64, "version": 7
    }))
}

fn target(schema: &str) -> AvroTarget {
    AvroTarget::new(
        SrSettings::new("http://registry.invalid".into()),
        "bench",
        schema,
    )
    .expect("bench schema parses")
}

fn bench_decode(c: &mut Criterion) {
    let mut datum = Vec::new();
    target(CRM)
        .write_datum(&envelope(), &mut datum)
        .expect("the envelope encodes");
    let writer = WriterSchema::parse(CRM).expect("schema");
    let parsed = Schema::parse_str(CRM).expect("schema");
    let reader = GenericDatumReader::builder(&parsed)
        .build()
        .expect("reader");
    assert_eq!(
        writer.decode_fast(&datum),
        Some(writer.decode_with_apache_avro(&datum).expect("decodes")),
        "both paths read the same JSON"
    );

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("apache_avro_value_to_json", |b| {
        b.iter(|| writer.decode_with_apache_avro(black_box(&datum)))
    });
    // apache-avro's serde deserializer cannot read this record into JSON (it fails at once, so
    // timing it would measure the failure): say why, and leave it out.
    if let Err(e) = reader.read_deser::<Json>(&mut &datum[..]) {
        eprintln!("decode/apache_avro_serde_to_json: not measured, it fails: {e}");
    } else {
        group.bench_function("apache_avro_serde_to_json", |b| {
            b.iter(|| reader.read_deser::<Json>(&mut black_box(&datum[..])))
        });
    }
    group.bench_function("serde_avro_fast_to_json", |b| {
        b.iter(|| writer.decode_fast(black_box(&datum)))
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let erp = target(ERP);
    let row = aligned();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("aligned_row_to_avro", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(256);
            erp.write_datum(black_box(&row), &mut out).map(|()| out)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
