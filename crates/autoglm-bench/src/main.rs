//! `make bench`: how fast, how promptly and how far the real binary goes, measured against
//! ceilings taken in the same run on the same broker.
//!
//! ```text
//!  input: Debezium (MySQL) Avro change events of a 16-column CRM row (strings, decimals,
//!         timestamps; ~500 bytes), every key created once, then updates with ~5% stale or
//!         duplicate versions; mapped by bench/autoglm-bench.yaml onto a 15-field ERP record
//!
//!  throughput (each run: records/s and MB/s between the first and the last committed offset,
//!  CPU µs per record of the processor and of the broker from /proc, the processor's peak RSS)
//!    (a) the broker alone: kafka-producer-perf-test and kafka-consumer-perf-test, same size
//!    (b) autoglm run --pass-through, at least once   (c) the same, exactly once
//!    (d) the full pipeline, at least once            (e) the full pipeline, exactly once
//!    ratios: R_txn = c / b, R_proc = e / c
//!  json: (e) on the same changes as Debezium's JSON converter writes them, with the Connect
//!    schema wrapper (its default) and without; JSON out. Ratio: JSON (e) / Avro (e)
//!  ab (only when asked): (e) of A (another binary, or this one) and B (this build, with the
//!    config overrides of --ab-env) in alternating pairs, optionally with --ab-keys keys in the
//!    state; medians, B/A and each batch step's median: the same-run A/B of an optimisation
//!  latency: an open-loop input at 50%, 80% and 90% of (e) into a fresh exactly-once processor;
//!    now − record timestamp at a read_committed reader of the target; p50/p99/p99.9/max; the
//!    processor's batches step by step (its autoglm_pipeline_stage_duration_seconds); and the
//!    cores the processor, the broker, the bench and the whole machine kept busy
//!  scaling: (e) with 10k and 1M keys in the state (the update phase after every key was
//!    created, with peak RSS and the batches step by step), and with 1, 2 and 3 instances in
//!    one group (from the moment the group has settled)
//!  restore: (e) SIGKILLed once it has committed 1M keys, then restarted (i) on its state
//!    directory and (ii) on an empty one (the whole changelog): time until /ready
//! ```
//!
//! Progress goes to stderr every 2 s; the tables to stdout; every figure to
//! `<out>/bench-<unix time>.json` and the bar charts to `<out>/bench-<unix time>.png`. The
//! topics and state directories of the run are deleted at the end (`--keep` keeps them; a
//! failed run keeps the processor logs). A phase that fails stops the bench with its error; a
//! record in a dead-letter topic is such a failure. Nothing asserts on a time.
//! Machines are noisy: compare ratios within one run, not absolute numbers across runs. Before
//! each preload, the free space under `.stack` is checked against what the source and its runs
//! will take.

mod latency;
mod plot;
mod processor;
mod progress;
mod report;
mod stages;
mod workload;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use autoglm_codec::AvroTarget;
use autoglm_demo::recreate_topics;
use autoglm_kafka::ClientSettings;
use clap::{Parser, ValueEnum};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use schema_registry_converter::async_impl::schema_registry::SrSettings;

use latency::LatencyRun;
use processor::{Spec, Start, Template, Trace, Window};
pub use progress::Progress;
use report::{
    AbReport, AbSetup, InstanceRun, KeyScaleRun, RecordShape, Report, RestartRun, RestoreReport,
    Run,
};
use workload::{Encoder, Input, Workload};

