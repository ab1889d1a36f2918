//! The real `autoglm` binary as the bench runs it: one process per instance, its config made
//! from `bench/autoglm-bench.yaml`, its progress read from the group's committed offsets, its
//! CPU and peak RSS from /proc and its readiness and gauges from its `/metrics` endpoint.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_yaml::Value as Yaml;

use crate::stages::{self, StageTimes};
use crate::workload::Input;
use crate::{Bench, Progress};

/// A run with no committed progress for this long has stalled.
const STALL: Duration = Duration::from_secs(120);

/// One processor instance to start.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The `autoglm` binary to run.
    pub binary: &'a Path,
    /// How the source topic is encoded; JSON input is written out as JSON too.
    pub input: Input,
    pub group: &'a str,
    pub instance: usize,
    pub source: &'a str,
    pub target: &'a str,
    pub state: &'a Path,
    pub exactly_once: bool,
    pub pass_through: bool,
    /// `--exit-when-idle-secs`; without it the bench stops the process.
    pub exit_when_idle_secs: Option<u64>,
    /// Environment the process gets on top of the bench's: `AUTOGLM__…` config overrides.
    pub env: &'a [(String, String)],
}

/// A running `autoglm run`.
#[derive(Debug)]
pub struct Instance {
    child: Child,
    /// Its metrics endpoint, on 127.0.0.1.
    pub port: u16,
    pub log: PathBuf,
}

/// Writes the config of `spec` next to its state directory and starts the binary.
pub fn start(bench: &Bench, spec: &Spec<'_>) -> anyhow::Result<Instance> {
    let port = free_port()?;
    let dir = spec
        .state
        .parent()
        .context("the state directory has a parent")?;
    std::fs::create_dir_all(dir)?;
    let name = spec
        .state
        .file_name()
        .context("the state directory has a name")?
        .to_string_lossy();
    let config_file = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_file, bench.template.render(spec, port)?)?;
    // Appended: a restart on the same state directory keeps the log of the run before.
    let log = dir.join(format!("{name}.log"));
    let mut command = Command::new(spec.binary);
    command
        .arg("run")
        .arg("--config")
        .arg(&config_file)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?,
        );
    if let Some(idle) = spec.exit_when_idle_secs {
        command.args(["--exit-when-idle-secs", &idle.to_string()]);
    }
    if spec.pass_through {
        command.arg("--pass-through");
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let child = command
        .spawn()
        .with_context(|| format!("start {}", spec.binary.display()))?;
    Ok(Instance { child, port, log })
}

/// What the processor configs of a bench run share.
#[derive(Debug)]
pub struct Template {
    /// `bench/autoglm-bench.yaml`.
    yaml: Yaml,
    pub bootstrap: String,
    pub registry_url: String,
    /// The target schema, absolute: the configs are written elsewhere.
    schema: PathBuf,
}

impl Template {
    pub fn load(repo: &Path, bootstrap: &str, registry_url: &str) -> anyhow::Result<Template> {
        let file = repo.join("bench/autoglm-bench.yaml");
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        Ok(Template {
            yaml: serde_yaml::from_str(&text)?,
            bootstrap: bootstrap.to_owned(),
            registry_url: registry_url.to_owned(),
            schema: repo.join("bench/schemas/erp.customers_wide-value.avsc"),
        })
    }

    /// The bench config with the keys of `spec` set.
    fn render(&self, spec: &Spec<'_>, port: u16) -> anyhow::Result<String> {
        let mut doc = self.yaml.clone();
        let format = spec.input.encoding();
        let sets: [(&str, Yaml); 13] = [
            ("kafka.bootstrap_servers", self.bootstrap.as_str().into()),
            ("kafka.group_id", spec.group.into()),
            ("kafka.instance_id", spec.instance.to_string().into()),
            ("schema_registry.url", self.registry_url.as_str().into()),
            ("event_queue.persistence", spec.exactly_once.into()),
            (
                "event_queue.storage_path",
                spec.state.display().to_string().into(),
            ),
            ("metrics.listen", format!("127.0.0.1:{port}").into()),
            ("routes.0.source.topic", spec.source.into()),
            ("routes.0.source.encoding", format.into()),
            ("routes.0.targets.0.format", format.into()),
            ("routes.0.targets.0.topic", spec.target.into()),
            (
                "routes.0.targets.0.schema",
                self.schema.display().to_string().into(),
            ),
            ("routes.0.dlq_topic", format!("{}.dlq", spec.target).into()),
        ];
        for (path, value) in sets {
            let slot = path
                .split('.')
                .try_fold(&mut doc, |node, key| match key.parse::<usize>() {
                    Ok(index) => node.get_mut(index),
                    Err(_) => node.get_mut(key),
                })
                .with_context(|| format!("bench/autoglm-bench.yaml has no `{path}`"))?;
            *slot = value;
        }
        Ok(serde_yaml::to_string(&doc)?)
    }
}

