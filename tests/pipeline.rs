//! End to end against the real broker and registry: the CRM → ERP route from the README, run
//! in-process, checked with `read_committed` readers.

mod common;

use std::time::Duration;

use autoglm_config::Overrides;
use autoglm_demo::{DemoValue, read_committed, recreate_topics, scenario};
use autoglm_runtime::{Pipeline, RunOptions};
use autoglm_tests::{
    KafkaCuts, Outage, authority, batch_codecs, produce_plain, repo_root, stack, unique,
};
use common::{Streaming, Topics, by_key, json_upsert_config, run, tempfile_dir, upsert_rows};

fn config(
    stack: &autoglm_tests::Stack,
    t: &Topics,
    state: &std::path::Path,
) -> autoglm_config::Config {
    let text =
        std::fs::read_to_string(repo_root().join("open-autoglm-config.yaml")).expect("demo config");
    let text = text
        .replace("127.0.0.1:39092", &stack.bootstrap)
        .replace(
            "http://127.0.0.1:38081/apis/ccompat/v7",
            &stack.registry_url,
        )
        .replace("group_id: autoglm-demo", &format!("group_id: {}", t.group))
        .replace(
            "storage_path: .stack/demo/state",
            &format!("storage_path: {}", state.display()),
        )
        // The demo reads Debezium's JSON from a real database; these tests feed the same route
        // the synthetic Avro stream.
        .replace(
            "topic: crm.public.customers\n",
            &format!("topic: {}\n", t.source),
        )
        .replace("encoding: json\n", "encoding: avro\n")
        .replace("topic: erp.customers\n", &format!("topic: {}\n", t.target))
        .replace(
            "dlq_topic: crm.customers.dlq",
            &format!("dlq_topic: {}", t.dlq),
        );
    autoglm_config::parse(&text, "test", &repo_root(), Overrides::None).expect("valid config")
}

