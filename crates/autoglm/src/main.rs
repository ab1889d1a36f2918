//! `autoglm`: the command-line entry point. Parsing and wiring only; the work lives in the
//! library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use autoglm_config::Config;
use autoglm_kafka::ClientSettings;
use autoglm_runtime::{Pipeline, RunOptions, Traces};
use clap::{Parser, Subcommand};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_all_subjects};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "autoglm",
    version,
    about = "Open-AutoGLM: a Kafka-native CDC sync processor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file; print every problem with its key path and exit non-zero if any.
    Validate {
        /// The config file.
        #[arg(default_value = autoglm_config::DEFAULT_FILE)]
        file: PathBuf,
    },
    /// Print the effective config (file + AUTOGLM__… overrides), secrets masked.
    PrintConfig {
        /// The config file.
        #[arg(long, short, env = "AUTOGLM_CONFIG", default_value = autoglm_config::DEFAULT_FILE)]
        config: PathBuf,
    },
    /// Run the sync pipeline until SIGTERM/ctrl-c (or until idle, with --exit-when-idle-secs).
    Run {
        /// The config file.
        #[arg(long, short, env = "AUTOGLM_CONFIG", default_value = autoglm_config::DEFAULT_FILE)]
        config: PathBuf,
        /// Stop after this many seconds without input (for demos and batch jobs), counted from
        /// the last record or the last assignment of partitions.
        #[arg(long)]
        exit_when_idle_secs: Option<u64>,
        /// Benchmark baseline: copy records unchanged to each route's first target (no decoding,
        /// state or mapping), with the same consumer, producer, poll loop and commits.
        #[arg(long)]
        pass_through: bool,
        /// Go on although a route's key_fields or version source changed since the state was
        /// built: those routes' keys start with no history (docs/failure-modes.md).
        #[arg(long)]
        accept_layout_change: bool,
    },
    /// Schema Registry tasks for the target schemas in the config.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Check that the Kafka cluster and the Schema Registry answer; with `--config`, with the
    /// config's security settings, and whether its principal holds every right the routes need
    /// (per topic and group). Exit non-zero if anything fails or a right is missing.
    Check {
        /// A config file: its cluster, security, registry and routes (the flags below are then
        /// ignored).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Kafka bootstrap servers, `host:port[,host:port…]` (without `--config`).
        #[arg(
            long,
            env = "AUTOGLM_KAFKA_BOOTSTRAP",
            required_unless_present = "config"
        )]
        bootstrap_servers: Option<String>,
        /// Base URL of a Confluent-compatible Schema Registry API (without `--config`).
        #[arg(
            long,
            env = "AUTOGLM_SCHEMA_REGISTRY_URL",
            required_unless_present = "config"
        )]
        schema_registry_url: Option<String>,
        /// How long each service may take to answer.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// A route's dead-letter topic: list and show its records, and replay them through the
    /// route after a config fix (docs/operations.md).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The state store, read-only and safe while `run` runs: one entity's stored version, or
    /// the store's counts against the changelog.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

/// The config file and a route in it.
#[derive(Debug, clap::Args)]
struct RouteArgs {
    /// The config file.
    #[arg(long, short, env = "AUTOGLM_CONFIG", default_value = autoglm_config::DEFAULT_FILE)]
    config: PathBuf,
    /// The route (its name in the config).
    #[arg(long)]
    route: String,
}

