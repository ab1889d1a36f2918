//! [`KvBackend`] over RocksDB, owned by one dedicated OS thread.
//!
//! ```text
//!  RocksBackend (Clone) ──mpsc(bounded)──► thread "autoglm-rocksdb" ──► DB
//!        ▲                                      │
//!        └──────────── oneshot reply ◄──────────┘
//! ```
//!
//! The thread handles one command at a time, so every command sees the effects of the ones
//! before it. It stops when [`RocksBackend::close`] is called or the last handle is dropped;
//! commands still queued then fail with [`StateError::BackendGone`].
//!
//! With `disable_wal`, writes survive only once flushed; `atomic_flush` keeps the state and
//! checkpoint column families flushed together, so after a crash the checkpoint still matches
//! the state it describes and the changelog tail replay is exact. The store is flushed on close.
//!
//! With [`RocksOptions::tombstone_retention_ms`] set, a compaction filter on the `state` column
//! family drops tombstones older than the retention (see [`ExpiredTombstoneFilter`]); the guard
//! already decides as if they were absent, so the purge changes no decision.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::compaction_filter::{CompactionFilter, Decision as FilterDecision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB,
    DBCompressionType, ErrorKind, FlushOptions, Options, WriteBatch, WriteOptions,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    KvBackend, ScanPage, WriteRequest, checkpoint_key, decode_checkpoint, is_expired_tombstone,
    prefix_successor,
};
use crate::StateError;

/// The column family of the state entries.
pub(crate) const STATE_CF: &str = "state";
/// The column family of the changelog checkpoints.
pub(crate) const CHECKPOINTS_CF: &str = "checkpoints";

/// Tuning of the RocksDB store. [`Default`] holds every default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RocksOptions {
    /// Size of the LRU block cache (data, index and filter blocks), in bytes.
    pub block_cache_bytes: usize,
    /// Bloom filter bits per key for the state column family; `0` disables the filter.
    pub bloom_filter_bits_per_key: u32,
    /// No filter on the last level (RocksDB's `optimize_filters_for_hits`), where most keys
    /// live: for reads that mostly find their key.
    pub optimize_filters_for_hits: bool,
    /// Size of the row cache (single entries, before the block cache), in bytes; `0` turns it
    /// off.
    pub row_cache_bytes: usize,
    /// Compress SST files with LZ4, on every level. (ZSTD on the bottommost level, where most
    /// keys live, made a point read that misses the block cache about a third slower: with 10
    /// million keys the guard bench took 18.1 µs per record, against 13.4 with LZ4.)
    pub compression: bool,
    /// Size of one memtable, in bytes.
    pub write_buffer_bytes: usize,
    /// Skip the write-ahead log. Faster; a crash then loses the writes since the last flush, and
    /// the runtime replays them from the changelog after the (equally old) checkpoint.
    pub disable_wal: bool,
    /// Capacity of the command queue in front of the RocksDB thread.
    pub command_queue_len: usize,
    /// Purge tombstones older than this many milliseconds when RocksDB compacts the state
    /// column family; `None` (the default) keeps them forever.
    ///
    /// A compaction filter decodes each state value and drops it only if it is a tombstone
    /// ([`StateEntry::deleted`](crate::StateEntry::deleted)) whose `updated_at_ms` is more than
    /// this retention before the wall clock at the start of the compaction. Live entries are
    /// never dropped, and a value that does not decode is kept.
    ///
    /// The purge is invisible to decisions: [`decide`](crate::decide) already treats a
    /// tombstone older than the guard's retention as absent. That holds as long as this value
    /// is not smaller than the retention given to [`VersionGuard::new`](crate::VersionGuard::new)
    /// (use the same value) and the `now_ms` passed to
    /// [`VersionGuard::process`](crate::VersionGuard::process) is not behind the wall clock of
    /// the compaction. With the wall clock as `now_ms` the only difference is at the edge: a
    /// tombstone in its last milliseconds of retention (or a wall clock that steps back) can
    /// count as absent that much early. The changelog topic still holds the tombstone; a
    /// restore writes it back and a later compaction drops it again.
    pub tombstone_retention_ms: Option<i64>,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_bytes: 128 << 20,
            bloom_filter_bits_per_key: 10,
            optimize_filters_for_hits: false,
            row_cache_bytes: 0,
            compression: true,
            // Two memtables may be live at once: 2 × 24 MiB keeps 1 million keys under the
            // 256 MiB budget (`make bench`: 64 MiB memtables peaked at 266 MiB; 32 MiB at
            // 259–264 MiB once the batch was processed on all cores; 24 MiB at 246–248 MiB).
            write_buffer_bytes: 24 << 20,
            disable_wal: false,
            command_queue_len: 64,
            tombstone_retention_ms: None,
        }
    }
}

