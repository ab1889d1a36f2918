//! Fuzz targets: every decoder of source records, the config loader and the mapping, each a
//! function of arbitrary bytes that must not panic, overflow the stack or hang. What they may
//! return is checked too: an input a decoder refuses is poison (the DLQ), never a transient or
//! fatal error, since no registry or broker is asked.
//!
//! The engine is AFL++ through `cargo afl` (the `fuzz` binary, `make fuzz TARGET=… SECS=…`):
//! it runs on stable Rust, which cargo-fuzz (libFuzzer with `-Z` sanitizer flags) does not, and
//! its mutators work well on text. The two structured targets take text in two parts, split at
//! a marker line, so that their seeds are real configs and rows that the fuzzer mutates in
//! place: `config` is YAML, then `--- overrides` and `NAME=value` lines; `mapping` is a mapping
//! spec in YAML, then `--- row` and a JSON row.
//!
//! The corpus is in `corpus/<target>/`: seeds made from the tests' records and configs, plus
//! what the fuzzer found and kept. `make test` replays it (`tests/corpus.rs`), so an input that
//! crashed once cannot come back.

use std::path::Path;

use autoglm_codec::{Decoded, Decoder, Encoding, Envelope, WriterSchema};
use autoglm_core::{Classify, ErrorClass};

/// The writer schema of the Avro target: the demo's Debezium envelope of CRM customers.
pub const CRM_SCHEMA: &str = include_str!("../../../schemas/crm.customers-value.avsc");
/// The schema id the Avro target's records carry.
pub const CRM_SCHEMA_ID: u32 = 1;

/// A fuzz target: its name (the corpus directory) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("wire", wire),
    ("avro", avro),
    ("debezium_json", debezium_json),
    ("upsert_json", upsert_json),
    ("key", key),
    ("config", config),
    ("mapping", mapping),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The Confluent wire header: a schema id, or an error.
pub fn wire(data: &[u8]) {
    let _ = autoglm_codec::schema_id(data);
}

/// A Debezium Avro envelope (the value after the 5-byte header) under the CRM schema, read by
/// the fast path and, where it gives up, by apache-avro.
pub fn avro(data: &[u8]) {
    static DECODER: std::sync::LazyLock<Decoder> = std::sync::LazyLock::new(|| {
        let schema = WriterSchema::parse(CRM_SCHEMA).expect("the CRM schema parses");
        Decoder::new(None)
            .after_only()
            .with_schema(CRM_SCHEMA_ID, schema)
    });
    let mut framed = Vec::with_capacity(data.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&CRM_SCHEMA_ID.to_be_bytes());
    framed.extend_from_slice(data);
    check(DECODER.decode_cached(Envelope::Debezium, Encoding::Avro, None, Some(&framed)));
}

/// Debezium JSON, with or without the Connect converter's schema wrapper (its logical types
/// included), after `before` and `after` only.
pub fn debezium_json(data: &[u8]) {
    static DECODER: std::sync::LazyLock<Decoder> =
        std::sync::LazyLock::new(|| Decoder::new(None).after_only());
    check(DECODER.decode_cached(Envelope::Debezium, Encoding::Json, None, Some(data)));
}

/// An upsert row in JSON, with or without the wrapper.
pub fn upsert_json(data: &[u8]) {
    static DECODER: std::sync::LazyLock<Decoder> =
        std::sync::LazyLock::new(|| Decoder::new(None).after_only());
    check(DECODER.decode_cached(Envelope::Upsert, Encoding::Json, None, Some(data)));
}

/// A record key (JSON, a wrapped key, or text), beside a plain row.
pub fn key(data: &[u8]) {
    static DECODER: std::sync::LazyLock<Decoder> =
        std::sync::LazyLock::new(|| Decoder::new(None).after_only());
    let row = br#"{"id":1}"#;
    check(DECODER.decode_cached(Envelope::Upsert, Encoding::Json, Some(data), Some(row)));
    check(DECODER.decode_cached(Envelope::Debezium, Encoding::Json, Some(data), None));
}

/// A decoder's answer without a registry: decoded, or poison.
fn check(result: Result<Result<Decoded, autoglm_codec::CodecError>, autoglm_codec::SchemaMissing>) {
    match result {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => assert_eq!(e.class(), ErrorClass::Poison, "{e}"),
        Err(missing) => panic!("schema {} is cached, yet missing", missing.0),
    }
}

/// Splits `data` at the line `marker` (`--- name`): the text before and after it.
fn two_parts<'d>(data: &'d [u8], marker: &str) -> Option<(&'d str, &'d str)> {
    let text = std::str::from_utf8(data).ok()?;
    let line = format!("\n{marker}\n");
    text.split_once(line.as_str())
}

/// The config loader: YAML, `AUTOGLM__…` overrides, validation, as `autoglm run` loads a
/// config. It must answer with a config or with problems, never panic.
pub fn config(data: &[u8]) {
    let Some((yaml, overrides)) = two_parts(data, "--- overrides") else {
        return;
    };
    let names: Vec<String> = overrides
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, value)| env_safe(name) && env_safe(value))
        .take(8)
        .map(|(name, value)| {
            let name = format!("AUTOGLM__{name}");
            // SAFETY: the fuzz targets run on one thread; nothing reads the environment
            // concurrently.
            unsafe { std::env::set_var(&name, value) };
            name
        })
        .collect();
    // The repository: the seeds' schema files are read from there.
    let base_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let _ = autoglm_config::parse(
        yaml,
        "fuzz.yaml",
        base_dir,
        autoglm_config::Overrides::Environment,
    );
    for name in names {
        // SAFETY: as above.
        unsafe { std::env::remove_var(name) };
    }
}

/// What `set_var` takes: no NUL and no `=`, and not empty.
fn env_safe(text: &str) -> bool {
    !text.is_empty() && !text.contains(['\0', '='])
}

/// The mapping: compiled from any spec that parses, applied to any row that parses. It must
/// answer with a row or an error, never panic.
pub fn mapping(data: &[u8]) {
    let Some((spec, row)) = two_parts(data, "--- row") else {
        return;
    };
    let Ok(spec) = serde_yaml::from_str::<autoglm_mapping::MappingSpec>(spec) else {
        return;
    };
    let Ok(mapping) = autoglm_mapping::Mapping::compile("fuzz", &spec) else {
        return;
    };
    let Ok(serde_json::Value::Object(row)) = serde_json::from_str(row) else {
        return;
    };
    let applied = mapping.apply(&row);
    let sorted = mapping.apply_sorted(row);
    assert_eq!(
        applied.is_ok(),
        sorted.is_ok(),
        "the two ways to apply agree"
    );
}
