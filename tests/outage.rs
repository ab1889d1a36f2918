//! The broker down for a minute in the middle of a run: its process killed, started again 60 s
//! later. The one test in this binary, as it takes the broker from every other test; cargo runs
//! test binaries one at a time.

mod common;

use std::time::Duration;

use autoglm_tests::{repo_root, stack};
use common::{Streaming, Topics, json_upsert_config, tempfile_dir};

/// The processor streams while the broker is killed (`stack.sh bounce-kafka hard 60`), with
/// input before and after. Whatever the kill interrupted (a transaction, a poll, a commit), the
/// run waits the broker out by itself: no exit, nothing lost, dead-lettered or written twice,
/// and every input record committed. The input stops while the broker is down, so that no
/// retried send of the test's own producer duplicates an input record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_the_broker_loses_duplicates_and_dead_letters_nothing() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "brokerless", "out", 3).await;
    let state = tempfile_dir();
    let mut config = json_upsert_config(&stack, &t, &state, "", "");
    config.backoff.initial_interval = Duration::from_millis(200);
    config.backoff.max_interval = Duration::from_secs(2);
    let streaming = Streaming::start(&kafka, &t, config);
    tokio::time::sleep(Duration::from_secs(8)).await;
    streaming.pause().await;
    let bounced = tokio::task::spawn_blocking(|| {
        std::process::Command::new("bash")
            .arg(repo_root().join("deploy/local/stack.sh"))
            .args(["bounce-kafka", "hard", "60"])
            .status()
            .expect("stack.sh")
    })
    .await
    .expect("bounce");
    assert!(
        bounced.success(),
        "stack.sh bounce-kafka hard 60: {bounced}"
    );
    streaming.resume();
    tokio::time::sleep(Duration::from_secs(5)).await;
    streaming.finish(&kafka, &t, Duration::from_secs(180)).await;
    let _ = std::fs::remove_dir_all(&state);
}
