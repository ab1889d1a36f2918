//! Avro values to JSON trees, guided by the writer schema (decimals need its scale).

use apache_avro::Schema;
use apache_avro::schema::Names;
use apache_avro::types::Value;
use num_bigint::BigInt;
use serde_json::{Map, Number, Value as Json};

/// Converts `value`, written with `schema`, into JSON. Named references are looked up in `names`.
/// Unions collapse to their branch; decimals become strings with their scale; dates, times and
/// timestamps stay integers in their own unit; bytes become base64.
pub(crate) fn to_json(value: Value, schema: &Schema, names: &Names) -> Json {
    let schema = resolve(schema, names);
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => Json::from(i),
        Value::Float(f) => Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        Value::Double(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(base64_encode(&b)),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::BigDecimal(d) => Json::String(d.to_string()),
        Value::Decimal(d) => {
            let scale = match schema {
                Schema::Decimal(s) => s.scale,
                _ => 0,
            };
            Json::String(format_decimal(&BigInt::from(d), scale))
        }
        Value::Duration(d) => Json::String(format!("{d:?}")),
        Value::Union(index, inner) => {
            let branch = match schema {
                Schema::Union(u) => usize::try_from(index)
                    .ok()
                    .and_then(|i| u.variants().get(i)),
                _ => None,
            };
            match branch {
                Some(branch) => to_json(*inner, branch, names),
                None => to_json(*inner, &Schema::Null, names),
            }
        }
        Value::Array(items) => {
            let item_schema = match schema {
                Schema::Array(a) => a.items.as_ref(),
                _ => &Schema::Null,
            };
            Json::Array(
                items
                    .into_iter()
                    .map(|v| to_json(v, item_schema, names))
                    .collect(),
            )
        }
        Value::Map(entries) => {
            let value_schema = match schema {
                Schema::Map(m) => m.types.as_ref(),
                _ => &Schema::Null,
            };
            Json::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, to_json(v, value_schema, names)))
                    .collect(),
            )
        }
        Value::Record(fields) => {
            let record = match schema {
                Schema::Record(r) => Some(r),
                _ => None,
            };
            let mut out = Map::with_capacity(fields.len());
            for (i, (name, v)) in fields.into_iter().enumerate() {
                let field_schema = record
                    .and_then(|r| r.fields.get(i))
                    .map_or(&Schema::Null, |f| &f.schema);
                out.insert(name, to_json(v, field_schema, names));
            }
            Json::Object(out)
        }
    }
}

fn resolve<'a>(schema: &'a Schema, names: &'a Names) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).unwrap_or(schema),
        other => other,
    }
}

/// The largest scale a decimal is written out in full for (PostgreSQL's `numeric` stops at
/// 1000). A scale comes from the record's schema, which a hostile producer writes: written out,
/// a scale of 1,700,000,002 panicked (found by `make fuzz TARGET=debezium_json`).
pub(crate) const MAX_PLAIN_SCALE: usize = 1000;

