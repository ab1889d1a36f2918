//! `make bench`: how fast the real binary copies a preloaded CDC topic, against ceilings measured
//! in the same run on the same broker.
//!
//! ```text
//!  preload N Debezium Avro records (P partitions, ~5% stale or duplicate versions)
//!     (a) the broker alone: kafka-producer-perf-test and kafka-consumer-perf-test, same record size
//!     (b) autoglm run --pass-through, at least once   (c) the same, exactly once
//!     (d) the full pipeline, at least once            (e) the full pipeline, exactly once
//!  each run: records/s and MB/s between the first and the last committed offset, CPU µs per
//!  record of the processor and of the broker (/proc), the processor's peak RSS
//!  ratios: R_txn = c / b, R_proc = e / c
//! ```
//!
//! The table goes to the terminal, the figures to `<out>/bench-<unix time>.json`. Machines are
//! noisy: compare ratios within one run, not absolute numbers across runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use autoglm_codec::AvroTarget;
use autoglm_demo::{CRM_SCHEMA, customer, envelope, recreate_topics};
use autoglm_kafka::ClientSettings;
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde::Serialize;
use serde_json::Value as Json;

/// Benchmark the processor against the broker's own ceiling.
#[derive(Debug, Parser)]
struct Args {
    /// Input records to preload.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Distinct entity keys.
    #[arg(long, default_value_t = 20_000)]
    keys: u64,
    /// Input partitions.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "AUTOGLM_KAFKA_BOOTSTRAP")]
    bootstrap_servers: String,
    /// The registry's Confluent-compatible API.
    #[arg(long, env = "AUTOGLM_SCHEMA_REGISTRY_URL")]
    schema_registry_url: String,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    name: &'static str,
    what: &'static str,
    records_per_sec: f64,
    mb_per_sec: f64,
    processor_cpu_us_per_record: Option<f64>,
    broker_cpu_us_per_record: Option<f64>,
    peak_rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    unix_time: u64,
    records: usize,
    keys: u64,
    partitions: i32,
    avg_record_bytes: usize,
    runs: Vec<Run>,
    r_txn: Option<f64>,
    r_proc: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let repo = repo_root();
    let settings = ClientSettings::new(&args.bootstrap_servers).with_client_id("autoglm-bench");
    let registry = SrSettings::new_builder(args.schema_registry_url.clone())
        .set_timeout(Duration::from_secs(30))
        .build()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let source = format!("bench-crm-{stamp}");

    eprintln!(
        "bench: preloading {} records into {source} ({} partitions)",
        args.records, args.partitions
    );
    recreate_topics(&settings, &[&source], args.partitions).await?;
    let bytes = preload(&settings, registry, &source, args.records, args.keys).await?;
    let avg = bytes / args.records.max(1);
    eprintln!("bench: preloaded, {avg} bytes per record on average");