#[tokio::test]
async fn crm_stream_is_aligned_deduplicated_and_dead_lettered_exactly_once() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "crm", "erp", 3).await;
    let state = tempfile_dir();
    let records = scenario();
    autoglm_demo::produce(&kafka, stack.registry(), &t.source, &records)
        .await
        .expect("produce");

    let summary = run(config(&stack, &t, &state)).await;
    assert_eq!(summary.records, records.len() as u64);
    assert_eq!(summary.dead_lettered, 2, "{summary:?}");
    assert_eq!(summary.tombstones, 1, "{summary:?}");

    let quiet = Duration::from_secs(3);
    let out = read_committed(&kafka, Some(stack.registry()), &t.target, quiet)
        .await
        .expect("read");
    let expected = [
        ("1", "1", false),
        ("1", "2", false),
        ("2", "1", false),
        ("2", "2", false),
        ("3", "1", false),
        ("3", "1", true),
        ("6", "1", false),
    ]
    .map(|(k, v, tomb)| (k.to_owned(), v.to_owned(), tomb));
    assert_eq!(
        by_key(&out),
        expected,
        "each accepted version once; stale, duplicate, late and snapshot rows dropped"
    );
    let alice = out
        .iter()
        .find(|r| r.key == "1" && r.headers["autoglm.version"] == "2")
        .expect("alice v2");
    assert_eq!(
        alice.headers["autoglm.source.topic"], t.source,
        "lineage by default"
    );
    assert!(
        alice.headers["autoglm.source.offset"]
            .parse::<i64>()
            .is_ok()
    );
    assert_eq!(alice.headers["autoglm.op"], "u");
    let value = alice.value.as_ref().expect("value");
    assert_eq!(
        value["user_name"], "alice",
        "usr_name renamed by the regex rule"
    );
    assert_eq!(
        value["email_address"], "alice@new.example.com",
        "Email renamed by the regex rule"
    );
    assert_eq!(
        value["credit_limit"], "1500.00",
        "decimal kept with its scale"
    );
    assert!(value.get("password_hash").is_none(), "dropped field");
    assert_eq!(alice.headers["autoglm.source.topic"], t.source);
    let source_time = scenario()
        .iter()
        .find(|r| {
            r.key["id"] == 1
                && matches!(&r.value, DemoValue::Envelope(e) if e["after"]["version"] == 2)
        })
        .and_then(|r| match &r.value {
            DemoValue::Envelope(e) => e["ts_ms"].as_i64(),
            _ => None,
        });
    assert_eq!(
        alice.timestamp, source_time,
        "the output carries its source record's timestamp"
    );

    let dead = read_committed(&kafka, None, &t.dlq, quiet)
        .await
        .expect("read dlq");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let tax = dead
        .iter()
        .find(|r| r.headers["autoglm.error.rule"] == "fields.tax_id.pattern")
        .expect("tax id record");
    assert_eq!(tax.headers["autoglm.error.class"], "poison");
    assert_eq!(tax.headers["autoglm.error.field"], "tax_id");
    assert!(tax.headers["autoglm.error.message"].contains("not-a-tax-id"));
    let short = dead
        .iter()
        .find(|r| r.headers["autoglm.error.rule"] == "decode")
        .expect("short record");
    assert!(short.headers["autoglm.error.message"].contains("5-byte header"));
    assert_eq!(short.headers["autoglm.source.topic"], t.source);

    // `enable_compression: true`: every batch the processor wrote is lz4, the state changelog's
    // and the dead letters' included.
    for topic in [
        &t.target,
        &t.dlq,
        &format!("{}-customers-changelog", t.group),
    ] {
        let codecs = batch_codecs(topic);
        assert!(
            !codecs.is_empty() && codecs.iter().all(|c| c == "lz4"),
            "{topic}: {codecs:?}"
        );
    }

    // A restart with the same state and group, fed the whole stream again (a replay, as after a
    // producer retry storm): every version is already known, nothing new is emitted.
    autoglm_demo::produce(&kafka, stack.registry(), &t.source, &records)
        .await
        .expect("replay");
    let again = run(config(&stack, &t, &state)).await;
    assert_eq!(
        again.records,
        records.len() as u64,
        "only the new records are read after a restart"
    );
    assert_eq!(again.emitted, 0, "{again:?}");
    assert_eq!(
        again.restored, 0,
        "the store is at its checkpoint: no changelog tail to replay"
    );
    let out = read_committed(&kafka, Some(stack.registry()), &t.target, quiet)
        .await
        .expect("read");
    assert_eq!(
        out.len(),
        expected.len(),
        "no duplicate after restart and replay"
    );

    // The store is lost (a new disk, a new pod): it is rebuilt from the changelog before any
    // record is processed, so yet another replay still emits nothing.
    std::fs::remove_dir_all(&state).expect("wipe the store");
    autoglm_demo::produce(&kafka, stack.registry(), &t.source, &records)
        .await
        .expect("replay");
    let rebuilt = run(config(&stack, &t, &state)).await;
    assert!(
        (4..=summary.emitted).contains(&rebuilt.restored),
        "the newest entry of each of the 4 keys, per transaction: {rebuilt:?}"
    );
    assert_eq!(rebuilt.emitted, 0, "{rebuilt:?}");
    let out = read_committed(&kafka, Some(stack.registry()), &t.target, quiet)
        .await
        .expect("read");
    assert_eq!(out.len(), expected.len(), "no duplicate after a rebuild");
    let _ = std::fs::remove_dir_all(&state);
}

/// One route `accounts` from the JSON upsert topic `t.source` (key `id`, version `rev`) to the
/// JSON topic `t.target`. `top` adds top-level config lines, `mapping` the route's `mapping:`
/// block (indented under the route), both YAML.

