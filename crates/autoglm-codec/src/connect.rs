//! Kafka Connect JSON (`{"schema": …, "payload": …}`): unwrap the payload and, guided by the Connect
//! schema, turn `org.apache.kafka.connect.data.Decimal` (base64 bytes) and
//! `io.debezium.data.VariableScaleDecimal` into decimal strings.
//!
//! Connect's JSON converter repeats the whole schema in every record: about three quarters of a
//! Debezium record's bytes. [`unwrap`] reads a tree of it all, the reference path; [`Schemas`]
//! borrows the schema's text unparsed ([`Wrapped`]) and parses each distinct schema once, and
//! in the converter's own layout only compares a known schema's text before the payload.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use autoglm_core::Row;
use base64::Engine as _;
use num_bigint::BigInt;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::avro_json::format_decimal;

const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";

/// If `value` is a Connect `schema`/`payload` wrapper, the converted payload; otherwise `value`.
pub(crate) fn unwrap(value: Json) -> Json {
    match value {
        Json::Object(mut map)
            if map.len() == 2 && map.contains_key("schema") && map.contains_key("payload") =>
        {
            let payload = map.remove("payload").unwrap_or(Json::Null);
            let schema = map.remove("schema").unwrap_or(Json::Null);
            convert(payload, &schema)
        }
        other => other,
    }
}

/// A Connect wrapper as read without a tree for its schema: the schema's text is borrowed from
/// the record. Exactly the two fields, as [`unwrap`] requires; anything else fails to
/// deserialize, and the caller takes the reference path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Wrapped<'a, P> {
    #[serde(borrow)]
    pub(crate) schema: &'a RawValue,
    pub(crate) payload: P,
}

/// Whether a JSON text's first field is `schema` or `payload`: worth reading as a [`Wrapped`].
/// Only a hint: the deserializer decides.
pub(crate) fn looks_wrapped(bytes: &[u8]) -> bool {
    let mut rest = bytes.trim_ascii_start();
    let Some(after_brace) = rest.strip_prefix(b"{") else {
        return false;
    };
    rest = after_brace.trim_ascii_start();
    rest.starts_with(b"\"schema\"") || rest.starts_with(b"\"payload\"")
}

/// A wrapper's schema, parsed.
#[derive(Debug)]
pub(crate) struct Schema {
    tree: Json,
    /// Whether a value of this schema may hold a decimal to convert; if not, its payload is
    /// taken as it is.
    converts: bool,
    /// The schemas of a Debezium envelope's rows, where its conversions lie in them alone.
    rows: Option<EnvelopeRows>,
}

/// The schemas of an envelope's `before` and `after` fields.
#[derive(Debug)]
struct EnvelopeRows {
    before: Option<Json>,
    after: Option<Json>,
}

/// One of a Debezium envelope's rows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EnvelopeRow {
    Before,
    After,
}

impl Schema {
    fn parse(raw: &RawValue) -> Option<Schema> {
        let tree: Json = serde_json::from_str(raw.get()).ok()?;
        Some(Schema {
            converts: names_a_decimal(&tree),
            rows: envelope_rows(&tree),
            tree,
        })
    }

    /// The payload converted as [`unwrap`] converts it.
    pub(crate) fn convert(&self, payload: Json) -> Json {
        if self.converts {
            convert(payload, &self.tree)
        } else {
            payload
        }
    }

    /// An envelope's row converted as [`unwrap`] converts it inside the whole payload; `None`
    /// where that cannot be done row by row (this schema converts something outside `before`
    /// and `after`, is not a plain struct, or lists a field twice).
    pub(crate) fn convert_row(&self, which: EnvelopeRow, row: Row) -> Option<Row> {
        if !self.converts {
            return Some(row);
        }
        let rows = self.rows.as_ref()?;
        let schema = match which {
            EnvelopeRow::Before => &rows.before,
            EnvelopeRow::After => &rows.after,
        };
        let Some(schema) = schema else {
            return Some(row);
        };
        match convert(Json::Object(row), schema) {
            Json::Object(row) => Some(row),
            _ => None,
        }
    }
}

