//! Aligned rows to Avro under a target schema, registered with the topic-name strategy.

use apache_avro::schema::Names;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Decimal, Schema};
use autoglm_core::Row;
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
        self.encode_as(id, row)
    }

    /// [`encode`](Self::encode) without waiting, once the schema's id is known (after the first
    /// `encode`): what the pipeline runs on its worker threads. `None` before that.
    pub fn encode_cached(&self, row: &Row) -> Option<Result<Vec<u8>, CodecError>> {
        self.id.get().map(|&id| self.encode_as(id, row))
    }

    fn encode_as(&self, id: u32, row: &Row) -> Result<Vec<u8>, CodecError> {
        let mut bytes = Vec::with_capacity(256);
        bytes.push(0);
        bytes.extend_from_slice(&id.to_be_bytes());
        self.write_datum(row, &mut bytes)?;
        Ok(bytes)
    }

    /// Appends `row`'s Avro datum (no wire header) to `out`.
    pub fn write_datum(&self, row: &Row, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let root = self.resolved.root();
        let Schema::Record(record) = root else {
            return Err(CodecError::Shape {
                expected: "a record target schema",
                reason: format!("`{}` is not a record", self.subject),
            });
        };
        let value = record_to_avro(row, record, self.resolved.names())?;
        let encode_error = |e: apache_avro::Error| CodecError::Encode {
            path: String::new(),
            reason: e.to_string(),
        };
        // No validation pass: record_to_avro only builds values of the schema's own types.
        // Building the writer per datum (it resolves the named types) costs about 4% of the
        // encode; keeping one would need the schema leaked or a self-referential holder.
        GenericDatumWriter::builder(root)
            .validate(false)
            .build()
            .and_then(|writer| writer.write_value(out, value))
            .map_err(encode_error)?;
        Ok(())
    }
}

/// Converts a JSON value into an Avro value of `schema`. Strings convert to numbers and numbers
/// to strings; decimals accept strings or numbers and are rescaled exactly (more fractional
/// digits than the scale is an error, not a rounding); timestamps accept epoch numbers in the
/// schema's unit or ISO-8601/RFC 3339 strings. A union takes a branch of the value's own kind
/// when it has one (`"007"` stays a string under `["long", "string"]`), else the first branch
/// the value converts to.
pub fn json_to_avro(
    json: &Json,
    schema: &Schema,
    names: &Names,
    path: &str,
) -> Result<Value, CodecError> {
    convert(json, schema, names).map_err(|e| under(e, path.trim_start_matches('.')))
}

