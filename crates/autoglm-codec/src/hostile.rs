//! Hostile JSON input: what each case decodes to. Every case ends as an event or as poison
//! (dead-lettered by the pipeline); none panics, overflows the stack or hangs.
//! `docs/failure-modes.md` lists these outcomes.

use autoglm_core::{Classify, ErrorClass, Op};
use serde_json::{Value as Json, json};

use crate::{CodecError, Decoded, Decoder, Encoding, Envelope};

fn decode(envelope: Envelope, key: Option<&[u8]>, value: &[u8]) -> Result<Decoded, CodecError> {
    Decoder::new(None)
        .after_only()
        .decode_cached(envelope, Encoding::Json, key, Some(value))
        .expect("JSON needs no registry")
}

fn upsert(value: &[u8]) -> Result<Decoded, CodecError> {
    decode(Envelope::Upsert, Some(b"1"), value)
}

fn after(decoded: Result<Decoded, CodecError>) -> serde_json::Map<String, Json> {
    match decoded {
        Ok(Decoded::Event(event)) => event.after.expect("an after row"),
        Ok(Decoded::Tombstone { .. }) => panic!("a tombstone"),
        Err(e) => panic!("poison: {e}"),
    }
}

fn poison(decoded: Result<Decoded, CodecError>) -> String {
    match decoded {
        Err(e) => {
            assert_eq!(e.class(), ErrorClass::Poison, "{e}");
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            format!("{e}: {}", cause.unwrap_or_default())
        }
        Ok(_) => panic!("decoded"),
    }
}

/// `depth` arrays, one inside the other, as the value of `deep`.
fn nested(depth: usize) -> String {
    format!(
        r#"{{"id":1,"deep":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn nesting_past_serde_jsons_limit_is_poison_not_a_stack_overflow() {
    let message = poison(upsert(nested(100_000).as_bytes()));
    assert!(message.contains("recursion limit"), "{message}");
    // In the Debezium envelope and in the Connect wrapper too.
    let envelope = format!(r#"{{"op":"c","after":{}}}"#, nested(100_000));
    poison(decode(Envelope::Debezium, None, envelope.as_bytes()));
    let wrapped = format!(
        r#"{{"schema":{{"type":"struct"}},"payload":{}}}"#,
        nested(100_000)
    );
    poison(upsert(wrapped.as_bytes()));
    // Nesting within the limit is a value like any other.
    let row = after(upsert(nested(100).as_bytes()));
    assert!(row["deep"].is_array());
}

#[test]
fn long_strings_and_many_fields_pass_whole() {
    let long = "é".repeat(2_000_000);
    let row = after(upsert(
        json!({"id": 1, "text": long}).to_string().as_bytes(),
    ));
    assert_eq!(row["text"].as_str().map(str::len), Some(4_000_000));
    let mut wide = serde_json::Map::new();
    for n in 0..100_000 {
        wide.insert(format!("f{n}"), json!(n));
    }
    let row = after(upsert(Json::Object(wide).to_string().as_bytes()));
    assert_eq!(row.len(), 100_000);
    assert_eq!(row["f99999"], 99_999);
}

#[test]
fn integers_stay_exact_to_u64_and_larger_numbers_become_doubles() {
    let row = after(upsert(
        br#"{"min":-9223372036854775808,"max":18446744073709551615,"past":18446744073709551616}"#,
    ))
    .into_iter()
    .collect::<Vec<_>>();
    let field = |name: &str| row.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(field("min"), Some(json!(i64::MIN)));
    assert_eq!(field("max"), Some(json!(u64::MAX)));
    // Past u64: a double, as in JavaScript (the mapping's `long` and the version refuse it).
    assert_eq!(
        field("past").and_then(|v| v.as_f64()),
        Some(18_446_744_073_709_551_616.0)
    );
    assert!(field("past").is_some_and(|v| v.as_u64().is_none()));
    // Past the double's range: not a number serde_json will make.
    let message = poison(upsert(br#"{"id":1,"huge":1e400}"#));
    assert!(message.contains("number out of range"), "{message}");
}

#[test]
fn invalid_utf8_in_a_string_is_poison_and_in_a_key_too() {
    let message = poison(upsert(b"{\"id\":1,\"name\":\"\xff\xfe\"}"));
    assert!(message.contains("invalid unicode"), "{message}");
    // A key that is neither JSON nor text, read lossily, could merge two entities.
    let message = poison(decode(
        Envelope::Upsert,
        Some(b"\xff\x00\xfe"),
        br#"{"id":1}"#,
    ));
    assert!(message.contains("record key"), "{message}");
    // Text keys, JSON keys and no key at all decode.
    for key in [&b"plain-text"[..], b"{\"id\":1}", b"\"1\""] {
        after(decode(Envelope::Upsert, Some(key), br#"{"id":1}"#));
    }
    match decode(Envelope::Upsert, None, br#"{"id":1}"#) {
        Ok(Decoded::Event(event)) => assert!(event.key.is_none()),
        _ => panic!("a record without a key decodes"),
    }
}

#[test]
fn a_duplicate_field_name_keeps_the_last_value_as_jackson_and_javascript_do() {
    let row = after(upsert(br#"{"id":1,"id":2,"name":"a","name":"b"}"#));
    assert_eq!(row["id"], 2);
    assert_eq!(row["name"], "b");
    assert_eq!(row.len(), 2);
    let envelope = br#"{"op":"c","after":{"id":1,"id":2},"source":{"ts_ms":1}}"#;
    match decode(Envelope::Debezium, None, envelope) {
        Ok(Decoded::Event(event)) => {
            assert_eq!(event.op, Op::Create);
            assert_eq!(event.after.expect("after")["id"], 2);
        }
        other => panic!("{:?}", other.err()),
    }
}
