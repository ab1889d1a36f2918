//! Aligned rows to Avro under a target schema, registered with the topic-name strategy.

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{InnerDecimalSchema, Names};
use apache_avro::types::Value;
use autoglm_core::Row;
use integer_encoding::VarInt;
use num_bigint::BigInt;
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde_json::Value as Json;

use crate::avro_json::OwnedSchema;
use crate::error::truncated;
use crate::{CodecError, Compatibility, RegistryClient};

/// An output topic's Avro schema and its registration (`<topic>-value`).
pub struct AvroTarget {
    encoder: AvroEncoder,
    /// The registered schema's id, once known.
    id: tokio::sync::OnceCell<u32>,
    strategy: SubjectNameStrategy,
    pub(crate) resolved: OwnedSchema,
    /// `<topic>-value`.
    subject: String,
    /// The schema's JSON text, as given.
    text: String,
    /// The indexes of the root record's fields, sorted by name: the order a row iterates in.
    by_name: Vec<usize>,
}

impl std::fmt::Debug for AvroTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroTarget")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl AvroTarget {
    /// Parses `schema` (Avro JSON) for `topic`. Nothing is registered until the first encode or
    /// [`register`](Self::register).
    pub fn new(registry: SrSettings, topic: &str, schema: &str) -> Result<AvroTarget, CodecError> {
        let shape = |e: apache_avro::Error| CodecError::Shape {
            expected: "Avro schema",
            reason: e.to_string(),
        };
        let parsed = Schema::parse_str(schema).map_err(shape)?;
        let resolved = OwnedSchema::new(parsed).map_err(shape)?;
        let by_name = match resolved.root() {
            Schema::Record(r) => {
                let mut order: Vec<usize> = (0..r.fields.len()).collect();
                order.sort_by(|&a, &b| r.fields[a].name.cmp(&r.fields[b].name));
                order
            }
            _ => Vec::new(),
        };
        Ok(AvroTarget {
            encoder: AvroEncoder::new(registry),
            id: tokio::sync::OnceCell::new(),
            strategy: SubjectNameStrategy::TopicNameStrategyWithSchema(
                topic.to_owned(),
                false,
                SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned()),
            ),
            resolved,
            subject: format!("{topic}-value"),
            text: schema.to_owned(),
            by_name,
        })
    }

    /// The registry subject (`<topic>-value`, the topic-name strategy).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Asks `registry` whether this schema may be registered under its subject, by the subject's
    /// compatibility level. Registers nothing.
    pub async fn check_compatibility(
        &self,
        registry: &RegistryClient,
    ) -> Result<Compatibility, CodecError> {
        registry
            .check_compatibility(&self.subject, &self.text)
            .await
    }

    /// The top-level field names of the schema.
    pub fn field_names(&self) -> Vec<String> {
        match self.resolved.root() {
            Schema::Record(r) => r.fields.iter().map(|f| f.name.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Registers the schema (or finds it registered) and returns its id.
    pub async fn register(&self) -> Result<u32, CodecError> {
        let subject = self
            .strategy
            .get_subject()
            .map_err(CodecError::RegistryUnavailable)?;
        self.encoder
            .get_schema_and_id(&subject, self.strategy.clone())
            .await
            .map(|s| s.id)
            .map_err(|e| {
                self.encoder.remove_errors_from_cache();
                CodecError::RegistryUnavailable(e)
            })
    }

    /// Encodes `row` in the Confluent wire format. The first call registers the schema (or finds
    /// it registered); its id is kept for every later call.
    pub async fn encode(&self, row: &Row) -> Result<Vec<u8>, CodecError> {
        let id = *self.id.get_or_try_init(|| self.register()).await?;
        self.framed(id, |out| self.write_datum(row, out))
    }

    /// [`encode`](Self::encode) without waiting, once the schema's id is known (after the first
    /// `encode`), of a row given as its fields in name order, each name once (what
    /// `Mapping::apply_sorted` returns; see [`write_fields`](Self::write_fields)): what the
    /// pipeline runs on its worker threads. `None` before the id is known.
    pub fn encode_fields_cached(
        &self,
        fields: &[(String, Json)],
    ) -> Option<Result<Vec<u8>, CodecError>> {
        self.id
            .get()
            .map(|&id| self.framed(id, |out| self.write_fields(fields, out)))
    }

    /// The Confluent frame for schema `id` around the datum `write` appends.
    fn framed(
        &self,
        id: u32,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<Vec<u8>, CodecError> {
        // Room for the usual row without a reallocation.
        let mut bytes = Vec::with_capacity(512);
        bytes.push(0);
        bytes.extend_from_slice(&id.to_be_bytes());
        write(&mut bytes)?;
        Ok(bytes)
    }

    /// Appends `row`'s Avro datum (no wire header) to `out`. After an error `out` may hold part
    /// of the datum.
    pub fn write_datum(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.write_merged(row, out)
    }

    /// [`write_datum`](Self::write_datum) of a row given as its fields in name order, each name
    /// once, as `Mapping::apply_sorted` returns them: no map is built for the encode.
    ///
    /// # Panics
    ///
    /// In debug builds, when `fields` are not in strictly increasing name order (a field out of
    /// order would be written as missing).
    pub fn write_fields(
        &self,
        fields: &[(String, Json)],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        debug_assert!(
            fields.windows(2).all(|w| w[0].0 < w[1].0),
            "fields in name order, each name once"
        );
        self.write_merged(fields.iter().map(|(name, value)| (name, value)), out)
    }

    /// The row's fields, in name order, are matched to the schema's in one merge of two sorted
    /// lists (`by_name` is the schema's fields by name), not looked up one by one.
    fn write_merged<'r>(
        &self,
        row: impl IntoIterator<Item = (&'r String, &'r Json)>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let Schema::Record(record) = self.resolved.root() else {
            return Err(CodecError::Shape {
                expected: "a record target schema",
                reason: format!("`{}` is not a record", self.subject),
            });
        };
        let mut values: Vec<Option<&Json>> = vec![None; record.fields.len()];
        let mut fields = self.by_name.iter().peekable();
        for (name, value) in row {
            while let Some(&&i) = fields.peek() {
                match record.fields[i].name.as_str().cmp(name.as_str()) {
                    std::cmp::Ordering::Less => {
                        fields.next();
                    }
                    std::cmp::Ordering::Equal => {
                        values[i] = Some(value);
                        fields.next();
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
        }
        write_record_fields(record, |i| values[i], self.resolved.names(), out)
    }
}

/// Converts a JSON value into an Avro value of `schema`, which defines every named type it uses
/// (a whole schema, as parsed). Strings convert to numbers and numbers to strings; decimals
/// accept strings or numbers and are rescaled exactly (more fractional digits than the scale is
/// an error, not a rounding); timestamps accept epoch numbers in the schema's unit or
/// ISO-8601/RFC 3339 strings. A union takes a branch of the value's own kind when it has one
/// (`"007"` stays a string under `["long", "string"]`), else the first branch the value
/// converts to.
///
/// The value is what apache-avro reads from the datum [`AvroTarget::write_datum`] writes: the
/// pipeline writes datums straight from JSON, and this shows what they hold.
pub fn json_to_avro(json: &Json, schema: &Schema, path: &str) -> Result<Value, CodecError> {
    let path = path.trim_start_matches('.');
    let error = |e: apache_avro::Error| CodecError::Encode {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let owned = OwnedSchema::new(schema.clone()).map_err(error)?;
    let mut datum = Vec::new();
    write(json, schema, owned.names(), &mut datum).map_err(|e| under(e, path))?;
    GenericDatumReader::builder(schema)
        .build()
        .and_then(|reader| reader.read_value(&mut &datum[..]))
        .map_err(error)
}

/// Appends `json` to `out` as an Avro datum of `schema` (the binary encoding: zig-zag varints,
/// length-prefixed bytes, union branch indexes), converting as [`json_to_avro`] says. An
/// error's path is relative to `json`: each level prefixes its own field name as the error
/// comes back up, so a valid row builds no path strings. After an error `out` may hold part of
/// the datum.
fn write(json: &Json, schema: &Schema, names: &Names, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let fail = |reason: &str| CodecError::Encode {
        path: String::new(),
        reason: format!("{reason}, got {}", truncated(json, 64)),
    };
    let schema = match schema {
        Schema::Ref { name } => names.get(name).ok_or_else(|| fail("unknown named type"))?,
        other => other,
    };
    match schema {
        Schema::Null if json.is_null() => {}
        Schema::Null => return Err(fail("expected null")),
        Schema::Union(union) => {
            let variants = union.variants();
            if json.is_null() {
                let index = variants
                    .iter()
                    .position(|v| matches!(v, Schema::Null))
                    .ok_or_else(|| fail("a value is required"))?;
                write_long(out, index as i64);
                return Ok(());
            }
            // Branches of the value's own JSON kind first, so that `"007"` stays a string
            // under ["long", "string"] and `5` an integer under ["double", "long"]; only then
            // the converting branches (a string into a long, a number into a decimal, …).
            let branches = |natural: bool| {
                variants.iter().enumerate().filter(move |(_, v)| {
                    !matches!(v, Schema::Null) && same_kind(json, v, names) == natural
                })
            };
            let start = out.len();
            let mut last_error = None;
            for (index, variant) in branches(true).chain(branches(false)) {
                write_long(out, index as i64);
                match write(json, variant, names, out) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        out.truncate(start);
                        last_error = Some(e);
                    }
                }
            }
            return Err(last_error.unwrap_or_else(|| fail("no union branch fits")));
        }
        Schema::Record(record) => {
            let Json::Object(map) = json else {
                return Err(fail("expected an object"));
            };
            write_record(map, record, names, out)?;
        }
        Schema::Boolean => out.push(match json {
            Json::Bool(b) => u8::from(*b),
            Json::String(s) if s == "true" || s == "false" => u8::from(s == "true"),
            _ => return Err(fail("expected a boolean")),
        }),
        Schema::Int => write_int(
            out,
            integer(json).ok_or_else(|| fail("expected an integer"))?,
            || fail("out of the int range"),
        )?,
        Schema::Long => write_long(
            out,
            integer(json).ok_or_else(|| fail("expected an integer"))?,
        ),
        Schema::Date => write_int(
            out,
            date_days(json).ok_or_else(|| fail("expected epoch days or YYYY-MM-DD"))?,
            || fail("out of the date range"),
        )?,
        Schema::TimestampMillis => write_long(
            out,
            timestamp(json, 1_000)
                .ok_or_else(|| fail("expected epoch millis or an ISO-8601 timestamp"))?,
        ),
        Schema::TimestampMicros => write_long(
            out,
            timestamp(json, 1_000_000)
                .ok_or_else(|| fail("expected epoch micros or an ISO-8601 timestamp"))?,
        ),
        Schema::Float => {
            let value = float(json).ok_or_else(|| fail("expected a number"))? as f32;
            out.extend_from_slice(&value.to_le_bytes());
        }
        Schema::Double => {
            let value = float(json).ok_or_else(|| fail("expected a number"))?;
            out.extend_from_slice(&value.to_le_bytes());
        }
        Schema::String => match json {
            Json::String(s) => write_bytes(out, s.as_bytes()),
            Json::Number(n) => write_bytes(out, n.to_string().as_bytes()),
            Json::Bool(b) => write_bytes(out, b.to_string().as_bytes()),
            _ => return Err(fail("expected a string")),
        },
        Schema::Bytes => match json {
            Json::String(s) => write_bytes(out, s.as_bytes()),
            _ => return Err(fail("expected a string for bytes")),
        },
        Schema::Decimal(decimal) => {
            let number;
            let text = match json {
                Json::String(s) => s.as_str(),
                Json::Number(n) => {
                    number = n.to_string();
                    &number
                }
                _ => return Err(fail("expected a decimal")),
            };
            let unscaled = unscaled_decimal(text, decimal.scale).ok_or_else(|| {
                fail(&format!(
                    "expected a decimal with at most {} fractional digits",
                    decimal.scale
                ))
            })?;
            match &decimal.inner {
                InnerDecimalSchema::Bytes => write_bytes(out, &unscaled),
                InnerDecimalSchema::Fixed(fixed) => {
                    // Sign-extended to the fixed size.
                    let pad = fixed
                        .size
                        .checked_sub(unscaled.len())
                        .ok_or_else(|| fail(&format!("does not fit in {} bytes", fixed.size)))?;
                    let sign = if unscaled[0] & 0x80 == 0 { 0 } else { 0xFF };
                    out.extend(std::iter::repeat_n(sign, pad));
                    out.extend_from_slice(&unscaled);
                }
            }
        }
        Schema::Enum(e) => {
            let symbol = json
                .as_str()
                .ok_or_else(|| fail("expected an enum symbol"))?;
            let index = e
                .symbols
                .iter()
                .position(|s| s == symbol)
                .ok_or_else(|| fail("not a symbol of the enum"))?;
            write_long(out, index as i64);
        }
        // Arrays and maps as one block of all their items, then the empty block that ends them.
        Schema::Array(array) => {
            let Json::Array(items) = json else {
                return Err(fail("expected an array"));
            };
            if !items.is_empty() {
                write_long(out, items.len() as i64);
                for (i, item) in items.iter().enumerate() {
                    write(item, &array.items, names, out)
                        .map_err(|e| under(e, &format!("[{i}]")))?;
                }
            }
            out.push(0);
        }
        Schema::Map(map) => {
            let Json::Object(entries) = json else {
                return Err(fail("expected an object"));
            };
            if !entries.is_empty() {
                write_long(out, entries.len() as i64);
                for (key, value) in entries {
                    write_bytes(out, key.as_bytes());
                    write(value, &map.types, names, out).map_err(|e| under(e, key))?;
                }
            }
            out.push(0);
        }
        _ => return Err(fail("this Avro type is not supported as a target")),
    }
    Ok(())
}

/// A row as an Avro record: each field from the row, else its default, else null if the field
/// takes it.
fn write_record(
    row: &Row,
    record: &apache_avro::schema::RecordSchema,
    names: &Names,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    write_record_fields(record, |i| row.get(&record.fields[i].name), names, out)
}

/// [`write_record`] with each field's value (by its index in the record) from `value_of`.
fn write_record_fields<'r>(
    record: &apache_avro::schema::RecordSchema,
    value_of: impl Fn(usize) -> Option<&'r Json>,
    names: &Names,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    for (i, field) in record.fields.iter().enumerate() {
        let written = match (value_of(i), &field.default) {
            (Some(v), _) => write(v, &field.schema, names, out),
            (None, Some(default)) => write(default, &field.schema, names, out),
            (None, None) => {
                write(&Json::Null, &field.schema, names, out).map_err(|_| CodecError::Encode {
                    path: String::new(),
                    reason: "required by the target schema, but missing".to_owned(),
                })
            }
        };
        written.map_err(|e| under(e, &field.name))?;
    }
    Ok(())
}

/// An Avro `long` (and `int`, whose encoding is the same): a zig-zag varint.
fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut buf = [0; 10];
    let n = value.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// An Avro `int`: a `long` that must fit 32 bits.
fn write_int(
    out: &mut Vec<u8>,
    value: i64,
    out_of_range: impl FnOnce() -> CodecError,
) -> Result<(), CodecError> {
    i32::try_from(value).map_err(|_| out_of_range())?;
    write_long(out, value);
    Ok(())
}

/// Avro `bytes` and `string`: the length, then the bytes.
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// Puts `parent` in front of an encode error's path (`parent.path`, `parent[3]`).
fn under(error: CodecError, parent: &str) -> CodecError {
    match error {
        CodecError::Encode { path, reason } if !parent.is_empty() => CodecError::Encode {
            path: match path.as_str() {
                "" => parent.to_owned(),
                p if p.starts_with('[') => format!("{parent}{p}"),
                p => format!("{parent}.{p}"),
            },
            reason,
        },
        other => other,
    }
}

/// Whether `schema` is the Avro counterpart of `json`'s own kind (no conversion needed).
fn same_kind(json: &Json, schema: &Schema, names: &Names) -> bool {
    let schema = match schema {
        Schema::Ref { name } => match names.get(name) {
            Some(s) => s,
            None => return false,
        },
        other => other,
    };
    match json {
        Json::Null => matches!(schema, Schema::Null),
        Json::Bool(_) => matches!(schema, Schema::Boolean),
        Json::Number(n) if n.is_i64() || n.is_u64() => matches!(
            schema,
            Schema::Int
                | Schema::Long
                | Schema::Date
                | Schema::TimestampMillis
                | Schema::TimestampMicros
        ),
        Json::Number(_) => matches!(schema, Schema::Float | Schema::Double),
        Json::String(_) => matches!(
            schema,
            Schema::String | Schema::Enum(_) | Schema::Bytes | Schema::Decimal(_)
        ),
        Json::Array(_) => matches!(schema, Schema::Array(_)),
        Json::Object(_) => matches!(schema, Schema::Record(_) | Schema::Map(_)),
    }
}

fn integer(json: &Json) -> Option<i64> {
    match json {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn float(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn date_days(json: &Json) -> Option<i64> {
    match json {
        Json::String(s) => {
            let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
            Some((date - epoch).num_days())
        }
        other => integer(other),
    }
}

/// Epoch number in `per_second` units, or an RFC 3339 string converted to it.
fn timestamp(json: &Json, per_second: i64) -> Option<i64> {
    match json {
        Json::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => {
                let micros = t.timestamp_micros();
                Some(if per_second == 1_000 {
                    micros.div_euclid(1_000)
                } else {
                    micros
                })
            }
            Err(_) => s.trim().parse().ok(),
        },
        other => integer(other),
    }
}

/// `"123.4"` at scale 2 → 12340, as Avro's decimal bytes: two's complement, big-endian, in
/// the fewest bytes that hold it. More fractional digits than `scale` → None.
fn unscaled_decimal(text: &str, scale: usize) -> Option<Vec<u8>> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let unscaled = int
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', scale - frac.len()));
    // 38 digits fit an i128, more than any database's decimal column holds; longer ones take
    // a BigInt.
    let small = unscaled.clone().try_fold(0i128, |n, digit| {
        n.checked_mul(10)?.checked_add(i128::from(digit - b'0'))
    });
    Some(match small {
        Some(n) => {
            let bytes = (if negative { -n } else { n }).to_be_bytes();
            // Drop the leading bytes that only repeat the sign.
            let keep = bytes
                .windows(2)
                .position(|w| !matches!((w[0], w[1] & 0x80), (0, 0) | (0xFF, 0x80)))
                .unwrap_or(bytes.len() - 1);
            bytes[keep..].to_vec()
        }
        None => {
            let magnitude: BigInt = unscaled.map(char::from).collect::<String>().parse().ok()?;
            (if negative { -magnitude } else { magnitude }).to_signed_bytes_be()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Decimal;
    use proptest::prelude::*;
    use serde_json::json;

    fn schema() -> OwnedSchema {
        // Relative to the crate's directory, where cargo runs its tests.
        let text =
            std::fs::read_to_string("../../schemas/erp.customers-value.avsc").expect("schema file");
        OwnedSchema::new(Schema::parse_str(&text).expect("parse")).expect("resolve")
    }

    fn encode(row: Json) -> Result<Value, CodecError> {
        let s = schema();
        json_to_avro(&row, s.root(), "")
    }

    proptest! {
        /// The merge of the row's fields with the schema's (`write_datum`, and `write_fields` for
        /// the same fields as a list) writes what looking each field up by name writes
        /// (`write_record`): for rows that lack fields, hold fields the schema does not, and
        /// whose names sort between the schema's.
        #[test]
        fn the_merged_fields_are_the_looked_up_fields(
            row in proptest::collection::btree_map(
                prop::sample::select(vec!["0", "a", "aa", "ab", "b", "c", "ca", "d", "e", "z"]),
                any::<i64>(),
                0..10,
            )
        ) {
            // Fields out of name order, with defaults, so that any subset encodes.
            let schema = r#"{"type": "record", "name": "R", "fields": [
                {"name": "d", "type": "long", "default": -4},
                {"name": "aa", "type": ["null", "long"], "default": null},
                {"name": "b", "type": "long", "default": 2},
                {"name": "a", "type": ["null", "long"], "default": null},
                {"name": "ca", "type": "long", "default": 7}]}"#;
            let target = AvroTarget::new(SrSettings::new("http://registry.invalid".into()), "t", schema)
                .expect("schema");
            let row: Row = row.into_iter().map(|(k, v)| (k.to_owned(), Json::from(v))).collect();
            let Schema::Record(record) = target.resolved.root() else { panic!("record") };
            let mut merged = Vec::new();
            target.write_datum(&row, &mut merged).expect("merged");
            let mut looked_up = Vec::new();
            write_record(&row, record, target.resolved.names(), &mut looked_up).expect("looked up");
            let fields: Vec<(String, Json)> = row.clone().into_iter().collect();
            let mut from_fields = Vec::new();
            target.write_fields(&fields, &mut from_fields).expect("fields");
            prop_assert_eq!(&merged, &looked_up);
            prop_assert_eq!(from_fields, looked_up);
        }
    }

    #[test]
    fn aligned_row_encodes_under_the_erp_schema() {
        let value = encode(json!({
            "id": "42", "user_name": "ada", "email_address": "ada@example.com",
            "credit_limit": "1500.5", "updated_at": "2026-11-26T10:00:00+08:00", "version": 3
        }))
        .expect("valid row");
        let Value::Record(fields) = value else {
            panic!("record")
        };
        assert_eq!(fields[0], ("id".to_owned(), Value::Long(42)));
        assert_eq!(
            fields[4].1,
            Value::Union(
                1,
                Box::new(Value::Decimal(Decimal::from(
                    BigInt::from(150_050).to_signed_bytes_be()
                )))
            )
        );
        assert_eq!(fields[5].1, Value::TimestampMillis(1_795_658_400_000));
        // tax_id is absent and nullable with a default: null.
        assert_eq!(fields[3].1, Value::Union(0, Box::new(Value::Null)));
    }

    #[test]
    fn every_supported_type_writes_the_datum_apache_avro_writes() {
        let schema = r#"{"type": "record", "name": "All", "fields": [
            {"name": "f", "type": "float"},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "fx", "type": {"type": "fixed", "name": "F8", "size": 8,
                "logicalType": "decimal", "precision": 10, "scale": 2}},
            {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "none", "type": {"type": "array", "items": "long"}},
            {"name": "attrs", "type": {"type": "map", "values": "long"}},
            {"name": "inner", "type": {"type": "record", "name": "Inner",
                "fields": [{"name": "c", "type": "Color"}]}},
            {"name": "more", "type": ["null", "Inner"]}
        ]}"#;
        let row = json!({
            "f": 1.5, "day": "1970-01-03", "us": "1970-01-01T00:00:01Z", "fx": "-1.5",
            "color": "GREEN", "tags": ["a", "b"], "none": [], "attrs": {"x": "2"},
            "inner": {"c": "RED"}, "more": {"c": "GREEN"}
        });
        let inner =
            |c: u32, symbol: &str| Value::Record(vec![("c".into(), Value::Enum(c, symbol.into()))]);
        let expected = Value::Record(vec![
            ("f".into(), Value::Float(1.5)),
            ("day".into(), Value::Date(2)),
            ("us".into(), Value::TimestampMicros(1_000_000)),
            (
                "fx".into(),
                Value::Decimal(Decimal::from(BigInt::from(-150).to_signed_bytes_be())),
            ),
            ("color".into(), Value::Enum(1, "GREEN".into())),
            (
                "tags".into(),
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
            ("none".into(), Value::Array(Vec::new())),
            (
                "attrs".into(),
                Value::Map([("x".to_owned(), Value::Long(2))].into_iter().collect()),
            ),
            ("inner".into(), inner(0, "RED")),
            ("more".into(), Value::Union(1, Box::new(inner(1, "GREEN")))),
        ]);
        let parsed = Schema::parse_str(schema).expect("schema");
        let want = apache_avro::writer::datum::GenericDatumWriter::builder(&parsed)
            .build()
            .and_then(|writer| writer.write_value_to_vec(expected))
            .expect("apache-avro writes the value");

        let target = AvroTarget::new(
            SrSettings::new("http://registry.invalid".into()),
            "t",
            schema,
        )
        .expect("schema");
        let Json::Object(row) = row else {
            unreachable!("json! of an object")
        };
        let mut got = Vec::new();
        target.write_datum(&row, &mut got).expect("the row writes");
        assert_eq!(got, want);
    }

    #[test]
    fn missing_required_field_names_the_path() {
        let err =
            encode(json!({"id": 1, "updated_at": 0, "version": 1})).expect_err("user_name missing");
        assert_eq!(
            err.to_string(),
            "field `user_name`: required by the target schema, but missing"
        );
    }

    #[test]
    fn too_many_fraction_digits_is_an_error_not_a_rounding() {
        let err = encode(json!({"id": 1, "user_name": "a", "credit_limit": "1.005", "updated_at": 0, "version": 1}))
            .expect_err("scale 2");
        assert!(err.to_string().contains("credit_limit"), "{err}");
    }

    #[test]
    fn union_prefers_the_branch_of_the_values_own_kind() {
        let schema = Schema::parse_str(r#"["null", "long", "string", "double"]"#).expect("union");
        let encode = |json: Json| json_to_avro(&json, &schema, "u").expect("fits");
        assert_eq!(
            encode(json!("007")),
            Value::Union(2, Box::new(Value::String("007".into())))
        );
        assert_eq!(encode(json!(7)), Value::Union(1, Box::new(Value::Long(7))));
        assert_eq!(
            encode(json!(7.5)),
            Value::Union(3, Box::new(Value::Double(7.5)))
        );
        // Conversion still applies when no branch has the value's kind.
        let long_or_null = Schema::parse_str(r#"["null", "long"]"#).expect("union");
        assert_eq!(
            json_to_avro(&json!("42"), &long_or_null, "u").expect("converts"),
            Value::Union(1, Box::new(Value::Long(42)))
        );
    }

    proptest! {
        #[test]
        // Up to 60 digits: both the i128 path and the BigInt one, and the edge between them.
        fn decimal_strings_round_trip(unscaled in "-?[0-9]{1,60}", scale in 0usize..10) {
            let unscaled: BigInt = unscaled.parse().expect("digits");
            let text = crate::avro_json::format_decimal(&unscaled, scale);
            prop_assert_eq!(unscaled_decimal(&text, scale), Some(unscaled.to_signed_bytes_be()));
        }
    }
}
