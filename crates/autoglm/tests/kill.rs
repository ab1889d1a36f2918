//! The real binary, killed with SIGKILL mid-stream and restarted, against the real broker: the
//! target holds every accepted version exactly once, in order.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use autoglm_demo::{read_committed, read_uncommitted, recreate_topics};
use autoglm_tests::{Stack, stack, unique};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const KEYS: u64 = 200;
const RECORDS: usize = 60_000;

/// Versions per key in input order: mostly increasing, with exact replays and stale versions.
fn input(seed: u64) -> Vec<(u64, i64)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut newest: BTreeMap<u64, i64> = BTreeMap::new();
    (0..RECORDS)
        .map(|_| {
            let key = rng.u64(0..KEYS);
            let last = newest.entry(key).or_insert(0);
            let version = match rng.u8(0..100) {
                0..5 if *last > 0 => *last,             // an exact replay
                5..8 if *last > 1 => rng.i64(1..*last), // a stale version
                _ => {
                    *last += rng.i64(1..3);
                    *last
                }
            };
            (key, version)
        })
        .collect()
}

/// The oracle: per key, each version that is newer than every version before it.
fn expected(input: &[(u64, i64)]) -> BTreeMap<String, Vec<String>> {
    let mut newest: BTreeMap<u64, i64> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for &(key, version) in input {
        let last = newest.entry(key).or_insert(0);
        if version > *last {
            *last = version;
            out.entry(key.to_string())
                .or_default()
                .push(version.to_string());
        }
    }
    out
}

fn write_config(dir: &Path, stack: &Stack, group: &str, source: &str, target: &str, dlq: &str) {
    let yaml = format!(
        r#"
kafka: {{ bootstrap_servers: "{bootstrap}", group_id: {group}, instance_id: "killed" }}
event_queue: {{ storage_path: {state}, flush_interval_ms: 50 }}
commit: {{ max_records: 300 }}
log_level: warn
routes:
  - name: accounts
    source: {{ topic: {source}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: rev }}
    targets: [ {{ topic: {target}, format: json }} ]
    dlq_topic: {dlq}
"#,
        bootstrap = stack.bootstrap,
        state = dir.join("state").display(),
    );
    std::fs::write(dir.join("config.yaml"), yaml).expect("write config");
}

fn start(dir: &Path, run: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("run-{run}.log"))).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(["run", "--exit-when-idle-secs", "5", "--config"])
        .arg(dir.join("config.yaml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start autoglm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_emits_each_accepted_version_once() {
    let stack = stack().await;
    let (source, target, dlq, group) = (unique("kin"), unique("kout"), unique("kdlq"), unique("g"));
    let kafka = stack.kafka();
    recreate_topics(&kafka, &[&source, &target, &dlq], 3)
        .await
        .expect("topics");
    let dir = std::env::temp_dir().join(unique("autoglm-kill"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    write_config(&dir, &stack, &group, &source, &target, &dlq);

    let records = input(7);
    // The stream keeps arriving while the processor is killed and restarted.
    let producer: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let feed = {
        let records = records.clone();
        let source = source.clone();
        tokio::spawn(async move {
            for chunk in records.chunks(400) {
                let sends = chunk.iter().map(|(key, version)| {
                    let key = key.to_string();
                    let value = serde_json::json!({"id": key, "rev": version, "name": format!("n{version}")})
                        .to_string();
                    let producer = producer.clone();
                    let source = source.clone();
                    async move {
                        producer
                            .send(
                                FutureRecord::to(&source).key(&key).payload(&value),
                                Timeout::After(Duration::from_secs(30)),
                            )
                            .await
                            .map_err(|(e, _)| e)
                            .expect("produce");
                    }
                });
                // Per key order is kept: one chunk is acknowledged before the next is sent.
                futures::future::join_all(sends).await;
            }
        })
    };

    let kills = [2500, 1200, 3100, 1500, 2200, 1000, 2800, 1700];
    for (run, after_ms) in kills.iter().enumerate() {
        let mut child = start(&dir, run);
        tokio::time::sleep(Duration::from_millis(*after_ms)).await;
        assert!(
            child.try_wait().expect("status").is_none(),
            "run {run} stopped before it was killed; see {}",
            dir.join(format!("run-{run}.log")).display()
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    feed.await.expect("feed");
    let mut last = start(&dir, kills.len());
    let status = tokio::task::spawn_blocking(move || last.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "the final run exits by itself: {status}");

    let out = read_committed(&kafka, None, &target, Duration::from_secs(3))
        .await
        .expect("read target");
    let mut got: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for record in &out {
        got.entry(record.key.clone())
            .or_default()
            .push((record.offset, record.headers["autoglm.version"].clone()));
    }
    let got: BTreeMap<String, Vec<String>> = got
        .into_iter()
        .map(|(key, mut versions)| {
            versions.sort();
            (key, versions.into_iter().map(|(_, v)| v).collect())
        })
        .collect();
    let want = expected(&records);
    let total: usize = want.values().map(Vec::len).sum();
    assert_eq!(out.len(), total, "one record per accepted version");
    assert_eq!(got, want, "per key: each accepted version once, in order");
    // The test of the test: some kill hit an open transaction, whose records were aborted.
    let all = read_uncommitted(&kafka, None, &target, Duration::from_secs(3))
        .await
        .expect("read target uncommitted");
    assert!(
        all.len() > out.len(),
        "no kill hit an open transaction ({} records either way)",
        all.len()
    );
    let dead = read_committed(&kafka, None, &dlq, Duration::from_secs(1))
        .await
        .expect("read dlq");
    assert!(dead.is_empty(), "{dead:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
