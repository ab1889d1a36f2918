//! The processor's group member against the real broker: closing it while it owns partitions.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use autoglm_demo::recreate_topics;
use autoglm_runtime::GroupContext;
use autoglm_tests::{stack, unique};
use prometheus::{IntGauge, IntGaugeVec, Opts};
use rdkafka::consumer::Consumer;

/// A member that leaves the group serves its last revoke inside the consumer's close, on the
/// thread that closes it, with the group's queue forwarded to that thread. The context's
/// callbacks run there too: one that asked librdkafka's main thread for the assignment waited
/// for an answer only its own thread could give, and the close never returned (the pipeline
/// test and a scale test hung in CI that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_owns_partitions_closes_and_says_it_owns_none() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let topic = unique("group");
    recreate_topics(&kafka, &[&topic], 3).await.expect("topic");
    for round in 0..5 {
        let owned = IntGauge::new("assigned_partitions", "partitions owned").expect("gauge");
        let lag = IntGaugeVec::new(Opts::new("lag", "lag"), &["topic", "partition"]).expect("lag");
        let consumer = kafka
            .member_consumer(
                &unique("g"),
                "member-0",
                GroupContext::new(owned.clone(), lag),
            )
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        // recv() serves the rebalance that assigns the partitions.
        let deadline = Instant::now() + Duration::from_secs(30);
        while owned.get() < 3 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no assignment in 30 s"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
        // As the pipeline stops: unsubscribe, then close at once. A plain thread, not the
        // runtime's blocking pool, so that a hung close fails the test instead of hanging it.
        consumer.unsubscribe();
        let (closed, close) = mpsc::channel();
        std::thread::spawn(move || {
            drop(consumer);
            let _ = closed.send(());
        });
        close
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("round {round}: the consumer did not close in 20 s"));
        assert_eq!(owned.get(), 0, "round {round}: revoked on leaving");
    }
}