/// Benchmark the processor against the broker's own ceiling.
#[derive(Debug, Parser)]
struct Args {
    /// Input records of the throughput, latency-stream and instance runs; also the updates after
    /// the creates of each key-scaling run.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Distinct entity keys of the throughput and latency streams.
    #[arg(long, default_value_t = 20_000)]
    keys: u64,
    /// Input partitions.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Keys in the state for the scaling runs of (e), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    key_scales: Vec<u64>,
    /// Processor instances for the scaling runs of (e), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    instances: Vec<usize>,
    /// Keys committed before the restore phase's SIGKILL.
    #[arg(long, default_value_t = 1_000_000)]
    restore_keys: u64,
    /// Open-loop loads of the latency runs, as fractions of the max rate.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.8,0.9")]
    latency_loads: Vec<f64>,
    /// The max rate (records/s) the loads are fractions of; default: what (e) measured.
    #[arg(long)]
    latency_max_rate: Option<f64>,
    /// Measured seconds of each latency run.
    #[arg(long, default_value_t = 15)]
    latency_secs: u64,
    /// Seconds of input before the measurement starts.
    #[arg(long, default_value_t = 3)]
    latency_warmup_secs: u64,
    /// Phases to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ceiling,modes,json,latency,keys,instances,restore"
    )]
    phases: Vec<Phase>,
    /// The `ab` phase's A: another `autoglm` binary (say, a build of the commit before an
    /// optimisation); B is the one next to this bench. Default: this one too (then B differs
    /// by --ab-env).
    #[arg(long)]
    ab_binary: Option<PathBuf>,
    /// A config override for B only, as the environment variable that sets it
    /// (`AUTOGLM__STATE__ROW_CACHE_BYTES=33554432`); repeatable.
    #[arg(long, value_parser = env_override)]
    ab_env: Vec<(String, String)>,
    /// Keys in the state for the `ab` phase: each run creates them, then the --records updates
    /// after are measured (as in the key-scaling runs). Default: the throughput stream.
    #[arg(long)]
    ab_keys: Option<u64>,
    /// Alternating pairs of (e) runs in the `ab` phase.
    #[arg(long, default_value_t = 5)]
    ab_pairs: usize,
    /// The input of the `ab` phase.
    #[arg(long, value_enum, default_value = "json")]
    ab_input: Input,
    /// Keep the run's topics and state directories (and the processor logs).
    #[arg(long)]
    keep: bool,
    /// Where the JSON results and the plot go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "AUTOGLM_KAFKA_BOOTSTRAP")]
    bootstrap_servers: String,
    /// The registry's Confluent-compatible API.
    #[arg(long, env = "AUTOGLM_SCHEMA_REGISTRY_URL")]
    schema_registry_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// (a) the broker alone
    Ceiling,
    /// (b)–(e)
    Modes,
    /// (e) on the same changes in Debezium JSON, with and without the schema wrapper
    Json,
    /// (e) of --ab-binary (A) and this build (B) in alternating pairs
    Ab,
    /// open-loop latency at fractions of (e)
    Latency,
    /// (e) with more keys in the state
    Keys,
    /// (e) with more instances
    Instances,
    /// SIGKILL, then restart and rebuild
    Restore,
}

/// What every phase shares: the stack, the binary, the bench config and what to clean up.
#[derive(Debug)]
pub struct Bench {
    settings: ClientSettings,
    template: Template,
    repo: PathBuf,
    /// This run's state directories and configs.
    work: PathBuf,
    broker: Option<u32>,
    partitions: i32,
    stamp: u64,
    binary: PathBuf,
    http: reqwest::Client,
    encoder: Encoder,
    topics: Mutex<Vec<String>>,
    groups: Mutex<Vec<String>>,
}

impl Bench {
    /// `bench-<stamp>-<name>`.
    fn topic(&self, name: &str) -> String {
        format!("bench-{}-{name}", self.stamp)
    }

    /// A group of this run; its changelog topic is deleted at the end.
    fn group(&self, name: &str) -> String {
        let group = format!("bench-{}-{name}", self.stamp);
        if let Ok(mut groups) = self.groups.lock() {
            groups.push(group.clone());
        }
        group
    }

    async fn create_topics(&self, topics: &[&str]) -> anyhow::Result<()> {
        recreate_topics(&self.settings, topics, self.partitions).await?;
        if let Ok(mut created) = self.topics.lock() {
            created.extend(topics.iter().map(|t| (*t).to_owned()));
        }
        Ok(())
    }

    /// Deletes the run's topics, and its state directories unless it failed. The groups are
    /// left to expire (offsets.retention.minutes): librdkafka's DeleteGroups crashed the bench
    /// once at exit.
    async fn cleanup(&self, succeeded: bool) -> anyhow::Result<()> {
        let groups = self.groups.lock().map(|g| g.clone()).unwrap_or_default();
        let mut topics = self.topics.lock().map(|t| t.clone()).unwrap_or_default();
        // The processor names its changelog topics `<group>-<route>-changelog`.
        topics.extend(groups.iter().map(|g| format!("{g}-customers-changelog")));
        let admin: AdminClient<DefaultClientContext> = self.settings.client_config().create()?;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        admin.delete_topics(&topics, &AdminOptions::new()).await?;
        if succeeded {
            let _ = std::fs::remove_dir_all(&self.work);
        } else {
            eprintln!("bench: the processor logs are in {}", self.work.display());
        }
        Ok(())
    }
}

