//! The real binary, killed with SIGKILL mid-stream and restarted, against the real broker: the
//! target holds every accepted version exactly once, in order.

mod common;

use std::time::Duration;

use autoglm_demo::read_uncommitted;
use autoglm_tests::stack;
use common::{Job, assert_exactly_once, expected, updates};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_emits_each_accepted_version_once() {
    let stack = stack().await;
    let job = Job::new(&stack, "flush_interval_ms: 50", 300).await;
    let records = updates(7, 60_000, 200);

    // The stream keeps arriving while the processor is killed and restarted.
    let feed = {
        let records = records.clone();
        let job = &job;
        async move { job.produce(&records).await }
    };
    let kills = async {
        for (run, after_ms) in [2500, 1200, 3100, 1500, 2200, 1000, 2800, 1700]
            .into_iter()
            .enumerate()
        {
            // Each transaction stays open, its records delivered, for 40 ms before it commits,
            // so that some kills land inside one (the check at the end).
            let mut child = job.start(run, &[("AUTOGLM_PAUSE_AT", "after_produce:40")]);
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            assert!(
                child.try_wait().expect("status").is_none(),
                "run {run} stopped before it was killed; see {}",
                job.log(run).display()
            );
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    };
    tokio::join!(feed, kills);
    job.run_to_idle(8).await;

    let (got, count) = job.output().await;
    let want = expected(&records);
    assert_exactly_once(&job, &want, &got, count);
    // The test of the test: some kill hit an open transaction, whose records were aborted.
    let all = read_uncommitted(job.kafka(), None, &job.target, Duration::from_secs(3))
        .await
        .expect("read target uncommitted");
    assert!(
        all.len() > count,
        "no kill hit an open transaction ({count} records either way)"
    );
    assert_eq!(job.dead_letters().await, 0);
}