/// The row schemas of `schema`, an envelope whose conversions all lie in `before` and `after`.
fn envelope_rows(schema: &Json) -> Option<EnvelopeRows> {
    let name = schema.get("name").and_then(Json::as_str);
    if matches!(name, Some(DECIMAL | VARIABLE_SCALE_DECIMAL))
        || schema.get("type").and_then(Json::as_str) != Some("struct")
    {
        return None;
    }
    let mut rows = EnvelopeRows {
        before: None,
        after: None,
    };
    let mut seen = Vec::new();
    for field in schema.get("fields")?.as_array()? {
        let name = field.get("field").and_then(Json::as_str);
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match name {
            Some("before") => rows.before = Some(field.clone()),
            Some("after") => rows.after = Some(field.clone()),
            _ if names_a_decimal(field) => return None,
            _ => {}
        }
    }
    Some(rows)
}

/// Whether `schema` or anything in it is named as a Connect or Debezium decimal.
fn names_a_decimal(schema: &Json) -> bool {
    match schema {
        Json::Object(map) => {
            matches!(
                map.get("name").and_then(Json::as_str),
                Some(DECIMAL | VARIABLE_SCALE_DECIMAL)
            ) || map.values().any(names_a_decimal)
        }
        Json::Array(items) => items.iter().any(names_a_decimal),
        _ => false,
    }
}

/// The Connect schemas seen so far, by their text. Bounded: past [`Schemas::MAX`] distinct
/// schemas, a new one is parsed for its record and not kept.
#[derive(Debug, Default)]
pub(crate) struct Schemas(RwLock<Cache>);

type Cache = HashMap<Box<str>, Arc<Schema>, foldhash::fast::RandomState>;

impl Schemas {
    const MAX: usize = 1024;
    /// Up to this many schemas, a record is first compared with each, byte for byte
    /// ([`Schemas::known_prefix`]).
    const COMPARED: usize = 8;

    /// The parsed schema of `raw`; `None` if it is not JSON (the reference path says why).
    pub(crate) fn get(&self, raw: &RawValue) -> Option<Arc<Schema>> {
        if let Some(schema) = self.cache().get(raw.get()) {
            return Some(Arc::clone(schema));
        }
        let schema = Arc::new(Schema::parse(raw)?);
        let mut cache = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() < Self::MAX {
            cache.insert(raw.get().into(), Arc::clone(&schema));
        }
        Some(schema)
    }

    fn cache(&self) -> RwLockReadGuard<'_, Cache> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A wrapper's payload read as `T`, and its schema; `None` where `bytes` is not a
    /// well-formed wrapper or its payload is not a `T`, for the reference path to read.
    ///
    /// Kafka Connect's JSON converter writes every record as `{"schema":S,"payload":P}`,
    /// compact, with the same S for every record of a table version. When S is the text of a
    /// schema seen before, byte for byte, only P is parsed: S, three quarters of the record,
    /// is compared, not scanned. Any other layout is read by serde, S borrowed unparsed and
    /// looked up by its text.
    pub(crate) fn read<T: DeserializeOwned>(&self, bytes: &[u8]) -> Option<(Arc<Schema>, T)> {
        if let Some((schema, payload)) = self.known_prefix(bytes) {
            let mut de = serde_json::Deserializer::from_slice(payload);
            if let Ok(value) = T::deserialize(&mut de)
                && de.end().is_ok()
            {
                return Some((schema, value));
            }
        }
        if !looks_wrapped(bytes) {
            return None;
        }
        let wrapped: Wrapped<'_, T> = serde_json::from_slice(bytes).ok()?;
        Some((self.get(wrapped.schema)?, wrapped.payload))
    }