#[tokio::test]
async fn json_upsert_topic_with_connect_wrapper_flows_to_a_json_target() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "upsert", "out", 2).await;
    let state = tempfile_dir();
    let config = json_upsert_config(
        &stack,
        &t,
        &state,
        "",
        r#"    lineage_headers: false
    mapping:
      rename_rules: [ { pattern: "e.?mail", to: email_address, case_insensitive: true } ]
      fields:
        balance: { type: { decimal: { scale: 2 } } }
        active: { type: bool }"#,
    );
    let wrapped = |id: i64, rev: i64, balance: &str| {
        serde_json::json!({
            "schema": {"type": "struct", "fields": [
                {"type": "int64", "field": "id"}, {"type": "int64", "field": "rev"},
                {"type": "string", "field": "E_Mail"}, {"type": "string", "field": "balance"},
                {"type": "string", "field": "active"}]},
            "payload": {"id": id, "rev": rev, "E_Mail": format!("u{id}@example.com"), "balance": balance, "active": "yes"}
        })
        .to_string()
    };
    let inputs: Vec<(String, Option<String>)> = vec![
        ("1".into(), Some(wrapped(1, 1, "10.5"))),
        ("1".into(), Some(wrapped(1, 3, "12"))),
        ("1".into(), Some(wrapped(1, 2, "11"))), // stale
        ("2".into(), Some(wrapped(2, 1, "7"))),
        ("2".into(), Some("{not json".into())),   // poison
        ("2".into(), Some(wrapped(2, 2, "abc"))), // not a decimal: poison
        ("1".into(), None),                       // a key-only delete: no version to read
        ("9".into(), None),                       // a delete of a key never seen: nothing to do
    ];
    produce_plain(&kafka, &t.source, &inputs).await;
    let summary = run(config).await;
    assert_eq!(
        (summary.emitted, summary.dropped, summary.dead_lettered),
        (4, 2, 2),
        "{summary:?}"
    );
    let out = read_committed(&kafka, None, &t.target, Duration::from_secs(3))
        .await
        .expect("read");
    let versions: Vec<_> = by_key(&out)
        .into_iter()
        .map(|(k, v, tomb)| format!("{k}@{v}{}", if tomb { "†" } else { "" }))
        .collect();
    assert_eq!(
        versions,
        ["1@1", "1@3", "1@3†", "2@1"],
        "the key-only delete removes the version it found"
    );
    let last = out
        .iter()
        .find(|r| r.key == "1" && r.headers["autoglm.version"] == "3")
        .expect("v3");
    assert!(
        !last
            .headers
            .keys()
            .any(|k| k.starts_with("autoglm.source.")),
        "lineage_headers: false, {:?}",
        last.headers
    );
    let value = last.value.as_ref().expect("value");
    assert_eq!(value["email_address"], "u1@example.com");
    assert_eq!(value["balance"], "12.00");
    assert_eq!(value["active"], true);
    let codecs = batch_codecs(&t.target);
    assert!(
        !codecs.is_empty() && codecs.iter().all(|c| c == "none"),
        "enable_compression is off by default: {codecs:?}"
    );
    let dead = read_committed(&kafka, None, &t.dlq, Duration::from_secs(3))
        .await
        .expect("dlq");
    let rules: Vec<_> = dead
        .iter()
        .map(|r| r.headers["autoglm.error.rule"].clone())
        .collect();
    assert_eq!(rules, ["decode", "fields.balance.type"], "{dead:?}");
    let _ = std::fs::remove_dir_all(&state);
}

/// `commit.max_bytes` closes a batch by size: with 1 byte, every transaction (and every batch
/// polled ahead) holds exactly one record, however many the consumer has at hand.
#[tokio::test]
async fn a_batch_is_bounded_by_bytes_as_well_as_records() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "sized", "out", 2).await;
    let state = tempfile_dir();
    let config = json_upsert_config(
        &stack,
        &t,
        &state,
        "commit: { max_records: 1000, max_bytes: 1 }",
        "",
    );
    const RECORDS: u64 = 12;
    let inputs: Vec<(String, Option<String>)> = (0..RECORDS)
        .map(|id| {
            let value = serde_json::json!({"id": id, "rev": 1, "note": "x".repeat(100)});
            (id.to_string(), Some(value.to_string()))
        })
        .collect();
    produce_plain(&kafka, &t.source, &inputs).await;
    let summary = run(config).await;
    assert_eq!(
        (summary.records, summary.emitted, summary.commits),
        (RECORDS, RECORDS, RECORDS),
        "{summary:?}"
    );
    let out = read_committed(&kafka, None, &t.target, Duration::from_secs(3))
        .await
        .expect("read");
    assert_eq!(out.len() as u64, RECORDS);
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test]
async fn registry_outage_delays_the_stream_but_loses_and_duplicates_nothing() {
    registry_away(Outage::cut, Duration::from_secs(5), 2).await;
}

/// A minute without the registry: the batch waits it out (retried with backoff, never
/// skipped), and the whole input is committed once it is back.
#[tokio::test]
async fn a_minute_without_the_registry_loses_and_dead_letters_nothing() {
    registry_away(Outage::cut, Duration::from_secs(60), 10).await;
}

/// A registry that takes the connection and never answers: each lookup ends at the client's
/// timeout (10 s), as a transient failure, and the batch is retried.
#[tokio::test]
async fn a_hung_registry_is_waited_out_and_nothing_is_lost_or_dead_lettered() {
    registry_away(Outage::hang, Duration::from_secs(13), 1).await;
}

