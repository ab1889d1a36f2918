//! Property tests: what the codecs write, they read back unchanged.
//!
//! ```text
//!  (a) row valid under a target schema ─► AvroTarget::write_datum ─► Confluent frame
//!        ─► schema_id + apache-avro's reader ─► avro_json::to_json ══ row
//!        (and apache-avro's writer gives the same datum for the value it read)
//!  (b) row ─► Connect {schema, payload} JSON bytes (decimals as base64 two's complement,
//!        Decimal and VariableScaleDecimal) ─► Decoder::decode(Json) ══ row, decimals as strings
//!  (c) Debezium JSON, wrapped or not, valid or not ─► Decoder (no tree of the schema or the
//!        envelope) ══ the reference path: one JSON tree, connect::unwrap, parse_envelope
//! ```
//!
//! Expected decimal strings are built here with integer arithmetic, not with the crate's
//! `format_decimal`, so the two implementations check each other.

use apache_avro::types::Value;
use proptest::prelude::*;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::{Map, Value as Json, json};

use crate::avro_json::to_json;
use crate::{
    AvroTarget, Decoded, Decoder, Encoding, Envelope, WIRE_HEADER_LEN, WriterSchema, json_to_avro,
};

const TARGET_SCHEMA: &str = r#"{
  "type": "record", "name": "Row", "namespace": "test",
  "fields": [
    {"name": "s", "type": "string"},
    {"name": "l", "type": "long"},
    {"name": "i", "type": "int"},
    {"name": "d", "type": "double"},
    {"name": "b", "type": "boolean"},
    {"name": "opt", "type": ["null", "string"], "default": null},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 4}},
    {"name": "credit", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}], "default": null},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "either", "type": ["null", "long", "string"], "default": null}
  ]
}"#;

/// `unscaled × 10^-scale` as a plain decimal string, by integer division.
fn decimal_text(unscaled: i64, scale: u32) -> String {
    let magnitude = i128::from(unscaled).unsigned_abs();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{magnitude}");
    }
    let unit = 10u128.pow(scale);
    format!(
        "{sign}{}.{:0width$}",
        magnitude / unit,
        magnitude % unit,
        width = scale as usize
    )
}

/// Minimal big-endian two's complement, as Java's `BigInteger.toByteArray()` (Kafka Connect's
/// `Decimal`) writes it; `pad` extra sign bytes in front, which readers must accept too.
fn twos_complement(unscaled: i64, pad: usize) -> Vec<u8> {
    let bytes = unscaled.to_be_bytes();
    let sign = if unscaled < 0 { 0xff } else { 0x00 };
    let mut start = 0;
    while start < bytes.len() - 1
        && bytes[start] == sign
        && (bytes[start + 1] & 0x80 == 0) == (sign == 0)
    {
        start += 1;
    }
    let mut out = vec![sign; pad];
    out.extend_from_slice(&bytes[start..]);
    out
}

fn base64(bytes: &[u8]) -> String {
    crate::avro_json::base64_encode(bytes)
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A value for the `["null", "long", "string"]` union, including strings that look like numbers.
fn either() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<i64>().prop_map(Json::from),
        any::<String>().prop_map(Json::String),
        "-?[0-9]{1,6}".prop_map(Json::String),
    ]
}

prop_compose! {
    fn target_row()(
        s in any::<String>(),
        l in any::<i64>(),
        i in any::<i32>(),
        d in any::<f64>().prop_filter("JSON has no NaN or infinity", |d| d.is_finite()),
        b in any::<bool>(),
        opt in proptest::option::of(any::<String>()),
        amount in any::<i64>(),
        credit in proptest::option::of(-(10i64.pow(12) - 1)..10i64.pow(12)),
        at in any::<i64>(),
        either in either(),
    ) -> Map<String, Json> {
        let row = json!({
            "s": s, "l": l, "i": i, "d": d, "b": b, "opt": opt,
            "amount": decimal_text(amount, 4),
            "credit": credit.map(|c| decimal_text(c, 2)),
            "at": at,
            "either": either,
        });
        match row {
            Json::Object(map) => map,
            _ => unreachable!("json! of an object"),
        }
    }
}

