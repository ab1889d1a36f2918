//! Model-based test: random transactions through [`VersionGuard`] (over the in-memory backend and
//! over RocksDB) against a plain `BTreeMap` model that states the rules on its own.
//!
//! Every decision must agree, the committed state and checkpoint must agree after every commit,
//! abort and purge, and an aborted transaction must leave no trace. Purging expired tombstones
//! from the backend (what a RocksDB compaction does) must change no later decision.

use std::collections::BTreeMap;

use autoglm_core::Version;
use autoglm_state::{
    Change, Decision, GuardInput, KvBackend, MemoryBackend, RocksBackend, RocksOptions, ScanPage,
    StateEntry, StateError, VersionGuard, WriteRequest, state_key,
};
use proptest::prelude::*;

const RETENTION_MS: i64 = 3;
const TOPIC: &str = "changelog";

#[derive(Debug, Clone)]
enum Step {
    Record {
        key: u8,
        change: Change,
        snapshot: bool,
    },
    /// End of a poll batch; the clock moves on.
    EndBatch {
        advance_ms: i64,
    },
    Commit,
    Abort,
    /// The backend drops committed tombstones that expired by now, as a RocksDB compaction with
    /// a tombstone retention does (only where the backend can do it with the model's clock).
    Purge,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..4, 0u64..6, any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |(key, version, delete, snapshot)| Step::Record {
                key,
                change: Change::versioned(Version([version, 0, 0]), delete),
                snapshot,
            }
        ),
        2 => (0u8..4, prop::bool::weighted(0.2)).prop_map(|(key, snapshot)| Step::Record {
            key,
            change: Change::UnversionedDelete,
            snapshot,
        }),
        2 => (0i64..3).prop_map(|advance_ms| Step::EndBatch { advance_ms }),
        1 => Just(Step::Commit),
        1 => Just(Step::Abort),
        1 => Just(Step::Purge),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelEntry {
    version: u64,
    deleted: bool,
    snapshot: bool,
    at_ms: i64,
}

/// The rules, written out independently of `decide`.
#[derive(Debug, Default)]
struct Model {
    committed: BTreeMap<u8, ModelEntry>,
    pending: BTreeMap<u8, ModelEntry>,
    checkpoint: Option<i64>,
}

impl Model {
    fn current(&self, key: u8, now_ms: i64) -> Option<ModelEntry> {
        let entry = self
            .pending
            .get(&key)
            .or_else(|| self.committed.get(&key))
            .copied()?;
        let expired = entry.deleted && now_ms - entry.at_ms > RETENTION_MS;
        (!expired).then_some(entry)
    }

    /// The decision and the version the change was decided at.
    fn apply(
        &mut self,
        key: u8,
        change: Change,
        snapshot: bool,
        now_ms: i64,
    ) -> (Decision, Option<u64>) {
        let current = self.current(key, now_ms);
        let (version, delete) = match change {
            Change::Upsert(v) => (v.0[0], false),
            Change::Delete(v) => (v.0[0], true),
            // A delete at the current entry's version; with no entry there is nothing to delete.
            Change::UnversionedDelete => match current {
                Some(e) => (e.version, true),
                None => return (Decision::Duplicate, None),
            },
        };
        let decision = match current {
            None => Decision::Accept,
            Some(e) if version < e.version => Decision::Stale,
            Some(e) if version == e.version && delete && !e.deleted => Decision::Accept,
            Some(e) if version == e.version => Decision::Duplicate,
            Some(e) if snapshot && !e.snapshot => Decision::SnapshotSuperseded,
            Some(_) => Decision::Accept,
        };
        if decision == Decision::Accept {
            self.pending.insert(
                key,
                ModelEntry {
                    version,
                    deleted: delete,
                    snapshot,
                    at_ms: now_ms,
                },
            );
        }
        (decision, Some(version))
    }

