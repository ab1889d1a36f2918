//! Read-only inspection of a state store (`autoglm state get | stats`), safe beside the
//! `autoglm run` that owns it.
//!
//! ```text
//!  autoglm run ──owns (LOCK, writes)──► RocksDB at event_queue.storage_path
//!                                          │ MANIFEST, SST files, WAL: read, never written
//!  autoglm state ──► StateInspector: a RocksDB *secondary* instance; its own info log and
//!                    bookkeeping live in a temporary directory, removed when it is dropped
//! ```
//!
//! A secondary instance takes no lock and writes nothing into the primary's directory. It
//! catches up with the primary once, when it opens (the MANIFEST and the write-ahead log's
//! tail): what it shows is the store as of that moment, the state of the transactions that
//! Kafka had committed *and* that the running processor had written by then (the state follows
//! commits, so it may be a batch behind the output topics).
//!
//! The counts of [`StateInspector::scan`] are exact: a full pass over the state column family
//! (seconds for millions of keys). RocksDB's own estimates ([`StateInspector::estimates`]) cost
//! nothing but may be off, by the overwrites and deletes not compacted yet.
//!
//! Failure behaviour: a directory without a store is [`StateError::NoStore`]; RocksDB failures
//! are [`StateError::Open`] or [`StateError::Rocks`]; a value that does not decode is counted
//! as malformed, never a panic. Every call blocks: from async code call it inside
//! `tokio::task::spawn_blocking`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, Options, properties};

use crate::backend::{CHECKPOINTS_CF, STATE_CF, decode_checkpoint, parse_checkpoint_key};
use crate::{StateEntry, StateError};

/// A read-only view of a state store: a RocksDB secondary instance of it.
pub struct StateInspector {
    db: DB,
    path: PathBuf,
    /// The secondary instance's own directory; removed on drop, after `db` is closed.
    _scratch: tempfile::TempDir,
}

impl std::fmt::Debug for StateInspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateInspector")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Exact counts of one route's state entries (one key prefix), from a full scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// The route name: the key bytes before the first `0x00` (lossy UTF-8).
    pub route: String,
    /// State entries (live rows and tombstones).
    pub keys: u64,
    /// Entries that are versioned tombstones (the newest change was a delete).
    pub tombstones: u64,
    /// Entries whose newest change came from a snapshot read (`op=r`).
    pub snapshot: u64,
    /// Key and value bytes, uncompressed.
    pub bytes: u64,
    /// Values that do not decode as a state entry.
    pub malformed: u64,
    /// The oldest and the newest `updated_at_ms` of the route's entries.
    pub updated_ms: Option<(i64, i64)>,
}

/// RocksDB's own estimates for the state column family (cheap, approximate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimates {
    /// `rocksdb.estimate-num-keys`.
    pub keys: Option<u64>,
    /// `rocksdb.estimate-live-data-size`, in bytes.
    pub live_data_bytes: Option<u64>,
    /// `rocksdb.total-sst-files-size`, in bytes (compressed, on disk).
    pub sst_files_bytes: Option<u64>,
    /// `rocksdb.cur-size-all-mem-tables`, in bytes.
    pub memtable_bytes: Option<u64>,
}

impl StateInspector {
    /// Opens the store at `path` as a secondary instance. Works while another process holds
    /// the store open for writing.
    pub fn open(path: impl AsRef<Path>) -> Result<StateInspector, StateError> {
        let path = path.as_ref().to_path_buf();
        // A secondary instance of a directory without a store fails with a cryptic I/O error.
        if !path.join("CURRENT").is_file() {
            return Err(StateError::NoStore { path });
        }
        let scratch = tempfile::Builder::new()
            .prefix("autoglm-state-inspect")
            .tempdir()
            .map_err(StateError::Scratch)?;
        let mut options = Options::default();
        // A secondary instance must keep every table file open: the primary may delete a file
        // (after a compaction) that this instance still reads.
        options.set_max_open_files(-1);
        let db = DB::open_cf_as_secondary(
            &options,
            path.as_path(),
            scratch.path(),
            [STATE_CF, CHECKPOINTS_CF],
        )
        .map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(StateInspector {
            db,
            path,
            _scratch: scratch,
        })
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StateError> {
        self.db
            .cf_handle(name)
            .ok_or(StateError::MissingColumnFamily(name))
    }

    /// The entry stored under `key` (a [`state_key`](crate::state_key)), if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<StateEntry>, StateError> {
        let cf = self.cf(STATE_CF)?;
        self.db
            .get_pinned_cf(cf, key)
            .map_err(|source| StateError::Rocks {
                operation: "inspect get",
                source,
            })?
            .map(|value| StateEntry::decode(&value))
            .transpose()
    }