/// `unscaled × 10^-scale` as a plain decimal string: `12345`, scale 2 → `123.45`. Past
/// [`MAX_PLAIN_SCALE`], in scientific notation (`12345E-5000`), which loses nothing either.
pub(crate) fn format_decimal(unscaled: &BigInt, scale: usize) -> String {
    let digits = unscaled.magnitude().to_string();
    let sign = if unscaled.sign() == num_bigint::Sign::Minus {
        "-"
    } else {
        ""
    };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    if scale > MAX_PLAIN_SCALE {
        return format!("{sign}{digits}E-{scale}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// A writer schema (from the registry), parsed once for both of its decoders.
///
/// Records decode with `serde_avro_fast`, straight from the bytes into JSON, with no
/// intermediate `apache_avro::types::Value`; `make bench`'s `codec` benchmark measures the gain.
/// What that path does not take — bytes and fixed values (JSON has no bytes), decimals wider
/// than 96 bits or with a scale above 28 — falls back to apache-avro and [`to_json`], which is
/// also the reference the tests hold the fast path to.
pub struct WriterSchema {
    fast: Option<serde_avro_fast::Schema>,
    resolved: OwnedSchema,
}

impl std::fmt::Debug for WriterSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterSchema")
            .field("fast", &self.fast.is_some())
            .finish_non_exhaustive()
    }
}

impl WriterSchema {
    /// Parses the schema's JSON text.
    pub fn parse(raw: &str) -> Result<WriterSchema, apache_avro::Error> {
        let resolved = OwnedSchema::new(Schema::parse_str(raw)?)?;
        // apache-avro is the authority on what is valid; the fast path is an optimisation.
        let fast = raw.parse::<serde_avro_fast::Schema>().ok();
        Ok(WriterSchema { fast, resolved })
    }

    /// Decodes one datum (the bytes after the wire header) into JSON.
    pub fn decode(&self, datum: &[u8]) -> Result<Json, apache_avro::Error> {
        match self.decode_fast(datum) {
            Some(json) => Ok(json),
            None => self.decode_with_apache_avro(datum),
        }
    }

    /// The fast path alone: `None` where it does not apply.
    pub fn decode_fast(&self, datum: &[u8]) -> Option<Json> {
        self.decode_fast_as(datum)
    }

    /// The fast path into any serde type: `None` where it does not apply or the datum does not
    /// fit `T`.
    pub fn decode_fast_as<T: serde::de::DeserializeOwned>(&self, datum: &[u8]) -> Option<T> {
        serde_avro_fast::from_datum_slice::<T>(datum, self.fast.as_ref()?).ok()
    }

    /// The reference path: apache-avro's `Value`, then [`to_json`].
    pub fn decode_with_apache_avro(&self, datum: &[u8]) -> Result<Json, apache_avro::Error> {
        let root = self.resolved.root();
        let value = apache_avro::reader::datum::GenericDatumReader::builder(root)
            .build()?
            .read_value(&mut &datum[..])?;
        Ok(to_json(value, root, self.resolved.names()))
    }
}

/// A parsed schema with its named types, owned (apache-avro keeps its owned variant private).
#[derive(Debug)]
pub(crate) struct OwnedSchema {
    root: Schema,
    names: Names,
}

impl OwnedSchema {
    pub(crate) fn new(root: Schema) -> Result<OwnedSchema, apache_avro::Error> {
        let names = apache_avro::schema::ResolvedSchema::try_from(&root)?
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect();
        Ok(OwnedSchema { root, names })
    }

    pub(crate) fn root(&self) -> &Schema {
        &self.root
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(format_decimal(&BigInt::from(12345), 2), "123.45");
        assert_eq!(format_decimal(&BigInt::from(-5), 3), "-0.005");
        assert_eq!(format_decimal(&BigInt::from(7), 0), "7");
        assert_eq!(
            format_decimal(&BigInt::from(-12), 1_700_000_002),
            "-12E-1700000002"
        );
        assert_eq!(format_decimal(&BigInt::from(1), 1000).len(), 1002);
    }

    #[test]
    fn debezium_shaped_record_becomes_plain_json() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"Envelope","fields":[
                {"name":"before","type":["null",{"type":"record","name":"Value","fields":[
                    {"name":"id","type":"long"},
                    {"name":"credit","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}}]}],"default":null},
                {"name":"after","type":["null","Value"],"default":null},
                {"name":"op","type":"string"}]}"#,
        )
        .expect("schema");
        let value = Value::Record(vec![
            ("before".into(), Value::Union(0, Box::new(Value::Null))),
            (
                "after".into(),
                Value::Union(
                    1,
                    Box::new(Value::Record(vec![
                        ("id".into(), Value::Long(1)),
                        ("credit".into(), Value::Decimal(vec![0x30, 0x39].into())),
                    ])),
                ),
            ),
            ("op".into(), Value::String("c".into())),
        ]);
        let resolved = OwnedSchema::new(schema).expect("resolve");
        let json = to_json(value, resolved.root(), resolved.names());
        assert_eq!(
            json,
            serde_json::json!({"before": null, "after": {"id": 1, "credit": "123.45"}, "op": "c"})
        );
    }
}
