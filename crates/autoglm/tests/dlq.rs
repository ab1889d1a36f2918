//! The real binary's dead-letter and state tools against the local stack: poison in, the DLQ
//! listed and shown with its reasons, the config fixed, the dead letters replayed through the
//! route exactly once (a stale one dropped by the guard, never emitted), a second replay that
//! sends nothing; filters that leave records for a later replay; and `state get | stats` while
//! `autoglm run` holds the store.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use autoglm_demo::{Received, read_committed, read_uncommitted, recreate_topics};
use autoglm_tests::{Stack, produce_plain, stack, unique};
use common::{Job, Names, spawn_autoglm, terminate};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value as Json, json};

/// The route's mapping: `score` must be a number.
const STRICT: &str = "    mapping: { fields: { score: { type: long } } }";
/// The fix: `score` is text.
const FIXED: &str = "    mapping: { fields: { score: { type: string } } }";

/// A job with `mapping` and an audit topic, whose topics have `partitions` partitions.
async fn job(stack: &Stack, mapping: &str, partitions: i32) -> (Job, String) {
    let audit = unique("audit");
    recreate_topics(&stack.kafka(), &[&audit], partitions)
        .await
        .expect("audit topic");
    let names = Names::fresh();
    let kafka = format!("bootstrap_servers: \"{}\"", stack.bootstrap);
    let route = format!("{mapping}\n    audit_topic: {audit}\n");
    let job = Job::with_names(stack, names, &kafka, &route, "", 100, partitions).await;
    (job, audit)
}

/// Rewrites the job's config with `to` in place of `from` (the config fix).
fn fix(job: &Job, from: &str, to: &str) {
    let path = job.dir().join("config.yaml");
    let yaml = std::fs::read_to_string(&path).expect("config");
    assert!(yaml.contains(from), "{yaml}");
    std::fs::write(&path, yaml.replace(from, to)).expect("config");
}

/// A JSON upsert row.
fn row(id: u64, rev: i64, fields: Json) -> (String, Option<String>) {
    let mut value = json!({"id": id, "rev": rev});
    if let (Some(value), Json::Object(fields)) = (value.as_object_mut(), fields) {
        value.extend(fields);
    }
    (id.to_string(), Some(value.to_string()))
}

