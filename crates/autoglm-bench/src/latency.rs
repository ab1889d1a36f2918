//! End-to-end latency under an open-loop input.
//!
//! ```text
//!  fresh source topic ──► autoglm run (exactly once) ──► target ──► read_committed reader
//!   ▲ a burst every 5 ms, on schedule,                      latency = seen − record timestamp
//!   │ never waiting for acks (open loop)                     (the output carries the input's
//!   └ records stamped when produced (CreateTime)             CreateTime) ──► HDR histogram
//! ```
//!
//! The processor is started first and the input begins once it is ready and owns every
//! partition. Records produced during the warm-up are not measured. If the sender falls behind
//! its schedule it catches up in larger bursts (the schedule, not the acks, sets the pace), so
//! an overloaded processor shows as growing latency rather than as a lower offered rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::watch;

use crate::processor::{self, Spec};
use crate::stages::{self, StageTimes};
use crate::workload::{Encoded, Input};
use crate::{Bench, Progress};

/// How long the reader waits for the last outputs once the input has ended.
const DRAIN: Duration = Duration::from_secs(30);

/// One open-loop run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// The fraction of the max rate offered.
    pub load: f64,
    pub target_records_per_sec: f64,
    /// Records sent per second during the measured window.
    pub achieved_records_per_sec: f64,
    pub warmup_secs: f64,
    pub measured_secs: f64,
    /// Outputs whose input was sent in the measured window.
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Records the producer could not send (queue full or delivery failed).
    pub send_failures: u64,
    /// Accepted records whose output the reader never saw.
    pub unseen: u64,
    /// The processor's mean batch time, first polled record to commit and state write
    /// (`autoglm_pipeline_batch_duration_seconds`).
    pub mean_batch_ms: Option<f64>,
    /// Its mean `commit_transaction` call (`autoglm_transaction_commit_duration_seconds`).
    pub mean_commit_ms: Option<f64>,
    /// The processor's batches step by step, over the measured window.
    pub stages: Vec<StageTimes>,
    /// Cores busy over the measured window, by whom.
    pub cores: Option<Cores>,
}

/// Cores busy over a window: each process's CPU time (all its threads) over the window's
/// length, and the machine's (every process, from `/proc/stat`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cores {
    pub processor: f64,
    /// `None` when the broker's pid is unknown (not the local stack's).
    pub broker: Option<f64>,
    /// This bench: its open-loop producer and its `read_committed` reader.
    pub bench: f64,
    pub machine: f64,
    /// The machine's cores (`available_parallelism`).
    pub of: usize,
}

/// CPU ticks at one moment: the processor, the broker, the bench, the machine's busy ticks.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    at: Instant,
    processor: u64,
    broker: Option<u64>,
    bench: u64,
    machine: u64,
}

impl Ticks {
    fn now(bench: &Bench, processor_pid: u32) -> Option<Ticks> {
        Some(Ticks {
            at: Instant::now(),
            processor: processor::cpu_ticks(processor_pid)?,
            broker: bench.broker.and_then(processor::cpu_ticks),
            bench: processor::cpu_ticks(std::process::id())?,
            machine: machine_busy_ticks()?,
        })
    }

    fn cores_since(self, start: Ticks) -> Cores {
        let secs = (self.at - start.at).as_secs_f64().max(1e-9);
        let cores =
            |from: u64, to: u64| processor::ticks_to_us(to.saturating_sub(from)) / 1e6 / secs;
        Cores {
            processor: cores(start.processor, self.processor),
            broker: start.broker.zip(self.broker).map(|(a, b)| cores(a, b)),
            bench: cores(start.bench, self.bench),
            machine: cores(start.machine, self.machine),
            of: std::thread::available_parallelism().map_or(0, usize::from),
        }
    }
}

/// The machine's busy ticks so far: every state of `/proc/stat`'s `cpu` line but idle and
/// iowait.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3)? + ticks.get(4)?;
    // user nice system idle iowait irq softirq steal (guest time is within user already).
    Some(ticks.iter().take(8).sum::<u64>() - idle)
}