#[tokio::test]
async fn a_registry_answering_500_delays_the_stream_but_loses_nothing() {
    registry_away(Outage::fail_with_500, Duration::from_secs(5), 2).await;
}

/// Runs the demo's route while the registry is away as `away` makes it, for `away_for`, before
/// the processor has looked up a single writer schema: nothing is committed or dead-lettered
/// meanwhile, the batch is retried at least `min_retries` times, and once the registry is back
/// every accepted version is emitted exactly once.
async fn registry_away(away: impl Fn(&Outage), away_for: Duration, min_retries: u64) {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "crm", "erp", 3).await;
    let records = scenario();
    autoglm_demo::produce(&kafka, stack.registry(), &t.source, &records)
        .await
        .expect("produce");

    // The processor talks to the real registry through a forwarder that the test cuts.
    let outage = Outage::forward(authority(&stack.registry_url)).await;
    let path = stack
        .registry_url
        .split_once(authority(&stack.registry_url))
        .map_or("", |(_, path)| path);
    let via_outage = autoglm_tests::Stack {
        registry_url: format!("http://{}{path}", outage.addr()),
        ..stack.clone()
    };
    let state = tempfile_dir();
    let mut config = config(&via_outage, &t, &state);
    config.backoff.initial_interval = Duration::from_millis(200);
    config.backoff.max_interval = Duration::from_secs(1);
    let pipeline = Pipeline::new(config).expect("pipeline");
    // Target schemas are registered (and cached) while the registry answers; then it goes away,
    // before the processor has looked up a single writer schema.
    pipeline.register_schemas().await.expect("register");
    away(&outage);
    let running = tokio::spawn(pipeline.run(RunOptions {
        exit_when_idle: Some(Duration::from_secs(4)),
        ..RunOptions::default()
    }));
    tokio::time::sleep(away_for).await;
    let quiet = Duration::from_secs(2);
    let during = read_committed(&kafka, None, &t.target, quiet)
        .await
        .expect("read");
    let dead_during = read_committed(&kafka, None, &t.dlq, quiet)
        .await
        .expect("read dlq");
    assert!(
        during.is_empty() && dead_during.is_empty(),
        "nothing is committed, and nothing dead-lettered, while the registry is away"
    );
    outage.restore();
    let summary = running.await.expect("task").expect("run");
    assert!(
        summary.retries >= min_retries,
        "the batch was retried: {summary:?}"
    );
    assert_eq!(summary.records, records.len() as u64, "{summary:?}");
    assert_eq!(
        summary.dead_lettered, 2,
        "only the real poison: {summary:?}"
    );
    let out = read_committed(&kafka, Some(stack.registry()), &t.target, quiet)
        .await
        .expect("read");
    let versions: Vec<_> = by_key(&out)
        .into_iter()
        .map(|(k, v, tomb)| format!("{k}@{v}{}", if tomb { "†" } else { "" }))
        .collect();
    assert_eq!(
        versions,
        ["1@1", "1@2", "2@1", "2@2", "3@1", "3@1†", "6@1"],
        "each accepted version exactly once"
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// A minute in which the processor cannot reach the broker (every connection of its client id
/// stalls, as in a network partition or a broker that does not answer), from the middle of a
/// transaction, while input keeps coming. The broker's own clocks run on: it ends the open
/// transaction (15 s) and the group session (10 s), so the producer comes back fenced. The run makes its producer again, rejoins
/// and goes on by itself: no exit, nothing lost, dead-lettered or written twice, and every input
/// record committed (the lag back to zero).
#[tokio::test]
async fn a_minute_cut_off_from_the_broker_loses_duplicates_and_dead_letters_nothing() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "cutoff", "out", 3).await;
    let cuts = KafkaCuts::for_stack().await;
    let state = tempfile_dir();
    let mut config = json_upsert_config(&stack, &t, &state, "", "");
    config.kafka.bootstrap_servers = cuts.addr().to_string();
    config.kafka.instance_id = "cut-off".into();
    config.backoff.initial_interval = Duration::from_millis(200);
    config.backoff.max_interval = Duration::from_secs(2);
    let streaming = Streaming::start(&kafka, &t, config);
    // Cut once a transaction is open: right after the broker got an AddPartitionsToTxn (API
    // key 24) of the processor's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        cuts.cut_after("autoglm-cut-off", 24),
    )
    .await
    .expect("a transaction began within a minute");
    tokio::time::sleep(Duration::from_secs(60)).await;
    cuts.heal("autoglm-cut-off");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let summary = streaming.finish(&kafka, &t, Duration::from_secs(120)).await;
    assert!(
        cuts.stalled() > 0,
        "the cut stalled no connection: nothing was cut"
    );
    assert!(
        summary.retries >= 1,
        "a batch failed in the cut: {summary:?}"
    );
    assert_eq!(
        summary.new_producers, 1,
        "fenced once, and made again: {summary:?}"
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// The changelog deleted, and every state directory with it (a new instance, pods without
/// volumes): no store says how far the changelog reached, but the group's last commits do (their
/// marks). The run stops, naming the topic, instead of rebuilding an empty state that would
/// accept the old versions again.
#[tokio::test]
async fn a_changelog_deleted_with_the_state_directory_stops_the_run_naming_it() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "relog-all", "out", 2).await;
    let state = tempfile_dir();
    let config = json_upsert_config(&stack, &t, &state, "", "");
    produce_plain(&kafka, &t.source, &upsert_rows(1, 0..20)).await;
    assert_eq!(run(config.clone()).await.emitted, 20);

    let changelog = format!("{}-accounts-changelog", t.group);
    recreate_topics(&kafka, &[&changelog], 2)
        .await
        .expect("changelog recreated");
    std::fs::remove_dir_all(&state).expect("state directory deleted");
    let error = Pipeline::new(config)
        .expect("pipeline")
        .run(RunOptions {
            exit_when_idle: Some(Duration::from_secs(4)),
            ..RunOptions::default()
        })
        .await
        .expect_err("an empty state is not rebuilt from a changelog that lost its records");
    let message = error.to_string();
    assert!(
        message.starts_with("state changelog: the group's last commit of input partition "),
        "{message}"
    );
    assert!(message.contains(&changelog), "{message}");
    assert!(message.contains("reset to the earliest"), "{message}");
    let _ = std::fs::remove_dir_all(&state);
}

