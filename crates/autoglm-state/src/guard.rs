//! The version guard: which change of an entity may overwrite which.
//!
//! ```text
//!  poll batch [(key, Upsert(v) | Delete(v) | UnversionedDelete, snapshot?)]
//!        │ keys in neither the overlay nor the cache ──► ONE backend multi_get
//!        ▼
//!  decide() per record, in order ──► Accept ──► overlay[key] = new entry (later records see it)
//!        │                       └─► Duplicate / Stale / SnapshotSuperseded ──► dropped + counted
//!        ▼
//!  pending_writes() ──► changelog records      (inside the Kafka transaction)
//!  commit(checkpoints) ──► ONE backend write   (after Kafka committed)
//!  abort()             ──► overlay discarded    (after Kafka aborted)
//! ```
//!
//! The overlay is the open transaction's uncommitted state. It lives across any number of
//! poll batches until [`VersionGuard::commit`] or [`VersionGuard::abort`], so the backend only
//! ever holds state that Kafka committed.
//!
//! With [`VersionGuard::with_cache`], the guard also keeps the entries it committed lately, so
//! that a key changed again within the last few batches is decided without a backend read. The
//! cache holds only what the backend holds: a commit adds its entries once the write succeeded,
//! an abort leaves it alone, and whoever writes the backend behind the guard's back (a restore)
//! calls [`VersionGuard::forget_cached`]. Entries only read are not added: with a working set
//! larger than the cache, adding them cost more than the reads they saved.
//!
//! **Failure behaviour.** [`VersionGuard::process`] decides nothing until its read and decoding
//! succeeded: on error the overlay is unchanged and the batch can be retried (or the transaction
//! aborted). [`VersionGuard::commit`] keeps the overlay when the write fails; the write is
//! idempotent, so retrying it is safe. Dropping either future half-way is equally safe.

// foldhash: the per-record maps hash every state key; SipHash was 3 % of the processor's CPU.
use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};

use autoglm_core::Version;

use crate::{KvBackend, StateEntry, StateError, WriteRequest};

/// What the guard does with one incoming change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Newer than what is stored (or nothing is stored): apply it.
    Accept,
    /// Same version as the stored one: a redelivery, drop it.
    Duplicate,
    /// Older than the stored version (including a late update after a versioned delete): drop it.
    Stale,
    /// A snapshot read (`op=r`) while the stored entry came from the stream: the streamed change
    /// is authoritative, drop the snapshot row even if its version is greater.
    SnapshotSuperseded,
}

impl Decision {
    /// Every decision, in [`Decision::index`] order.
    pub const ALL: [Decision; 4] = [
        Decision::Accept,
        Decision::Duplicate,
        Decision::Stale,
        Decision::SnapshotSuperseded,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Accept => "accepted",
            Decision::Duplicate => "duplicate",
            Decision::Stale => "stale",
            Decision::SnapshotSuperseded => "snapshot_superseded",
        }
    }

    /// Position in [`Decision::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Decision::Accept => 0,
            Decision::Duplicate => 1,
            Decision::Stale => 2,
            Decision::SnapshotSuperseded => 3,
        }
    }

    /// Whether the change is applied (and emitted downstream).
    pub const fn is_accept(self) -> bool {
        matches!(self, Decision::Accept)
    }
}

/// What an incoming change does to its entity, with the version it carries.
///
/// A change that is not a delete always has a version; only a delete may come without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// An insert or update (or a snapshot read) at this version.
    Upsert(Version),
    /// A delete at this version.
    Delete(Version),
    /// A delete that carries no version: a key-only delete (null value) on an upsert topic
    /// whose version source is a column of the row. It is decided as a delete at the version of
    /// the stored entry, so its tombstone keeps that version (see [`decide`]).
    UnversionedDelete,
}

impl Change {
    /// A change with a version: [`Change::Delete`] if `is_delete`, else [`Change::Upsert`].
    pub const fn versioned(version: Version, is_delete: bool) -> Change {
        if is_delete {
            Change::Delete(version)
        } else {
            Change::Upsert(version)
        }
    }

