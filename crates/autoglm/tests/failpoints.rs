//! A crash at each point of the commit path, then a restart: every accepted version is in the
//! target exactly once. Needs the `failpoints` feature (`make test` enables it): the binary
//! aborts — no cleanup, like `kill -9` — at `AUTOGLM_CRASH_AT`.
//!
//! Each test crashes in its first transaction, then feeds an exact replay of that input and
//! then new versions: had the restart lost the crashed transaction's state, the replay would be
//! emitted again; had it lost its output, records would be missing.

mod common;

use autoglm_tests::stack;
use common::{Job, expected, updates};

async fn crash_then_restart(point: &str) {
    let stack = stack().await;
    // One long transaction holds the whole first stream, so the crash hits all of it.
    let job = Job::new(&stack, "flush_interval_ms: 1500", 100_000).await;
    let first = updates(11, 2_000, 100);
    job.produce(&first).await;

    let child = job.start(0, &[("AUTOGLM_CRASH_AT", point)]);
    let status = job.exit_of(child, 0).await;
    assert!(
        !status.success(),
        "the process should have crashed at {point}; see {}",
        job.log(0).display()
    );
    let log = std::fs::read_to_string(job.log(0)).expect("log");
    assert!(
        log.contains(&format!("crash point {point}")),
        "crashed elsewhere: {log}"
    );

    // The replay first: had the restart lost the crashed transaction's state, it would be
    // emitted again. Then new versions of every key.
    let fresh: Vec<_> = updates(12, 1_000, 100)
        .into_iter()
        .map(|(key, version)| (key, version.map(|v| v + 1_000)))
        .collect();
    job.produce(&first).await;
    job.produce(&fresh).await;
    job.run_to_idle(1).await;

    let all: Vec<_> = [&first[..], &first[..], &fresh[..]].concat();
    let want = expected(&all);
    let (got, count) = job.output().await;
    assert_eq!(count, want.values().map(Vec::len).sum::<usize>(), "{point}");
    assert_eq!(got, want, "{point}: each accepted version once, in order");
    assert_eq!(job.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_produce() {
    crash_then_restart("before_produce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_produce() {
    crash_then_restart("after_produce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_send_offsets() {
    crash_then_restart("after_send_offsets").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_before_the_state_write() {
    crash_then_restart("after_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_state_write() {
    crash_then_restart("after_state_write").await;
}
