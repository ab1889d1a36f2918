//! The declarative mapping a user writes under a route's `mapping:` key.
//!
//! These types are plain data: they deserialize strictly (`deny_unknown_fields`) and carry no
//! behaviour. [`Mapping::compile`](crate::Mapping::compile) validates them and reports every
//! problem at once with its key path.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// How one route's rows are reshaped for the target.
///
/// ```yaml
/// mapping:
///   rename: { usr_nm: user_name }          # exact renames: source top-level name → target name
///   rename_rules:                          # regex renames: whole-name match, first match wins,
///     - { pattern: "usr_?name|username", to: user_name }   # tried on names no exact rename took
///     - { pattern: "Email|e.?mail", to: email_address, case_insensitive: true }
///     - { pattern: "crm_(.+)", to: "$1" }  # `$1` / `${name}` expand capture groups
///   drop: [password_hash]                  # source top-level names never passed through
///   keep: [user_name, email_address]       # optional: only these pass through (after renames);
///                                          # names declared under `fields` are always output
///   fields:                                # per target field, applied in this order
///     id:            { type: long, required: true }
///     city:          { from: address.city }          # nested source path; `\.` escapes a dot
///     credit_limit:  { type: { decimal: { scale: 2, rounding: half_even } } }
///     balance:       { type: { decimal: { scale: 2, input: base64 } } }  # Connect Decimal bytes
///     signup_at:
///       type: timestamp
///       input: { format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }
///       output: iso8601                  # or epoch_millis, epoch_micros, { format: "%F %T", timezone: UTC }
///     birthday:      { type: date, input: { unit: epoch_days }, output: iso8601 }
///     country:       { default: CN }                 # used when missing or null
///     source_system: { const: crm }
///     tax_id:        { type: string, pattern: "^[0-9A-Z]{18}$" }
///     active:        { type: bool }
/// ```
///
/// Order of work for one row: every source top-level field is dropped, renamed (exact rename,
/// else the first matching rule, else unchanged) and filtered by `keep`; then each `fields` entry
/// reads its value (`const`, else `from` in the *source* row, else the renamed pass-through value
/// of the same name), falls back to `default`, checks `required`, converts to `type` and checks
/// `pattern`. A `fields` entry overrides a pass-through field of the same name. A top-level
/// `from: x` moves `x`: the source field is not passed through again under its own name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MappingSpec {
    /// Exact renames, source top-level name → target name. They win over `rename_rules`.
    #[serde(
        skip_serializing_if = "IndexMap::is_empty",
        deserialize_with = "unique_keys"
    )]
    pub rename: IndexMap<String, String>,
    /// Regex renames for the names no exact rename took; the first rule whose pattern matches
    /// the *whole* name wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rename_rules: Vec<RenameRule>,
    /// Source top-level names that are not passed through. `fields` entries may still read them
    /// with `from` (drop `address`, keep `city: { from: address.city }`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// When set, only these target names pass through; `fields` entries are always output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<Vec<String>>,
    /// Per target field rules, applied in the order written.
    #[serde(
        skip_serializing_if = "IndexMap::is_empty",
        deserialize_with = "unique_keys"
    )]
    pub fields: IndexMap<String, FieldSpec>,
}

impl MappingSpec {
    /// The spec with `rules` (pattern → target name, case-sensitive, in order) ahead of its own
    /// `rename_rules`: how a config's global `mapping_rules` apply to each route.
    pub fn with_global_rules(mut self, rules: impl IntoIterator<Item = (String, String)>) -> Self {
        let global = rules.into_iter().map(|(pattern, to)| RenameRule {
            pattern,
            to,
            case_insensitive: false,
        });
        self.rename_rules = global.chain(self.rename_rules).collect();
        self
    }
}

/// A regex rename rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRule {
    /// A regular expression (Rust `regex` syntax) that must match the whole source name.
    pub pattern: String,
    /// The target name; `$1`, `$name` and `${name}` expand capture groups, `$$` is a dollar.
    pub to: String,
    /// Match letters regardless of case.
    #[serde(default, skip_serializing_if = "is_false")]
    pub case_insensitive: bool,
}

