//! Shared by the process-level fault tests: an input stream with its oracle, a config, the real
//! binary, and the output read back per key.

#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod cdc;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autoglm_demo::{read_committed, recreate_topics};
use autoglm_kafka::ClientSettings;
use autoglm_tests::{Stack, unique};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Far beyond any run of the suite: a process that has not exited by then hangs.
pub const EXIT_LIMIT: Duration = Duration::from_secs(600);

/// One input record: a key and its row's version, or `None` for a key-only delete (a null
/// value, which carries no version).
pub type Record = (u64, Option<i64>);

/// Records in input order: versions mostly increase per key, with about 5% exact replays and 3%
/// stale versions; with `deletes`, about 1% key-only deletes, and a delete is often followed by
/// a late (older) update.
pub fn input(seed: u64, records: usize, keys: u64, deletes: bool) -> Vec<Record> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut newest: BTreeMap<u64, (i64, bool)> = BTreeMap::new();
    (0..records)
        .map(|_| {
            let key = rng.u64(0..keys);
            let (last, deleted) = newest.entry(key).or_insert((0, false));
            let roll = rng.u8(0..100);
            if *deleted && roll < 30 {
                *deleted = false;
                return (key, Some(rng.i64(1..=*last))); // a late update after a delete
            }
            *deleted = false;
            let version = match roll {
                0..5 if *last > 0 => *last,
                5..8 if *last > 1 => rng.i64(1..*last),
                8..9 if deletes && *last > 0 => {
                    *deleted = true;
                    return (key, None);
                }
                _ => {
                    *last += rng.i64(1..3);
                    *last
                }
            };
            (key, Some(version))
        })
        .collect()
}

/// [`input`] without deletes.
pub fn updates(seed: u64, records: usize, keys: u64) -> Vec<Record> {
    input(seed, records, keys, false)
}

/// The oracle: per key, what the target must hold, in order — each version newer than every
/// version before it, and `v†` (a tombstone at the deleted row's version) for each delete of a
/// live row.
pub fn expected(input: &[Record]) -> BTreeMap<String, Vec<String>> {
    let mut newest: BTreeMap<u64, (i64, bool)> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for &(key, version) in input {
        let (last, deleted) = newest.entry(key).or_insert((0, true));
        let emitted = match version {
            Some(version) if version > *last => {
                *last = version;
                *deleted = false;
                version.to_string()
            }
            None if !*deleted => {
                *deleted = true;
                format!("{last}†")
            }
            _ => continue,
        };
        out.entry(key.to_string()).or_default().push(emitted);
    }
    out
}

/// What the target holds against what it should hold, per key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Records the target holds more than once.
    pub duplicates: usize,
    /// Expected records the target lacks.
    pub missing: usize,
    /// Records at a version not above an earlier record of their key (a stale overwrite).
    pub stale: usize,
    /// Records the oracle does not expect at all (a version the guard should have dropped).
    pub unexpected: usize,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        *self == Verdict::default()
    }
}

/// The version number of an oracle entry (`7`, or `7†` for a tombstone).
pub fn number(entry: &str) -> i64 {
    entry.trim_end_matches('†').parse().unwrap_or(i64::MIN)
}

/// Compares the target (`got`, per key in offset order) with the oracle (`want`).
pub fn check(want: &BTreeMap<String, Vec<String>>, got: &BTreeMap<String, Vec<String>>) -> Verdict {
    let mut verdict = Verdict::default();
    let empty = Vec::new();
    for key in want
        .keys()
        .chain(got.keys().filter(|k| !want.contains_key(*k)))
    {
        let want = want.get(key).unwrap_or(&empty);
        let got = got.get(key).unwrap_or(&empty);
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut newest: Option<(i64, bool)> = None;
        for entry in got {
            let count = seen.entry(entry).or_default();
            *count += 1;
            if *count > 1 {
                verdict.duplicates += 1;
                continue;
            }
            if !want.contains(entry) {
                verdict.unexpected += 1;
            }
            // A tombstone carries the deleted row's version: equal is in order after a row.
            let current = (number(entry), entry.ends_with('†'));
            if newest.is_some_and(|n| current <= n) {
                verdict.stale += 1;
            }
            newest = Some(newest.map_or(current, |n| n.max(current)));
        }
        verdict.missing += want
            .iter()
            .filter(|e| !seen.contains_key(e.as_str()))
            .count();
    }
    verdict
}

