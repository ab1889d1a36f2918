//! A decoded change event: what happened to which entity, and where in the source log.

use serde_json::{Map, Value};

/// A row: column name → value. Decoders turn Debezium logical types into plain JSON values
/// (decimals as strings, dates and timestamps as integers in their Debezium unit) before mapping.
pub type Row = Map<String, Value>;

/// The Debezium operation (`op`), or the kind of an upsert record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `c`: a row was inserted.
    Create,
    /// `u`: a row was updated.
    Update,
    /// `d`, or an upsert record with a null value: a row was deleted.
    Delete,
    /// `r`: a row was read by a snapshot.
    Read,
    /// `t`: a table was truncated.
    Truncate,
}

impl Op {
    /// Parses Debezium's one-letter `op` field.
    pub fn from_debezium(op: &str) -> Option<Op> {
        Some(match op {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            _ => return None,
        })
    }

    /// Debezium's one-letter code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }

    /// Whether the event removes the row.
    pub const fn is_delete(self) -> bool {
        matches!(self, Op::Delete)
    }
}

/// Where the change sits in the source database's log, as far as the event says
/// (Debezium's `source` block). Every field is optional: upsert topics carry none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePosition {
    /// PostgreSQL `source.lsn`.
    pub lsn: Option<u64>,
    /// PostgreSQL `source.sequence`, `["<last commit lsn>", "<lsn>"]`, parsed.
    pub sequence: Option<(u64, u64)>,
    /// MySQL binlog `source.file`, e.g. `mysql-bin.000003`.
    pub binlog_file: Option<String>,
    /// MySQL binlog `source.pos`.
    pub binlog_pos: Option<u64>,
    /// MySQL `source.row`: the row's index within the binlog event.
    pub binlog_row: Option<u64>,
    /// `source.ts_ms`: when the change happened in the database.
    pub ts_ms: Option<i64>,
    /// `source.snapshot` is `true`, `first`, `last`, `first_in_data_collection`, …: the event comes
    /// from a snapshot rather than the streamed log.
    pub snapshot: bool,
}

/// One decoded input record.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// What happened.
    pub op: Op,
    /// The row before the change (updates and deletes, when the source provides it).
    pub before: Option<Row>,
    /// The row after the change (creates, updates, snapshot reads; upsert rows).
    pub after: Option<Row>,
    /// The record key's fields (Debezium key struct, or the upsert key).
    pub key: Option<Row>,
    /// Position in the source log.
    pub source: SourcePosition,
    /// Envelope `ts_ms`: when the connector processed the change.
    pub ts_ms: Option<i64>,
}

impl ChangeEvent {
    /// The row that carries the entity's current values: `after`, or `before` for deletes.
    pub fn row(&self) -> Option<&Row> {
        self.after.as_ref().or(self.before.as_ref())
    }

    /// Whether the event is a snapshot read.
    pub fn is_snapshot(&self) -> bool {
        self.op == Op::Read || self.source.snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debezium_op_codes_round_trip() {
        for code in ["c", "u", "d", "r", "t"] {
            let op = Op::from_debezium(code).expect("known code");
            assert_eq!(op.as_str(), code);
        }
        assert_eq!(Op::from_debezium("x"), None);
    }
}
