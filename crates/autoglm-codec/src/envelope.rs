//! JSON trees to change events: the Debezium envelope, or an upsert row.

use autoglm_core::{ChangeEvent, Op, Row, SourcePosition};
use serde_json::Value as Json;

use crate::CodecError;
use crate::decoder::Envelope;

/// Reads a decoded value as a change event of the given `envelope` kind. `key` is the decoded
/// record key, if any.
pub fn parse_envelope(
    envelope: Envelope,
    key: Option<Row>,
    value: Json,
) -> Result<ChangeEvent, CodecError> {
    match envelope {
        Envelope::Debezium => debezium(key, value),
        Envelope::Upsert => match value {
            Json::Object(row) => Ok(ChangeEvent {
                op: Op::Update,
                before: None,
                after: Some(row),
                key,
                source: SourcePosition::default(),
                ts_ms: None,
            }),
            other => Err(shape("upsert row", format!("value is {}", kind(&other)))),
        },
    }
}

fn debezium(key: Option<Row>, value: Json) -> Result<ChangeEvent, CodecError> {
    const WHAT: &str = "Debezium envelope";
    let Json::Object(mut map) = value else {
        return Err(shape(WHAT, format!("value is {}", kind(&value))));
    };
    let op = match map.get("op") {
        Some(Json::String(code)) => Op::from_debezium(code)
            .ok_or_else(|| shape(WHAT, format!("`op` is {code:?}, not one of c/u/d/r/t")))?,
        Some(other) => return Err(shape(WHAT, format!("`op` is {}", kind(other)))),
        None => return Err(shape(WHAT, "`op` is missing".to_owned())),
    };
    let before = row_field(&mut map, "before")?;
    let after = row_field(&mut map, "after")?;
    match op {
        Op::Create | Op::Update | Op::Read if after.is_none() => {
            return Err(shape(WHAT, format!("op `{}` without `after`", op.as_str())));
        }
        _ => {}
    }
    let source = map
        .get("source")
        .map(|source| source_position(|name| source.get(name)))
        .unwrap_or_default();
    Ok(ChangeEvent {
        op,
        before,
        after,
        key,
        source,
        ts_ms: map.get("ts_ms").and_then(Json::as_i64),
    })
}

/// The Debezium envelope read by serde straight from a decoder: the rows as JSON maps, but no
/// tree for the envelope or its `source` block, and only the `source` fields a version needs.
/// Every other field is skipped unread. [`DebeziumEnvelope::into_event`] takes only a valid
/// envelope; anything else goes the tree path ([`parse_envelope`]), which says what is wrong.
///
/// `B` is how `before` is read: a row, or [`Unread`] for callers that need `before` only when
/// there is no `after` (a delete), which then read the datum again.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct DebeziumEnvelope<B = Option<Row>> {
    before: B,
    after: Option<Row>,
    source: Option<SourceFields>,
    op: Option<String>,
    ts_ms: Option<i64>,
}

/// The `source` fields [`SourcePosition`] reads.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct SourceFields {
    lsn: Option<Json>,
    sequence: Option<Json>,
    file: Option<Json>,
    pos: Option<Json>,
    row: Option<Json>,
    ts_ms: Option<Json>,
    snapshot: Option<Json>,
}

impl SourceFields {
    fn get(&self, name: &str) -> Option<&Json> {
        match name {
            "lsn" => self.lsn.as_ref(),
            "sequence" => self.sequence.as_ref(),
            "file" => self.file.as_ref(),
            "pos" => self.pos.as_ref(),
            "row" => self.row.as_ref(),
            "ts_ms" => self.ts_ms.as_ref(),
            "snapshot" => self.snapshot.as_ref(),
            _ => None,
        }
    }
}

/// A field skipped by the decoder, not read into anything.
#[derive(Debug, Default)]
pub struct Unread;

impl<'de> serde::Deserialize<'de> for Unread {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Unread, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Unread)
    }
}

/// What a [`DebeziumEnvelope`]'s `before` becomes in its event.
pub trait BeforeRow: Default {
    /// The row, if it was read.
    fn into_row(self) -> Option<Row>;
}

impl BeforeRow for Option<Row> {
    fn into_row(self) -> Option<Row> {
        self
    }
}

impl BeforeRow for Unread {
    fn into_row(self) -> Option<Row> {
        None
    }
}

impl<B> DebeziumEnvelope<B> {
    /// The envelope with its `after` row replaced by `convert`'s; `None` if that fails.
    pub(crate) fn convert_after(
        mut self,
        convert: impl FnOnce(Row) -> Option<Row>,
    ) -> Option<Self> {
        convert_row(&mut self.after, convert)?;
        Some(self)
    }
}

impl DebeziumEnvelope {
    /// The envelope with its `before` row replaced by `convert`'s; `None` if that fails.
    pub(crate) fn convert_before(
        mut self,
        convert: impl FnOnce(Row) -> Option<Row>,
    ) -> Option<Self> {
        convert_row(&mut self.before, convert)?;
        Some(self)
    }
}

/// Replaces the row in `slot`, if any, with `convert`'s; `None` if that fails.
fn convert_row(slot: &mut Option<Row>, convert: impl FnOnce(Row) -> Option<Row>) -> Option<()> {
    if let Some(row) = slot.take() {
        *slot = Some(convert(row)?);
    }
    Some(())
}

