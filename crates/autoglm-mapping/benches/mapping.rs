//! Per-record cost of `Mapping::apply` on a realistic CRM customer row (15 fields: strings, a
//! nested address, a decimal, Debezium timestamps, two regex renames, a formatted local-time
//! conversion), and on the record `make bench` sends, with the mapping of
//! `bench/autoglm-bench.yaml` (`make_bench_customer`): the figure to set beside the codec
//! bench's decode and encode of that same record.

use std::hint::black_box;

use autoglm_core::Row;
use autoglm_mapping::{Mapping, MappingSpec};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use indexmap::IndexMap;
use serde_json::{Value, json};

const SPEC: &str = r#"
rename: { acct_nm: customer_name }
rename_rules:
  - { pattern: "usr_?name|username", to: user_name }
  - { pattern: "Email|e.?mail", to: email_address, case_insensitive: true }
drop: [password_hash]
fields:
  id:            { type: long, required: true }
  customer_name: { type: string, required: true }
  tax_id:        { type: string, pattern: "^[0-9A-Z]{18}$" }
  city:          { from: address.city }
  credit_limit:  { type: { decimal: { scale: 2 } } }
  signup_at:
    type: timestamp
    input: { format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }
    output: iso8601
  updated_at:    { type: timestamp, input: { unit: epoch_micros }, output: epoch_millis }
  birthday:      { type: date }
  active:        { type: bool }
  country:       { default: CN }
  source_system: { const: crm }
"#;

fn customer() -> Row {
    let v = json!({
        "id": "10023",
        "acct_nm": "ABC科技有限公司",
        "usr_name": "zhang.wei",
        "EMAIL": "zhang.wei@abc-tech.cn",
        "phone": "+86 138 0013 8000",
        "tax_id": "91310115MA1K3YXXXX",
        "address": {"street": "XX路100号", "city": "上海", "district": "浦东新区", "zip": "200120"},
        "credit_limit": "150000.5",
        "signup_at": "2025-04-05 10:30:00",
        "updated_at": 1_743_820_200_123_456_i64,
        "birthday": 7_000,
        "active": 1,
        "country": null,
        "password_hash": "$2b$12$abcdefghijklmnopqrstuv",
        "version": 42
    });
    match v {
        Value::Object(m) => m,
        _ => Row::new(),
    }
}

const BENCH_CONFIG: &str = include_str!("../../../bench/autoglm-bench.yaml");
include!("../../../bench/customer_row.rs");

/// The mapping `make bench` runs: the route's `mapping:` after the global `mapping_rules`, in
/// their order, as the config merges them.
fn make_bench_spec() -> MappingSpec {
    let config: serde_yaml::Value = serde_yaml::from_str(BENCH_CONFIG).expect("bench config");
    let spec: MappingSpec =
        serde_yaml::from_value(config["routes"][0]["mapping"].clone()).expect("route mapping");
    let global: IndexMap<String, String> =
        serde_yaml::from_value(config["mapping_rules"].clone()).expect("mapping_rules");
    spec.with_global_rules(global)
}

/// The update's `after` row, version 7, as the decoder gives it.
fn make_bench_customer() -> Row {
    match customer_row(7) {
        Value::Object(m) => m,
        _ => Row::new(),
    }
}

fn bench_apply(c: &mut Criterion) {
    let spec: MappingSpec = serde_yaml::from_str(SPEC).expect("bench spec parses");
    let mut mapping = Mapping::compile("crm_customers", &spec).expect("bench spec compiles");
    let row = customer();
    let source: Vec<String> = row.keys().cloned().collect();
    let cold = mapping.clone();
    mapping.prime(&source);
    assert!(mapping.apply(&row).is_ok(), "{:?}", mapping.apply(&row));

    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(1));
    // The pipeline owns each decoded row and hands it over: each iteration gets a copy, made
    // outside the timing, and what the mapping does not take is dropped inside it.
    group.bench_function("apply_crm_customer_primed", |b| {
        b.iter_batched(
            || row.clone(),
            |row| mapping.apply_owned(black_box(row)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("apply_crm_customer_unprimed", |b| {
        b.iter_batched(
            || row.clone(),
            |row| cold.apply_owned(black_box(row)),
            BatchSize::SmallInput,
        )
    });
    let bench_mapping = Mapping::compile("customers", &make_bench_spec()).expect("compiles");
    let bench_row = make_bench_customer();
    let mapped = bench_mapping.apply(&bench_row).expect("the bench row maps");
    assert_eq!(mapped.len(), 15, "the ERP record's 15 fields: {mapped:?}");
    // What the pipeline runs: the output as fields in name order, for the encoder.
    group.bench_function("apply_make_bench_customer", |b| {
        b.iter_batched(
            || bench_row.clone(),
            |row| bench_mapping.apply_sorted(black_box(row)),
            BatchSize::SmallInput,
        )
    });
    // The same, the output built into a map (`apply_owned`): what the map costs.
    group.bench_function("apply_owned_make_bench_customer", |b| {
        b.iter_batched(
            || bench_row.clone(),
            |row| bench_mapping.apply_owned(black_box(row)),
            BatchSize::SmallInput,
        )
    });
    // The floor: copying the row into a fresh map, what any mapping must at least do.
    group.bench_function("clone_row_baseline", |b| b.iter(|| black_box(&row).clone()));
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