/// A Debezium envelope around [`TARGET_SCHEMA`] rows, with a `source` block that carries both
/// MySQL and PostgreSQL position fields and some the decoder does not read.
/// `envelope` as an Avro datum of [`envelope_schema`], that schema, and the event the tree path
/// reads from the datum (an error for an invalid envelope).
fn encoded_envelope(
    envelope: Json,
) -> (
    Vec<u8>,
    WriterSchema,
    Result<crate::ChangeEvent, crate::CodecError>,
) {
    let schema = envelope_schema();
    let Json::Object(value) = envelope else {
        unreachable!("json! of an object")
    };
    let mut datum = Vec::new();
    AvroTarget::new(
        SrSettings::new("http://registry.invalid".into()),
        "t",
        &schema,
    )
    .expect("schema")
    .write_datum(&value, &mut datum)
    .expect("the envelope encodes");
    let writer = WriterSchema::parse(&schema).expect("schema");
    let tree = crate::parse_envelope(
        Envelope::Debezium,
        None,
        writer.decode(&datum).expect("decodes"),
    );
    (datum, writer, tree)
}

fn envelope_schema() -> String {
    format!(
        r#"{{
  "type": "record", "name": "Envelope", "namespace": "test",
  "fields": [
    {{"name": "before", "type": ["null", {TARGET_SCHEMA}], "default": null}},
    {{"name": "after", "type": ["null", "test.Row"], "default": null}},
    {{"name": "source", "type": {{"type": "record", "name": "Source", "fields": [
      {{"name": "version", "type": "string"}},
      {{"name": "connector", "type": "string"}},
      {{"name": "ts_ms", "type": "long"}},
      {{"name": "snapshot", "type": ["null", "string"], "default": null}},
      {{"name": "db", "type": "string"}},
      {{"name": "sequence", "type": ["null", "string"], "default": null}},
      {{"name": "lsn", "type": ["null", "long"], "default": null}},
      {{"name": "file", "type": ["null", "string"], "default": null}},
      {{"name": "pos", "type": ["null", "long"], "default": null}},
      {{"name": "row", "type": ["null", "int"], "default": null}}
    ]}}}},
    {{"name": "op", "type": "string"}},
    {{"name": "ts_ms", "type": ["null", "long"], "default": null}},
    {{"name": "transaction", "type": ["null", {{"type": "record", "name": "Block", "fields": [
      {{"name": "id", "type": "string"}}, {{"name": "total_order", "type": "long"}}
    ]}}], "default": null}}
  ]
}}"#
    )
}

prop_compose! {
    fn debezium_envelope()(
        before in proptest::option::of(target_row()),
        after in proptest::option::of(target_row()),
        op in prop_oneof![Just("c"), Just("u"), Just("d"), Just("r"), Just("t"), Just("x")],
        ts_ms in proptest::option::of(any::<i64>()),
        source_ts_ms in any::<i64>(),
        snapshot in proptest::option::of(prop_oneof![Just("true"), Just("false"), Just("last")]),
        sequence in proptest::option::of((any::<u32>(), any::<u32>())),
        lsn in proptest::option::of(0..i64::MAX),
        file in proptest::option::of("mysql-bin\\.[0-9]{6}"),
        pos in proptest::option::of(0..i64::MAX),
        row in proptest::option::of(0..i32::MAX),
        transaction in any::<bool>(),
    ) -> Json {
        json!({
            "before": before, "after": after, "op": op, "ts_ms": ts_ms,
            "source": {
                "version": "3.1.0.Final", "connector": "mysql", "ts_ms": source_ts_ms,
                "snapshot": snapshot, "db": "crm",
                "sequence": sequence.map(|(a, b)| format!("[\"{a}\",\"{b}\"]")),
                "lsn": lsn, "file": file, "pos": pos, "row": row,
            },
            "transaction": transaction.then(|| json!({"id": "tx-1", "total_order": 3})),
        })
    }
}

/// A Kafka Connect field: its schema entry, its payload value, and what decoding must give.
#[derive(Debug, Clone)]
struct ConnectField {
    schema: Json,
    payload: Json,
    decoded: Json,
}

