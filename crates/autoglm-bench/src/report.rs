//! The bench's figures: what the JSON holds, the terminal tables and the plot's panels.

use std::path::PathBuf;

use serde::Serialize;

use crate::latency::LatencyRun;
use crate::plot;
use crate::stages::StageTimes;

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub name: &'static str,
    pub what: &'static str,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub processor_cpu_us_per_record: Option<f64>,
    pub broker_cpu_us_per_record: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// The processor's batches step by step over the measured window (a processor run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageTimes>,
}

/// (e) with `keys` in the state.
#[derive(Debug, Clone, Serialize)]
pub struct KeyScaleRun {
    pub keys: u64,
    /// Records of the update phase (after every key was created).
    pub records: u64,
    /// The create phase: every key once (none when it was over before the first sample).
    pub load_records_per_sec: Option<f64>,
    /// The update phase.
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub processor_cpu_us_per_record: f64,
    pub peak_rss_mib: f64,
    /// The processor's batches step by step during the updates.
    pub stages: Vec<StageTimes>,
}

/// (e) with `instances` processes in one group.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRun {
    pub instances: usize,
    /// Records committed after the group settled.
    pub records: u64,
    /// The group's aggregate rate from its committed offsets.
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// Seconds from the start to every instance owning partitions.
    pub settle_secs: f64,
    pub processor_cpu_us_per_record: f64,
    /// The largest instance's peak RSS.
    pub peak_rss_mib: f64,
}

/// A restart after SIGKILL.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRun {
    /// From the process start to `/ready` answering 200.
    pub ready_secs: f64,
    /// `autoglm_restore_records_total`.
    pub restored_records: Option<f64>,
    /// `autoglm_restore_duration_seconds` (sum).
    pub restore_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub keys: u64,
    /// Input records committed before the SIGKILL.
    pub committed_at_kill: i64,
    /// (i) the same state directory: only the changelog tail after its checkpoint.
    pub same_state: RestartRun,
    /// (ii) an empty state directory: the whole changelog.
    pub empty_state: RestartRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordShape {
    pub source_row_fields: usize,
    pub target_fields: usize,
    pub avg_bytes: u64,
    pub stale_or_duplicate_percent: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub unix_time: u64,
    pub records: u64,
    pub keys: u64,
    pub partitions: i32,
    pub avg_record_bytes: u64,
    pub runs: Vec<Run>,
    pub r_txn: Option<f64>,
    pub r_proc: Option<f64>,
    /// (e) with JSON input (and output) over (e) with Avro, same changes.
    pub json_vs_avro: Option<f64>,
    pub json_plain_vs_avro: Option<f64>,
    pub ab: Option<AbReport>,
    pub record: RecordShape,
    pub latency: Vec<LatencyRun>,
    pub key_scaling: Vec<KeyScaleRun>,
    pub instance_scaling: Vec<InstanceRun>,
    pub restore: Option<RestoreReport>,
    pub plot: Option<PathBuf>,
}

/// (e) of two binaries in alternating pairs.
#[derive(Debug, Serialize)]
pub struct AbReport {
    pub a_binary: PathBuf,
    pub b_binary: PathBuf,
    /// The config overrides B ran with (`AUTOGLM__…=value`), on top of A's config.
    pub b_env: Vec<String>,
    pub input: &'static str,
    /// Keys in the state: each run creates them first, and only the updates after are measured
    /// (as in the key-scaling runs); `None`: the throughput stream, measured from the start.
    pub keys: Option<u64>,
    /// Records/s of each run, in pair order.
    pub a_records_per_sec: Vec<f64>,
    pub b_records_per_sec: Vec<f64>,
    pub a_median: f64,
    pub b_median: f64,
    /// b_median / a_median.
    pub b_over_a: f64,
    pub a_cpu_us_per_record_median: f64,
    pub b_cpu_us_per_record_median: f64,
    /// Each batch step's mean ms, the median over the runs: (stage, A, B).
    pub stage_ms_medians: Vec<(&'static str, f64, f64)>,
}

/// What an A/B compares: two binaries (or one), B's config overrides, the input and the keys.
#[derive(Debug)]
pub struct AbSetup<'a> {
    pub a_binary: &'a std::path::Path,
    pub b_binary: &'a std::path::Path,
    pub b_env: &'a [(String, String)],
    pub input: crate::workload::Input,
    pub keys: Option<u64>,
}

