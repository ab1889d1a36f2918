//! A blind, batch-only key-value backend: it stores bytes under bytes and knows nothing about
//! versions (the ordering rules live in [`guard`](crate::guard)).
//!
//! ```text
//!  async callers ──(bounded channel: Command + oneshot reply)──► "autoglm-rocksdb" OS thread
//!                                                                 owns the DB:
//!                                                                 ├─ cf "state":       key → entry
//!                                                                 └─ cf "checkpoints": topic‖0‖partition → next offset
//! ```
//!
//! Every call is a batch: one `multi_get` for a poll batch, one atomic `write` (a single
//! RocksDB `WriteBatch`) for the state changes *and* the changelog checkpoints of a committed
//! transaction. A full command queue makes callers wait (backpressure), it never buffers more.
//!
//! **Failure behaviour.** RocksDB errors surface as [`StateError::Rocks`](crate::StateError)
//! (busy / try-again are transient, the rest fatal). If the thread is gone every call returns
//! [`StateError::BackendGone`](crate::StateError) (fatal). A write either lands entirely or not
//! at all.

mod memory;
mod rocks;

use std::future::Future;

pub use memory::MemoryBackend;
pub(crate) use rocks::{CHECKPOINTS_CF, STATE_CF};
pub use rocks::{RocksBackend, RocksOptions};

use crate::{StateEntry, StateError};

/// One atomic write: state puts/deletes and changelog checkpoint updates, applied together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteRequest {
    /// State changes: `(key, Some(value))` puts, `(key, None)` deletes.
    pub puts: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Changelog checkpoints: `(changelog topic, partition, next offset to replay)`.
    pub checkpoints: Vec<(String, i32, i64)>,
}

impl WriteRequest {
    /// Whether the request changes nothing.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.checkpoints.is_empty()
    }
}

/// A page of a prefix scan: `(key, value)` pairs in key order.
pub type ScanPage = Vec<(Vec<u8>, Vec<u8>)>;

/// The batch-only API shared by [`RocksBackend`] and [`MemoryBackend`].
///
/// The futures never block the executor: the RocksDB implementation hands the work to its own
/// thread and awaits a reply.
pub trait KvBackend: Send + Sync {
    /// Values for `keys`, in the same order (`None` = absent).
    fn multi_get(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, StateError>> + Send;

    /// Applies `request` atomically.
    fn write(&self, request: WriteRequest) -> impl Future<Output = Result<(), StateError>> + Send;

    /// The checkpointed next offset of a changelog partition, if one was written.
    fn checkpoint(
        &self,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Option<i64>, StateError>> + Send;

    /// Deletes every state key that starts with `prefix` (a lost partition, a dropped route).
    /// Checkpoints are not touched.
    fn drop_prefix(&self, prefix: Vec<u8>) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Up to `limit` state entries whose key starts with `prefix`, in key order, beginning after
    /// `start_after` (exclusive) when given. Page through a prefix by passing the last key of
    /// the previous page. Meant for verification tools, not the hot path.
    fn scan_prefix(
        &self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> impl Future<Output = Result<ScanPage, StateError>> + Send;
}

/// Whether a stored state value is a tombstone older than the retention at `now_ms`, i.e. one
/// the backends may purge. The one place where a backend looks into values; a value that does
/// not decode is never purgeable.
fn is_expired_tombstone(value: &[u8], now_ms: i64, tombstone_retention_ms: i64) -> bool {
    StateEntry::decode(value)
        .is_ok_and(|entry| entry.is_expired_tombstone(now_ms, tombstone_retention_ms))
}

/// The key of a checkpoint in the checkpoints column family. Kafka topic names cannot contain
/// NUL, so `topic ‖ 0x00 ‖ partition(i32, big-endian)` is unambiguous.
fn checkpoint_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 5);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// The changelog topic and partition of a [`checkpoint_key`]; `None` for a key it did not make.
pub(crate) fn parse_checkpoint_key(key: &[u8]) -> Option<(String, i32)> {
    let split = key.len().checked_sub(5)?;
    let (topic, rest) = key.split_at(split);
    let (separator, partition) = rest.split_first()?;
    if *separator != 0 {
        return None;
    }
    let topic = std::str::from_utf8(topic).ok()?;
    Some((
        topic.to_owned(),
        i32::from_be_bytes(partition.try_into().ok()?),
    ))
}

pub(crate) fn decode_checkpoint(
    topic: &str,
    partition: i32,
    value: &[u8],
) -> Result<i64, StateError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| StateError::MalformedCheckpoint {
            topic: topic.to_owned(),
            partition,
        })?;
    Ok(i64::from_be_bytes(bytes))
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is none
/// (empty prefix or all `0xFF`).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xFF)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successor_bounds_the_prefix() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_successor(&[]), None);
    }

    #[test]
    fn checkpoint_keys_parse_back() {
        assert_eq!(
            parse_checkpoint_key(&checkpoint_key("g-accounts-changelog", 7)),
            Some(("g-accounts-changelog".to_owned(), 7))
        );
        assert_eq!(parse_checkpoint_key(b"t\x01\0\0\0\x01"), None);
        assert_eq!(parse_checkpoint_key(b"\0\0\0"), None);
    }

    #[test]
    fn checkpoint_value_must_be_eight_bytes() {
        assert_eq!(decode_checkpoint("t", 0, &7i64.to_be_bytes()).ok(), Some(7));
        assert!(decode_checkpoint("t", 0, &[1, 2, 3]).is_err());
    }
}