/// A port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Instance {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit by itself, then kills it.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        Ok(None)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the processor exited early ({status}); {}:\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// `GET /ready` answered 200.
    pub async fn ready(&self, http: &reqwest::Client) -> bool {
        http.get(format!("http://127.0.0.1:{}/ready", self.port))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The value of an unlabelled series on `/metrics` (`name value`).
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<f64> {
        let text = metrics_text(http, self.port).await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// The `/metrics` page of the instance on `port`.
pub async fn metrics_text(http: &reqwest::Client, port: u16) -> Option<String> {
    http.get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Waits until every instance is ready and the group's partitions are spread over all of them
/// (each instance's `autoglm_consumer_assigned_partitions`). Returns the time it took.
pub async fn settled(
    bench: &Bench,
    instances: &mut [Instance],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        for instance in instances.iter_mut() {
            instance.check_alive()?;
        }
        if is_settled(bench, instances).await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("the group did not settle within {timeout:?}");
        }
        if said.elapsed() >= Duration::from_secs(2) {
            said = Instant::now();
            eprintln!(
                "bench: waiting {:.0} s for /ready and the assignment (restoring state?)",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn is_settled(bench: &Bench, instances: &[Instance]) -> bool {
    let mut total = 0.0;
    for instance in instances {
        if !instance.ready(&bench.http).await {
            return false;
        }
        match instance
            .metric(&bench.http, "autoglm_consumer_assigned_partitions")
            .await
        {
            Some(n) if n >= 1.0 => total += n,
            _ => return false,
        }
    }
    total == f64::from(bench.partitions)
}

/// Where a measured window starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// At the group's first committed offset.
    FirstCommit,
    /// Once the group committed this many records (the end of a load phase).
    Committed(i64),
    /// Once the group has settled over all instances (see [`settled`]).
    Settled,
}

/// The group's progress and the processes' CPU at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub at: Instant,
    pub committed: i64,
    pub ticks: u64,
    pub broker_ticks: Option<u64>,
}

/// A run from its first commit to the end of its input.
#[derive(Debug, Clone)]
pub struct Trace {
    pub first: Point,
    pub start: Point,
    pub end: Point,
    /// The largest VmHWM of the instances.
    pub peak_rss_kib: u64,
    /// The batches step by step from `start` to `end`, for a run of one instance (empty for
    /// several).
    pub stages: Vec<StageTimes>,
}

/// Records, seconds and CPU between two points.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub records: u64,
    pub seconds: f64,
    pub processor_us_per_record: f64,
    pub broker_us_per_record: Option<f64>,
}

impl Window {
    pub fn between(from: &Point, to: &Point) -> Window {
        let records = u64::try_from(to.committed - from.committed).unwrap_or(0);
        let per_record = |ticks: u64| ticks_to_us(ticks) / records.max(1) as f64;
        Window {
            records,
            seconds: (to.at - from.at).as_secs_f64().max(1e-9),
            processor_us_per_record: per_record(to.ticks.saturating_sub(from.ticks)),
            broker_us_per_record: from
                .broker_ticks
                .zip(to.broker_ticks)
                .map(|(a, b)| per_record(b.saturating_sub(a))),
        }
    }

    pub fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// Follows `group`'s committed offsets on `source` until they reach its end, sampling CPU and
/// peak RSS every 100 ms. The processes keep running.
pub async fn follow(
    bench: &Bench,
    label: &str,
    group: &str,
    source: &str,
    instances: &mut [Instance],
    start: Start,
) -> anyhow::Result<Trace> {
    // read_uncommitted: a read_committed probe asks for stable offsets, and the broker holds
    // that answer while a transaction with offsets is open, which back-to-back transactions
    // keep true until the very end.
    let probe: Arc<BaseConsumer> = Arc::new(
        bench
            .settings
            .client_config()
            .set("group.id", group)
            .set("isolation.level", "read_uncommitted")
            .create()?,
    );
    let end = end_offsets(&probe, source, bench.partitions).await?;
    let mut progress = Progress::new(label, u64::try_from(end)?);
    let mut first: Option<Point> = None;
    let mut window_start: Option<Point> = None;
    let mut peak_rss_kib = 0;
    let mut last_change = (Instant::now(), -1);
    let mut launch: Option<Point> = None;
    // One instance's steps, from its /metrics at the window's start and end.
    let scrape = |instances: &[Instance]| {
        let http = bench.http.clone();
        let port = match instances {
            [one] => Some(one.port),
            _ => None,
        };
        async move { stages::scrape(&http, port?).await }
    };
    let mut stages_at_start = None;
    loop {
        for instance in instances.iter_mut() {
            instance.check_alive()?;
        }
        let committed = committed(&probe, source, bench.partitions).await?;
        let point = Point {
            at: Instant::now(),
            committed,
            ticks: instances.iter().filter_map(|i| cpu_ticks(i.pid())).sum(),
            broker_ticks: bench.broker.and_then(cpu_ticks),
        };
        let launch = *launch.get_or_insert(point);
        for instance in instances.iter() {
            peak_rss_kib = peak_rss_kib.max(peak_rss(instance.pid()).unwrap_or(0));
        }
        if committed != last_change.1 {
            last_change = (point.at, committed);
        } else if last_change.0.elapsed() > STALL {
            bail!("no progress for {STALL:?} at {committed}/{end} committed");
        }
        if first.is_none() && committed > 0 {
            first = Some(point);
        }
        if window_start.is_none() {
            let begins = match start {
                Start::FirstCommit => committed > 0,
                Start::Committed(n) => committed >= n,
                Start::Settled => is_settled(bench, instances).await,
            };
            if begins {
                window_start = Some(point);
                stages_at_start = scrape(instances).await;
            }
        }
        let rss = format!(", RSS {:.0} MiB", peak_rss_kib as f64 / 1024.0);
        progress.update_with(u64::try_from(committed.max(0))?, &rss);
        if committed >= end {
            let first = first.unwrap_or(launch);
            let mut start = window_start.unwrap_or(first);
            if start.committed >= end {
                // Done within one sample: all there is to measure is the run from its start.
                eprintln!(
                    "bench: {label} was done before its window began; measured from the start (use more records)"
                );
                start = launch;
            }
            let stages = match (stages_at_start, scrape(instances).await) {
                (Some(before), Some(after)) => stages::between(&before, &after),
                _ => Vec::new(),
            };
            return Ok(Trace {
                first: if first.committed >= end {
                    launch
                } else {
                    first
                },
                start,
                end: point,
                peak_rss_kib,
                stages,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails if anything was written to `target`'s dead-letter topic: the bench's records must all
/// map, or the figures would measure the DLQ path.
pub async fn check_no_dead_letters(bench: &Bench, target: &str, log: &Path) -> anyhow::Result<()> {
    let probe: Arc<BaseConsumer> = Arc::new(
        bench
            .settings
            .client_config()
            .set("group.id", "autoglm-bench-probe")
            .create()?,
    );
    let dlq = format!("{target}.dlq");
    let end = end_offsets(&probe, &dlq, bench.partitions).await?;
    if end > 0 {
        bail!(
            "{dlq} is not empty: records were dead-lettered (see {})",
            log.display()
        );
    }
    Ok(())
}

async fn end_offsets(
    probe: &Arc<BaseConsumer>,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<i64> {
    let probe = Arc::clone(probe);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let mut end = 0;
        for p in 0..partitions {
            end += probe
                .fetch_watermarks(&topic, p, Duration::from_secs(10))?
                .1;
        }
        Ok(end)
    })
    .await?
}

/// The sum of the group's committed offsets on `topic`.
async fn committed(probe: &Arc<BaseConsumer>, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    let probe = Arc::clone(probe);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
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
    .await?
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub fn ticks_to_us(ticks: u64) -> f64 {
    // USER_HZ is 100 on Linux.
    ticks as f64 * 10_000.0
}

/// VmHWM of `pid`, in KiB.
fn peak_rss(pid: u32) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_config_is_valid_and_carries_the_run_keys() {
        let repo = crate::repo_root().expect("the repository");
        let template = Template::load(&repo, "127.0.0.1:1", "http://127.0.0.1:2/apis/ccompat/v7")
            .expect("the bench config");
        let spec = Spec {
            binary: Path::new("autoglm"),
            input: Input::Avro,
            group: "bench-1-e",
            instance: 2,
            source: "bench-1-crm",
            target: "bench-1-e-erp",
            state: Path::new("/nonexistent/e/state-2"),
            exactly_once: false,
            pass_through: false,
            exit_when_idle_secs: None,
            env: &[],
        };
        let text = template.render(&spec, 4242).expect("render");
        let config =
            autoglm_config::parse(&text, "rendered", &repo, autoglm_config::Overrides::None)
                .expect("a valid config");
        assert_eq!(config.transactional_id(), "bench-1-e-2");
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:1");
        assert!(!config.exactly_once());
        assert_eq!(
            config.event_queue.storage_path,
            Path::new("/nonexistent/e/state-2")
        );
        assert_eq!(
            config.metrics.map(|m| m.listen).as_deref(),
            Some("127.0.0.1:4242")
        );
        let route = &config.routes[0];
        assert_eq!(route.source.topic.as_deref(), Some("bench-1-crm"));
        assert_eq!(route.dlq_topic, "bench-1-e-erp.dlq");

        // JSON in, JSON out.
        let spec = Spec {
            input: Input::Json,
            ..spec
        };
        let text = template.render(&spec, 4242).expect("render");
        let config =
            autoglm_config::parse(&text, "rendered", &repo, autoglm_config::Overrides::None)
                .expect("a valid config");
        let route = &config.routes[0];
        assert_eq!(route.source.encoding, autoglm_codec::Encoding::Json);
        assert_eq!(route.targets[0].format, autoglm_codec::Encoding::Json);
    }
}