/// Offers `rate` records/s of `records` for `warmup + measure` to a fresh processor.
pub async fn run(
    bench: &Bench,
    load: f64,
    rate: f64,
    records: &[Encoded],
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<LatencyRun> {
    let name = format!("latency-{:.0}", load * 100.0);
    let source = bench.topic(&name);
    let target = bench.topic(&format!("{name}-erp"));
    bench
        .create_topics(&[&source, &target, &format!("{target}.dlq")])
        .await?;
    let group = bench.group(&name);
    let state = bench.work.join(&name).join("state");
    let mut instance = processor::start(
        bench,
        &Spec {
            binary: &bench.binary,
            input: Input::Avro,
            group: &group,
            instance: 0,
            source: &source,
            target: &target,
            state: &state,
            exactly_once: true,
            pass_through: false,
            exit_when_idle_secs: None,
            env: &[],
        },
    )?;
    let result = offer(
        bench,
        &mut instance,
        load,
        rate,
        records,
        (&source, &target),
        (warmup, measure),
    )
    .await;
    let mean_ms = async |name: &str| {
        let sum = instance.metric(&bench.http, &format!("{name}_sum")).await?;
        let count = instance
            .metric(&bench.http, &format!("{name}_count"))
            .await?;
        (count > 0.0).then(|| sum / count * 1000.0)
    };
    let mean_batch_ms = mean_ms("autoglm_pipeline_batch_duration_seconds").await;
    let mean_commit_ms = mean_ms("autoglm_transaction_commit_duration_seconds").await;
    instance.kill();
    processor::check_no_dead_letters(bench, &target, &instance.log).await?;
    Ok(LatencyRun {
        mean_batch_ms,
        mean_commit_ms,
        ..result?
    })
}

async fn offer(
    bench: &Bench,
    instance: &mut processor::Instance,
    load: f64,
    rate: f64,
    records: &[Encoded],
    (source, target): (&str, &str),
    (warmup, measure): (Duration, Duration),
) -> anyhow::Result<LatencyRun> {
    let total = ((warmup + measure).as_secs_f64() * rate) as usize;
    if records.len() < total {
        bail!("{} records encoded, {total} needed", records.len());
    }
    processor::settled(
        bench,
        std::slice::from_mut(instance),
        Duration::from_secs(60),
    )
    .await
    .context("the processor did not get ready")?;

    let producer: FutureProducer = bench
        .settings
        .client_config()
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .create()?;
    let start_ms = now_ms();
    let from_ms = start_ms + i64::try_from(warmup.as_millis())?;
    let to_ms = from_ms + i64::try_from(measure.as_millis())?;
    let (expected_tx, expected_rx) = watch::channel(None);
    let seen = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read(
        bench.reader(target)?,
        (from_ms, to_ms),
        expected_rx,
        Arc::clone(&seen),
    ));

    let label = format!("latency {:.0}% ({rate:.0}/s)", load * 100.0);
    let mut progress = Progress::new(&label, total as u64);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    let mut deliveries = Vec::with_capacity(total);
    let mut failures = 0;
    let mut sent = 0;
    let mut window_begins: Option<(Instant, usize)> = None;
    let scrape = |port| {
        let http = bench.http.clone();
        tokio::spawn(async move { stages::scrape(&http, port).await })
    };
    let mut at_window_start = None;
    let mut ticks_at_start = None;
    while sent < total {
        ticks.tick().await;
        let elapsed = started.elapsed();
        if window_begins.is_none() && elapsed >= warmup {
            window_begins = Some((Instant::now(), sent));
            at_window_start = Some(scrape(instance.port));
            ticks_at_start = Ticks::now(bench, instance.pid());
        }
        let due = ((elapsed.as_secs_f64() * rate) as usize).min(total);
        for record in &records[sent..due] {
            let message = FutureRecord::to(source)
                .key(&record.key)
                .payload(&record.payload);
            match producer.send_result(message) {
                Ok(delivery) => deliveries.push((delivery, record.accepted)),
                Err(_) => failures += 1,
            }
        }
        sent = due;
        let out = seen.load(Ordering::Relaxed);
        progress.update_with(sent as u64, &format!(" sent, {out} out"));
    }
    let at_window_end = scrape(instance.port);
    let cores = ticks_at_start
        .zip(Ticks::now(bench, instance.pid()))
        .map(|(start, end)| end.cores_since(start));
    let (window_at, window_sent) = window_begins.unwrap_or((started, 0));
    let achieved = (sent - window_sent) as f64 / window_at.elapsed().as_secs_f64().max(1e-9);

    let mut expected = 0;
    for (delivery, accepted) in deliveries {
        match delivery.await {
            Ok(Ok(_)) => expected += u64::from(accepted),
            _ => failures += 1,
        }
    }
    expected_tx.send_replace(Some(expected));
    let histogram = reader.await??;
    let quantile = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let stages = match (at_window_start, at_window_end.await?) {
        (Some(start), Some(end)) => match start.await? {
            Some(start) => stages::between(&start, &end),
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    Ok(LatencyRun {
        load,
        target_records_per_sec: rate,
        achieved_records_per_sec: achieved,
        warmup_secs: warmup.as_secs_f64(),
        measured_secs: measure.as_secs_f64(),
        samples: histogram.len(),
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        p999_ms: quantile(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
        send_failures: failures,
        unseen: expected.saturating_sub(seen.load(Ordering::Relaxed)),
        mean_batch_ms: None,
        mean_commit_ms: None,
        stages,
        cores,
    })
}

/// Reads the target until it has seen the expected outputs (once known) or the input has been
/// quiet for [`DRAIN`]; latencies (µs) of inputs stamped in `[from_ms, to_ms)` go into the
/// histogram.
async fn read(
    consumer: StreamConsumer,
    (from_ms, to_ms): (i64, i64),
    expected: watch::Receiver<Option<u64>>,
    seen: Arc<AtomicU64>,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut last_seen = Instant::now();
    loop {
        let done = *expected.borrow();
        if let Some(expected) = done
            && (seen.load(Ordering::Relaxed) >= expected || last_seen.elapsed() > DRAIN)
        {
            return Ok(histogram);
        }
        match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            Ok(Ok(message)) => {
                let now_us = now_us();
                last_seen = Instant::now();
                seen.fetch_add(1, Ordering::Relaxed);
                if let Some(stamp) = message.timestamp().to_millis()
                    && (from_ms..to_ms).contains(&stamp)
                {
                    histogram.saturating_record(u64::try_from(now_us - stamp * 1000).unwrap_or(0));
                }
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {}
        }
    }
}

impl Bench {
    /// A `read_committed` consumer of every partition of `topic`, from the beginning.
    fn reader(&self, topic: &str) -> anyhow::Result<StreamConsumer> {
        let consumer: StreamConsumer = self
            .settings
            .client_config()
            .set("group.id", self.topic("latency-reader"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            // Bounds how long the broker may hold an empty fetch: never what is measured.
            .set("fetch.wait.max.ms", "50")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..self.partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(consumer)
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn now_ms() -> i64 {
    now_us() / 1000
}
