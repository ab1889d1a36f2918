//! The backend contract, run against RocksDB (in a temporary directory) and the in-memory backend.

use std::time::{SystemTime, UNIX_EPOCH};

use autoglm_core::{Classify, ErrorClass, Version};
use autoglm_state::{
    KvBackend, MemoryBackend, RocksBackend, RocksOptions, StateEntry, WriteRequest,
};

fn small_options() -> RocksOptions {
    RocksOptions {
        block_cache_bytes: 1 << 20,
        write_buffer_bytes: 1 << 20,
        ..RocksOptions::default()
    }
}

fn put(key: &[u8], value: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    (key.to_vec(), Some(value.to_vec()))
}

async fn all(backend: &impl KvBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
    backend
        .scan_prefix(Vec::new(), None, usize::MAX)
        .await
        .expect("scan")
}

/// Behaviour every backend must share.
async fn contract(backend: &impl KvBackend) {
    // One write: puts, a delete of a missing key and two checkpoints, visible together.
    backend
        .write(WriteRequest {
            puts: vec![
                put(b"r\0b", b"2"),
                put(b"r\0a", b"1"),
                put(b"s\0a", b"3"),
                (b"r\0zz".to_vec(), None),
            ],
            checkpoints: vec![("changelog".into(), 0, 11), ("changelog".into(), 1, 7)],
        })
        .await
        .expect("write");
    assert_eq!(
        backend.checkpoint("changelog", 0).await.expect("ckpt"),
        Some(11)
    );
    assert_eq!(
        backend.checkpoint("changelog", 1).await.expect("ckpt"),
        Some(7)
    );
    assert_eq!(
        backend.checkpoint("changelog", 2).await.expect("ckpt"),
        None
    );
    assert_eq!(backend.checkpoint("other", 0).await.expect("ckpt"), None);

    // multi_get answers in the order of the keys, duplicates and misses included.
    let got = backend
        .multi_get(vec![
            b"s\0a".to_vec(),
            b"missing".to_vec(),
            b"r\0a".to_vec(),
            b"s\0a".to_vec(),
        ])
        .await
        .expect("multi_get");
    assert_eq!(
        got,
        vec![
            Some(b"3".to_vec()),
            None,
            Some(b"1".to_vec()),
            Some(b"3".to_vec())
        ]
    );
    assert!(
        backend
            .multi_get(Vec::new())
            .await
            .expect("empty")
            .is_empty()
    );

    // A delete and a checkpoint move in the same write.
    backend
        .write(WriteRequest {
            puts: vec![(b"r\0b".to_vec(), None)],
            checkpoints: vec![("changelog".into(), 0, 12)],
        })
        .await
        .expect("write");
    assert_eq!(
        backend.checkpoint("changelog", 0).await.expect("ckpt"),
        Some(12)
    );
    assert_eq!(
        all(backend).await,
        vec![put(b"r\0a", b"1"), put(b"s\0a", b"3")]
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect::<Vec<_>>()
    );

    // Paged prefix scans.
    let keys: Vec<_> = (0u8..5).map(|i| vec![b'p', 0, i]).collect();
    backend
        .write(WriteRequest {
            puts: keys.iter().map(|k| (k.clone(), Some(vec![9]))).collect(),
            checkpoints: Vec::new(),
        })
        .await
        .expect("write");
    let first = backend
        .scan_prefix(b"p\0".to_vec(), None, 2)
        .await
        .expect("scan");
    assert_eq!(
        first.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        keys[..2]
    );
    let second = backend
        .scan_prefix(b"p\0".to_vec(), Some(keys[1].clone()), 10)
        .await
        .expect("scan");
    assert_eq!(
        second.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        keys[2..]
    );

    // drop_prefix removes only that prefix, and leaves checkpoints alone.
    backend.drop_prefix(b"p\0".to_vec()).await.expect("drop");
    assert!(
        backend
            .scan_prefix(b"p".to_vec(), None, 10)
            .await
            .expect("scan")
            .is_empty()
    );
    assert_eq!(all(backend).await.len(), 2);
    assert_eq!(
        backend.checkpoint("changelog", 1).await.expect("ckpt"),
        Some(7)
    );

    // A prefix with no finite upper bound still works.
    backend
        .write(WriteRequest {
            puts: vec![put(&[0xFF, 0xFF, 1], b"x"), put(&[0xFF, 0xFE], b"y")],
            checkpoints: Vec::new(),
        })
        .await
        .expect("write");
    backend.drop_prefix(vec![0xFF, 0xFF]).await.expect("drop");
    assert_eq!(all(backend).await.len(), 3);
    backend.drop_prefix(Vec::new()).await.expect("drop all");
    assert!(all(backend).await.is_empty());
}