/// Asserts that the target (`got`, `count` records) holds every accepted version of the oracle
/// (`want`) exactly once, in order; the failure says how it differs (duplicates, losses, stale
/// overwrites, unexpected versions) and where the job's logs are.
pub fn assert_exactly_once(
    job: &Job,
    want: &BTreeMap<String, Vec<String>>,
    got: &BTreeMap<String, Vec<String>>,
    count: usize,
) {
    let expected = want.values().map(Vec::len).sum::<usize>();
    let verdict = check(want, got);
    assert!(
        count == expected && got == want && verdict.clean(),
        "output {count} records, expected {expected}: {verdict:?}; logs in {}",
        job.dir().display()
    );
}

/// The names of a job's topics and group.
#[derive(Debug, Clone)]
pub struct Names {
    pub source: String,
    pub target: String,
    pub dlq: String,
    pub group: String,
}

impl Names {
    /// Unique names: `in-…`, `out-…`, `dlq-…` and the group `g-…`.
    pub fn fresh() -> Names {
        Names {
            source: unique("in"),
            target: unique("out"),
            dlq: unique("dlq"),
            group: unique("g"),
        }
    }
}

/// One test's topics, group and working directory (config, state, logs).
pub struct Job {
    pub source: String,
    pub target: String,
    pub dlq: String,
    pub group: String,
    pub dir: PathBuf,
    kafka: ClientSettings,
    producer: FutureProducer,
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
        let kafka = format!("bootstrap_servers: \"{}\"", stack.bootstrap);
        Job::with_names(
            stack,
            Names::fresh(),
            &kafka,
            "",
            event_queue,
            max_records,
            partitions,
        )
        .await
    }

    /// A job on topics and a group named `names` (created over the stack's plaintext
    /// listener), whose config has `kafka` (YAML flow entries: the address and any security)
    /// and `route` (more YAML lines of the route, indented by four spaces).
    pub async fn with_names(
        stack: &Stack,
        names: Names,
        kafka_yaml: &str,
        route_yaml: &str,
        event_queue: &str,
        max_records: usize,
        partitions: i32,
    ) -> Job {
        let Names {
            source,
            target,
            dlq,
            group,
        } = names;
        let kafka = stack.kafka();
        recreate_topics(&kafka, &[&source, &target, &dlq], partitions)
            .await
            .expect("topics");
        let dir = std::env::temp_dir().join(unique("autoglm-job"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let yaml = format!(
            r#"
kafka: {{ {kafka_yaml}, group_id: {group}, instance_id: "0" }}
event_queue: {{ storage_path: {state}, {event_queue} }}
commit: {{ max_records: {max_records} }}
log_level: info
routes:
  - name: accounts
    source: {{ topic: {source}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: rev }}
    targets: [ {{ topic: {target}, format: json }} ]
    dlq_topic: {dlq}
{route_yaml}"#,
            state = dir.join("state").display(),
        );
        std::fs::write(dir.join("config.yaml"), yaml).expect("write config");
        let producer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        Job {
            producer,
            source,
            target,
            dlq,
            group,
            dir,
            kafka,
        }
    }

    /// Produces `records` as JSON upsert rows keyed by id (a null value for a delete); per key
    /// order is kept.
    pub async fn produce(&self, records: &[Record]) {
        let producer = &self.producer;
        for chunk in records.chunks(500) {
            let sends = chunk.iter().map(|(key, version)| {
                let value = version.map(|version| {
                    serde_json::json!({"id": key, "rev": version, "name": format!("n{version}")})
                        .to_string()
                });
                // The key is the id's JSON text, as the row has it: a key-only delete finds it.
                let key = key.to_string();
                let source = self.source.clone();
                async move {
                    let mut record = FutureRecord::to(&source).key(&key);
                    if let Some(value) = &value {
                        record = record.payload(value);
                    }
                    producer
                        .send(record, Timeout::After(Duration::from_secs(300)))
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
        self.start_instance_with(run, instance, idle_secs, &[])
    }

    /// Like [`Job::start_instance`], with more environment (a crash point).
    pub fn start_instance_with(
        &self,
        run: usize,
        instance: usize,
        idle_secs: u64,
        env: &[(&str, &str)],
    ) -> Child {
        let state = self.dir.join(format!("state-{instance}"));
        let state = state.to_string_lossy();
        let id = instance.to_string();
        let mut all = vec![
            ("AUTOGLM__KAFKA__INSTANCE_ID", id.as_str()),
            ("AUTOGLM__EVENT_QUEUE__STORAGE_PATH", &*state),
        ];
        all.extend_from_slice(env);
        self.start_idle(run, &all, idle_secs)
    }

    fn start_idle(&self, run: usize, env: &[(&str, &str)], idle_secs: u64) -> Child {
        spawn_autoglm(
            &self.dir.join("config.yaml"),
            &self.log(run),
            idle_secs,
            env,
        )
    }

    /// The log file of run `run`.
    pub fn log(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run-{run}.log"))
    }

    /// Runs the binary until it exits by itself (idle); panics unless it succeeds.
    pub async fn run_to_idle(&self, run: usize) {
        let child = self.start(run, &[]);
        let status = self.exit_of(child, run).await;
        assert!(
            status.success(),
            "run {run} failed ({status}); see {}",
            self.log(run).display()
        );
    }

    /// Waits for run `run` to exit by itself. A process still running after [`EXIT_LIMIT`] is
    /// killed and the test fails with its log's tail: a hung processor fails the suite instead
    /// of stalling it.
    pub async fn exit_of(&self, mut child: Child, run: usize) -> std::process::ExitStatus {
        let deadline = Instant::now() + EXIT_LIMIT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(self.log(run)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "run {run} (pid {}) did not exit within {} s; see {}; its last lines:\n{}",
                    child.id(),
                    EXIT_LIMIT.as_secs(),
                    self.log(run).display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Target records per key (versions in offset order, `v†` for a tombstone) and the total
    /// count, read committed.
    pub async fn output(&self) -> (BTreeMap<String, Vec<String>>, usize) {
        let out = read_committed(&self.kafka, None, &self.target, Duration::from_secs(3))
            .await
            .expect("read target");
        let mut by_key: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for record in &out {
            by_key.entry(record.key.clone()).or_default().push((
                record.offset,
                format!(
                    "{}{}",
                    record.headers["autoglm.version"],
                    if record.value.is_none() { "†" } else { "" }
                ),
            ));
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

/// Starts the binary: `run --exit-when-idle-secs <idle_secs> --config <config>`, with `env`
/// added, its stderr to `log`.
pub fn spawn_autoglm(config: &Path, log: &Path, idle_secs: u64, env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        // A process group of its own: had a stopped instance shared the test's group, and
        // that group been orphaned (a test run from a script whose parent left), the kernel
        // would hang it up (SIGHUP) when another member exited. A soak run lost an instance
        // that way.
        .process_group(0)
        .args([
            "run",
            "--exit-when-idle-secs",
            &idle_secs.to_string(),
            "--config",
        ])
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start autoglm")
}

/// SIGTERM, then the exit: within the default `shutdown_timeout` (30 s) and some slack, or the
/// test fails (after a SIGKILL, so that it does not hang).
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pid {} did not stop within 40 s of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `name` (`-STOP`, `-CONT`, …) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {name}");
}

/// Waits until `child` is stopped (SIGSTOP: state `T` in `/proc/<pid>/stat`).
pub async fn until_stopped(child: &Child, log: &Path) {
    let stat = format!("/proc/{}/stat", child.id());
    for _ in 0..1200 {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        if state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('T'))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never stopped; see {}", log.display());
}
