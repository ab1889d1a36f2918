//! Per-record cost of one guard batch: 1000 records → one multi_get, 1000 decisions, one
//! WriteBatch commit, over a store pre-loaded with 100k keys (`AUTOGLM_GUARD_KEYS` sets another
//! count, e.g. 10000000 to see RocksDB once the state outgrows its block cache). RocksDB runs
//! with and without the guard's cache of committed entries at its default size (32,768): with
//! 100k keys about a third of the reads hit it; `AUTOGLM_GUARD_KEYS=20000` shows a working set
//! that fits.

use autoglm_core::Version;
use autoglm_state::{
    Change, GuardInput, KvBackend, MemoryBackend, RocksBackend, RocksOptions, VersionGuard,
    state_key,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const BATCH: usize = 1_000;

/// `state.cache_entries`' default.
const CACHE_ENTRIES: usize = 32_768;

fn preloaded_keys() -> u64 {
    std::env::var("AUTOGLM_GUARD_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// State keys as the runtime builds them: the route, then the key fields as a JSON array.
fn keys() -> Vec<Vec<u8>> {
    (0..preloaded_keys())
        .map(|i| state_key("crm_customers", format!("[{i}]").as_bytes()))
        .collect()
}

fn inputs<'a>(keys: &'a [Vec<u8>], picks: &[usize], version: u64) -> Vec<GuardInput<'a>> {
    picks
        .iter()
        .map(|&i| GuardInput {
            key: &keys[i],
            change: Change::Upsert(Version([version, 0, 0])),
            is_snapshot: false,
        })
        .collect()
}

/// Deterministic pseudo-random key picks (xorshift), distinct per round.
fn picks(round: u64, keys: usize) -> Vec<usize> {
    let mut x = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..BATCH)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % keys as u64) as usize
        })
        .collect()
}

fn preload<B: KvBackend>(rt: &Runtime, guard: &mut VersionGuard<B>, keys: &[Vec<u8>]) {
    rt.block_on(async {
        let all: Vec<usize> = (0..keys.len()).collect();
        for chunk in all.chunks(10_000) {
            guard
                .process(&inputs(keys, chunk, 1), 0)
                .await
                .expect("preload process");
            guard
                .commit(vec![("changelog".into(), 0, 0)])
                .await
                .expect("preload commit");
        }
    });
}

fn bench_batch<B: KvBackend>(c: &mut Criterion, name: &str, backend: B, cache_entries: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let keys = keys();
    let mut guard = VersionGuard::new(backend, i64::MAX).with_cache(cache_entries);
    let started = std::time::Instant::now();
    preload(&rt, &mut guard, &keys);
    eprintln!(
        "{name}: preloaded {} keys in {:.1?}",
        keys.len(),
        started.elapsed()
    );

    let mut group = c.benchmark_group("guard_batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut round = 1u64;
    group.bench_function(name, |b| {
        b.iter(|| {
            round += 1;
            let picks = picks(round, keys.len());
            let batch = inputs(&keys, &picks, round);
            rt.block_on(async {
                let outcome = guard.process(&batch, 0).await.expect("process");
                guard
                    .commit(vec![("changelog".into(), 0, round as i64)])
                    .await
                    .expect("commit");
                outcome.counts
            })
        });
    });
    group.finish();
}

fn guard_batches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let of = format!("1000_of_{}k", preloaded_keys() / 1000);
    for cache in [0, CACHE_ENTRIES] {
        let dir = dir.path().join(format!("cache-{cache}"));
        let rocks = RocksBackend::open(&dir, RocksOptions::default()).expect("open rocksdb");
        let name = match cache {
            0 => format!("rocksdb_{of}"),
            n => format!("rocksdb_{of}_cache_{n}"),
        };
        bench_batch(c, &name, rocks, cache);
    }
    bench_batch(c, &format!("memory_{of}"), MemoryBackend::new(), 0);
}

criterion_group!(benches, guard_batches);
criterion_main!(benches);