/// A changed key layout on an instance whose store was rebuilt from the changelog alone (its
/// directory deleted): no local layout file refuses it, the group's last commits do.
#[tokio::test]
async fn a_changed_key_layout_over_a_rebuilt_store_is_refused_unless_accepted() {
    let (config, state) = one_row_with_a_region("relayout").await;
    std::fs::remove_dir_all(&state).expect("state directory deleted");
    let message = run_rekeyed(&config, false)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("the group's last commit of route accounts's input partition 0")
            && message.contains(r#"route accounts: key_fields ["id"] → ["id", "region"]"#),
        "{message}"
    );
    let message = run_rekeyed(&config, false)
        .await
        .expect_err("a refused run records no layout: still refused")
        .to_string();
    assert!(message.contains("another key layout"), "{message}");
    run_rekeyed(&config, true).await.expect("accepted");
    run_rekeyed(&config, false)
        .await
        .expect("the accepted layout is recorded beside the store now");
    let _ = std::fs::remove_dir_all(&state);
}

/// The upsert route over fresh topics (`prefix`), run once over one row `{"id": 1, "rev": 1,
/// "region": "eu"}`: its config, and its state directory.
async fn one_row_with_a_region(prefix: &str) -> (autoglm_config::Config, std::path::PathBuf) {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, prefix, "out", 1).await;
    let state = tempfile_dir();
    let config = json_upsert_config(&stack, &t, &state, "", "");
    let value = serde_json::json!({"id": 1, "rev": 1, "region": "eu"}).to_string();
    produce_plain(&kafka, &t.source, &[("1".to_owned(), Some(value))]).await;
    assert_eq!(run(config.clone()).await.emitted, 1);
    (config, state)
}

/// Runs `config` with `key_fields` [id, region] until idle, with `--accept-layout-change` or
/// without.
async fn run_rekeyed(
    config: &autoglm_config::Config,
    accept_layout_change: bool,
) -> Result<autoglm_runtime::RunSummary, autoglm_runtime::RunError> {
    let mut rekeyed = config.clone();
    rekeyed.routes[0].key_fields = vec!["id".to_owned(), "region".to_owned()];
    Pipeline::new(rekeyed)
        .expect("pipeline")
        .run(RunOptions {
            exit_when_idle: Some(Duration::from_secs(2)),
            accept_layout_change,
            ..RunOptions::default()
        })
        .await
}

