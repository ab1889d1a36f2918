//! What the in-process end-to-end tests share (`pipeline.rs`, `outage.rs`): fresh topics, an
//! upsert JSON route, and a run that streams while something goes wrong.

#![allow(dead_code)] // Each test binary uses its own part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autoglm_config::Overrides;
use autoglm_demo::{Received, read_committed, recreate_topics};
use autoglm_runtime::{Pipeline, RunError, RunOptions, RunSummary};
use autoglm_tests::{produce_plain, repo_root, unique};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Topics {
    pub source: String,
    pub target: String,
    pub dlq: String,
    pub group: String,
}

impl Topics {
    /// Unique topic and group names (`source` and `target` prefix theirs), the topics created
    /// with `partitions` partitions.
    pub async fn fresh(
        kafka: &autoglm_kafka::ClientSettings,
        source: &str,
        target: &str,
        partitions: i32,
    ) -> Topics {
        let t = Topics {
            source: unique(source),
            target: unique(target),
            dlq: unique("dlq"),
            group: unique("g"),
        };
        recreate_topics(kafka, &[&t.source, &t.target, &t.dlq], partitions)
            .await
            .expect("topics");
        t
    }
}

/// Runs `config` until idle for 4 s.
pub async fn run(config: autoglm_config::Config) -> RunSummary {
    Pipeline::new(config)
        .expect("pipeline")
        .run(RunOptions {
            exit_when_idle: Some(Duration::from_secs(4)),
            ..RunOptions::default()
        })
        .await
        .expect("run")
}

/// (key, version header, tombstone?) per target record, ordered per key.
pub fn by_key(records: &[Received]) -> Vec<(String, String, bool)> {
    let mut rows: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                r.headers
                    .get("autoglm.version")
                    .cloned()
                    .unwrap_or_default(),
                r.value.is_none(),
                r.offset,
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.3).cmp(&(&b.0, b.3)));
    rows.into_iter().map(|(k, v, t, _)| (k, v, t)).collect()
}

/// A new state directory.
pub fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("autoglm-state"));
    std::fs::create_dir_all(&dir).expect("state dir");
    dir
}

/// An upsert JSON route `accounts` over `t` (key `id`, version column `rev`), with `top` added
/// at the top level and `mapping` in the route.
pub fn json_upsert_config(
    stack: &autoglm_tests::Stack,
    t: &Topics,
    state: &std::path::Path,
    top: &str,
    mapping: &str,
) -> autoglm_config::Config {
    let yaml = format!(
        r#"
kafka: {{ bootstrap_servers: "{bootstrap}", group_id: {group} }}
event_queue: {{ storage_path: {state} }}
{top}
routes:
  - name: accounts
    source: {{ topic: {source}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: rev }}
{mapping}
    targets: [ {{ topic: {target}, format: json }} ]
    dlq_topic: {dlq}
"#,
        bootstrap = stack.bootstrap,
        group = t.group,
        state = state.display(),
        source = t.source,
        target = t.target,
        dlq = t.dlq,
    );
    autoglm_config::parse(&yaml, "test", &repo_root(), Overrides::None).expect("valid")
}

/// Upsert rows `{"id", "rev"}` of `ids` at version `rev`, keyed by id.
pub fn upsert_rows(rev: u64, ids: std::ops::Range<u64>) -> Vec<(String, Option<String>)> {
    ids.map(|id| {
        let value = serde_json::json!({"id": id, "rev": rev});
        (id.to_string(), Some(value.to_string()))
    })
    .collect()
}

/// A run in the background while input keeps coming, straight to the broker: 20 keys, a new
/// version of each every 250 ms, until paused.
pub struct Streaming {
    running: JoinHandle<Result<RunSummary, RunError>>,
    shutdown: CancellationToken,
    feeding: watch::Sender<bool>,
    /// The last version produced; held while a round is produced.
    rev: Arc<Mutex<u64>>,
    feeder: JoinHandle<()>,
}

/// The keys [`Streaming`] feeds.
const IDS: std::ops::Range<u64> = 0..20;

impl Streaming {
    pub fn start(
        kafka: &autoglm_kafka::ClientSettings,
        t: &Topics,
        config: autoglm_config::Config,
    ) -> Streaming {
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(Pipeline::new(config).expect("pipeline").run(RunOptions {
            shutdown: shutdown.clone(),
            ..RunOptions::default()
        }));
        let (feeding, mut on) = watch::channel(true);
        let rev = Arc::new(Mutex::new(0));
        let feeder = tokio::spawn({
            let (kafka, source, rev) = (kafka.clone(), t.source.clone(), Arc::clone(&rev));
            async move {
                loop {
                    if on.wait_for(|on| *on).await.is_err() {
                        return;
                    }
                    {
                        let mut rev = rev.lock().await;
                        // Paused while this round waited for the lock: nothing more.
                        if *on.borrow() {
                            *rev += 1;
                            produce_plain(&kafka, &source, &upsert_rows(*rev, IDS)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        });
        Streaming {
            running,
            shutdown,
            feeding,
            rev,
            feeder,
        }
    }

    /// Stops the input; returns once no round is being produced.
    pub async fn pause(&self) {
        self.feeding.send_replace(false);
        drop(self.rev.lock().await);
    }

    pub fn resume(&self) {
        self.feeding.send_replace(true);
    }

    /// Stops the input, waits until every version produced is in the target (up to
    /// `within`), and checks the run is still going; then stops it, and checks that nothing
    /// was lost, dead-lettered or written twice: every input record committed, each version
    /// in the target exactly once, the DLQ empty. Returns the run's summary.
    pub async fn finish(
        self,
        kafka: &autoglm_kafka::ClientSettings,
        t: &Topics,
        within: Duration,
    ) -> RunSummary {
        self.pause().await;
        let revs = *self.rev.lock().await;
        drop(self.feeding);
        self.feeder.await.expect("feeder");
        let mut expected: Vec<_> = IDS
            .flat_map(|id| (1..=revs).map(move |rev| (id.to_string(), rev.to_string())))
            .collect();
        expected.sort();

        // Every version reaches the target; the run is still going (a fatal error ends it).
        let deadline = Instant::now() + within;
        let versions = loop {
            let out = read_committed(kafka, None, &t.target, Duration::from_secs(2))
                .await
                .expect("read");
            let mut versions: Vec<(String, String)> =
                by_key(&out).into_iter().map(|(k, v, _)| (k, v)).collect();
            versions.sort();
            if versions.len() >= expected.len() || self.running.is_finished() {
                break versions;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} versions after {within:?}",
                versions.len(),
                expected.len()
            );
        };
        assert!(
            !self.running.is_finished(),
            "the run ended by itself: {:?}",
            self.running.await
        );
        self.shutdown.cancel();
        let summary = self
            .running
            .await
            .expect("task")
            .expect("the run goes on through the outage");
        assert_eq!(
            summary.records,
            expected.len() as u64,
            "every input committed: {summary:?}"
        );
        assert_eq!(summary.dead_lettered, 0, "{summary:?}");
        assert_eq!(versions, expected, "each version exactly once");
        let dead = read_committed(kafka, None, &t.dlq, Duration::from_secs(2))
            .await
            .expect("dlq");
        assert!(dead.is_empty(), "{dead:?}");
        summary
    }
}