/// Which dead letters.
#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only records dead-lettered at or after this time: RFC 3339 (2025-06-01T10:00:00Z,
    /// 2025-06-01T18:00:00+08:00) or a duration before now (90m, 1h, 2d).
    #[arg(long)]
    since: Option<String>,
    /// Only records whose reason header matches: rule=R, class=C or field=F. Repeated: any
    /// value of one name, all names.
    #[arg(long = "where", value_name = "NAME=VALUE")]
    wheres: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// The route's dead letters with their reasons, read committed from the beginning (or
    /// --since), earliest first. Joins no consumer group and commits nothing.
    List {
        #[command(flatten)]
        at: RouteArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter whole: its headers, key and value (Avro decoded through the registry,
    /// else JSON, else text, else base64).
    Show {
        #[command(flatten)]
        at: RouteArgs,
        /// The record, PARTITION:OFFSET, as `dlq list` prints it.
        record: autoglm_runtime::tools::dlq::RecordRef,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back through the route (to the partition they came from), exactly
    /// once; the route's version guard drops a version older than its state. Reports what it
    /// did; a second replay sends nothing again.
    Replay {
        #[command(flatten)]
        at: RouteArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// List what would be replayed; send and commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// One entity's stored version, tombstone and acceptance time.
    Get {
        #[command(flatten)]
        at: RouteArgs,
        /// The entity key: the plain value of a single key field (42, abc), or a JSON object
        /// of the key fields ({"id": 42}) or array of their values.
        key: String,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Keys, tombstones and bytes per route (an exact scan), and each changelog partition's
    /// checkpoint against the changelog's end.
    Stats {
        /// The config file.
        #[arg(long, short, env = "AUTOGLM_CONFIG", default_value = autoglm_config::DEFAULT_FILE)]
        config: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Register every Avro target schema under `<topic>-value`.
    Register {
        /// The config file.
        #[arg(long, short, env = "AUTOGLM_CONFIG", default_value = autoglm_config::DEFAULT_FILE)]
        config: PathBuf,
    },
    /// Ask the registry whether every Avro target schema is compatible with its `<topic>-value`
    /// subject (by the subject's compatibility level), registering nothing; exit non-zero if any
    /// is not, or if the registry does not answer.
    Check {
        /// The config file.
        #[arg(long, short, env = "AUTOGLM_CONFIG", default_value = autoglm_config::DEFAULT_FILE)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "failpoints")]
    {
        arm_crash_point();
        arm_stop_point();
        arm_pause_point();
    }
    let config = match &cli.command {
        Command::Validate { file } => Some(file.as_path()),
        Command::PrintConfig { config } | Command::Run { config, .. } => Some(config.as_path()),
        Command::Schemas {
            command: SchemasCommand::Register { config } | SchemasCommand::Check { config },
        } => Some(config.as_path()),
        Command::Check { config, .. } => config.as_deref(),
        Command::Dlq {
            command:
                DlqCommand::List { at, .. }
                | DlqCommand::Show { at, .. }
                | DlqCommand::Replay { at, .. },
        }
        | Command::State {
            command: StateCommand::Get { at, .. },
        } => Some(at.config.as_path()),
        Command::State {
            command: StateCommand::Stats { config, .. },
        } => Some(config.as_path()),
    }
    .map(load)
    .transpose();
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let level = config.as_ref().map_or("info", |c| c.log_level.as_str());
    // Only `run` exports traces, and only when its config or OTEL_* ask for it.
    let traces = match (&cli.command, &config) {
        (Command::Run { .. }, Some(c)) => Traces::new(&c.tracing, &c.transactional_id()),
        _ => Ok(Traces::off()),
    };
    let traces = match traces {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("{:#}", anyhow::Error::new(e));
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(
                    EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| level.into())
                        .add_directive(autoglm_runtime::traces::unlogged()),
                ),
        )
        .with(traces.layer())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(execute(cli.command, config, traces.clone()));
    // Blocking librdkafka calls of an overrun shutdown may still run: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The spans still queued, the last transaction's among them, go out before the exit.
    traces.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(autoglm_config::load(path)?)
}

async fn execute(command: Command, config: Option<Config>, traces: Traces) -> anyhow::Result<()> {
    match (command, config) {
        (Command::Validate { file }, Some(config)) => {
            println!(
                "{}: ok ({} routes, {})",
                file.display(),
                config.routes.len(),
                if config.exactly_once() {
                    "exactly once"
                } else {
                    "at least once"
                }
            );
            Ok(())
        }
        (Command::PrintConfig { .. }, Some(config)) => {
            print!("{}", serde_yaml::to_string(&config)?);
            Ok(())
        }
        (
            Command::Run {
                exit_when_idle_secs,
                pass_through,
                accept_layout_change,
                ..
            },
            Some(config),
        ) => {
            let deadline = config.shutdown_timeout;
            let mut pipeline = Pipeline::new(config)?.with_traces(traces);
            if pass_through {
                pipeline = pipeline.pass_through();
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            // Its own task: a blocking call inside the pipeline cannot hold up the deadline.
            let run = tokio::spawn(pipeline.run(RunOptions {
                exit_when_idle: exit_when_idle_secs.map(Duration::from_secs),
                shutdown: shutdown.clone(),
                accept_layout_change,
            }));
            let overrun = async {
                shutdown.cancelled().await;
                tokio::time::sleep(deadline).await;
            };
            let summary = tokio::select! {
                summary = run => summary.map_err(|e| anyhow::anyhow!("pipeline task: {e}"))??,
                () = overrun => anyhow::bail!(
                    "did not stop within shutdown_timeout ({deadline:?}); exiting without a clean leave (the open transaction is aborted by the broker or the next start)"
                ),
            };
            println!(
                "records {} · emitted {} · dropped (stale/duplicate) {} · dead-lettered {} · tombstones skipped {} · commits {} · retries {}",
                summary.records,
                summary.emitted,
                summary.dropped,
                summary.dead_lettered,
                summary.tombstones,
                summary.commits,
                summary.retries
            );
            Ok(())
        }
        (
            Command::Schemas {
                command: SchemasCommand::Register { .. },
            },
            Some(config),
        ) => {
            let pipeline = Pipeline::new(config)?;
            for (topic, id) in pipeline.register_schemas().await? {
                println!("{topic}-value: schema id {id}");
            }
            Ok(())
        }
        (
            Command::Schemas {
                command: SchemasCommand::Check { .. },
            },
            Some(config),
        ) => check_schemas(config).await,
        (Command::Check { timeout_secs, .. }, Some(config)) => {
            check_config(config, Duration::from_secs(timeout_secs)).await
        }
        (
            Command::Check {
                bootstrap_servers: Some(bootstrap_servers),
                schema_registry_url: Some(schema_registry_url),
                timeout_secs,
                ..
            },
            None,
        ) => {
            check(
                &bootstrap_servers,
                &schema_registry_url,
                Duration::from_secs(timeout_secs),
            )
            .await
        }
        (Command::Dlq { command }, Some(config)) => dlq(command, config).await,
        (Command::State { command }, Some(config)) => state(command, config).await,
        (_, None) => anyhow::bail!("this command needs a config file"),
    }
}

/// `autoglm dlq …`: the work is in `autoglm_runtime::tools::dlq`.
async fn dlq(command: DlqCommand, config: Config) -> anyhow::Result<()> {
    use autoglm_runtime::tools::dlq;
    let pipeline = Pipeline::new(config)?;
    let filter = |f: &FilterArgs| {
        dlq::Filter::parse(&f.wheres, f.since.as_deref(), std::time::SystemTime::now())
    };
    match command {
        DlqCommand::List {
            at,
            filter: f,
            limit,
            json,
        } => {
            let letters = dlq::list(&pipeline, &at.route, &filter(&f)?, limit).await?;
            if json {
                print!("{}", dlq::list_json(&letters));
            } else {
                print!("{}", dlq::list_table(&letters));
            }
        }
        DlqCommand::Show { at, record, json } => {
            let shown = dlq::show(&pipeline, &at.route, record).await?;
            if json {
                println!("{}", shown.to_json());
            } else {
                print!("{}", shown.to_text());
            }
        }
        DlqCommand::Replay {
            at,
            filter: f,
            dry_run,
            json,
        } => {
            let options = dlq::ReplayOptions {
                route: at.route,
                filter: filter(&f)?,
                dry_run,
            };
            let report = dlq::replay(&pipeline, options).await?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
        }
    }
    Ok(())
}

/// `autoglm state …`: the work is in `autoglm_runtime::tools::state`.
async fn state(command: StateCommand, config: Config) -> anyhow::Result<()> {
    use autoglm_runtime::tools::state;
    let pipeline = Pipeline::new(config)?;
    match command {
        StateCommand::Get { at, key, json } => {
            let entity = state::get(&pipeline, &at.route, &key).await?;
            if json {
                println!("{}", serde_json::to_string(&entity)?);
            } else {
                print!("{}", entity.to_text());
            }
        }
        StateCommand::Stats { route, json, .. } => {
            let stats = state::stats(&pipeline, route.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string(&stats)?);
            } else {
                print!("{}", stats.to_text());
            }
        }
    }
    Ok(())
}

/// One line per Avro target: topic, subject, verdict. Fails when any is incompatible.
async fn check_schemas(config: Config) -> anyhow::Result<()> {
    let pipeline = Pipeline::new(config)?;
    let checks = pipeline.check_schemas().await?;
    if checks.is_empty() {
        println!("no avro targets in the config: nothing to check");
        return Ok(());
    }
    let topic_width = checks.iter().map(|c| c.topic.len()).max().unwrap_or(0);
    let subject_width = checks.iter().map(|c| c.subject.len()).max().unwrap_or(0);
    for c in &checks {
        println!(
            "{:<topic_width$}  {:<subject_width$}  {}",
            c.topic, c.subject, c.compatibility
        );
    }
    let incompatible = checks
        .iter()
        .filter(|c| c.compatibility.is_incompatible())
        .count();
    if incompatible > 0 {
        anyhow::bail!(
            "{incompatible} of {} target schemas would be refused by the registry",
            checks.len()
        );
    }
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; committing the open batch");
    shutdown.cancel();
}

async fn check(bootstrap: &str, registry_url: &str, timeout: Duration) -> anyhow::Result<()> {
    let settings = ClientSettings::new(bootstrap).with_client_id("autoglm-check");
    let cluster = autoglm_kafka::probe(&settings, timeout)
        .await
        .with_context(|| format!("kafka at {bootstrap} did not answer"))?;
    println!(
        "kafka     ok  {bootstrap}: brokers [{}], {} topics",
        cluster.brokers.join(", "),
        cluster.topic_count
    );
    let sr = SrSettings::new_builder(registry_url.to_owned())
        .set_timeout(timeout)
        .build()
        .with_context(|| format!("schema registry url {registry_url} is not usable"))?;
    let subjects = get_all_subjects(&sr)
        .await
        .with_context(|| format!("schema registry at {registry_url} did not answer"))?;
    println!("registry  ok  {registry_url}: {} subjects", subjects.len());
    Ok(())
}

/// `check --config`: the cluster with the config's security, every right the routes need, and
/// the registry with its credentials.
async fn check_config(config: Config, timeout: Duration) -> anyhow::Result<()> {
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let pipeline = Pipeline::new(config)?;
    let cluster = autoglm_kafka::probe(pipeline.client_settings(), timeout)
        .await
        .with_context(|| format!("kafka at {bootstrap}"))?;
    println!(
        "kafka     ok  {bootstrap}: brokers [{}], {} topics visible to this principal",
        cluster.brokers.join(", "),
        cluster.topic_count
    );
    let findings = pipeline
        .check_rights(timeout)
        .await
        .with_context(|| format!("kafka at {bootstrap}: the principal's rights (KIP-430)"))?;
    for finding in &findings {
        println!("rights    {finding}");
    }
    println!(
        "rights    not checked: WRITE on the transactional id (KIP-430 does not cover it); `run` uses it first, before it reads anything"
    );
    let missing = findings
        .iter()
        .filter(|f| matches!(f.verdict, autoglm_runtime::Verdict::Missing(_)))
        .count();
    if let Some(registry) = pipeline.registry() {
        let sr = registry.sr_settings()?;
        let subjects = get_all_subjects(&sr)
            .await
            .with_context(|| format!("schema registry at {} did not answer", registry.url()))?;
        println!(
            "registry  ok  {}: {} subjects",
            registry.url(),
            subjects.len()
        );
    }
    anyhow::ensure!(
        missing == 0,
        "the principal lacks {missing} right(s) the config needs"
    );
    Ok(())
}

/// A test-only point spec from `var`: `<point>[:<hit>]` (default hit: the first).
#[cfg(feature = "failpoints")]
fn point_spec(var: &str) -> Option<(String, u32)> {
    let spec = std::env::var(var).ok()?;
    Some(match spec.split_once(':') {
        Some((point, hit)) => (point.to_owned(), hit.parse().unwrap_or(1)),
        None => (spec, 1),
    })
}

/// Runs `action` the `hit`-th time the commit path reaches `point`.
#[cfg(feature = "failpoints")]
fn on_hit(point: String, hit: u32, action: impl Fn(&str) + Send + Sync + 'static) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let hits = AtomicU32::new(0);
    let name = point.clone();
    fail::cfg_callback(point, move || {
        if hits.fetch_add(1, Ordering::SeqCst) + 1 == hit {
            action(&name);
        }
    })
    .expect("test point");
}

/// Test builds only: `AUTOGLM_CRASH_AT=<point>[:<hit>]` aborts the process, with no cleanup at
/// all (like `kill -9`), the `hit`-th time (default: first) the commit path reaches `point`.
#[cfg(feature = "failpoints")]
fn arm_crash_point() {
    if let Some((point, hit)) = point_spec("AUTOGLM_CRASH_AT") {
        on_hit(point, hit, |name| {
            eprintln!("crash point {name}: aborting");
            std::process::abort();
        });
    }
}

/// Test builds only: `AUTOGLM_STOP_AT=<point>[:<hit>]` stops the whole process with SIGSTOP
/// the `hit`-th time the commit path reaches `point`: every thread, librdkafka's heartbeats
/// too, as in a VM freeze or a long GC-like stall. The test sends SIGCONT.
#[cfg(feature = "failpoints")]
fn arm_stop_point() {
    use rustix::process::{Signal, getpid, kill_process};
    if let Some((point, hit)) = point_spec("AUTOGLM_STOP_AT") {
        on_hit(point, hit, |name| {
            eprintln!("stop point {name}: stopping");
            kill_process(getpid(), Signal::STOP).expect("SIGSTOP");
            eprintln!("stop point {name}: resumed");
        });
    }
}

/// Test builds only: `AUTOGLM_PAUSE_AT=<point>:<ms>` sleeps `ms` milliseconds every time the
/// commit path passes `point`, so that a test's `kill -9` can land inside that stretch (at
/// `after_produce`: a transaction with delivered, uncommitted records).
#[cfg(feature = "failpoints")]
fn arm_pause_point() {
    let Ok(spec) = std::env::var("AUTOGLM_PAUSE_AT") else {
        return;
    };
    let (point, ms) = spec
        .split_once(':')
        .and_then(|(point, ms)| Some((point, ms.parse::<u64>().ok()?)))
        .expect("AUTOGLM_PAUSE_AT is <point>:<milliseconds>");
    fail::cfg(point, &format!("sleep({ms})")).expect("pause point");
}