/// A record whose schema id the registry holds under another subject only (a producer set up
/// with another topic's subject, or another subject name strategy). The id alone names the
/// writer schema, as Confluent's deserializers read it: the record decodes under that schema,
/// and the route's rules decide (a schema without the route's version column is a dead letter,
/// rule `version`). No subject is checked: a RecordNameStrategy producer's records would all be
/// refused.
#[tokio::test]
async fn a_schema_id_of_another_subject_decodes_by_id_and_the_routes_rules_decide() {
    use autoglm_codec::AvroTarget;
    use autoglm_demo::{CRM_SCHEMA, DemoRecord, customer, envelope};
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "foreign", "erp", 1).await;
    // Another subject's schemas: the CRM one with one more column, and one without `version`.
    let other = unique("elsewhere");
    let wider = CRM_SCHEMA.replace(
        r#"{"name": "region","#,
        r#"{"name": "segment", "type": ["null", "string"], "default": null}, {"name": "region","#,
    );
    let unversioned = CRM_SCHEMA.replace(
        r#",
        {"name": "version", "type": "long"}"#,
        "",
    );
    assert!(
        wider != CRM_SCHEMA && unversioned != CRM_SCHEMA,
        "the schemas differ"
    );
    let row = |id: i64| {
        let mut after = customer(
            id,
            "dave",
            "dave@example.com",
            "91310000MA1FL0003A",
            "1.00",
            1,
        );
        let serde_json::Value::Object(envelope) =
            envelope("c", None, Some(after.take()), 200, false)
        else {
            unreachable!("an envelope is an object")
        };
        envelope
    };
    let mut unversioned_row = row(10);
    unversioned_row["after"]
        .as_object_mut()
        .expect("after")
        .remove("version");
    let registry = stack.registry();
    let encode = async |subject_topic: String,
                        schema: String,
                        row: serde_json::Map<String, serde_json::Value>| {
        AvroTarget::new(registry.clone(), &subject_topic, &schema)
            .expect("schema")
            .encode(&row)
            .await
            .expect("encode")
    };
    let records = vec![
        DemoRecord {
            note: "another subject's wider schema",
            key: serde_json::json!({"id": 9}),
            value: DemoValue::Raw(encode(other.clone(), wider, row(9)).await),
        },
        DemoRecord {
            note: "another subject's schema without version",
            key: serde_json::json!({"id": 10}),
            value: DemoValue::Raw(encode(format!("{other}-v"), unversioned, unversioned_row).await),
        },
    ];
    autoglm_demo::produce(&kafka, stack.registry(), &t.source, &records)
        .await
        .expect("produce");

    let state = tempfile_dir();
    let summary = run(config(&stack, &t, &state)).await;
    assert_eq!(
        (summary.emitted, summary.dead_lettered),
        (1, 1),
        "{summary:?}"
    );
    let out = read_committed(
        &kafka,
        Some(stack.registry()),
        &t.target,
        Duration::from_secs(3),
    )
    .await
    .expect("read");
    let versions: Vec<_> = by_key(&out)
        .into_iter()
        .map(|(k, v, _)| format!("{k}@{v}"))
        .collect();
    assert_eq!(versions, ["9@1"]);
    let dead = read_committed(&kafka, None, &t.dlq, Duration::from_secs(3))
        .await
        .expect("dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].headers["autoglm.error.rule"], "version",
        "{:?}",
        dead[0].headers
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// Sets `max.message.bytes` of each of `topics` (an operator's topic limit).
async fn limit_message_bytes(kafka: &autoglm_kafka::ClientSettings, topics: &[&str], bytes: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config().create().expect("admin");
    let bytes = bytes.to_string();
    let configs: Vec<AlterConfig<'_>> = topics
        .iter()
        .map(|t| AlterConfig::new(ResourceSpecifier::Topic(t)).set("max.message.bytes", &bytes))
        .collect();
    for result in admin
        .alter_configs(&configs, &AdminOptions::new())
        .await
        .expect("alter configs")
    {
        result.expect("max.message.bytes set");
    }
}

/// An output record larger than its target topic takes (`max.message.bytes`) goes to the DLQ
/// with the reason, and the batch goes on: before, the transaction failed, aborted and retried
/// the same record for ever. The DLQ topic here takes no more than the target, so the dead
/// letter holds a reference to the input (its topic, partition and offset) and not its bytes.
#[tokio::test]
async fn a_record_too_large_for_its_target_is_dead_lettered_and_the_rest_flows() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "large", "out", 1).await;
    limit_message_bytes(&kafka, &[&t.target, &t.dlq], 4_000).await;
    let state = tempfile_dir();
    let config = json_upsert_config(&stack, &t, &state, "", "");
    let small = |id: u64, rev: u64| {
        let value = serde_json::json!({"id": id, "rev": rev, "note": "x".repeat(100)});
        (id.to_string(), Some(value.to_string()))
    };
    let mut inputs: Vec<(String, Option<String>)> = (0..20).map(|id| small(id, 1)).collect();
    let large = serde_json::json!({"id": 7, "rev": 2, "note": "y".repeat(20_000)}).to_string();
    inputs.push(("7".into(), Some(large)));
    inputs.extend((20..40).map(|id| small(id, 1)));
    inputs.push(small(7, 3));
    produce_plain(&kafka, &t.source, &inputs).await;

    let summary = tokio::time::timeout(Duration::from_secs(120), run(config))
        .await
        .expect("the run ends: a record too large is not retried for ever");
    // No retry: batch.size keeps librdkafka's batches of small records within the topic's
    // limit too (a batch of 42 was refused whole before).
    assert_eq!(
        (
            summary.records,
            summary.emitted,
            summary.dead_lettered,
            summary.retries
        ),
        (42, 41, 1, 0),
        "{summary:?}"
    );
    let out = read_committed(&kafka, None, &t.target, Duration::from_secs(3))
        .await
        .expect("read");
    let sevens: Vec<_> = by_key(&out)
        .into_iter()
        .filter(|(k, _, _)| k == "7")
        .map(|(_, v, _)| v)
        .collect();
    assert_eq!(
        sevens,
        ["1", "3"],
        "the large version 2 is not in the target"
    );
    let dead = read_committed(&kafka, None, &t.dlq, Duration::from_secs(3))
        .await
        .expect("dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(letter.key, "7");
    assert_eq!(letter.headers["autoglm.error.rule"], "size");
    assert_eq!(letter.headers["autoglm.error.field"], t.target);
    assert!(
        letter.headers["autoglm.error.message"].contains("max.message.bytes"),
        "{:?}",
        letter.headers
    );
    assert!(
        letter.value.is_none(),
        "the input is too large for the DLQ too"
    );
    assert!(
        letter.headers["autoglm.payload.omitted"].starts_with("omitted: "),
        "{:?}",
        letter.headers
    );
    assert_eq!(letter.headers["autoglm.source.offset"], "20");
    let _ = std::fs::remove_dir_all(&state);
}