    /// `bytes` as `{"schema":S,"payload":P}` with S a schema seen before, byte for byte: S,
    /// and P's text (what is left once the closing brace is taken off). A complete JSON value
    /// followed by `,` ends there, so S is the record's whole schema; whether P is one JSON
    /// value and nothing more is for its reader to say.
    fn known_prefix<'b>(&self, bytes: &'b [u8]) -> Option<(Arc<Schema>, &'b [u8])> {
        let rest = bytes.strip_prefix(b"{\"schema\":")?;
        let cache = self.cache();
        if cache.len() > Self::COMPARED {
            return None;
        }
        let (schema, after) = cache.iter().find_map(|(text, schema)| {
            let after = rest.strip_prefix(text.as_bytes())?;
            Some((schema, after.strip_prefix(b",\"payload\":")?))
        })?;
        let mut payload = after;
        while let [init @ .., b' ' | b'\t' | b'\n' | b'\r'] = payload {
            payload = init;
        }
        Some((Arc::clone(schema), payload.strip_suffix(b"}")?))
    }

    /// What [`unwrap`] makes of `bytes`, read with the cached schema; `None` where `bytes` is
    /// not a well-formed wrapper, for the reference path to read.
    pub(crate) fn unwrap(&self, bytes: &[u8]) -> Option<Json> {
        let (schema, payload) = self.read::<Json>(bytes)?;
        Some(schema.convert(payload))
    }
}