impl RocksOptions {
    fn db_options(&self) -> Options {
        let mut db = Options::default();
        db.create_if_missing(true);
        db.create_missing_column_families(true);
        db.set_atomic_flush(true);
        // One writer thread; and in-place memtable updates (below) need this off.
        db.set_allow_concurrent_memtable_write(false);
        if self.row_cache_bytes > 0 {
            db.set_row_cache(&Cache::new_lru_cache(self.row_cache_bytes));
        }
        db
    }

    fn state_cf_options(&self, cache: &Cache) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(cache);
        // Index and filter blocks live in the block cache, so the cache bounds them too. Each
        // is partitioned into 4 KiB blocks under a small pinned top level: once the state
        // outgrows the cache, a point read that misses reloads one 4 KiB partition, not a whole
        // file's index and filter (a megabyte each; 10 million keys made every read ~130 µs).
        table.set_cache_index_and_filter_blocks(true);
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        if self.bloom_filter_bits_per_key > 0 {
            table.set_bloom_filter(f64::from(self.bloom_filter_bits_per_key), false);
        }
        let mut cf = Options::default();
        cf.set_block_based_table_factory(&table);
        cf.set_write_buffer_size(self.write_buffer_bytes);
        cf.set_optimize_filters_for_hits(self.optimize_filters_for_hits);
        // A key's entry has a fixed size, so a newer version overwrites the memtable's copy
        // instead of inserting another skiplist node: the memtable holds one node per key.
        cf.set_inplace_update_support(true);
        if self.compression {
            cf.set_compression_type(DBCompressionType::Lz4);
        } else {
            cf.set_compression_type(DBCompressionType::None);
        }
        if let Some(retention_ms) = self.tombstone_retention_ms {
            cf.set_compaction_filter_factory(ExpiredTombstoneFilterFactory { retention_ms });
        }
        cf
    }
}

/// Creates one [`ExpiredTombstoneFilter`] per compaction run, reading the clock once.
///
/// A factory (rather than one shared `set_compaction_filter` closure) gives every compaction
/// its own filter, so nothing is shared between RocksDB's compaction threads, and the wall
/// clock is read once per compaction instead of once per entry.
struct ExpiredTombstoneFilterFactory {
    retention_ms: i64,
}

impl CompactionFilterFactory for ExpiredTombstoneFilterFactory {
    type Filter = ExpiredTombstoneFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> ExpiredTombstoneFilter {
        ExpiredTombstoneFilter {
            now_ms: wall_clock_ms(),
            retention_ms: self.retention_ms,
        }
    }

    fn name(&self) -> &CStr {
        c"autoglm-expired-tombstones"
    }
}

/// Drops state values that decode as a tombstone older than the retention at `now_ms`.
///
/// Everything else is kept: live entries, young tombstones, values that do not decode, and
/// every value when the clock could not be read. RocksDB turns a removed value into a delete
/// marker, so an older value of the same key in a lower level cannot reappear.
struct ExpiredTombstoneFilter {
    now_ms: Option<i64>,
    retention_ms: i64,
}

impl CompactionFilter for ExpiredTombstoneFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> FilterDecision {
        match self.now_ms {
            Some(now_ms) if is_expired_tombstone(value, now_ms, self.retention_ms) => {
                FilterDecision::Remove
            }
            _ => FilterDecision::Keep,
        }
    }

    fn name(&self) -> &CStr {
        c"autoglm-expired-tombstones"
    }
}

/// Milliseconds since the Unix epoch, or `None` if the clock is before it (then nothing is
/// purged).
fn wall_clock_ms() -> Option<i64> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// A handle to the RocksDB thread. Cheap to clone; all clones talk to the same thread.
#[derive(Debug, Clone)]
pub struct RocksBackend {
    commands: mpsc::Sender<Command>,
    path: Arc<PathBuf>,
}

type Reply<T> = oneshot::Sender<Result<T, StateError>>;