/// An operator deletes the state changelog and a new, empty one is created in its place. The
/// store's checkpoints are past the new topic's end: the next run stops, naming the topic and
/// the way to rebuild, instead of going on with a store the changelog no longer backs.
#[tokio::test]
async fn a_changelog_deleted_under_the_store_stops_the_run_naming_it() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "relog", "out", 2).await;
    let state = tempfile_dir();
    let config = json_upsert_config(&stack, &t, &state, "", "");
    let inputs = upsert_rows(1, 0..20);
    produce_plain(&kafka, &t.source, &inputs).await;
    let summary = run(config.clone()).await;
    assert_eq!(summary.emitted, 20, "{summary:?}");

    let changelog = format!("{}-accounts-changelog", t.group);
    recreate_topics(&kafka, &[&changelog], 2)
        .await
        .expect("changelog recreated");
    let error = Pipeline::new(config)
        .expect("pipeline")
        .run(RunOptions {
            exit_when_idle: Some(Duration::from_secs(4)),
            ..RunOptions::default()
        })
        .await
        .expect_err("a store ahead of its changelog is not trusted");
    let message = error.to_string();
    assert!(message.starts_with("state changelog: "), "{message}");
    assert!(message.contains(&changelog), "{message}");
    assert!(message.contains("storage_path"), "{message}");
    let _ = std::fs::remove_dir_all(&state);
}

