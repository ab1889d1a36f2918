//! A change-data-capture job on the real chain: a PostgreSQL database of its own, a Debezium
//! connector in the stack's Kafka Connect that captures its `customers` table, and an autoglm
//! config whose route reads what the connector writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use autoglm_demo::connect::{Connect, Converter, DebeziumSource};
use autoglm_demo::crm::Crm;
use autoglm_demo::{Received, latest, read_committed, recreate_topics};
use autoglm_kafka::ClientSettings;
use autoglm_tests::{CdcStack, Stack, unique};
use serde_json::Value as Json;

/// How the connector encodes, and the route's mapping that goes with it.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The converter of keys and values.
    pub converter: Converter,
    /// Debezium's `decimal.handling.mode`.
    pub decimal_handling_mode: &'static str,
    /// Debezium's `time.precision.mode`.
    pub time_precision_mode: &'static str,
    /// The route's `mapping:` (YAML flow).
    pub mapping: String,
    /// The route's `version:` (YAML flow): `"{ column: version }"` or `log_position`.
    pub version: &'static str,
}

/// One database, its connector, and the processor's topics and config.
#[derive(Debug)]
pub struct CdcJob {
    /// The database's (and the connector's, and the topic prefix's) name.
    pub name: String,
    /// The connector's settings.
    pub source: DebeziumSource,
    /// The ERP topic.
    pub target: String,
    /// The dead-letter topic.
    pub dlq: String,
    /// A connection to the job's database.
    pub crm: Crm,
    dir: PathBuf,
    admin_url: String,
    connect: Connect,
    kafka: ClientSettings,
}

impl CdcJob {
    /// Creates the database, runs `schema_sql` in it, creates the topics (3 partitions) and
    /// writes the config. The connector starts with [`CdcJob::start_connector`].
    pub async fn new(stack: &Stack, cdc: &CdcStack, capture: &Capture, schema_sql: &str) -> Self {
        let name = unique("dbz").replace('-', "_");
        let admin = Crm::connect(&cdc.postgres_url).await.expect("postgres");
        admin
            .client()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let mut url = url::Url::parse(&cdc.postgres_url).expect("postgres url");
        url.set_path(&name);
        let crm = Crm::connect(url.as_str())
            .await
            .expect("connect to the job's database");
        crm.client()
            .batch_execute(schema_sql)
            .await
            .expect("create the job's table");
        let source = DebeziumSource {
            postgres_url: url.to_string(),
            topic_prefix: name.clone(),
            converter: capture.converter,
            decimal_handling_mode: capture.decimal_handling_mode,
            time_precision_mode: capture.time_precision_mode,
            registry_v2_url: stack
                .registry_url
                .replace("/apis/ccompat/v7", "/apis/registry/v2"),
            partitions: 3,
        };
        let (target, dlq) = (format!("{name}.erp"), format!("{name}.dlq"));
        let kafka = stack.kafka();
        recreate_topics(&kafka, &[&source.topic(), &target, &dlq], 3)
            .await
            .expect("topics");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let encoding = match capture.converter {
            Converter::Avro => "avro",
            Converter::JsonWithSchema | Converter::JsonWithoutSchema => "json",
        };
        let yaml = format!(
            r#"
kafka: {{ bootstrap_servers: "{bootstrap}", group_id: {name}, instance_id: "0" }}
schema_registry: {{ url: "{registry}" }}
event_queue: {{ storage_path: {state} }}
log_level: info
routes:
  - name: customers
    source: {{ topic: {topic}, envelope: debezium, encoding: {encoding} }}
    key_fields: [id]
    version: {version}
    mapping: {mapping}
    targets: [ {{ topic: {target}, format: json }} ]
    dlq_topic: {dlq}
    delete: tombstone
"#,
            bootstrap = stack.bootstrap,
            registry = stack.registry_url,
            state = dir.join("state").display(),
            topic = source.topic(),
            mapping = capture.mapping,
            version = capture.version,
        );
        std::fs::write(dir.join("config.yaml"), yaml).expect("write config");
        Self {
            name,
            source,
            target,
            dlq,
            crm,
            dir,
            admin_url: cdc.postgres_url.clone(),
            connect: Connect::new(&cdc.connect_url),
            kafka,
        }
    }

    /// Starts the connector and waits until it has written its snapshot of the `rows` rows
    /// already in the table.
    ///
    /// One connector starts at a time, across the tests of a binary: while the worker
    /// rebalanced for several new connectors at once, a snapshot once read none of the rows
    /// committed before it began, and they were never captured.
    pub async fn start_connector(&self, rows: i64) {
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = STARTING.lock().await;
        let config = self.source.config().expect("connector config");
        self.connect
            .put(&self.name, &config)
            .await
            .expect("start the Debezium connector");
        self.captured(rows).await;
    }

    /// Waits until Connect has committed an offset of the connector's stream (past its
    /// snapshot): a worker killed from then on resumes the stream instead of snapshotting again.
    pub async fn streaming(&self) {
        self.connect
            .wait_streaming(&self.name, Duration::from_secs(120))
            .await
            .expect("Debezium streams");
    }

    /// Waits until the connector has written at least `records` records.
    pub async fn captured(&self, records: i64) {
        autoglm_demo::wait_for_records(
            &self.kafka,
            &self.source.topic(),
            records,
            Duration::from_secs(120),
        )
        .await
        .expect("Debezium writes the changes");
    }

    /// Waits until the ERP topic's log holds more than `seen` records (aborted ones and commit
    /// markers count too): autoglm is at work. Returns how many it holds.
    pub async fn erp_grows_past(&self, seen: i64) -> i64 {
        autoglm_demo::wait_for_records(
            &self.kafka,
            &self.target,
            seen + 1,
            Duration::from_secs(120),
        )
        .await
        .expect("autoglm writes to the ERP topic")
    }

    /// Starts `autoglm run` (stopping after `idle_secs` without input), logging to
    /// `run-<n>.log`.
    pub fn start(&self, run: usize, idle_secs: u64) -> Child {
        super::spawn_autoglm(
            &self.dir.join("config.yaml"),
            &self.log(run),
            idle_secs,
            &[],
        )
    }

    /// Runs `autoglm run` until it is idle for 4 s; panics unless it succeeds.
    pub async fn run_to_idle(&self, run: usize) {
        let mut child = self.start(run, 4);
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

    /// The log file of run `run`.
    pub fn log(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run-{run}.log"))
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ERP topic's latest record per id (tombstones remove), read committed.
    pub async fn erp(&self) -> BTreeMap<i64, Json> {
        let records = read_committed(&self.kafka, None, &self.target, Duration::from_secs(3))
            .await
            .expect("read the ERP topic");
        latest(&records).expect("ERP keys")
    }

    /// The dead-letter topic's records, read committed.
    pub async fn dead_letters(&self) -> Vec<Received> {
        read_committed(&self.kafka, None, &self.dlq, Duration::from_secs(2))
            .await
            .expect("read the DLQ")
    }

    /// Removes the connector, its slot and publication, and the database.
    pub async fn cleanup(self) {
        let _ = self.connect.remove(&self.name).await;
        // The slot is released a moment after its connector stops.
        for _ in 0..40 {
            let _ = self
                .crm
                .drop_replication(&self.source.slot(), &self.source.publication())
                .await;
            let left = self
                .crm
                .client()
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.source.slot()],
                )
                .await
                .expect("query slots");
            if left.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(self.crm);
        let admin = Crm::connect(&self.admin_url).await.expect("postgres");
        let _ = admin
            .client()
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
        if !std::thread::panicking() && std::env::var_os("AUTOGLM_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