impl AbReport {
    /// The report of A's and B's runs.
    pub fn new(setup: &AbSetup<'_>, a_runs: &[Run], b_runs: &[Run]) -> AbReport {
        let rates = |runs: &[Run]| runs.iter().map(|r| r.records_per_sec).collect::<Vec<_>>();
        let cpu = |runs: &[Run]| {
            median(
                &runs
                    .iter()
                    .map(|r| r.processor_cpu_us_per_record.unwrap_or(f64::NAN))
                    .collect::<Vec<_>>(),
            )
        };
        let stage_ms = |runs: &[Run], stage: &str| {
            median(
                &runs
                    .iter()
                    .filter_map(|r| r.stages.iter().find(|s| s.stage == stage))
                    .map(|s| s.mean_ms)
                    .collect::<Vec<_>>(),
            )
        };
        let stage_ms_medians = crate::stages::STAGES
            .iter()
            .map(|&stage| (stage, stage_ms(a_runs, stage), stage_ms(b_runs, stage)))
            .collect();
        let (a, b) = (rates(a_runs), rates(b_runs));
        let (a_median, b_median) = (median(&a), median(&b));
        AbReport {
            a_binary: setup.a_binary.to_owned(),
            b_binary: setup.b_binary.to_owned(),
            b_env: setup
                .b_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            input: setup.input.label(),
            keys: setup.keys,
            a_records_per_sec: a,
            b_records_per_sec: b,
            a_median,
            b_median,
            b_over_a: b_median / a_median,
            a_cpu_us_per_record_median: cpu(a_runs),
            b_cpu_us_per_record_median: cpu(b_runs),
            stage_ms_medians,
        }
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn plot_title(report: &Report) -> String {
    format!(
        "autoglm-bench {}: {} records of {} bytes, {} keys, {} partitions",
        report.unix_time, report.records, report.avg_record_bytes, report.keys, report.partitions
    )
}

pub fn panels(report: &Report) -> Vec<plot::Panel> {
    let throughput = report
        .runs
        .iter()
        .map(|r| (r.name.to_owned(), r.records_per_sec, 0))
        .collect();
    let keys = report
        .key_scaling
        .iter()
        .map(|k| (format!("{} keys", count(k.keys)), k.records_per_sec, 1))
        .collect();
    let instances = report
        .instance_scaling
        .iter()
        .map(|i| (format!("{} inst.", i.instances), i.records_per_sec, 2))
        .collect();
    let mut latency = Vec::new();
    for (group, run) in report.latency.iter().enumerate() {
        let load = run.load * 100.0;
        latency.extend([
            (format!("p50 @{load:.0}%"), run.p50_ms, group + 3),
            (format!("p99 @{load:.0}%"), run.p99_ms, group + 3),
            (format!("p99.9 @{load:.0}%"), run.p999_ms, group + 3),
        ]);
    }
    vec![
        plot::Panel {
            title: "throughput: (a) broker, (b)/(c) pass-through, (d)/(e) full pipeline".into(),
            unit: "records/s",
            bars: throughput,
        },
        plot::Panel {
            title: "end-to-end latency, open loop, fraction of (e)".into(),
            unit: "ms",
            bars: latency,
        },
        plot::Panel {
            title: "(e) with keys in the state (update phase)".into(),
            unit: "records/s",
            bars: keys,
        },
        plot::Panel {
            title: "(e) with instances in one group (aggregate)".into(),
            unit: "records/s",
            bars: instances,
        },
    ]
}

/// 10000 → "10k", 1000000 → "1M".
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

pub fn print_tables(report: &Report) {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "\n{} records ({} bytes avg, {} row fields → {} target fields, ~5% stale or duplicate), {} keys, {} partitions",
        report.records,
        report.avg_record_bytes,
        report.record.source_row_fields,
        report.record.target_fields,
        report.keys,
        report.partitions
    );
    if !report.runs.is_empty() {
        println!(
            "{:<13} {:<34} {:>12} {:>8} {:>12} {:>12} {:>9}",
            "run", "what", "records/s", "MB/s", "cpu µs/rec", "broker µs", "RSS MiB"
        );
        for run in &report.runs {
            println!(
                "{:<13} {:<34} {:>12.0} {:>8.1} {:>12} {:>12} {:>9}",
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
        if report.json_vs_avro.is_some() {
            println!(
                "JSON (e) / Avro (e) = {} with the schema wrapper, {} without (target: ≥ 0.8)",
                ratio(report.json_vs_avro),
                ratio(report.json_plain_vs_avro)
            );
        }
    }
    if let Some(ab) = &report.ab {
        println!(
            "\nA/B, (e) on {} input, alternating pairs: A = {}, B = {}{}",
            ab.input,
            ab.a_binary.display(),
            ab.b_binary.display(),
            if ab.b_env.is_empty() {
                String::new()
            } else {
                format!(" with {}", ab.b_env.join(" "))
            }
        );
        if let Some(keys) = ab.keys {
            println!("each run creates {keys} keys first; the updates after are measured");
        }
        let rates = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("A records/s: {}", rates(&ab.a_records_per_sec));
        println!("B records/s: {}", rates(&ab.b_records_per_sec));
        println!(
            "medians: A {:.0}, B {:.0} records/s; B/A = {:.3}; cpu µs/rec A {:.1}, B {:.1}",
            ab.a_median,
            ab.b_median,
            ab.b_over_a,
            ab.a_cpu_us_per_record_median,
            ab.b_cpu_us_per_record_median
        );
        println!("batch steps, mean ms (median of the runs): stage A B");
        for (stage, a, b) in &ab.stage_ms_medians {
            println!("{stage:<12} {a:>8.1} {b:>8.1}");
        }
    }
    if !report.latency.is_empty() {
        println!("\nend-to-end latency, exactly once, open loop (ms)");
        println!(
            "{:<6} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10}",
            "load",
            "offered/s",
            "achieved/s",
            "samples",
            "p50",
            "p99",
            "p99.9",
            "max",
            "unseen",
            "batch ms",
            "commit ms"
        );
        for run in &report.latency {
            println!(
                "{:<6} {:>10.0} {:>10.0} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>9} {:>10}",
                format!("{:.0}%", run.load * 100.0),
                run.target_records_per_sec,
                run.achieved_records_per_sec,
                run.samples,
                run.p50_ms,
                run.p99_ms,
                run.p999_ms,
                run.max_ms,
                run.unseen,
                opt(run.mean_batch_ms),
                opt(run.mean_commit_ms)
            );
        }
    }
    if report.latency.iter().any(|r| r.cores.is_some()) {
        println!("\ncores busy in the measured window");
        println!(
            "{:<6} {:>10} {:>8} {:>8} {:>12}",
            "load", "processor", "broker", "bench", "machine"
        );
        for run in &report.latency {
            let Some(cores) = run.cores else { continue };
            println!(
                "{:<6} {:>10.2} {:>8} {:>8.2} {:>12}",
                format!("{:.0}%", run.load * 100.0),
                cores.processor,
                cores
                    .broker
                    .map_or_else(|| "-".to_owned(), |b| format!("{b:.2}")),
                cores.bench,
                format!("{:.2} of {}", cores.machine, cores.of)
            );
        }
    }
    print_stages(
        "the processor's batches step by step, in the measured window",
        report
            .latency
            .iter()
            .map(|r| (format!("{:.0}%", r.load * 100.0), r.stages.as_slice())),
    );
    if !report.key_scaling.is_empty() {
        println!(
            "\n(e) with keys in the state (the target: a peak RSS of 256 MiB or less with 1M keys)"
        );
        println!(
            "{:>10} {:>12} {:>12} {:>8} {:>12} {:>9}",
            "keys", "creates/s", "updates/s", "MB/s", "cpu µs/rec", "RSS MiB"
        );
        for run in &report.key_scaling {
            println!(
                "{:>10} {:>12} {:>12.0} {:>8.1} {:>12.1} {:>9.1}",
                run.keys,
                run.load_records_per_sec
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}")),
                run.records_per_sec,
                run.mb_per_sec,
                run.processor_cpu_us_per_record,
                run.peak_rss_mib
            );
        }
    }
    print_stages(
        "the processor's batches step by step during the updates, by keys in the state",
        report
            .key_scaling
            .iter()
            .map(|r| (r.keys.to_string(), r.stages.as_slice())),
    );
    if !report.instance_scaling.is_empty() {
        println!("\n(e) with instances in one group (aggregate, after the group settled)");
        println!(
            "{:>9} {:>12} {:>8} {:>10} {:>12} {:>13}",
            "instances", "records/s", "MB/s", "settle s", "cpu µs/rec", "max RSS MiB"
        );
        for run in &report.instance_scaling {
            println!(
                "{:>9} {:>12.0} {:>8.1} {:>10.1} {:>12.1} {:>13.1}",
                run.instances,
                run.records_per_sec,
                run.mb_per_sec,
                run.settle_secs,
                run.processor_cpu_us_per_record,
                run.peak_rss_mib
            );
        }
    }
    if let Some(restore) = &report.restore {
        println!(
            "\nrestore after SIGKILL ({} keys, {} input records committed)",
            restore.keys, restore.committed_at_kill
        );
        println!(
            "{:<28} {:>9} {:>16} {:>10}",
            "restart", "ready s", "restored records", "restore s"
        );
        for (what, run) in [
            ("(i) same state directory", &restore.same_state),
            ("(ii) empty state directory", &restore.empty_state),
        ] {
            println!(
                "{:<28} {:>9.2} {:>16} {:>10}",
                what,
                run.ready_secs,
                run.restored_records
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}")),
                opt(run.restore_secs)
            );
        }
    }
}

/// A table of batch steps, one column per run: mean ms (p99 at most); nothing when no run has
/// steps.
fn print_stages<'r>(title: &str, columns: impl Iterator<Item = (String, &'r [StageTimes])>) {
    let columns: Vec<_> = columns.filter(|(_, stages)| !stages.is_empty()).collect();
    let Some((_, first)) = columns.first() else {
        return;
    };
    println!("\n{title}: mean ms (p99 at most)");
    print!("{:<12}", "stage");
    for (label, _) in &columns {
        print!(" {label:>18}");
    }
    println!();
    for name in first.iter().map(|s| s.stage) {
        print!("{name:<12}");
        for (_, stages) in &columns {
            let cell = stages.iter().find(|s| s.stage == name).map_or_else(
                || "-".to_owned(),
                |s| format!("{:.1} ({:.0})", s.mean_ms, s.p99_ms_at_most),
            );
            print!(" {cell:>18}");
        }
        println!();
    }
}