impl<B: BeforeRow> DebeziumEnvelope<B> {
    /// Whether the envelope has an `after` row.
    pub fn has_after(&self) -> bool {
        self.after.is_some()
    }

    /// The change event, taking `key`; `None` (and `key` left alone) if the envelope is not
    /// valid: an unknown or missing `op`, or a create, update or read without `after`.
    pub fn into_event(self, key: &mut Option<Row>) -> Option<ChangeEvent> {
        let op = Op::from_debezium(self.op.as_deref()?)?;
        if matches!(op, Op::Create | Op::Update | Op::Read) && self.after.is_none() {
            return None;
        }
        let source = self
            .source
            .map(|source| source_position(|name| source.get(name)))
            .unwrap_or_default();
        Some(ChangeEvent {
            op,
            before: self.before.into_row(),
            after: self.after,
            key: key.take(),
            source,
            ts_ms: self.ts_ms,
        })
    }
}

fn row_field(map: &mut Row, name: &str) -> Result<Option<Row>, CodecError> {
    match map.remove(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(row)) => Ok(Some(row)),
        Some(other) => Err(shape(
            "Debezium envelope",
            format!("`{name}` is {}", kind(&other)),
        )),
    }
}

/// Reads the `source` block through `field`, which looks one of its fields up.
fn source_position<'a>(field: impl Fn(&str) -> Option<&'a Json>) -> SourcePosition {
    let u64_of = |name| field(name).and_then(as_u64_lenient);
    SourcePosition {
        lsn: u64_of("lsn"),
        sequence: field("sequence").and_then(parse_sequence),
        binlog_file: field("file").and_then(Json::as_str).map(str::to_owned),
        binlog_pos: u64_of("pos"),
        binlog_row: u64_of("row"),
        ts_ms: field("ts_ms").and_then(Json::as_i64),
        snapshot: match field("snapshot") {
            Some(Json::Bool(b)) => *b,
            // "true", "first", "last", "first_in_data_collection", "incremental", …
            Some(Json::String(s)) => s != "false",
            _ => false,
        },
    }
}

/// PostgreSQL's `source.sequence`: a JSON array, encoded as a string, of
/// `["<last commit lsn>", "<lsn>"]`; either may be null.
fn parse_sequence(value: &Json) -> Option<(u64, u64)> {
    let parsed: Json = serde_json::from_str(value.as_str()?).ok()?;
    let items = parsed.as_array()?;
    let at = |i: usize| items.get(i).and_then(as_u64_lenient).unwrap_or(0);
    Some((at(0), at(1)))
}

fn as_u64_lenient(value: &Json) -> Option<u64> {
    match value {
        Json::Number(n) => n.as_u64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn shape(expected: &'static str, reason: String) -> CodecError {
    CodecError::Shape { expected, reason }
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn postgres_update_carries_lsn_and_sequence() {
        let event = parse_envelope(
            Envelope::Debezium,
            None,
            json!({
                "before": {"id": 1, "name": "a"},
                "after": {"id": 1, "name": "b"},
                "source": {"lsn": 24023128, "sequence": "[\"24023000\",\"24023128\"]",
                           "snapshot": "false", "ts_ms": 1700000000000i64},
                "op": "u", "ts_ms": 1700000000123i64
            }),
        )
        .expect("valid envelope");
        assert_eq!(event.op, Op::Update);
        assert_eq!(event.source.lsn, Some(24_023_128));
        assert_eq!(event.source.sequence, Some((24_023_000, 24_023_128)));
        assert!(!event.is_snapshot());
        assert_eq!(event.row().and_then(|r| r.get("name")), Some(&json!("b")));
    }

    #[test]
    fn mysql_snapshot_read_carries_binlog_position() {
        let event = parse_envelope(
            Envelope::Debezium,
            None,
            json!({"after": {"id": 1}, "op": "r",
                   "source": {"file": "mysql-bin.000003", "pos": 154, "row": 2, "snapshot": "last"}}),
        )
        .expect("valid envelope");
        assert!(event.is_snapshot());
        assert_eq!(
            event.source.binlog_file.as_deref(),
            Some("mysql-bin.000003")
        );
        assert_eq!(
            (event.source.binlog_pos, event.source.binlog_row),
            (Some(154), Some(2))
        );
    }

    #[test]
    fn delete_keeps_before_row() {
        let event = parse_envelope(
            Envelope::Debezium,
            None,
            json!({"before": {"id": 9}, "after": null, "op": "d"}),
        )
        .expect("valid envelope");
        assert!(event.op.is_delete());
        assert_eq!(event.row().and_then(|r| r.get("id")), Some(&json!(9)));
    }

    #[test]
    fn malformed_envelopes_are_poison_with_a_reason() {
        for (value, needle) in [
            (json!([1, 2]), "value is an array"),
            (json!({"after": {"id": 1}}), "`op` is missing"),
            (json!({"op": "x", "after": {}}), "not one of"),
            (json!({"op": "c", "after": null}), "without `after`"),
            (json!({"op": "u", "after": 5}), "`after` is a number"),
        ] {
            let err = parse_envelope(Envelope::Debezium, None, value).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