/// Produces `records` to the job's source in order, each acknowledged before the next. A topic
/// just created may not be known to the broker's partition leader yet: that is retried.
async fn produce<K: AsRef<str>>(job: &Job, records: &[(K, Option<String>)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let producer: FutureProducer = job.kafka().client_config().create().expect("producer");
        let (key, value) = &records[0];
        let mut record = FutureRecord::to(&job.source).key(key.as_ref());
        if let Some(value) = value {
            record = record.payload(value);
        }
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => break,
            Err((e, _)) if Instant::now() < deadline => {
                eprintln!("produce: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
    produce_plain(job.kafka(), &job.source, &records[1..]).await;
}

/// Runs `autoglm <args> --config <job's config>`, with only the file as config.
fn autoglm(job: &Job, args: &[&str]) -> Output {
    autoglm_with(job, args, &[])
}

/// [`autoglm`] with more environment (a crash point).
fn autoglm_with(job: &Job, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(args)
        .arg("--config")
        .arg(job.dir().join("config.yaml"))
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run autoglm")
}

/// Runs a tool and returns its stdout; panics with its stderr unless it succeeds.
fn tool(job: &Job, args: &[&str]) -> String {
    let out = autoglm(job, args);
    assert!(
        out.status.success(),
        "autoglm {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tool's `--json` output: one object per line.
fn json_lines(job: &Job, args: &[&str]) -> Vec<Json> {
    tool(job, args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

async fn read(stack: &Stack, topic: &str) -> Vec<Received> {
    read_committed(&stack.kafka(), None, topic, Duration::from_secs(2))
        .await
        .expect("read")
}

/// Records in `topic` (the sum of its partitions' log ends).
fn log_size(stack: &Stack, topic: &str) -> i64 {
    let client: BaseConsumer = stack.kafka().log_end_client().expect("client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| {
            let (low, high) = client
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

#[tokio::test]
async fn replayed_dead_letters_are_emitted_once_after_a_config_fix_and_a_second_replay_emits_nothing()
 {
    let stack = stack().await;
    let (job, audit) = job(&stack, STRICT, 3).await;
    let input = [
        row(1, 1, json!({"score": "10"})),
        row(2, 1, json!({"score": "x"})), // poison: not a number
        row(3, 2, json!({"score": "y"})), // poison, and superseded by the next
        row(3, 3, json!({"score": "30"})),
        row(4, 1, json!({"score": "z"})), // poison
    ];
    produce(&job, &input).await;
    job.run_to_idle(1).await;
    let (output, count) = job.output().await;
    assert_eq!(count, 2, "{output:?}");
    assert_eq!(job.dead_letters().await, 3);

    // list: a table and JSON lines, each record with its reason and origin.
    let table = tool(&job, &["dlq", "list", "--route", "accounts"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("RECORD"), "{table}");
    assert!(
        lines[1..].iter().all(|l| l.contains("poison")
            && l.contains("fields.score.type")
            && l.contains(&job.source)),
        "{table}"
    );
    let listed = json_lines(&job, &["dlq", "list", "--route", "accounts", "--json"]);
    assert_eq!(listed.len(), 3);
    for record in &listed {
        assert_eq!(record["route"], "accounts");
        assert_eq!(record["rule"], "fields.score.type");
        assert_eq!(record["field"], "score");
        assert_eq!(record["source"]["topic"], job.source.as_str());
        assert!(record["source"]["timestamp_ms"].is_i64(), "{record}");
    }
    let none = json_lines(
        &job,
        &[
            "dlq",
            "list",
            "--route",
            "accounts",
            "--json",
            "--where",
            "rule=decode",
        ],
    );
    assert!(none.is_empty(), "{none:?}");
    let recent = json_lines(
        &job,
        &[
            "dlq", "list", "--route", "accounts", "--json", "--since", "1h", "--limit", "2",
        ],
    );
    assert_eq!(recent.len(), 2);
    let future = json_lines(
        &job,
        &[
            "dlq",
            "list",
            "--route",
            "accounts",
            "--json",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(future.is_empty());

    // show: one record whole, its value decoded.
    let k2 = listed
        .iter()
        .find(|r| r["key"]["json"] == 2)
        .expect("key 2 listed");
    let at = format!("{}:{}", k2["partition"], k2["offset"]);
    let shown = json_lines(&job, &["dlq", "show", "--route", "accounts", &at, "--json"]);
    assert_eq!(shown[0]["value"]["format"], "json");
    assert_eq!(shown[0]["value"]["json"]["score"], "x");
    assert_eq!(
        shown[0]["headers"]["autoglm.error.rule"],
        "fields.score.type"
    );
    let text = tool(&job, &["dlq", "show", "--route", "accounts", &at]);
    assert!(
        text.contains("\"score\": \"x\"") && text.contains("rule       fields.score.type"),
        "{text}"
    );
    let missing = autoglm(&job, &["dlq", "show", "--route", "accounts", "0:999"]);
    assert!(!missing.status.success());

    // The fix, a dry run that sends nothing, then the replay.
    fix(&job, STRICT, FIXED);
    let source_records = log_size(&stack, &job.source);
    let dry = json_lines(
        &job,
        &[
            "dlq",
            "replay",
            "--route",
            "accounts",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(dry[0]["replayed"], 3, "{}", dry[0]);
    assert_eq!(dry[0]["would_replay"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        log_size(&stack, &job.source),
        source_records,
        "a dry run sends nothing"
    );
    let report = json_lines(&job, &["dlq", "replay", "--route", "accounts", "--json"]);
    let report = &report[0];
    assert_eq!(
        (
            &report["read"],
            &report["replayed"],
            &report["skipped_by_filter"]
        ),
        (&json!(3), &json!(3), &json!(0)),
        "{report}"
    );
    let per_source: i64 = report["to_source"]
        .as_array()
        .expect("to_source")
        .iter()
        .map(|s| s["records"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(per_source, 3, "{report}");
    let replayed_records = log_size(&stack, &job.source);
    assert!(
        !report["committed"]
            .as_array()
            .expect("committed")
            .is_empty(),
        "{report}"
    );

    // The copies: in their original partitions, with their original time and traceparent-free
    // headers naming the DLQ record, none of the reason headers.
    let source = read(&stack, &job.source).await;
    let copies: Vec<&Received> = source
        .iter()
        .filter(|r| r.headers.contains_key("autoglm.replay.offset"))
        .collect();
    assert_eq!(copies.len(), 3);
    for copy in &copies {
        assert!(
            !copy.headers.keys().any(|k| k.starts_with("autoglm.error")),
            "{copy:?}"
        );
        assert_eq!(copy.headers["autoglm.replay.topic"], job.dlq);
        let original = source
            .iter()
            .find(|r| {
                r.key == copy.key
                    && r.value == copy.value
                    && !r.headers.contains_key("autoglm.replay.offset")
            })
            .expect("the original");
        assert_eq!(
            (original.partition, original.timestamp),
            (copy.partition, copy.timestamp),
            "same partition, same time"
        );
    }

    job.run_to_idle(2).await;
    let (output, count) = job.output().await;
    let want: BTreeMap<String, Vec<String>> = [("1", "1"), ("2", "1"), ("3", "3"), ("4", "1")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
        .collect();
    assert_eq!(
        (&output, count),
        (&want, 4),
        "each key once; logs in {}",
        job.dir().display()
    );
    let target = read(&stack, &job.target).await;
    let k2 = target.iter().find(|r| r.key == "2").expect("key 2");
    assert_eq!(
        k2.value.as_ref().map(|v| v["score"].clone()),
        Some(json!("x"))
    );
    // The replayed version 2 of key 3 is older than the stored 3: dropped as stale.
    let audited = read(&stack, &audit).await;
    let stale: Vec<&Received> = audited
        .iter()
        .filter(|r| r.headers["autoglm.decision"] == "stale")
        .collect();
    assert_eq!(stale.len(), 1, "{audited:?}");
    assert_eq!(stale[0].key, "3");
    assert_eq!(
        stale[0].value.as_ref().map(|v| v["rev"].clone()),
        Some(json!(2))
    );
    assert_eq!(job.dead_letters().await, 3, "nothing dead-lettered again");

    // A second replay sends nothing, and the output stays as it is.
    let again = json_lines(&job, &["dlq", "replay", "--route", "accounts", "--json"]);
    assert_eq!(
        (&again[0]["read"], &again[0]["replayed"]),
        (&json!(0), &json!(0)),
        "{}",
        again[0]
    );
    assert_eq!(
        log_size(&stack, &job.source),
        replayed_records,
        "nothing sent again"
    );
    job.run_to_idle(3).await;
    let (output, count) = job.output().await;
    assert_eq!((&output, count), (&want, 4));
}

/// Copies of dead letters in the job's source topic: read committed, and read uncommitted.
async fn copies(stack: &Stack, job: &Job) -> (usize, usize) {
    let is_copy = |r: &&Received| r.headers.contains_key("autoglm.replay.offset");
    let committed = read(stack, &job.source).await;
    let all = read_uncommitted(&stack.kafka(), None, &job.source, Duration::from_secs(2))
        .await
        .expect("read uncommitted");
    (
        committed.iter().filter(is_copy).count(),
        all.iter().filter(is_copy).count(),
    )
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_replay_killed_before_its_commit_leaves_nothing_and_the_next_one_replays_once() {
    let stack = stack().await;
    let (job, _) = job(&stack, STRICT, 3).await;
    let input = [
        row(1, 1, json!({"score": "x"})),
        row(2, 1, json!({"score": "y"})),
        row(3, 1, json!({"score": "z"})),
        row(4, 1, json!({"score": "4"})),
    ];
    produce(&job, &input).await;
    job.run_to_idle(1).await;
    assert_eq!(job.dead_letters().await, 3);
    fix(&job, STRICT, FIXED);

    let args = ["dlq", "replay", "--route", "accounts", "--json"];
    let crashed = autoglm_with(
        &job,
        &args,
        &[("AUTOGLM_CRASH_AT", "dlq_replay_before_commit")],
    );
    assert!(
        !crashed.status.success(),
        "the crash point aborts the replay"
    );
    // The copies were written, in a transaction that never committed.
    assert_eq!(copies(&stack, &job).await, (0, 3));

    // The next replay aborts that transaction and, its offsets never committed, replays all.
    let report = json_lines(&job, &args).remove(0);
    assert_eq!(report["replayed"], 3, "{report}");
    assert_eq!(copies(&stack, &job).await, (3, 6));
    job.run_to_idle(2).await;
    let (output, count) = job.output().await;
    assert_eq!(count, 4, "{output:?}");
    assert!(output.values().all(|v| v == &["1"]), "{output:?}");
    let again = json_lines(&job, &args).remove(0);
    assert_eq!(again["replayed"], 0, "{again}");
}

#[tokio::test]
async fn a_filtered_replay_leaves_the_other_dead_letters_for_a_later_one() {
    let stack = stack().await;
    let strict = "    mapping: { fields: { score: { type: long }, age: { type: long } } }";
    // One partition: the two kinds of dead letters interleave in it.
    let (job, _) = job(&stack, strict, 1).await;
    let input = [
        row(1, 1, json!({"score": "x", "age": "1"})),
        row(2, 1, json!({"score": "2", "age": "old"})),
        row(3, 1, json!({"score": "y", "age": "3"})),
        row(4, 1, json!({"score": "4", "age": "older"})),
        row(5, 1, json!({"score": "5", "age": "5"})),
    ];
    produce(&job, &input).await;
    job.run_to_idle(1).await;
    assert_eq!(job.dead_letters().await, 4);
    fix(
        &job,
        strict,
        "    mapping: { fields: { score: { type: string }, age: { type: string } } }",
    );

    let report = |args: &[&str]| {
        let mut all = vec!["dlq", "replay", "--route", "accounts", "--json"];
        all.extend_from_slice(args);
        json_lines(&job, &all).remove(0)
    };
    let ages = report(&["--where", "rule=fields.age.type"]);
    assert_eq!(
        (&ages["replayed"], &ages["skipped_by_filter"]),
        (&json!(2), &json!(2)),
        "{ages}"
    );
    // The first score record is left: the offset stays there, the ages above it are listed.
    let offsets = |rule: &str| -> Vec<i64> {
        let filter = format!("rule={rule}");
        json_lines(
            &job,
            &[
                "dlq", "list", "--route", "accounts", "--json", "--where", &filter,
            ],
        )
        .iter()
        .filter_map(|r| r["offset"].as_i64())
        .collect()
    };
    let (score_offsets, age_offsets) = (offsets("fields.score.type"), offsets("fields.age.type"));
    assert_eq!((score_offsets.len(), age_offsets.len()), (2, 2));
    assert_eq!(ages["committed"][0]["offset"], score_offsets[0], "{ages}");
    let listed: Vec<String> = age_offsets.iter().map(i64::to_string).collect();
    assert_eq!(
        ages["committed"][0]["done_above"],
        listed.join(","),
        "{ages}"
    );
    let again = report(&["--where", "rule=fields.age.type"]);
    assert_eq!(
        (&again["replayed"], &again["replayed_before"]),
        (&json!(0), &json!(2)),
        "{again}"
    );
    let scores = report(&["--where", "rule=fields.score.type"]);
    assert_eq!(
        (&scores["replayed"], &scores["replayed_before"]),
        (&json!(2), &json!(2)),
        "{scores}"
    );
    assert_eq!(scores["committed"][0]["done_above"], "", "{scores}");
    let rest = report(&[]);
    assert_eq!(
        (&rest["read"], &rest["replayed"]),
        (&json!(0), &json!(0)),
        "{rest}"
    );

    job.run_to_idle(2).await;
    let (output, count) = job.output().await;
    assert_eq!(count, 5, "{output:?}");
    assert!(output.values().all(|v| v == &["1"]), "{output:?}");
}

/// Polls `state get` until `check` accepts its JSON, for up to 30 s, while `run` runs.
async fn state_until(job: &Job, run: &mut Child, key: &str, check: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = run.try_wait().expect("try_wait") {
            panic!("run stopped ({status}); see {}", job.log(1).display());
        }
        let got =
            json_lines(job, &["state", "get", "--route", "accounts", key, "--json"]).remove(0);
        if check(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "state of {key}: {got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn state_get_and_stats_read_the_store_while_run_holds_it() {
    let stack = stack().await;
    let (job, _) = job(&stack, FIXED, 3).await;
    let mut run = spawn_autoglm(&job.dir().join("config.yaml"), &job.log(1), 120, &[]);
    let input = [
        row(1, 1, json!({"score": "1"})),
        row(1, 7, json!({"score": "7"})),
        row(2, 3, json!({"score": "3"})),
    ];
    produce(&job, &input).await;

    let one = state_until(&job, &mut run, "1", |s| s["entry"]["version"] == "7").await;
    assert_eq!(one["entry"]["tombstone"], false, "{one}");
    assert_eq!(one["entity_key"], "[1]");
    assert!(
        one["entry"]["updated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{one}"
    );
    let by_object = state_until(&job, &mut run, r#"{"id": 2}"#, |s| {
        s["entry"]["version"] == "3"
    })
    .await;
    assert_eq!(by_object["entity_key"], "[2]");
    let absent = json_lines(
        &job,
        &["state", "get", "--route", "accounts", "99", "--json"],
    );
    assert_eq!(absent[0]["entry"], Json::Null);
    let text = tool(&job, &["state", "get", "--route", "accounts", "1"]);
    assert!(
        text.contains("version    7") && text.contains("tombstone  no"),
        "{text}"
    );

    // A key-only delete: a versioned tombstone at the version it deleted.
    produce(&job, &[("2", None::<String>)]).await;
    let deleted = state_until(&job, &mut run, "2", |s| s["entry"]["tombstone"] == true).await;
    assert_eq!(deleted["entry"]["version"], "3", "{deleted}");
    assert!(
        deleted["entry"]["tombstone_expires_at"].is_string(),
        "{deleted}"
    );

    let stats = json_lines(&job, &["state", "stats", "--json"]).remove(0);
    let routes = stats["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 1, "{stats}");
    assert_eq!(
        (&routes[0]["keys"], &routes[0]["tombstones"]),
        (&json!(2), &json!(1)),
        "{stats}"
    );
    let changelogs = stats["changelogs"].as_array().expect("changelogs");
    assert_eq!(changelogs.len(), 3, "a partition each: {stats}");
    let held: Vec<&Json> = changelogs
        .iter()
        .filter(|c| c["checkpoint"].is_i64())
        .collect();
    assert!(!held.is_empty(), "{stats}");
    for c in &held {
        let (checkpoint, end) = (c["checkpoint"].as_i64(), c["end"].as_i64());
        assert!(checkpoint <= end, "{c}");
        assert_eq!(
            c["behind"].as_i64(),
            end.zip(checkpoint).map(|(e, k)| e - k),
            "{c}"
        );
    }
    let text = tool(&job, &["state", "stats"]);
    assert!(
        text.contains("CHECKPOINT") && text.contains("rocksdb estimates"),
        "{text}"
    );

    // Read-only: the run goes on and stops cleanly.
    let status = terminate(&mut run);
    assert!(
        status.success(),
        "run: {status}; see {}",
        job.log(1).display()
    );
    assert_store_free(&job.dir().join("state")).await;
}

/// The store opens for writing again: nothing the tools did holds it.
async fn assert_store_free(path: &Path) {
    let store = autoglm_state::RocksBackend::open(path, autoglm_state::RocksOptions::default())
        .expect("the store opens for writing");
    store.close().await.expect("close");
}