/// A field of some Connect type (its schema entry still without the `field` name).
fn connect_field() -> impl Strategy<Value = ConnectField> {
    fn plain(kind: &str, value: Json) -> ConnectField {
        ConnectField {
            schema: json!({"type": kind, "optional": false}),
            payload: value.clone(),
            decoded: value,
        }
    }
    prop_oneof![
        any::<String>().prop_map(|s| plain("string", Json::String(s))),
        any::<i64>().prop_map(|v| plain("int64", Json::from(v))),
        any::<i32>().prop_map(|v| plain("int32", Json::from(v))),
        any::<bool>().prop_map(|v| plain("boolean", Json::Bool(v))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|v| plain("float64", Json::from(v))),
        // org.apache.kafka.connect.data.Decimal: base64 bytes, scale in the schema; optional.
        (proptest::option::of(any::<i64>()), 0u32..12, 0usize..3).prop_map(
            |(unscaled, scale, pad)| ConnectField {
                schema: json!({
                    "type": "bytes", "optional": true,
                    "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                    "parameters": {"scale": scale.to_string(), "connect.decimal.precision": "20"}
                }),
                payload: unscaled.map_or(Json::Null, |u| Json::String(base64(&twos_complement(
                    u, pad
                )))),
                decoded: unscaled.map_or(Json::Null, |u| Json::String(decimal_text(u, scale))),
            }
        ),
        // io.debezium.data.VariableScaleDecimal: {scale, value} in the payload.
        (any::<i64>(), 0u32..12).prop_map(|(unscaled, scale)| ConnectField {
            schema: json!({
                "type": "struct", "optional": false,
                "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
                "fields": [
                    {"field": "scale", "type": "int32", "optional": false},
                    {"field": "value", "type": "bytes", "optional": false}
                ]
            }),
            payload: json!({"scale": scale, "value": base64(&twos_complement(unscaled, 0))}),
            decoded: Json::String(decimal_text(unscaled, scale)),
        }),
    ]
}

/// 1–7 fields named `f0`, `f1`, …
fn connect_row() -> impl Strategy<Value = Vec<ConnectField>> {
    proptest::collection::vec(connect_field(), 1..8).prop_map(|mut fields| {
        for (i, field) in fields.iter_mut().enumerate() {
            field.schema["field"] = Json::String(format!("f{i}"));
        }
        fields
    })
}

/// A Connect struct schema; `field` names it when it is itself a field of a struct.
fn struct_schema(fields: &[ConnectField], name: &str, optional: bool, field: Option<&str>) -> Json {
    let mut schema = json!({
        "type": "struct", "name": name, "optional": optional,
        "fields": fields.iter().map(|f| f.schema.clone()).collect::<Vec<_>>()
    });
    if let Some(field) = field {
        schema["field"] = Json::String(field.to_owned());
    }
    schema
}

fn object(fields: &[ConnectField], pick: impl Fn(&ConnectField) -> &Json) -> Json {
    Json::Object(
        fields
            .iter()
            .map(|f| {
                let name = f.schema["field"].as_str().expect("named").to_owned();
                (name, pick(f).clone())
            })
            .collect(),
    )
}