/// How one target field is produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FieldSpec {
    /// Source path, dot-separated through nested objects (`address.city`); `\.` is a literal dot
    /// and `\\` a backslash. Without it the field reads the (renamed) pass-through value of the
    /// same name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The target type; without it the value is kept as it is.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<TypeSpec>,
    /// The value to use when the source value is missing or null. Converted to `type` once, at
    /// compile time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// A constant output value; excludes `from` and `default`.
    #[serde(rename = "const", skip_serializing_if = "Option::is_none")]
    pub constant: Option<Value>,
    /// A missing or null value is an error (the record goes to the dead-letter topic). Excludes
    /// `default`.
    #[serde(skip_serializing_if = "is_false")]
    pub required: bool,
    /// A regex the converted value's text must match (unanchored: write `^…$` for the whole
    /// value). Null values are not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// How `timestamp` and `date` values are read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<TimeInputSpec>,
    /// How `timestamp` and `date` values are written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<TimeOutputSpec>,
}

/// A target type: a name (`string`, `int`, `long`, `double`, `bool`, `timestamp`, `date`) or
/// `{ decimal: { scale: N } }`.
///
/// The name is checked by [`Mapping::compile`](crate::Mapping::compile), so a typo is reported
/// with the other spec errors rather than as a parse failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TypeSpec {
    /// A type named by a word.
    Named(String),
    /// `{ decimal: { scale: N } }`.
    Decimal {
        /// The decimal's parameters.
        decimal: DecimalSpec,
    },
}

/// Parameters of a decimal target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecimalSpec {
    /// Digits after the point in the output string (at most 28).
    pub scale: u32,
    /// Optional maximum number of digits in total, as in SQL `DECIMAL(precision, scale)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    /// What to do with input that has more fractional digits than `scale`.
    #[serde(default)]
    pub rounding: Rounding,
    /// How string values are read: decimal text (the default) or base64 Connect `Decimal` bytes.
    #[serde(default, skip_serializing_if = "DecimalInput::is_text")]
    pub input: DecimalInput,
    /// With `input: base64`, the scale of the unscaled integer the bytes hold (the column's
    /// scale, at most 28). Default `scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_scale: Option<u32>,
}

/// How a decimal field's string values are read. JSON numbers are always read as numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalInput {
    /// Decimal numbers as text (`1234.50`, `-1.5e3`).
    #[default]
    Text,
    /// Kafka Connect `Decimal` bytes in base64: the unscaled value as a big-endian two's
    /// complement integer (`"XeMS"` is 6152978, `61529.78` at scale 2), as Debezium's JSON
    /// converter writes a `DECIMAL` column with `schemas.enable=false` and
    /// `decimal.handling.mode=precise`. The scale is not in the value: it is `input_scale`.
    Base64,
}

impl DecimalInput {
    /// The name used in YAML.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecimalInput::Text => "text",
            DecimalInput::Base64 => "base64",
        }
    }

    fn is_text(&self) -> bool {
        *self == DecimalInput::Text
    }
}

/// What a decimal conversion does with digits beyond the target scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Refuse the value (the record goes to the dead-letter topic) unless the dropped digits are
    /// all zero. The default: money is never changed silently.
    #[default]
    Reject,
    /// Round half to even (banker's rounding), as SQL engines commonly do.
    HalfEven,
    /// Round half away from zero.
    HalfUp,
}

/// How a `timestamp` or `date` value is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeInputSpec {
    /// One strftime pattern for string values (`%Y-%m-%d %H:%M:%S`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Several strftime patterns, tried in order. Excludes `format`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<String>,
    /// The zone of values without an offset: an IANA name (`Asia/Shanghai`), `UTC` or a fixed
    /// offset (`+08:00`). Default UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The unit of numeric values. Default `epoch_millis` for `timestamp` (Debezium
    /// `Timestamp`), `epoch_days` for `date` (Debezium `Date`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<TimeUnit>,
}