/// [`json_to_avro`], with an error's path relative to `json`: each level prefixes its own
/// field name as the error comes back up, so a valid row builds no path strings.
fn convert(json: &Json, schema: &Schema, names: &Names) -> Result<Value, CodecError> {
    let fail = |reason: &str| CodecError::Encode {
        path: String::new(),
        reason: format!("{reason}, got {}", truncated(json, 64)),
    };
    let schema = match schema {
        Schema::Ref { name } => names.get(name).ok_or_else(|| fail("unknown named type"))?,
        other => other,
    };
    Ok(match schema {
        Schema::Null if json.is_null() => Value::Null,
        Schema::Null => return Err(fail("expected null")),
        Schema::Union(union) => {
            let variants = union.variants();
            if json.is_null() {
                let index = variants
                    .iter()
                    .position(|v| matches!(v, Schema::Null))
                    .ok_or_else(|| fail("a value is required"))?;
                Value::Union(index_u32(index), Box::new(Value::Null))
            } else {
                // Branches of the value's own JSON kind first, so that `"007"` stays a string
                // under ["long", "string"] and `5` an integer under ["double", "long"]; only then
                // the converting branches (a string into a long, a number into a decimal, …).
                let branches = |natural: bool| {
                    variants.iter().enumerate().filter(move |(_, v)| {
                        !matches!(v, Schema::Null) && same_kind(json, v, names) == natural
                    })
                };
                let mut last_error = None;
                for (index, variant) in branches(true).chain(branches(false)) {
                    match convert(json, variant, names) {
                        Ok(v) => return Ok(Value::Union(index_u32(index), Box::new(v))),
                        Err(e) => last_error = Some(e),
                    }
                }
                return Err(last_error.unwrap_or_else(|| fail("no union branch fits")));
            }
        }
        Schema::Record(record) => {
            let Json::Object(map) = json else {
                return Err(fail("expected an object"));
            };
            record_to_avro(map, record, names)?
        }
        Schema::Boolean => match json {
            Json::Bool(b) => Value::Boolean(*b),
            Json::String(s) if s == "true" || s == "false" => Value::Boolean(s == "true"),
            _ => return Err(fail("expected a boolean")),
        },
        Schema::Int => Value::Int(
            i32::try_from(integer(json).ok_or_else(|| fail("expected an integer"))?)
                .map_err(|_| fail("out of the int range"))?,
        ),
        Schema::Long => Value::Long(integer(json).ok_or_else(|| fail("expected an integer"))?),
        Schema::Date => Value::Date(
            i32::try_from(
                date_days(json).ok_or_else(|| fail("expected epoch days or YYYY-MM-DD"))?,
            )
            .map_err(|_| fail("out of the date range"))?,
        ),
        Schema::TimestampMillis => Value::TimestampMillis(
            timestamp(json, 1_000)
                .ok_or_else(|| fail("expected epoch millis or an ISO-8601 timestamp"))?,
        ),
        Schema::TimestampMicros => Value::TimestampMicros(
            timestamp(json, 1_000_000)
                .ok_or_else(|| fail("expected epoch micros or an ISO-8601 timestamp"))?,
        ),
        Schema::Float => Value::Float(float(json).ok_or_else(|| fail("expected a number"))? as f32),
        Schema::Double => Value::Double(float(json).ok_or_else(|| fail("expected a number"))?),
        Schema::String => Value::String(match json {
            Json::String(s) => s.clone(),
            Json::Number(n) => n.to_string(),
            Json::Bool(b) => b.to_string(),
            _ => return Err(fail("expected a string")),
        }),
        Schema::Bytes => match json {
            Json::String(s) => Value::Bytes(s.as_bytes().to_vec()),
            _ => return Err(fail("expected a string for bytes")),
        },
        Schema::Decimal(decimal) => {
            let text = match json {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                _ => return Err(fail("expected a decimal")),
            };
            let unscaled = unscaled_decimal(&text, decimal.scale).ok_or_else(|| {
                fail(&format!(
                    "expected a decimal with at most {} fractional digits",
                    decimal.scale
                ))
            })?;
            Value::Decimal(Decimal::from(unscaled.to_signed_bytes_be()))
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
            Value::Enum(index_u32(index), symbol.to_owned())
        }
        Schema::Array(array) => {
            let Json::Array(items) = json else {
                return Err(fail("expected an array"));
            };
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        convert(v, &array.items, names).map_err(|e| under(e, &format!("[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        Schema::Map(map) => {
            let Json::Object(entries) = json else {
                return Err(fail("expected an object"));
            };
            Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            convert(v, &map.types, names).map_err(|e| under(e, k))?,
                        ))
                    })
                    .collect::<Result<_, CodecError>>()?,
            )
        }
        _ => return Err(fail("this Avro type is not supported as a target")),
    })
}

/// A row as an Avro record: each field from the row, else its default, else null if the field
/// takes it.
fn record_to_avro(
    row: &Row,
    record: &apache_avro::schema::RecordSchema,
    names: &Names,
) -> Result<Value, CodecError> {
    let mut fields = Vec::with_capacity(record.fields.len());
    for field in &record.fields {
        let value = match (row.get(&field.name), &field.default) {
            (Some(v), _) => convert(v, &field.schema, names),
            (None, Some(default)) => convert(default, &field.schema, names),
            (None, None) => {
                convert(&Json::Null, &field.schema, names).map_err(|_| CodecError::Encode {
                    path: String::new(),
                    reason: "required by the target schema, but missing".to_owned(),
                })
            }
        };
        fields.push((
            field.name.clone(),
            value.map_err(|e| under(e, &field.name))?,
        ));
    }
    Ok(Value::Record(fields))
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

fn index_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
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

/// `"123.4"` at scale 2 → 12340. More fractional digits than `scale` → None.
fn unscaled_decimal(text: &str, scale: usize) -> Option<BigInt> {
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
    if frac.len() > scale || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let joined = format!("{int}{frac:0<scale$}");
    let magnitude: BigInt = if joined.is_empty() {
        BigInt::from(0)
    } else {
        joined.parse().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn schema() -> OwnedSchema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/erp.customers-value.avsc"
        ))
        .expect("schema file");
        OwnedSchema::new(Schema::parse_str(&text).expect("parse")).expect("resolve")
    }

    fn encode(row: Json) -> Result<Value, CodecError> {
        let s = schema();
        json_to_avro(&row, s.root(), s.names(), "")
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
        let names = Names::new();
        let encode = |json: Json| json_to_avro(&json, &schema, &names, "u").expect("fits");
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
            json_to_avro(&json!("42"), &long_or_null, &names, "u").expect("converts"),
            Value::Union(1, Box::new(Value::Long(42)))
        );
    }

    proptest! {
        #[test]
        fn decimal_strings_round_trip(unscaled in any::<i64>(), scale in 0usize..10) {
            let text = crate::avro_json::format_decimal(&BigInt::from(unscaled), scale);
            prop_assert_eq!(unscaled_decimal(&text, scale), Some(BigInt::from(unscaled)));
        }
    }
}