#[derive(Debug)]
enum Command {
    MultiGet {
        keys: Vec<Vec<u8>>,
        reply: Reply<Vec<Option<Vec<u8>>>>,
    },
    Write {
        request: WriteRequest,
        reply: Reply<()>,
    },
    Checkpoint {
        topic: String,
        partition: i32,
        reply: Reply<Option<i64>>,
    },
    DropPrefix {
        prefix: Vec<u8>,
        reply: Reply<()>,
    },
    Scan {
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
        reply: Reply<ScanPage>,
    },
    Compact {
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
}

impl RocksBackend {
    /// Opens (or creates) the store at `path` and starts its thread.
    ///
    /// Opening may replay the write-ahead log, so it blocks: from async code call it inside
    /// `tokio::task::spawn_blocking`.
    pub fn open(path: impl AsRef<Path>, options: RocksOptions) -> Result<RocksBackend, StateError> {
        let path = path.as_ref().to_path_buf();
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let cfs = [
            ColumnFamilyDescriptor::new(STATE_CF, options.state_cf_options(&cache)),
            ColumnFamilyDescriptor::new(CHECKPOINTS_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&options.db_options(), &path, cfs).map_err(|source| {
            StateError::Open {
                path: path.clone(),
                source,
            }
        })?;
        let (commands, receiver) = mpsc::channel(options.command_queue_len.max(1));
        let disable_wal = options.disable_wal;
        std::thread::Builder::new()
            .name("autoglm-rocksdb".into())
            .spawn(move || Worker::new(db, disable_wal).run(receiver))
            .map_err(StateError::Spawn)?;
        tracing::info!(path = %path.display(), wal = !disable_wal, "state store opened");
        Ok(RocksBackend {
            commands,
            path: Arc::new(path),
        })
    }

    /// Opens the store at `path` as [`open`](Self::open) does; but a store RocksDB finds corrupt
    /// when opening it (a damaged CURRENT, MANIFEST or write-ahead log) is not trusted: its
    /// directory is renamed to `<path>.corrupt-<unix ms>`, kept for a look, and an empty store
    /// is opened in its place, for the changelog to rebuild. Returns where the corrupt one went.
    /// Any other failure (the store locked by another process, no permission) is returned as
    /// it is.
    pub fn open_or_set_aside(
        path: impl AsRef<Path>,
        options: RocksOptions,
    ) -> Result<(RocksBackend, Option<PathBuf>), StateError> {
        let path = path.as_ref();
        match RocksBackend::open(path, options.clone()) {
            Err(StateError::Open { source, .. }) if source.kind() == ErrorKind::Corruption => {
                let millis = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".corrupt-{millis}"));
                let aside = PathBuf::from(aside);
                std::fs::rename(path, &aside).map_err(|e| StateError::SetAside {
                    path: path.to_path_buf(),
                    reason: source.to_string(),
                    source: e,
                })?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    reason = %source,
                    "the state store is corrupt: moved aside; an empty one is rebuilt from the changelog"
                );
                Ok((RocksBackend::open(path, options)?, Some(aside)))
            }
            other => other.map(|backend| (backend, None)),
        }
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Compacts the whole state column family now (flushing the memtable first), running the
    /// tombstone purge of [`RocksOptions::tombstone_retention_ms`] over every entry. RocksDB
    /// compacts on its own in the background; this is for tests and maintenance, and it blocks
    /// the store's thread (every other call waits) until the compaction is done. RocksDB's C API
    /// does not report compaction errors, so only a gone thread is an error here.
    pub async fn compact(&self) -> Result<(), StateError> {
        self.call(|reply| Command::Compact { reply }).await
    }

    /// Flushes and closes the store and waits until RocksDB has released it, so the same
    /// path can be opened again. Every other clone of this handle then gets
    /// [`StateError::BackendGone`].
    pub async fn close(self) -> Result<(), StateError> {
        self.call(|reply| Command::Close { reply }).await
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StateError> {
        let (reply, response) = oneshot::channel();
        // A send error only gives the command back: the thread is gone.
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StateError::BackendGone)?;
        response.await.map_err(|_| StateError::BackendGone)?
    }
}

impl KvBackend for RocksBackend {
    async fn multi_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.call(|reply| Command::MultiGet { keys, reply }).await
    }

    async fn write(&self, request: WriteRequest) -> Result<(), StateError> {
        if request.is_empty() {
            return Ok(());
        }
        self.call(|reply| Command::Write { request, reply }).await
    }

    async fn checkpoint(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        let topic = topic.to_owned();
        self.call(|reply| Command::Checkpoint {
            topic,
            partition,
            reply,
        })
        .await
    }

    async fn drop_prefix(&self, prefix: Vec<u8>) -> Result<(), StateError> {
        self.call(|reply| Command::DropPrefix { prefix, reply })
            .await
    }

    async fn scan_prefix(
        &self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ScanPage, StateError> {
        self.call(|reply| Command::Scan {
            prefix,
            start_after,
            limit,
            reply,
        })
        .await
    }
}

/// The thread side: owns the DB.
struct Worker {
    db: DB,
    write_options: WriteOptions,
    disable_wal: bool,
}

fn rocks(operation: &'static str) -> impl FnOnce(rocksdb::Error) -> StateError {
    move |source| StateError::Rocks { operation, source }
}

impl Worker {
    fn new(db: DB, disable_wal: bool) -> Worker {
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(disable_wal);
        Worker {
            db,
            write_options,
            disable_wal,
        }
    }

