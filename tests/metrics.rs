//! The metrics endpoint of a real run against the real broker: what `/metrics` says is what the
//! run committed (its `RunSummary`), `/ready` turns from 503 to 200 once the first assignment is
//! restored, `/health` is 200 while the loop runs, and the port closes with the pipeline.

use std::time::{Duration, Instant};

use autoglm_config::Overrides;
use autoglm_demo::recreate_topics;
use autoglm_runtime::{Metrics, Pipeline, RunOptions, RunSummary};
use autoglm_tests::{Stack, produce_plain, repo_root, stack, unique};

/// The sum of the samples of `name` whose labels include all of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a sample value"))
        .sum()
}

/// `(status, body)` of `GET http://addr/path`.
async fn get(client: &reqwest::Client, metrics: &Metrics, path: &str) -> (u16, String) {
    let addr = metrics.local_addr().expect("the endpoint is bound");
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Waits until `run` has bound the endpoint (port 0: the system picks one).
async fn bound(metrics: &Metrics) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.local_addr().is_none() {
        assert!(Instant::now() < deadline, "the endpoint was never bound");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `/ready` (and `/health`, which must stay 200) until ready; returns the statuses seen.
async fn until_ready(client: &reqwest::Client, metrics: &Metrics) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let (health, body) = get(client, metrics, "/health").await;
        assert_eq!(health, 200, "/health while the loop runs: {body}");
        let (ready, _) = get(client, metrics, "/ready").await;
        if seen.last() != Some(&ready) {
            seen.push(ready);
        }
        if ready == 200 {
            return seen;
        }
        assert!(Instant::now() < deadline, "never ready: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(
    stack: &Stack,
    group: &str,
    source: &str,
    target: &str,
    dlq: &str,
) -> (autoglm_config::Config, std::path::PathBuf) {
    let state = std::env::temp_dir().join(unique("autoglm-state"));
    std::fs::create_dir_all(&state).expect("state dir");
    let yaml = format!(
        r#"
kafka: {{ bootstrap_servers: "{bootstrap}", group_id: {group} }}
event_queue: {{ storage_path: {state} }}
metrics: {{ listen: "127.0.0.1:0" }}
routes:
  - name: accounts
    source: {{ topic: {source}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: rev }}
    mapping:
      fields:
        balance: {{ type: {{ decimal: {{ scale: 2 }} }} }}
    targets: [ {{ topic: {target}, format: json }} ]
    dlq_topic: {dlq}
"#,
        bootstrap = stack.bootstrap,
        state = state.display(),
    );
    let config =
        autoglm_config::parse(&yaml, "test", &repo_root(), Overrides::None).expect("valid");
    (config, state)
}

#[tokio::test]
async fn metrics_and_probes_agree_with_the_run_summary() {
    let stack = stack().await;
    let (source, target, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("g"));
    let kafka = stack.kafka();
    recreate_topics(&kafka, &[&source, &target, &dlq], 2)
        .await
        .expect("topics");
    let row = |id: i64, rev: i64, balance: &str| {
        serde_json::json!({"id": id, "rev": rev, "balance": balance}).to_string()
    };
    let inputs: Vec<(&str, Option<String>)> = vec![
        ("1", Some(row(1, 1, "10.5"))),
        ("1", Some(row(1, 3, "12"))),
        ("1", Some(row(1, 2, "11"))), // stale
        ("1", Some(row(1, 3, "12"))), // duplicate
        ("2", Some(row(2, 1, "7"))),
        ("2", Some("{not json".into())), // poison: decode
        ("2", Some(row(2, 2, "abc"))),   // poison: not a decimal
        ("1", None),                     // key-only delete: a tombstone to the target
        ("9", None),                     // delete of a key never seen: dropped
    ];
    produce_plain(&kafka, &source, &inputs).await;

    // First run: a fresh group and store.
    let (first_config, first_state) = config(&stack, &group, &source, &target, &dlq);
    let client = reqwest::Client::new();
    let pipeline = Pipeline::new(first_config).expect("pipeline");
    let metrics = pipeline.metrics();
    let options = RunOptions::default();
    let shutdown = options.shutdown.clone();
    let running = tokio::spawn(pipeline.run(options));
    bound(&metrics).await;
    let seen = until_ready(&client, &metrics).await;
    assert_eq!(seen, [503, 200], "/ready: not ready, then ready");

    // Wait until every input record is committed, then take the last scrape and stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (status, text) = get(&client, &metrics, "/metrics").await;
        assert_eq!(status, 200);
        if sum(&text, "autoglm_pipeline_input_records_total", &[]) >= inputs.len() as f64 {
            break text;
        }
        assert!(Instant::now() < deadline, "input never committed:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (health, _) = get(&client, &metrics, "/health").await;
    assert_eq!(health, 200);
    shutdown.cancel();
    let summary: RunSummary = running.await.expect("task").expect("run");
    let addr = metrics.local_addr().expect("bound");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the endpoint stops with the pipeline"
    );

    assert_eq!(
        (
            summary.records,
            summary.emitted,
            summary.dropped,
            summary.dead_lettered
        ),
        (9, 4, 3, 2),
        "{summary:?}"
    );
    let route = [("route", "accounts")];
    let count = |name: &str, labels: &[(&str, &str)]| sum(&text, name, labels) as u64;
    assert_eq!(
        count("autoglm_pipeline_input_records_total", &route),
        summary.records
    );
    assert_eq!(
        count(
            "autoglm_pipeline_emitted_records_total",
            &[("route", "accounts"), ("target", &target)]
        ),
        summary.emitted
    );
    let decision = |d: &str| {
        count(
            "autoglm_guard_decisions_total",
            &[("route", "accounts"), ("decision", d)],
        )
    };
    assert_eq!(
        decision("duplicate") + decision("stale") + decision("snapshot_superseded"),
        summary.dropped,
        "dropped = every decision but accepted:\n{text}"
    );
    assert!(
        decision("duplicate") >= 1 && decision("stale") >= 1,
        "{text}"
    );
    // Accepted: the records that got past decoding and mapping and were not dropped.
    assert_eq!(
        decision("accepted"),
        summary.records - summary.dead_lettered - summary.dropped
    );
    assert_eq!(
        count(
            "autoglm_pipeline_dead_lettered_records_total",
            &[("route", "accounts"), ("class", "poison")]
        ),
        summary.dead_lettered
    );
    assert_eq!(
        count("autoglm_pipeline_dead_lettered_records_total", &route),
        summary.dead_lettered,
        "no other class"
    );
    assert_eq!(
        count("autoglm_pipeline_tombstones_skipped_total", &route),
        summary.tombstones
    );
    assert!(summary.commits >= 1);
    assert_eq!(
        count("autoglm_transaction_commits_total", &[]),
        summary.commits
    );
    assert_eq!(
        count("autoglm_transaction_aborts_total", &[]),
        summary.retries
    );
    assert_eq!(
        count("autoglm_pipeline_batch_duration_seconds_count", &[]),
        summary.commits
    );
    assert_eq!(
        count("autoglm_transaction_commit_duration_seconds_count", &[]),
        summary.commits
    );
    // Every committed batch's steps after its close, once each; the fill and the queue of
    // every batch processed. The page was read once the last batch committed, maybe before
    // its state write.
    let stage = "autoglm_pipeline_stage_duration_seconds_count";
    for name in ["route", "guard", "send", "acks", "commit"] {
        assert_eq!(count(stage, &[("stage", name)]), summary.commits, "{name}");
    }
    let written = count(stage, &[("stage", "state_write")]);
    assert!(
        (summary.commits - 1..=summary.commits).contains(&written),
        "{written} state writes, {} commits",
        summary.commits
    );
    for name in ["fill", "queue"] {
        assert!(count(stage, &[("stage", name)]) >= 1, "{name}");
    }
    assert_eq!(
        count("autoglm_restore_records_total", &[]),
        summary.restored
    );
    assert_eq!(
        count("autoglm_consumer_assigned_partitions", &[]),
        2,
        "both input partitions, while running"
    );
    let last_commit = sum(
        &text,
        "autoglm_transaction_last_commit_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - 120.0..=now).contains(&last_commit),
        "last commit {last_commit}, now {now}"
    );

    // Second run: a new, empty store in the same group restores the changelog before it is
    // ready, and its restore metrics say how much.
    let (second_config, second_state) = config(&stack, &group, &source, &target, &dlq);
    let pipeline = Pipeline::new(second_config).expect("pipeline");
    let metrics = pipeline.metrics();
    let options = RunOptions::default();
    let shutdown = options.shutdown.clone();
    let running = tokio::spawn(pipeline.run(options));
    bound(&metrics).await;
    let seen = until_ready(&client, &metrics).await;
    assert_eq!(seen.last(), Some(&200));
    let (_, text) = get(&client, &metrics, "/metrics").await;
    shutdown.cancel();
    let summary = running.await.expect("task").expect("run");
    assert_eq!(summary.records, 0, "nothing new to process: {summary:?}");
    assert!(
        summary.restored > 0,
        "the changelog was restored: {summary:?}"
    );
    let count = |name: &str| sum(&text, name, &[]) as u64;
    assert_eq!(
        count("autoglm_restore_records_total"),
        summary.restored,
        "{text}"
    );
    assert!(
        count("autoglm_restore_duration_seconds_count") >= 1,
        "{text}"
    );
    assert_eq!(count("autoglm_pipeline_input_records_total"), 0);

    let _ = std::fs::remove_dir_all(&first_state);
    let _ = std::fs::remove_dir_all(&second_state);
}

/// The lag gauge of a route slowed by its rate limit: it shows the records still to process
/// of each input partition while they wait, and falls to 0 once all are committed.
#[tokio::test]
async fn the_lag_gauge_counts_what_is_left_and_ends_at_zero() {
    let stack = stack().await;
    let (source, target, group) = (unique("in"), unique("out"), unique("g"));
    let kafka = stack.kafka();
    let dlq = format!("{target}-dlq");
    recreate_topics(&kafka, &[&source, &target, &dlq], 2)
        .await
        .expect("topics");
    const RECORDS: i64 = 300;
    let inputs: Vec<(String, Option<String>)> = (0..RECORDS)
        .map(|i| {
            let row = serde_json::json!({"id": i, "rev": 1});
            (i.to_string(), Some(row.to_string()))
        })
        .collect();
    let inputs: Vec<(&str, Option<String>)> = inputs
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    produce_plain(&kafka, &source, &inputs).await;

    let state = std::env::temp_dir().join(unique("autoglm-state"));
    let yaml = format!(
        r#"
kafka:
  bootstrap_servers: "{bootstrap}"
  group_id: {group}
  properties: {{ statistics.interval.ms: "200" }}
event_queue: {{ storage_path: {state} }}
metrics: {{ listen: "127.0.0.1:0" }}
routes:
  - name: accounts
    source: {{ topic: {source}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: rev }}
    rate_limit: {{ records_per_second: 100, burst: 10 }}
    targets: [ {{ topic: {target}, format: json }} ]
    dlq_topic: {dlq}
"#,
        bootstrap = stack.bootstrap,
        state = state.display(),
    );
    let config =
        autoglm_config::parse(&yaml, "test", &repo_root(), Overrides::None).expect("valid");
    let pipeline = Pipeline::new(config).expect("pipeline");
    let metrics = pipeline.metrics();
    let options = RunOptions::default();
    let shutdown = options.shutdown.clone();
    let running = tokio::spawn(pipeline.run(options));
    bound(&metrics).await;
    let client = reqwest::Client::new();

    // 300 records at 100/s: about 3 s of lag to watch fall.
    let lag = |text: &str| sum(text, "autoglm_consumer_lag_records", &[("topic", &source)]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (_, text) = get(&client, &metrics, "/metrics").await;
        let partitions = text
            .lines()
            .filter(|l| l.starts_with("autoglm_consumer_lag_records{") && l.contains(&source))
            .count();
        if partitions == 2 {
            seen.push(lag(&text));
        }
        if sum(&text, "autoglm_pipeline_input_records_total", &[]) >= RECORDS as f64
            && seen.last() == Some(&0.0)
        {
            break text;
        }
        assert!(Instant::now() < deadline, "lag seen {seen:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    running.await.expect("task").expect("run");
    let _ = std::fs::remove_dir_all(&state);

    eprintln!("lag seen: {seen:?}");
    let most = seen.iter().copied().fold(0.0, f64::max);
    assert!(
        most > 50.0 && most <= RECORDS as f64,
        "a lag between 50 and {RECORDS} while the limit held the route back: {seen:?}"
    );
    assert!(
        seen.windows(2).filter(|w| w[1] > w[0]).count() == 0,
        "nothing new was produced, so the lag never grows: {seen:?}"
    );
    assert_eq!(lag(&text), 0.0, "{text}");
}
