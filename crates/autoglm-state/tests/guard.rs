//! The version guard's transaction behaviour over the in-memory backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use autoglm_core::{Classify, ErrorClass, Version};
use autoglm_state::{
    Change, Decision, GuardInput, KvBackend, MemoryBackend, ScanPage, StateEntry, StateError,
    VersionGuard, WriteRequest, state_key,
};

/// A [`MemoryBackend`] that counts `multi_get` calls and the keys asked for.
#[derive(Debug, Clone, Default)]
struct Counting {
    inner: MemoryBackend,
    calls: Arc<AtomicUsize>,
    keys: Arc<AtomicUsize>,
}

impl KvBackend for Counting {
    async fn multi_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.keys.fetch_add(keys.len(), Ordering::SeqCst);
        self.inner.multi_get(keys).await
    }
    async fn write(&self, request: WriteRequest) -> Result<(), StateError> {
        self.inner.write(request).await
    }
    async fn checkpoint(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        self.inner.checkpoint(topic, partition).await
    }
    async fn drop_prefix(&self, prefix: Vec<u8>) -> Result<(), StateError> {
        self.inner.drop_prefix(prefix).await
    }
    async fn scan_prefix(
        &self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ScanPage, StateError> {
        self.inner.scan_prefix(prefix, start_after, limit).await
    }
}

fn v(n: u64) -> Version {
    Version([n, 0, 0])
}

fn rec(key: &[u8], version: u64) -> GuardInput<'_> {
    GuardInput {
        key,
        change: Change::Upsert(v(version)),
        is_snapshot: false,
    }
}

fn del(key: &[u8], version: u64) -> GuardInput<'_> {
    GuardInput {
        change: Change::Delete(v(version)),
        ..rec(key, version)
    }
}

fn udel(key: &[u8]) -> GuardInput<'_> {
    GuardInput {
        key,
        change: Change::UnversionedDelete,
        is_snapshot: false,
    }
}

async fn stored(backend: &impl KvBackend, key: &[u8]) -> Option<StateEntry> {
    let mut values = backend.multi_get(vec![key.to_vec()]).await.expect("read");
    values
        .pop()
        .flatten()
        .map(|v| StateEntry::decode(&v).expect("decode"))
}

#[tokio::test]
async fn later_records_in_a_batch_see_earlier_accepted_ones() {
    let mut guard = VersionGuard::new(MemoryBackend::new(), i64::MAX);
    let k = state_key("crm", b"1");
    let out = guard
        .process(&[rec(&k, 2), rec(&k, 2), rec(&k, 1), rec(&k, 3)], 0)
        .await
        .expect("process");
    use Decision::*;
    assert_eq!(out.decisions, [Accept, Duplicate, Stale, Accept]);
    assert_eq!(out.counts.get(Accept), 2);
    assert_eq!(out.counts.total(), 4);
    assert_eq!(
        guard.pending(&k).map(|e| e.version),
        Some(Version([3, 0, 0]))
    );
}

#[tokio::test]
async fn one_multi_get_per_batch_and_none_for_overlay_keys() {
    let backend = Counting::default();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX);
    let (a, b) = (state_key("r", b"a"), state_key("r", b"b"));
    guard
        .process(&[rec(&a, 1), rec(&b, 1), rec(&a, 2), rec(&b, 0)], 0)
        .await
        .expect("process");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
    assert_eq!(backend.keys.load(Ordering::SeqCst), 2, "distinct keys only");

    // Both keys are in the overlay now: the next batch needs no read at all.
    guard
        .process(&[rec(&a, 3), rec(&b, 3)], 0)
        .await
        .expect("process");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn state_follows_commits() {
    let backend = MemoryBackend::new();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX);
    let k = state_key("r", b"k");
    guard.process(&[rec(&k, 5)], 7).await.expect("process");
    // Across batches of the same transaction the overlay decides...
    let out = guard.process(&[rec(&k, 4)], 7).await.expect("process");
    assert_eq!(out.decisions, [Decision::Stale]);
    // ...but nothing reached the backend yet.
    assert!(backend.is_empty());
    assert_eq!(
        guard.pending_writes(),
        vec![(
            k.as_slice(),
            StateEntry {
                version: Version([5, 0, 0]),
                deleted: false,
                snapshot: false,
                updated_at_ms: 7
            }
            .encode()
        )]
    );

    let written = guard
        .commit(vec![("changelog".into(), 2, 100)])
        .await
        .expect("commit");
    assert_eq!(written, 1);
    assert_eq!(guard.pending_len(), 0);
    assert_eq!(
        stored(&backend, &k).await.map(|e| e.version),
        Some(Version([5, 0, 0]))
    );
    assert_eq!(
        backend.checkpoint("changelog", 2).await.expect("ckpt"),
        Some(100)
    );
}