    /// Whether the change deletes the entity.
    pub const fn is_delete(self) -> bool {
        matches!(self, Change::Delete(_) | Change::UnversionedDelete)
    }

    /// The version the change carries (`None` for [`Change::UnversionedDelete`]).
    pub const fn version(self) -> Option<Version> {
        match self {
            Change::Upsert(version) | Change::Delete(version) => Some(version),
            Change::UnversionedDelete => None,
        }
    }
}

/// Decides one incoming change against the stored entry of its key.
///
/// Rules, in order:
/// 1. a tombstone older than `tombstone_retention_ms` counts as nothing stored (so purging it
///    from the store, see
///    [`RocksOptions::tombstone_retention_ms`](crate::RocksOptions::tombstone_retention_ms),
///    changes no decision);
/// 2. an [unversioned delete](Change::UnversionedDelete) with nothing stored →
///    [`Decision::Duplicate`] (nothing to delete); otherwise it takes the stored entry's version
///    and the rules below decide it as a delete at that version: over a live row →
///    [`Decision::Accept`] (rule 4's exception; the tombstone keeps the row's version, so later
///    updates with a greater version are accepted and older ones are still stale), over a
///    tombstone → [`Decision::Duplicate`];
/// 3. nothing stored → [`Decision::Accept`];
/// 4. version equal to the stored one → [`Decision::Duplicate`], except a delete of a live row
///    at its own version → [`Decision::Accept`] (a version-column source gives a delete the
///    version of the row's `before` image, which equals the last update's version);
/// 5. version lower than the stored one → [`Decision::Stale`] (a stored tombstone keeps its
///    version, so a late update cannot bring a deleted row back);
/// 6. a snapshot change over a streamed (non-snapshot) entry → [`Decision::SnapshotSuperseded`];
/// 7. otherwise → [`Decision::Accept`].
pub fn decide(
    stored: Option<&StateEntry>,
    change: Change,
    is_snapshot: bool,
    now_ms: i64,
    tombstone_retention_ms: i64,
) -> Decision {
    judge(stored, change, is_snapshot, now_ms, tombstone_retention_ms).0
}

/// [`decide`], plus the version the change was decided at: its own, or for an unversioned
/// delete the stored entry's (`None` when nothing was stored).
fn judge(
    stored: Option<&StateEntry>,
    change: Change,
    is_snapshot: bool,
    now_ms: i64,
    tombstone_retention_ms: i64,
) -> (Decision, Option<Version>) {
    let stored = stored.filter(|s| !s.is_expired_tombstone(now_ms, tombstone_retention_ms));
    let (version, is_delete) = match (change, stored) {
        (Change::Upsert(version), _) => (version, false),
        (Change::Delete(version), _) => (version, true),
        (Change::UnversionedDelete, Some(stored)) => (stored.version, true),
        (Change::UnversionedDelete, None) => return (Decision::Duplicate, None),
    };
    let Some(stored) = stored else {
        return (Decision::Accept, Some(version));
    };
    let decision = match version.cmp(&stored.version) {
        std::cmp::Ordering::Equal if is_delete && !stored.deleted => Decision::Accept,
        std::cmp::Ordering::Equal => Decision::Duplicate,
        std::cmp::Ordering::Less => Decision::Stale,
        std::cmp::Ordering::Greater if is_snapshot && !stored.snapshot => {
            Decision::SnapshotSuperseded
        }
        std::cmp::Ordering::Greater => Decision::Accept,
    };
    (decision, Some(version))
}

/// One incoming change as the guard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardInput<'a> {
    /// The [`state_key`](crate::state_key) of the entity.
    pub key: &'a [u8],
    /// What the change does, with its version.
    pub change: Change,
    /// The change comes from a snapshot read.
    pub is_snapshot: bool,
}

/// How many records got each [`Decision`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionCounts([u64; 4]);