    /// Exact counts per key prefix (route), from a full scan of the state column family, in
    /// route order.
    pub fn scan(&self) -> Result<Vec<PrefixStats>, StateError> {
        let cf = self.cf(STATE_CF)?;
        let mut routes: BTreeMap<Vec<u8>, PrefixStats> = BTreeMap::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|source| StateError::Rocks {
                operation: "inspect scan",
                source,
            })?;
            let route = key.split(|b| *b == 0).next().unwrap_or_default();
            let stats = routes.entry(route.to_vec()).or_insert_with(|| PrefixStats {
                route: String::from_utf8_lossy(route).into_owned(),
                ..PrefixStats::default()
            });
            stats.add(&key, &value);
        }
        Ok(routes.into_values().collect())
    }

    /// Every changelog checkpoint the store holds: `(changelog topic, partition, next offset to
    /// replay)`, in topic and partition order.
    pub fn checkpoints(&self) -> Result<Vec<(String, i32, i64)>, StateError> {
        let cf = self.cf(CHECKPOINTS_CF)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&[], Direction::Forward))
        {
            let (key, value) = item.map_err(|source| StateError::Rocks {
                operation: "inspect checkpoints",
                source,
            })?;
            let Some((topic, partition)) = parse_checkpoint_key(&key) else {
                continue;
            };
            let offset = decode_checkpoint(&topic, partition, &value)?;
            out.push((topic, partition, offset));
        }
        out.sort();
        Ok(out)
    }

    /// RocksDB's estimates for the state column family.
    pub fn estimates(&self) -> Result<Estimates, StateError> {
        let cf = self.cf(STATE_CF)?;
        let int = |name| {
            self.db
                .property_int_value_cf(cf, name)
                .map_err(|source| StateError::Rocks {
                    operation: "inspect property",
                    source,
                })
        };
        Ok(Estimates {
            keys: int(properties::ESTIMATE_NUM_KEYS)?,
            live_data_bytes: int(properties::ESTIMATE_LIVE_DATA_SIZE)?,
            sst_files_bytes: int(properties::TOTAL_SST_FILES_SIZE)?,
            memtable_bytes: int(properties::CUR_SIZE_ALL_MEM_TABLES)?,
        })
    }
}

impl PrefixStats {
    fn add(&mut self, key: &[u8], value: &[u8]) {
        self.keys += 1;
        self.bytes += (key.len() + value.len()) as u64;
        match StateEntry::decode(value) {
            Ok(entry) => {
                self.tombstones += u64::from(entry.deleted);
                self.snapshot += u64::from(entry.snapshot);
                let at = entry.updated_at_ms;
                self.updated_ms = Some(match self.updated_ms {
                    Some((oldest, newest)) => (oldest.min(at), newest.max(at)),
                    None => (at, at),
                });
            }
            Err(_) => self.malformed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use autoglm_core::Version;

    use super::*;
    use crate::{KvBackend, RocksBackend, RocksOptions, WriteRequest, state_key};

    fn entry(version: i64, deleted: bool, at: i64) -> Vec<u8> {
        StateEntry {
            version: Version::from_i64(version),
            deleted,
            snapshot: false,
            updated_at_ms: at,
        }
        .encode()
        .to_vec()
    }

    #[tokio::test]
    async fn inspects_a_store_its_owner_holds_open_and_sees_its_later_writes_on_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksBackend::open(dir.path(), RocksOptions::default()).expect("open");
        store
            .write(WriteRequest {
                puts: vec![
                    (state_key("a", b"[1]"), Some(entry(3, false, 1_000))),
                    (state_key("a", b"[2]"), Some(entry(5, true, 2_000))),
                    (state_key("b", b"[\"x\"]"), Some(entry(1, false, 1_500))),
                    (state_key("b", b"[\"y\"]"), Some(b"garbage".to_vec())),
                ],
                checkpoints: vec![
                    ("g-a-changelog".into(), 1, 42),
                    ("g-a-changelog".into(), 0, 7),
                ],
            })
            .await
            .expect("write");

        // The owner still holds the store (and its LOCK).
        let inspector = StateInspector::open(dir.path()).expect("secondary open");
        let got = inspector.get(&state_key("a", b"[2]")).expect("get");
        assert_eq!(
            got.map(|e| (e.version, e.deleted)),
            Some((Version::from_i64(5), true))
        );
        assert_eq!(inspector.get(&state_key("a", b"[9]")).expect("get"), None);
        let stats = inspector.scan().expect("scan");
        assert_eq!(stats.len(), 2);
        assert_eq!(
            (stats[0].route.as_str(), stats[0].keys, stats[0].tombstones),
            ("a", 2, 1)
        );
        assert_eq!(stats[0].updated_ms, Some((1_000, 2_000)));
        assert_eq!((stats[1].keys, stats[1].malformed), (2, 1));
        assert_eq!(
            inspector.checkpoints().expect("checkpoints"),
            [
                ("g-a-changelog".to_owned(), 0, 7),
                ("g-a-changelog".to_owned(), 1, 42)
            ]
        );
        assert!(inspector.estimates().expect("estimates").keys.is_some());

        store
            .write(WriteRequest {
                puts: vec![(state_key("a", b"[1]"), Some(entry(4, false, 3_000)))],
                checkpoints: vec![],
            })
            .await
            .expect("write");
        let again = StateInspector::open(dir.path()).expect("secondary open");
        let got = again.get(&state_key("a", b"[1]")).expect("get");
        assert_eq!(got.map(|e| e.version), Some(Version::from_i64(4)));
        drop((inspector, again));
        store.close().await.expect("close");
    }

    #[test]
    fn a_directory_without_a_store_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = StateInspector::open(dir.path()).expect_err("no store");
        assert!(matches!(err, StateError::NoStore { .. }), "{err}");
    }
}