#[tokio::test]
async fn aborted_transaction_leaves_no_trace() {
    let backend = MemoryBackend::new();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX);
    let k = state_key("r", b"k");
    guard.process(&[rec(&k, 1)], 0).await.expect("process");
    guard.commit(Vec::new()).await.expect("commit");

    guard.process(&[del(&k, 9)], 0).await.expect("process");
    guard.abort();
    assert_eq!(guard.pending_len(), 0);
    assert_eq!(stored(&backend, &k).await.map(|e| e.deleted), Some(false));
    // The retried transaction decides exactly as the first attempt did.
    let out = guard.process(&[del(&k, 9)], 0).await.expect("process");
    assert_eq!(out.decisions, [Decision::Accept]);
}

#[tokio::test]
async fn delete_keeps_a_versioned_tombstone_across_commits() {
    let backend = MemoryBackend::new();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX);
    let k = state_key("r", b"k");
    guard
        .process(&[rec(&k, 1), del(&k, 2)], 0)
        .await
        .expect("process");
    guard.commit(Vec::new()).await.expect("commit");
    assert_eq!(stored(&backend, &k).await.map(|e| e.deleted), Some(true));
    let out = guard.process(&[rec(&k, 1)], 0).await.expect("process");
    assert_eq!(out.decisions, [Decision::Stale]);
}

#[tokio::test]
async fn failed_commit_keeps_the_overlay_for_a_retry() {
    let backend = MemoryBackend::new();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX);
    let k = state_key("r", b"k");
    guard.process(&[rec(&k, 1)], 0).await.expect("process");
    backend.fail_writes(true);
    let error = guard.commit(Vec::new()).await.expect_err("injected");
    assert_eq!(error.class(), ErrorClass::Transient);
    assert_eq!(guard.pending_len(), 1);
    backend.fail_writes(false);
    assert_eq!(guard.commit(Vec::new()).await.expect("retry"), 1);
    assert!(stored(&backend, &k).await.is_some());
}

#[tokio::test]
async fn corrupt_stored_entry_is_a_fatal_error_and_changes_nothing() {
    let backend = MemoryBackend::new();
    let (good, bad) = (state_key("r", b"good"), state_key("r", b"bad"));
    backend
        .write(WriteRequest {
            puts: vec![(bad.clone(), Some(vec![1, 2, 3]))],
            checkpoints: Vec::new(),
        })
        .await
        .expect("write");
    let mut guard = VersionGuard::new(backend, i64::MAX);
    let error = guard
        .process(&[rec(&good, 1), rec(&bad, 1)], 0)
        .await
        .expect_err("corrupt");
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert_eq!(guard.pending_len(), 0, "no decision was applied");
}

#[tokio::test]
async fn unversioned_delete_keeps_the_stored_version_across_commits() {
    use Decision::*;
    let backend = MemoryBackend::new();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX);
    let k = state_key("r", b"k");
    guard.process(&[rec(&k, 5)], 0).await.expect("process");
    guard.commit(Vec::new()).await.expect("commit");

    let out = guard.process(&[udel(&k)], 1).await.expect("process");
    assert_eq!(out.decisions, [Accept]);
    assert_eq!(
        out.versions,
        [Some(v(5))],
        "the version an accepted delete got"
    );
    guard.commit(Vec::new()).await.expect("commit");
    assert_eq!(
        stored(&backend, &k).await,
        Some(StateEntry {
            version: v(5),
            deleted: true,
            snapshot: false,
            updated_at_ms: 1
        })
    );

    // Older and equal updates are still blocked by the tombstone; a newer one recreates the row.
    let out = guard
        .process(&[rec(&k, 4), rec(&k, 5), udel(&k), rec(&k, 6)], 2)
        .await
        .expect("process");
    assert_eq!(out.decisions, [Stale, Duplicate, Duplicate, Accept]);
    assert_eq!(
        out.versions,
        [Some(v(4)), Some(v(5)), Some(v(5)), Some(v(6))]
    );
}

