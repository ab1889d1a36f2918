//! Shared by the process-level fault tests: an input stream with its oracle, a config, the real
//! binary, and the output read back per key.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use autoglm_demo::{read_committed, recreate_topics};
use autoglm_kafka::ClientSettings;
use autoglm_tests::{Stack, unique};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// `(key, version)` per record, in input order: mostly increasing per key, with about 5% exact
/// replays and 3% stale versions.
pub fn input(seed: u64, records: usize, keys: u64) -> Vec<(u64, i64)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut newest: BTreeMap<u64, i64> = BTreeMap::new();
    (0..records)
        .map(|_| {
            let key = rng.u64(0..keys);
            let last = newest.entry(key).or_insert(0);
            let version = match rng.u8(0..100) {
                0..5 if *last > 0 => *last,
                5..8 if *last > 1 => rng.i64(1..*last),
                _ => {
                    *last += rng.i64(1..3);
                    *last
                }
            };
            (key, version)
        })
        .collect()
}

/// The oracle: per key, each version newer than every version before it, in order.
pub fn expected(input: &[(u64, i64)]) -> BTreeMap<String, Vec<String>> {
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

/// One test's topics, group and working directory (config, state, logs).
pub struct Job {
    pub source: String,
    pub target: String,
    pub dlq: String,
    pub dir: PathBuf,
    kafka: ClientSettings,
}

impl Job {
    /// Fresh topics (3 partitions) and a config with `event_queue` settings `event_queue`
    /// (YAML flow entries) and `commit.max_records`.
    pub async fn new(stack: &Stack, event_queue: &str, max_records: usize) -> Job {
        Job::with_partitions(stack, event_queue, max_records, 3).await
    }

    /// Like [`Job::new`], with `partitions` partitions per topic.
    pub async fn with_partitions(
        stack: &Stack,
        event_queue: &str,
        max_records: usize,
        partitions: i32,
    ) -> Job {
        let (source, target, dlq, group) =
            (unique("in"), unique("out"), unique("dlq"), unique("g"));
        let kafka = stack.kafka();
        recreate_topics(&kafka, &[&source, &target, &dlq], partitions)
            .await
            .expect("topics");
        let dir = std::env::temp_dir().join(unique("autoglm-job"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let yaml = format!(
            r#"
kafka: {{ bootstrap_servers: "{bootstrap}", group_id: {group}, instance_id: "0" }}
event_queue: {{ storage_path: {state}, {event_queue} }}
commit: {{ max_records: {max_records} }}
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
        Job {
            source,
            target,
            dlq,
            dir,
            kafka,
        }
    }

    /// Produces `records` as JSON upsert rows, keyed by id; per key order is kept.
    pub async fn produce(&self, records: &[(u64, i64)]) {
        let producer: FutureProducer = self
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        for chunk in records.chunks(500) {
            let sends = chunk.iter().map(|(key, version)| {
                let key = key.to_string();
                let value =
                    serde_json::json!({"id": key, "rev": version, "name": format!("n{version}")})
                        .to_string();
                let producer = producer.clone();
                let source = self.source.clone();
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
            // One chunk is acknowledged before the next is sent.
            futures::future::join_all(sends).await;
        }
    }

    /// Starts the binary (`run --exit-when-idle-secs 4`), logging to `run-<n>.log`.
    pub fn start(&self, run: usize, env: &[(&str, &str)]) -> Child {
        self.start_idle(run, env, 4)
    }

    /// Starts instance `instance` (its own `kafka.instance_id` and state directory) of the
    /// same group, stopping after `idle_secs` without input.
    pub fn start_instance(&self, run: usize, instance: usize, idle_secs: u64) -> Child {
        let state = self.dir.join(format!("state-{instance}"));
        let state = state.to_string_lossy();
        let id = instance.to_string();
        self.start_idle(
            run,
            &[
                ("AUTOGLM__KAFKA__INSTANCE_ID", &id),
                ("AUTOGLM__EVENT_QUEUE__STORAGE_PATH", &state),
            ],
            idle_secs,
        )
    }

    fn start_idle(&self, run: usize, env: &[(&str, &str)], idle_secs: u64) -> Child {
        let log = std::fs::File::create(self.log(run)).expect("log file");
        Command::new(env!("CARGO_BIN_EXE_autoglm"))
            .args([
                "run",
                "--exit-when-idle-secs",
                &idle_secs.to_string(),
                "--config",
            ])
            .arg(self.dir.join("config.yaml"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start autoglm")
    }

    /// The log file of run `run`.
    pub fn log(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run-{run}.log"))
    }

    /// Runs the binary until it exits by itself (idle); panics unless it succeeds.
    pub async fn run_to_idle(&self, run: usize) {
        let mut child = self.start(run, &[]);
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        assert!(
            status.success(),
            "run {run} failed ({status}); see {}",
            self.log(run).display()
        );
    }

    /// Target records per key (versions in offset order) and the total count, read committed.
    pub async fn output(&self) -> (BTreeMap<String, Vec<String>>, usize) {
        let out = read_committed(&self.kafka, None, &self.target, Duration::from_secs(3))
            .await
            .expect("read target");
        let mut by_key: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for record in &out {
            by_key
                .entry(record.key.clone())
                .or_default()
                .push((record.offset, record.headers["autoglm.version"].clone()));
        }
        let by_key = by_key
            .into_iter()
            .map(|(key, mut versions)| {
                versions.sort();
                (key, versions.into_iter().map(|(_, v)| v).collect())
            })
            .collect();
        (by_key, out.len())
    }

    /// Records in the dead-letter topic.
    pub async fn dead_letters(&self) -> usize {
        read_committed(&self.kafka, None, &self.dlq, Duration::from_secs(1))
            .await
            .expect("read dlq")
            .len()
    }

    /// The settings of the stack's broker.
    pub fn kafka(&self) -> &ClientSettings {
        &self.kafka
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Kept when the test failed, or with AUTOGLM_TEST_KEEP set, to read the logs.
        if !std::thread::panicking() && std::env::var_os("AUTOGLM_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