fn convert(value: Json, schema: &Json) -> Json {
    match schema.get("name").and_then(Json::as_str) {
        Some(DECIMAL) => {
            let scale = schema
                .pointer("/parameters/scale")
                .and_then(Json::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return decimal_from_base64(&value, scale).unwrap_or(value);
        }
        Some(VARIABLE_SCALE_DECIMAL) => {
            let scale = value.get("scale").and_then(Json::as_u64);
            let bytes = value.get("value");
            if let (Some(scale), Some(bytes)) = (scale, bytes)
                && let Some(d) = usize::try_from(scale)
                    .ok()
                    .and_then(|scale| decimal_from_base64(bytes, scale))
            {
                return d;
            }
            return value;
        }
        _ => {}
    }
    match (value, schema.get("type").and_then(Json::as_str)) {
        (Json::Object(mut map), Some("struct")) => {
            if let Some(fields) = schema.get("fields").and_then(Json::as_array) {
                for field in fields {
                    let Some(name) = field.get("field").and_then(Json::as_str) else {
                        continue;
                    };
                    if let Some(v) = map.get_mut(name) {
                        *v = convert(v.take(), field);
                    }
                }
            }
            Json::Object(map)
        }
        (Json::Array(items), Some("array")) => match schema.get("items") {
            Some(item_schema) => {
                Json::Array(items.into_iter().map(|v| convert(v, item_schema)).collect())
            }
            None => Json::Array(items),
        },
        (other, _) => other,
    }
}

/// `payload` as Kafka Connect's JSON converter writes it under `schema` with
/// `schemas.enable=true`: the `schema`/`payload` wrapper, with the decimal strings of `Decimal`
/// fields as base64 two's complement. What the decoder reads back; for benchmarks and tests.
/// A decimal string that does not fit its field's scale is left as it is.
pub fn wrap(payload: &Json, schema: &Json) -> Vec<u8> {
    // Written by hand: serde_json's maps would put `payload` first.
    format!(
        r#"{{"schema":{schema},"payload":{}}}"#,
        to_connect(payload, schema)
    )
    .into_bytes()
}

fn to_connect(value: &Json, schema: &Json) -> Json {
    if schema.get("name").and_then(Json::as_str) == Some(DECIMAL) {
        let scale = schema
            .pointer("/parameters/scale")
            .and_then(Json::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return value
            .as_str()
            .and_then(|text| unscaled(text, scale))
            .map_or_else(
                || value.clone(),
                |unscaled| {
                    let bytes = unscaled.to_signed_bytes_be();
                    Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                },
            );
    }
    match (value, schema.get("fields").and_then(Json::as_array)) {
        (Json::Object(map), Some(fields)) => Json::Object(
            map.iter()
                .map(|(name, v)| {
                    let field = fields
                        .iter()
                        .find(|f| f.get("field").and_then(Json::as_str) == Some(name));
                    let v = field.map_or_else(|| v.clone(), |field| to_connect(v, field));
                    (name.clone(), v)
                })
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// The unscaled integer of a decimal string at `scale`: `"123.4"`, 2 → 12340. `None` past
/// [`MAX_PLAIN_SCALE`](crate::avro_json::MAX_PLAIN_SCALE).
fn unscaled(text: &str, scale: usize) -> Option<BigInt> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if scale > crate::avro_json::MAX_PLAIN_SCALE
        || fraction.len() > scale
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{whole}{fraction:0<scale$}");
    digits.parse().ok()
}

fn decimal_from_base64(value: &Json, scale: usize) -> Option<Json> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    let unscaled = BigInt::from_signed_bytes_be(&bytes);
    Some(Json::String(format_decimal(&unscaled, scale)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn connect_decimals_become_strings() {
        let wrapped = json!({
            "schema": {"type": "struct", "fields": [
                {"type": "struct", "field": "after", "optional": true, "fields": [
                    {"type": "int64", "field": "id"},
                    {"type": "bytes", "field": "credit", "name": DECIMAL,
                     "parameters": {"scale": "2"}}
                ]}
            ]},
            "payload": {"after": {"id": 1, "credit": "MDk="}}
        });
        assert_eq!(
            unwrap(wrapped),
            json!({"after": {"id": 1, "credit": "123.45"}})
        );
    }

    #[test]
    fn wrap_writes_decimals_as_connect_does_and_unwrap_reads_them_back() {
        let schema = json!({"type": "struct", "fields": [
            {"type": "int64", "field": "id"},
            {"type": "bytes", "field": "credit", "name": DECIMAL, "parameters": {"scale": "2"}},
            {"type": "bytes", "field": "debt", "name": DECIMAL, "parameters": {"scale": "3"}}
        ]});
        let row = json!({"id": 1, "credit": "123.45", "debt": "-0.5"});
        let bytes = wrap(&row, &schema);
        assert!(
            bytes.starts_with(br#"{"schema":{"#),
            "the converter's layout"
        );
        let wrapped: Json = serde_json::from_slice(&bytes).expect("json");
        // Java: new BigDecimal("123.45").unscaledValue().toByteArray() = [0x30, 0x39].
        assert_eq!(wrapped["payload"]["credit"], "MDk=");
        assert_eq!(
            unwrap(wrapped),
            json!({"id": 1, "credit": "123.45", "debt": "-0.500"})
        );
        assert_eq!(unscaled("1.234", 2), None, "more digits than the scale");
    }

    #[test]
    fn the_cached_schema_unwraps_as_the_tree_does() {
        let schemas = Schemas::default();
        let wrapped = json!({
            "schema": {"type": "struct", "fields": [
                {"type": "bytes", "field": "credit", "name": DECIMAL, "parameters": {"scale": "2"}}
            ]},
            "payload": {"credit": "MDk="}
        });
        let sorted = serde_json::to_vec(&wrapped).expect("json");
        let schema_first = format!(
            r#"{{"schema":{},"payload":{}}}"#,
            wrapped["schema"], wrapped["payload"]
        );
        for bytes in [&sorted, schema_first.as_bytes()] {
            for _ in 0..2 {
                assert_eq!(schemas.unwrap(bytes), Some(unwrap(wrapped.clone())));
            }
        }
        assert_eq!(schemas.cache().len(), 1, "parsed once");
        // The known schema's text, then not quite the converter's layout: a wrapper still, or
        // not one (three fields, a stray brace, none, a form feed after it), for the
        // reference path.
        let known = format!(r#"{{"schema":{},"#, wrapped["schema"]);
        for (tail, wrapper) in [
            (r#""payload":1 }"#, true),
            (r#""payload":1,"x":2}"#, false),
            (r#""payload":1}}"#, false),
            (r#""payload":1"#, false),
            ("\"payload\":1}\u{c}", false),
        ] {
            let bytes = format!("{known}{tail}");
            let want = wrapper.then(|| unwrap(serde_json::from_str(&bytes).expect("json")));
            assert_eq!(schemas.unwrap(bytes.as_bytes()), want, "{bytes}");
        }
        // Not a wrapper, or not exactly one: left to the reference path.
        assert_eq!(schemas.unwrap(br#"{"id": 1}"#), None);
        assert_eq!(
            schemas.unwrap(br#"{"schema": {}, "payload": 1, "x": 2}"#),
            None
        );
        assert_eq!(schemas.unwrap(br#"{"schema": {}}"#), None);
    }

    #[test]
    fn plain_json_is_left_alone() {
        let plain = json!({"after": {"id": 1}, "op": "c"});
        assert_eq!(unwrap(plain.clone()), plain);
    }
}