    fn run(self, mut receiver: mpsc::Receiver<Command>) {
        let mut close_reply = None;
        while let Some(command) = receiver.blocking_recv() {
            match command {
                Command::MultiGet { keys, reply } => {
                    let _ = reply.send(self.multi_get(&keys));
                }
                Command::Write { request, reply } => {
                    let _ = reply.send(self.write(request));
                }
                Command::Checkpoint {
                    topic,
                    partition,
                    reply,
                } => {
                    let _ = reply.send(self.checkpoint(&topic, partition));
                }
                Command::DropPrefix { prefix, reply } => {
                    let _ = reply.send(self.drop_prefix(&prefix));
                }
                Command::Scan {
                    prefix,
                    start_after,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(self.scan(&prefix, start_after.as_deref(), limit));
                }
                Command::Compact { reply } => {
                    let _ = reply.send(self.compact());
                }
                Command::Close { reply } => {
                    close_reply = Some(reply);
                    break;
                }
            }
        }
        // Queued commands are dropped with their reply senders: callers see BackendGone.
        drop(receiver);
        let flushed = self.flush_if_needed();
        if let Err(error) = &flushed {
            tracing::error!(%error, "state store flush on close failed; the changelog replay will cover it");
        }
        drop(self);
        tracing::info!("state store closed");
        if let Some(reply) = close_reply {
            let _ = reply.send(flushed);
        }
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StateError> {
        // Both column families are created by `open`; a miss means the store is broken.
        self.db
            .cf_handle(name)
            .ok_or(StateError::MissingColumnFamily(name))
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let cf = self.cf(STATE_CF)?;
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|value| {
                value
                    .map(|v| v.map(|slice| slice.to_vec()))
                    .map_err(rocks("multi_get"))
            })
            .collect()
    }

    fn write(&self, request: WriteRequest) -> Result<(), StateError> {
        let state = self.cf(STATE_CF)?;
        let checkpoints = self.cf(CHECKPOINTS_CF)?;
        let mut batch = WriteBatch::default();
        for (key, value) in &request.puts {
            match value {
                Some(value) => batch.put_cf(state, key, value),
                None => batch.delete_cf(state, key),
            }
        }
        for (topic, partition, offset) in &request.checkpoints {
            batch.put_cf(
                checkpoints,
                checkpoint_key(topic, *partition),
                offset.to_be_bytes(),
            );
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(rocks("write"))
    }

    fn checkpoint(&self, topic: &str, partition: i32) -> Result<Option<i64>, StateError> {
        let cf = self.cf(CHECKPOINTS_CF)?;
        self.db
            .get_pinned_cf(cf, checkpoint_key(topic, partition))
            .map_err(rocks("checkpoint read"))?
            .map(|value| decode_checkpoint(topic, partition, &value))
            .transpose()
    }

    fn drop_prefix(&self, prefix: &[u8]) -> Result<(), StateError> {
        let cf = self.cf(STATE_CF)?;
        let mut batch = WriteBatch::default();
        match prefix_successor(prefix) {
            Some(end) => batch.delete_range_cf(cf, prefix, &end),
            None => {
                // No finite upper bound (empty or all-0xFF prefix): delete key by key.
                let mut it = self.db.raw_iterator_cf(cf);
                it.seek(prefix);
                while let Some(key) = it.key() {
                    if !key.starts_with(prefix) {
                        break;
                    }
                    batch.delete_cf(cf, key);
                    it.next();
                }
                it.status().map_err(rocks("drop_prefix scan"))?;
            }
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(rocks("drop_prefix"))
    }

    fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, StateError> {
        let cf = self.cf(STATE_CF)?;
        let mut it = self.db.raw_iterator_cf(cf);
        let mut page = Vec::new();
        match start_after {
            Some(after) if after >= prefix => {
                it.seek(after);
                if it.key() == Some(after) {
                    it.next();
                }
            }
            _ => it.seek(prefix),
        }
        while page.len() < limit {
            let (Some(key), Some(value)) = (it.key(), it.value()) else {
                break;
            };
            if !key.starts_with(prefix) {
                break;
            }
            page.push((key.to_vec(), value.to_vec()));
            it.next();
        }
        it.status().map_err(rocks("scan"))?;
        Ok(page)
    }

    fn compact(&self) -> Result<(), StateError> {
        let state = self.cf(STATE_CF)?;
        self.db
            .compact_range_cf(state, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    fn flush_if_needed(&self) -> Result<(), StateError> {
        if !self.disable_wal {
            return Ok(());
        }
        let state = self.cf(STATE_CF)?;
        let checkpoints = self.cf(CHECKPOINTS_CF)?;
        self.db
            .flush_cfs_opt(&[state, checkpoints], &FlushOptions::default())
            .map_err(rocks("flush"))
    }
}