proptest! {
    #[test]
    fn avro_target_rows_round_trip_through_the_wire_format(row in target_row(), id in any::<u32>()) {
        let target = AvroTarget::new(SrSettings::new("http://registry.invalid".into()), "t", TARGET_SCHEMA)
            .expect("schema");
        let (root, names) = (target.resolved.root(), target.resolved.names());
        let mut framed = vec![0];
        framed.extend_from_slice(&id.to_be_bytes());
        target.write_datum(&row, &mut framed).expect("a valid row encodes");

        prop_assert_eq!(crate::schema_id(&framed).expect("header"), id);
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(root).build().expect("reader");
        let decoded = reader
            .read_value(&mut &framed[WIRE_HEADER_LEN..])
            .expect("datum decodes");
        // The datum is the one apache-avro itself writes for the value it reads from it.
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(root).build().expect("writer");
        prop_assert_eq!(
            writer.write_value_to_vec(decoded.clone()).expect("datum"),
            &framed[WIRE_HEADER_LEN..]
        );
        prop_assert_eq!(to_json(decoded, root, names), Json::Object(row.clone()));
        // The decoder's own paths: the fast one, and the apache-avro one it falls back to.
        let writer = WriterSchema::parse(TARGET_SCHEMA).expect("schema");
        let datum = &framed[WIRE_HEADER_LEN..];
        prop_assert_eq!(writer.decode_with_apache_avro(datum).expect("decodes"), Json::Object(row.clone()));
        prop_assert_eq!(writer.decode_fast(datum), Some(Json::Object(row)), "the fast path takes every type here");
    }

    #[test]
    fn debezium_avro_envelopes_read_the_same_without_a_json_tree(envelope in debezium_envelope()) {
        let (datum, writer, tree) = encoded_envelope(envelope);
        let typed = writer
            .decode_fast_as::<crate::DebeziumEnvelope>(&datum)
            .and_then(|fields| fields.into_event(&mut None));
        // Every valid envelope takes the typed path, and reads the same; an invalid one is left
        // to the tree path, which says why.
        prop_assert_eq!(typed, tree.ok());
    }

    #[test]
    fn after_only_decodes_the_same_events_without_before_beside_after(envelope in debezium_envelope()) {
        let (datum, writer, tree) = encoded_envelope(envelope);
        let bytes = [&[0, 0, 0, 0, 7], &datum[..]].concat();
        let want = tree.ok().map(|mut event| {
            if event.after.is_some() {
                event.before = None;
            }
            event
        });
        let decoder = Decoder::new(None).after_only().with_schema(7, writer);
        let got = decoder
            .decode_cached(Envelope::Debezium, Encoding::Avro, None, Some(&bytes))
            .expect("the schema is cached");
        // A delete keeps its `before` (read again whole); an invalid envelope is still poison.
        match got {
            Ok(Decoded::Event(event)) => prop_assert_eq!(Some(event), want),
            Ok(Decoded::Tombstone { .. }) => prop_assert!(false, "a value is not a tombstone"),
            Err(e) => prop_assert!(want.is_none(), "{e}"),
        }
    }

    #[test]
    fn rfc3339_timestamps_encode_to_their_epoch_millis(
        millis in -2_208_988_800_000i64..7_258_118_400_000, // 1900 … 2200
        offset_minutes in -14 * 60..=14 * 60i32,
    ) {
        let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).expect("offset");
        let text = chrono::DateTime::from_timestamp_millis(millis)
            .expect("in range")
            .with_timezone(&offset)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
        let schema = apache_avro::Schema::TimestampMillis;
        let value = json_to_avro(&Json::String(text.clone()), &schema, "at")
            .expect("an RFC 3339 timestamp");
        prop_assert_eq!(value, Value::TimestampMillis(millis), "{}", text);
    }

    #[test]
    fn connect_json_upsert_rows_decode_to_the_original_row(fields in connect_row()) {
        let wrapped = json!({
            "schema": struct_schema(&fields, "test.Row", false, None),
            "payload": object(&fields, |f| &f.payload),
        });
        let bytes = serde_json::to_vec(&wrapped).expect("json");
        let decoded = block_on(Decoder::new(None).decode(Envelope::Upsert, Encoding::Json, None, Some(&bytes)))
            .expect("decodes");
        let Decoded::Event(event) = decoded else {
            return Err(TestCaseError::fail("an upsert value is an event"));
        };
        prop_assert_eq!(event.after.map(Json::Object), Some(object(&fields, |f| &f.decoded)));
    }

    #[test]
    fn connect_json_debezium_envelopes_decode_before_and_after(
        before in connect_row(),
        after in connect_row(),
        op in prop_oneof![Just("c"), Just("u"), Just("r")],
    ) {
        // Debezium declares one row schema for both sides; here each has its own, so both vary.
        let wrapped = json!({
            "schema": {"type": "struct", "name": "test.Envelope", "optional": false, "fields": [
                struct_schema(&before, "test.Before", true, Some("before")),
                struct_schema(&after, "test.After", true, Some("after")),
                {"field": "op", "type": "string", "optional": false},
                {"field": "ts_ms", "type": "int64", "optional": true}
            ]},
            "payload": {
                "before": object(&before, |f| &f.payload),
                "after": object(&after, |f| &f.payload),
                "op": op, "ts_ms": 1_700_000_000_000i64
            },
        });
        let bytes = serde_json::to_vec(&wrapped).expect("json");
        let decoded = block_on(Decoder::new(None).decode(Envelope::Debezium, Encoding::Json, None, Some(&bytes)))
            .expect("decodes");
        let Decoded::Event(event) = decoded else {
            return Err(TestCaseError::fail("a non-null value is an event"));
        };
        prop_assert_eq!(event.before.map(Json::Object), Some(object(&before, |f| &f.decoded)));
        prop_assert_eq!(event.after.map(Json::Object), Some(object(&after, |f| &f.decoded)));
        prop_assert_eq!(event.ts_ms, Some(1_700_000_000_000));
    }
}