#[tokio::test]
async fn memory_backend_keeps_the_contract() {
    contract(&MemoryBackend::new()).await;
}

#[tokio::test]
async fn rocks_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = RocksBackend::open(dir.path(), small_options()).expect("open");
    contract(&backend).await;
    backend.close().await.expect("close");
}

/// A read of tens of thousands of keys, some from table files and some from the memtable,
/// answers in the order of the keys too, duplicates and misses included, the same as the
/// in-memory backend.
#[tokio::test]
async fn a_large_multi_get_answers_in_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksBackend::open(dir.path(), small_options()).expect("open");
    let memory = MemoryBackend::new();
    let key = |i: usize| format!("r\0{i}").into_bytes();
    let request = |keys: std::ops::Range<usize>| WriteRequest {
        puts: keys.map(|i| put(&key(i), &i.to_le_bytes())).collect(),
        checkpoints: Vec::new(),
    };
    // Keys below 15,000 go to table files (the compaction flushes the memtable first); the
    // rest stay in the memtable.
    rocks.write(request(0..15_000)).await.expect("write");
    rocks.compact().await.expect("compact");
    rocks.write(request(15_000..30_000)).await.expect("write");
    memory.write(request(0..30_000)).await.expect("write");
    // Backwards, keys from 30,000 up missing, and every 7th key twice.
    let keys: Vec<Vec<u8>> = (0..40_000)
        .rev()
        .flat_map(|i| {
            let again = (i % 7 == 0).then(|| key(i));
            std::iter::once(key(i)).chain(again)
        })
        .collect();
    let got = rocks.multi_get(keys.clone()).await.expect("multi_get");
    assert_eq!(got.len(), keys.len());
    assert_eq!(
        got,
        memory.multi_get(keys.clone()).await.expect("multi_get")
    );
    assert_eq!(got[0], None, "key 39999 was never written");
    assert_eq!(got.last(), Some(&Some(0usize.to_le_bytes().to_vec())));
    rocks.close().await.expect("close");
}

#[tokio::test]
async fn reopen_keeps_state_and_checkpoints() {
    for disable_wal in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = RocksOptions {
            disable_wal,
            ..small_options()
        };
        let backend = RocksBackend::open(dir.path(), options.clone()).expect("open");
        backend
            .write(WriteRequest {
                puts: vec![put(b"k1", b"v1"), put(b"k2", b"v2")],
                checkpoints: vec![("cl".into(), 3, 42)],
            })
            .await
            .expect("write");
        backend.close().await.expect("close");

        let backend = RocksBackend::open(dir.path(), options).expect("reopen");
        assert_eq!(
            backend
                .multi_get(vec![b"k2".to_vec(), b"k1".to_vec()])
                .await
                .expect("multi_get"),
            vec![Some(b"v2".to_vec()), Some(b"v1".to_vec())],
            "disable_wal = {disable_wal}"
        );
        assert_eq!(backend.checkpoint("cl", 3).await.expect("ckpt"), Some(42));
        backend.close().await.expect("close");
    }
}

#[tokio::test]
async fn calls_after_close_report_backend_gone_as_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = RocksBackend::open(dir.path(), small_options()).expect("open");
    let other = backend.clone();
    backend.close().await.expect("close");
    let error = other
        .multi_get(vec![b"k".to_vec()])
        .await
        .expect_err("closed");
    assert_eq!(error.class(), ErrorClass::Fatal);
}

#[tokio::test]
async fn opening_a_store_twice_is_a_fatal_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = RocksBackend::open(dir.path(), small_options()).expect("open");
    let error = RocksBackend::open(dir.path(), small_options()).expect_err("locked");
    assert_eq!(error.class(), ErrorClass::Fatal);
    backend.close().await.expect("close");
}