impl DecisionCounts {
    /// The count for `decision`.
    pub const fn get(&self, decision: Decision) -> u64 {
        self.0[decision.index()]
    }

    /// Counts one more `decision`.
    pub fn record(&mut self, decision: Decision) {
        self.0[decision.index()] += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &DecisionCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// Records counted in total.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(decision, count)` for every decision, for metrics.
    pub fn iter(&self) -> impl Iterator<Item = (Decision, u64)> + '_ {
        Decision::ALL.iter().map(|d| (*d, self.get(*d)))
    }
}

/// The result of one [`VersionGuard::process`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One decision per input record, in input order.
    pub decisions: Vec<Decision>,
    /// Per input record, in input order, the version it was decided at: its own, or for a
    /// [`Change::UnversionedDelete`] the version of the entry it deletes (`None` when nothing
    /// was stored). For an accepted record this is the version of the entry it wrote, so it is
    /// the version to report for an accepted unversioned delete.
    pub versions: Vec<Option<Version>>,
    /// The same decisions, counted.
    pub counts: DecisionCounts,
}

/// The version guard over a backend, with the open transaction's overlay.
#[derive(Debug)]
pub struct VersionGuard<B> {
    backend: B,
    tombstone_retention_ms: i64,
    overlay: HashMap<Vec<u8>, StateEntry>,
    /// Entries committed lately; see the module doc.
    cache: Option<Cache>,
}

/// The guard's cache of committed entries (S3-FIFO eviction, bounded by entries).
type Cache = quick_cache::unsync::Cache<
    Vec<u8>,
    StateEntry,
    quick_cache::UnitWeighter,
    foldhash::fast::RandomState,
>;

impl<B: KvBackend> VersionGuard<B> {
    /// A guard with an empty overlay. Tombstones older than `tombstone_retention_ms` count as
    /// absent (`i64::MAX` keeps them forever).
    pub fn new(backend: B, tombstone_retention_ms: i64) -> VersionGuard<B> {
        VersionGuard {
            backend,
            tombstone_retention_ms,
            overlay: HashMap::new(),
            cache: None,
        }
    }

    /// The guard with a cache of up to `entries` committed entries (none when 0).
    pub fn with_cache(mut self, entries: usize) -> VersionGuard<B> {
        self.cache = (entries > 0).then(|| {
            Cache::with(
                entries,
                entries as u64,
                quick_cache::UnitWeighter,
                foldhash::fast::RandomState::default(),
                quick_cache::unsync::DefaultLifecycle::default(),
            )
        });
        self
    }

    /// Empties the cache of committed entries: call it after writing the backend other than
    /// through the guard (a restore), which may have changed them.
    pub fn forget_cached(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
    }

    /// The backend below the guard.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configured tombstone retention.
    pub fn tombstone_retention_ms(&self) -> i64 {
        self.tombstone_retention_ms
    }