    let mut runs = Vec::new();
    eprintln!("bench: (a) the broker alone");
    let ceiling_topic = format!("bench-ceiling-{stamp}");
    recreate_topics(&settings, &[&ceiling_topic], args.partitions).await?;
    runs.extend(broker_ceiling(
        &repo,
        &settings,
        &args,
        avg,
        &ceiling_topic,
    )?);
    let modes: [(&'static str, &'static str, bool, bool); 4] = [
        ("b", "pass-through, at least once", true, false),
        ("c", "pass-through, exactly once", true, true),
        ("d", "full pipeline, at least once", false, false),
        ("e", "full pipeline, exactly once", false, true),
    ];
    for (name, what, pass_through, exactly_once) in modes {
        eprintln!("bench: ({name}) {what}");
        let run = processor_run(
            &repo,
            &settings,
            &args,
            &source,
            stamp,
            avg,
            name,
            pass_through,
            exactly_once,
        )
        .await
        .with_context(|| format!("run ({name})"))?;
        eprintln!("bench: ({name}) {:.0} records/s", run.records_per_sec);
        runs.push(Run { what, ..run });
    }
    let rate = |name: &str| {
        runs.iter()
            .find(|r| r.name == name)
            .map(|r| r.records_per_sec)
    };
    let ratio = |a: &str, b: &str| Some(rate(a)? / rate(b)?);
    let report = Report {
        unix_time: stamp,
        records: args.records,
        keys: args.keys,
        partitions: args.partitions,
        avg_record_bytes: avg,
        r_txn: ratio("c", "b"),
        r_proc: ratio("e", "c"),
        runs,
    };
    print_table(&report);
    std::fs::create_dir_all(&args.out)?;
    let file = args.out.join(format!("bench-{stamp}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    eprintln!("bench: wrote {}", file.display());
    Ok(())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Produces `records` CRM change events over `keys` keys: each key's version mostly rises, about
/// 5% of the records repeat or go back to an older version. Returns the payload bytes.
async fn preload(
    settings: &ClientSettings,
    registry: SrSettings,
    topic: &str,
    records: usize,
    keys: u64,
) -> anyhow::Result<usize> {
    let avro = AvroTarget::new(registry, topic, CRM_SCHEMA)?;
    let producer: FutureProducer = settings
        .client_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut versions = vec![0i64; usize::try_from(keys)?];
    let mut bytes = 0;
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..records {
        let id = rng.u64(0..keys);
        let slot = &mut versions[usize::try_from(id)?];
        let version = match rng.u8(0..100) {
            0..3 if *slot > 1 => *slot - 1, // stale
            3..5 if *slot > 0 => *slot,     // duplicate
            _ => {
                *slot += 1;
                *slot
            }
        };
        let id = i64::try_from(id)?;
        let name = format!("customer {id:07} of the east region");
        let email = format!("customer.{id}@example.com");
        let credit = format!("{}.{:02}", 1000 + id % 9000, id % 100);
        let row = customer(id, &name, &email, "91310000MA1FL0000X", &credit, version);
        let lsn = i64::try_from(i)? + 1_000;
        let Json::Object(event) = envelope("u", Some(row.clone()), Some(row), lsn, false) else {
            bail!("envelope is not an object");
        };
        let payload = avro.encode(&event).await?;
        bytes += payload.len();
        let key = format!("{{\"id\":{id}}}");
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .context("enqueue")?,
        );
        if pending.len() == 10_000 {
            for delivery in pending.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(bytes)
}

/// (a): the broker's producer and consumer throughput for records of `size` bytes.
fn broker_ceiling(
    repo: &Path,
    settings: &ClientSettings,
    args: &Args,
    size: usize,
    topic: &str,
) -> anyhow::Result<Vec<Run>> {
    let broker = broker_pid(repo);
    let cpu_before = broker.and_then(cpu_ticks);
    let produced = kafka_tool(
        repo,
        &[
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            &args.records.to_string(),
            "--record-size",
            &size.to_string(),
            "--throughput",
            "-1",
            "--producer-props",
            &format!("bootstrap.servers={}", settings.bootstrap_servers()),
            "acks=all",
            "linger.ms=5",
        ],
    )?;
    let cpu_after = broker.and_then(cpu_ticks);
    // "200000 records sent, 98765.4 records/sec (43.21 MB/sec), …"
    let produce_rate = produced
        .lines()
        .rev()
        .find_map(|l| {
            l.split(" records/sec")
                .next()?
                .rsplit(", ")
                .next()?
                .parse::<f64>()
                .ok()
        })
        .context("ProducerPerformance printed no rate")?;
    let consumed = kafka_tool(
        repo,
        &[
            "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server",
            settings.bootstrap_servers(),
            "--topic",
            topic,
            "--messages",
            &args.records.to_string(),
            "--timeout",
            "60000",
        ],
    )?;
    // The CSV line after the header; fetch.nMsg.sec (the 10th field) leaves out the group join.
    let consume_rate = consumed
        .lines()
        .rfind(|l| l.matches(',').count() >= 9 && !l.contains("start.time"))
        .and_then(|l| l.split(',').nth(9)?.trim().parse::<f64>().ok())
        .context("ConsumerPerformance printed no rate")?;
    let broker_us = cpu_before
        .zip(cpu_after)
        .map(|(a, b)| ticks_to_us(b - a) / args.records as f64);
    let mb = |rate: f64| rate * size as f64 / 1e6;
    Ok(vec![
        Run {
            name: "a-produce",
            what: "broker: kafka-producer-perf-test",
            records_per_sec: produce_rate,
            mb_per_sec: mb(produce_rate),
            processor_cpu_us_per_record: None,
            broker_cpu_us_per_record: broker_us,
            peak_rss_mib: None,
        },
        Run {
            name: "a-consume",
            what: "broker: kafka-consumer-perf-test",
            records_per_sec: consume_rate,
            mb_per_sec: mb(consume_rate),
            processor_cpu_us_per_record: None,
            broker_cpu_us_per_record: None,
            peak_rss_mib: None,
        },
    ])
}

fn kafka_tool(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("bash")
        .arg(repo.join("deploy/local/stack.sh"))
        .arg("kafka-tool")
        .args(args)
        .output()
        .context("stack.sh kafka-tool")?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// (b)–(e): the real binary copies the preloaded topic.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
async fn processor_run(
    repo: &Path,
    settings: &ClientSettings,
    args: &Args,
    source: &str,
    stamp: u64,
    record_bytes: usize,
    name: &'static str,
    pass_through: bool,
    exactly_once: bool,
) -> anyhow::Result<Run> {
    let dir = std::env::temp_dir().join(format!("autoglm-bench-{stamp}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let group = format!("bench-{stamp}-{name}");
    let target = format!("bench-erp-{stamp}-{name}");
    let config = std::fs::read_to_string(repo.join("open-autoglm-config.yaml"))?
        .replace("127.0.0.1:39092", &args.bootstrap_servers)
        .replace(
            "http://127.0.0.1:38081/apis/ccompat/v7",
            &args.schema_registry_url,
        )
        .replace("group_id: autoglm-demo", &format!("group_id: {group}"))
        .replace(
            "storage_path: .stack/demo/state",
            &format!("storage_path: {}", dir.join("state").display()),
        )
        .replace("persistence: true", &format!("persistence: {exactly_once}"))
        .replace("topic: crm.customers\n", &format!("topic: {source}\n"))
        .replace("topic: erp.customers\n", &format!("topic: {target}\n"))
        .replace(
            "dlq_topic: crm.customers.dlq",
            &format!("dlq_topic: {target}.dlq"),
        )
        .replace("log_level: info", "log_level: warn")
        .replace(
            "schema: schemas/",
            &format!("schema: {}/schemas/", repo.display()),
        );
    let dlq = format!("{target}.dlq");
    recreate_topics(settings, &[&target, &dlq], args.partitions).await?;
    let config_file = dir.join("config.yaml");
    std::fs::write(&config_file, config)?;

    let binary = std::env::current_exe()?.with_file_name("autoglm");
    let mut command = Command::new(&binary);
    command
        .args(["run", "--exit-when-idle-secs", "3", "--config"])
        .arg(&config_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log"))?);
    if pass_through {
        command.arg("--pass-through");
    }
    let child = command
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let sample = watch(
        settings,
        &group,
        source,
        args.partitions,
        child,
        broker_pid(repo),
    )
    .await?;
    let records = sample.records as f64;
    let seconds = sample.seconds.max(1e-9);
    Ok(Run {
        name,
        what: "",
        records_per_sec: records / seconds,
        mb_per_sec: records * record_bytes as f64 / seconds / 1e6,
        processor_cpu_us_per_record: Some(ticks_to_us(sample.processor_ticks) / records.max(1.0)),
        broker_cpu_us_per_record: sample
            .broker_ticks
            .map(|t| ticks_to_us(t) / records.max(1.0)),
        peak_rss_mib: Some(sample.peak_rss_kib as f64 / 1024.0),
    })
}

/// What one processor run did between its first and its last committed offset.
#[derive(Debug, Default)]
struct Sample {
    records: u64,
    seconds: f64,
    processor_ticks: u64,
    broker_ticks: Option<u64>,
    peak_rss_kib: u64,
}

/// Follows the group's committed offsets until they reach the end of `source`, sampling the
/// processor's and the broker's CPU and the processor's peak RSS.
async fn watch(
    settings: &ClientSettings,
    group: &str,
    source: &str,
    partitions: i32,
    mut child: Child,
    broker: Option<u32>,
) -> anyhow::Result<Sample> {
    // read_uncommitted: a read_committed probe asks for stable offsets, and the broker holds
    // that answer while a transaction with offsets is open, which back-to-back transactions
    // keep true until the very end.
    let probe: Arc<BaseConsumer> = Arc::new(
        settings
            .client_config()
            .set("group.id", group)
            .set("isolation.level", "read_uncommitted")
            .create()?,
    );
    let end: i64 = {
        let probe = Arc::clone(&probe);
        let source = source.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
            let mut end = 0;
            for p in 0..partitions {
                end += probe
                    .fetch_watermarks(&source, p, Duration::from_secs(10))?
                    .1;
            }
            Ok(end)
        })
        .await??
    };
    let pid = child.id();
    let started = Instant::now();
    let mut first: Option<(Instant, i64, u64, Option<u64>)> = None;
    let mut sample = Sample::default();
    loop {
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            bail!("no end after 10 minutes");
        }
        if let Some(status) = child.try_wait()? {
            bail!("the processor exited early: {status}");
        }
        let committed = {
            let probe = Arc::clone(&probe);
            let source = source.to_owned();
            tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
                let mut list = TopicPartitionList::new();
                for p in 0..partitions {
                    list.add_partition(&source, p);
                }
                let committed = probe.committed_offsets(list, Duration::from_secs(10))?;
                Ok(committed
                    .elements()
                    .iter()
                    .map(|e| match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    })
                    .sum())
            })
            .await??
        };
        let now = Instant::now();
        let ticks = cpu_ticks(pid).unwrap_or(0);
        sample.peak_rss_kib = sample.peak_rss_kib.max(peak_rss_kib(pid).unwrap_or(0));
        match first {
            None if committed > 0 => {
                first = Some((now, committed, ticks, broker.and_then(cpu_ticks)));
            }
            Some((t0, c0, p0, b0)) if committed >= end => {
                sample.records = u64::try_from(end - c0)?;
                sample.seconds = (now - t0).as_secs_f64();
                sample.processor_ticks = ticks.saturating_sub(p0);
                sample.broker_ticks = b0
                    .zip(broker.and_then(cpu_ticks))
                    .map(|(a, b)| b.saturating_sub(a));
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.wait();
    Ok(sample)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_to_us(ticks: u64) -> f64 {
    // USER_HZ is 100 on Linux.
    ticks as f64 * 10_000.0
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn broker_pid(repo: &Path) -> Option<u32> {
    std::fs::read_to_string(repo.join(".stack/kafka/kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn print_table(report: &Report) {
    println!(
        "\n{} records ({} bytes avg), {} keys, {} partitions",
        report.records, report.avg_record_bytes, report.keys, report.partitions
    );
    println!(
        "{:<10} {:<34} {:>12} {:>8} {:>12} {:>12} {:>9}",
        "run", "what", "records/s", "MB/s", "cpu µs/rec", "broker µs", "RSS MiB"
    );
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for run in &report.runs {
        println!(
            "{:<10} {:<34} {:>12.0} {:>8.1} {:>12} {:>12} {:>9}",
            run.name,
            run.what,
            run.records_per_sec,
            run.mb_per_sec,
            opt(run.processor_cpu_us_per_record),
            opt(run.broker_cpu_us_per_record),
            opt(run.peak_rss_mib)
        );
    }
    let ratio = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    println!(
        "R_txn = c/b = {}   R_proc = e/c = {}",
        ratio(report.r_txn),
        ratio(report.r_proc)
    );
}