/// A store RocksDB calls corrupt when opening it is moved aside, whole, and an empty one takes
/// its place (the changelog rebuilds it); a store locked by another process is never moved.
#[tokio::test]
async fn a_corrupt_store_is_set_aside_and_an_empty_one_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state");
    let backend = RocksBackend::open(&path, small_options()).expect("open");
    backend
        .write(WriteRequest {
            puts: vec![(b"k".to_vec(), Some(b"v".to_vec()))],
            checkpoints: vec![("changelog".to_owned(), 0, 7)],
        })
        .await
        .expect("write");
    backend.close().await.expect("close");
    let (locked, moved) =
        RocksBackend::open_or_set_aside(&path, small_options()).expect("a sound store opens");
    assert_eq!(moved, None);
    let error = RocksBackend::open_or_set_aside(&path, small_options()).expect_err("locked");
    assert!(
        matches!(error, autoglm_state::StateError::Open { .. }),
        "{error}"
    );
    assert!(path.exists(), "a locked store stays where it is");
    locked.close().await.expect("close");

    // A damaged CURRENT, as a disk or a careless hand leaves it.
    std::fs::write(path.join("CURRENT"), b"MANIFEST-99999\xff").expect("damage");
    let (backend, moved) = RocksBackend::open_or_set_aside(&path, small_options()).expect("open");
    let moved = moved.expect("set aside");
    assert!(moved.join("CURRENT").exists(), "kept whole for a look");
    assert_eq!(moved.parent(), path.parent());
    let name = moved.file_name().map(|n| n.to_string_lossy().into_owned());
    assert!(
        name.is_some_and(|n| n.starts_with("state.corrupt-")),
        "{moved:?}"
    );
    assert_eq!(
        backend.checkpoint("changelog", 0).await.expect("read"),
        None,
        "empty: the changelog rebuilds it"
    );
    let got = backend.multi_get(vec![b"k".to_vec()]).await.expect("read");
    assert_eq!(got, vec![None]);
    backend.close().await.expect("close");
}

#[test]
fn async_api_is_usable_from_a_blocking_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let backend = RocksBackend::open(&path, small_options()).expect("open");
            let handle = tokio::runtime::Handle::current();
            handle
                .block_on(backend.write(WriteRequest {
                    puts: vec![put(b"k", b"v")],
                    checkpoints: Vec::new(),
                }))
                .expect("write");
            let got = handle
                .block_on(backend.multi_get(vec![b"k".to_vec()]))
                .expect("multi_get");
            assert_eq!(got, vec![Some(b"v".to_vec())]);
            handle.block_on(backend.close()).expect("close");
        })
        .await
        .expect("join");
    });
}

const RETENTION_MS: i64 = 60 * 60 * 1_000;

fn wall_clock_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since_epoch.as_millis()).expect("ms fit i64")
}

fn encoded(deleted: bool, updated_at_ms: i64) -> Vec<u8> {
    StateEntry {
        version: Version([3, 0, 0]),
        deleted,
        snapshot: false,
        updated_at_ms,
    }
    .encode()
    .to_vec()
}

/// The purge fixture: `(key, value, survives a purge at now with RETENTION_MS)`.
fn purge_fixture(now_ms: i64) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
    let old = now_ms - 2 * RETENTION_MS;
    vec![
        (b"r\0old-tombstone".to_vec(), encoded(true, old), false),
        (
            b"r\0ancient-tombstone".to_vec(),
            encoded(true, i64::MIN),
            false,
        ),
        (b"r\0fresh-tombstone".to_vec(), encoded(true, now_ms), true),
        (
            b"r\0tombstone-within-retention".to_vec(),
            encoded(true, now_ms - RETENTION_MS / 2),
            true,
        ),
        (b"r\0old-live".to_vec(), encoded(false, old), true),
        (b"r\0ancient-live".to_vec(), encoded(false, i64::MIN), true),
        (b"r\0not-an-entry".to_vec(), vec![1, 2, 3], true),
        // A tombstone's bytes with an unknown format byte: does not decode, so it is kept.
        (
            b"r\0unknown-format".to_vec(),
            {
                let mut bytes = encoded(true, old);
                bytes[0] = 0xEE;
                bytes
            },
            true,
        ),
    ]
}