    /// Decides every record of a poll batch, in order, with one backend read for the keys
    /// neither the overlay nor the cache holds. Accepted records update the overlay, so later
    /// records of the same key (in this batch or later ones of the same transaction) are
    /// decided against them.
    pub async fn process(
        &mut self,
        records: &[GuardInput<'_>],
        now_ms: i64,
    ) -> Result<BatchOutcome, StateError> {
        let mut seen = HashSet::with_capacity(records.len());
        let mut stored: HashMap<&[u8], StateEntry> = HashMap::with_capacity(records.len());
        let mut missing: Vec<&[u8]> = Vec::new();
        for record in records {
            let key = record.key;
            if self.overlay.contains_key(key) || !seen.insert(key) {
                continue;
            }
            match self.cache.as_ref().and_then(|cache| cache.get(key)) {
                Some(entry) => {
                    stored.insert(key, *entry);
                }
                None => missing.push(key),
            }
        }

        if !missing.is_empty() {
            let values = self
                .backend
                .multi_get(missing.iter().map(|k| k.to_vec()).collect())
                .await?;
            if values.len() != missing.len() {
                return Err(StateError::ShortRead {
                    expected: missing.len(),
                    got: values.len(),
                });
            }
            for (key, value) in missing.iter().zip(values) {
                if let Some(value) = value {
                    stored.insert(key, StateEntry::decode(&value)?);
                }
            }
        }

        // Nothing fallible below: the overlay changes only once every read succeeded.
        let mut outcome = BatchOutcome {
            decisions: Vec::with_capacity(records.len()),
            versions: Vec::with_capacity(records.len()),
            counts: DecisionCounts::default(),
        };
        for record in records {
            let current = self
                .overlay
                .get(record.key)
                .or_else(|| stored.get(record.key));
            let (decision, version) = judge(
                current,
                record.change,
                record.is_snapshot,
                now_ms,
                self.tombstone_retention_ms,
            );
            // An accepted change always has a version: `judge` drops an unversioned delete
            // when there is no entry to take the version from.
            if let (Decision::Accept, Some(version)) = (decision, version) {
                let entry = StateEntry {
                    version,
                    deleted: record.change.is_delete(),
                    snapshot: record.is_snapshot,
                    updated_at_ms: now_ms,
                };
                match self.overlay.get_mut(record.key) {
                    Some(slot) => *slot = entry,
                    None => {
                        self.overlay.insert(record.key.to_vec(), entry);
                    }
                }
            }
            outcome.decisions.push(decision);
            outcome.versions.push(version);
            outcome.counts.record(decision);
        }
        Ok(outcome)
    }

    /// Number of keys changed by the open transaction.
    pub fn pending_len(&self) -> usize {
        self.overlay.len()
    }

    /// The uncommitted entry of `key`, if the open transaction changed it.
    pub fn pending(&self, key: &[u8]) -> Option<&StateEntry> {
        self.overlay.get(key)
    }

    /// The open transaction's changes as changelog records `(state key, encoded entry)`, one per
    /// key (the newest), sorted by key.
    pub fn pending_writes(&self) -> Vec<(&[u8], [u8; StateEntry::ENCODED_LEN])> {
        let mut writes: Vec<_> = self
            .overlay
            .iter()
            .map(|(key, entry)| (key.as_slice(), entry.encode()))
            .collect();
        writes.sort_unstable_by(|a, b| a.0.cmp(b.0));
        writes
    }

    /// Call once the Kafka transaction committed: writes the overlay and the changelog
    /// `checkpoints` (`(topic, partition, next offset)`) in one atomic backend write, then clears
    /// the overlay (its entries join the cache). Returns the number of state keys written. On
    /// error the overlay is kept and the call can be retried.
    pub async fn commit(
        &mut self,
        checkpoints: Vec<(String, i32, i64)>,
    ) -> Result<usize, StateError> {
        let mut puts: Vec<_> = self
            .overlay
            .iter()
            .map(|(key, entry)| (key.clone(), Some(entry.encode().to_vec())))
            .collect();
        // Sorted keys make the write batch cheaper for RocksDB's memtable inserts.
        puts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let written = puts.len();
        let request = WriteRequest { puts, checkpoints };
        if !request.is_empty() {
            self.backend.write(request).await?;
        }
        match &mut self.cache {
            Some(cache) => {
                for (key, entry) in self.overlay.drain() {
                    cache.insert(key, entry);
                }
            }
            None => self.overlay.clear(),
        }
        Ok(written)
    }

    /// Call when the Kafka transaction aborted: forgets the overlay; the backend is untouched.
    pub fn abort(&mut self) {
        self.overlay.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETENTION: i64 = 1_000;
    const NOW: i64 = 10_000;

    fn v(n: u64) -> Version {
        Version([n, 0, 0])
    }

    fn streamed(n: u64) -> StateEntry {
        StateEntry {
            version: v(n),
            deleted: false,
            snapshot: false,
            updated_at_ms: NOW,
        }
    }

    fn decide_now(stored: Option<&StateEntry>, n: u64, delete: bool, snapshot: bool) -> Decision {
        decide(
            stored,
            Change::versioned(v(n), delete),
            snapshot,
            NOW,
            RETENTION,
        )
    }

    fn decide_unversioned(stored: Option<&StateEntry>, snapshot: bool) -> Decision {
        decide(stored, Change::UnversionedDelete, snapshot, NOW, RETENTION)
    }

    fn tombstone(n: u64) -> StateEntry {
        StateEntry {
            deleted: true,
            ..streamed(n)
        }
    }

    #[test]
    fn first_change_of_a_key_is_accepted() {
        assert_eq!(decide_now(None, 1, false, false), Decision::Accept);
        assert_eq!(decide_now(None, 1, true, false), Decision::Accept);
        assert_eq!(decide_now(None, 1, false, true), Decision::Accept);
    }

    #[test]
    fn newer_update_is_accepted() {
        assert_eq!(
            decide_now(Some(&streamed(5)), 6, false, false),
            Decision::Accept
        );
    }

    #[test]
    fn same_version_is_a_duplicate() {
        assert_eq!(
            decide_now(Some(&streamed(5)), 5, false, false),
            Decision::Duplicate
        );
    }

    #[test]
    fn older_update_is_stale() {
        assert_eq!(
            decide_now(Some(&streamed(5)), 4, false, false),
            Decision::Stale
        );
    }

    #[test]
    fn late_update_after_delete_is_stale() {
        let tombstone = StateEntry {
            deleted: true,
            ..streamed(5)
        };
        assert_eq!(
            decide_now(Some(&tombstone), 4, false, false),
            Decision::Stale
        );
        assert_eq!(
            decide_now(Some(&tombstone), 5, false, false),
            Decision::Duplicate
        );
    }

    #[test]
    fn newer_update_after_delete_recreates_the_row() {
        let tombstone = StateEntry {
            deleted: true,
            ..streamed(5)
        };
        assert_eq!(
            decide_now(Some(&tombstone), 6, false, false),
            Decision::Accept
        );
    }

    #[test]
    fn delete_at_the_rows_own_version_is_accepted() {
        assert_eq!(
            decide_now(Some(&streamed(5)), 5, true, false),
            Decision::Accept
        );
    }

    #[test]
    fn repeated_delete_is_a_duplicate() {
        let tombstone = StateEntry {
            deleted: true,
            ..streamed(5)
        };
        assert_eq!(
            decide_now(Some(&tombstone), 5, true, false),
            Decision::Duplicate
        );
    }

    #[test]
    fn snapshot_never_overwrites_streamed_row() {
        assert_eq!(
            decide_now(Some(&streamed(5)), 9, false, true),
            Decision::SnapshotSuperseded
        );
    }

    #[test]
    fn snapshot_never_overwrites_streamed_tombstone() {
        let tombstone = StateEntry {
            deleted: true,
            ..streamed(5)
        };
        assert_eq!(
            decide_now(Some(&tombstone), 9, false, true),
            Decision::SnapshotSuperseded
        );
    }

    #[test]
    fn newer_snapshot_overwrites_older_snapshot() {
        let snap = StateEntry {
            snapshot: true,
            ..streamed(5)
        };
        assert_eq!(decide_now(Some(&snap), 6, false, true), Decision::Accept);
        assert_eq!(decide_now(Some(&snap), 5, false, true), Decision::Duplicate);
    }

    #[test]
    fn streamed_change_overwrites_snapshot_row() {
        let snap = StateEntry {
            snapshot: true,
            ..streamed(5)
        };
        assert_eq!(decide_now(Some(&snap), 6, false, false), Decision::Accept);
        assert_eq!(decide_now(Some(&snap), 4, false, false), Decision::Stale);
    }

    #[test]
    fn expired_tombstone_counts_as_absent() {
        let tombstone = StateEntry {
            deleted: true,
            updated_at_ms: NOW - RETENTION - 1,
            ..streamed(5)
        };
        assert_eq!(
            decide_now(Some(&tombstone), 1, false, false),
            Decision::Accept
        );
        assert_eq!(
            decide_now(Some(&tombstone), 1, false, true),
            Decision::Accept
        );
    }

    #[test]
    fn tombstone_within_retention_still_blocks() {
        let tombstone = StateEntry {
            deleted: true,
            updated_at_ms: NOW - RETENTION,
            ..streamed(5)
        };
        assert_eq!(
            decide_now(Some(&tombstone), 1, false, false),
            Decision::Stale
        );
    }

    #[test]
    fn live_rows_never_expire() {
        let old = StateEntry {
            updated_at_ms: i64::MIN,
            ..streamed(5)
        };
        assert_eq!(decide_now(Some(&old), 1, false, false), Decision::Stale);
    }

    #[test]
    fn unversioned_delete_of_a_live_row_is_accepted_at_the_rows_version() {
        let snap = StateEntry {
            snapshot: true,
            ..streamed(5)
        };
        for row in [streamed(5), snap] {
            assert_eq!(decide_unversioned(Some(&row), false), Decision::Accept);
            assert_eq!(
                judge(Some(&row), Change::UnversionedDelete, false, NOW, RETENTION),
                (Decision::Accept, Some(v(5)))
            );
        }
    }

    #[test]
    fn unversioned_delete_with_nothing_stored_is_a_duplicate() {
        assert_eq!(decide_unversioned(None, false), Decision::Duplicate);
        assert_eq!(
            judge(None, Change::UnversionedDelete, false, NOW, RETENTION),
            (Decision::Duplicate, None)
        );
    }

    #[test]
    fn unversioned_delete_of_a_tombstone_is_a_duplicate() {
        assert_eq!(
            judge(
                Some(&tombstone(5)),
                Change::UnversionedDelete,
                false,
                NOW,
                RETENTION
            ),
            (Decision::Duplicate, Some(v(5)))
        );
    }

    #[test]
    fn unversioned_delete_of_an_expired_tombstone_is_a_duplicate() {
        let old = StateEntry {
            updated_at_ms: NOW - RETENTION - 1,
            ..tombstone(5)
        };
        assert_eq!(
            judge(Some(&old), Change::UnversionedDelete, false, NOW, RETENTION),
            (Decision::Duplicate, None)
        );
    }

    #[test]
    fn unversioned_snapshot_delete_is_decided_like_a_delete_at_the_stored_version() {
        // The snapshot rule only guards greater versions; a delete at the row's own version
        // is accepted whatever its origin, and so is an unversioned one.
        assert_eq!(
            decide_unversioned(Some(&streamed(5)), true),
            Decision::Accept
        );
        assert_eq!(
            decide_now(Some(&streamed(5)), 5, true, true),
            Decision::Accept
        );
    }

    #[test]
    fn versioned_changes_are_decided_at_their_own_version() {
        for change in [Change::Upsert(v(3)), Change::Delete(v(3))] {
            for stored in [None, Some(streamed(5)), Some(tombstone(1))] {
                assert_eq!(
                    judge(stored.as_ref(), change, false, NOW, RETENTION).1,
                    Some(v(3))
                );
            }
        }
    }

    #[test]
    fn change_reports_delete_and_version() {
        assert_eq!(Change::versioned(v(1), true), Change::Delete(v(1)));
        assert_eq!(Change::versioned(v(1), false), Change::Upsert(v(1)));
        assert!(Change::UnversionedDelete.is_delete());
        assert!(Change::Delete(v(1)).is_delete());
        assert!(!Change::Upsert(v(1)).is_delete());
        assert_eq!(Change::UnversionedDelete.version(), None);
        assert_eq!(Change::Upsert(v(2)).version(), Some(v(2)));
    }

    #[test]
    fn decision_labels_are_stable() {
        let labels: Vec<_> = Decision::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(
            labels,
            ["accepted", "duplicate", "stale", "snapshot_superseded"]
        );
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
    }
}