impl Bench {
    /// Fails before a preload of `records` records of `input` when the disk of the local stack
    /// (the broker's data; else of the state directories) lacks room for them: the source, and
    /// about as much again for the targets and changelogs of the runs on it, all kept until the
    /// bench ends, plus 1 GiB.
    async fn ensure_room(&self, records: u64, input: Input) -> anyhow::Result<()> {
        let mut sample = Workload::new(1, 1)?;
        let change = sample.next().context("a sample change")?;
        let (id, event) = sample.event(change);
        let (key, value) = self.encoder.encode(input, id, event).await?;
        let per_record = (key.len() + value.len()) as u64;
        let needed = records * per_record * 3 + (1 << 30);
        let stack = stack_dir(&self.repo);
        let disk = if stack.exists() {
            stack
        } else {
            self.work.clone()
        };
        let stat =
            rustix::fs::statvfs(&disk).with_context(|| format!("statvfs {}", disk.display()))?;
        let free = stat.f_bavail * stat.f_frsize;
        let gb = |bytes: u64| bytes as f64 / 1e9;
        if free < needed {
            bail!(
                "{records} records of {} ({per_record} bytes each) need about {:.1} GB on the disk of {} \
                 (the source, the runs' targets and changelogs, kept until the bench ends), and it has \
                 {:.1} GB free: free space (`make reset` deletes the local broker's data) or lower \
                 --records or --key-scales",
                input.label(),
                gb(needed),
                disk.display(),
                gb(free)
            );
        }
        Ok(())
    }
}

/// A preloaded source topic.
#[derive(Debug, Clone)]
struct Loaded {
    topic: String,
    input: Input,
    creates: u64,
    records: u64,
    bytes: u64,
}

impl Loaded {
    fn avg_bytes(&self) -> f64 {
        self.bytes as f64 / self.records.max(1) as f64
    }
}

/// Source topics by (creates, updates, encoding), each loaded once.
#[derive(Debug, Default)]
struct Sources(HashMap<(u64, u64, Input), Loaded>);

impl Sources {
    /// Avro input of `creates` creates, then `updates` updates.
    async fn get(&mut self, bench: &Bench, creates: u64, updates: u64) -> anyhow::Result<Loaded> {
        self.get_as(bench, creates, updates, Input::Avro).await
    }