async fn write_fixture(backend: &impl KvBackend, fixture: &[(Vec<u8>, Vec<u8>, bool)]) {
    backend
        .write(WriteRequest {
            puts: fixture
                .iter()
                .map(|(k, v, _)| (k.clone(), Some(v.clone())))
                .collect(),
            checkpoints: vec![("changelog".into(), 0, 5)],
        })
        .await
        .expect("write");
}

/// Asserts that exactly the entries marked as surviving are still there, unchanged.
async fn assert_purged(backend: &impl KvBackend, fixture: &[(Vec<u8>, Vec<u8>, bool)]) {
    let got = backend
        .multi_get(fixture.iter().map(|(k, _, _)| k.clone()).collect())
        .await
        .expect("multi_get");
    for ((key, value, survives), got) in fixture.iter().zip(got) {
        let expected = survives.then(|| value.clone());
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(key));
    }
    assert_eq!(
        backend.checkpoint("changelog", 0).await.expect("ckpt"),
        Some(5),
        "checkpoints are never purged"
    );
}

#[tokio::test]
async fn compaction_purges_only_expired_tombstones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = RocksOptions {
        tombstone_retention_ms: Some(RETENTION_MS),
        ..small_options()
    };
    let backend = RocksBackend::open(dir.path(), options).expect("open");
    let fixture = purge_fixture(wall_clock_ms());
    write_fixture(&backend, &fixture).await;
    // Before a compaction everything is still there.
    let everything: Vec<_> = fixture
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone(), true))
        .collect();
    assert_purged(&backend, &everything).await;

    backend.compact().await.expect("compact");
    assert_purged(&backend, &fixture).await;

    // The purge is durable: it is still gone after a reopen.
    backend.close().await.expect("close");
    let backend = RocksBackend::open(dir.path(), small_options()).expect("reopen");
    assert_purged(&backend, &fixture).await;
    backend.close().await.expect("close");
}

#[tokio::test]
async fn compaction_without_retention_keeps_every_tombstone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = RocksBackend::open(dir.path(), small_options()).expect("open");
    assert_eq!(small_options().tombstone_retention_ms, None);
    let fixture = purge_fixture(wall_clock_ms());
    write_fixture(&backend, &fixture).await;
    backend.compact().await.expect("compact");
    let everything: Vec<_> = fixture
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone(), true))
        .collect();
    assert_purged(&backend, &everything).await;
    backend.close().await.expect("close");
}

#[tokio::test]
async fn purged_tombstone_does_not_bring_back_the_older_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = RocksOptions {
        tombstone_retention_ms: Some(RETENTION_MS),
        ..small_options()
    };
    let backend = RocksBackend::open(dir.path(), options).expect("open");
    let now = wall_clock_ms();
    let key = b"r\0k".to_vec();
    // The live row goes down to the bottom level first, then the expired tombstone lands above it.
    backend
        .write(WriteRequest {
            puts: vec![(key.clone(), Some(encoded(false, now)))],
            checkpoints: Vec::new(),
        })
        .await
        .expect("write row");
    backend.compact().await.expect("compact");
    backend
        .write(WriteRequest {
            puts: vec![(key.clone(), Some(encoded(true, now - 2 * RETENTION_MS)))],
            checkpoints: Vec::new(),
        })
        .await
        .expect("write tombstone");
    backend.compact().await.expect("compact");
    assert_eq!(
        backend.multi_get(vec![key]).await.expect("multi_get"),
        vec![None]
    );
    backend.close().await.expect("close");
}

#[tokio::test]
async fn memory_backend_purges_like_a_compaction() {
    let backend = MemoryBackend::new();
    let now = 1_000_000_000;
    let fixture = purge_fixture(now);
    write_fixture(&backend, &fixture).await;
    let expected_purged = fixture.iter().filter(|(_, _, survives)| !survives).count();
    assert_eq!(
        backend.purge_expired_tombstones(now, RETENTION_MS),
        expected_purged
    );
    assert_purged(&backend, &fixture).await;
    assert_eq!(backend.purge_expired_tombstones(now, RETENTION_MS), 0);
}