/// How a generated JSON record is laid out.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// The envelope alone (`schemas.enable=false`).
    Plain,
    /// `{"schema", "payload"}`, compact, as Connect's converter writes it.
    Wrapped,
    /// The same with a space after the first colon: not the converter's layout.
    Spaced,
    /// `{"payload", "schema"}`.
    PayloadFirst,
    /// The wrapper with a third field: not a wrapper, to the reference path.
    ExtraField,
    /// The wrapper with a decimal in the `source` block's schema.
    DecimalInSource,
}

/// A change to the JSON text that the typed path must not read differently.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    None,
    /// An `op` before the record's own first field: a duplicate field (or a wrapper's third).
    DuplicateOp,
    /// `after` is a string.
    AfterNotAnObject,
    /// `ts_ms` is a float.
    FloatTsMs,
    /// The text is cut short.
    Truncated,
}

prop_compose! {
    fn debezium_json()(
        before in proptest::option::of(connect_row()),
        after in proptest::option::of(connect_row()),
        op in prop_oneof![Just("c"), Just("u"), Just("d"), Just("r"), Just("x")],
        layout in prop_oneof![
            Just(Layout::Plain), Just(Layout::Wrapped), Just(Layout::Spaced), Just(Layout::PayloadFirst),
            Just(Layout::ExtraField), Just(Layout::DecimalInSource),
        ],
        hostile in prop_oneof![
            4 => Just(Hostile::None), 1 => Just(Hostile::DuplicateOp),
            1 => Just(Hostile::AfterNotAnObject), 1 => Just(Hostile::FloatTsMs),
            1 => Just(Hostile::Truncated),
        ],
        lsn in any::<i64>(),
    ) -> Vec<u8> {
        let row_schema = |row: &Option<Vec<ConnectField>>, field| {
            struct_schema(row.as_deref().unwrap_or_default(), "test.Row", true, Some(field))
        };
        let row = |row: &Option<Vec<ConnectField>>| row.as_ref().map(|r| object(r, |f| &f.payload));
        let mut payload = json!({
            "before": row(&before), "after": row(&after), "op": op, "ts_ms": 1_700_000_000_000i64,
            "source": {"connector": "postgresql", "lsn": lsn, "snapshot": "false"}
        });
        match hostile {
            Hostile::AfterNotAnObject => payload["after"] = json!("not a row"),
            Hostile::FloatTsMs => payload["ts_ms"] = json!(1.5),
            _ => {}
        }
        let lsn_schema = match layout {
            Layout::DecimalInSource => json!({
                "field": "lsn", "type": "bytes", "optional": true,
                "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "0"}
            }),
            _ => json!({"field": "lsn", "type": "int64", "optional": true}),
        };
        let schema = json!({"type": "struct", "name": "test.Envelope", "optional": false, "fields": [
            row_schema(&before, "before"), row_schema(&after, "after"),
            {"field": "source", "type": "struct", "optional": false, "fields": [
                {"field": "connector", "type": "string", "optional": false}, lsn_schema,
                {"field": "snapshot", "type": "string", "optional": true}
            ]},
            {"field": "op", "type": "string", "optional": false},
            {"field": "ts_ms", "type": "int64", "optional": true}
        ]});
        let text = match layout {
            Layout::Plain => payload.to_string(),
            // serde_json's maps keep their fields sorted: write these orders by hand.
            Layout::Wrapped | Layout::DecimalInSource => format!(r#"{{"schema":{schema},"payload":{payload}}}"#),
            Layout::Spaced => format!(r#"{{"schema": {schema},"payload":{payload}}}"#),
            Layout::PayloadFirst => format!(r#"{{"payload":{payload},"schema":{schema}}}"#),
            Layout::ExtraField => json!({"schema": schema, "payload": payload, "x": 1}).to_string(),
        };
        let mut bytes = text.into_bytes();
        match hostile {
            Hostile::DuplicateOp => {
                bytes.splice(1..1, br#""op":"d","#.iter().copied());
            }
            Hostile::Truncated => bytes.truncate(bytes.len() / 2),
            _ => {}
        }
        bytes
    }
}

/// The key of a generated record: none, a plain JSON row, a Connect-wrapped one, or a string.
fn json_key() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|id| Some(format!(r#"{{"id":{id}}}"#).into_bytes())),
        any::<i64>().prop_map(|id| Some(
            json!({
                "schema": {"type": "struct", "fields": [{"field": "id", "type": "int64"}]},
                "payload": {"id": id}
            })
            .to_string()
            .into_bytes()
        )),
        "[a-z]{1,8}".prop_map(|s| Some(s.into_bytes())),
    ]
}

/// What the decoder made of a JSON record before it had a typed path: one tree of the whole
/// record, unwrapped, then the envelope read from the tree.
fn reference_json(
    envelope: Envelope,
    after_only: bool,
    key: Option<&[u8]>,
    value: &[u8],
) -> Result<Decoded, String> {
    let key = key.map(|bytes| match serde_json::from_slice::<Json>(bytes) {
        Ok(tree) => crate::connect::unwrap(tree),
        Err(_) => Json::String(String::from_utf8_lossy(bytes).into_owned()),
    });
    let key = key.map(|tree| match tree {
        Json::Object(row) => row,
        other => Map::from_iter([("key".to_owned(), other)]),
    });
    serde_json::from_slice(value)
        .map(crate::connect::unwrap)
        .map_err(crate::CodecError::Json)
        .and_then(|tree| crate::parse_envelope(envelope, key, tree))
        .map(|mut event| {
            if after_only && event.after.is_some() {
                event.before = None;
            }
            Decoded::Event(event)
        })
        .map_err(|e| e.to_string())
}

proptest! {
    #[test]
    fn json_records_decode_as_the_reference_path_decodes_them(
        value in debezium_json(),
        key in json_key(),
        after_only in any::<bool>(),
        upsert in proptest::bool::weighted(0.2),
    ) {
        let envelope = if upsert { Envelope::Upsert } else { Envelope::Debezium };
        let mut decoder = Decoder::new(None);
        if after_only {
            decoder = decoder.after_only();
        }
        let want = reference_json(envelope, after_only, key.as_deref(), &value);
        // Twice: the second read takes the schema from the cache.
        for _ in 0..2 {
            let got = decoder
                .decode_cached(envelope, Encoding::Json, key.as_deref(), Some(&value))
                .expect("JSON needs no registry")
                .map_err(|e| e.to_string());
            prop_assert_eq!(&got, &want, "{}", String::from_utf8_lossy(&value));
        }
    }
}

#[test]
fn helpers_agree_with_known_values() {
    assert_eq!(decimal_text(12345, 2), "123.45");
    assert_eq!(decimal_text(-5, 3), "-0.005");
    assert_eq!(decimal_text(i64::MIN, 0), "-9223372036854775808");
    // Java: BigInteger.valueOf(12345).toByteArray() = [0x30, 0x39]; 128 → [0x00, 0x80]; -1 → [0xff].
    assert_eq!(twos_complement(12345, 0), [0x30, 0x39]);
    assert_eq!(twos_complement(128, 0), [0x00, 0x80]);
    assert_eq!(twos_complement(-1, 0), [0xff]);
    assert_eq!(twos_complement(-129, 1), [0xff, 0xff, 0x7f]);
    assert_eq!(twos_complement(0, 0), [0x00]);
}
