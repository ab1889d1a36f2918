//! Shared helpers for the integration tests: where the local stack is, unique names, topics.
//!
//! The tests run against the real broker and registry that `make up` starts. Addresses come from
//! `AUTOGLM_KAFKA_BOOTSTRAP` / `AUTOGLM_SCHEMA_REGISTRY_URL`, or else from `deploy/local/stack.sh env`,
//! so no test hard-codes an address. When the stack does not answer, [`stack`] panics with a message
//! that says so: these tests fail, they never skip.

mod cuts;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use autoglm_kafka::ClientSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_all_subjects};

/// The repository root: the nearest directory, from the current one up, that holds
/// `deploy/local/stack.sh` (cargo runs each test in its package's directory). Found at run time,
/// not from `CARGO_MANIFEST_DIR`: clones that share one target directory also share the test
/// executables, and cargo leaves in them the path of whichever clone built them, so a test
/// would read that clone's files and ask that clone's stack.
pub fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().expect("the current directory");
    cwd.ancestors()
        .find(|dir| dir.join("deploy/local/stack.sh").is_file())
        .unwrap_or_else(|| panic!("no deploy/local/stack.sh in {} or above it", cwd.display()))
        .to_path_buf()
}

pub use cuts::KafkaCuts;

/// Addresses of the running local stack.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Base URL of the registry's Confluent-compatible API.
    pub registry_url: String,
}

impl Stack {
    /// Client settings for the stack's broker.
    pub fn kafka(&self) -> ClientSettings {
        ClientSettings::new(&self.bootstrap).with_client_id("autoglm-tests")
    }

    /// Registry client settings.
    pub fn registry(&self) -> SrSettings {
        SrSettings::new_builder(self.registry_url.clone())
            .set_timeout(Duration::from_secs(10))
            .build()
            .expect("registry settings")
    }
}

/// The local stack's addresses, after checking that both services answer.
///
/// # Panics
///
/// When either service does not answer: the message names it and says how to start the stack.
pub async fn stack() -> Stack {
    let stack = Stack {
        bootstrap: address("AUTOGLM_KAFKA_BOOTSTRAP"),
        registry_url: address("AUTOGLM_SCHEMA_REGISTRY_URL"),
    };
    if let Err(e) = autoglm_kafka::probe(&stack.kafka(), Duration::from_secs(10)).await {
        panic!(
            "the local stack is not running: kafka at {} did not answer ({e}); start it with `make up`",
            stack.bootstrap
        );
    }
    if let Err(e) = get_all_subjects(&stack.registry()).await {
        panic!(
            "the local stack is not running: schema registry at {} did not answer ({e}); start it with `make up`",
            stack.registry_url
        );
    }
    stack
}

fn address(var: &str) -> String {
    if let Ok(value) = std::env::var(var) {
        return value;
    }
    let script = repo_root().join("deploy/local/stack.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("env")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(var)?.strip_prefix('=').map(str::to_owned))
        .unwrap_or_else(|| panic!("{var} is not set and `stack.sh env` does not print it"))
}

/// Addresses of the stack's change-data-capture source: PostgreSQL and Kafka Connect (with the
/// Debezium connector).
#[derive(Debug, Clone)]
pub struct CdcStack {
    /// `postgresql://user@host:port/db` of the stack's CRM database.
    pub postgres_url: String,
    /// Kafka Connect's REST API.
    pub connect_url: String,
}

/// The stack's PostgreSQL and Kafka Connect, after checking that both answer.
///
/// # Panics
///
/// When either does not answer: the message names it and says how to start the stack.
pub async fn cdc_stack() -> CdcStack {
    let cdc = CdcStack {
        postgres_url: address("AUTOGLM_POSTGRES_URL"),
        connect_url: address("AUTOGLM_CONNECT_URL"),
    };
    let plugins = format!("{}/connector-plugins", cdc.connect_url);
    let answer = reqwest_get(&plugins).await;
    if !answer
        .as_deref()
        .is_ok_and(|body| body.contains("PostgresConnector"))
    {
        panic!(
            "the local stack is not running: Kafka Connect with Debezium at {} did not answer ({answer:?}); start it with `make up`",
            cdc.connect_url
        );
    }
    let host = cdc
        .postgres_url
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or("", |(host, _)| host);
    if tokio::net::TcpStream::connect(host).await.is_err() {
        panic!(
            "the local stack is not running: PostgreSQL at {} did not answer; start it with `make up`",
            cdc.postgres_url
        );
    }
    cdc
}

/// The stack's trace collector (Jaeger): where to send spans and where to ask for them.
#[derive(Debug, Clone)]
pub struct Jaeger {
    /// Base URL of its OTLP/HTTP receiver (`tracing.otlp_endpoint`).
    pub otlp_endpoint: String,
    /// Base URL of its query API (`/api/traces/<trace id>`, `/api/traces?service=…`).
    pub query_url: String,
}

/// The stack's Jaeger, after checking that its query API and its OTLP port answer.
///
/// # Panics
///
/// When either does not answer: the message says how to start the stack.
pub async fn jaeger() -> Jaeger {
    let jaeger = Jaeger {
        otlp_endpoint: address("AUTOGLM_OTLP_ENDPOINT"),
        query_url: address("AUTOGLM_JAEGER_QUERY_URL"),
    };
    let services = reqwest_get(&format!("{}/api/services", jaeger.query_url)).await;
    if !services
        .as_deref()
        .is_ok_and(|body| body.contains("\"data\""))
    {
        panic!(
            "the local stack is not running: Jaeger's query API at {} did not answer ({services:?}); start it with `make up`",
            jaeger.query_url
        );
    }
    if tokio::net::TcpStream::connect(authority(&jaeger.otlp_endpoint))
        .await
        .is_err()
    {
        panic!(
            "the local stack is not running: Jaeger's OTLP receiver at {} did not answer; start it with `make up`",
            jaeger.otlp_endpoint
        );
    }
    jaeger
}

async fn reqwest_get(url: &str) -> Result<String, String> {
    let response = reqwest::get(url).await.map_err(|e| e.to_string())?;
    response.text().await.map_err(|e| e.to_string())
}

/// A name no other test run uses: `prefix-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates `topic` with `partitions` partitions (replication 1) and waits for the result.
pub async fn create_topic(stack: &Stack, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = stack
        .kafka()
        .client_config()
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("create topic {name}: {code}"));
    }
}

