//! Scale out and in while the stream flows: instances join, leave cleanly (SIGTERM), and one is
//! killed and restarted; partitions move between instances with stale local state. The target
//! holds every accepted version exactly once, in order.

mod common;

use std::time::Duration;

use autoglm_tests::stack;
use common::{Job, assert_exactly_once, expected, signal, terminate, updates};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_join_leave_and_crash_without_duplicates_or_losses() {
    let stack = stack().await;
    let job = Job::with_partitions(&stack, "flush_interval_ms: 100", 500, 6).await;
    let records = updates(23, 60_000, 300);

    let feed = {
        let records = records.clone();
        let job = &job;
        async move { job.produce(&records).await }
    };
    let churn = async {
        let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
        let mut a = job.start_instance(0, 0, 30);
        let mut b = job.start_instance(1, 1, 30);
        pause(3_000).await;
        let mut c = job.start_instance(2, 2, 30); // scale out
        pause(3_000).await;
        let status = terminate(&mut b); // scale in, cleanly
        assert!(
            status.success(),
            "SIGTERM drains and exits 0: {status}; see {}",
            job.log(1).display()
        );
        pause(2_000).await;
        a.kill().expect("SIGKILL"); // a crash, then a restart with the same identity
        a.wait().expect("reaped");
        let a = job.start_instance(3, 0, 30);
        pause(2_000).await;
        let mut d = job.start_instance(4, 1, 30); // b comes back: its partitions' state is stale
        pause(3_000).await;
        c.kill().expect("SIGKILL"); // a crash without restart: its partitions move
        c.wait().expect("reaped");
        let _ = terminate(&mut d);
        a
    };
    let ((), a) = tokio::join!(feed, churn);
    let status = job.exit_of(a, 3).await;
    assert!(
        status.success(),
        "the last instance drains everything and exits: {status}"
    );
    // Anything still held by a crashed member's session is taken by one more run.
    let last = job.start_instance(5, 2, 15);
    let status = job.exit_of(last, 5).await;
    assert!(status.success(), "{status}; see {}", job.log(5).display());

    let (got, count) = job.output().await;
    let want = expected(&records);
    assert_exactly_once(&job, &want, &got, count);
    assert_eq!(job.dead_letters().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_is_fenced_and_commits_nothing_twice() {
    let stack = stack().await;
    let job = Job::with_partitions(&stack, "flush_interval_ms: 100", 500, 4).await;
    let records = updates(31, 40_000, 200);

    let feed = {
        let records = records.clone();
        let job = &job;
        async move { job.produce(&records).await }
    };
    let pause = async {
        let a = job.start_instance(0, 0, 40);
        let b = job.start_instance(1, 1, 40);
        tokio::time::sleep(Duration::from_secs(4)).await;
        // Beyond the session (10 s) and the transaction timeout (15 s): b takes a's partitions,
        // the broker aborts a's open transaction.
        signal(&a, "-STOP");
        tokio::time::sleep(Duration::from_secs(22)).await;
        signal(&a, "-CONT");
        let a_status = job.exit_of(a, 0).await;
        (a_status, b)
    };
    let ((), (a_status, b)) = tokio::join!(feed, pause);
    let log = std::fs::read_to_string(job.log(0)).expect("log");
    // Resumed, a either rejoined and went on, or was fenced and stopped with one clear line.
    assert!(
        a_status.success() || log.contains("fenced") || log.contains("Fenced"),
        "a: {a_status}\n{log}"
    );
    let b_status = job.exit_of(b, 1).await;
    assert!(
        b_status.success(),
        "b: {b_status}; see {}",
        job.log(1).display()
    );
    job.run_to_idle(2).await;

    let (got, count) = job.output().await;
    let want = expected(&records);
    assert_exactly_once(&job, &want, &got, count);
}