    /// The same changes, encoded as `input`.
    async fn get_as(
        &mut self,
        bench: &Bench,
        creates: u64,
        updates: u64,
        input: Input,
    ) -> anyhow::Result<Loaded> {
        if let Some(loaded) = self.0.get(&(creates, updates, input)) {
            return Ok(loaded.clone());
        }
        let topic = bench.topic(&format!("crm-{creates}-{updates}-{}", input.label()));
        eprintln!(
            "bench: preloading {topic}: {creates} creates, then {updates} updates ({} partitions, {})",
            bench.partitions,
            input.label()
        );
        let workload = Workload::new(creates, updates)?;
        let records = workload.len();
        bench.ensure_room(records, input).await?;
        bench.create_topics(&[&topic]).await?;
        let bytes =
            workload::preload(&bench.settings, (&bench.encoder, input), &topic, workload).await?;
        let loaded = Loaded {
            topic,
            input,
            creates,
            records,
            bytes,
        };
        self.0.insert((creates, updates, input), loaded.clone());
        Ok(loaded)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(async {
        let bench = setup(&args)?;
        let result = bench_all(&bench, &args).await;
        if args.keep {
            eprintln!(
                "bench: kept topics bench-{}-*, state and logs in {}",
                bench.stamp,
                bench.work.display()
            );
        } else if let Err(e) = bench.cleanup(result.is_ok()).await {
            eprintln!("bench: cleanup failed: {e:#}");
        }
        result
    })
}

fn setup(args: &Args) -> anyhow::Result<Bench> {
    let repo = repo_root()?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let registry = SrSettings::new_builder(args.schema_registry_url.clone())
        .set_timeout(Duration::from_secs(30))
        .build()?;
    Ok(Bench {
        settings: ClientSettings::new(&args.bootstrap_servers).with_client_id("autoglm-bench"),
        template: Template::load(&repo, &args.bootstrap_servers, &args.schema_registry_url)?,
        work: std::env::temp_dir().join(format!("autoglm-bench-{stamp}")),
        broker: broker_pid(&repo),
        partitions: args.partitions,
        stamp,
        binary: std::env::current_exe()?.with_file_name("autoglm"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        // Every Avro input record is encoded under this one subject; the processor decodes by
        // schema id, whatever the topic.
        encoder: Encoder::new(AvroTarget::new(
            registry,
            &format!("bench-{stamp}-crm"),
            workload::SOURCE_SCHEMA,
        )?)?,
        repo,
        topics: Mutex::default(),
        groups: Mutex::default(),
    })
}

async fn bench_all(bench: &Bench, args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let phase = |p: Phase| args.phases.contains(&p);
    let mut sources = Sources::default();
    let main_creates = args.keys.min(args.records).max(1);
    let main = sources
        .get(
            bench,
            main_creates,
            args.records.saturating_sub(main_creates),
        )
        .await?;
    let avg = main.avg_bytes();
    eprintln!("bench: {avg:.0} bytes per record on average");

    let mut runs = Vec::new();
    if phase(Phase::Ceiling) {
        eprintln!("bench: (a) the broker alone");
        let topic = bench.topic("ceiling");
        bench.create_topics(&[&topic]).await?;
        runs.extend(broker_ceiling(bench, args.records, avg, &topic)?);
    }
    if phase(Phase::Modes) {
        let modes: [(&'static str, &'static str, bool, bool); 4] = [
            ("b", "pass-through, at least once", true, false),
            ("c", "pass-through, exactly once", true, true),
            ("d", "full pipeline, at least once", false, false),
            ("e", "full pipeline, exactly once", false, true),
        ];
        for (name, what, pass_through, exactly_once) in modes {
            eprintln!("bench: ({name}) {what}");
            let mode = Mode {
                binary: &bench.binary,
                pass_through,
                exactly_once,
                env: &[],
            };
            runs.push(mode_run(bench, (name, what), name, &main, mode, Start::FirstCommit).await?);
        }
    }
    if phase(Phase::Json) {
        let inputs: [(&'static str, &'static str, Input); 2] = [
            ("e-json", "(e), JSON with the schema wrapper", Input::Json),
            (
                "e-json-plain",
                "(e), JSON without the wrapper",
                Input::JsonPlain,
            ),
        ];
        for (name, what, input) in inputs {
            let source = sources
                .get_as(bench, main.creates, main.records - main.creates, input)
                .await?;
            eprintln!(
                "bench: ({name}) {what}, {:.0} bytes per record",
                source.avg_bytes()
            );
            runs.push(
                mode_run(
                    bench,
                    (name, what),
                    name,
                    &source,
                    Mode::full(&bench.binary),
                    Start::FirstCommit,
                )
                .await?,
            );
        }
    }
    let mut ab = None;
    if phase(Phase::Ab) {
        if args.ab_binary.is_none() && args.ab_env.is_empty() {
            bail!("the `ab` phase needs --ab-binary, --ab-env or both: A and B would be the same");
        }
        let setup = AbSetup {
            a_binary: args.ab_binary.as_deref().unwrap_or(&bench.binary),
            b_binary: &bench.binary,
            b_env: &args.ab_env,
            input: args.ab_input,
            keys: args.ab_keys,
        };
        let source = match setup.keys {
            Some(keys) => sources.get_as(bench, keys, args.records, setup.input),
            None => sources.get_as(
                bench,
                main.creates,
                main.records - main.creates,
                setup.input,
            ),
        }
        .await?;
        ab = Some(ab_phase(bench, &source, &setup, args.ab_pairs).await?);
    }
    let rate = |name: &str| {
        runs.iter()
            .find(|r| r.name == name)
            .map(|r| r.records_per_sec)
    };

    let mut latency_runs = Vec::new();
    if phase(Phase::Latency) {
        match args.latency_max_rate.or_else(|| rate("e")) {
            Some(max) => {
                latency_runs = latency_phase(bench, args, max).await?;
            }
            None => eprintln!(
                "bench: latency skipped: no (e) rate to take fractions of (run `modes` or pass --latency-max-rate)"
            ),
        }
    }

    let mut key_scaling = Vec::new();
    let mut restore = None;
    if phase(Phase::Keys) {
        for &keys in &args.key_scales {
            let source = sources.get(bench, keys, args.records).await?;
            // The restore phase starts from this run, SIGKILLed as soon as it is done.
            let kill = phase(Phase::Restore) && keys == args.restore_keys;
            let (run, group_run) = key_run(bench, &source, kill).await?;
            key_scaling.push(run);
            if kill {
                restore = Some(restore_phase(bench, keys, &group_run).await?);
            }
        }
    }
    if phase(Phase::Restore) && restore.is_none() {
        let source = sources.get(bench, args.restore_keys, args.records).await?;
        let (run, group_run) = key_run(bench, &source, true).await?;
        key_scaling.push(run);
        restore = Some(restore_phase(bench, args.restore_keys, &group_run).await?);
    }

    let mut instance_scaling = Vec::new();
    if phase(Phase::Instances) {
        for &count in &args.instances {
            instance_scaling.push(instance_run(bench, &main, count).await?);
        }
    }

    let ratio = |a: &str, b: &str| Some(rate(a)? / rate(b)?);
    let avg_record_bytes = avg.round() as u64;
    let mut report = Report {
        unix_time: bench.stamp,
        records: main.records,
        keys: main.creates,
        partitions: args.partitions,
        avg_record_bytes,
        r_txn: ratio("c", "b"),
        r_proc: ratio("e", "c"),
        json_vs_avro: ratio("e-json", "e"),
        json_plain_vs_avro: ratio("e-json-plain", "e"),
        ab,
        runs,
        record: RecordShape {
            source_row_fields: workload::ROW_FIELDS,
            target_fields: workload::TARGET_FIELDS,
            avg_bytes: avg_record_bytes,
            stale_or_duplicate_percent: 5.0,
        },
        latency: latency_runs,
        key_scaling,
        instance_scaling,
        restore,
        plot: None,
    };
    report::print_tables(&report);
    std::fs::create_dir_all(&args.out)?;
    let png = args.out.join(format!("bench-{}.png", bench.stamp));
    match plot::draw(&png, &report::plot_title(&report), &report::panels(&report)) {
        Ok(()) => report.plot = Some(png),
        Err(e) => eprintln!("bench: no plot: {e:#}"),
    }
    let file = args.out.join(format!("bench-{}.json", bench.stamp));
    std::fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    eprintln!(
        "bench: wrote {}{} in {:.0} s",
        file.display(),
        report
            .plot
            .as_ref()
            .map_or_else(String::new, |p| format!(" and {}", p.display())),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One throughput run of a single instance over `source`, from `start` to the end; `id` names
/// its group and target, unique in the bench.
async fn mode_run(
    bench: &Bench,
    (name, what): (&'static str, &'static str),
    id: &str,
    source: &Loaded,
    mode: Mode<'_>,
    start: Start,
) -> anyhow::Result<Run> {
    eprintln!("bench: ({id}) {what}");
    let run = group_run(bench, id, source, 1, mode, start, false)
        .await
        .with_context(|| format!("run ({id})"))?;
    let trace = run.trace;
    let window = Window::between(&trace.start, &trace.end);
    eprintln!("bench: ({name}) {:.0} records/s", window.rate());
    Ok(Run {
        name,
        what,
        records_per_sec: window.rate(),
        mb_per_sec: window.rate() * source.avg_bytes() / 1e6,
        processor_cpu_us_per_record: Some(window.processor_us_per_record),
        broker_cpu_us_per_record: window.broker_us_per_record,
        peak_rss_mib: Some(trace.peak_rss_kib as f64 / 1024.0),
        stages: trace.stages,
    })
}

/// (e) of B and A (`setup`), in `pairs` alternating pairs over `source`: the same-run A/B of
/// an optimisation. Each run gets a fresh group, target and state.
async fn ab_phase(
    bench: &Bench,
    source: &Loaded,
    setup: &AbSetup<'_>,
    pairs: usize,
) -> anyhow::Result<AbReport> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let start = match setup.keys {
        Some(keys) => Start::Committed(i64::try_from(keys)?),
        None => Start::FirstCommit,
    };
    for pair in 0..pairs {
        // Alternate which goes first, so that neither always runs on a warmer broker.
        let order = if pair % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_a in order {
            let (mode, name) = if is_a {
                (Mode::full(setup.a_binary), "ab-a")
            } else {
                let b = Mode {
                    env: setup.b_env,
                    ..Mode::full(setup.b_binary)
                };
                (b, "ab-b")
            };
            let id = format!("{name}-{pair}");
            let run = mode_run(bench, (name, "A/B"), &id, source, mode, start).await?;
            if is_a { &mut a } else { &mut b }.push(run);
        }
    }
    let report = AbReport::new(setup, &a, &b);
    eprintln!(
        "bench: A/B over {pairs} pairs: A {:.0} records/s, B {:.0} records/s (medians), B/A = {:.3}",
        report.a_median, report.b_median, report.b_over_a
    );
    Ok(report)
}

/// `KEY=VALUE`, for --ab-env.
fn env_override(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if key.starts_with("AUTOGLM__") => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "`{text}` is not AUTOGLM__KEY__PATH=value (a config override, docs/configuration.md)"
        )),
    }
}