/// Produces `(key, value)` records to `topic` in order, each acknowledged before the next; a
/// `None` value is a tombstone.
pub async fn produce_plain<K: AsRef<str>>(
    kafka: &ClientSettings,
    topic: &str,
    records: &[(K, Option<String>)],
) {
    let producer: rdkafka::producer::FutureProducer =
        kafka.client_config().create().expect("producer");
    for (key, value) in records {
        let mut record = rdkafka::producer::FutureRecord::to(topic).key(key.as_ref());
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer
            .send(
                record,
                rdkafka::util::Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

/// What an [`Outage`] does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards it to the service.
    Up,
    /// Closes it.
    Cut,
    /// Holds it open and answers nothing (a hung service), until the mode changes.
    Hang,
    /// Answers every request with `HTTP/1.1 500 Internal Server Error`.
    Error500,
}

/// A TCP forwarder in front of a real service, to cut it off, hang it or make it fail, and bring
/// it back: an outage without stopping the service (which would lose Apicurio's in-memory
/// schemas). Changing the mode ends every connection open in the old one.
#[derive(Debug)]
pub struct Outage {
    addr: std::net::SocketAddr,
    mode: tokio::sync::watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Outage {
    /// Starts forwarding a local port to `upstream` (`host:port`).
    pub async fn forward(upstream: &str) -> Outage {
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let addr = listener.local_addr().expect("local address");
        let (mode, watch) = tokio::sync::watch::channel(Mode::Up);
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let now = *watch.borrow();
                let mut watch = watch.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let changed = watch.wait_for(move |m| *m != now);
                    tokio::select! {
                        () = serve(now, inbound, &upstream) => {}
                        _ = changed => {}
                    }
                });
            }
        });
        Outage { addr, mode, accept }
    }

    /// The forwarder's `host:port`.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Takes connections and answers nothing on them: a service that hangs.
    pub fn hang(&self) {
        self.mode.send_replace(Mode::Hang);
    }

    /// Answers every request with a 500.
    pub fn fail_with_500(&self) {
        self.mode.send_replace(Mode::Error500);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Up);
    }
}

/// Serves one connection in `mode`.
async fn serve(mode: Mode, mut inbound: tokio::net::TcpStream, upstream: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    match mode {
        Mode::Up => {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        }
        Mode::Cut => {}
        Mode::Hang => std::future::pending().await,
        Mode::Error500 => {
            let mut request = [0u8; 16 * 1024];
            while let Ok(n) = inbound.read(&mut request).await {
                if n == 0 {
                    break;
                }
                let answer = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                if inbound.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The `host:port` of an `http://host:port/path` URL.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// The compression codec of each record batch of `topic` the local broker holds, read from its
/// log segments with Kafka's own `DumpLogSegments` (no client sees a batch's codec). Control
/// batches (transaction markers) are left out: the broker writes those uncompressed.
///
/// # Panics
///
/// When the broker's data directory (`AUTOGLM_STACK_DIR`, else `<repo>/.stack`, as `stack.sh`
/// reads it) holds no partition of `topic`, or the tool fails.
pub fn batch_codecs(topic: &str) -> Vec<String> {
    let stack_dir = std::env::var_os("AUTOGLM_STACK_DIR")
        .map_or_else(|| repo_root().join(".stack"), PathBuf::from);
    let data = stack_dir.join("kafka/data");
    let prefix = format!("{topic}-");
    let segments: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap_or_else(|e| panic!("the broker's data directory {}: {e}", data.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|dir| {
            dir.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|partition| partition.parse::<u32>().is_ok())
        })
        .flat_map(|dir| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
        })
        .map(|entry| entry.path())
        .filter(|file| file.extension().is_some_and(|ext| ext == "log"))
        .collect();
    assert!(
        !segments.is_empty(),
        "no log segment of {topic} under {}",
        data.display()
    );
    let files = segments
        .iter()
        .map(|s| s.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let output = kafka_tool("kafka.tools.DumpLogSegments", &["--files", &files]);
    assert!(
        output.status.success(),
        "DumpLogSegments failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("isControl: false"))
        .filter_map(|line| line.split("compresscodec: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Runs a Kafka CLI tool class (`org.apache.kafka.tools.TransactionsCommand`, …) from the stack's
/// jars, through `stack.sh kafka-tool`, and returns what it printed.
///
/// # Panics
///
/// When `stack.sh` cannot be started.
pub fn kafka_tool(class: &str, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("deploy/local/stack.sh"))
        .arg("kafka-tool")
        .arg(class)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("stack.sh kafka-tool {class}: {e}"))
}
