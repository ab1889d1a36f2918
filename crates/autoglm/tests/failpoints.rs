//! A crash at each point of the commit path, then a restart: every accepted version is in the
//! target exactly once. Needs the `failpoints` feature (`make test` enables it): the binary
//! aborts — no cleanup, like `kill -9` — at `AUTOGLM_CRASH_AT`.
//!
//! Each crash test crashes in its first transaction, then feeds an exact replay of that input
//! and then new versions: had the restart lost the crashed transaction's state, the replay
//! would be emitted again; had it lost its output, records would be missing.
//!
//! The stop tests stop the whole process instead (`AUTOGLM_STOP_AT`: SIGSTOP, as in a VM freeze
//! or a long stall) at each point of its fifth batch, past its session and the transaction
//! timeout (or, in one, past the session only), while a second instance takes its partitions;
//! then it continues into a group that moved on. Each is one interleaving, the same on every
//! run.

mod common;

use std::time::Duration;

use autoglm_tests::stack;
use common::{Job, assert_exactly_once, expected, signal, until_stopped, updates};

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
    assert_exactly_once(&job, &want, &got, count);
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

/// An instance stops dead (SIGSTOP: its heartbeats too) at `point` of its 5th batch, with that
/// batch and the records polled ahead of it in hand, stays stopped past its session (10 s) and the
/// transaction timeout (15 s) while a second instance takes every partition, then resumes into
/// a group that moved on. Whatever it does then, every accepted version is in the target
/// exactly once.
async fn stopped_past_the_session_at(point: &str) {
    stopped_at(point, Stall::PastTheTransactionTimeout).await;
}

/// How long the stopped instance stays stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// 22 s: past its session (10 s) and its transaction's timeout (15 s).
    PastTheTransactionTimeout,
    /// Until the other instance has taken its partitions (past its session), but well within
    /// its transaction's timeout: an open transaction is still alive when it resumes.
    PastTheSessionOnly,
}

async fn stopped_at(point: &str, stall: Stall) {
    let stack = stack().await;
    let job = Job::with_partitions(&stack, "flush_interval_ms: 100", 500, 4).await;
    let first = updates(37, 20_000, 400);
    let then: Vec<_> = updates(38, 10_000, 400)
        .into_iter()
        .map(|(key, version)| (key, version.map(|v| v + 1_000)))
        .collect();
    job.produce(&first).await;

    let stop = format!("{point}:5");
    let a = job.start_instance_with(0, 0, 40, &[("AUTOGLM_STOP_AT", &stop)]);
    until_stopped(&a, &job.log(0)).await;
    let stopped = std::time::Instant::now();
    let b = job.start_instance(1, 1, 20);
    match stall {
        Stall::PastTheTransactionTimeout => tokio::time::sleep(Duration::from_secs(22)).await,
        Stall::PastTheSessionOnly => {
            // b is assigned a's partitions once a's session expires (10 s); its restore starts
            // right after.
            until_logged(&job, 1, "partitions assigned partitions=[(").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(
                stopped.elapsed() < Duration::from_secs(14),
                "too slow to resume within the transaction timeout: {:?}",
                stopped.elapsed()
            );
        }
    }
    signal(&a, "-CONT");
    job.produce(&then).await;
    let a_status = job.exit_of(a, 0).await;
    let b_status = job.exit_of(b, 1).await;
    let log = std::fs::read_to_string(job.log(0)).expect("log");
    assert!(
        log.contains(&format!("stop point {point}: resumed")),
        "{log}"
    );
    assert!(
        a_status.success() || log.contains("fenced"),
        "a: {a_status}; see {}",
        job.log(0).display()
    );
    // The case under test: a's transaction was still alive and committed when it woke (had the
    // broker aborted it, a would have been fenced).
    assert!(
        stall == Stall::PastTheTransactionTimeout || !log.contains("fenced"),
        "a was fenced: its transaction did not outlive the stall; see {}",
        job.log(0).display()
    );
    assert!(
        b_status.success(),
        "b: {b_status}; see {}",
        job.log(1).display()
    );
    job.run_to_idle(2).await;

    let all = [&first[..], &then[..]].concat();
    let want = expected(&all);
    let (got, count) = job.output().await;
    assert_exactly_once(&job, &want, &got, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_before_produce() {
    stopped_past_the_session_at("before_produce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_after_produce() {
    stopped_past_the_session_at("after_produce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_after_send_offsets() {
    stopped_past_the_session_at("after_send_offsets").await;
}

/// The stall that outlives the session but not the transaction: the stopped instance's offsets
/// were accepted before its session expired, so its transaction commits when it resumes, after
/// the other instance took its partitions and restored their state. The restore must wait for
/// that transaction (a restore that read only to the last stable offset missed its state
/// entries, and later exact replays of those versions were emitted again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_after_send_offsets_past_the_session_only() {
    stopped_at("after_send_offsets", Stall::PastTheSessionOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_after_commit() {
    stopped_past_the_session_at("after_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_after_the_state_write() {
    stopped_past_the_session_at("after_state_write").await;
}

/// Waits (up to a minute) until run `run`'s log holds `text`.
async fn until_logged(job: &Job, run: usize, text: &str) {
    for _ in 0..600 {
        if std::fs::read_to_string(job.log(run)).is_ok_and(|log| log.contains(text)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "run {run} never logged {text:?}; see {}",
        job.log(run).display()
    );
}