/// A state store RocksDB finds corrupt is set aside and rebuilt from the changelog before any
/// record is processed: an exact replay of the input is then dropped, not emitted again.
#[tokio::test]
async fn a_corrupt_store_is_rebuilt_from_the_changelog_and_replays_are_still_dropped() {
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "corrupt", "out", 2).await;
    let state = tempfile_dir();
    let config = json_upsert_config(&stack, &t, &state, "", "");
    let inputs = upsert_rows(1, 0..20);
    produce_plain(&kafka, &t.source, &inputs).await;
    assert_eq!(run(config.clone()).await.emitted, 20);

    std::fs::write(state.join("CURRENT"), b"MANIFEST-99999\xff").expect("damage the store");
    produce_plain(&kafka, &t.source, &inputs).await;
    let summary = run(config).await;
    assert_eq!(
        (summary.restored, summary.emitted, summary.dropped),
        (20, 0, 20),
        "rebuilt whole, and the replay dropped: {summary:?}"
    );
    let name = state.file_name().expect("a name").to_string_lossy();
    let aside = std::fs::read_dir(state.parent().expect("parent"))
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.corrupt-")))
        })
        .expect("the corrupt store is kept aside");
    let _ = std::fs::remove_dir_all(&aside);
    let _ = std::fs::remove_dir_all(&state);
}

/// A route whose key fields changed over existing state is refused, naming the change, until the
/// run says it accepts it; a mapping change is not a layout change.
#[tokio::test]
async fn a_changed_key_layout_over_existing_state_is_refused_unless_accepted() {
    let (config, state) = one_row_with_a_region("layout").await;
    let mut remapped = config.clone();
    remapped.routes[0].mapping.drop = vec!["region".to_owned()];
    run(remapped).await;

    let message = run_rekeyed(&config, false)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains(r#"route accounts: key_fields ["id"] → ["id", "region"]"#),
        "{message}"
    );
    run_rekeyed(&config, true).await.expect("accepted");
    run_rekeyed(&config, false)
        .await
        .expect("the accepted layout is the stored one now");
    let _ = std::fs::remove_dir_all(&state);
}

/// The state store's disk fills up mid-run: the run stops with the disk's error, having
/// committed nothing the changelog does not hold; once there is room again, the next run
/// restores the changelog's tail and goes on, each version once. The disk is a small tmpfs the
/// test mounts (it needs root, as CI has).
#[tokio::test]
async fn a_full_state_disk_stops_the_run_and_the_next_one_recovers_once_there_is_room() {
    const ROWS: u64 = 2_000;
    let stack = stack().await;
    let kafka = stack.kafka();
    let t = Topics::fresh(&kafka, "diskfull", "out", 1).await;
    let disk = tempfile_dir();
    // As root, or else through sudo without a password (`sudo -n`).
    let as_root = |program: &str| {
        let root = rustix::process::geteuid().is_root();
        let mut command = std::process::Command::new(if root { program } else { "sudo" });
        if !root {
            command.args(["-n", program]);
        }
        command
    };
    let mounted = as_root("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("mount");
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root, or sudo without a password"
    );
    let unmount = || {
        let _ = as_root("umount").arg(&disk).status();
    };
    let state = disk.join("state");
    let config = json_upsert_config(&stack, &t, &state, "", "");
    produce_plain(&kafka, &t.source, &upsert_rows(1, 0..20)).await;
    assert_eq!(run(config.clone()).await.emitted, 20);

    // A run that holds the store open; then the disk fills, and new versions of every key,
    // and more keys, arrive.
    let running = tokio::spawn(
        Pipeline::new(config.clone())
            .expect("pipeline")
            .run(RunOptions {
                exit_when_idle: Some(Duration::from_secs(20)),
                ..RunOptions::default()
            }),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let filler = disk.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![7u8; 64 << 10];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    while std::io::Write::write_all(&mut file, &[7]).is_ok() {}
    drop(file);
    produce_plain(&kafka, &t.source, &upsert_rows(2, 0..ROWS)).await;
    let outcome = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("the run ends")
        .expect("the run's task");
    let error = match outcome {
        Ok(summary) => {
            unmount();
            panic!("the run went on with a full disk: {summary:?}");
        }
        Err(error) => error,
    };
    let chain = autoglm_core::chain(&error).to_string();
    assert!(chain.contains("state store"), "{chain}");
    assert!(chain.contains("No space left on device"), "{chain}");

    std::fs::remove_file(&filler).expect("room again");
    let summary = run(config).await;
    unmount();
    let out = read_committed(&kafka, None, &t.target, Duration::from_secs(3))
        .await
        .expect("read");
    let mut seen = std::collections::HashMap::new();
    for (key, version, _) in by_key(&out) {
        *seen.entry((key, version)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 20 + ROWS as usize, "every version: {summary:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "each version once: {summary:?}"
    );
    let _ = std::fs::remove_dir_all(&disk);
}
