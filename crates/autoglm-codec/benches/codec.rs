//! Per-record cost of the codecs on the records `make bench` sends: a Debezium MySQL update
//! envelope of the 16-column CRM customer (`bench/schemas/`: `before` and `after` rows, three
//! decimals, a date, timestamps; about 480 bytes) decoded from Avro, and the aligned 15-field ERP
//! row encoded to Avro.
//!
//! Decoding is measured three ways, so that the choice in `WriterSchema` stays a measured one:
//! apache-avro through its `Value` (the reference), apache-avro's serde deserializer straight
//! into JSON, and `serde_avro_fast` straight into JSON; then to the change event, through that
//! JSON tree or straight into the envelope's fields (what the decoder uses).
//!
//! The same envelope in Debezium JSON, with Connect's schema wrapper (decimals as base64) and
//! without: the decoder, against a JSON tree of the whole record (the first step of the
//! reference path it falls back to, so a lower bound of that path's cost).

use std::hint::black_box;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use autoglm_codec::{
    AvroTarget, DebeziumEnvelope, Decoded, Decoder, Encoding, Envelope, Unread, WriterSchema,
    connect_wrap, parse_envelope,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::{Map, Value as Json, json};

const CRM: &str = include_str!("../../../bench/schemas/crm.customers_wide-value.avsc");
const ERP: &str = include_str!("../../../bench/schemas/erp.customers_wide-value.avsc");
const CRM_CONNECT: &str =
    include_str!("../../../bench/schemas/crm.customers_wide-value.connect.json");
include!("../../../bench/customer_row.rs");

fn object(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(map) => map,
        _ => Map::new(),
    }
}

/// An update envelope, as the bench preloads it.
fn envelope() -> Map<String, Json> {
    object(json!({
        "before": customer_row(6), "after": customer_row(7), "op": "u", "ts_ms": T0_MS + 1234,
        "source": {
            "version": "3.1.0.Final", "connector": "mysql", "name": "crm", "ts_ms": T0_MS + 1234,
            "snapshot": "false", "db": "crm", "table": "customers", "server_id": 223_344,
            "file": "mysql-bin.000003", "pos": 740_554, "row": 0
        }
    }))
}

/// The aligned row the pipeline encodes for the ERP target.
fn aligned() -> Map<String, Json> {
    object(json!({
        "id": 4242, "user_name": "customer 0004242 of the east region",
        "email_address": "customer.4242@example.com", "phone": "+86 138 0000 4242",
        "tax_id": "91310000MA1F004242", "credit_limit": "5242.42", "balance": "157661.07",
        "discount_rate": "0.4249", "address_city": "Shanghai", "birth_date": "1991-08-12",
        "created_at": T0_MS - 86_400_000 * 242, "updated_at": T0_MS + 7 * 60_000,
        "last_login_at": "2026-11-25T08:11:55Z", "source_system": "crm", "version": 7
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

    // To the change event: through the JSON tree of the whole envelope, or straight into the
    // envelope's fields (what the decoder does for Debezium Avro).
    let mut group = c.benchmark_group("decode_event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("json_tree_then_envelope", |b| {
        b.iter(|| {
            let tree = writer.decode_fast(black_box(&datum)).expect("decodes");
            parse_envelope(Envelope::Debezium, None, tree).expect("an envelope")
        })
    });
    group.bench_function("envelope_fields", |b| {
        b.iter(|| {
            writer
                .decode_fast_as::<DebeziumEnvelope>(black_box(&datum))
                .and_then(|fields| fields.into_event(&mut None))
                .expect("an envelope")
        })
    });
    // What the pipeline's decoder does (`Decoder::after_only`): `before` skipped unread.
    group.bench_function("envelope_fields_after_only", |b| {
        b.iter(|| {
            writer
                .decode_fast_as::<DebeziumEnvelope<Unread>>(black_box(&datum))
                .and_then(|fields| fields.into_event(&mut None))
                .expect("an envelope")
        })
    });
    group.finish();
}

fn bench_decode_json(c: &mut Criterion) {
    let schema: Json = serde_json::from_str(CRM_CONNECT).expect("connect schema");
    let event = Json::Object(envelope());
    let wrapped = connect_wrap(&event, &schema);
    let plain = serde_json::to_vec(&event).expect("json");
    eprintln!(
        "decode_json: {} bytes wrapped, {} bytes plain",
        wrapped.len(),
        plain.len()
    );
    let decoder = Decoder::new(None).after_only();
    let decode = |bytes: &[u8]| match decoder.decode_cached(
        Envelope::Debezium,
        Encoding::Json,
        None,
        Some(bytes),
    ) {
        Ok(Ok(Decoded::Event(event))) => event,
        other => panic!("not an event: {other:?}"),
    };
    assert_eq!(decode(&wrapped), decode(&plain), "both read the same event");

    let mut group = c.benchmark_group("decode_json");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in [("wrapped", &wrapped), ("plain", &plain)] {
        group.bench_function(format!("{name}_tree_of_the_record"), |b| {
            b.iter(|| serde_json::from_slice::<Json>(black_box(bytes)))
        });
        group.bench_function(format!("{name}_decoder"), |b| {
            b.iter(|| decode(black_box(bytes)))
        });
    }
    // The typed read with sonic-rs (SIMD) instead of serde_json: the same envelope type, the
    // schema borrowed unparsed as the decoder borrows it.
    #[derive(serde::Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        schema: sonic_rs::LazyValue<'a>,
        payload: DebeziumEnvelope<Unread>,
    }
    #[derive(serde::Deserialize)]
    struct WrappedSerdeJson<'a> {
        #[serde(borrow)]
        schema: &'a serde_json::value::RawValue,
        payload: DebeziumEnvelope<Unread>,
    }
    group.bench_function("wrapped_typed_serde_json", |b| {
        b.iter(|| {
            let w: WrappedSerdeJson<'_> =
                serde_json::from_slice(black_box(&wrapped)).expect("reads");
            (w.schema.get().len(), w.payload.has_after())
        })
    });
    group.bench_function("wrapped_typed_sonic_rs", |b| {
        b.iter(|| {
            let w: Wrapped<'_> = sonic_rs::from_slice(black_box(&wrapped)).expect("reads");
            (w.schema.as_raw_str().len(), w.payload.has_after())
        })
    });
    group.bench_function("plain_typed_serde_json", |b| {
        b.iter(|| {
            serde_json::from_slice::<DebeziumEnvelope<Unread>>(black_box(&plain))
                .expect("reads")
                .has_after()
        })
    });
    group.bench_function("plain_typed_sonic_rs", |b| {
        b.iter(|| {
            sonic_rs::from_slice::<DebeziumEnvelope<Unread>>(black_box(&plain))
                .expect("reads")
                .has_after()
        })
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
    // What the pipeline encodes: the mapping's fields in name order, with no map built.
    let fields: Vec<(String, Json)> = row.clone().into_iter().collect();
    group.bench_function("aligned_fields_to_avro", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(256);
            erp.write_fields(black_box(&fields), &mut out).map(|()| out)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_decode_json, bench_encode);
criterion_main!(benches);
