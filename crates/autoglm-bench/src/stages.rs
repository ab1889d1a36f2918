//! The processor's batches step by step: its `autoglm_pipeline_stage_duration_seconds`
//! histogram scraped from `/metrics` at a window's start and end, and the difference.

use std::collections::HashMap;

use serde::Serialize;

use crate::processor;

/// One step of the processor's batches over a measured window, from its
/// `autoglm_pipeline_stage_duration_seconds` histogram at the window's start and end.
#[derive(Debug, Clone, Serialize)]
pub struct StageTimes {
    pub stage: &'static str,
    /// Batches that went through the step in the window.
    pub batches: u64,
    pub mean_ms: f64,
    /// The upper bounds of the buckets the quantiles fall in (0.5 ms, then doubling).
    pub p50_ms_at_most: f64,
    pub p99_ms_at_most: f64,
}

/// The steps of a batch, in their order (the processor's `Stage`).
pub const STAGES: [&str; 8] = [
    "fill",
    "queue",
    "route",
    "guard",
    "send",
    "acks",
    "commit",
    "state_write",
];
const STAGE_METRIC: &str = "autoglm_pipeline_stage_duration_seconds";

/// Each stage's cumulative bucket counts (by upper bound, ascending) and sum, from a scrape.
pub type Stages = HashMap<String, (Vec<(f64, f64)>, f64)>;

fn parse(text: &str) -> anyhow::Result<Stages> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    let mut stages = Stages::new();
    for sample in scrape.samples {
        let Some(stage) = sample.labels.get("stage") else {
            continue;
        };
        let entry = stages.entry(stage.to_owned()).or_default();
        match sample.value {
            prometheus_parse::Value::Histogram(buckets) if sample.metric == STAGE_METRIC => {
                let mut buckets: Vec<(f64, f64)> =
                    buckets.iter().map(|b| (b.less_than, b.count)).collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                entry.0 = buckets;
            }
            prometheus_parse::Value::Untyped(sum)
                if sample.metric == format!("{STAGE_METRIC}_sum") =>
            {
                entry.1 = sum;
            }
            _ => {}
        }
    }
    Ok(stages)
}

/// What happened between two scrapes, stage by stage.
pub fn between(before: &Stages, after: &Stages) -> Vec<StageTimes> {
    let empty = (Vec::new(), 0.0);
    STAGES
        .iter()
        .map(|&stage| {
            let (b, b_sum) = before.get(stage).unwrap_or(&empty);
            let (a, a_sum) = after.get(stage).unwrap_or(&empty);
            let counts: Vec<(f64, f64)> = a
                .iter()
                .map(|&(le, n)| {
                    let earlier = b.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, n)| *n);
                    (le, n - earlier)
                })
                .collect();
            let total = counts.last().map_or(0.0, |(_, n)| *n);
            let quantile = |q: f64| {
                counts
                    .iter()
                    .find(|(_, n)| *n >= q * total)
                    .map_or(f64::NAN, |(le, _)| le * 1000.0)
            };
            StageTimes {
                stage,
                batches: total as u64,
                mean_ms: if total > 0.0 {
                    (a_sum - b_sum) / total * 1000.0
                } else {
                    f64::NAN
                },
                p50_ms_at_most: quantile(0.5),
                p99_ms_at_most: quantile(0.99),
            }
        })
        .collect()
}

/// The stage histograms of the instance on `port`; `None` when its page cannot be read or
/// parsed (the window then shows no steps).
pub async fn scrape(http: &reqwest::Client, port: u16) -> Option<Stages> {
    let text = processor::metrics_text(http, port).await?;
    parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_times_are_the_difference_of_two_scrapes() {
        let scrape = |guard: [u64; 3], sum: f64| {
            format!(
                "# TYPE {STAGE_METRIC} histogram\n\
                 {STAGE_METRIC}_bucket{{stage=\"guard\",le=\"0.001\"}} {}\n\
                 {STAGE_METRIC}_bucket{{stage=\"guard\",le=\"0.002\"}} {}\n\
                 {STAGE_METRIC}_bucket{{stage=\"guard\",le=\"+Inf\"}} {}\n\
                 {STAGE_METRIC}_sum{{stage=\"guard\"}} {sum}\n\
                 {STAGE_METRIC}_count{{stage=\"guard\"}} {}\n",
                guard[0], guard[1], guard[2], guard[2]
            )
        };
        let before = parse(&scrape([5, 5, 5], 0.004)).expect("parses");
        // 100 batches more: 10 under 1 ms, 89 under 2 ms, 1 above, 0.15 s in all.
        let after = parse(&scrape([15, 104, 105], 0.154)).expect("parses");
        let times = between(&before, &after);
        let guard = times.iter().find(|t| t.stage == "guard").expect("guard");
        assert_eq!(guard.batches, 100);
        assert!((guard.mean_ms - 1.5).abs() < 1e-9, "{}", guard.mean_ms);
        assert_eq!(guard.p50_ms_at_most, 2.0);
        assert_eq!(guard.p99_ms_at_most, 2.0);
        let fill = times.iter().find(|t| t.stage == "fill").expect("fill");
        assert_eq!(fill.batches, 0, "a stage the scrapes lack");
    }
}
