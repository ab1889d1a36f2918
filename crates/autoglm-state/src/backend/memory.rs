//! [`KvBackend`] over a `BTreeMap`, for tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    KvBackend, ScanPage, WriteRequest, checkpoint_key, decode_checkpoint, is_expired_tombstone,
};
use crate::StateError;

/// An in-memory backend with the same semantics as [`RocksBackend`](super::RocksBackend).
/// Clones share the same data.
///
/// [`MemoryBackend::fail_writes`] makes every `write` fail with a transient
/// [`StateError::Injected`], to test the commit path.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    maps: Mutex<Maps>,
    fail_writes: AtomicBool,
}

#[derive(Debug, Default)]
struct Maps {
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoints: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// While `fail` is true, every `write` fails with [`StateError::Injected`] and changes nothing.
    pub fn fail_writes(&self, fail: bool) {
        self.inner.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Number of state keys.
    pub fn len(&self) -> usize {
        self.maps().state.len()
    }

    /// Whether no state key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every state entry that is a tombstone older than `tombstone_retention_ms` at
    /// `now_ms`, and returns how many it removed: what a RocksDB compaction does with
    /// [`RocksOptions::tombstone_retention_ms`](super::RocksOptions::tombstone_retention_ms),
    /// but with the clock given. Live entries and values that do not decode are kept.
    pub fn purge_expired_tombstones(&self, now_ms: i64, tombstone_retention_ms: i64) -> usize {
        let mut maps = self.maps();
        let before = maps.state.len();
        maps.state
            .retain(|_, value| !is_expired_tombstone(value, now_ms, tombstone_retention_ms));
        before - maps.state.len()
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        // Nothing that holds the lock can panic half-way through a mutation (no fallible step
        // runs while it is held), so the data behind a poisoned lock is still consistent.
        self.inner
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn multi_get_now(&self, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
        let maps = self.maps();
        keys.iter().map(|k| maps.state.get(k).cloned()).collect()
    }

    fn write_now(&self, request: WriteRequest) -> Result<(), StateError> {
        if self.inner.fail_writes.load(Ordering::SeqCst) {
            return Err(StateError::Injected);
        }
        let mut maps = self.maps();
        for (key, value) in request.puts {
            match value {
                Some(value) => {
                    maps.state.insert(key, value);
                }
                None => {
                    maps.state.remove(&key);
                }
            }
        }
        for (topic, partition, offset) in request.checkpoints {
            maps.checkpoints.insert(
                checkpoint_key(&topic, partition),
                offset.to_be_bytes().to_vec(),
            );
        }
        Ok(())
    }

    fn checkpoint_now(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        let maps = self.maps();
        maps.checkpoints
            .get(&checkpoint_key(topic, partition))
            .map(|v| decode_checkpoint(topic, partition, v))
            .transpose()
    }

    fn drop_prefix_now(&self, prefix: &[u8]) {
        self.maps().state.retain(|k, _| !k.starts_with(prefix));
    }

    fn scan_now(&self, prefix: &[u8], start_after: Option<&[u8]>, limit: usize) -> ScanPage {
        use std::ops::Bound;
        let maps = self.maps();
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        maps.state
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl KvBackend for MemoryBackend {
    async fn multi_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        Ok(self.multi_get_now(&keys))
    }

    async fn write(&self, request: WriteRequest) -> Result<(), StateError> {
        self.write_now(request)
    }

    async fn checkpoint(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        self.checkpoint_now(topic, partition)
    }

    async fn drop_prefix(&self, prefix: Vec<u8>) -> Result<(), StateError> {
        self.drop_prefix_now(&prefix);
        Ok(())
    }

    async fn scan_prefix(
        &self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ScanPage, StateError> {
        Ok(self.scan_now(&prefix, start_after.as_deref(), limit))
    }
}