#[tokio::test]
async fn later_records_in_a_batch_see_an_unversioned_delete() {
    let mut guard = VersionGuard::new(MemoryBackend::new(), i64::MAX);
    let k = state_key("r", b"k");
    use Decision::*;
    let out = guard
        .process(
            &[
                rec(&k, 5),
                udel(&k),
                udel(&k),
                rec(&k, 5),
                rec(&k, 7),
                udel(&k),
            ],
            0,
        )
        .await
        .expect("process");
    assert_eq!(
        out.decisions,
        [Accept, Accept, Duplicate, Duplicate, Accept, Accept]
    );
    assert_eq!(
        out.versions,
        [
            Some(v(5)),
            Some(v(5)),
            Some(v(5)),
            Some(v(5)),
            Some(v(7)),
            Some(v(7))
        ]
    );
    assert_eq!(
        guard.pending(&k).map(|e| (e.version, e.deleted)),
        Some((v(7), true))
    );
}

#[tokio::test]
async fn unversioned_delete_of_an_unknown_key_changes_nothing() {
    let backend = MemoryBackend::new();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX);
    let k = state_key("r", b"never-seen");
    let out = guard.process(&[udel(&k)], 0).await.expect("process");
    assert_eq!(out.decisions, [Decision::Duplicate]);
    assert_eq!(out.versions, [None]);
    assert_eq!(guard.pending_len(), 0);
    assert_eq!(guard.commit(Vec::new()).await.expect("commit"), 0);
    assert!(backend.is_empty());
}

#[tokio::test]
async fn committed_keys_are_decided_from_the_cache_without_a_read() {
    let backend = Counting::default();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX).with_cache(16);
    let (a, b, c) = (
        state_key("r", b"a"),
        state_key("r", b"b"),
        state_key("r", b"c"),
    );
    guard
        .process(&[rec(&a, 1), rec(&b, 1)], 0)
        .await
        .expect("process");
    guard.commit(Vec::new()).await.expect("commit");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);

    // The next transaction: both keys come from the cache, and are decided against it.
    let out = guard
        .process(&[rec(&a, 1), rec(&b, 2)], 0)
        .await
        .expect("process");
    assert_eq!(out.decisions, [Decision::Duplicate, Decision::Accept]);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1, "no read");

    // A key not seen before is read, alone.
    guard
        .process(&[rec(&a, 3), rec(&c, 1)], 0)
        .await
        .expect("process");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
    assert_eq!(backend.keys.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_aborted_transaction_leaves_the_cache_as_committed() {
    let backend = Counting::default();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX).with_cache(16);
    let (k, new) = (state_key("r", b"k"), state_key("r", b"new"));
    guard.process(&[rec(&k, 5)], 0).await.expect("process");
    guard.commit(Vec::new()).await.expect("commit");

    // Accepted, then aborted: neither version 7 nor `new` was committed.
    let out = guard
        .process(&[rec(&k, 7), rec(&new, 1)], 0)
        .await
        .expect("process");
    assert_eq!(out.decisions, [Decision::Accept, Decision::Accept]);
    guard.abort();

    // Retried: decided against the committed 5 from the cache, and `new`, never committed, is
    // read again (as absent).
    let out = guard
        .process(&[rec(&k, 6), rec(&new, 1)], 0)
        .await
        .expect("process");
    assert_eq!(out.decisions, [Decision::Accept, Decision::Accept]);
    assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        backend.keys.load(Ordering::SeqCst),
        3,
        "only `new`, each time"
    );
}

#[tokio::test]
async fn forgetting_the_cache_sees_what_was_written_behind_the_guard() {
    let backend = Counting::default();
    let mut guard = VersionGuard::new(backend.clone(), i64::MAX).with_cache(16);
    let k = state_key("r", b"k");
    guard.process(&[rec(&k, 5)], 0).await.expect("process");
    guard.commit(Vec::new()).await.expect("commit");

    // A restore writes a newer entry straight to the backend, then the guard forgets.
    let restored = StateEntry {
        version: v(9),
        deleted: false,
        snapshot: false,
        updated_at_ms: 0,
    };
    backend
        .write(WriteRequest {
            puts: vec![(k.clone(), Some(restored.encode().to_vec()))],
            checkpoints: Vec::new(),
        })
        .await
        .expect("write");
    guard.forget_cached();

    let out = guard.process(&[rec(&k, 7)], 0).await.expect("process");
    assert_eq!(
        out.decisions,
        [Decision::Stale],
        "decided against the restored 9"
    );
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2, "read again");
}
