//! A route's `rate_limit` (the origin document's per-service maximum QPS) against the real
//! broker: the limited route's committed input rate, read from the processor's own metrics over
//! 20 s, stays within 10% of its limit, and an unlimited route in the same process is not
//! slowed by it (only the limited route's partitions are paused, not the consumer).

mod common;

use std::time::{Duration, Instant};

use autoglm_tests::{stack, unique};
use common::{Job, Names, input};

const LIMIT: f64 = 400.0;
const RECORDS: usize = 14_000;
/// A quarter of a second's worth: a paused route must resume on time, not when the loop next polls.
const BURST: u32 = 100;

/// `autoglm_pipeline_input_records_total{route="<route>"}` from the metrics page.
async fn input_total(port: u16, route: &str) -> f64 {
    let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("metrics");
    let page = page.text().await.expect("metrics text");
    let prefix = format!("autoglm_pipeline_input_records_total{{route=\"{route}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_route_keeps_its_rate_and_the_route_beside_it_is_not_slowed() {
    let stack = stack().await;
    let names = |prefix: &str| Names {
        source: unique(&format!("in-{prefix}")),
        target: unique(&format!("out-{prefix}")),
        dlq: unique(&format!("dlq-{prefix}")),
        group: unique("g-rate"),
    };
    // The second job only creates the free route's topics and produces its input.
    let free = Job::with_names(
        &stack,
        names("free"),
        &format!("bootstrap_servers: \"{}\"", stack.bootstrap),
        "",
        "flush_interval_ms: 100",
        500,
        3,
    )
    .await;
    let port = free_port();
    let second_route = format!(
        "    rate_limit: {{ records_per_second: {LIMIT}, burst: {BURST} }}
  - name: free
    source: {{ topic: {}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: rev }}
    targets: [ {{ topic: {}, format: json }} ]
    dlq_topic: {}
metrics: {{ listen: \"127.0.0.1:{port}\" }}
",
        free.source, free.target, free.dlq
    );
    let limited = Job::with_names(
        &stack,
        names("limited"),
        &format!("bootstrap_servers: \"{}\"", stack.bootstrap),
        &second_route,
        "flush_interval_ms: 100",
        500,
        3,
    )
    .await;
    let records = input(11, RECORDS, 1_000, false);
    limited.produce(&records).await;
    free.produce(&records).await;

    let mut child = limited.start(0, &[]);
    // From the first committed input of the limited route…
    let deadline = Instant::now() + Duration::from_secs(120);
    let (started, at_start) = loop {
        assert!(Instant::now() < deadline, "no input committed within 120 s");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited early ({status}); see {}", limited.log(0).display());
        }
        if let Ok(page) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await
            && page.status().is_success()
        {
            let n = input_total(port, "accounts").await;
            if n > 0.0 {
                break (Instant::now(), n);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // …the free route must finish while the limited one is still far from done…
    let mut free_done = None;
    while started.elapsed() < Duration::from_secs(20) {
        if free_done.is_none() && input_total(port, "free").await >= RECORDS as f64 {
            free_done = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // …and over 20 s the limited route's rate stays within 10% of its limit.
    let at_end = input_total(port, "accounts").await;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = (at_end - at_start) / elapsed;
    let _ = common::terminate(&mut child);
    let free_done = free_done.unwrap_or_else(|| {
        panic!(
            "the unlimited route did not finish its {RECORDS} records within 20 s; see {}",
            limited.log(0).display()
        )
    });
    assert!(
        (rate - LIMIT).abs() <= LIMIT * 0.1,
        "limited route ran at {rate:.1} records/s over {elapsed:.1} s, limit {LIMIT}; see {}",
        limited.log(0).display()
    );
    assert!(
        free_done < Duration::from_secs(15),
        "the unlimited route took {free_done:?}"
    );
    eprintln!(
        "limited route: {rate:.1} records/s over {elapsed:.1} s (limit {LIMIT}); unlimited route: \
         {RECORDS} records in {free_done:?}"
    );
}