/// A finished (or SIGKILLed) run of one group.
#[derive(Debug)]
struct GroupRun {
    trace: Trace,
    group: String,
    source: String,
    target: String,
    dir: PathBuf,
}

/// What a run starts: which binary, and how.
#[derive(Debug, Clone, Copy)]
struct Mode<'a> {
    binary: &'a Path,
    pass_through: bool,
    exactly_once: bool,
    /// `AUTOGLM__…` config overrides for the processor.
    env: &'a [(String, String)],
}

impl<'a> Mode<'a> {
    /// (e): the full pipeline, exactly once, of `binary`.
    fn full(binary: &'a Path) -> Mode<'a> {
        Mode {
            binary,
            pass_through: false,
            exactly_once: true,
            env: &[],
        }
    }
}

/// Starts `count` instances of a fresh group on `source` and follows them to its end. Unless
/// `kill`, they then exit on their own (3 s idle, 15 s for several); with `kill` they are
/// SIGKILLed at once.
async fn group_run(
    bench: &Bench,
    name: &str,
    source: &Loaded,
    count: usize,
    mode: Mode<'_>,
    start: Start,
    kill: bool,
) -> anyhow::Result<GroupRun> {
    let group = bench.group(name);
    let target = bench.topic(&format!("{name}-erp"));
    bench
        .create_topics(&[&target, &format!("{target}.dlq")])
        .await?;
    let dir = bench.work.join(name);
    let mut instances = Vec::with_capacity(count);
    for i in 0..count {
        let state = dir.join(format!("state-{i}"));
        instances.push(processor::start(
            bench,
            &Spec {
                binary: mode.binary,
                input: source.input,
                group: &group,
                instance: i,
                source: &source.topic,
                target: &target,
                state: &state,
                exactly_once: mode.exactly_once,
                pass_through: mode.pass_through,
                // Several members join one after another, and the rebalances may leave one
                // without partitions for more than 3 s: it must not leave for want of input.
                exit_when_idle_secs: Some(if count > 1 { 15 } else { 3 }),
                env: mode.env,
            },
        )?);
    }
    let label = format!("({name})");
    let trace =
        processor::follow(bench, &label, &group, &source.topic, &mut instances, start).await;
    for instance in &mut instances {
        if kill || trace.is_err() {
            instance.kill();
        } else {
            instance.wait_exit(Duration::from_secs(60)).await?;
        }
    }
    processor::check_no_dead_letters(bench, &target, &dir).await?;
    Ok(GroupRun {
        trace: trace?,
        group,
        source: source.topic.clone(),
        target,
        dir,
    })
}

/// (e) over a source whose creates fill the state with its keys; measures the updates after.
async fn key_run(
    bench: &Bench,
    source: &Loaded,
    kill: bool,
) -> anyhow::Result<(KeyScaleRun, GroupRun)> {
    let keys = source.creates;
    eprintln!("bench: (e) with {keys} keys in the state");
    let name = format!("keys-{keys}");
    let group_run = group_run(
        bench,
        &name,
        source,
        1,
        Mode::full(&bench.binary),
        Start::Committed(i64::try_from(keys)?),
        kill,
    )
    .await
    .with_context(|| format!("run ({name})"))?;
    let trace = &group_run.trace;
    let load = Window::between(&trace.first, &trace.start);
    let updates = Window::between(&trace.start, &trace.end);
    let run = KeyScaleRun {
        keys,
        records: updates.records,
        load_records_per_sec: (load.records > 0).then(|| load.rate()),
        records_per_sec: updates.rate(),
        mb_per_sec: updates.rate() * source.avg_bytes() / 1e6,
        processor_cpu_us_per_record: updates.processor_us_per_record,
        peak_rss_mib: trace.peak_rss_kib as f64 / 1024.0,
        stages: trace.stages.clone(),
    };
    eprintln!(
        "bench: ({name}) {:.0} records/s, peak RSS {:.0} MiB",
        run.records_per_sec, run.peak_rss_mib
    );
    Ok((run, group_run))
}

async fn instance_run(bench: &Bench, source: &Loaded, count: usize) -> anyhow::Result<InstanceRun> {
    eprintln!("bench: (e) with {count} instance(s) in one group");
    let name = format!("instances-{count}");
    let started = Instant::now();
    let trace = group_run(
        bench,
        &name,
        source,
        count,
        Mode::full(&bench.binary),
        Start::Settled,
        false,
    )
    .await
    .with_context(|| format!("run ({name})"))?
    .trace;
    let window = Window::between(&trace.start, &trace.end);
    eprintln!("bench: ({name}) {:.0} records/s", window.rate());
    Ok(InstanceRun {
        instances: count,
        records: window.records,
        records_per_sec: window.rate(),
        mb_per_sec: window.rate() * source.avg_bytes() / 1e6,
        settle_secs: (trace.start.at - started).as_secs_f64(),
        processor_cpu_us_per_record: window.processor_us_per_record,
        peak_rss_mib: trace.peak_rss_kib as f64 / 1024.0,
    })
}

async fn latency_phase(
    bench: &Bench,
    args: &Args,
    max_rate: f64,
) -> anyhow::Result<Vec<LatencyRun>> {
    let warmup = Duration::from_secs(args.latency_warmup_secs);
    let measure = Duration::from_secs(args.latency_secs);
    let top = args.latency_loads.iter().copied().fold(0.0, f64::max);
    let needed = (top * max_rate * (warmup + measure).as_secs_f64()).ceil() as u64 + 1;
    let creates = args.keys.min(needed).max(1);
    eprintln!("bench: latency: encoding {needed} records");
    let records = workload::encode_all(
        &bench.encoder.avro,
        Workload::new(creates, needed.saturating_sub(creates))?,
    )
    .await?;
    let mut runs = Vec::new();
    for &load in &args.latency_loads {
        let rate = load * max_rate;
        eprintln!(
            "bench: latency at {:.0}% of {max_rate:.0} records/s",
            load * 100.0
        );
        let run = latency::run(bench, load, rate, &records, warmup, measure).await?;
        eprintln!(
            "bench: latency at {:.0}%: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
            load * 100.0,
            run.p50_ms,
            run.p99_ms,
            run.p999_ms
        );
        runs.push(run);
    }
    Ok(runs)
}

/// Restarts the SIGKILLed `run` (instance 0) on its own state directory, then on an empty one.
async fn restore_phase(bench: &Bench, keys: u64, run: &GroupRun) -> anyhow::Result<RestoreReport> {
    eprintln!("bench: restore (i): restart on the same state directory");
    let same_state = restart(bench, run, &run.dir.join("state-0")).await?;
    eprintln!("bench: restore (ii): restart on an empty state directory");
    let empty_state = restart(bench, run, &run.dir.join("state-empty")).await?;
    Ok(RestoreReport {
        keys,
        committed_at_kill: run.trace.end.committed,
        same_state,
        empty_state,
    })
}

/// Starts instance 0 of `run`'s group on `state` and times it until it is ready.
async fn restart(bench: &Bench, run: &GroupRun, state: &Path) -> anyhow::Result<RestartRun> {
    let started = Instant::now();
    let mut instance = processor::start(
        bench,
        &Spec {
            binary: &bench.binary,
            input: Input::Avro,
            group: &run.group,
            instance: 0,
            source: &run.source,
            target: &run.target,
            state,
            exactly_once: true,
            pass_through: false,
            exit_when_idle_secs: None,
            env: &[],
        },
    )?;
    let ready = processor::settled(
        bench,
        std::slice::from_mut(&mut instance),
        Duration::from_secs(1800),
    )
    .await;
    let ready_secs = started.elapsed().as_secs_f64();
    let metric = |name| instance.metric(&bench.http, name);
    let restored_records = metric("autoglm_restore_records_total").await;
    let restore_secs = metric("autoglm_restore_duration_seconds_sum").await;
    instance.kill();
    ready?;
    eprintln!(
        "bench: ready after {ready_secs:.2} s, {} changelog records restored",
        restored_records.unwrap_or(0.0)
    );
    Ok(RestartRun {
        ready_secs,
        restored_records,
        restore_secs,
    })
}

/// (a): the broker's producer and consumer throughput for records of `size` bytes.
fn broker_ceiling(bench: &Bench, records: u64, size: f64, topic: &str) -> anyhow::Result<Vec<Run>> {
    let size = size.round() as u64;
    let cpu_before = bench.broker.and_then(processor::cpu_ticks);
    let produced = kafka_tool(
        &bench.repo,
        &[
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            &records.to_string(),
            "--record-size",
            &size.to_string(),
            "--throughput",
            "-1",
            "--producer-props",
            &format!("bootstrap.servers={}", bench.template.bootstrap),
            "acks=all",
            "linger.ms=5",
        ],
    )?;
    let cpu_after = bench.broker.and_then(processor::cpu_ticks);
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
        &bench.repo,
        &[
            "org.apache.kafka.tools.ConsumerPerformance",
            "--bootstrap-server",
            &bench.template.bootstrap,
            "--topic",
            topic,
            "--messages",
            &records.to_string(),
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
        .map(|(a, b)| processor::ticks_to_us(b - a) / records as f64);
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
            stages: Vec::new(),
        },
        Run {
            name: "a-consume",
            what: "broker: kafka-consumer-perf-test",
            records_per_sec: consume_rate,
            mb_per_sec: mb(consume_rate),
            processor_cpu_us_per_record: None,
            broker_cpu_us_per_record: None,
            peak_rss_mib: None,
            stages: Vec::new(),
        },
    ])
}