/// The unit of an integer time value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Days since 1970-01-01 (`io.debezium.time.Date`).
    EpochDays,
    /// Seconds since the epoch.
    EpochSeconds,
    /// Milliseconds since the epoch (`io.debezium.time.Timestamp`).
    EpochMillis,
    /// Microseconds since the epoch (`io.debezium.time.MicroTimestamp`).
    EpochMicros,
    /// Nanoseconds since the epoch (`io.debezium.time.NanoTimestamp`).
    EpochNanos,
}

impl TimeUnit {
    /// The name used in YAML.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeUnit::EpochDays => "epoch_days",
            TimeUnit::EpochSeconds => "epoch_seconds",
            TimeUnit::EpochMillis => "epoch_millis",
            TimeUnit::EpochMicros => "epoch_micros",
            TimeUnit::EpochNanos => "epoch_nanos",
        }
    }
}

/// How a `timestamp` or `date` value is written: a word (`iso8601`, `epoch_days`,
/// `epoch_seconds`, `epoch_millis`, `epoch_micros`, `epoch_nanos`) or
/// `{ format: <iso8601 | strftime pattern>, timezone: <zone> }`.
///
/// `iso8601` writes RFC 3339 in UTC with `Z` (`2025-04-05T02:30:00Z`, fractional seconds only
/// when present) for timestamps and `YYYY-MM-DD` for dates; with a `timezone` it writes that
/// zone's offset (`2025-04-05T10:30:00+08:00`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TimeOutputSpec {
    /// `output: iso8601`.
    Named(String),
    /// `output: { format: ..., timezone: ... }`.
    Format {
        /// `iso8601` or a strftime pattern.
        format: String,
        /// The zone to render in (IANA name, `UTC` or a fixed offset). Default UTC.
        #[serde(skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A map whose repeated keys are an error: YAML parsers keep the last one silently, which would
/// make a copy-pasted `fields` entry override the first without a word.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<IndexMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueKeys<V> {
        type Value = IndexMap<String, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = IndexMap::with_capacity(map.size_hint().unwrap_or(0).min(256));
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if out.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_map(UniqueKeys(std::marker::PhantomData))
}

// "A word, or a map with known keys", written out because `#[serde(untagged)]` errors would hide
// which key was wrong.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecimalParams {
    decimal: DecimalSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputParams {
    format: String,
    #[serde(default)]
    timezone: Option<String>,
}

struct TypeSpecVisitor;

impl<'de> Visitor<'de> for TypeSpecVisitor {
    type Value = TypeSpec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a type name or `{ decimal: { scale: N } }`")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<TypeSpec, E> {
        Ok(TypeSpec::Named(v.to_owned()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TypeSpec, A::Error> {
        let p = DecimalParams::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(TypeSpec::Decimal { decimal: p.decimal })
    }
}

impl<'de> Deserialize<'de> for TypeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TypeSpecVisitor)
    }
}

struct TimeOutputVisitor;