    fn commit(&mut self, offset: i64) {
        self.committed.append(&mut self.pending);
        self.checkpoint = Some(offset);
    }

    fn abort(&mut self) {
        self.pending.clear();
    }

    fn purge(&mut self, now_ms: i64) {
        self.committed
            .retain(|_, e| !(e.deleted && now_ms - e.at_ms > RETENTION_MS));
    }
}

fn key_of(k: u8) -> Vec<u8> {
    state_key("route", &[k])
}

async fn committed_state(backend: &impl KvBackend) -> BTreeMap<u8, ModelEntry> {
    let prefix = autoglm_state::route_prefix("route");
    backend
        .scan_prefix(prefix.clone(), None, usize::MAX)
        .await
        .expect("scan")
        .into_iter()
        .map(|(key, value)| {
            let entry = StateEntry::decode(&value).expect("stored entry decodes");
            let k = key[prefix.len()..]
                .first()
                .copied()
                .expect("one-byte entity key");
            (
                k,
                ModelEntry {
                    version: entry.version.0[0],
                    deleted: entry.deleted,
                    snapshot: entry.snapshot,
                    at_ms: entry.updated_at_ms,
                },
            )
        })
        .collect()
}

/// The backend's purge, called with the model's clock.
type PurgeHook<'a> = &'a dyn Fn(i64);