/// Runs a Kafka tool class through `stack.sh`, echoing its output to stderr as it comes (the
/// perf tools print their progress); returns the output.
fn kafka_tool(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut child = Command::new("bash")
        .arg(repo.join("deploy/local/stack.sh"))
        .arg("kafka-tool")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("stack.sh kafka-tool")?;
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            eprintln!("bench: (a) {line}");
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{} failed ({status})", args[0]);
    }
    Ok(output)
}

/// The repository the bench runs in: the nearest directory, from the current one up, that holds
/// `bench/autoglm-bench.yaml` (`make bench` runs in the root). Found at run time, not from
/// `CARGO_MANIFEST_DIR`: clones that share one target directory also share this executable,
/// and cargo leaves in it the path of whichever clone built it.
fn repo_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("the current directory")?;
    cwd.ancestors()
        .find(|dir| dir.join("bench/autoglm-bench.yaml").is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "no bench/autoglm-bench.yaml in {} or above it: run autoglm-bench inside the repository",
                cwd.display()
            )
        })
}

/// The broker's pid, from the stack's state directory: `AUTOGLM_STACK_DIR` as `stack.sh` reads
/// it (a git worktree shares the stack of the main clone this way), else `<repo>/.stack`.
/// The local stack's directory: `AUTOGLM_STACK_DIR`, as for `stack.sh`, or the repo's `.stack`.
fn stack_dir(repo: &Path) -> PathBuf {
    std::env::var_os("AUTOGLM_STACK_DIR").map_or_else(|| repo.join(".stack"), PathBuf::from)
}

fn broker_pid(repo: &Path) -> Option<u32> {
    std::fs::read_to_string(stack_dir(repo).join("kafka/kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