impl<'de> Visitor<'de> for TimeOutputVisitor {
    type Value = TimeOutputSpec;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an output name or `{ format: ..., timezone: ... }`")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<TimeOutputSpec, E> {
        Ok(TimeOutputSpec::Named(v.to_owned()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TimeOutputSpec, A::Error> {
        let p = OutputParams::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(TimeOutputSpec::Format {
            format: p.format,
            timezone: p.timezone,
        })
    }
}

impl<'de> Deserialize<'de> for TimeOutputSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TimeOutputVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_round_trips() {
        let yaml = r#"
rename: { usr_nm: user_name }
rename_rules:
  - { pattern: "usr_?name|username", to: user_name }
  - { pattern: "Email|e.?mail", to: email_address, case_insensitive: true }
drop: [password_hash]
fields:
  id:            { type: long, required: true }
  city:          { from: address.city }
  credit_limit:  { type: { decimal: { scale: 2, rounding: half_even } } }
  balance:       { type: { decimal: { scale: 2, input: base64, input_scale: 4 } } }
  signup_at:
    type: timestamp
    input: { format: "%Y-%m-%d %H:%M:%S", timezone: Asia/Shanghai }
    output: iso8601
  local_at: { type: timestamp, output: { format: "%F %T", timezone: UTC } }
  birthday:      { type: date, input: { unit: epoch_days } }
  country:       { default: CN }
  source_system: { const: crm }
"#;
        let spec: MappingSpec = serde_yaml::from_str(yaml).expect("parses");
        assert!(spec.rename_rules[1].case_insensitive);
        assert_eq!(
            spec.fields["credit_limit"].ty,
            Some(TypeSpec::Decimal {
                decimal: DecimalSpec {
                    scale: 2,
                    precision: None,
                    rounding: Rounding::HalfEven,
                    input: DecimalInput::Text,
                    input_scale: None,
                }
            })
        );
        assert_eq!(
            spec.fields["balance"].ty,
            Some(TypeSpec::Decimal {
                decimal: DecimalSpec {
                    scale: 2,
                    precision: None,
                    rounding: Rounding::Reject,
                    input: DecimalInput::Base64,
                    input_scale: Some(4),
                }
            })
        );
        assert_eq!(
            spec.fields["local_at"].output,
            Some(TimeOutputSpec::Format {
                format: "%F %T".into(),
                timezone: Some("UTC".into())
            })
        );
        let keys: Vec<_> = spec.fields.keys().cloned().collect();
        assert_eq!(keys[0], "id");
        assert_eq!(keys[8], "source_system");
        let again: MappingSpec =
            serde_yaml::from_str(&serde_yaml::to_string(&spec).expect("serializes"))
                .expect("re-parses");
        assert_eq!(again, spec);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err =
            serde_yaml::from_str::<MappingSpec>("fields: { a: { tpye: long } }").expect_err("typo");
        assert!(err.to_string().contains("tpye"), "{err}");
        let err = serde_yaml::from_str::<MappingSpec>(
            "fields: { a: { type: { decimal: { scale: 2, scael: 1 } } } }",
        )
        .expect_err("typo");
        assert!(err.to_string().contains("scael"), "{err}");
        let err = serde_yaml::from_str::<MappingSpec>("renames: {}").expect_err("typo");
        assert!(err.to_string().contains("renames"), "{err}");
    }

    #[test]
    fn an_unknown_decimal_input_lists_the_allowed_words() {
        let err = serde_yaml::from_str::<MappingSpec>(
            "fields: { a: { type: { decimal: { scale: 2, input: hex } } } }",
        )
        .expect_err("unknown input");
        let msg = err.to_string();
        assert!(msg.contains("hex"), "{msg}");
        assert!(msg.contains("`text`") && msg.contains("`base64`"), "{msg}");
        let err = serde_yaml::from_str::<MappingSpec>(
            "fields: { a: { type: { decimal: { scale: 2, input: base64, input_sacle: 4 } } } }",
        )
        .expect_err("typo");
        assert!(err.to_string().contains("input_sacle"), "{err}");
    }

    #[test]
    fn the_default_decimal_input_is_text_and_is_not_written_out() {
        let spec: MappingSpec =
            serde_yaml::from_str("fields: { a: { type: { decimal: { scale: 2 } } } }")
                .expect("parses");
        let Some(TypeSpec::Decimal { decimal }) = &spec.fields["a"].ty else {
            panic!("a decimal: {spec:?}");
        };
        assert_eq!(decimal.input, DecimalInput::Text);
        assert_eq!(decimal.input_scale, None);
        let yaml = serde_yaml::to_string(&spec).expect("serializes");
        assert!(!yaml.contains("input"), "{yaml}");
    }

    #[test]
    fn an_empty_mapping_is_the_default() {
        let spec: MappingSpec = serde_yaml::from_str("{}").expect("parses");
        assert_eq!(spec, MappingSpec::default());
    }
}