/// Runs `steps` against the guard, with a cache of `cache_entries`, and the model. Without a
/// `purge` hook (a backend that cannot purge on the model's clock) [`Step::Purge`] does nothing
/// on either side.
async fn run<B: KvBackend>(
    backend: B,
    steps: &[Step],
    purge: Option<PurgeHook<'_>>,
    cache_entries: usize,
) -> Result<(), TestCaseError> {
    let mut guard = VersionGuard::new(backend, RETENTION_MS).with_cache(cache_entries);
    let mut model = Model::default();
    let mut now_ms = 1_000;
    let mut offset = 0;
    let mut batch: Vec<(Vec<u8>, Change, bool)> = Vec::new();
    let mut model_decisions = Vec::new();
    let mut model_versions = Vec::new();

    let mut steps = steps.to_vec();
    steps.push(Step::Commit);
    for step in steps {
        if let Step::Record {
            key,
            change,
            snapshot,
        } = step
        {
            let (decision, version) = model.apply(key, change, snapshot, now_ms);
            model_decisions.push(decision);
            model_versions.push(version);
            batch.push((key_of(key), change, snapshot));
            continue;
        }
        // Any other step ends the poll batch.
        if !batch.is_empty() {
            let inputs: Vec<_> = batch
                .iter()
                .map(|(key, change, is_snapshot)| GuardInput {
                    key,
                    change: *change,
                    is_snapshot: *is_snapshot,
                })
                .collect();
            let outcome = guard.process(&inputs, now_ms).await.expect("process");
            prop_assert_eq!(&outcome.decisions, &model_decisions);
            let versions: Vec<_> = outcome.versions.iter().map(|v| v.map(|v| v.0[0])).collect();
            prop_assert_eq!(&versions, &model_versions);
            prop_assert_eq!(outcome.counts.total(), inputs.len() as u64);
            prop_assert_eq!(guard.pending_len(), model.pending.len());
            batch.clear();
            model_decisions.clear();
            model_versions.clear();
        }
        match step {
            Step::EndBatch { advance_ms } => now_ms += advance_ms,
            Step::Commit => {
                offset += 1;
                guard
                    .commit(vec![(TOPIC.into(), 0, offset)])
                    .await
                    .expect("commit");
                model.commit(offset);
            }
            Step::Abort => {
                guard.abort();
                model.abort();
            }
            Step::Purge => {
                if let Some(purge) = purge {
                    purge(now_ms);
                    model.purge(now_ms);
                }
            }
            Step::Record { .. } => {}
        }
        if matches!(step, Step::Commit | Step::Abort | Step::Purge) {
            prop_assert_eq!(
                committed_state(guard.backend()).await,
                model.committed.clone()
            );
            prop_assert_eq!(
                guard
                    .backend()
                    .checkpoint(TOPIC, 0)
                    .await
                    .expect("checkpoint"),
                model.checkpoint
            );
        }
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn guard_over_memory_matches_model(steps in prop::collection::vec(step(), 0..80)) {
        let backend = MemoryBackend::new();
        let purge = |now_ms| {
            backend.purge_expired_tombstones(now_ms, RETENTION_MS);
        };
        runtime().block_on(run(backend.clone(), &steps, Some(&purge), 0))?;
    }

    /// The cache of committed entries changes no decision: two entries for four keys (so
    /// entries are evicted and read again), and enough for every key.
    #[test]
    fn guard_with_a_cache_matches_model(
        steps in prop::collection::vec(step(), 0..80),
        cache_entries in prop_oneof![Just(2usize), Just(64)],
    ) {
        let backend = MemoryBackend::new();
        let purge = |now_ms| {
            backend.purge_expired_tombstones(now_ms, RETENTION_MS);
        };
        runtime().block_on(run(backend.clone(), &steps, Some(&purge), cache_entries))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn guard_over_rocksdb_matches_model(steps in prop::collection::vec(step(), 0..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = RocksOptions {
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 1 << 20,
            ..RocksOptions::default()
        };
        let rt = runtime();
        let backend = RocksBackend::open(dir.path(), options).expect("open");
        rt.block_on(run(backend.clone(), &steps, None, 64))?;
        rt.block_on(backend.close()).expect("close");
    }
}

/// A backend that silently loses state writes (checkpoints still land).
#[derive(Debug, Clone, Default)]
struct Lossy(MemoryBackend);

impl KvBackend for Lossy {
    async fn multi_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        self.0.multi_get(keys).await
    }
    async fn write(&self, mut request: WriteRequest) -> Result<(), StateError> {
        request.puts.clear();
        self.0.write(request).await
    }
    async fn checkpoint(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        self.0.checkpoint(topic, partition).await
    }
    async fn drop_prefix(&self, prefix: Vec<u8>) -> Result<(), StateError> {
        self.0.drop_prefix(prefix).await
    }
    async fn scan_prefix(
        &self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ScanPage, StateError> {
        self.0.scan_prefix(prefix, start_after, limit).await
    }
}

/// The checker must be able to fail: a backend that loses the commit is caught.
#[test]
fn model_check_detects_a_lost_commit() {
    let steps = [
        Step::Record {
            key: 1,
            change: Change::Upsert(Version([1, 0, 0])),
            snapshot: false,
        },
        Step::Commit,
    ];
    assert!(
        runtime()
            .block_on(run(Lossy::default(), &steps, None, 0))
            .is_err()
    );
    assert!(
        runtime()
            .block_on(run(MemoryBackend::new(), &steps, None, 0))
            .is_ok()
    );
}

/// The checker must be able to fail: a purge that also drops young tombstones is caught.
#[test]
fn model_check_detects_a_purge_of_a_young_tombstone() {
    let steps = [
        Step::Record {
            key: 1,
            change: Change::Delete(Version([2, 0, 0])),
            snapshot: false,
        },
        Step::Commit,
        Step::Purge,
    ];
    let backend = MemoryBackend::new();
    let too_eager = |now_ms| {
        backend.purge_expired_tombstones(now_ms, -1);
    };
    assert!(
        runtime()
            .block_on(run(backend.clone(), &steps, Some(&too_eager), 0))
            .is_err()
    );
    let backend = MemoryBackend::new();
    let correct = |now_ms| {
        backend.purge_expired_tombstones(now_ms, RETENTION_MS);
    };
    assert!(
        runtime()
            .block_on(run(backend.clone(), &steps, Some(&correct), 0))
            .is_ok()
    );
}
